//! What a user is told about an object xlb cannot serve, beyond the log line and the
//! metric: a notice per problem of an object, handed without waiting to whoever publishes
//! them (with the Kubernetes source: an Event on the object, see
//! [`crate::sources::events`]). A full queue drops the notice; the sync never waits.

use super::Problem;
use crate::sync::PlanError;

/// One problem of one object, said to its owner.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Notice {
    /// `Service` (the objects xlb translates and reports on).
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// The object's uid, when known: `kubectl describe` finds events by it.
    pub uid: Option<String>,
    /// A short CamelCase reason, as Events carry.
    pub reason: &'static str,
    pub message: String,
}

/// Where notices go.
pub type NoticeSender = tokio::sync::mpsc::Sender<Notice>;

impl Notice {
    /// The notice of a sync problem about one object, if it is about one (a failed map
    /// write is the node's problem, not the object's).
    pub fn of(problem: &Problem) -> Option<Self> {
        match problem {
            Problem::Rejected { error, .. } => Some(Self {
                kind: error.kind,
                namespace: error.namespace.clone(),
                name: error.name.clone(),
                uid: None,
                reason: "Rejected",
                message: format!("xlb cannot serve this {}: {}", error.kind, error.reason),
            }),
            Problem::NotProgrammed(e) => {
                let (service, reason) = match e {
                    PlanError::FrontendConflict { service, .. } => (service, "FrontendConflict"),
                    PlanError::ServicesFull { service, .. }
                    | PlanError::BackendsFull { service, .. }
                    | PlanError::FrontendsFull { service, .. } => (service, "CapacityExceeded"),
                };
                Some(Self {
                    kind: "Service",
                    namespace: service.namespace.clone(),
                    name: service.name.clone(),
                    uid: None,
                    reason,
                    message: format!("xlb does not serve part of this Service: {e}"),
                })
            }
            Problem::MapWrite(_) => None,
        }
    }

    /// The notice of a part of a Service that was skipped (an unsupported port, an
    /// address of a family the Service does not have).
    pub fn skipped(namespace: &str, name: &str, warning: &str) -> Self {
        Self {
            kind: "Service",
            namespace: namespace.into(),
            name: name.into(),
            uid: None,
            reason: "Skipped",
            message: format!("xlb skips part of this Service: {warning}"),
        }
    }
}
