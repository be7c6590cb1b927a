//! Backend selection for a new flow: the flow hash (shared with the agent through
//! `lb_common::flow`) indexes the service's live Maglev table, which the frontend names.

use lb_common::{
    flow::maglev_slot,
    maps::{BACKEND_F_ACTIVE, BackendValue, CtKey, FrontendValue, MAGLEV_CHUNK},
    stats::Reason,
};

use crate::maps::{XLB_BACKENDS, XLB_MAGLEV};

/// The backend id chosen for the flow `key` to `frontend`, and the backend, read in place
/// (array elements are never freed; see maps.rs for why the slot is stable).
#[inline(always)]
pub fn backend<'a>(frontend: &FrontendValue, key: &CtKey) -> Result<(u32, &'a BackendValue), Reason> {
    let size = frontend.table_size;
    if size == 0 {
        return Err(Reason::NO_BACKEND);
    }
    // SAFETY: the returned inner map stays valid for this program run (the kernel frees
    // a replaced inner map only after an RCU grace period), and we only read from it.
    let table = unsafe { XLB_MAGLEV.get(&frontend.service_id) }.ok_or(Reason::INTERNAL)?;
    let slot = maglev_slot(key.flow_hash(), size);
    let chunk = table
        .get(frontend.table_base + slot / MAGLEV_CHUNK as u32)
        .ok_or(Reason::INTERNAL)?;
    let id = chunk[(slot % MAGLEV_CHUNK as u32) as usize];
    let backend = XLB_BACKENDS.get(id).ok_or(Reason::INTERNAL)?;
    if backend.flags & BACKEND_F_ACTIVE == 0 {
        return Err(Reason::INTERNAL);
    }
    Ok((id, backend))
}
