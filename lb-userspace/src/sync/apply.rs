//! The applier: the only writer of the maps.

use std::time::{Duration, Instant};

use lb_common::maps::{BackendValue, FrontendKey, FrontendValue};

use super::{
    applied::Applied,
    plan::{Op, Plan},
};
use crate::model::BackendKey;

/// How long a backend no table references stays programmed before it is cleared: a packet
/// that read the previous table a moment ago still finds it. Far longer than any program
/// run, and short enough that ids come back soon.
pub const BACKEND_GRACE: Duration = Duration::from_secs(1);
/// How long after a table went live its previous half may be rewritten (packets that read
/// the old frontend value just before the switch are done with it by then).
pub const HALF_GRACE: Duration = Duration::from_millis(2);

/// One table to write (see [`Maps::put_tables`]).
#[derive(Debug)]
pub struct TableWrite<'a> {
    pub service: u32,
    /// First chunk of the half to write.
    pub base: u32,
    /// Backend ids, one per slot.
    pub slots: &'a [u32],
    /// Create a new inner array of twice this many chunks for the service first.
    pub new_capacity: Option<u32>,
}

/// Typed writes to the datapath maps. Implemented by the real maps (`datapath`) and by
/// [`super::FakeMaps`].
pub trait Maps {
    fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), MapsError>;
    /// Clears a backend slot (arrays cannot delete).
    fn delete_backend(&mut self, id: u32) -> Result<(), MapsError>;
    /// Writes tables into their services' inner arrays (never into a live half). New inner
    /// arrays replace the services' old ones in one batched outer-map update: each syscall
    /// update of a map of maps waits for an RCU grace period, so there is one for the lot.
    fn put_tables(&mut self, writes: &[TableWrite<'_>]) -> Result<(), MapsError>;
    /// Removes services' inner arrays, in one batch (one grace period).
    fn delete_tables(&mut self, services: &[u32]) -> Result<(), MapsError>;
    fn put_frontend(&mut self, key: &FrontendKey, value: &FrontendValue) -> Result<(), MapsError>;
    fn delete_frontend(&mut self, key: &FrontendKey) -> Result<(), MapsError>;
    /// Adds affinity memberships of `service` (one batch).
    fn put_members(&mut self, service: u32, backends: &[u32]) -> Result<(), MapsError>;
    /// Removes affinity memberships of `service` (one batch).
    fn delete_members(&mut self, service: u32, backends: &[u32]) -> Result<(), MapsError>;
    /// Deletes the connection-table entries (both directions) of the flows of each
    /// target: their next packet is balanced afresh. Returns how many entries went. The
    /// fake maps hold no connection table.
    fn sweep_flows(&mut self, targets: &[FlowTarget]) -> Result<usize, MapsError> {
        let _ = targets;
        Ok(0)
    }
}

/// The flows of one service to one backend, of one protocol (see [`Maps::sweep_flows`]).
/// By address rather than backend id: an id is reused once its backend is retired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowTarget {
    pub service: u32,
    pub backend: BackendKey,
}

/// A map write that failed.
#[derive(Debug, thiserror::Error)]
#[error("{map}: {op} {what}: {source}")]
pub struct MapsError {
    pub map: &'static str,
    pub op: &'static str,
    pub what: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// An operation that was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Write(#[from] MapsError),
    /// The operation would break an invariant of the maps; a previous write failed.
    #[error("skipped: {0}")]
    Unsafe(String),
}

#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Map writes done (batches count their elements; bookkeeping not counted).
    pub writes: usize,
    pub errors: Vec<ApplyError>,
}

#[derive(Clone, Copy, Debug)]
pub struct ApplyConfig {
    /// See [`BACKEND_GRACE`]; golden tests use zero to show the end state at once.
    pub backend_grace: Duration,
}

impl Default for ApplyConfig {
    fn default() -> Self {
        Self {
            backend_grace: BACKEND_GRACE,
        }
    }
}

