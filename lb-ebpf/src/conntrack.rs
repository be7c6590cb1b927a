//! The connection table: keeps an established flow on its backend whatever happens to the
//! backend set, maps replies back to the VIP, and caches each direction's next hop.
//!
//! Each flow has two entries in one LRU map, keyed by the tuple of the packets they match
//! (see `lb_common::maps::CtKey`): forward (client -> VIP, holds the backend) and reply
//! (backend -> client, holds the VIP). The reply entry is inserted first, so a flow whose
//! forward entry exists can always be reverse-translated; if LRU pressure evicts only the
//! reply entry, the next refresh of the forward entry restores it.
//!
//! Writes are kept off the per-packet path: an entry is updated when its TCP state
//! changes, when its next hop is first learned or changes, or when its timestamp is more
//! than [`REFRESH_NS`] old (which also revalidates the cached next hop with a FIB lookup),
//! never on every packet.
//!
//! Updates are made in place, field by field, through the pointer the lookup returned:
//! re-inserting a 56-byte copy would allocate a new LRU element each time. The hazard of
//! writing in place is an element recycled by another CPU between our lookup and our
//! write; the lookup has just marked it referenced, which keeps it off the LRU's eviction
//! end, and the fields written (state, timestamp, next hop) are refreshed again within a
//! second (Katran updates its LRU entries the same way).

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use lb_common::{
    Addr, Proto,
    config::DatapathConfig,
    maps::{
        BackendValue, CT_F_REPLY, CT_F_SYN_SEQ, CT_STATE_CLOSING, CT_STATE_ESTABLISHED,
        CT_STATE_SYN_SENT, CtKey, CtValue,
    },
    stats::Event,
};

use crate::{
    fwd::NextHop,
    maps::XLB_CONNTRACK,
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    stats::Counters,
};

/// How stale a timestamp (and the next hop cached with it) may get before a packet
/// refreshes it. Timeouts are >= 10 s, so one second of imprecision is harmless; a route or
/// neighbour change reaches established flows within a second.
const REFRESH_NS: u64 = 1_000_000_000;
const NS_PER_S: u64 = 1_000_000_000;

const BPF_ANY: u64 = 0;

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without arguments. The coarse clock (jiffies resolution) is enough for
    // idle timeouts and much cheaper than bpf_ktime_get_ns.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// A connection-table entry, in place: the one place the map value pointer is
/// dereferenced (see the module docs for why entries are used in place). Handed between
/// the pipeline's stages for the duration of one packet.
///
/// Not copied out: a 56-byte copy on the per-packet path would not be safer (an LRU
/// element recycled by another CPU mid-copy tears a copy just the same) and costs stack
/// the program does not have. `repr(transparent)`: it travels in one register.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct Entry {
    ptr: *mut CtValue,
}

impl Entry {
    /// The entry's fields.
    #[inline(always)]
    pub fn value(&self) -> &CtValue {
        // SAFETY: `ptr` is a value pointer the map returned for this program run; map
        // values stay mapped during the run (an LRU element recycled meanwhile by another
        // CPU is still valid memory: at worst stale fields, see the module docs).
        unsafe { &*self.ptr }
    }

    /// The entry's fields, to update in place.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)] // the handle is the map value, written in place
    fn value_mut(&self) -> &mut CtValue {
        // SAFETY: as in `value`; the program writes single fields, each an aligned store,
        // and no reference from `value` is held across a write.
        unsafe { &mut *self.ptr }
    }

    #[inline(always)]
    pub fn is_reply(&self) -> bool {
        self.value().flags & CT_F_REPLY != 0
    }

    /// Moves a forward entry to `state`.
    #[inline(always)]
    fn set_state(&self, state: u8) {
        self.value_mut().state = state;
    }
}

/// The entry for `key`, in place.
#[inline(always)]
pub fn lookup(key: &CtKey) -> Option<Entry> {
    XLB_CONNTRACK.get_ptr_mut(key).map(|ptr| Entry { ptr })
}

