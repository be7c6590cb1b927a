//! Counter layout, drop and pass reasons, and the verdict policy for each reason.
//!
//! Every packet the program sees is counted exactly once in
//! `GlobalStats::packets[action][reason]`: the XDP action it got and why. Events that are
//! not per-packet outcomes (a new flow, a connection-table hit, ...) have their own counters.
//!
//! # Policy for packets the datapath does not translate
//!
//! - Malformed: a header that is truncated or invalid (e.g. an IPv4 IHL below 5, a total
//!   length beyond the frame, a TCP header cut short) is **dropped**. The kernel would drop
//!   it as well; dropping early is cheaper and keeps broken frames from reaching a VIP.
//! - Valid but out of scope (not IP, a second VLAN tag, not TCP/UDP, a non-first fragment,
//!   an IPv6 extension-header chain longer than we walk, not addressed to a frontend) is
//!   **passed** to the kernel untouched: xlb must never become a filter for traffic that is
//!   not its own.
//! - A first fragment addressed to a frontend is **dropped**: its later fragments carry no
//!   ports and could not follow it to the same backend.
//! - A frontend with no backend: **dropped**.

use bytemuck::{Pod, Zeroable};

/// XDP action values (`enum xdp_action`).
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
pub const ACTIONS: usize = 5;

pub const fn action_name(action: u32) -> &'static str {
    match action {
        XDP_ABORTED => "aborted",
        XDP_DROP => "drop",
        XDP_PASS => "pass",
        XDP_TX => "tx",
        XDP_REDIRECT => "redirect",
        _ => "unknown",
    }
}

/// Why a packet got its verdict. Integer newtype: it crosses into the stats map.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct Reason(pub u32);

macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident = $val:expr, $label:literal, $action:expr;)+) => {
        impl Reason {
            $($(#[$doc])* pub const $name: Self = Self($val);)+

            /// Every reason, in numeric order.
            pub const ALL: &'static [Reason] = &[$(Self::$name),+];

            /// The metric label of the reason.
            pub const fn label(self) -> &'static str {
                match self.0 {
                    $($val => $label,)+
                    _ => "unknown",
                }
            }

            /// The verdict a packet stopped with this reason gets (the policy table).
            /// Forwarding reasons return the action of the normal path (`XDP_TX`).
            pub const fn action(self) -> u32 {
                match self.0 {
                    $($val => $action,)+
                    _ => XDP_DROP,
                }
            }
        }
    };
}

