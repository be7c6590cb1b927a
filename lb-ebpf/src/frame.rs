//! The only place where packet offsets become pointers, and where packet words are read
//! and written.
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

use aya_ebpf::programs::{TcContext, XdpContext};

/// Largest offset the datapath ever reads at (headers end well before).
pub const MAX_OFFSET: usize = 512;

pub trait Frame {
    /// Address of the first byte.
    fn start(&self) -> usize;
    /// Address one past the last byte.
    fn end(&self) -> usize;

    /// A mutable pointer to a `T` at `off` bytes into the frame, if the whole `T` is inside.
    #[inline(always)]
    fn at_mut<T>(&self, off: usize) -> Option<*mut T> {
        // Verifier: an offset that reached here through memory (the parsed packet is passed
        // between BPF functions on the stack) has lost its known range, and pointer
        // arithmetic with an unbounded scalar is rejected. Bounding it here covers every
        // access.
        if off > MAX_OFFSET {
            return None;
        }
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

    /// Copies `len` (at most [`CHUNK`]) bytes at `off` into `buf`, through the kernel's
    /// load-bytes helper: any offset, paged parts of a socket buffer included. For the
    /// rare whole-message reads (checksum verification) that direct access cannot bound.
    fn load(&self, off: usize, buf: &mut [u8; CHUNK], len: usize) -> bool;
}

/// Bytes [`Frame::load`] copies at most at once.
pub const CHUNK: usize = 64;

/// `len` as the load helpers' length argument, if it is in 1..=CHUNK.
///
/// Verifier: the helper's length must be provably in 1..=CHUNK. LLVM drops a plain
/// `len == 0` test when the loop around the call implies it, and the verifier then sees a
/// range starting at 0 ("invalid zero-sized read"); masking and adding one gives the
/// same value with a range it can prove.
#[inline(always)]
fn helper_len(len: usize) -> Option<u32> {
    if len == 0 || len > CHUNK {
        return None;
    }
    Some((((len - 1) & (CHUNK - 1)) + 1) as u32)
}

/// Verifier: the context fields are read with volatile loads. Otherwise LLVM's argument
/// promotion hands a non-inlined function (the parser) `data` and `data_end` as integers,
/// which it zero-extends again with shifts, and the verifier forbids arithmetic on
/// `pkt_end`.
impl Frame for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        // SAFETY: the context pointer the kernel passed to the program.
        unsafe { core::ptr::read_volatile(&(*self.ctx).data) as usize }
    }

    #[inline(always)]
    fn end(&self) -> usize {
        // SAFETY: as above.
        unsafe { core::ptr::read_volatile(&(*self.ctx).data_end) as usize }
    }

    #[inline(always)]
    fn load(&self, off: usize, buf: &mut [u8; CHUNK], len: usize) -> bool {
        let Some(len) = helper_len(len) else {
            return false;
        };
        // SAFETY: the program's context; `buf` holds CHUNK >= len writable bytes.
        unsafe {
            aya_ebpf::helpers::generated::bpf_xdp_load_bytes(
                self.ctx,
                off as u32,
                buf.as_mut_ptr().cast(),
                len,
            ) == 0
        }
    }
}

/// The same for a socket buffer (tc programs): direct packet access to its linear part
/// (the tc program pulls the headers in first).
impl Frame for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        // SAFETY: the context pointer the kernel passed to the program.
        unsafe { core::ptr::read_volatile(&(*self.skb.skb).data) as usize }
    }

    #[inline(always)]
    fn end(&self) -> usize {
        // SAFETY: as above.
        unsafe { core::ptr::read_volatile(&(*self.skb.skb).data_end) as usize }
    }

    #[inline(always)]
    fn load(&self, off: usize, buf: &mut [u8; CHUNK], len: usize) -> bool {
        let Some(len) = helper_len(len) else {
            return false;
        };
        // SAFETY: the program's socket buffer; `buf` holds CHUNK >= len writable bytes.
        unsafe {
            aya_ebpf::helpers::generated::bpf_skb_load_bytes(
                self.skb.skb.cast(),
                off as u32,
                buf.as_mut_ptr().cast(),
                len,
            ) == 0
        }
    }
}