/// Whether the entry's timestamp (and cached next hop) is due for a refresh.
#[inline(always)]
pub fn is_stale(entry: &CtValue, now: u64) -> bool {
    now.saturating_sub(entry.last_seen_ns) > REFRESH_NS
}

/// The cached next hop ([`NextHop::NONE`] if none).
#[inline(always)]
pub fn cached_next_hop(entry: &CtValue) -> NextHop {
    NextHop {
        ifindex: entry.nh_ifindex,
        macs: entry.nh_macs,
    }
}

/// The state a forward entry moves to after this packet.
#[inline(always)]
fn next_state(state: u8, pkt: &Packet) -> u8 {
    if pkt.proto() != Proto::TCP {
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
    let timeout_s = if pkt.proto() == Proto::UDP {
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
    if pkt.proto() == Proto::TCP && pkt.has_tcp_flag(TCP_SYN) && !pkt.has_tcp_flag(TCP_ACK) {
        CT_STATE_SYN_SENT
    } else {
        CT_STATE_ESTABLISHED
    }
}

/// What a new flow's entries record besides the backend.
pub struct NewFlow {
    pub backend_id: u32,
    pub service_id: u32,
    pub state: u8,
    pub now: u64,
    /// The forward next hop, if the FIB gave one.
    pub nh: NextHop,
    /// The opening SYN's sequence number, with `seq_flag` = `CT_F_SYN_SEQ` (else 0, 0).
    pub syn_seq_be: u32,
    pub seq_flag: u8,
}

impl NewFlow {
    #[inline(always)]
    pub fn new(pkt: &Packet, backend_id: u32, service_id: u32, now: u64, nh: NextHop) -> Self {
        let state = initial_state(pkt);
        let syn = state == CT_STATE_SYN_SENT;
        Self {
            backend_id,
            service_id,
            state,
            now,
            nh,
            syn_seq_be: if syn { pkt.tcp_seq_be } else { 0 },
            seq_flag: if syn { CT_F_SYN_SEQ } else { 0 },
        }
    }
}

/// Records a new flow: reply entry first, then the forward entry (see the module docs).
/// `key` is the forward key as the client sent it. Not inlined: see `restore_reply`.
#[inline(never)]
pub fn create(key: &CtKey, backend: &BackendValue, flow: &NewFlow, counters: &Counters) -> u32 {
    // One entry buffer for both inserts (stack): the reply first, then turned into the
    // forward entry.
    let mut entry = CtValue {
        nat_addr: key.dst,
        nat_port_be: key.dport_be,
        state: flow.state,
        flags: CT_F_REPLY | flow.seq_flag,
        backend_id: flow.backend_id,
        service_id: flow.service_id,
        nh_ifindex: 0,
        last_seen_ns: flow.now,
        nh_macs: [0; 6],
        syn_seq_be: flow.syn_seq_be,
    };
    let rkey = reply_key(key, &backend.addr, backend.port_be);
    if XLB_CONNTRACK.insert(&rkey, &entry, BPF_ANY).is_err() {
        counters.event(Event::CT_INSERT_FAILED);
        return 1;
    }
    entry.nat_addr = backend.addr;
    entry.nat_port_be = backend.port_be;
    entry.flags = flow.seq_flag;
    entry.nh_ifindex = flow.nh.ifindex;
    entry.nh_macs = flow.nh.macs;
    if XLB_CONNTRACK.insert(key, &entry, BPF_ANY).is_err() {
        // The packet is still forwarded; the flow will be re-selected (identically, while
        // the backend set is unchanged) on its next packet.
        counters.event(Event::CT_INSERT_FAILED);
        return 1;
    }
    0
}

/// Forgets a flow: its forward and reply entries (its next packet is balanced afresh).
#[inline(always)]
pub fn forget(forward: &CtKey, reply: &CtKey) {
    let _ = XLB_CONNTRACK.remove(forward);
    let _ = XLB_CONNTRACK.remove(reply);
}

/// The forward key of the flow a reply entry (`reply`, at `key`) belongs to: the reply
/// entry holds the VIP, and the client's tuple is the reply's, reversed.
#[inline(always)]
pub fn forward_key(key: &CtKey, reply: &CtValue) -> CtKey {
    CtKey {
        src: key.dst,
        dst: reply.nat_addr,
        sport_be: key.dport_be,
        dport_be: reply.nat_port_be,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    }
}

/// The reply key for a forward key whose flow goes to `backend`.
#[inline(always)]
fn reply_key(key: &CtKey, backend: &Addr, backend_port_be: u16) -> CtKey {
    CtKey {
        src: *backend,
        dst: key.src,
        sport_be: backend_port_be,
        dport_be: key.sport_be,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    }
}

/// Applies a hit to an entry in place: the new state, and on a refresh the timestamp and
/// the next hop (`nh`: what a fresh FIB lookup gave, NONE if none was made or it failed).
/// Returns whether the timestamp was refreshed.
#[inline(always)]
fn touch(entry: Entry, state: u8, now: u64, nh: &NextHop) -> bool {
    let e = entry.value_mut();
    if state != e.state {
        e.state = state;
    }
    if nh.is_some() && *nh != cached_next_hop(e) {
        e.nh_ifindex = nh.ifindex;
        e.nh_macs = nh.macs;
    }
    if !is_stale(e, now) {
        return false;
    }
    e.last_seen_ns = now;
    true
}

/// Updates a forward entry after a hit. On a timestamp refresh the reply entry is checked
/// too, and restored if LRU pressure evicted it.
#[inline(always)]
pub fn refresh_forward(
    key: &CtKey,
    entry: Entry,
    pkt: &Packet,
    now: u64,
    nh: &NextHop,
    counters: &Counters,
) {
    let state = next_state(entry.value().state, pkt);
    if touch(entry, state, now, nh) {
        let e = entry.value();
        let rkey = reply_key(key, &e.nat_addr, e.nat_port_be);
        if XLB_CONNTRACK.get_ptr(&rkey).is_none() {
            restore_reply(key, &rkey, entry, counters);
        }
    }
}

/// Re-creates a reply entry lost to LRU pressure, from its forward entry.
///
/// Not inlined (nor is `create`): rare, and their 56-byte entries get a frame of their
/// own, which keeps every call chain within the 512-byte BPF stack. Both return a scalar
/// (see `fwd::Outcome::pack`).
#[inline(never)]
fn restore_reply(key: &CtKey, rkey: &CtKey, forward: Entry, counters: &Counters) -> u32 {
    let mut reply = *forward.value();
    reply.nat_addr = key.dst;
    reply.nat_port_be = key.dport_be;
    reply.flags = CT_F_REPLY | (forward.value().flags & CT_F_SYN_SEQ);
    reply.nh_ifindex = 0;
    if XLB_CONNTRACK.insert(rkey, &reply, BPF_ANY).is_ok() {
        counters.event(Event::CT_REPLY_RESTORED);
    }
    0
}

/// Whether a packet would close its flow (a TCP FIN or RST).
#[inline(always)]
pub fn closes(pkt: &Packet) -> bool {
    pkt.proto() == Proto::TCP && (pkt.has_tcp_flag(TCP_FIN) || pkt.has_tcp_flag(TCP_RST))
}

/// Updates a reply entry after a hit. A FIN or RST from the backend also moves the forward
/// entry to CLOSING, so that its shorter timeout applies and a reused tuple is re-balanced;
/// only when `trusted` (see [`closes`]): a FIN or RST spoofed from elsewhere changes
/// nothing.
#[inline(always)]
pub fn refresh_reply(
    key: &CtKey,
    entry: Entry,
    pkt: &Packet,
    now: u64,
    nh: &NextHop,
    trusted: bool,
) {
    let closing = closes(pkt) && trusted;
    let was = entry.value().state;
    let state = if closing { CT_STATE_CLOSING } else { was };
    touch(entry, state, now, nh);
    if !closing || was == CT_STATE_CLOSING {
        return;
    }
    // The forward entry (client -> VIP, as the client sent it) closes too.
    if let Some(fwd) = lookup(&forward_key(key, entry.value()))
        && !fwd.is_reply()
    {
        fwd.set_state(CT_STATE_CLOSING);
    }
}
