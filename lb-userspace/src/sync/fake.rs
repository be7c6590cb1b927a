//! In-memory maps for tests: the same contract as the kernel maps, plus invariant checks
//! that fail loudly when an operation would let the datapath see a broken state (a table
//! pointing at a missing backend, a backend cleared while a table uses it), and a text dump
//! of their contents for golden tests.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
};

use lb_common::maps::{BackendValue, FrontendKey, FrontendValue};

use super::{
    applied::{Applied, BackendKey},
    apply::{Maps, MapsError},
    plan::describe,
};

#[derive(Clone, Debug, Default)]
pub struct FakeMaps {
    pub frontends: BTreeMap<FrontendKey, FrontendValue>,
    pub tables: BTreeMap<u32, Vec<u32>>,
    pub backends: BTreeMap<u32, BackendValue>,
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

    /// The maps as text: frontends, then tables with each backend's slot count, then
    /// backends. Service names come from `applied` when given.
    pub fn dump(&self, applied: Option<&Applied>) -> String {
        let mut out = String::new();
        let name = |id: u32| {
            applied
                .and_then(|a| a.service_name(id))
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        };
        for (key, value) in &self.frontends {
            let _ = write!(out, "frontend {} -> service {}", describe(key), value.service_id);
            if value.flags != 0 {
                let _ = write!(out, " flags={:#x} affinity={}s", value.flags, value.affinity_timeout_s);
            }
            out.push('\n');
        }
        for (service, table) in &self.tables {
            let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
            for id in &table[1..] {
                *counts.entry(*id).or_default() += 1;
            }
            let _ = write!(out, "table {service}{} size={}:", name(*service), table[0]);
            for (id, n) in counts {
                let _ = write!(out, " {id}x{n}");
            }
            out.push('\n');
        }
        for (id, value) in &self.backends {
            let _ = writeln!(out, "backend {id} {}", BackendKey::of(value));
        }
        out
    }

    fn check_table(&self, service: u32, table: &[u32]) -> Result<(), String> {
        let size = *table.first().ok_or("empty table")?;
        if table.len() != size as usize + 1 {
            return Err(format!("table {service}: size {size} but {} slots", table.len() - 1));
        }
        for id in &table[1..] {
            if !self.backends.contains_key(id) {
                return Err(format!("table {service} references backend {id}, which is not programmed"));
            }
        }
        Ok(())
    }
}

impl Maps for FakeMaps {
    fn put_backend(&mut self, id: u32, value: &BackendValue) -> Result<(), MapsError> {
        let in_use = self.tables.values().any(|t| t[1..].contains(&id));
        assert!(
            !in_use || self.backends.get(&id) == Some(value),
            "make-before-break violated: backend {id} rewritten while a table uses it"
        );
        self.record("backends", format!("put_backend {id}"))?;
        self.backends.insert(id, *value);
        Ok(())
    }

    fn delete_backend(&mut self, id: u32) -> Result<(), MapsError> {
        let user = self.tables.iter().find(|(_, t)| t[1..].contains(&id)).map(|(s, _)| *s);
        assert!(user.is_none(), "make-before-break violated: backend {id} cleared while table {user:?} uses it");
        self.record("backends", format!("delete_backend {id}"))?;
        self.backends.remove(&id);
        Ok(())
    }

    fn put_table(&mut self, service: u32, table: &[u32]) -> Result<(), MapsError> {
        if let Err(e) = self.check_table(service, table) {
            panic!("make-before-break violated: {e}");
        }
        self.record("maglev", format!("put_table {service}"))?;
        self.tables.insert(service, table.to_vec());
        Ok(())
    }

    fn delete_table(&mut self, service: u32) -> Result<(), MapsError> {
        self.record("maglev", format!("delete_table {service}"))?;
        self.tables.remove(&service);
        Ok(())
    }

    fn put_frontend(&mut self, key: &FrontendKey, value: &FrontendValue) -> Result<(), MapsError> {
        self.record("frontends", format!("put_frontend {}", describe(key)))?;
        self.frontends.insert(*key, *value);
        Ok(())
    }

    fn delete_frontend(&mut self, key: &FrontendKey) -> Result<(), MapsError> {
        self.record("frontends", format!("delete_frontend {}", describe(key)))?;
        self.frontends.remove(key);
        Ok(())
    }
}
