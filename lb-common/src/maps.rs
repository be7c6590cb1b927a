//! Map and program names, and the layout of every map key and value.
//!
//! | map | kind | key -> value | writer |
//! |---|---|---|---|
//! | [`FRONTENDS`] | hash | [`FrontendKey`] -> [`FrontendValue`] | agent |
//! | [`MAGLEV`] | hash of arrays | service id -> inner array of [`MaglevChunk`] | agent |
//! | [`BACKENDS`] | array | backend id -> [`BackendValue`] | agent |
//! | [`CONNTRACK`] | LRU hash | [`CtKey`] -> [`CtValue`] | datapath |
//! | [`AFFINITY`] | LRU hash | [`AffinityKey`] -> [`AffinityValue`] | datapath |
//! | [`AFFINITY_MEMBERS`] | hash | [`MemberKey`] -> u32 | agent |
//! | [`META`] | array, 1 slot | 0 -> [`Meta`] | agent |
//! | [`STATS`] | per-CPU array, 1 slot | 0 -> [`crate::stats::GlobalStats`] | datapath |
//! | [`SERVICE_STATS`] | per-CPU array | service id -> [`crate::stats::ServiceStats`] | datapath |
//! | [`BACKEND_STATS`] | per-CPU array | backend id -> [`crate::stats::BackendStats`] | datapath |
//! | [`SIGNALS`] | ring buffer | [`Signal`] records | datapath |
//! | [`SOCK_REVNAT`] | LRU hash | [`SockRevKey`] -> [`SockRevValue`] | socket programs |
//! | [`TX_PORTS`] | hash | ifindex -> `TX_F_*` bits | agent |
//!
//! A service's Maglev tables live in its inner array of [`MaglevChunk`]s, which has two
//! halves. The frontends of the service name the live one ([`FrontendValue::table_base`],
//! its first chunk, and [`FrontendValue::table_size`], its M slots). A change is written
//! into the other half, then the frontends are switched to it: each frontend update
//! replaces the element whole (the map is not preallocated), so a packet sees either the
//! old table or the new one, never a half-written one. The outer map changes only when a
//! service appears, goes, or outgrows its array: each such syscall update waits for an RCU
//! grace period, so the agent batches them. Slots are packed 16 to an element because the
//! kernel stores array elements with an 8-byte stride.

use bytemuck::{Pod, Zeroable};

use crate::{Addr, Family, Proto};

/// Name of the XDP program in the object file (node devices: traffic from outside).
pub const PROGRAM: &str = "xlb";
/// The tc program on pods' host-side interfaces (ingress: what pods send).
pub const TC_PROGRAM: &str = "xlb_from_pod";
/// The socket programs, attached to a cgroup (v2): (program name, attach point).
pub const SOCK_PROGRAMS: [&str; 8] = [
    "xlb_connect4",
    "xlb_connect6",
    "xlb_sendmsg4",
    "xlb_sendmsg6",
    "xlb_recvmsg4",
    "xlb_recvmsg6",
    "xlb_getpeername4",
    "xlb_getpeername6",
];

pub const FRONTENDS: &str = "XLB_FRONTENDS";
pub const MAGLEV: &str = "XLB_MAGLEV";
pub const BACKENDS: &str = "XLB_BACKENDS";
pub const CONNTRACK: &str = "XLB_CONNTRACK";
pub const STATS: &str = "XLB_STATS";
pub const SERVICE_STATS: &str = "XLB_SERVICE_STATS";
pub const BACKEND_STATS: &str = "XLB_BACKEND_STATS";
pub const AFFINITY: &str = "XLB_AFFINITY";
pub const AFFINITY_MEMBERS: &str = "XLB_AFFINITY_MEMBERS";
pub const META: &str = "XLB_META";
pub const SIGNALS: &str = "XLB_SIGNALS";
pub const SOCK_REVNAT: &str = "XLB_SOCK_REVNAT";
pub const TX_PORTS: &str = "XLB_TX_PORTS";

/// Bytes of the [`SIGNALS`] ring buffer (a power of two, a multiple of the page size):
/// room for 8k signals between two reads of the agent.
pub const SIGNALS_BYTES: u32 = 128 * 1024;

