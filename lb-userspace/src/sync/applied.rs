//! The applied state: an exact mirror of what the agent has written to the maps, plus the
//! binding of service ids to desired services and the id allocators.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::maps::{BackendValue, FrontendKey, FrontendValue, MAGLEV_CHUNK, MemberKey};

use crate::model::{BackendKey, ServiceName};

/// A programmed Maglev table, summarised by what it was built from, and where it lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedTable {
    pub size: u32,
    /// The members and weights the table was built from, sorted.
    pub members: Vec<(BackendKey, u32)>,
    /// Chunks per half of the service's inner array.
    pub capacity: u32,
    /// The live half (0 or 1).
    pub half: u32,
    /// For a table adopted from maps an earlier agent programmed: its live slots (backend
    /// ids). Its `members` then carry no weights (slot counts do not give them back):
    /// the first plan compares the slots it would write with these instead, and adopts
    /// the table as it is when they are equal.
    pub adopted: Option<Vec<u32>>,
}

impl AppliedTable {
    /// First chunk of the live half.
    pub const fn base(&self) -> u32 {
        self.half * self.capacity
    }
}

/// Lowest-free-first id allocation. Ids start at 1: 0 is never handed out, so an all-zero
/// map slot is never mistaken for a live entry.
#[derive(Clone, Debug)]
pub(crate) struct IdPool {
    next: u32,
    free: BTreeSet<u32>,
    limit: u32,
}

impl IdPool {
    pub(crate) fn new(limit: u32) -> Self {
        Self {
            next: 1,
            free: BTreeSet::new(),
            limit,
        }
    }

    pub(crate) fn limit(&self) -> u32 {
        self.limit
    }

    pub(crate) fn take(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop_first() {
            return Some(id);
        }
        (self.next < self.limit).then(|| {
            self.next += 1;
            self.next - 1
        })
    }

    /// Marks `id` as used (recording what a plan or the maps say).
    pub(crate) fn mark_used(&mut self, id: u32) {
        if !self.free.remove(&id) {
            while self.next <= id {
                self.free.insert(self.next);
                self.next += 1;
            }
            self.free.remove(&id);
        }
    }

    pub(crate) fn release(&mut self, id: u32) {
        if id + 1 == self.next {
            self.next -= 1;
            while self.next > 1 && self.free.remove(&(self.next - 1)) {
                self.next -= 1;
            }
        } else if id < self.next {
            self.free.insert(id);
        }
    }
}

/// What is programmed. Only [`super::apply`] changes it, one successful write at a time.
#[derive(Clone, Debug)]
pub struct Applied {
    pub frontends: BTreeMap<FrontendKey, FrontendValue>,
    /// The frontends of each service id (an index of `frontends`).
    pub(crate) service_frontends: BTreeMap<u32, BTreeSet<FrontendKey>>,
    pub tables: BTreeMap<u32, AppliedTable>,
    pub backends: BTreeMap<u32, BackendValue>,
    /// Which desired service each service id stands for.
    pub services: BTreeMap<ServiceName, u32>,
    pub(crate) service_names: BTreeMap<u32, ServiceName>,
    pub(crate) backend_ids: BTreeMap<BackendKey, u32>,
    /// How many programmed tables reference each backend id.
    pub(crate) backend_refs: BTreeMap<u32, u32>,
    /// Affinity memberships: service id -> backend ids.
    pub members: BTreeMap<u32, BTreeSet<u32>>,
    /// Backends no table references any more, and since when: cleared after a grace
    /// period (see `super::apply::BACKEND_GRACE`), unless a table takes them back.
    pub(crate) retiring: BTreeMap<u32, std::time::Instant>,
    /// When each service's live half last changed (a half is rewritten only after
    /// `super::apply::HALF_GRACE`).
    pub(crate) flipped: BTreeMap<u32, std::time::Instant>,
    pub(crate) service_pool: IdPool,
    pub(crate) backend_pool: IdPool,
}

impl Applied {
    /// An empty applied state for maps of the given capacities.
    pub fn new(max_services: u32, max_backends: u32) -> Self {
        Self {
            frontends: BTreeMap::new(),
            service_frontends: BTreeMap::new(),
            tables: BTreeMap::new(),
            backends: BTreeMap::new(),
            services: BTreeMap::new(),
            service_names: BTreeMap::new(),
            backend_ids: BTreeMap::new(),
            backend_refs: BTreeMap::new(),
            members: BTreeMap::new(),
            retiring: BTreeMap::new(),
            flipped: BTreeMap::new(),
            service_pool: IdPool::new(max_services),
            backend_pool: IdPool::new(max_backends),
        }
    }

    pub fn backend_id(&self, key: &BackendKey) -> Option<u32> {
        self.backend_ids.get(key).copied()
    }

    pub fn service_name(&self, id: u32) -> Option<&ServiceName> {
        self.service_names.get(&id)
    }

