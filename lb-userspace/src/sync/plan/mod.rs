//! The planner: a pure function from (desired, applied) to the operations that reconcile
//! them. It never touches a map; Maglev tables are computed here. The phases are in
//! [`planner`].

mod planner;

use std::collections::BTreeSet;

use lb_common::maps::{BackendValue, FrontendKey, FrontendValue};

use self::planner::Planner;
use super::applied::{Applied, AppliedTable};
use crate::model::{Desired, ServiceName, ServiceSpec, object_range};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanConfig {
    /// Upper bound of a Maglev table's size (it is rounded down to a prime).
    pub max_table_size: u32,
    pub max_frontends: u32,
}

impl Default for PlanConfig {
    fn default() -> Self {
        Self {
            max_table_size: 65_537,
            max_frontends: lb_common::maps::MAX_FRONTENDS,
        }
    }
}

/// One write to the maps, or a change of the agent's own bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Binds a service id to a desired service (bookkeeping only).
    BindService {
        name: ServiceName,
        id: u32,
    },
    PutBackend {
        id: u32,
        value: BackendValue,
    },
    /// Writes a table (`slots`: backend ids) into the half `summary` names: the service's
    /// free half, or, with `realloc`, the first half of a new inner array of
    /// `summary.capacity` chunks per half that replaces the old array. It goes live when
    /// the service's frontends are switched to it (the `PutFrontend`s that follow).
    PutTable {
        service: u32,
        slots: Vec<u32>,
        summary: AppliedTable,
        realloc: bool,
    },
    /// Makes backends members of a service with session affinity (before its frontends
    /// switch to a table that holds them).
    PutMembers {
        service: u32,
        backends: Vec<u32>,
    },
    PutFrontend {
        key: FrontendKey,
        value: FrontendValue,
    },
    DeleteFrontend {
        key: FrontendKey,
    },
    /// Ends memberships (after the frontends left the tables that held them).
    DeleteMembers {
        service: u32,
        backends: Vec<u32>,
    },
    DeleteTable {
        service: u32,
    },
    DeleteBackend {
        id: u32,
    },
    /// Releases a service id (bookkeeping only).
    UnbindService {
        name: ServiceName,
    },
    /// Records that an adopted table is exactly the one this plan would write
    /// (bookkeeping only).
    AdoptTable {
        service: u32,
        summary: AppliedTable,
    },
}

/// A desired service that could not be (fully) programmed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{service}: frontend {frontend} is already served by {owner}; keeping that one")]
    FrontendConflict {
        service: ServiceName,
        frontend: String,
        owner: ServiceName,
    },
    #[error("{service}: no free service id (at most {limit} services)")]
    ServicesFull { service: ServiceName, limit: u32 },
    #[error("{service}: no free backend id (at most {limit} backends)")]
    BackendsFull { service: ServiceName, limit: u32 },
    #[error("{service}: frontend table full (at most {limit} frontends)")]
    FrontendsFull { service: ServiceName, limit: u32 },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<Op>,
    pub errors: Vec<PlanError>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Plans the reconciliation of the services in `scope` (every service when `None`).
///
/// `scope` holds Kubernetes objects (namespace, name): the services translated from them
/// are compared with what is applied for them. `desired` is always the whole desired state,
/// so that frontend conflicts with services outside the scope are still seen.
pub fn plan(
    desired: &Desired,
    applied: &Applied,
    scope: Option<&BTreeSet<(String, String)>>,
    cfg: &PlanConfig,
) -> Plan {
    // Everything this plan looks at is found through the scope (ordered ranges and the
    // per-service frontend index), so a scoped plan costs what its scope holds, not what
    // the whole state holds.
    let mut planner = Planner::new(desired, applied, scope, cfg);
    let wanted: Vec<(&ServiceName, &ServiceSpec)> = match scope {
        None => desired.services.iter().collect(),
        Some(objects) => objects
            .iter()
            .flat_map(|(ns, name)| object_range(&desired.services, ns, name))
            .collect(),
    };
    for (name, spec) in wanted {
        let Some(id) = planner.bind(name, spec) else {
            continue;
        };
        let live = planner.table(id, name, spec);
        planner.memberships(id, spec, live.as_ref());
        planner.frontends(id, name, spec, live.as_ref());
    }
    planner.prune_scope();
    if scope.is_none() {
        planner.prune_leftovers();
    }
    planner.retire_backends();
    Plan {
        ops: planner.ops.into_ops(),
        errors: planner.errors,
    }
}