/// What the datapath tells the agent through [`SIGNALS`], as it happens: today, that a
/// backend failed a new connection (passive health).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Signal {
    /// `SIGNAL_*`.
    pub kind: u32,
    pub backend_id: u32,
    pub service_id: u32,
    pub _pad: u32,
}
crate::pod!(Signal);

/// A backend answered a new connection's SYN with a RST.
pub const SIGNAL_CONN_REFUSED: u32 = 1;
/// A backend answered a new flow with an ICMP destination unreachable.
pub const SIGNAL_UNREACHABLE: u32 = 2;

/// Every map the datapath defines, in a fixed order (used to pin and to adopt them).
pub const ALL_MAPS: [&str; 13] = [
    META,
    FRONTENDS,
    MAGLEV,
    BACKENDS,
    CONNTRACK,
    STATS,
    SERVICE_STATS,
    BACKEND_STATS,
    AFFINITY,
    AFFINITY_MEMBERS,
    SIGNALS,
    SOCK_REVNAT,
    TX_PORTS,
];

/// Version of the layout of the pinned maps (names, kinds, key and value formats, and
/// what their contents mean). An agent adopts pinned maps only of its own layout
/// version; bump it with any change that an agent of the previous version would
/// misread.
///
/// 4: the socket programs' [`SOCK_REVNAT`] and the XDP redirect targets [`TX_PORTS`];
/// more event counters.
/// 3: the [`SIGNALS`] ring buffer; per-backend refused/unreachable counters.
/// 2: each service's Maglev table is pinned as `tables/svc-<service>-<map id>` beside
/// the maps, so that an agent without CAP_SYS_ADMIN (which opening a map by id needs)
/// can reopen the live tables.
pub const LAYOUT_VERSION: u32 = 4;

/// Directory, inside an instance's pin directory, of the pinned Maglev tables.
pub const TABLES_DIR: &str = "tables";

/// The single slot of [`META`]: written by the agent that created the maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Meta {
    /// [`LAYOUT_VERSION`] of the agent that created the maps; 0 until it was written.
    pub layout_version: u32,
    pub _pad: u32,
}
crate::pod!(Meta);

/// Default capacities, compiled into the object; the agent may override them at load time.
pub const MAX_FRONTENDS: u32 = 65_536;
pub const MAX_SERVICES: u32 = 65_536;
pub const MAX_BACKENDS: u32 = 262_144;
pub const CONNTRACK_ENTRIES: u32 = 262_144;
/// Clients remembered for session affinity, over all services.
pub const AFFINITY_ENTRIES: u32 = 131_072;
/// (service, backend) pairs of the services with session affinity.
pub const MAX_AFFINITY_MEMBERS: u32 = 262_144;
/// Translated sockets remembered for recvmsg/getpeername (one per socket and backend).
pub const SOCK_REVNAT_ENTRIES: u32 = 262_144;
/// Interfaces that take XDP-redirected frames.
pub const MAX_TX_PORTS: u32 = 4096;

/// A frame XDP-redirected into the interface is sent: it runs xlb's XDP program (so its
/// driver has an XDP transmit path) and, for a veth, its peer has NAPI (GRO or an XDP
/// program); otherwise the frame would be dropped there, silently.
pub const TX_F_REDIRECT: u32 = 1 << 0;
/// XDP_TX back out of the interface is sent at once: not a veth, or a veth whose peer
/// has an XDP program (without one the frame waits in the ring for other traffic).
pub const TX_F_TX: u32 = 1 << 1;

/// u32 slots per element of a Maglev inner array.
pub const MAGLEV_CHUNK: usize = 16;
/// One element of a Maglev inner array.
pub type MaglevChunk = [u32; MAGLEV_CHUNK];
/// Largest Maglev table size the agent builds (a prime).
pub const MAX_TABLE_SIZE: u32 = 1_048_573;

/// Number of inner-array elements that hold a table of `size` slots.
pub const fn maglev_chunks(size: u32) -> u32 {
    size.div_ceil(MAGLEV_CHUNK as u32)
}
/// `BPF_F_INNER_MAP`: inner maps may differ in `max_entries` from the template.
pub const BPF_F_INNER_MAP: u32 = 1 << 12;

