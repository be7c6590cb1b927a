//! The flows of backends that leave a service's table: TCP connections drain (until
//! they end or the drain timeout), UDP flows move at once (a client that keeps its source
//! port is not stuck on a failed backend), terminating-but-serving endpoints keep all
//! their flows until the drain timeout.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use super::{Problem, Reconciler};
use crate::{
    model::{BackendKey, ServiceName},
    sync::{FlowTarget, Maps},
};

/// Default time a backend's TCP connections keep going after it left its service (a
/// terminating or deleted endpoint), before their entries are removed.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Reconciler {
    /// Table members (backends taking new flows) of each service `names` selects.
    pub(super) fn members(
        &self,
        names: impl Iterator<Item = ServiceName>,
    ) -> BTreeMap<ServiceName, (u32, BTreeSet<BackendKey>)> {
        names
            .filter_map(|n| {
                let id = *self.applied.services.get(&n)?;
                let members = self
                    .applied
                    .tables
                    .get(&id)
                    .map(|t| t.members.iter().map(|(k, _)| *k).collect())
                    .unwrap_or_default();
                Some((n, (id, members)))
            })
            .collect()
    }

    /// After a sync: the flows of backends that left a service's table.
    /// - It left for health (still an endpoint): TCP connections keep it (it may still
    ///   answer); UDP flows move at once (a client that keeps its source port is not
    ///   stuck on a failed backend).
    /// - It is terminating but still serving: its flows, UDP included, keep it until they
    ///   end or the drain timeout passes.
    /// - It is gone (deleted, not serving): UDP flows move at once, TCP connections keep
    ///   it until the drain timeout.
    pub(super) fn retire_flows(
        &mut self,
        before: BTreeMap<ServiceName, (u32, BTreeSet<BackendKey>)>,
        maps: &mut impl Maps,
    ) {
        let now = Instant::now();
        let after = self.members(before.keys().cloned());
        let mut sweep = Vec::new();
        for (name, (id, old)) in before {
            let current = after
                .get(&name)
                .filter(|(i, _)| *i == id)
                .map(|(_, m)| m.clone())
                .unwrap_or_default();
            for b in &current {
                self.drains.remove(&FlowTarget {
                    service: id,
                    backend: *b,
                });
            }
            let spec = self.translated.services.get(&name);
            for b in old.difference(&current) {
                let target = FlowTarget {
                    service: id,
                    backend: *b,
                };
                let endpoint = spec.is_some_and(|s| {
                    s.backends
                        .iter()
                        .any(|e| e.ip == b.ip && e.port == b.port && e.weight > 0)
                });
                let terminating = spec.is_some_and(|s| s.terminating.contains(&(b.ip, b.port)));
                let udp = b.proto == lb_common::Proto::UDP;
                if terminating {
                    self.drains.insert(target, now + self.drain_timeout);
                } else if udp {
                    sweep.push(target);
                } else if !endpoint {
                    self.drains.insert(target, now + self.drain_timeout);
                }
            }
        }
        self.sweep(&sweep, "udp_backend_removed", maps);
    }

    pub(super) fn sweep(
        &mut self,
        targets: &[FlowTarget],
        reason: &'static str,
        maps: &mut impl Maps,
    ) {
        if targets.is_empty() {
            return;
        }
        match maps.sweep_flows(targets) {
            Ok(n) => {
                tracing::debug!(
                    targets = targets.len(),
                    entries = n,
                    reason,
                    "flows removed from the connection table"
                );
                self.metrics.flows_swept(reason, n as u64);
            }
            Err(e) => self.report_problem(Problem::MapWrite(e.into()), None),
        }
    }
}
