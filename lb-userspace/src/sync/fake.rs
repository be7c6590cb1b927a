//! In-memory maps for tests: the same contract as the kernel maps, plus invariant checks
//! that fail loudly when an operation would let the datapath see a broken state (a live
//! table half written over, a table naming a missing backend, a backend cleared while a
//! live table uses it), and a text dump of their contents for golden tests.

use std::{collections::BTreeMap, fmt::Write as _};

use lb_common::maps::{BackendValue, FrontendKey, FrontendValue, MAGLEV_CHUNK};

use super::{
    applied::Applied,
    apply::{Maps, MapsError, TableWrite},
};
use crate::model::BackendKey;

#[derive(Clone, Debug, Default)]
pub struct FakeMaps {
    pub frontends: BTreeMap<FrontendKey, FrontendValue>,
    /// Each service's inner array, flattened to slots (both halves).
    pub tables: BTreeMap<u32, Vec<u32>>,
    pub backends: BTreeMap<u32, BackendValue>,
    /// Affinity memberships (service, backend).
    pub members: std::collections::BTreeSet<(u32, u32)>,
    /// Every write, in order: "put_table 3", ...
    pub log: Vec<String>,
    /// Writes to fail, by log prefix (e.g. "put_backend 2").
    pub fail: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct FakeError(String);

impl FakeMaps {
    fn record(&mut self, map: &'static str, entry: String) -> Result<(), MapsError> {
        if self.fail.iter().any(|f| entry.starts_with(f.as_str())) {
            return Err(MapsError {
                map,
                op: "write",
                what: entry.clone(),
                source: Box::new(FakeError("injected failure".into())),
            });
        }
        self.log.push(entry);
        Ok(())
    }

    /// The live table of each service, as (base chunk, size), from its frontends.
    fn live(&self) -> BTreeMap<u32, (u32, u32)> {
        self.frontends
            .values()
            .filter(|v| v.table_size > 0)
            .map(|v| (v.service_id, (v.table_base, v.table_size)))
            .collect()
    }

    /// The slots of a service's live table.
    pub fn live_table(&self, service: u32) -> Option<&[u32]> {
        let (base, size) = *self.live().get(&service)?;
        let t = self.tables.get(&service)?;
        let start = (base as usize) * MAGLEV_CHUNK;
        t.get(start..start + size as usize)
    }

    /// The maps as text: frontends, then each service's live table with each backend's
    /// slot count, then backends. Service names come from `applied` when given.
    pub fn dump(&self, applied: Option<&Applied>) -> String {
        let mut out = String::new();
        let name = |id: u32| {
            applied
                .and_then(|a| a.service_name(id))
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        };
        for (key, value) in &self.frontends {
            let _ = write!(out, "frontend {} -> service {}", key, value.service_id);
            if value.table_size == 0 {
                out.push_str(" (no backend: dropped)");
            }
            if value.flags != 0 {
                let _ = write!(
                    out,
                    " flags={:#x} affinity={}s",
                    value.flags, value.affinity_timeout_s
                );
            }
            out.push('\n');
        }
        for (service, all) in &self.tables {
            let capacity = all.len() / 2 / MAGLEV_CHUNK;
            let _ = write!(out, "table {service}{} capacity={capacity}", name(*service));
            match (self.live().get(service), self.live_table(*service)) {
                (Some((base, size)), Some(slots)) => {
                    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
                    for id in slots {
                        *counts.entry(*id).or_default() += 1;
                    }
                    let _ = write!(
                        out,
                        " live=half{} size={size}:",
                        *base as usize / capacity.max(1)
                    );
                    for (id, n) in counts {
                        let _ = write!(out, " {id}x{n}");
                    }
                }
                _ => {
                    let _ = write!(out, " (no frontend uses it)");
                }
            }
            out.push('\n');
        }
        let mut by_service: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for (service, backend) in &self.members {
            by_service
                .entry(*service)
                .or_default()
                .push(backend.to_string());
        }
        for (service, backends) in by_service {
            let _ = writeln!(out, "affinity members of {service}: {}", backends.join(" "));
        }
        for (id, value) in &self.backends {
            let _ = writeln!(out, "backend {id} {}", BackendKey::of(value));
        }
        out
    }
}

impl FakeMaps {
    /// The contents, as the real maps' read-back gives them (to test adoption).
    pub fn programmed(&self) -> super::Programmed {
        super::Programmed {
            frontends: self.frontends.iter().map(|(k, v)| (*k, *v)).collect(),
            tables: self.tables.clone(),
            backends: self.backends.clone(),
            members: self
                .members
                .iter()
                .map(|(s, b)| lb_common::maps::MemberKey {
                    service_id: *s,
                    backend_id: *b,
                })
                .collect(),
        }
    }
}

impl Maps for FakeMaps {
    fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), MapsError> {
        let live = self.live();
        let in_use = live
            .keys()
            .any(|s| self.live_table(*s).is_some_and(|t| t.contains(&id)));
        assert!(
            !in_use || self.backends.get(&id) == Some(value),
            "make-before-break violated: backend {id} rewritten while a live table uses it"
        );
        self.record("backends", format!("put_backend {id}"))?;
        self.backends.insert(id, *value);
        Ok(())
    }