/// Key of the frontend map: a service VIP, port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct FrontendKey {
    pub addr: Addr,
    /// Port in network byte order.
    pub port_be: u16,
    pub proto: Proto,
    pub family: Family,
}
crate::pod!(FrontendKey);
const _: () = assert!(core::mem::size_of::<FrontendKey>() == 20);

impl FrontendKey {
    pub fn new(ip: core::net::IpAddr, port: u16, proto: Proto) -> Self {
        Self {
            addr: Addr::from_ip(&ip),
            port_be: port.to_be(),
            proto,
            family: Family::of(&ip),
        }
    }

    pub fn ip(&self) -> core::net::IpAddr {
        self.addr.to_ip(self.family)
    }

    pub const fn port(&self) -> u16 {
        u16::from_be(self.port_be)
    }
}

/// `ip:port/proto`, IPv6 in brackets (how logs, errors and golden dumps name a frontend).
impl core::fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.ip() {
            core::net::IpAddr::V4(ip) => write!(f, "{ip}:{}/{}", self.port(), self.proto.name()),
            core::net::IpAddr::V6(ip) => write!(f, "[{ip}]:{}/{}", self.port(), self.proto.name()),
        }
    }
}

/// What a frontend leads to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FrontendValue {
    /// Key of the service's Maglev tables and index of its counters.
    pub service_id: u32,
    /// `FRONTEND_F_*` bits.
    pub flags: u32,
    /// Session affinity timeout in seconds (with [`FRONTEND_F_AFFINITY`]).
    pub affinity_timeout_s: u32,
    /// Slots of the live Maglev table (0: the service has no backend).
    pub table_size: u32,
    /// First chunk of the live table in the service's inner array.
    pub table_base: u32,
    pub _pad: u32,
}
crate::pod!(FrontendValue);
const _: () = assert!(core::mem::size_of::<FrontendValue>() == 24);

/// `sessionAffinity: ClientIP`: new flows of a client stick to its previous backend.
pub const FRONTEND_F_AFFINITY: u32 = 1 << 0;
/// Every backend of the service is down and all are kept (fail open): a backend's RST
/// to a SYN reaches the client (with [`FRONTEND_F_AFFINITY`] clear or set).
pub const FRONTEND_F_FAIL_OPEN: u32 = 1 << 1;

/// A backend (endpoint address and target port), indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct BackendValue {
    pub addr: Addr,
    /// Port in network byte order.
    pub port_be: u16,
    pub proto: Proto,
    pub family: Family,
    /// `BACKEND_F_*` bits.
    pub flags: u32,
}
crate::pod!(BackendValue);
const _: () = assert!(core::mem::size_of::<BackendValue>() == 24);

/// The slot holds a programmed backend (an all-zero slot is "no backend").
pub const BACKEND_F_ACTIVE: u32 = 1 << 0;

impl BackendValue {
    pub fn new(ip: core::net::IpAddr, port: u16, proto: Proto) -> Self {
        Self {
            addr: Addr::from_ip(&ip),
            port_be: port.to_be(),
            proto,
            family: Family::of(&ip),
            flags: BACKEND_F_ACTIVE,
        }
    }

    pub fn ip(&self) -> core::net::IpAddr {
        self.addr.to_ip(self.family)
    }

    pub const fn port(&self) -> u16 {
        u16::from_be(self.port_be)
    }
}

/// Key of the connection table: a packet's tuple exactly as it travels.
///
/// A flow has two entries: the forward one under the tuple the client sends
/// (client -> VIP) and the reply one under the tuple the backend sends (backend -> client).
/// Both live in one key space, so one lookup of a packet's own tuple finds either; the
/// entry's [`CT_F_REPLY`] flag tells which. (A tuple cannot be both: VIPs are never
/// clients.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct CtKey {
    pub src: Addr,
    pub dst: Addr,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: Proto,
    pub family: Family,
    pub _pad: [u8; 2],
}
crate::pod!(CtKey);
const _: () = assert!(core::mem::size_of::<CtKey>() == 40);

