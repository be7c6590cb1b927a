//! Per-CPU counters. Nothing per-packet is logged; everything per-packet is counted here.

use lb_common::stats::{ACTIONS, BackendStats, Event, GlobalStats, REASONS, Reason};

use crate::maps::{XLB_BACKEND_STATS, XLB_SERVICE_STATS, XLB_STATS};

/// This CPU's global counters, looked up once per packet.
pub struct Counters {
    global: *mut GlobalStats,
}

impl Counters {
    #[inline(always)]
    pub fn get() -> Self {
        Self {
            global: XLB_STATS.get_ptr_mut(0).unwrap_or(core::ptr::null_mut()),
        }
    }

    /// Counts the packet's outcome; called exactly once per packet.
    #[inline(always)]
    pub fn outcome(&self, action: u32, reason: Reason) {
        let idx = action as usize * REASONS + reason.0 as usize;
        // Verifier: the explicit bound check makes the index provably in range.
        if self.global.is_null() || idx >= ACTIONS * REASONS {
            return;
        }
        // SAFETY: non-null pointer to this CPU's slot; per-CPU, so no concurrent writer.
        unsafe { (*self.global).packets[idx] += 1 };
    }

    #[inline(always)]
    pub fn event(&self, event: Event) {
        let idx = event.0 as usize;
        if self.global.is_null() || idx >= lb_common::stats::EVENTS {
            return;
        }
        // SAFETY: as in `outcome`.
        unsafe { (*self.global).events[idx] += 1 };
    }
}

/// Counts a forward-direction packet of a service.
#[inline(always)]
pub fn service(service_id: u32, bytes: u16, new_flow: bool) {
    if let Some(s) = XLB_SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot returned by the map; no concurrent writer.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes as u64;
            if new_flow {
                (*s).new_flows += 1;
            }
        }
    }
}

/// Counts a packet of a service that has no backend.
#[inline(always)]
pub fn service_no_backend(service_id: u32) {
    if let Some(s) = XLB_SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot returned by the map; no concurrent writer.
        unsafe { (*s).no_backend += 1 };
    }
}

/// Counts a packet to (forward) or from (reply) a backend.
#[inline(always)]
pub fn backend(backend_id: u32, bytes: u16, new_flow: bool, reply: bool) {
    let Some(s): Option<*mut BackendStats> = XLB_BACKEND_STATS.get_ptr_mut(backend_id) else {
        return;
    };
    // SAFETY: per-CPU slot returned by the map; no concurrent writer.
    unsafe {
        if reply {
            (*s).reply_packets += 1;
            (*s).reply_bytes += bytes as u64;
        } else {
            (*s).packets += 1;
            (*s).bytes += bytes as u64;
            if new_flow {
                (*s).new_flows += 1;
            }
        }
    }
}

/// Counts a failed new connection of a backend (`unreachable`: an ICMP unreachable, else
/// a RST answering the SYN) and tells the agent through the signal ring. A full ring
/// loses the signal, not the count.
#[inline(always)]
pub fn backend_failed(backend_id: u32, service_id: u32, unreachable: bool) {
    if let Some(s) = XLB_BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot returned by the map; no concurrent writer.
        unsafe {
            if unreachable {
                (*s).unreachable += 1;
            } else {
                (*s).conn_refused += 1;
            }
        }
    }
    let kind = if unreachable {
        lb_common::maps::SIGNAL_UNREACHABLE
    } else {
        lb_common::maps::SIGNAL_CONN_REFUSED
    };
    let _ = crate::maps::XLB_SIGNALS.output(
        &lb_common::maps::Signal {
            kind,
            backend_id,
            service_id,
            _pad: 0,
        },
        0,
    );
}

/// Counts a new flow of a service and its backend that needs no per-packet work here (a
/// socket translated at connect or sendmsg time).
#[inline(always)]
pub fn socket_flow(service_id: u32, backend_id: u32) {
    if let Some(s) = XLB_SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot returned by the map; no concurrent writer.
        unsafe { (*s).new_flows += 1 };
    }
    if let Some(b) = XLB_BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: as above.
        unsafe { (*b).new_flows += 1 };
    }
}
