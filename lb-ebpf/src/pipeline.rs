//! The packet pipeline, one for both address families:
//! parse -> connection table (one lookup of the packet's own tuple) ->
//! - forward entry: translate to its backend -> send;
//! - reply entry: translate the source back to the VIP -> send;
//! - no usable entry: frontend lookup -> Maglev -> record the flow -> translate -> send.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    maps::{CtKey, CtValue, FRONTEND_F_AFFINITY, FrontendKey},
    stats::{Event, Reason, XDP_PASS},
};

use crate::{
    config,
    conntrack::{self, Entry},
    fwd::{self, NextHop, Outcome},
    maps,
    nat::{self, End},
    parse::{self, Packet, TCP_RST},
    passive, select,
    stats::{self, Counters},
    trust,
};

/// What every stage needs: the context, this CPU's counters and the time. Bundled so that
/// the non-inlined stages take few arguments (BPF functions take at most five).
pub struct Env<'a> {
    pub ctx: &'a XdpContext,
    pub counters: Counters,
    pub now: u64,
}

/// Runs the pipeline and counts the outcome.
///
/// Fail-open vs fail-closed is decided here, once: every `Err(reason)` gets the verdict
/// that `Reason::action` assigns to it. Packets we do not understand but that are valid
/// pass (the kernel's traffic is not ours to filter); malformed packets and VIP packets we
/// cannot translate are dropped (fail closed: a VIP packet passed untranslated has nowhere
/// useful to go).
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let env = Env {
        ctx,
        counters: Counters::get(),
        now: conntrack::now(),
    };
    let outcome = Outcome::of(process(&env));
    env.counters.outcome(outcome.action, outcome.reason);
    outcome.action
}

#[inline(always)]
fn process(env: &Env) -> Result<Outcome, Reason> {
    let mut pkt = Packet::EMPTY;
    match parse::parse_into(env.ctx, &mut pkt) {
        u32::MAX => {}
        reason => return Err(Reason(reason)),
    }
    if pkt.icmp_unreachable {
        return Ok(Outcome::unpack(passive::unreachable(
            env.ctx,
            &env.counters,
            &pkt,
        )));
    }
    // The key is copied: translation rewrites `pkt.key`, while the connection table must
    // still be addressed by the tuple the packet arrived with.
    let key = pkt.key;
    if let Some(entry) = conntrack::lookup(&key) {
        if entry.is_reply() {
            return Ok(Outcome::unpack(from_backend(env, &mut pkt, &key, entry)));
        }
        if conntrack::usable(entry.value(), &pkt, env.now, &config::get()) {
            return Ok(Outcome::unpack(established(env, &mut pkt, &key, entry)));
        }
        env.counters.event(Event::CT_RESELECT);
    }
    Ok(Outcome::unpack(new_flow(env, &mut pkt, &key)))
}

/// Checks shared by every path that translates a packet.
#[inline(always)]
fn translatable(pkt: &Packet) -> Result<(), Reason> {
    if pkt.first_fragment {
        return Err(Reason::FRAGMENTED_FLOW);
    }
    if pkt.ttl <= 1 {
        return Err(Reason::TTL_EXPIRED);
    }
    Ok(())
}

/// The next hop of a translated packet: the cached one while fresh, else the FIB's answer.
/// `Err` is a pass reason (the kernel forwards the translated packet).
#[inline(always)]
fn next_hop(env: &Env, pkt: &Packet, entry: &CtValue) -> (Result<NextHop, Reason>, bool) {
    let cached = conntrack::cached_next_hop(entry);
    if cached.is_some() && !conntrack::is_stale(entry, env.now) {
        return (Ok(cached), false);
    }
    (fwd::lookup(env.ctx, pkt), true)
}

/// The next hop a fresh lookup learned, NONE if none was made or it failed.
#[inline(always)]
fn learned(nh: &Result<NextHop, Reason>, fresh: bool) -> NextHop {
    match nh {
        Ok(nh) if fresh => *nh,
        _ => NextHop::NONE,
    }
}

#[inline(always)]
fn send(
    ctx: &XdpContext,
    pkt: &Packet,
    nh: Result<NextHop, Reason>,
    reason: Reason,
) -> Result<Outcome, Reason> {
    match nh {
        Ok(nh) => fwd::transmit(ctx, pkt, &nh, reason),
        Err(pass) => Ok(Outcome::new(XDP_PASS, pass)),
    }
}

/// A packet of an established flow: to its backend, no frontend or Maglev lookup.
///
/// Each path is a function of its own (a cheap BPF-to-BPF call): inlined together, their
/// temporaries and register spills overflow the 512-byte BPF stack.
#[inline(never)]
fn established(env: &Env, pkt: &mut Packet, key: &CtKey, entry: Entry) -> u64 {
    Outcome::of(established_inner(env, pkt, key, entry)).pack()
}

