//! What can go wrong in a sync, as values: each problem is logged, counted under its
//! metric kind, and returned in the [`super::SyncReport`].

use crate::{
    metrics::ErrorKind,
    sync::{ApplyError, PlanError},
    translate::TranslateError,
};

/// A problem found by a sync.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// An object the translation rejected. `origin` is where it was read (manifests);
    /// with `kept_previous` its last valid translation keeps being served.
    #[error(
        "rejected{}: {}{error}",
        if *kept_previous { " (keeping its last valid version)" } else { "" },
        origin.as_ref().map(|o| format!("{o}: ")).unwrap_or_default()
    )]
    Rejected {
        #[source]
        error: TranslateError,
        origin: Option<String>,
        kept_previous: bool,
    },
    /// A desired service the planner could not program (conflict, capacity).
    #[error("not programmed: {0}")]
    NotProgrammed(#[source] PlanError),
    /// A map write that failed (what depends on it was skipped; the next sync retries).
    #[error("map write failed: {0}")]
    MapWrite(#[source] ApplyError),
}

impl Problem {
    /// The metric kind it is counted under.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Rejected { .. } => ErrorKind::InvalidObject,
            Self::NotProgrammed(_) => ErrorKind::Plan,
            Self::MapWrite(_) => ErrorKind::MapWrite,
        }
    }
}
