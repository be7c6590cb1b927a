//! The connection table: keeps an established flow on its backend whatever happens to the
//! backend set, and maps replies back to the VIP.
//!
//! Each flow has two entries in one LRU map: forward (client -> VIP, holds the backend) and
//! reply (backend -> client, holds the VIP). The reply entry is inserted first, so a flow
//! whose forward entry exists can always be reverse-translated. If LRU pressure evicts only
//! the reply entry, the next refresh of the forward entry restores it.
//!
//! Writes are kept off the per-packet path: an entry is written when its TCP state changes
//! or when its timestamp is more than [`REFRESH_NS`] old, never on every packet.

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use lb_common::{
    Addr, Proto,
    config::DatapathConfig,
    maps::{
        BackendValue, CT_DIR_FORWARD, CT_DIR_REPLY, CT_STATE_CLOSING, CT_STATE_ESTABLISHED,
        CT_STATE_SYN_SENT, CtKey, CtValue,
    },
    stats::Event,
};

use crate::{
    maps::XLB_CONNTRACK,
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    stats::Counters,
};

/// How stale a timestamp may get before a packet refreshes it. Timeouts are >= 10 s, so
/// one second of imprecision is harmless and saves a write on almost every packet.
const REFRESH_NS: u64 = 1_000_000_000;
const NS_PER_S: u64 = 1_000_000_000;

const BPF_ANY: u64 = 0;

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without arguments. The coarse clock (jiffies resolution) is enough for
    // idle timeouts and much cheaper than bpf_ktime_get_ns.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The forward key of a packet sent by a client.
#[inline(always)]
pub fn forward_key(pkt: &Packet) -> CtKey {
    CtKey {
        src: pkt.src,
        dst: pkt.dst,
        sport_be: pkt.sport_be,
        dport_be: pkt.dport_be,
        proto: pkt.proto,
        family: pkt.family,
        dir: CT_DIR_FORWARD,
        _pad: 0,
    }
}

/// The reply key of a packet sent by a backend (or of any packet, to test whether it is one).
#[inline(always)]
pub fn reply_key(pkt: &Packet) -> CtKey {
    CtKey { dir: CT_DIR_REPLY, ..forward_key(pkt) }
}

#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<CtValue> {
    let v = XLB_CONNTRACK.get_ptr(key)?;
    // SAFETY: a pointer returned by the map. Copied at once: an LRU element can be recycled
    // by another CPU, and the copy is only as old as this packet.
    Some(unsafe { *v })
}

/// The state a forward entry moves to after this packet.
#[inline(always)]
fn next_state(state: u8, pkt: &Packet) -> u8 {
    if pkt.proto != Proto::TCP {
        return CT_STATE_ESTABLISHED;
    }
    if pkt.has_tcp_flag(TCP_FIN) || pkt.has_tcp_flag(TCP_RST) {
        CT_STATE_CLOSING
    } else if state == CT_STATE_SYN_SENT && pkt.has_tcp_flag(TCP_ACK) && !pkt.has_tcp_flag(TCP_SYN)
    {
        CT_STATE_ESTABLISHED
    } else {
        state
    }
}

/// Whether a forward entry still decides this packet's backend.
///
/// No when it has been idle longer than its state's timeout, or when a pure SYN arrives on
/// an entry past the handshake (the client reuses the tuple for a new connection, which
/// must be balanced afresh). A SYN on a SYN_SENT entry is a retransmission: same backend.
#[inline(always)]
pub fn usable(entry: &CtValue, pkt: &Packet, now: u64, cfg: &DatapathConfig) -> bool {
    let timeout_s = if pkt.proto == Proto::UDP {
        cfg.ct_udp_timeout_s
    } else {
        match entry.state {
            CT_STATE_SYN_SENT => cfg.ct_tcp_syn_timeout_s,
            CT_STATE_CLOSING => cfg.ct_tcp_closing_timeout_s,
            _ => cfg.ct_tcp_established_timeout_s,
        }
    };
    if now.saturating_sub(entry.last_seen_ns) > timeout_s as u64 * NS_PER_S {
        return false;
    }
    let pure_syn = pkt.has_tcp_flag(TCP_SYN) && !pkt.has_tcp_flag(TCP_ACK);
    !(pure_syn && entry.state != CT_STATE_SYN_SENT)
}

/// The state a new flow starts in: SYN_SENT for a TCP SYN, ESTABLISHED for anything else
/// (mid-stream TCP after the table lost the entry, or UDP).
#[inline(always)]
fn initial_state(pkt: &Packet) -> u8 {
    if pkt.proto == Proto::TCP && pkt.has_tcp_flag(TCP_SYN) && !pkt.has_tcp_flag(TCP_ACK) {
        CT_STATE_SYN_SENT
    } else {
        CT_STATE_ESTABLISHED
    }
}