    fn delete_backend(&mut self, id: u32) -> Result<(), MapsError> {
        let user = self
            .live()
            .keys()
            .copied()
            .find(|s| self.live_table(*s).is_some_and(|t| t.contains(&id)));
        assert!(
            user.is_none(),
            "make-before-break violated: backend {id} cleared while the live table of {user:?} uses it"
        );
        let member = self.members.iter().find(|(_, b)| *b == id);
        assert!(
            member.is_none(),
            "backend {id} cleared while it is an affinity member of {member:?}"
        );
        self.record("backends", format!("delete_backend {id}"))?;
        self.backends.remove(&id);
        Ok(())
    }

    fn put_tables(&mut self, writes: &[TableWrite<'_>]) -> Result<(), MapsError> {
        let live = self.live();
        for w in writes {
            for id in w.slots {
                assert!(
                    self.backends.contains_key(id),
                    "make-before-break violated: table of {} names backend {id}, which is not programmed",
                    w.service
                );
            }
            if w.new_capacity.is_none() {
                let (base, _) = live.get(&w.service).copied().unwrap_or((u32::MAX, 0));
                assert_ne!(
                    base, w.base,
                    "make-before-break violated: the live table of {} is written over",
                    w.service
                );
                let t = self
                    .tables
                    .get(&w.service)
                    .expect("an in-place write goes into an existing array");
                assert!(
                    (w.base as usize) * MAGLEV_CHUNK + w.slots.len() <= t.len(),
                    "table write past its array"
                );
            }
        }
        let services: Vec<String> = writes.iter().map(|w| w.service.to_string()).collect();
        self.record("maglev", format!("put_tables {}", services.join(" ")))?;
        for w in writes {
            if let Some(capacity) = w.new_capacity {
                self.tables
                    .insert(w.service, vec![0; 2 * capacity as usize * MAGLEV_CHUNK]);
            }
            let t = self.tables.get_mut(&w.service).expect("created above");
            let start = (w.base as usize) * MAGLEV_CHUNK;
            t[start..start + w.slots.len()].copy_from_slice(w.slots);
        }
        Ok(())
    }

    fn delete_tables(&mut self, services: &[u32]) -> Result<(), MapsError> {
        let live = self.live();
        for s in services {
            assert!(
                !live.contains_key(s),
                "make-before-break violated: table of {s} deleted while a frontend uses it"
            );
        }
        let names: Vec<String> = services.iter().map(u32::to_string).collect();
        self.record("maglev", format!("delete_tables {}", names.join(" ")))?;
        for s in services {
            self.tables.remove(s);
        }
        Ok(())
    }

    fn put_frontend(&mut self, key: &FrontendKey, value: &FrontendValue) -> Result<(), MapsError> {
        self.record("frontends", format!("put_frontend {}", key))?;
        self.frontends.insert(*key, *value);
        Ok(())
    }

    fn delete_frontend(&mut self, key: &FrontendKey) -> Result<(), MapsError> {
        self.record("frontends", format!("delete_frontend {}", key))?;
        self.frontends.remove(key);
        Ok(())
    }

    fn put_members(&mut self, service: u32, backends: &[u32]) -> Result<(), MapsError> {
        for b in backends {
            assert!(
                self.backends.contains_key(b),
                "affinity member {b} of {service} is not programmed"
            );
        }
        self.record("affinity_members", format!("put_members {service}"))?;
        self.members.extend(backends.iter().map(|b| (service, *b)));
        Ok(())
    }

    fn delete_members(&mut self, service: u32, backends: &[u32]) -> Result<(), MapsError> {
        self.record("affinity_members", format!("delete_members {service}"))?;
        for b in backends {
            self.members.remove(&(service, *b));
        }
        Ok(())
    }
}