    pub(crate) fn bind_service(&mut self, name: &ServiceName, id: u32) {
        self.service_pool.mark_used(id);
        self.services.insert(name.clone(), id);
        self.service_names.insert(id, name.clone());
    }

    pub(crate) fn unbind_service(&mut self, name: &ServiceName) {
        if let Some(id) = self.services.remove(name) {
            self.service_names.remove(&id);
            self.service_pool.release(id);
        }
    }

    pub(crate) fn put_frontend(&mut self, key: FrontendKey, value: FrontendValue) {
        if let Some(old) = self.frontends.insert(key, value)
            && old.service_id != value.service_id
        {
            self.unindex_frontend(old.service_id, &key);
        }
        self.service_frontends
            .entry(value.service_id)
            .or_default()
            .insert(key);
    }

    pub(crate) fn delete_frontend(&mut self, key: &FrontendKey) {
        if let Some(old) = self.frontends.remove(key) {
            self.unindex_frontend(old.service_id, key);
            self.release_if_orphan(old.service_id);
        }
    }

    /// Releases the id of a service no name is bound to once nothing uses it (adopted
    /// leftovers being pruned).
    fn release_if_orphan(&mut self, id: u32) {
        if self.service_name(id).is_none()
            && !self.tables.contains_key(&id)
            && !self.service_frontends.contains_key(&id)
            && !self.members.contains_key(&id)
        {
            self.service_pool.release(id);
        }
    }

    /// Replaces the bookkeeping of a table without writing it (an adopted table found
    /// equal to the one the plan would write).
    pub(crate) fn adopt_table(&mut self, service: u32, summary: AppliedTable) {
        let flipped = self.flipped.get(&service).copied();
        self.put_table(service, summary);
        match flipped {
            Some(t) => self.flipped.insert(service, t),
            None => self.flipped.remove(&service),
        };
    }

    fn unindex_frontend(&mut self, service: u32, key: &FrontendKey) {
        if let Some(set) = self.service_frontends.get_mut(&service) {
            set.remove(key);
            if set.is_empty() {
                self.service_frontends.remove(&service);
            }
        }
    }

    /// The frontends that lead to service `id`.
    pub fn frontends_of(&self, id: u32) -> impl Iterator<Item = &FrontendKey> {
        self.service_frontends.get(&id).into_iter().flatten()
    }

    pub(crate) fn put_backend(&mut self, id: u32, value: &BackendValue) {
        self.backend_pool.mark_used(id);
        if let Some(old) = self.backends.insert(id, *value) {
            self.backend_ids.remove(&BackendKey::of(&old));
        }
        self.backend_ids.insert(BackendKey::of(value), id);
    }

    pub(crate) fn delete_backend(&mut self, id: u32) {
        self.retiring.remove(&id);
        if let Some(old) = self.backends.remove(&id) {
            self.backend_ids.remove(&BackendKey::of(&old));
            self.backend_pool.release(id);
        }
    }

    pub(crate) fn put_table(&mut self, service: u32, table: AppliedTable) {
        self.unref_table(service);
        for (key, _) in &table.members {
            if let Some(id) = self.backend_ids.get(key) {
                *self.backend_refs.entry(*id).or_default() += 1;
                // A retiring backend taken back by a table stays.
                self.retiring.remove(id);
            }
        }
        self.tables.insert(service, table);
        self.flipped.insert(service, std::time::Instant::now());
    }

    pub(crate) fn delete_table(&mut self, service: u32) {
        self.unref_table(service);
        self.release_if_orphan(service);
    }

    fn unref_table(&mut self, service: u32) {
        self.flipped.remove(&service);
        if let Some(old) = self.tables.remove(&service) {
            for (key, _) in &old.members {
                if let Some(id) = self.backend_ids.get(key)
                    && let Some(r) = self.backend_refs.get_mut(id)
                {
                    *r -= 1;
                    if *r == 0 {
                        self.backend_refs.remove(id);
                    }
                }
            }
        }
    }

    /// The backends that are affinity members of service `id`.
    pub fn members_of(&self, id: u32) -> &BTreeSet<u32> {
        static EMPTY: BTreeSet<u32> = BTreeSet::new();
        self.members.get(&id).unwrap_or(&EMPTY)
    }

    /// Whether backend `id` is an affinity member of any service.
    pub fn is_member(&self, id: u32) -> bool {
        self.members.values().any(|m| m.contains(&id))
    }

    pub(crate) fn put_members(&mut self, service: u32, backends: &[u32]) {
        self.members
            .entry(service)
            .or_default()
            .extend(backends.iter().copied());
    }

    pub(crate) fn delete_members(&mut self, service: u32, backends: &[u32]) {
        if let Some(m) = self.members.get_mut(&service) {
            for b in backends {
                m.remove(b);
            }
            if m.is_empty() {
                self.members.remove(&service);
                self.release_if_orphan(service);
            }
        }
    }

