//! The plan being built, phase by phase: each desired service is bound to an id, gets
//! its table, its affinity memberships and its frontends; then what the scope no longer
//! wants, and (in a full plan) what earlier agents left, is pruned. [`Phases`] keeps the
//! operations by phase and owns their make-before-break order.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::maps::{
    FRONTEND_F_AFFINITY, FrontendKey, FrontendValue, MAX_TABLE_SIZE, maglev_chunks,
};

use super::{Op, PlanConfig, PlanError};
use crate::{
    maglev::{self, table_for, table_slots},
    model::{BackendKey, Desired, ServiceName, ServiceSpec, object_range},
    sync::applied::{Applied, AppliedTable, IdPool},
};

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

/// The operations of a plan, by phase.
#[derive(Default)]
pub(super) struct Phases {
    bind: Vec<Op>,
    put_backends: Vec<Op>,
    put_tables: Vec<Op>,
    put_members: Vec<Op>,
    put_frontends: Vec<Op>,
    delete_frontends: Vec<Op>,
    delete_members: Vec<Op>,
    delete_tables: Vec<Op>,
    delete_backends: Vec<Op>,
    unbind: Vec<Op>,
}

impl Phases {
    /// The make-before-break order: bookkeeping, new backends, new tables, memberships,
    /// frontend flips; then what became unreachable, frontends first and backends last.
    pub(super) fn into_ops(self) -> Vec<Op> {
        self.bind
            .into_iter()
            .chain(self.put_backends)
            .chain(self.put_tables)
            .chain(self.put_members)
            .chain(self.put_frontends)
            .chain(self.delete_frontends)
            .chain(self.delete_members)
            .chain(self.delete_tables)
            .chain(self.delete_backends)
            .chain(self.unbind)
            .collect()
    }
}

/// A plan being built.
pub(super) struct Planner<'a> {
    desired: &'a Desired,
    applied: &'a Applied,
    cfg: &'a PlanConfig,
    /// The applied services in scope.
    applied_in_scope: Vec<(&'a ServiceName, &'a u32)>,
    service_pool: IdPool,
    backend_pool: IdPool,
    pub(super) ops: Phases,
    pub(super) errors: Vec<PlanError>,
    /// Backends this plan creates.
    new_backends: BTreeMap<BackendKey, u32>,
    /// Reference-count changes of backends (tables that take or drop them).
    ref_delta: BTreeMap<BackendKey, i64>,
    /// Frontends claimed in this plan, by the service claiming them.
    claimed: BTreeMap<FrontendKey, &'a ServiceName>,
    frontend_count: u64,
    /// Adopted (unbound) service ids claimed in this plan.
    adopting: BTreeSet<u32>,
}

impl<'a> Planner<'a> {
    pub(super) fn new(
        desired: &'a Desired,
        applied: &'a Applied,
        scope: Option<&'a BTreeSet<(String, String)>>,
        cfg: &'a PlanConfig,
    ) -> Self {
        let applied_in_scope = match scope {
            None => applied.services.iter().collect(),
            Some(objects) => objects
                .iter()
                .flat_map(|(ns, name)| object_range(&applied.services, ns, name))
                .collect(),
        };
        Self {
            desired,
            applied,
            cfg,
            applied_in_scope,
            service_pool: applied.service_pool.clone(),
            backend_pool: applied.backend_pool.clone(),
            ops: Phases::default(),
            errors: Vec::new(),
            new_backends: BTreeMap::new(),
            ref_delta: BTreeMap::new(),
            claimed: BTreeMap::new(),
            frontend_count: applied.frontends.len() as u64,
            adopting: BTreeSet::new(),
        }
    }

    /// The service id of `name`: its current one, an adopted one its frontends lead to
    /// (binding to it keeps its table and frontends as they are), or a new one.
    pub(super) fn bind(&mut self, name: &ServiceName, spec: &ServiceSpec) -> Option<u32> {
        if let Some(id) = self.applied.services.get(name) {
            return Some(*id);
        }
        let adoptable = spec.frontends.iter().find_map(|fe| {
            let id = self
                .applied
                .frontends
                .get(&FrontendKey::new(fe.ip, fe.port, spec.proto))?
                .service_id;
            (self.applied.service_name(id).is_none() && !self.adopting.contains(&id)).then_some(id)
        });
        let id = match adoptable {
            Some(id) => {
                self.adopting.insert(id);
                id
            }
            None => match self.service_pool.take() {
                Some(id) => id,
                None => {
                    self.errors.push(PlanError::ServicesFull {
                        service: name.clone(),
                        limit: self.applied.service_pool_limit(),
                    });
                    return None;
                }
            },
        };
        self.ops.bind.push(Op::BindService {
            name: name.clone(),
            id,
        });
        Some(id)
    }