/// Records a new flow: reply entry first, then the forward entry (see the module docs).
#[inline(always)]
pub fn create(
    key: &CtKey,
    pkt: &Packet,
    backend_id: u32,
    backend: &BackendValue,
    service_id: u32,
    now: u64,
    counters: &Counters,
) {
    let state = initial_state(pkt);
    let reply = CtValue {
        nat_addr: pkt.dst,
        nat_port_be: pkt.dport_be,
        state,
        _pad0: 0,
        backend_id,
        service_id,
        _pad1: 0,
        last_seen_ns: now,
    };
    let forward =
        CtValue { nat_addr: backend.addr, nat_port_be: backend.port_be, ..reply };
    let rkey = reply_key_for(key, &backend.addr, backend.port_be);
    if XLB_CONNTRACK.insert(&rkey, &reply, BPF_ANY).is_err()
        || XLB_CONNTRACK.insert(key, &forward, BPF_ANY).is_err()
    {
        // The packet is still forwarded; the flow will be re-selected (identically, while
        // the backend set is unchanged) on its next packet.
        counters.event(Event::CT_INSERT_FAILED);
    }
}

/// The reply key for a forward key whose flow goes to `backend`.
#[inline(always)]
fn reply_key_for(key: &CtKey, backend: &Addr, backend_port_be: u16) -> CtKey {
    CtKey {
        src: *backend,
        dst: key.src,
        sport_be: backend_port_be,
        dport_be: key.sport_be,
        proto: key.proto,
        family: key.family,
        dir: CT_DIR_REPLY,
        _pad: 0,
    }
}

/// Updates a forward entry after a hit: state transitions at once, the timestamp at most
/// once per [`REFRESH_NS`]. When the timestamp is refreshed, the reply entry is checked too
/// and restored if LRU pressure evicted it.
#[inline(always)]
pub fn refresh_forward(key: &CtKey, entry: &CtValue, pkt: &Packet, now: u64, counters: &Counters) {
    let state = next_state(entry.state, pkt);
    let stale = now.saturating_sub(entry.last_seen_ns) > REFRESH_NS;
    if state == entry.state && !stale {
        return;
    }
    let updated = CtValue { state, last_seen_ns: now, ..*entry };
    let _ = XLB_CONNTRACK.insert(key, &updated, BPF_ANY);
    if stale {
        let rkey = reply_key_for(key, &entry.nat_addr, entry.nat_port_be);
        if XLB_CONNTRACK.get_ptr(&rkey).is_none() {
            let reply = CtValue {
                nat_addr: key.dst,
                nat_port_be: key.dport_be,
                ..updated
            };
            if XLB_CONNTRACK.insert(&rkey, &reply, BPF_ANY).is_ok() {
                counters.event(Event::CT_REPLY_RESTORED);
            }
        }
    }
}

/// Updates a reply entry after a hit. A FIN or RST from the backend also moves the forward
/// entry to CLOSING, so that its shorter timeout applies and a reused tuple is re-balanced.
#[inline(always)]
pub fn refresh_reply(key: &CtKey, entry: &CtValue, pkt: &Packet, now: u64) {
    let closing =
        pkt.proto == Proto::TCP && (pkt.has_tcp_flag(TCP_FIN) || pkt.has_tcp_flag(TCP_RST));
    let stale = now.saturating_sub(entry.last_seen_ns) > REFRESH_NS;
    if !closing && !stale {
        return;
    }
    let state = if closing { CT_STATE_CLOSING } else { entry.state };
    let _ = XLB_CONNTRACK.insert(key, &CtValue { state, last_seen_ns: now, ..*entry }, BPF_ANY);
    if closing {
        // The forward key: client -> VIP, as the client sent it.
        let fkey = CtKey {
            src: key.dst,
            dst: entry.nat_addr,
            sport_be: key.dport_be,
            dport_be: entry.nat_port_be,
            proto: key.proto,
            family: key.family,
            dir: CT_DIR_FORWARD,
            _pad: 0,
        };
        if let Some(fwd) = lookup(&fkey) {
            if fwd.state != CT_STATE_CLOSING {
                let _ = XLB_CONNTRACK.insert(
                    &fkey,
                    &CtValue { state: CT_STATE_CLOSING, last_seen_ns: now, ..fwd },
                    BPF_ANY,
                );
            }
        }
    }
}
