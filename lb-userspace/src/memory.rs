//! The agent's memory, beyond what Rust manages.

/// Returns freed heap memory to the system. glibc keeps freed memory in its arenas (one
/// per thread that allocated) for reuse, so after a burst (a huge file read, then gone)
/// the agent's resident memory would stay at its peak.
pub fn release_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; 0 keeps no padding.
    unsafe {
        libc::malloc_trim(0);
    }
}