/// Carries out `plan`, recording each success in `applied` (default settings).
pub fn apply(plan: Plan, applied: &mut Applied, maps: &mut impl Maps) -> ApplyReport {
    apply_with(plan, applied, maps, &ApplyConfig::default())
}

/// Carries out `plan`, recording each success in `applied`.
///
/// Every operation is checked against `applied` first: a table is written only if all its
/// backends are programmed, a frontend is switched only to a table that was written, a
/// backend is retired only if no table references it. A failed write is reported and what
/// depends on it is skipped; everything else goes ahead, and the next plan retries what is
/// missing. Retired backends are cleared once their grace period is over (here, or by
/// [`reap`]).
pub fn apply_with(
    plan: Plan,
    applied: &mut Applied,
    maps: &mut impl Maps,
    cfg: &ApplyConfig,
) -> ApplyReport {
    let mut report = ApplyReport::default();
    let mut ops = plan.ops.into_iter().peekable();
    while let Some(op) = ops.next() {
        let result = match op {
            Op::BindService { name, id } => {
                applied.bind_service(&name, id);
                continue;
            }
            Op::UnbindService { name } => {
                applied.unbind_service(&name);
                continue;
            }
            Op::AdoptTable { service, summary } => {
                applied.adopt_table(service, summary);
                continue;
            }
            Op::PutBackend { id, value } => match applied.backends.get(&id) {
                Some(existing) if applied.backend_refs(id) > 0 && *existing != value => Err(
                    ApplyError::Unsafe(format!("backend {id} is in use by a table")),
                ),
                _ => maps
                    .put_backend(id, &value)
                    .map(|()| applied.put_backend(id, &value))
                    .map_err(Into::into),
            },
            Op::PutTable {
                service,
                slots,
                summary,
                realloc,
            } => {
                let mut batch = vec![(service, slots, summary, realloc)];
                while let Some(Op::PutTable { .. }) = ops.peek() {
                    if let Some(Op::PutTable {
                        service,
                        slots,
                        summary,
                        realloc,
                    }) = ops.next()
                    {
                        batch.push((service, slots, summary, realloc));
                    }
                }
                put_tables(batch, applied, maps, &mut report);
                continue;
            }
            Op::PutFrontend { key, value } => {
                let ready = value.table_size == 0
                    || applied.tables.get(&value.service_id).is_some_and(|t| {
                        t.size == value.table_size && t.base() == value.table_base
                    });
                if ready {
                    maps.put_frontend(&key, &value)
                        .map(|()| applied.put_frontend(key, value))
                        .map_err(Into::into)
                } else {
                    Err(ApplyError::Unsafe(format!(
                        "frontend {}: the table of service {} was not written",
                        key, value.service_id
                    )))
                }
            }
            Op::PutMembers { service, backends } => {
                match backends.iter().find(|b| !applied.backends.contains_key(b)) {
                    Some(b) => Err(ApplyError::Unsafe(format!(
                        "affinity members of service {service}: backend {b} is not programmed"
                    ))),
                    None => maps
                        .put_members(service, &backends)
                        .map(|()| applied.put_members(service, &backends))
                        .map_err(Into::into),
                }
            }
            Op::DeleteMembers { service, backends } => maps
                .delete_members(service, &backends)
                .map(|()| applied.delete_members(service, &backends))
                .map_err(Into::into),
            Op::DeleteFrontend { key } => maps
                .delete_frontend(&key)
                .map(|()| applied.delete_frontend(&key))
                .map_err(Into::into),
            Op::DeleteTable { service } => {
                let mut batch = vec![service];
                while let Some(Op::DeleteTable { .. }) = ops.peek() {
                    if let Some(Op::DeleteTable { service }) = ops.next() {
                        batch.push(service);
                    }
                }
                match maps.delete_tables(&batch) {
                    Ok(()) => {
                        for s in &batch {
                            applied.delete_table(*s);
                        }
                        report.writes += batch.len();
                    }
                    Err(e) => report.errors.push(e.into()),
                }
                continue;
            }
            Op::DeleteBackend { id } => {
                if applied.backend_refs(id) > 0 {
                    Err(ApplyError::Unsafe(format!(
                        "backend {id} ({}) is still referenced by a table",
                        applied
                            .backends
                            .get(&id)
                            .map(BackendKey::of)
                            .map(|k| k.to_string())
                            .unwrap_or_default()
                    )))
                } else {
                    // Cleared by `reap` once no packet can still be reading a table that
                    // named it.
                    applied.retiring.entry(id).or_insert_with(Instant::now);
                    continue;
                }
            }
        };
        match result {
            Ok(()) => report.writes += 1,
            Err(e) => report.errors.push(e),
        }
    }
    let reaped = reap_older_than(applied, maps, cfg.backend_grace);
    report.writes += reaped.writes;
    report.errors.extend(reaped.errors);
    report
}

