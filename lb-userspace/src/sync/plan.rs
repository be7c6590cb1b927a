//! The planner: a pure function from (desired, applied) to the operations that reconcile
//! them. It never touches a map; Maglev tables are computed here.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::maps::{
    BackendValue, FRONTEND_F_AFFINITY, FrontendKey, FrontendValue, MAX_TABLE_SIZE, maglev_chunks,
};

use super::applied::{Applied, AppliedTable};
use crate::{
    maglev::{self, table_for, table_slots},
    model::{BackendKey, Desired, ServiceName, ServiceSpec, object_range},
};

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

/// The members a table is built from: backends and weights, sorted.
fn members(spec: &ServiceSpec) -> Vec<(BackendKey, u32)> {
    let mut m: Vec<(BackendKey, u32)> = spec
        .backends
        .iter()
        .filter(|b| b.weight > 0)
        .map(|b| {
            (
                BackendKey {
                    ip: b.ip,
                    port: b.port,
                    proto: spec.proto,
                },
                b.weight,
            )
        })
        .collect();
    m.sort();
    m
}

/// A frontend of service `id`, pointing at its live table `table` (none: no backend).
fn frontend_value(id: u32, spec: &ServiceSpec, table: Option<&AppliedTable>) -> FrontendValue {
    let (mut flags, affinity_timeout_s) = match spec.affinity_timeout_s {
        Some(t) => (FRONTEND_F_AFFINITY, t),
        None => (0, 0),
    };
    if spec.fail_open {
        flags |= lb_common::maps::FRONTEND_F_FAIL_OPEN;
    }
    FrontendValue {
        service_id: id,
        flags,
        affinity_timeout_s,
        table_size: table.map_or(0, |t| t.size),
        table_base: table.map_or(0, AppliedTable::base),
        _pad: 0,
    }
}