    /// Plans the service's table; returns the table its frontends point at after this
    /// plan (none: no backend).
    pub(super) fn table(
        &mut self,
        id: u32,
        name: &ServiceName,
        spec: &ServiceSpec,
    ) -> Option<AppliedTable> {
        let members = members(spec);
        let old = self.applied.tables.get(&id);
        let size = maglev::table_size(members.len(), self.cfg.max_table_size.min(MAX_TABLE_SIZE));
        let unchanged = match old {
            Some(t) if t.adopted.is_some() => adopted_matches(t, &members, size, self.applied),
            Some(t) => t.members == members && t.size == size,
            None => members.is_empty(),
        };
        if unchanged {
            let t = old?;
            if t.adopted.is_none() {
                return Some(t.clone());
            }
            let summary = AppliedTable {
                members,
                adopted: None,
                ..t.clone()
            };
            self.ops.bind.push(Op::AdoptTable {
                service: id,
                summary: summary.clone(),
            });
            return Some(summary);
        }
        let Some(ids) = self.backend_ids(&members) else {
            self.errors.push(PlanError::BackendsFull {
                service: name.clone(),
                limit: self.applied.backend_pool_limit(),
            });
            // No room for the new backends: the frontends keep the old table.
            return old.cloned();
        };
        for (key, _) in &members {
            *self.ref_delta.entry(*key).or_default() += 1;
        }
        if let Some(old) = old {
            self.unref(old);
        }
        if members.is_empty() {
            self.ops.delete_tables.push(Op::DeleteTable { service: id });
            return None;
        }
        let (size, slots) = table_for(&members, self.cfg.max_table_size);
        let (capacity, half, realloc) = placement(size, old);
        let summary = AppliedTable {
            size,
            members,
            capacity,
            half,
            adopted: None,
        };
        self.ops.put_tables.push(Op::PutTable {
            service: id,
            slots: slots.iter().map(|i| ids[*i as usize]).collect(),
            summary: summary.clone(),
            realloc,
        });
        Some(summary)
    }

    /// The backend id of each member, allocating (and planning the write of) new ones;
    /// `None` when the ids run out.
    fn backend_ids(&mut self, members: &[(BackendKey, u32)]) -> Option<Vec<u32>> {
        let mut ids = Vec::with_capacity(members.len());
        for (key, _) in members {
            let id = match self.id_of(key) {
                Some(id) => id,
                None => {
                    let id = self.backend_pool.take()?;
                    self.new_backends.insert(*key, id);
                    self.ops.put_backends.push(Op::PutBackend {
                        id,
                        value: key.value(),
                    });
                    id
                }
            };
            ids.push(id);
        }
        Some(ids)
    }

    /// The id of a backend that is programmed or planned.
    fn id_of(&self, key: &BackendKey) -> Option<u32> {
        self.applied
            .backend_id(key)
            .or_else(|| self.new_backends.get(key).copied())
    }

    /// Records that a table's members lose its reference.
    fn unref(&mut self, table: &AppliedTable) {
        for (key, _) in &table.members {
            *self.ref_delta.entry(*key).or_default() -= 1;
        }
    }

    /// Affinity memberships: the members of the live table, for affinity services.
    pub(super) fn memberships(&mut self, id: u32, spec: &ServiceSpec, live: Option<&AppliedTable>) {
        let want: BTreeSet<u32> = match (live, spec.affinity_timeout_s) {
            (Some(t), Some(_)) => t
                .members
                .iter()
                .filter_map(|(k, _)| self.id_of(k))
                .collect(),
            _ => BTreeSet::new(),
        };
        let have = self.applied.members_of(id);
        let added: Vec<u32> = want.difference(have).copied().collect();
        let removed: Vec<u32> = have.difference(&want).copied().collect();
        if !added.is_empty() {
            self.ops.put_members.push(Op::PutMembers {
                service: id,
                backends: added,
            });
        }
        self.delete_members(id, removed);
    }

    fn delete_members(&mut self, service: u32, backends: Vec<u32>) {
        if !backends.is_empty() {
            self.ops
                .delete_members
                .push(Op::DeleteMembers { service, backends });
        }
    }

