//! The only place where packet offsets become pointers.
//!
//! [`Frame`] is implemented by the XDP context (the real thing) and, in host unit tests, by
//! a byte buffer, so parsing and translation are tested on the host with plain `#[test]`.
//! Generic code over `Frame` is monomorphised and inlined: the BPF program only ever sees
//! the XDP implementation.
//!
//! Every access is checked against the end of the frame right here, in the shape the
//! verifier tracks (`data + off + size > data_end`).
//!
//! Verifier: check a whole header once and reach its fields through that one pointer.
//! Two overlapping checks at different offsets let LLVM drop the second as implied by the
//! first; the second access then goes through a freshly computed pointer whose range the
//! verifier never saw (kernel 6.18 tracks ranges per pointer id), and the load is rejected.
//! For the same reason never compute `data_end - data` as a scalar: LLVM then turns the
//! pointer comparisons into scalar ones, which teach the verifier nothing.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;

pub trait Frame {
    /// Address of the first byte.
    fn start(&self) -> usize;
    /// Address one past the last byte.
    fn end(&self) -> usize;

    /// A mutable pointer to a `T` at `off` bytes into the frame, if the whole `T` is inside.
    #[inline(always)]
    fn at_mut<T>(&self, off: usize) -> Option<*mut T> {
        let start = self.start();
        if start + off + size_of::<T>() > self.end() {
            return None;
        }
        Some((start + off) as *mut T)
    }

    /// A pointer to a `T` at `off` bytes into the frame, if the whole `T` is inside.
    #[inline(always)]
    fn at<T>(&self, off: usize) -> Option<*const T> {
        self.at_mut::<T>(off).map(|p| p.cast_const())
    }

    /// Whether the frame holds at least `len` bytes.
    #[inline(always)]
    fn holds(&self, len: usize) -> bool {
        self.start() + len <= self.end()
    }
}

impl Frame for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }

    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

/// A frame in a byte buffer, for host unit tests.
#[cfg(test)]
pub struct Bytes<'a>(pub &'a mut [u8]);

#[cfg(test)]
impl Frame for Bytes<'_> {
    fn start(&self) -> usize {
        self.0.as_ptr() as usize
    }

    fn end(&self) -> usize {
        self.0.as_ptr() as usize + self.0.len()
    }
}
