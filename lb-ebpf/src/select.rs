//! Backend selection for a new flow: a hash (shared with the agent through
//! `lb_common::flow`) indexes the service's live Maglev table, which the frontend names.
//!
//! Services with `sessionAffinity: ClientIP` hash the client address alone, and remember
//! each client's backend in an LRU map: while the client opens new flows within the
//! timeout, and the backend is still a member of the service (the agent keeps the
//! membership map), the client returns to it even when the backend set changes.

use lb_common::{
    flow::{client_hash, maglev_slot},
    maps::{
        AffinityKey, AffinityValue, BACKEND_F_ACTIVE, BackendValue, CtKey, FrontendValue,
        MAGLEV_CHUNK, MemberKey,
    },
    stats::Reason,
};

use crate::maps::{XLB_AFFINITY, XLB_AFFINITY_MEMBERS, XLB_BACKENDS, XLB_MAGLEV};

const NS_PER_S: u64 = 1_000_000_000;
const BPF_ANY: u64 = 0;

/// The backend id at `hash`'s slot of the service's live table, and the backend, read in
/// place (array elements are never freed; see maps.rs for why the slot is stable).
#[inline(always)]
pub fn backend<'a>(frontend: &FrontendValue, hash: u32) -> Result<(u32, &'a BackendValue), Reason> {
    let size = frontend.table_size;
    if size == 0 {
        return Err(Reason::NO_BACKEND);
    }
    // SAFETY: the returned inner map stays valid for this program run (the kernel frees
    // a replaced inner map only after an RCU grace period), and we only read from it.
    let table = unsafe { XLB_MAGLEV.get(&frontend.service_id) }.ok_or(Reason::INTERNAL)?;
    let slot = maglev_slot(hash, size);
    let chunk = table
        .get(frontend.table_base + slot / MAGLEV_CHUNK as u32)
        .ok_or(Reason::INTERNAL)?;
    by_id(chunk[(slot % MAGLEV_CHUNK as u32) as usize])
}

/// A programmed backend by id.
#[inline(always)]
pub fn by_id<'a>(id: u32) -> Result<(u32, &'a BackendValue), Reason> {
    let backend = XLB_BACKENDS.get(id).ok_or(Reason::INTERNAL)?;
    if backend.flags & BACKEND_F_ACTIVE == 0 {
        return Err(Reason::INTERNAL);
    }
    Ok((id, backend))
}

/// The hash a new flow of a session-affinity service is placed by: the client's.
#[inline(always)]
pub fn affinity_hash(key: &CtKey) -> u32 {
    client_hash(key.family, &key.src)
}

#[inline(always)]
fn affinity_key(service_id: u32, key: &CtKey) -> AffinityKey {
    AffinityKey {
        client: key.src,
        service_id,
        family: key.family,
        _pad: [0; 3],
    }
}

/// The backend the client of `key` was last sent to by this service, if that was within
/// the service's timeout and the backend is still a member; 0 otherwise (backend ids
/// start at 1). A hit refreshes the entry's timestamp in place.
///
/// Not inlined: the new-flow path's stack has no room for the key (see pipeline.rs).
#[inline(never)]
pub fn remembered(frontend: &FrontendValue, key: &CtKey, now: u64) -> u32 {
    let akey = affinity_key(frontend.service_id, key);
    let Some(entry) = XLB_AFFINITY.get_ptr_mut(&akey) else {
        return 0;
    };
    // SAFETY: a map value pointer used during this run; an LRU element recycled meanwhile
    // by another CPU yields at worst a wrong id, which the membership check below rejects
    // unless it is a member of this service (then it is a valid choice anyway).
    let (backend_id, last_seen) = unsafe { ((*entry).backend_id, (*entry).last_seen_ns) };
    if now.saturating_sub(last_seen) > frontend.affinity_timeout_s as u64 * NS_PER_S {
        return 0;
    }
    let member = MemberKey {
        service_id: frontend.service_id,
        backend_id,
    };
    // SAFETY: read-only presence check.
    if unsafe { XLB_AFFINITY_MEMBERS.get(&member) }.is_none() {
        return 0;
    }
    // SAFETY: as above; one aligned 8-byte store.
    unsafe { (*entry).last_seen_ns = now };
    backend_id
}

/// Records that the client of `key` was sent to `backend_id` by service `service_id`.
#[inline(never)]
pub fn remember(service_id: u32, key: &CtKey, backend_id: u32, now: u64) -> u32 {
    let akey = affinity_key(service_id, key);
    let value = AffinityValue {
        backend_id,
        _pad: 0,
        last_seen_ns: now,
    };
    // A failed insert only costs the client its affinity for this flow.
    XLB_AFFINITY.insert(&akey, &value, BPF_ANY).is_err() as u32
}