/// Writes a batch of tables: checks each, waits out a too-recent switch, writes.
fn put_tables(
    batch: Vec<(u32, Vec<u32>, super::AppliedTable, bool)>,
    applied: &mut Applied,
    maps: &mut impl Maps,
    report: &mut ApplyReport,
) {
    let mut ok = Vec::new();
    for (service, slots, summary, realloc) in batch {
        let missing = summary
            .members
            .iter()
            .find(|(key, _)| applied.backend_id(key).is_none());
        if let Some((key, _)) = missing {
            report.errors.push(ApplyError::Unsafe(format!(
                "table of service {service}: backend {key} is not programmed"
            )));
            continue;
        }
        if !realloc
            && applied
                .tables
                .get(&service)
                .is_none_or(|t| t.capacity != summary.capacity)
        {
            report.errors.push(ApplyError::Unsafe(format!(
                "table of service {service}: planned into an array that is not programmed"
            )));
            continue;
        }
        ok.push((service, slots, summary, realloc));
    }
    // A half that stopped being live a moment ago may still be read: wait out the rest
    // of its grace (only when one service changes twice within it).
    let wait = ok
        .iter()
        .filter(|(_, _, _, realloc)| !realloc)
        .filter_map(|(s, _, _, _)| applied.flipped.get(s))
        .map(|t| HALF_GRACE.saturating_sub(t.elapsed()))
        .max()
        .unwrap_or_default();
    if !wait.is_zero() {
        std::thread::sleep(wait);
    }
    let writes: Vec<TableWrite<'_>> = ok
        .iter()
        .map(|(service, slots, summary, realloc)| TableWrite {
            service: *service,
            base: summary.base(),
            slots,
            new_capacity: realloc.then_some(summary.capacity),
        })
        .collect();
    if writes.is_empty() {
        return;
    }
    match maps.put_tables(&writes) {
        Ok(()) => {
            report.writes += writes.len();
            drop(writes);
            for (service, _, summary, _) in ok {
                applied.put_table(service, summary);
            }
        }
        Err(e) => report.errors.push(e.into()),
    }
}

/// Clears the retired backends whose grace period is over (the agent calls this on a
/// timer, so that retirements complete without further changes).
pub fn reap(applied: &mut Applied, maps: &mut impl Maps) -> ApplyReport {
    reap_older_than(applied, maps, BACKEND_GRACE)
}

fn reap_older_than(applied: &mut Applied, maps: &mut impl Maps, grace: Duration) -> ApplyReport {
    let mut report = ApplyReport::default();
    let due: Vec<u32> = applied
        .retiring
        .iter()
        .filter(|(id, since)| {
            since.elapsed() >= grace && applied.backend_refs(**id) == 0 && !applied.is_member(**id)
        })
        .map(|(id, _)| *id)
        .collect();
    for id in due {
        match maps.delete_backend(id) {
            Ok(()) => {
                applied.delete_backend(id);
                report.writes += 1;
            }
            Err(e) => report.errors.push(e.into()),
        }
    }
    report
}
