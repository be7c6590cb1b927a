//! Passive health: a backend that refuses a new connection (a TCP RST answering the
//! SYN) or reports one of its flows unreachable (ICMP destination unreachable) is counted
//! and signalled to the agent, and the flow is forgotten so that its next packet (the
//! client's SYN retransmission) is balanced afresh. Seen wherever the backend's packets
//! come in: the node devices (XDP) and local pods' interfaces (tc).

use lb_common::{
    maps::{CT_STATE_SYN_SENT, CtKey, FRONTEND_F_FAIL_OPEN, FrontendKey},
    stats::{Event, Reason, XDP_PASS},
};

use crate::{
    conntrack::{self, Entry},
    fwd::Outcome,
    maps,
    parse::Packet,
    stats::{self, Counters},
    trust::{self, Origin},
};

/// A RST from a backend: if it answers the SYN of a new connection, the backend refused
/// it. Counted and signalled to the agent (passive health); then, unless the service is
/// in fail open, the flow is forgotten and the RST dropped (returns 1): the client
/// retransmits its SYN (after a second), which is balanced afresh, by then without the
/// backend. Off the per-packet path: only RSTs get here. Believed only as
/// [`crate::trust`] says (interface, checksum, acknowledgement of the SYN); otherwise
/// the RST goes on to the client like any other.
#[inline(never)]
pub fn refused(
    ctx: &impl Origin,
    counters: &Counters,
    key: &CtKey,
    entry: Entry,
    pkt: &Packet,
) -> u32 {
    let e = entry.value();
    let forward = conntrack::forward_key(key, e);
    let Some(f) = conntrack::lookup(&forward) else {
        return 0;
    };
    if f.value().state != CT_STATE_SYN_SENT || !trust::answers_syn(f.value(), pkt) {
        return 0;
    }
    if ctx.checksums_complete() && !trust::checksum_ok(ctx, pkt, true, key.proto.0) {
        return 0;
    }
    if !trust::via_backend_interface(ctx, &key.src, key.family) {
        return 0;
    }
    let (backend_id, service_id) = (e.backend_id, e.service_id);
    counters.event(Event::CONN_REFUSED);
    stats::backend_failed(backend_id, service_id, false);
    let fkey = FrontendKey {
        addr: e.nat_addr,
        port_be: e.nat_port_be,
        proto: key.proto,
        family: key.family,
    };
    if maps::frontend(&fkey).is_some_and(|fe| fe.flags & FRONTEND_F_FAIL_OPEN != 0) {
        return 0;
    }
    conntrack::forget(&forward, key);
    1
}

/// An ICMP destination unreachable from a backend about one of its flows (`key`: that
/// flow's reply key): the backend failed the flow. Counted and signalled to the agent
/// (passive health); the flow's entries go, so its next packet is balanced afresh. The
/// ICMP message itself goes to the kernel as before. Off the per-packet path: only ICMP
/// errors get here. Believed only as [`crate::trust`] says (interface, checksum, and
/// for TCP a SYN of a connection not yet established, quoted with its sequence number);
/// otherwise the message is passed as any other ICMP.
#[inline(never)]
pub fn unreachable(ctx: &impl Origin, counters: &Counters, pkt: &Packet) -> u64 {
    let key = &pkt.key;
    let ignored = Outcome::new(XDP_PASS, Reason::NOT_TCP_UDP).pack();
    let Some(entry) = conntrack::lookup(key) else {
        return ignored;
    };
    let e = entry.value();
    if !entry.is_reply() {
        return ignored;
    }
    let forward = conntrack::forward_key(key, e);
    if key.proto == lb_common::Proto::TCP {
        let Some(f) = conntrack::lookup(&forward) else {
            return ignored;
        };
        if f.value().state != CT_STATE_SYN_SENT || !trust::quotes_syn(f.value(), pkt) {
            return ignored;
        }
    }
    if ctx.checksums_complete() && !trust::icmp_checksum_ok(ctx, pkt) {
        return ignored;
    }
    if !trust::via_backend_interface(ctx, &key.src, key.family) {
        return ignored;
    }
    counters.event(Event::BACKEND_UNREACHABLE);
    stats::backend_failed(e.backend_id, e.service_id, true);
    conntrack::forget(&forward, key);
    Outcome::new(XDP_PASS, Reason::BACKEND_UNREACHABLE).pack()
}