    /// Points the service's frontends at its live table, claiming each unless another
    /// service that still wants it owns it.
    pub(super) fn frontends(
        &mut self,
        id: u32,
        name: &'a ServiceName,
        spec: &ServiceSpec,
        live: Option<&AppliedTable>,
    ) {
        let value = frontend_value(id, spec, live);
        for fe in &spec.frontends {
            let key = FrontendKey::new(fe.ip, fe.port, spec.proto);
            let conflict = |owner: &ServiceName| PlanError::FrontendConflict {
                service: name.clone(),
                frontend: key.to_string(),
                owner: owner.clone(),
            };
            if let Some(other) = self.claimed.get(&key) {
                self.errors.push(conflict(other));
                continue;
            }
            match self.applied.frontends.get(&key) {
                Some(current) if current.service_id != id => {
                    // Owned by another service: keep it there while that one still wants it.
                    if let Some(owner) = self.applied.service_name(current.service_id) {
                        let owner_wants = self
                            .desired
                            .services
                            .get(owner)
                            .is_some_and(|s| s.proto == spec.proto && s.frontends.contains(fe));
                        if owner_wants {
                            self.errors.push(conflict(owner));
                            continue;
                        }
                    }
                    self.ops.put_frontends.push(Op::PutFrontend { key, value });
                }
                Some(current) if *current == value => {}
                Some(_) => self.ops.put_frontends.push(Op::PutFrontend { key, value }),
                None => {
                    if self.frontend_count >= self.cfg.max_frontends as u64 {
                        self.errors.push(PlanError::FrontendsFull {
                            service: name.clone(),
                            limit: self.cfg.max_frontends,
                        });
                        continue;
                    }
                    self.frontend_count += 1;
                    self.ops.put_frontends.push(Op::PutFrontend { key, value });
                }
            }
            self.claimed.insert(key, name);
        }
    }

    /// What the services in scope no longer want: frontends nobody claimed, and services
    /// no longer desired (memberships, tables, ids).
    pub(super) fn prune_scope(&mut self) {
        let scope = std::mem::take(&mut self.applied_in_scope);
        for (_, id) in &scope {
            for key in self.applied.frontends_of(**id) {
                if !self.claimed.contains_key(key) {
                    self.ops
                        .delete_frontends
                        .push(Op::DeleteFrontend { key: *key });
                }
            }
        }
        for (name, id) in &scope {
            if self.desired.services.contains_key(*name) {
                continue;
            }
            self.retire_service(**id);
            self.ops.unbind.push(Op::UnbindService {
                name: (*name).clone(),
            });
        }
    }

    /// Plans the removal of a service id's memberships and table.
    fn retire_service(&mut self, id: u32) {
        let members = self.applied.members_of(id).iter().copied().collect();
        self.delete_members(id, members);
        self.retire_table(id);
    }

    fn retire_table(&mut self, id: u32) {
        if let Some(old) = self.applied.tables.get(&id) {
            self.unref(old);
            self.ops.delete_tables.push(Op::DeleteTable { service: id });
        }
    }

    /// A service id no desired service is bound to and none adopts (left over by an
    /// earlier agent).
    fn is_leftover(&self, id: u32) -> bool {
        self.applied.service_name(id).is_none() && !self.adopting.contains(&id)
    }

    /// What no bound service owns (left over): frontends, tables, memberships (a full
    /// plan only).
    pub(super) fn prune_leftovers(&mut self) {
        for (key, value) in &self.applied.frontends {
            if self.applied.service_name(value.service_id).is_none()
                && !self.claimed.contains_key(key)
            {
                self.ops
                    .delete_frontends
                    .push(Op::DeleteFrontend { key: *key });
            }
        }
        let tables: Vec<u32> = self
            .applied
            .tables
            .keys()
            .copied()
            .filter(|id| self.is_leftover(*id))
            .collect();
        for id in tables {
            self.retire_table(id);
        }
        let members: Vec<(u32, Vec<u32>)> = self
            .applied
            .members
            .iter()
            .filter(|(id, _)| self.is_leftover(**id))
            .map(|(id, m)| (*id, m.iter().copied().collect()))
            .collect();
        for (id, backends) in members {
            self.delete_members(id, backends);
        }
        self.prune_unreferenced_backends();
    }

    /// Backends whose last table reference this plan removes.
    pub(super) fn retire_backends(&mut self) {
        let gone: Vec<u32> = self
            .ref_delta
            .iter()
            .filter(|(_, delta)| **delta < 0)
            .filter_map(|(key, delta)| {
                let id = self.applied.backend_id(key)?;
                (self.applied.backend_refs(id) as i64 + delta <= 0).then_some(id)
            })
            .collect();
        // Leftover deletions (a full plan) were planned first; keep that order.
        let leftovers = std::mem::take(&mut self.ops.delete_backends);
        self.ops
            .delete_backends
            .extend(gone.into_iter().map(|id| Op::DeleteBackend { id }));
        for op in leftovers {
            if !self.ops.delete_backends.contains(&op) {
                self.ops.delete_backends.push(op);
            }
        }
    }

    /// Backends no table references (left over), unless this plan references them.
    fn prune_unreferenced_backends(&mut self) {
        for (id, value) in &self.applied.backends {
            if self.applied.backend_refs(*id) == 0 {
                let key = BackendKey::of(value);
                if self.ref_delta.get(&key).copied().unwrap_or(0) <= 0 {
                    self.ops.delete_backends.push(Op::DeleteBackend { id: *id });
                }
            }
        }
    }
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
