//! Level-triggered reconciliation: changes from the sources mark Services dirty; a sync
//! re-translates the dirty ones from the store (their current state, not the events'),
//! plans the delta against what is programmed, and applies it.
//!
//! - A change of this node (addresses, zone) re-translates every Service; so does the
//!   first sync, which also prunes whatever an earlier agent left in adopted maps.
//! - Nothing is programmed before every kind has been listed once: a Service seen before
//!   its EndpointSlices would otherwise lose its backends for a moment.
//! - A Service that becomes invalid keeps its last valid translation (and the error is
//!   reported): a typo in an annotation does not take a Service down. A Service that is
//!   invalid from the start is not programmed.
//! - Programming latency (from the moment a change was seen to the maps written) is
//!   measured per dirty Service.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Instant,
};

use crate::{
    health::{self, HealthView},
    metrics::{Metrics, Names, ScopeLabel, errors},
    model::{BackendKey, Desired, ServiceName, ServiceSpec, object_range},
    store::{Change, Store},
    sync::{self, Applied, ApplyConfig, FlowTarget, Maps, PlanConfig},
    translate::{self, NodeInfo, ObjectKey},
};

/// Default time a backend's TCP connections keep going after it left its service (a
/// terminating or deleted endpoint), before their entries are removed.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where the reconciler sends what the health checker must do.
pub struct HealthLinks {
    pub targets: tokio::sync::watch::Sender<BTreeMap<health::Probe, health::Schedule>>,
    pub commands: tokio::sync::mpsc::UnboundedSender<health::Command>,
}

/// What one sync did.
#[derive(Debug, Default, Clone)]
pub struct SyncReport {
    /// Every Service was re-translated (first sync, or this node changed).
    pub full: bool,
    /// Kubernetes Services re-translated.
    pub translated: usize,
    pub services: usize,
    pub frontends: usize,
    pub backends: usize,
    pub writes: usize,
    /// Problems found (objects rejected, services not programmed, writes failed), as
    /// logged.
    pub problems: Vec<String>,
    /// Parts of objects skipped (e.g. an SCTP port), as logged.
    pub warnings: Vec<String>,
    pub elapsed: std::time::Duration,
}

pub struct Reconciler {
    pub store: Store,
    /// What the objects translate to, before health filtering.
    translated: Desired,
    /// What is programmed: `translated` without the backends that are down.
    desired: Desired,
    health: HealthView,
    health_links: Option<HealthLinks>,
    /// TCP flows of backends that left their service, and when they are cut.
    drains: BTreeMap<FlowTarget, Instant>,
    drain_timeout: std::time::Duration,
    node: NodeInfo,
    /// This node as the command line describes it (used without a Node object).
    node_fallback: NodeInfo,
    /// Dirty Services, with when they were first seen dirty.
    pending: BTreeMap<ObjectKey, Instant>,
    /// A full sync is due, since then.
    full: Option<Instant>,
    /// Services currently rejected, and why.
    rejected: BTreeMap<ObjectKey, translate::TranslateError>,
    pub applied: Applied,
    plan_cfg: PlanConfig,
    apply_cfg: ApplyConfig,
    synced: bool,
    /// The metrics' id -> name maps need refreshing.
    names_stale: bool,
    metrics: Arc<Metrics>,
}

