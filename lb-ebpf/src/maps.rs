//! Map definitions (BTF-style, so that the Maglev map can be a map of maps).
//! Names, key and value layouts come from `lb_common::maps`.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{Array, HashMap, HashOfMaps, LruHashMap, PerCpuArray, RingBuf},
    macros::btf_map,
};
use lb_common::{
    maps::{
        AFFINITY_ENTRIES, AffinityKey, AffinityValue, BPF_F_INNER_MAP, BackendValue,
        CONNTRACK_ENTRIES, CtKey, CtValue, FrontendKey, FrontendValue, MAX_AFFINITY_MEMBERS,
        MAX_BACKENDS, MAX_FRONTENDS, MAX_SERVICES, MAX_TX_PORTS, MaglevChunk, MemberKey, Meta,
        SIGNALS_BYTES, SOCK_REVNAT_ENTRIES, Signal, SockRevKey, SockRevValue,
    },
    stats::{BackendStats, GlobalStats, ServiceStats},
};

/// Hash maps the agent updates in place are not preallocated: an updated or deleted element
/// is freed after an RCU grace period instead of being recycled at once, so a packet that
/// looked it up just before never reads a half-reused element.
const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;

/// Template of a service's Maglev table (see `lb_common::maps`). `BPF_F_INNER_MAP` lets each
/// service's table have its own number of elements.
pub type MaglevTable = Array<MaglevChunk, 1, { BPF_F_INNER_MAP as usize }>;

#[btf_map]
pub static XLB_FRONTENDS: HashMap<
    FrontendKey,
    FrontendValue,
    { MAX_FRONTENDS as usize },
    NO_PREALLOC,
> = HashMap::new();

#[btf_map]
pub static XLB_MAGLEV: HashOfMaps<u32, MaglevTable, { MAX_SERVICES as usize }, NO_PREALLOC> =
    HashOfMaps::new();

/// Written only while no table references the slot (make-before-break in the agent), so
/// the in-place update of an array element is never observed half-done.
#[btf_map]
pub static XLB_BACKENDS: Array<BackendValue, { MAX_BACKENDS as usize }> = Array::new();

#[btf_map]
pub static XLB_CONNTRACK: LruHashMap<CtKey, CtValue, { CONNTRACK_ENTRIES as usize }> =
    LruHashMap::new();

#[btf_map]
pub static XLB_STATS: PerCpuArray<GlobalStats, 1> = PerCpuArray::new();

#[btf_map]
pub static XLB_SERVICE_STATS: PerCpuArray<ServiceStats, { MAX_SERVICES as usize }> =
    PerCpuArray::new();

#[btf_map]
pub static XLB_BACKEND_STATS: PerCpuArray<BackendStats, { MAX_BACKENDS as usize }> =
    PerCpuArray::new();

/// Session affinity: the backend each client of a service was last sent to.
#[btf_map]
pub static XLB_AFFINITY: LruHashMap<AffinityKey, AffinityValue, { AFFINITY_ENTRIES as usize }> =
    LruHashMap::new();

/// The backends of each service with session affinity (written by the agent).
#[btf_map]
pub static XLB_AFFINITY_MEMBERS: HashMap<
    MemberKey,
    u32,
    { MAX_AFFINITY_MEMBERS as usize },
    NO_PREALLOC,
> = HashMap::new();

/// The layout version of the pinned maps (written by the agent; not read by the program).
#[btf_map]
pub static XLB_META: Array<Meta, 1> = Array::new();

/// Translated sockets: the VIP each showed to recvmsg and getpeername (socket programs).
#[btf_map]
pub static XLB_SOCK_REVNAT: LruHashMap<SockRevKey, SockRevValue, { SOCK_REVNAT_ENTRIES as usize }> =
    LruHashMap::new();

/// Interfaces an XDP redirect may hand frames to (written by the agent).
#[btf_map]
pub static XLB_TX_PORTS: HashMap<u32, u32, { MAX_TX_PORTS as usize }, NO_PREALLOC> = HashMap::new();

/// The frontend at `key`, read in place.
#[inline(always)]
pub fn frontend(key: &FrontendKey) -> Option<&'static FrontendValue> {
    // SAFETY: a pointer returned by the map. The map is not preallocated, so the element
    // is not recycled before an RCU grace period, i.e. not during this run (see above);
    // the reference does not outlive the run (every program returns first).
    XLB_FRONTENDS.get_ptr(key).map(|p| unsafe { &*p })
}

/// Whether interface `ifindex` may be handed XDP frames the `TX_F_*` way `how`.
#[inline(always)]
pub fn takes_xdp_frames(ifindex: u32, how: u32) -> bool {
    // SAFETY: read-only lookup of a u32.
    unsafe { XLB_TX_PORTS.get(&ifindex) }.is_some_and(|f| f & how != 0)
}

/// Signals to the agent (passive health), written only on the rare failure paths.
#[btf_map]
pub static XLB_SIGNALS: RingBuf<Signal, { SIGNALS_BYTES as usize }> = RingBuf::new();