    pub(crate) fn service_pool_limit(&self) -> u32 {
        self.service_pool.limit()
    }

    pub(crate) fn backend_pool_limit(&self) -> u32 {
        self.backend_pool.limit()
    }

    /// Backends waiting for their grace period before being cleared.
    pub fn retiring(&self) -> usize {
        self.retiring.len()
    }

    /// The backend the datapath picks for a new flow `key` (a forward connection-table key)
    /// of service `service`, when no session affinity remembers one: the same hash (of
    /// the flow, or of the client for affinity services) over the same table, computed
    /// here.
    pub fn predict(&self, service: u32, key: &lb_common::maps::CtKey) -> Option<BackendKey> {
        let table = self.tables.get(&service)?;
        let affinity = self
            .frontends_of(service)
            .next()
            .and_then(|k| self.frontends.get(k))
            .is_some_and(|v| v.flags & lb_common::maps::FRONTEND_F_AFFINITY != 0);
        let hash = if affinity {
            lb_common::flow::client_hash(key.family, &key.src)
        } else {
            key.flow_hash()
        };
        let slots = crate::maglev::table_slots(&table.members, table.size);
        let slot = lb_common::flow::maglev_slot(hash, table.size);
        let member = *slots.get(slot as usize)?;
        table.members.get(member as usize).map(|(k, _)| *k)
    }

    pub fn backend_refs(&self, id: u32) -> u32 {
        self.backend_refs.get(&id).copied().unwrap_or(0)
    }
}

/// What the maps hold, read back from them (to adopt an earlier agent's work).
#[derive(Clone, Debug, Default)]
pub struct Programmed {
    pub frontends: Vec<(FrontendKey, FrontendValue)>,
    /// Each service's inner array, flattened to slots (both halves).
    pub tables: BTreeMap<u32, Vec<u32>>,
    /// Programmed (active) backends.
    pub backends: BTreeMap<u32, BackendValue>,
    pub members: Vec<MemberKey>,
}

/// What adoption found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Adopted {
    pub frontends: usize,
    pub tables: usize,
    pub backends: usize,
    /// Tables no frontend uses, or that name backends not programmed: rewritten or
    /// pruned by the first plan.
    pub broken_tables: usize,
}

impl Applied {
    /// The applied state of maps an earlier agent programmed. Service ids are not bound
    /// to names yet: the first plan binds each desired service to the id its frontends
    /// lead to, keeps what is already right, and prunes the rest.
    pub fn adopt(p: Programmed, max_services: u32, max_backends: u32) -> (Self, Adopted) {
        let mut a = Self::new(max_services, max_backends);
        let mut report = Adopted::default();
        for (id, value) in &p.backends {
            a.put_backend(*id, value);
        }
        report.backends = p.backends.len();
        // Live table of each service, from its frontends.
        let mut live: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
        for (key, value) in &p.frontends {
            a.service_pool.mark_used(value.service_id);
            a.put_frontend(*key, *value);
            if value.table_size > 0 {
                live.entry(value.service_id)
                    .or_insert((value.table_base, value.table_size));
            }
        }
        report.frontends = p.frontends.len();
        for (service, all) in &p.tables {
            a.service_pool.mark_used(*service);
            let capacity = (all.len() / 2 / MAGLEV_CHUNK) as u32;
            let table = live.get(service).and_then(|(base, size)| {
                let start = *base as usize * MAGLEV_CHUNK;
                let slots = all.get(start..start + *size as usize)?;
                if capacity == 0 || base % capacity != 0 {
                    return None;
                }
                let mut members: Vec<(BackendKey, u32)> = Vec::new();
                for id in slots.iter().collect::<BTreeSet<_>>() {
                    members.push((BackendKey::of(p.backends.get(id)?), 0));
                }
                members.sort();
                Some(AppliedTable {
                    size: *size,
                    members,
                    capacity,
                    half: base / capacity,
                    adopted: Some(slots.to_vec()),
                })
            });
            let table = table.unwrap_or_else(|| {
                report.broken_tables += 1;
                AppliedTable {
                    size: 0,
                    members: Vec::new(),
                    capacity,
                    half: 0,
                    adopted: None,
                }
            });
            a.put_table(*service, table);
            a.flipped.remove(service);
            report.tables += 1;
        }
        for m in &p.members {
            a.service_pool.mark_used(m.service_id);
            a.put_members(m.service_id, &[m.backend_id]);
        }
        (a, report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_pool_hands_out_lowest_free_ids() {
        let mut p = IdPool::new(10);
        assert_eq!((p.take(), p.take(), p.take()), (Some(1), Some(2), Some(3)));
        p.release(2);
        assert_eq!(p.take(), Some(2));
        p.mark_used(7);
        assert_eq!(p.take(), Some(4));
        p.release(7);
        p.release(4);
        assert_eq!(p.take(), Some(4));
        for _ in 0..5 {
            p.take();
        }
        assert_eq!(p.take(), None, "limit reached");
    }
}
