//! The datapath's signals to the agent (passive health: a backend refused or could not
//! be reached by a new flow), read from the ring buffer as they come. The async reader
//! is woken through epoll, so an idle agent does not poll.

use std::collections::VecDeque;

use aya::maps::{MapData, RingBuf};
use lb_common::maps::{self as names, Signal};
use tokio::io::{Interest, unix::AsyncFd};

use super::DatapathError;

/// The signal ring.
pub struct Signals {
    ring: Ring,
    /// Signals read from the ring but not handed out yet.
    ready: VecDeque<Signal>,
}

enum Ring {
    Plain(RingBuf<MapData>),
    /// Registered with the tokio reactor (by the first [`Signals::next`]).
    Polled(AsyncFd<RingBuf<MapData>>),
    /// Registration failed (the error was returned).
    Gone,
}

fn drain(ring: &mut RingBuf<MapData>, ready: &mut VecDeque<Signal>) {
    while let Some(item) = ring.next() {
        // Records shorter than a Signal are never written by this datapath: skipped.
        if item.len() >= size_of::<Signal>() {
            ready.push_back(bytemuck::pod_read_unaligned(&item[..size_of::<Signal>()]));
        }
    }
}

fn poll_err(source: std::io::Error) -> DatapathError {
    DatapathError::Poll {
        name: names::SIGNALS,
        source,
    }
}

impl Signals {
    pub(super) fn new(ring: RingBuf<MapData>) -> Self {
        Self {
            ring: Ring::Plain(ring),
            ready: VecDeque::new(),
        }
    }

    /// The next signal already in the ring, without waiting.
    pub fn try_next(&mut self) -> Option<Signal> {
        if self.ready.is_empty() {
            match &mut self.ring {
                Ring::Plain(r) => drain(r, &mut self.ready),
                Ring::Polled(fd) => drain(fd.get_mut(), &mut self.ready),
                Ring::Gone => {}
            }
        }
        self.ready.pop_front()
    }

    /// The next signal, waiting for one (within the async runtime).
    pub async fn next(&mut self) -> Result<Signal, DatapathError> {
        if let Ring::Plain(_) = self.ring {
            let Ring::Plain(ring) = std::mem::replace(&mut self.ring, Ring::Gone) else {
                unreachable!("matched above")
            };
            // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, for as
            // long as it lives, and it lives inside the AsyncFd.
            let fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                .map_err(|e| poll_err(e.into()))?;
            self.ring = Ring::Polled(fd);
        }
        loop {
            if let Some(s) = self.try_next() {
                return Ok(s);
            }
            let Ring::Polled(fd) = &mut self.ring else {
                return Err(poll_err(std::io::Error::other(
                    "the ring is not registered",
                )));
            };
            let mut guard = fd.readable_mut().await.map_err(poll_err)?;
            drain(guard.get_inner_mut(), &mut self.ready);
            guard.clear_ready();
        }
    }
}
