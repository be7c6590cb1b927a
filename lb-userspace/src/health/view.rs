//! The reconciler's view of backend health: the active probes' states, the passive
//! ejections (outlier detection), and for each service its check and the probes it
//! depends on. Filters translated services down to what takes new flows, with fail open
//! when that would leave none.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    time::{Duration, Instant},
};

use super::{
    probe::{Probe, Schedule, Transition, probe_of},
    spec::{HealthCheck, HealthDefaults},
};
use crate::model::{BackendKey, ServiceName, ServiceSpec, object_range};

/// Passive health (outlier detection) settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Failed new connections (a TCP RST answering a SYN, an ICMP unreachable from the
    /// backend) within `window` that eject a backend; 0 turns passive ejection off.
    pub failures: u32,
    pub window: Duration,
    /// How long an ejection lasts when no active check can bring the backend back.
    pub ejection: Duration,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            failures: 3,
            window: Duration::from_secs(1),
            ejection: Duration::from_secs(30),
        }
    }
}

/// The health of every backend as the reconciler sees it: the active probes' states, the
/// passive ejections, and for each service its check and which probes it depends on.
/// Filters translated services down to what takes new flows.
#[derive(Default)]
pub struct HealthView {
    pub defaults: HealthDefaults,
    pub outlier: OutlierConfig,
    down: BTreeSet<Probe>,
    /// Passively ejected backends, until when.
    ejected: BTreeMap<BackendKey, Instant>,
    recent_failures: BTreeMap<BackendKey, VecDeque<Instant>>,
    /// Per service: its check and the probe of each backend.
    checks: BTreeMap<ServiceName, (HealthCheck, Vec<(BackendKey, Probe)>)>,
    fail_open: BTreeSet<ServiceName>,
    targets_changed: bool,
}

/// What a filtered service looks like.
pub struct Filtered {
    pub spec: ServiceSpec,
    /// Backends taken out (unhealthy, ejected).
    pub excluded: Vec<BackendKey>,
    /// Every backend is down: all are kept.
    pub fail_open: bool,
}

impl HealthView {
    pub fn new(defaults: HealthDefaults, outlier: OutlierConfig) -> Self {
        Self {
            defaults,
            outlier,
            ..Default::default()
        }
    }

    fn backend_key(spec: &ServiceSpec, b: &crate::model::Backend) -> BackendKey {
        BackendKey {
            ip: b.ip,
            port: b.port,
            proto: spec.proto,
        }
    }

    /// Forgets the checks of the Services of Kubernetes object `namespace/name` (before
    /// they are filtered again).
    pub fn forget_object(&mut self, namespace: &str, name: &str) {
        let names: Vec<ServiceName> = object_range(&self.checks, namespace, name)
            .map(|(k, _)| k.clone())
            .collect();
        for n in names {
            self.checks.remove(&n);
            self.fail_open.remove(&n);
            self.targets_changed = true;
        }
    }

    /// Forgets everything about services (before a full sync).
    pub fn forget_all(&mut self) {
        self.checks.clear();
        self.fail_open.clear();
        self.targets_changed = true;
    }

    /// Records `spec`'s check and returns it without the backends that are down, unless
    /// that leaves none (fail open).
    pub fn filter(&mut self, name: &ServiceName, spec: &ServiceSpec, now: Instant) -> Filtered {
        let check = spec
            .health
            .resolve(&self.defaults, spec.proto == lb_common::Proto::UDP);
        let mut excluded = Vec::new();
        let mut probes = Vec::new();
        let mut kept = Vec::new();
        for b in &spec.backends {
            let key = Self::backend_key(spec, b);
            let probe = check.as_ref().map(|c| probe_of(c, b.ip, b.port));
            let probe_down = probe.as_ref().is_some_and(|p| self.down.contains(p));
            let ejected = self.ejected.get(&key).is_some_and(|until| *until > now);
            if let Some(p) = probe {
                probes.push((key, p));
            }
            if (probe_down || ejected) && b.weight > 0 {
                excluded.push(key);
            } else {
                kept.push(*b);
            }
        }
        let usable = kept.iter().any(|b| b.weight > 0);
        let fail_open = !excluded.is_empty() && !usable;
        let mut out = spec.clone();
        out.fail_open = fail_open;
        if fail_open {
            if self.fail_open.insert(name.clone()) {
                tracing::warn!(service = %name, down = excluded.len(), "every backend is down: serving all of them (fail open)");
            }
        } else {
            if self.fail_open.remove(name) {
                tracing::info!(service = %name, "a backend is healthy again: fail open ends");
            }
            out.backends = kept;
        }
        let entry = check.map(|c| (c, probes));
        if self.checks.get(name) != entry.as_ref() {
            self.targets_changed = true;
        }
        match entry {
            Some(e) => {
                self.checks.insert(name.clone(), e);
            }
            None => {
                self.checks.remove(name);
            }
        }
        Filtered {
            spec: out,
            excluded: if fail_open { Vec::new() } else { excluded },
            fail_open,
        }
    }