reasons! {
    /// Translated, new flow: backend chosen through the Maglev table, sent on directly.
    FORWARD_NEW = 0, "forward_new", XDP_TX;
    /// Translated, established flow (connection-table hit), sent on directly.
    FORWARD_ESTABLISHED = 1, "forward_established", XDP_TX;
    /// Reply from a backend, source restored to the VIP, sent on directly.
    FORWARD_REPLY = 2, "forward_reply", XDP_TX;
    /// Not IPv4/IPv6 (ARP, LLDP, ...), or a second VLAN tag.
    NOT_IP = 3, "not_ip", XDP_PASS;
    /// IP but neither TCP nor UDP.
    NOT_TCP_UDP = 4, "not_tcp_udp", XDP_PASS;
    /// TCP/UDP, but neither addressed to a frontend nor a reply of a tracked flow.
    NOT_FRONTEND = 5, "not_frontend", XDP_PASS;
    /// A non-first fragment: it has no ports to match.
    FRAGMENT = 6, "fragment", XDP_PASS;
    /// An IPv6 extension-header chain we do not walk (too long, or ESP).
    IPV6_EXTENSIONS = 7, "ipv6_extensions", XDP_PASS;
    /// TTL/hop limit would expire here: handed to the kernel untranslated, so the ICMP
    /// time-exceeded it sends quotes the packet the client sent.
    TTL_EXPIRED = 8, "ttl_expired", XDP_PASS;
    /// Translated; the next hop's neighbour entry is not resolved yet: the kernel forwards
    /// it (and resolves the neighbour for the packets that follow).
    STACK_NO_NEIGH = 9, "stack_no_neigh", XDP_PASS;
    /// Translated; the FIB lookup did not give a forwarding path (no route, blackhole,
    /// forwarding disabled, ...): the kernel decides.
    STACK_NO_ROUTE = 10, "stack_no_route", XDP_PASS;
    /// Translated; larger than the egress MTU: the kernel fragments or signals.
    STACK_FRAG_NEEDED = 11, "stack_frag_needed", XDP_PASS;
    /// Translated; arrived VLAN-tagged: the kernel's VLAN device forwards it.
    STACK_VLAN = 12, "stack_vlan", XDP_PASS;
    /// Frame shorter than an Ethernet header.
    MALFORMED_ETH = 13, "malformed_eth", XDP_DROP;
    /// 802.1Q tag cut short.
    MALFORMED_VLAN = 14, "malformed_vlan", XDP_DROP;
    /// IPv4 header truncated, IHL < 5, wrong version, or total length inconsistent.
    MALFORMED_IPV4 = 15, "malformed_ipv4", XDP_DROP;
    /// IPv6 header or an extension header truncated, wrong version, or payload length
    /// inconsistent.
    MALFORMED_IPV6 = 16, "malformed_ipv6", XDP_DROP;
    /// TCP or UDP header truncated or invalid (TCP data offset < 5).
    MALFORMED_L4 = 17, "malformed_l4", XDP_DROP;
    /// A first fragment of a translated flow (to a frontend, or a reply): its later
    /// fragments carry no ports and could not follow it.
    FRAGMENTED_FLOW = 18, "fragmented_flow", XDP_DROP;
    /// The frontend's service has no backend.
    NO_BACKEND = 19, "no_backend", XDP_DROP;
    /// The maps are inconsistent (a table slot names a backend that is not programmed).
    /// Fail closed: a VIP packet passed untranslated would go nowhere useful.
    INTERNAL = 20, "internal", XDP_DROP;
    /// A backend answered a new connection's SYN with a RST (nothing listens, it is
    /// dying): the RST is dropped and the flow forgotten, so the client's SYN
    /// retransmission is balanced afresh, by then without that backend (passive health).
    /// Not when the service is in fail open: then the client gets the RST.
    CONN_REFUSED = 21, "conn_refused", XDP_DROP;
    /// An ICMP destination unreachable from a backend about one of its flows: counted
    /// (passive health), the flow forgotten (its next packet is balanced afresh), and the
    /// message passed to the kernel untouched.
    BACKEND_UNREACHABLE = 22, "backend_unreachable", XDP_PASS;
    /// Translated; the egress interface cannot take XDP-redirected frames (a pod's veth
    /// whose peer has neither NAPI/GRO nor an XDP program drops them): the kernel
    /// forwards it instead.
    STACK_NO_XDP_TARGET = 23, "stack_no_xdp_target", XDP_PASS;
}

/// Number of reason slots per action in [`GlobalStats::packets`].
pub const REASONS: usize = 24;
const _: () = assert!(Reason::ALL.len() <= REASONS);

/// Events counted besides the per-packet outcome.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Event(pub u32);

