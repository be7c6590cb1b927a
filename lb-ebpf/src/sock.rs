//! Socket-level translation for what starts on this node: the cgroup (v2) `connect`,
//! `sendmsg`, `recvmsg` and `getpeername` hooks of every socket under the agent's cgroup
//! (the root on a node: host processes and every pod, whatever its network namespace).
//!
//! A TCP connect or a UDP connect/sendmsg to a frontend is re-addressed to a backend
//! before the kernel routes anything, so these flows need no per-packet translation at
//! all: no connection-table entry, no checksum update, and pods' checksum offload and
//! veth quirks do not matter. The socket remembers the VIP it was addressed to
//! ([`XLB_SOCK_REVNAT`]), so that `recvmsg` shows UDP replies as coming from the VIP and
//! `getpeername` names the VIP. Hairpin (a pod picked as the backend of its own request)
//! needs nothing more: the connection is local to the pod, and it sees the VIP.
//!
//! Backends come from the same frontend map and Maglev tables as the XDP path, through
//! the same slot choice; the hash is [`lb_common::flow::socket_hash`] of the socket
//! cookie (the source port is not chosen yet). Session affinity keys a client by its
//! network namespace (a pod; the host), as Cilium's socket load balancer does.
//!
//! IPv4-mapped IPv6 destinations (`::ffff:a.b.c.d`, dual-stack sockets) are translated
//! as IPv4.

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock_addr,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use lb_common::{
    Addr, Family, Proto,
    flow::socket_hash,
    maps::{CtKey, FRONTEND_F_AFFINITY, FrontendKey, SockRevKey, SockRevValue},
    stats::{Event, Reason},
};

use crate::{
    conntrack, maps,
    maps::XLB_SOCK_REVNAT,
    select,
    stats::{self, Counters},
};

/// Verdicts of a sock_addr program.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;
/// What a connect or send to a frontend without a backend fails with (kube-proxy rejects
/// such traffic too, so clients fail at once instead of timing out).
const ECONNREFUSED: i32 = 111;
/// Word 2 of an IPv4-mapped IPv6 address (`::ffff:0:0/96`), as it lies in memory.
const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
/// Marks a socket client (a network namespace) in `Addr::raw[3]`, so that it never
/// equals a real IPv4 client (raw[1..] zero) in the affinity table.
const NETNS_CLIENT_MARK: u32 = 0x6e73_0001;
const BPF_ANY: u64 = 0;

/// Where a socket address sits in the context.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    V4,
    V6,
    /// An IPv4 address as an IPv4-mapped IPv6 one.
    Mapped,
}

/// The address and port in the context (the destination for connect and sendmsg, the
/// peer for recvmsg and getpeername).
struct SockAddr {
    slot: Slot,
    family: Family,
    addr: Addr,
    port_be: u16,
}

#[inline(always)]
fn read(sa: *mut bpf_sock_addr, v6: bool) -> SockAddr {
    // SAFETY: the context the kernel passed; every field is read with a 4-byte load,
    // which is what the verifier allows for these fields.
    unsafe {
        let port_be = (*sa).user_port as u16;
        if !v6 {
            return SockAddr {
                slot: Slot::V4,
                family: Family::V4,
                addr: Addr {
                    raw: [(*sa).user_ip4, 0, 0, 0],
                },
                port_be,
            };
        }
        let w = [
            (*sa).user_ip6[0],
            (*sa).user_ip6[1],
            (*sa).user_ip6[2],
            (*sa).user_ip6[3],
        ];
        if w[0] == 0 && w[1] == 0 && w[2] == V4_MAPPED_WORD {
            return SockAddr {
                slot: Slot::Mapped,
                family: Family::V4,
                addr: Addr {
                    raw: [w[3], 0, 0, 0],
                },
                port_be,
            };
        }
        SockAddr {
            slot: Slot::V6,
            family: Family::V6,
            addr: Addr { raw: w },
            port_be,
        }
    }
}

#[inline(always)]
fn write(sa: *mut bpf_sock_addr, slot: Slot, addr: &Addr, port_be: u16) {
    // SAFETY: the context the kernel passed; 4-byte stores into the writable address
    // fields of connect, sendmsg, recvmsg and getpeername contexts.
    unsafe {
        match slot {
            Slot::V4 => (*sa).user_ip4 = addr.raw[0],
            Slot::Mapped => (*sa).user_ip6[3] = addr.raw[0],
            Slot::V6 => {
                (*sa).user_ip6[0] = addr.raw[0];
                (*sa).user_ip6[1] = addr.raw[1];
                (*sa).user_ip6[2] = addr.raw[2];
                (*sa).user_ip6[3] = addr.raw[3];
            }
        }
        (*sa).user_port = port_be as u32;
    }
}

