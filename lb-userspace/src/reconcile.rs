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
    metrics::{Metrics, Names, ScopeLabel, errors},
    model::{Desired, ServiceSpec, object_range},
    store::{Change, Store},
    sync::{self, Applied, ApplyConfig, Maps, PlanConfig},
    translate::{self, NodeInfo, ObjectKey},
};

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
    desired: Desired,
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
            desired: Desired::default(),
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

    pub fn desired(&self) -> &Desired {
        &self.desired
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
            self.desired = desired;
            self.rejected = rejected;
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
                self.desired.replace_object(&key.0, &key.1, fresh.services);
            }
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
                    object_range(&self.desired.services, &key.0, &key.1)
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
                    .map(|(id, v)| (*id, sync::BackendKey::of(v).to_string()))
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