impl Reconciler {
    pub fn new(
        store: Store,
        node_fallback: NodeInfo,
        applied: Applied,
        plan_cfg: PlanConfig,
        apply_cfg: ApplyConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            translated: Desired::default(),
            desired: Desired::default(),
            health: HealthView::default(),
            health_links: None,
            drains: BTreeMap::new(),
            drain_timeout: DRAIN_TIMEOUT,
            node: node_fallback.clone(),
            node_fallback,
            pending: BTreeMap::new(),
            full: Some(Instant::now()),
            rejected: BTreeMap::new(),
            applied,
            plan_cfg,
            apply_cfg,
            synced: false,
            names_stale: false,
            metrics,
        }
    }

    /// Health checks, passive ejection and drains (the agent's settings).
    pub fn with_health(
        mut self,
        view: HealthView,
        links: Option<HealthLinks>,
        drain_timeout: std::time::Duration,
    ) -> Self {
        self.health = view;
        self.health_links = links;
        self.drain_timeout = drain_timeout;
        self
    }

    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// An active probe changed state.
    pub fn health_transition(&mut self, t: &health::Transition) {
        let now = Instant::now();
        match (&t.reason, t.healthy) {
            (_, true) => {
                tracing::info!(probe = %t.probe, "backend healthy again: it takes new connections")
            }
            (reason, false) => tracing::warn!(
                probe = %t.probe,
                reason = %reason.as_ref().map_or(String::new(), ToString::to_string),
                "backend unhealthy: no new connections go to it"
            ),
        }
        for key in self.health.transition(t) {
            self.pending.entry(key).or_insert(now);
        }
    }

    /// The datapath saw a new connection to backend `id` fail (RST answering its SYN, or
    /// an ICMP unreachable from it).
    pub fn connection_failed(&mut self, id: u32) {
        let Some(value) = self.applied.backends.get(&id) else {
            return;
        };
        let backend = BackendKey::of(value);
        let now = Instant::now();
        let Some(probes) = self.health.failure(backend, now) else {
            return;
        };
        tracing::warn!(
            %backend,
            failures = self.health.outlier.failures,
            window = ?self.health.outlier.window,
            "backend ejected: its new connections fail (passive detection)"
        );
        self.metrics.ejections.inc();
        if let Some(links) = &self.health_links {
            for p in probes {
                let _ = links.commands.send(health::Command::ForceDown(p));
            }
        }
        for key in HealthView::objects_with(&backend, &self.translated) {
            self.pending.entry(key).or_insert(now);
        }
    }

    /// Table members (backends taking new flows) of each service `names` selects.
    fn members(
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
    fn retire_flows(
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

    fn sweep(&mut self, targets: &[FlowTarget], reason: &'static str, maps: &mut impl Maps) {
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
            Err(e) => {
                tracing::error!("map write failed: {e}");
                self.metrics.error(errors::MAP_WRITE);
            }
        }
    }

    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// Whether the first complete sync is done.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Records a change from a source.
    pub fn handle(&mut self, change: &Change) {
        let now = Instant::now();
        let dirty = self.store.apply(change);
        for key in dirty.services {
            self.pending.entry(key).or_insert(now);
        }
        if dirty.node {
            let node = self.store.node_info(&self.node_fallback);
            if node != self.node {
                tracing::info!(addresses = ?node.addresses, zone = ?node.zone, "this node changed");
                self.full.get_or_insert(now);
            }
        }
    }

    /// Whether a sync has something to do (and may run).
    pub fn due(&self) -> bool {
        self.store.listed() && (self.full.is_some() || !self.pending.is_empty())
    }

    /// Translates, plans and applies what is dirty. Does nothing until every kind has
    /// been listed once.
    pub fn sync(&mut self, maps: &mut impl Maps) -> Option<SyncReport> {
        if !self.due() {
            return None;
        }
        let started = Instant::now();
        let mut report = SyncReport::default();
        let before;
        let (plan, since) = if let Some(since) = self.full.take() {
            report.full = true;
            self.node = self.store.node_info(&self.node_fallback);
            let pending = std::mem::take(&mut self.pending);
            let mut desired = Desired::default();
            let mut rejected = BTreeMap::new();
            for svc in self.store.services() {
                let key = translate::service_key(&svc);
                report.translated += 1;
                self.translate_into(&key, Some(&svc), &mut desired, &mut rejected, &mut report);
            }
            self.rejected = rejected;
            self.health.forget_all();
            let now = Instant::now();
            let mut filtered = Desired::default();
            for (name, spec) in &desired.services {
                filtered
                    .services
                    .insert(name.clone(), self.health.filter(name, spec, now).spec);
            }
            self.translated = desired;
            self.desired = filtered;
            before = self.members(
                self.applied
                    .services
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .into_iter(),
            );
            let plan = sync::plan(&self.desired, &self.applied, None, &self.plan_cfg);
            // The first sync's start is the agent's, not a change's: only the changes
            // it carries count as programming latency.
            let mut since: Vec<Instant> = if self.synced { vec![since] } else { Vec::new() };
            since.extend(pending.into_values());
            (plan, since)
        } else {
            let pending = std::mem::take(&mut self.pending);
            let scope: BTreeSet<ObjectKey> = pending.keys().cloned().collect();
            for key in &scope {
                report.translated += 1;
                let svc = self.store.service(key);
                let mut fresh = Desired::default();
                let mut rejected = std::mem::take(&mut self.rejected);
                rejected.remove(key);
                self.translate_into(key, svc.as_deref(), &mut fresh, &mut rejected, &mut report);
                self.rejected = rejected;
                self.health.forget_object(&key.0, &key.1);
                let now = Instant::now();
                let filtered: Vec<(ServiceName, ServiceSpec)> = fresh
                    .services
                    .iter()
                    .map(|(name, spec)| (name.clone(), self.health.filter(name, spec, now).spec))
                    .collect();
                self.translated
                    .replace_object(&key.0, &key.1, fresh.services);
                self.desired.replace_object(&key.0, &key.1, filtered);
            }
            let names: Vec<ServiceName> = scope
                .iter()
                .flat_map(|k| {
                    object_range(&self.applied.services, &k.0, &k.1)
                        .map(|(n, _)| n.clone())
                        .collect::<Vec<_>>()
                })
                .collect();
            before = self.members(names.into_iter());
            let plan = sync::plan(&self.desired, &self.applied, Some(&scope), &self.plan_cfg);
            (plan, pending.into_values().collect())
        };
        for e in &plan.errors {
            let msg = format!("not programmed: {e}");
            tracing::warn!("{msg}");
            self.metrics.error(errors::PLAN);
            report.problems.push(msg);
        }
        let applied = sync::apply_with(plan, &mut self.applied, maps, &self.apply_cfg);
        for e in &applied.errors {
            let msg = format!("map write failed: {e}");
            tracing::error!("{msg}");
            self.metrics.error(errors::MAP_WRITE);
            report.problems.push(msg);
        }
        report.writes = applied.writes;
        self.retire_flows(before, maps);
        if let Some(targets) = self.health.take_targets() {
            if let Some(links) = &self.health_links {
                let _ = links.targets.send(targets);
            }
        }
        self.metrics.set_fail_open(self.health.fail_open());
        report.services = self.desired.services.len();
        report.frontends = self.desired.frontend_count();
        report.backends = self.desired.backend_count();
        report.elapsed = started.elapsed();

        let done = Instant::now();
        for t in since {
            self.metrics
                .programming_latency
                .observe(done.duration_since(t).as_secs_f64());
        }
        let scope = if report.full { "full" } else { "incremental" };
        self.metrics
            .sync_duration
            .get_or_create(&ScopeLabel { scope })
            .observe(report.elapsed.as_secs_f64());
        self.update_gauges(applied.writes);
        self.names_stale = true;
        if !self.synced {
            self.synced = true;
            self.metrics.set_ready();
        }
        Some(report)
    }

    /// Translates the Service `key` (None: it is gone) into `out`. A rejected Service
    /// keeps its previous translation, if it had one.
    fn translate_into(
        &self,
        key: &ObjectKey,
        svc: Option<&k8s_openapi::api::core::v1::Service>,
        out: &mut Desired,
        rejected: &mut BTreeMap<ObjectKey, translate::TranslateError>,
        report: &mut SyncReport,
    ) {
        let Some(svc) = svc else { return };
        let slices = self.store.slices_of(key);
        let slices: Vec<&_> = slices.iter().map(|s| &**s).collect();
        match translate::translate_service(svc, &slices, &self.node) {
            Ok(t) => {
                for w in t.warnings {
                    tracing::warn!("{w}");
                    report.warnings.push(w);
                }
                out.services.extend(t.services);
            }
            Err(e) => {
                self.metrics.error(errors::INVALID_OBJECT);
                let previous: Vec<(crate::model::ServiceName, ServiceSpec)> =
                    object_range(&self.translated.services, &key.0, &key.1)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                let at = svc
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(crate::manifests::ORIGIN_ANNOTATION))
                    .map(|o| format!("{o}: "))
                    .unwrap_or_default();
                let msg = if previous.is_empty() {
                    format!("rejected: {at}{e}")
                } else {
                    format!("rejected (keeping its last valid version): {at}{e}")
                };
                tracing::warn!("{msg}");
                report.problems.push(msg);
                out.services.extend(previous);
                rejected.insert(key.clone(), e);
            }
        }
    }

    fn update_gauges(&self, writes: usize) {
        let a = &self.applied;
        self.metrics.map_writes.inc_by(writes as u64);
        self.metrics.services.set(a.services.len() as i64);
        self.metrics.frontends.set(a.frontends.len() as i64);
        self.metrics.backends.set(a.backends.len() as i64);
        self.metrics
            .rejected_objects
            .set(self.rejected.len() as i64);
    }

    /// Periodic work (the agent calls it about once a second): clears retired backends
    /// and refreshes the names the metrics label datapath counters with (off the sync
    /// path: with many services it is not free).
    pub fn tick(&mut self, maps: &mut impl Maps) {
        let now = Instant::now();
        let due: Vec<FlowTarget> = self
            .drains
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(f, _)| *f)
            .collect();
        for f in &due {
            self.drains.remove(f);
        }
        self.sweep(&due, "drain_timeout", maps);
        for backend in self.health.expire(now) {
            tracing::info!(%backend, "ejection over: the backend takes new connections again");
            for key in HealthView::objects_with(&backend, &self.translated) {
                self.pending.entry(key).or_insert(now);
            }
        }
        let reaped = sync::reap(&mut self.applied, maps);
        for e in &reaped.errors {
            tracing::error!("map write failed: {e}");
            self.metrics.error(errors::MAP_WRITE);
        }
        if reaped.writes > 0 {
            self.update_gauges(reaped.writes);
        }
        if self.names_stale {
            self.names_stale = false;
            let a = &self.applied;
            self.metrics.set_names(Names {
                services: a
                    .services
                    .iter()
                    .map(|(name, id)| (*id, name.to_string()))
                    .collect(),
                backends: a
                    .backends
                    .iter()
                    .map(|(id, v)| (*id, BackendKey::of(v).to_string()))
                    .collect(),
            });
        }
        self.metrics.beat();
    }

    /// The rejected Services and why.
    pub fn rejected(&self) -> &BTreeMap<ObjectKey, translate::TranslateError> {
        &self.rejected
    }
}
