//! The applier: the only writer of the maps.

use lb_common::maps::{BackendValue, FrontendKey, FrontendValue};

use super::{
    applied::{Applied, BackendKey},
    plan::{Op, Plan},
};

/// Typed writes to the datapath maps. Implemented by the real maps (`datapath`) and by
/// [`super::FakeMaps`].
pub trait Maps {
    fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), MapsError>;
    /// Clears a backend slot (arrays cannot delete).
    fn delete_backend(&mut self, id: u32) -> Result<(), MapsError>;
    /// Builds a new inner table from `table` (`table[0]` = size) and swaps it in with one
    /// update of the outer map; the old table is freed by the kernel when unreferenced.
    fn put_table(&mut self, service: u32, table: &[u32]) -> Result<(), MapsError>;
    fn delete_table(&mut self, service: u32) -> Result<(), MapsError>;
    fn put_frontend(&mut self, key: &FrontendKey, value: &FrontendValue) -> Result<(), MapsError>;
    fn delete_frontend(&mut self, key: &FrontendKey) -> Result<(), MapsError>;
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
    /// Map writes done (bookkeeping operations not counted).
    pub writes: usize,
    pub errors: Vec<ApplyError>,
}

/// Carries out `plan`, recording each success in `applied`.
///
/// Every operation is checked against `applied` first: a table is written only if all its
/// backends are programmed, a backend is cleared only if no table references it. A failed
/// write is reported and the operations that depend on it are skipped; everything else
/// goes ahead, and the next plan retries what is missing.
pub fn apply(plan: Plan, applied: &mut Applied, maps: &mut impl Maps) -> ApplyReport {
    let mut report = ApplyReport::default();
    for op in plan.ops {
        let result = match op {
            Op::BindService { name, id } => {
                applied.bind_service(&name, id);
                continue;
            }
            Op::UnbindService { name } => {
                applied.unbind_service(&name);
                continue;
            }
            Op::PutBackend { id, value } => match applied.backends.get(&id) {
                Some(existing) if applied.backend_refs(id) > 0 && *existing != value => {
                    Err(ApplyError::Unsafe(format!("backend {id} is in use by a table")))
                }
                _ => maps.put_backend(id, &value).map(|()| applied.put_backend(id, &value)).map_err(Into::into),
            },
            Op::PutTable { service, table, summary } => {
                let missing = summary
                    .members
                    .iter()
                    .find(|(key, _)| applied.backend_id(key).is_none())
                    .map(|(key, _)| *key);
                match missing {
                    Some(key) => Err(ApplyError::Unsafe(format!(
                        "table of service {service}: backend {key} is not programmed"
                    ))),
                    None => maps
                        .put_table(service, &table)
                        .map(|()| applied.put_table(service, summary))
                        .map_err(Into::into),
                }
            }
            Op::PutFrontend { key, value } => maps
                .put_frontend(&key, &value)
                .map(|()| {
                    applied.frontends.insert(key, value);
                })
                .map_err(Into::into),
            Op::DeleteFrontend { key } => maps
                .delete_frontend(&key)
                .map(|()| {
                    applied.frontends.remove(&key);
                })
                .map_err(Into::into),
            Op::DeleteTable { service } => maps
                .delete_table(service)
                .map(|()| applied.delete_table(service))
                .map_err(Into::into),
            Op::DeleteBackend { id } => {
                if applied.backend_refs(id) > 0 {
                    Err(ApplyError::Unsafe(format!(
                        "backend {id} ({}) is still referenced by a table",
                        applied.backends.get(&id).map(BackendKey::of).map(|k| k.to_string()).unwrap_or_default()
                    )))
                } else {
                    maps.delete_backend(id).map(|()| applied.delete_backend(id)).map_err(Into::into)
                }
            }
        };
        match result {
            Ok(()) => report.writes += 1,
            Err(e) => report.errors.push(e),
        }
    }
    report
}
