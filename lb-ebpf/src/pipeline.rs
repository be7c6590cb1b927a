//! The packet pipeline, one for both address families:
//! parse -> frontend lookup -> connection table or Maglev -> translate -> forward,
//! or, for a backend's reply, connection table -> reverse-translate -> forward.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    maps::{FrontendKey, FrontendValue},
    stats::{Event, Reason},
};

use crate::{
    config, conntrack,
    fwd::{self, Outcome},
    maps::XLB_FRONTENDS,
    nat::{self, End},
    parse::{self, Packet},
    select,
    stats::{self, Counters},
};

/// Runs the pipeline and counts the outcome.
///
/// Fail-open vs fail-closed is decided here, once: every `Err(reason)` gets the verdict
/// that `Reason::action` assigns to it. Packets we do not understand but that are valid
/// pass (the kernel's traffic is not ours to filter); malformed packets and VIP packets we
/// cannot translate are dropped (fail closed: a VIP packet passed untranslated has nowhere
/// useful to go).
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let counters = Counters::get();
    let outcome = match process(ctx, &counters) {
        Ok(outcome) => outcome,
        Err(reason) => Outcome::new(reason.action(), reason),
    };
    counters.outcome(outcome.action, outcome.reason);
    outcome.action
}

#[inline(always)]
fn process(ctx: &XdpContext, counters: &Counters) -> Result<Outcome, Reason> {
    let mut pkt = parse::parse(ctx)?;
    let fkey = FrontendKey {
        addr: pkt.dst,
        port_be: pkt.dport_be,
        proto: pkt.proto,
        family: pkt.family,
    };
    if let Some(frontend) = XLB_FRONTENDS.get_ptr(&fkey) {
        // SAFETY: a pointer returned by the map, copied at once (16 bytes). The map is not
        // preallocated, so the element cannot be recycled under us (see maps.rs).
        let frontend = unsafe { *frontend };
        return to_service(ctx, &mut pkt, &frontend, counters);
    }
    let rkey = conntrack::reply_key(&pkt);
    if let Some(entry) = conntrack::lookup(&rkey) {
        return from_backend(ctx, &mut pkt, &rkey, &entry);
    }
    Err(Reason::NOT_FRONTEND)
}

/// A packet from a client to a frontend.
#[inline(always)]
fn to_service(
    ctx: &XdpContext,
    pkt: &mut Packet,
    frontend: &FrontendValue,
    counters: &Counters,
) -> Result<Outcome, Reason> {
    if pkt.first_fragment {
        return Err(Reason::FRAGMENTED_FLOW);
    }
    if pkt.ttl <= 1 {
        return Err(Reason::TTL_EXPIRED);
    }
    let cfg = config::get();
    let now = conntrack::now();
    let key = conntrack::forward_key(pkt);
    let service_id = frontend.service_id;

    let existing = conntrack::lookup(&key);
    let (backend_id, addr, port_be, new_flow) = match existing {
        Some(entry) if conntrack::usable(&entry, pkt, now, &cfg) => {
            counters.event(Event::CT_HIT);
            conntrack::refresh_forward(&key, &entry, pkt, now, counters);
            (entry.backend_id, entry.nat_addr, entry.nat_port_be, false)
        }
        _ => {
            if existing.is_some() {
                counters.event(Event::CT_RESELECT);
            }
            let (id, backend) = match select::backend(service_id, &key) {
                Ok(chosen) => chosen,
                Err(reason) => {
                    if reason == Reason::NO_BACKEND {
                        stats::service_no_backend(service_id);
                    }
                    return Err(reason);
                }
            };
            conntrack::create(&key, pkt, id, &backend, service_id, now, counters);
            counters.event(Event::NEW_FLOW);
            (id, backend.addr, backend.port_be, true)
        }
    };

    nat::rewrite(ctx, pkt, End::Destination, &addr, port_be)?;
    stats::service(service_id, pkt.ip_len, new_flow);
    stats::backend(backend_id, pkt.ip_len, new_flow, false);
    let reason = if new_flow { Reason::FORWARD_NEW } else { Reason::FORWARD_ESTABLISHED };
    fwd::forward(ctx, pkt, reason)
}

/// A reply from a backend to a client: the source becomes the VIP again.
#[inline(always)]
fn from_backend(
    ctx: &XdpContext,
    pkt: &mut Packet,
    key: &lb_common::maps::CtKey,
    entry: &lb_common::maps::CtValue,
) -> Result<Outcome, Reason> {
    if pkt.first_fragment {
        return Err(Reason::FRAGMENTED_FLOW);
    }
    if pkt.ttl <= 1 {
        return Err(Reason::TTL_EXPIRED);
    }
    conntrack::refresh_reply(key, entry, pkt, conntrack::now());
    nat::rewrite(ctx, pkt, End::Source, &entry.nat_addr, entry.nat_port_be)?;
    stats::backend(entry.backend_id, pkt.ip_len, false, true);
    fwd::forward(ctx, pkt, Reason::FORWARD_REPLY)
}