    /// Services in fail open.
    pub fn fail_open(&self) -> &BTreeSet<ServiceName> {
        &self.fail_open
    }

    /// Every probe to run, when that changed since the last call.
    pub fn take_targets(&mut self) -> Option<BTreeMap<Probe, Schedule>> {
        if !std::mem::take(&mut self.targets_changed) {
            return None;
        }
        let mut out: BTreeMap<Probe, Schedule> = BTreeMap::new();
        for (check, probes) in self.checks.values() {
            let s = Schedule::of(check);
            for (_, p) in probes {
                out.entry(p.clone())
                    .and_modify(|e| *e = e.merge(s))
                    .or_insert(s);
            }
        }
        self.down.retain(|p| out.contains_key(p));
        Some(out)
    }

    /// Objects (namespace, name) of the services whose backends `pred` selects.
    fn objects_where(
        &self,
        mut pred: impl FnMut(&BackendKey, &Probe) -> bool,
    ) -> BTreeSet<(String, String)> {
        self.checks
            .iter()
            .filter(|(_, (_, probes))| probes.iter().any(|(b, p)| pred(b, p)))
            .map(|(n, _)| (n.namespace.clone(), n.name.clone()))
            .collect()
    }

    /// An active probe changed state; returns the objects to re-filter. A probe that comes
    /// back also ends the passive ejections of the backends it checks.
    pub fn transition(&mut self, t: &Transition) -> BTreeSet<(String, String)> {
        if t.healthy {
            self.down.remove(&t.probe);
            let restored: Vec<BackendKey> = self
                .checks
                .values()
                .flat_map(|(_, probes)| probes.iter())
                .filter(|(_, p)| *p == t.probe)
                .map(|(b, _)| *b)
                .collect();
            for b in restored {
                self.ejected.remove(&b);
            }
        } else {
            self.down.insert(t.probe.clone());
        }
        self.objects_where(|_, p| *p == t.probe)
    }

    /// A new connection to `backend` failed (seen by the datapath). Returns, when this
    /// ejects it, the probes to force down (so that only their checks bring it back).
    pub fn failure(&mut self, backend: BackendKey, now: Instant) -> Option<Vec<Probe>> {
        if self.outlier.failures == 0 || self.ejected.get(&backend).is_some_and(|u| *u > now) {
            return None;
        }
        let window = self.outlier.window;
        let recent = self.recent_failures.entry(backend).or_default();
        recent.push_back(now);
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            recent.pop_front();
        }
        if (recent.len() as u32) < self.outlier.failures {
            return None;
        }
        self.recent_failures.remove(&backend);
        self.ejected.insert(backend, now + self.outlier.ejection);
        let probes: Vec<Probe> = self
            .checks
            .values()
            .flat_map(|(_, probes)| probes.iter())
            .filter(|(b, _)| *b == backend)
            .map(|(_, p)| p.clone())
            .collect();
        for p in &probes {
            self.down.insert(p.clone());
        }
        Some(probes)
    }

    /// Objects whose services contain `backend` (with or without a check: `all` lists
    /// every translated service's backends).
    pub fn objects_with(
        backend: &BackendKey,
        all: &crate::model::Desired,
    ) -> BTreeSet<(String, String)> {
        all.services
            .iter()
            .filter(|(_, s)| {
                s.backends
                    .iter()
                    .any(|b| Self::backend_key(s, b) == *backend)
            })
            .map(|(n, _)| (n.namespace.clone(), n.name.clone()))
            .collect()
    }

    /// Ends the ejections that expired and that no active check is in charge of; returns
    /// the backends that came back.
    pub fn expire(&mut self, now: Instant) -> Vec<BackendKey> {
        let checked: BTreeSet<BackendKey> = self
            .checks
            .values()
            .flat_map(|(_, probes)| probes.iter().map(|(b, _)| *b))
            .collect();
        let due: Vec<BackendKey> = self
            .ejected
            .iter()
            .filter(|(b, until)| **until <= now && !checked.contains(b))
            .map(|(b, _)| *b)
            .collect();
        for b in &due {
            self.ejected.remove(b);
        }
        due
    }
}