impl Event {
    /// A new flow got a backend from the Maglev table.
    pub const NEW_FLOW: Self = Self(0);
    /// A forward packet matched the connection table.
    pub const CT_HIT: Self = Self(1);
    /// A tracked flow was re-selected (idle timeout, or a TCP SYN reusing a closed tuple).
    pub const CT_RESELECT: Self = Self(2);
    /// The connection table refused an insert (the flow is still forwarded).
    pub const CT_INSERT_FAILED: Self = Self(3);
    /// A reply entry lost to LRU eviction was restored from its forward entry.
    pub const CT_REPLY_RESTORED: Self = Self(4);
    /// A new flow of a client went to the backend its session affinity remembered.
    pub const AFFINITY_HIT: Self = Self(5);
    /// A backend answered a new connection's SYN with a RST (counted also when the RST
    /// was let through).
    pub const CONN_REFUSED: Self = Self(6);
    /// An ICMP destination unreachable from a backend about one of its flows.
    pub const BACKEND_UNREACHABLE: Self = Self(7);
    /// A socket's connect or sendmsg to a frontend was translated to a backend.
    pub const SOCK_TRANSLATED: Self = Self(8);
    /// A socket's connect or sendmsg to a frontend without a backend was refused.
    pub const SOCK_NO_BACKEND: Self = Self(9);
    /// recvmsg or getpeername showed a translated socket the VIP instead of the backend.
    pub const SOCK_REVERSED: Self = Self(10);
    /// A reply from a local backend (a pod) got its VIP back at the pod's interface (tc).
    pub const POD_REPLY: Self = Self(11);
    pub const ALL: &'static [(Event, &'static str)] = &[
        (Self::NEW_FLOW, "new_flow"),
        (Self::CT_HIT, "ct_hit"),
        (Self::CT_RESELECT, "ct_reselect"),
        (Self::CT_INSERT_FAILED, "ct_insert_failed"),
        (Self::CT_REPLY_RESTORED, "ct_reply_restored"),
        (Self::AFFINITY_HIT, "affinity_hit"),
        (Self::CONN_REFUSED, "conn_refused"),
        (Self::BACKEND_UNREACHABLE, "backend_unreachable"),
        (Self::SOCK_TRANSLATED, "sock_translated"),
        (Self::SOCK_NO_BACKEND, "sock_no_backend"),
        (Self::SOCK_REVERSED, "sock_reversed"),
        (Self::POD_REPLY, "pod_reply"),
    ];
}

pub const EVENTS: usize = 16;

/// The single per-CPU slot of [`crate::maps::STATS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct GlobalStats {
    /// Packets by `action * REASONS + reason`.
    pub packets: [u64; ACTIONS * REASONS],
    pub events: [u64; EVENTS],
}
crate::pod!(GlobalStats);
const _: () = assert!(core::mem::size_of::<GlobalStats>() == 8 * (ACTIONS * REASONS + EVENTS));

impl GlobalStats {
    pub const fn packets(&self, action: u32, reason: Reason) -> u64 {
        self.packets[action as usize * REASONS + reason.0 as usize]
    }

    /// Adds another CPU's counters.
    pub fn add(&mut self, other: &Self) {
        for (a, b) in self.packets.iter_mut().zip(other.packets.iter()) {
            *a += b;
        }
        for (a, b) in self.events.iter_mut().zip(other.events.iter()) {
            *a += b;
        }
    }
}

/// Per-service counters (forward direction), per CPU, indexed by service id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ServiceStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub no_backend: u64,
}
crate::pod!(ServiceStats);

impl ServiceStats {
    /// Adds another CPU's counters.
    pub fn add(&mut self, o: &Self) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.new_flows += o.new_flows;
        self.no_backend += o.no_backend;
    }
}
const _: () = assert!(core::mem::size_of::<ServiceStats>() == 32);

/// Per-backend counters, per CPU, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BackendStats {
    pub new_flows: u64,
    pub packets: u64,
    pub bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// New connections it refused (RST answering the SYN).
    pub conn_refused: u64,
    /// ICMP destination unreachable it sent about its flows.
    pub unreachable: u64,
    pub _reserved: u64,
}
crate::pod!(BackendStats);

impl BackendStats {
    /// Adds another CPU's counters.
    pub fn add(&mut self, o: &Self) {
        self.new_flows += o.new_flows;
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.reply_packets += o.reply_packets;
        self.reply_bytes += o.reply_bytes;
        self.conn_refused += o.conn_refused;
        self.unreachable += o.unreachable;
    }
}
const _: () = assert!(core::mem::size_of::<BackendStats>() == 64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_dense_and_labelled() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.0 as usize, i, "reasons must be numbered densely");
            assert_ne!(r.label(), "unknown");
        }
    }

    #[test]
    fn policy_drops_malformed_and_passes_foreign_traffic() {
        assert_eq!(Reason::MALFORMED_IPV4.action(), XDP_DROP);
        assert_eq!(Reason::MALFORMED_L4.action(), XDP_DROP);
        assert_eq!(Reason::NOT_FRONTEND.action(), XDP_PASS);
        assert_eq!(Reason::FRAGMENT.action(), XDP_PASS);
        assert_eq!(Reason::FRAGMENTED_FLOW.action(), XDP_DROP);
    }
}
