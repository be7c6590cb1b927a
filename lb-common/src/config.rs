//! Load-time settings of the datapath.
//!
//! They live in one read-only global of the object ([`CONFIG_GLOBAL`]) that the agent sets
//! when it loads the program, so the per-packet path reads constants instead of a map.
//! Changing them means loading the program again (an atomic link update, see `datapath`).

use bytemuck::{Pod, Zeroable};

/// Symbol name of the [`DatapathConfig`] global in the eBPF object.
pub const CONFIG_GLOBAL: &str = "XLB_CONFIG";

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct DatapathConfig {
    /// Idle timeout of a TCP flow that has only sent a SYN.
    pub ct_tcp_syn_timeout_s: u32,
    /// Idle timeout of an established TCP flow (kube-proxy sets conntrack's to 24 h).
    pub ct_tcp_established_timeout_s: u32,
    /// Idle timeout of a TCP flow after a FIN or RST.
    pub ct_tcp_closing_timeout_s: u32,
    /// Idle timeout of a UDP flow.
    pub ct_udp_timeout_s: u32,
}
crate::pod!(DatapathConfig);
const _: () = assert!(core::mem::size_of::<DatapathConfig>() == 16);

impl DatapathConfig {
    pub const DEFAULT: Self = Self {
        ct_tcp_syn_timeout_s: 60,
        ct_tcp_established_timeout_s: 86_400,
        ct_tcp_closing_timeout_s: 10,
        ct_udp_timeout_s: 60,
    };
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}
