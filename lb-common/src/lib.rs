//! The contract between the xlb XDP datapath and its agent.
//!
//! Everything both sides must agree on lives here exactly once: map names, the layout of
//! every map key and value, the counter and drop-reason numbering, and the pure logic whose
//! result both sides must compute identically (the flow hash and the Maglev slot choice), so
//! that the agent can predict which backend the kernel picks for a given packet.
//!
//! Layout rules for everything that crosses into a BPF map: `#[repr(C)]`, explicit `_pad`
//! fields (hash keys compare bytewise, so padding must be zero and visible), a size
//! assertion next to the type, no `bool`/`usize`/`Option`/Rust enums (enums cross as integer
//! newtypes). Addresses and ports are kept in network byte order behind accessors.
#![no_std]

pub mod addr;
pub mod bench;
pub mod config;
pub mod csum;
pub mod flow;
pub mod maps;
pub mod stats;

pub use addr::{Addr, Family, Proto};

/// Implements `aya::Pod` (userspace feature) for types that are `bytemuck::Pod`.
///
/// Requiring `bytemuck::Pod` first means a type with implicit padding fails to compile
/// instead of silently carrying uninitialised bytes into a hash-map key.
macro_rules! pod {
    ($($t:ty),+ $(,)?) => {
        $(
            const _: () = {
                const fn assert_pod<T: bytemuck::Pod>() {}
                assert_pod::<$t>();
            };
            #[cfg(feature = "user")]
            // SAFETY: the type is `bytemuck::Pod` (asserted above): plain old data with no
            // padding and every bit pattern valid, which is what aya::Pod requires.
            unsafe impl aya::Pod for $t {}
        )+
    };
}
pub(crate) use pod;