/// Where a changed table of `size` slots goes: the free half of the service's array when
/// it fits without wasting most of it, else a new array with 25% headroom (so that a
/// backend or two more or less does not reallocate, which costs an RCU grace period).
fn placement(size: u32, old: Option<&AppliedTable>) -> (u32, u32, bool) {
    let need = maglev_chunks(size);
    match old {
        Some(t) if need <= t.capacity && need * 4 >= t.capacity => (t.capacity, 1 - t.half, false),
        _ => (need + (need / 4).max(1), 0, true),
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
    let mut plan = Plan::default();
    let mut service_pool = applied.service_pool.clone();
    let mut backend_pool = applied.backend_pool.clone();

    let mut bind = Vec::new();
    let mut put_backends = Vec::new();
    let mut put_tables = Vec::new();
    let mut put_members = Vec::new();
    let mut put_frontends = Vec::new();
    let mut delete_frontends = Vec::new();
    let mut delete_members = Vec::new();
    let mut delete_tables = Vec::new();
    let mut delete_backends = Vec::new();
    let mut unbind = Vec::new();

    // Backends this plan creates, and reference-count changes of existing ones.
    let mut new_backends: BTreeMap<BackendKey, u32> = BTreeMap::new();
    let mut ref_delta: BTreeMap<BackendKey, i64> = BTreeMap::new();
    // Frontends claimed in this plan, by the service claiming them.
    let mut claimed: BTreeMap<FrontendKey, &ServiceName> = BTreeMap::new();
    let mut frontend_count = applied.frontends.len() as u64;

    let wanted: Vec<(&ServiceName, &ServiceSpec)> = match scope {
        None => desired.services.iter().collect(),
        Some(objects) => objects
            .iter()
            .flat_map(|(ns, name)| object_range(&desired.services, ns, name))
            .collect(),
    };
    // The applied services in scope.
    let applied_in_scope: Vec<(&ServiceName, &u32)> = match scope {
        None => applied.services.iter().collect(),
        Some(objects) => objects
            .iter()
            .flat_map(|(ns, name)| object_range(&applied.services, ns, name))
            .collect(),
    };

    // Adopted service ids (unbound) claimed in this plan.
    let mut adopting: BTreeSet<u32> = BTreeSet::new();
    for (name, spec) in &wanted {
        // An unbound id one of the service's frontends leads to: adopted from an earlier
        // agent's maps; binding to it keeps its table and frontends as they are.
        let adoptable = || {
            spec.frontends.iter().find_map(|fe| {
                let id = applied
                    .frontends
                    .get(&FrontendKey::new(fe.ip, fe.port, spec.proto))?
                    .service_id;
                (applied.service_name(id).is_none() && !adopting.contains(&id)).then_some(id)
            })
        };
        let id = match applied.services.get(*name) {
            Some(id) => *id,
            None if let Some(id) = adoptable() => {
                adopting.insert(id);
                bind.push(Op::BindService {
                    name: (*name).clone(),
                    id,
                });
                id
            }
            None => match service_pool.take() {
                Some(id) => {
                    bind.push(Op::BindService {
                        name: (*name).clone(),
                        id,
                    });
                    id
                }
                None => {
                    plan.errors.push(PlanError::ServicesFull {
                        service: (*name).clone(),
                        limit: service_pool_limit(applied),
                    });
                    continue;
                }
            },
        };

        // Table.
        let members = members(spec);
        let old = applied.tables.get(&id);
        let size = maglev::table_size(members.len(), cfg.max_table_size.min(MAX_TABLE_SIZE));
        let unchanged = match old {
            Some(t) if t.adopted.is_some() => adopted_matches(t, &members, size, applied),
            Some(t) => t.members == members && t.size == size,
            None => members.is_empty(),
        };
        // The table the frontends will point at after this plan.
        let mut live = if unchanged { old.cloned() } else { None };
        if let (true, Some(t)) = (unchanged, old) {
            if t.adopted.is_some() {
                let summary = AppliedTable {
                    members: members.clone(),
                    adopted: None,
                    ..t.clone()
                };
                live = Some(summary.clone());
                bind.push(Op::AdoptTable {
                    service: id,
                    summary,
                });
            }
        }
        if !unchanged {
            let mut ids = Vec::with_capacity(members.len());
            let mut full = false;
            for (key, _) in &members {
                let bid = applied
                    .backend_id(key)
                    .or_else(|| new_backends.get(key).copied());
                match bid.or_else(|| backend_pool.take()) {
                    Some(bid) => {
                        if applied.backend_id(key).is_none() && !new_backends.contains_key(key) {
                            new_backends.insert(*key, bid);
                            put_backends.push(Op::PutBackend {
                                id: bid,
                                value: key.value(),
                            });
                        }
                        ids.push(bid);
                    }
                    None => {
                        full = true;
                        break;
                    }
                }
            }
            if full {
                plan.errors.push(PlanError::BackendsFull {
                    service: (*name).clone(),
                    limit: backend_pool_limit(applied),
                });
                // No room for the new backends: the frontends keep the old table.
                live = old.cloned();
            } else {
                for (key, _) in &members {
                    *ref_delta.entry(*key).or_default() += 1;
                }
                if let Some(old) = old {
                    for (key, _) in &old.members {
                        *ref_delta.entry(*key).or_default() -= 1;
                    }
                }
                if members.is_empty() {
                    delete_tables.push(Op::DeleteTable { service: id });
                } else {
                    let (size, slots) = table_for(&members, cfg.max_table_size);
                    let (capacity, half, realloc) = placement(size, old);
                    let summary = AppliedTable {
                        size,
                        members,
                        capacity,
                        half,
                        adopted: None,
                    };
                    live = Some(summary.clone());
                    put_tables.push(Op::PutTable {
                        service: id,
                        slots: slots.iter().map(|i| ids[*i as usize]).collect(),
                        summary,
                        realloc,
                    });
                }
            }
        }

        // Affinity memberships: the members of the live table, for affinity services.
        let want_members: BTreeSet<u32> = match (&live, spec.affinity_timeout_s) {
            (Some(t), Some(_)) => t
                .members
                .iter()
                .filter_map(|(k, _)| {
                    applied
                        .backend_id(k)
                        .or_else(|| new_backends.get(k).copied())
                })
                .collect(),
            _ => BTreeSet::new(),
        };
        let have_members = applied.members_of(id);
        let added: Vec<u32> = want_members
            .iter()
            .filter(|b| !have_members.contains(b))
            .copied()
            .collect();
        let removed: Vec<u32> = have_members
            .iter()
            .filter(|b| !want_members.contains(b))
            .copied()
            .collect();
        if !added.is_empty() {
            put_members.push(Op::PutMembers {
                service: id,
                backends: added,
            });
        }
        if !removed.is_empty() {
            delete_members.push(Op::DeleteMembers {
                service: id,
                backends: removed,
            });
        }

        // Frontends.
        let value = frontend_value(id, spec, live.as_ref());
        for fe in &spec.frontends {
            let key = FrontendKey::new(fe.ip, fe.port, spec.proto);
            if let Some(other) = claimed.get(&key) {
                plan.errors.push(PlanError::FrontendConflict {
                    service: (*name).clone(),
                    frontend: key.to_string(),
                    owner: (*other).clone(),
                });
                continue;
            }
            match applied.frontends.get(&key) {
                Some(current) if current.service_id != id => {
                    // Owned by another service: keep it there while that one still wants it.
                    if let Some(owner) = applied.service_name(current.service_id) {
                        let owner_wants = desired
                            .services
                            .get(owner)
                            .is_some_and(|s| s.proto == spec.proto && s.frontends.contains(fe));
                        if owner_wants {
                            plan.errors.push(PlanError::FrontendConflict {
                                service: (*name).clone(),
                                frontend: key.to_string(),
                                owner: owner.clone(),
                            });
                            continue;
                        }
                    }
                    put_frontends.push(Op::PutFrontend { key, value });
                }
                Some(current) if *current == value => {}
                Some(_) => put_frontends.push(Op::PutFrontend { key, value }),
                None => {
                    if frontend_count >= cfg.max_frontends as u64 {
                        plan.errors.push(PlanError::FrontendsFull {
                            service: (*name).clone(),
                            limit: cfg.max_frontends,
                        });
                        continue;
                    }
                    frontend_count += 1;
                    put_frontends.push(Op::PutFrontend { key, value });
                }
            }
            claimed.insert(key, name);
        }
    }

    // What the services in scope no longer want.
    for (_, id) in &applied_in_scope {
        for key in applied.frontends_of(**id) {
            if !claimed.contains_key(key) {
                delete_frontends.push(Op::DeleteFrontend { key: *key });
            }
        }
    }
    if scope.is_none() {
        // Frontends not bound to any service (left over): prune.
        for (key, value) in &applied.frontends {
            if applied.service_name(value.service_id).is_none() && !claimed.contains_key(key) {
                delete_frontends.push(Op::DeleteFrontend { key: *key });
            }
        }
    }
    for (name, id) in &applied_in_scope {
        let (name, id) = (*name, *id);
        if !desired.services.contains_key(name) {
            let members = applied.members_of(*id);
            if !members.is_empty() {
                delete_members.push(Op::DeleteMembers {
                    service: *id,
                    backends: members.iter().copied().collect(),
                });
            }
            if let Some(old) = applied.tables.get(id) {
                for (key, _) in &old.members {
                    *ref_delta.entry(*key).or_default() -= 1;
                }
                delete_tables.push(Op::DeleteTable { service: *id });
            }
            unbind.push(Op::UnbindService { name: name.clone() });
        }
    }
    if scope.is_none() {
        // Tables no bound service owns (left over): prune.
        for (id, old) in &applied.tables {
            if applied.service_name(*id).is_none() && !adopting.contains(id) {
                for (key, _) in &old.members {
                    *ref_delta.entry(*key).or_default() -= 1;
                }
                delete_tables.push(Op::DeleteTable { service: *id });
            }
        }
    }
    if scope.is_none() {
        // Memberships of services no longer bound (left over): prune.
        for (id, members) in &applied.members {
            if applied.service_name(*id).is_none() && !adopting.contains(id) {
                delete_members.push(Op::DeleteMembers {
                    service: *id,
                    backends: members.iter().copied().collect(),
                });
            }
        }
    }
    for (key, delta) in &ref_delta {
        if *delta >= 0 {
            continue;
        }
        if let Some(id) = applied.backend_id(key) {
            if applied.backend_refs(id) as i64 + delta <= 0 {
                delete_backends.push(Op::DeleteBackend { id });
            }
        }
    }
    if scope.is_none() {
        // Backends no table references (left over): prune.
        for (id, _) in &applied.backends {
            if applied.backend_refs(*id) == 0
                && !delete_backends.contains(&Op::DeleteBackend { id: *id })
            {
                let key = BackendKey::of(&applied.backends[id]);
                if ref_delta.get(&key).copied().unwrap_or(0) <= 0 {
                    delete_backends.push(Op::DeleteBackend { id: *id });
                }
            }
        }
    }

    plan.ops = bind
        .into_iter()
        .chain(put_backends)
        .chain(put_tables)
        .chain(put_members)
        .chain(put_frontends)
        .chain(delete_frontends)
        .chain(delete_members)
        .chain(delete_tables)
        .chain(delete_backends)
        .chain(unbind)
        .collect();
    plan
}

/// Whether an adopted table holds exactly the slots a table of `members` would.
fn adopted_matches(
    t: &AppliedTable,
    members: &[(BackendKey, u32)],
    size: u32,
    applied: &Applied,
) -> bool {
    let Some(live) = &t.adopted else { return false };
    if t.size != size || members.is_empty() {
        return false;
    }
    let Some(ids) = members
        .iter()
        .map(|(k, _)| applied.backend_id(k))
        .collect::<Option<Vec<u32>>>()
    else {
        return false;
    };
    table_slots(members, size)
        .iter()
        .map(|i| ids[*i as usize])
        .eq(live.iter().copied())
}

fn service_pool_limit(applied: &Applied) -> u32 {
    applied.service_pool_limit()
}

fn backend_pool_limit(applied: &Applied) -> u32 {
    applied.backend_pool_limit()
}