impl CtKey {
    /// The flow hash of a forward key (see [`crate::flow::flow_hash`]).
    #[inline(always)]
    pub const fn flow_hash(&self) -> u32 {
        crate::flow::flow_hash(
            self.family,
            &self.src,
            &self.dst,
            self.sport_be,
            self.dport_be,
            self.proto,
        )
    }
}

/// The entry is a flow's reply entry (backend -> client).
pub const CT_F_REPLY: u8 = 1 << 0;
/// [`CtValue::syn_seq_be`] holds the sequence number of the SYN that opened the flow.
pub const CT_F_SYN_SEQ: u8 = 1 << 1;

/// TCP connection states tracked by the datapath (UDP entries stay `CT_STATE_ESTABLISHED`).
pub const CT_STATE_SYN_SENT: u8 = 1;
pub const CT_STATE_ESTABLISHED: u8 = 2;
pub const CT_STATE_CLOSING: u8 = 3;

/// Value of the connection table.
///
/// A forward entry holds the backend's address and port (so an established flow needs no
/// further lookup and keeps its backend even if the backend id is later reused); a reply
/// entry holds the VIP and port to restore as the reply's source. Both cache the next hop
/// their packets leave through (from a FIB lookup, revalidated whenever the timestamp is
/// refreshed), so established packets skip the FIB.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CtValue {
    pub nat_addr: Addr,
    /// Port in network byte order.
    pub nat_port_be: u16,
    /// `CT_STATE_*`.
    pub state: u8,
    /// `CT_F_*`.
    pub flags: u8,
    pub backend_id: u32,
    pub service_id: u32,
    /// Egress interface of the cached next hop; 0 when none is cached.
    pub nh_ifindex: u32,
    /// `bpf_ktime_get_coarse_ns` of the last refresh (refreshed at most once a second).
    pub last_seen_ns: u64,
    /// The next hop's destination and source MAC, exactly the first 12 bytes of the
    /// Ethernet header to write, as six 16-bit words (memory order).
    pub nh_macs: [u16; 6],
    /// The sequence number (network byte order) of the client's SYN that opened a TCP
    /// flow (with [`CT_F_SYN_SEQ`]): a RST refusing the connection must acknowledge it,
    /// and an ICMP error about the SYN must quote it. 0 otherwise.
    pub syn_seq_be: u32,
}
crate::pod!(CtValue);
const _: () = assert!(core::mem::size_of::<CtValue>() == 56);

/// Key of the session-affinity table: a client of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct AffinityKey {
    pub client: Addr,
    pub service_id: u32,
    pub family: Family,
    pub _pad: [u8; 3],
}
crate::pod!(AffinityKey);
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 24);

/// The backend a client of a service was last sent to, and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_coarse_ns` of the client's last new flow to the service.
    pub last_seen_ns: u64,
}
crate::pod!(AffinityValue);
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);

/// Key of the affinity membership map: backend `backend_id` takes new flows of service
/// `service_id`. The agent keeps one entry per member of the live table of every service
/// with session affinity, so a remembered backend that left the service is not used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct MemberKey {
    pub service_id: u32,
    pub backend_id: u32,
}
crate::pod!(MemberKey);
const _: () = assert!(core::mem::size_of::<MemberKey>() == 8);

/// Key of the socket reverse-translation map: a socket whose connect or sendmsg was
/// translated to a backend. recvmsg and getpeername find the VIP to show by the socket
/// and the address the kernel reports (the backend's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct SockRevKey {
    /// `bpf_get_socket_cookie`: unique for the socket's lifetime.
    pub cookie: u64,
    pub backend: Addr,
    /// Port in network byte order.
    pub port_be: u16,
    pub family: Family,
    pub proto: Proto,
    pub _pad: u32,
}
crate::pod!(SockRevKey);
const _: () = assert!(core::mem::size_of::<SockRevKey>() == 32);

/// The VIP and port a translated socket was addressed to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SockRevValue {
    pub vip: Addr,
    /// Port in network byte order.
    pub port_be: u16,
    pub _pad: [u8; 2],
    pub service_id: u32,
}
crate::pod!(SockRevValue);
const _: () = assert!(core::mem::size_of::<SockRevValue>() == 24);