// Words in packet memory. Header fields are byte arrays (alignment 1), so LLVM reads a
// 32-bit address as four byte loads and shifts (an IPv6 address as sixteen). In BPF these
// are single loads and stores: the kernel allows unaligned packet access on architectures
// with efficient unaligned access (x86-64, arm64) unless the program asks for strict
// alignment, and the JIT emits plain moves. On the host (unit tests) they are exact
// unaligned accesses.

/// Loads the word at `p` (network byte order kept: the value is the memory image).
///
/// # Safety
/// `p` must point to 4 readable bytes of the frame (checked with [`Frame::at`]).
#[inline(always)]
pub unsafe fn load_u32(p: *const [u8; 4]) -> u32 {
    #[cfg(target_arch = "bpf")]
    // SAFETY: see the comment above the function and its contract.
    unsafe {
        *(p as *const u32)
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: the caller guarantees 4 readable bytes.
    unsafe {
        core::ptr::read_unaligned(p as *const u32)
    }
}

/// Stores `v` (a memory image) at `p`.
///
/// # Safety
/// `p` must point to 4 writable bytes of the frame (checked with [`Frame::at_mut`]).
#[inline(always)]
pub unsafe fn store_u32(p: *mut [u8; 4], v: u32) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: see the comment above `load_u32` and the contract.
    unsafe {
        *(p as *mut u32) = v
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: the caller guarantees 4 writable bytes.
    unsafe {
        core::ptr::write_unaligned(p as *mut u32, v)
    }
}

/// Loads the 16-bit word at `p` (memory image).
///
/// # Safety
/// `p` must point to 2 readable bytes of the frame.
#[inline(always)]
pub unsafe fn load_u16(p: *const [u8; 2]) -> u16 {
    #[cfg(target_arch = "bpf")]
    // SAFETY: see the comment above `load_u32` and the contract.
    unsafe {
        *(p as *const u16)
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: the caller guarantees 2 readable bytes.
    unsafe {
        core::ptr::read_unaligned(p as *const u16)
    }
}

/// Stores the 16-bit word `v` (memory image) at `p`.
///
/// # Safety
/// `p` must point to 2 writable bytes of the frame.
#[inline(always)]
pub unsafe fn store_u16(p: *mut [u8; 2], v: u16) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: see the comment above `load_u32` and the contract.
    unsafe {
        *(p as *mut u16) = v
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: the caller guarantees 2 writable bytes.
    unsafe {
        core::ptr::write_unaligned(p as *mut u16, v)
    }
}

/// Loads a 16-byte address as four words.
///
/// # Safety
/// `p` must point to 16 readable bytes of the frame.
#[inline(always)]
pub unsafe fn load_addr6(p: *const [u8; 16]) -> [u32; 4] {
    let w = p as *const [u8; 4];
    // SAFETY: four consecutive words inside the 16 bytes the caller guarantees.
    unsafe {
        [
            load_u32(w),
            load_u32(w.add(1)),
            load_u32(w.add(2)),
            load_u32(w.add(3)),
        ]
    }
}

/// Stores a 16-byte address from four words.
///
/// # Safety
/// `p` must point to 16 writable bytes of the frame.
#[inline(always)]
pub unsafe fn store_addr6(p: *mut [u8; 16], v: &[u32; 4]) {
    let w = p as *mut [u8; 4];
    // SAFETY: four consecutive words inside the 16 bytes the caller guarantees.
    unsafe {
        store_u32(w, v[0]);
        store_u32(w.add(1), v[1]);
        store_u32(w.add(2), v[2]);
        store_u32(w.add(3), v[3]);
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

    fn load(&self, off: usize, buf: &mut [u8; CHUNK], len: usize) -> bool {
        match self.0.get(off..off + len) {
            Some(src) if len <= CHUNK => {
                buf[..len].copy_from_slice(src);
                true
            }
            _ => false,
        }
    }
}