/// The socket's protocol, if it is TCP or UDP.
#[inline(always)]
fn protocol(sa: *mut bpf_sock_addr) -> Option<Proto> {
    // SAFETY: the context the kernel passed.
    let p = Proto(unsafe { (*sa).protocol } as u8);
    (p == Proto::TCP || p == Proto::UDP).then_some(p)
}

/// `connect` (TCP, connected UDP) and `sendmsg` (unconnected UDP): a destination that is
/// a frontend becomes one of its backends.
///
/// Fail open vs closed, decided here: a socket to a frontend whose service has no
/// backend fails with ECONNREFUSED (as kube-proxy's reject rule makes it fail); anything
/// else that is not translated goes on as the application addressed it.
#[inline(always)]
pub fn translate(ctx: &SockAddrContext, v6: bool) -> i32 {
    let sa = ctx.sock_addr;
    let Some(proto) = protocol(sa) else {
        return ALLOW;
    };
    let dst = read(sa, v6);
    let fkey = FrontendKey {
        addr: dst.addr,
        port_be: dst.port_be,
        proto,
        family: dst.family,
    };
    let Some(frontend) = maps::frontend(&fkey) else {
        return ALLOW;
    };
    let counters = Counters::get();
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let chosen = if frontend.flags & FRONTEND_F_AFFINITY != 0 {
        // SAFETY: as above.
        let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
        let client = CtKey {
            src: Addr {
                raw: [netns as u32, (netns >> 32) as u32, 0, NETNS_CLIENT_MARK],
            },
            dst: dst.addr,
            sport_be: 0,
            dport_be: dst.port_be,
            proto,
            family: dst.family,
            _pad: [0; 2],
        };
        sticky(frontend, &client, &counters)
    } else {
        select::backend(
            frontend,
            socket_hash(dst.family, cookie, &dst.addr, dst.port_be, proto),
        )
    };
    let (id, backend) = match chosen {
        Ok(chosen) => chosen,
        Err(reason) => {
            if reason == Reason::NO_BACKEND {
                stats::service_no_backend(frontend.service_id);
            }
            counters.event(Event::SOCK_NO_BACKEND);
            // SAFETY: plain helper; the syscall then fails with this error.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            return REJECT;
        }
    };
    write(sa, dst.slot, &backend.addr, backend.port_be);
    let rkey = SockRevKey {
        cookie,
        backend: backend.addr,
        port_be: backend.port_be,
        family: dst.family,
        proto,
        _pad: 0,
    };
    let rev = SockRevValue {
        vip: dst.addr,
        port_be: dst.port_be,
        _pad: [0; 2],
        service_id: frontend.service_id,
    };
    // A failed insert only costs recvmsg/getpeername the VIP: they show the backend.
    let _ = XLB_SOCK_REVNAT.insert(&rkey, &rev, BPF_ANY);
    counters.event(Event::SOCK_TRANSLATED);
    stats::socket_flow(frontend.service_id, id);
    ALLOW
}

/// The backend of a session-affinity service for a socket client (its network
/// namespace): the remembered one while valid, else by the client's hash (remembered).
#[inline(always)]
fn sticky<'a>(
    frontend: &lb_common::maps::FrontendValue,
    client: &CtKey,
    counters: &Counters,
) -> Result<(u32, &'a lb_common::maps::BackendValue), Reason> {
    let now = conntrack::now();
    let remembered = select::remembered(frontend, client, now);
    if remembered != 0 {
        counters.event(Event::AFFINITY_HIT);
        return select::by_id(remembered);
    }
    let (id, backend) = select::backend(frontend, select::affinity_hash(client))?;
    select::remember(frontend.service_id, client, id, now);
    Ok((id, backend))
}

/// `recvmsg` (UDP) and `getpeername`: a translated socket sees the VIP it addressed,
/// not the backend that answers.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext, v6: bool) -> i32 {
    let sa = ctx.sock_addr;
    let Some(proto) = protocol(sa) else {
        return ALLOW;
    };
    let peer = read(sa, v6);
    let rkey = SockRevKey {
        // SAFETY: helper on the program's own context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        backend: peer.addr,
        port_be: peer.port_be,
        family: peer.family,
        proto,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once.
    if let Some(rev) = unsafe { XLB_SOCK_REVNAT.get(&rkey) } {
        let (vip, port_be) = (rev.vip, rev.port_be);
        write(sa, peer.slot, &vip, port_be);
        Counters::get().event(Event::SOCK_REVERSED);
    }
    // recvmsg and getpeername programs must allow.
    ALLOW
}
