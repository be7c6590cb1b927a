//! The only place where packet offsets become pointers.
//!
//! Every access is checked against `data_end` right here, in the shape the verifier tracks
//! (`data + off + size > data_end`), so the rest of the program works with plain pointers.
//!
//! Verifier: check a whole header once and reach its fields through that one pointer.
//! Two overlapping checks at different offsets let LLVM drop the second as implied by the
//! first; the second access then goes through a freshly computed pointer whose range the
//! verifier never saw (kernel 6.18 tracks ranges per pointer id), and the load is rejected.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;

/// A pointer to a `T` at `off` bytes into the frame, if the whole `T` is inside it.
#[inline(always)]
pub fn at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    at_mut::<T>(ctx, off).map(|p| p.cast_const())
}

/// A mutable pointer to a `T` at `off` bytes into the frame, if the whole `T` is inside it.
#[inline(always)]
pub fn at_mut<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Whether the frame holds at least `len` bytes.
///
/// Verifier: never compute `data_end - data` as a scalar. LLVM then rewrites the pointer
/// comparisons in [`at_mut`] into scalar comparisons against that length, and the verifier
/// (which only learns packet ranges from pointer comparisons) rejects the accesses.
#[inline(always)]
pub fn frame_holds(ctx: &XdpContext, len: usize) -> bool {
    ctx.data() + len <= ctx.data_end()
}