#[inline(always)]
fn established_inner(
    env: &Env,
    pkt: &mut Packet,
    key: &CtKey,
    entry: Entry,
) -> Result<Outcome, Reason> {
    translatable(pkt)?;
    env.counters.event(Event::CT_HIT);
    let e = entry.value();
    nat::rewrite(env.ctx, pkt, End::Destination, &e.nat_addr, e.nat_port_be)?;
    let (nh, fresh) = next_hop(env, pkt, e);
    let (service_id, backend_id) = (e.service_id, e.backend_id);
    conntrack::refresh_forward(
        key,
        entry,
        pkt,
        env.now,
        &learned(&nh, fresh),
        &env.counters,
    );
    stats::service(service_id, pkt.ip_len, false);
    stats::backend(backend_id, pkt.ip_len, false, false);
    send(env.ctx, pkt, nh, Reason::FORWARD_ESTABLISHED)
}

/// A new flow: Maglev picks the backend, the flow is recorded, then translated and sent.
#[inline(never)]
fn new_flow(env: &Env, pkt: &mut Packet, key: &CtKey) -> u64 {
    Outcome::of(new_flow_inner(env, pkt, key)).pack()
}

#[inline(always)]
fn new_flow_inner(env: &Env, pkt: &mut Packet, key: &CtKey) -> Result<Outcome, Reason> {
    let fkey = FrontendKey {
        addr: pkt.key.dst,
        port_be: pkt.key.dport_be,
        proto: pkt.key.proto,
        family: pkt.key.family,
    };
    let frontend = maps::frontend(&fkey).ok_or(Reason::NOT_FRONTEND)?;
    translatable(pkt)?;
    let service_id = frontend.service_id;
    let affinity = frontend.flags & FRONTEND_F_AFFINITY != 0;
    let sticky = if affinity {
        select::remembered(frontend, key, env.now)
    } else {
        0
    };
    let chosen = if sticky != 0 {
        env.counters.event(Event::AFFINITY_HIT);
        select::by_id(sticky)
    } else if affinity {
        select::backend(frontend, select::affinity_hash(key))
    } else {
        select::backend(frontend, key.flow_hash())
    };
    let (id, backend) = match chosen {
        Ok(chosen) => chosen,
        Err(reason) => {
            if reason == Reason::NO_BACKEND {
                stats::service_no_backend(service_id);
            }
            return Err(reason);
        }
    };
    if affinity && sticky == 0 {
        select::remember(service_id, key, id, env.now);
    }
    nat::rewrite(
        env.ctx,
        pkt,
        End::Destination,
        &backend.addr,
        backend.port_be,
    )?;
    let nh = fwd::lookup(env.ctx, pkt);
    let flow = conntrack::NewFlow::new(pkt, id, service_id, env.now, learned(&nh, true));
    conntrack::create(key, backend, &flow, &env.counters);
    env.counters.event(Event::NEW_FLOW);
    stats::service(service_id, pkt.ip_len, true);
    stats::backend(id, pkt.ip_len, true, false);
    send(env.ctx, pkt, nh, Reason::FORWARD_NEW)
}

/// A reply from a backend to a client: the source becomes the VIP again.
#[inline(never)]
fn from_backend(env: &Env, pkt: &mut Packet, key: &CtKey, entry: Entry) -> u64 {
    Outcome::of(from_backend_inner(env, pkt, key, entry)).pack()
}

#[inline(always)]
fn from_backend_inner(
    env: &Env,
    pkt: &mut Packet,
    key: &CtKey,
    entry: Entry,
) -> Result<Outcome, Reason> {
    translatable(pkt)?;
    if pkt.has_tcp_flag(TCP_RST) && passive::refused(env.ctx, &env.counters, key, entry, pkt) != 0 {
        return Ok(Outcome::new(
            lb_common::stats::XDP_DROP,
            Reason::CONN_REFUSED,
        ));
    }
    let e = entry.value();
    nat::rewrite(env.ctx, pkt, End::Source, &e.nat_addr, e.nat_port_be)?;
    let (nh, fresh) = next_hop(env, pkt, e);
    let backend_id = e.backend_id;
    // A FIN or RST closes the flow only when it came the backend's way (one FIB lookup,
    // once per connection): one spoofed from the client's side is forwarded, as any
    // packet, but changes no state.
    let trusted =
        !conntrack::closes(pkt) || trust::via_backend_interface(env.ctx, &key.src, key.family);
    conntrack::refresh_reply(key, entry, pkt, env.now, &learned(&nh, fresh), trusted);
    stats::backend(backend_id, pkt.ip_len, false, true);
    send(env.ctx, pkt, nh, Reason::FORWARD_REPLY)
}
