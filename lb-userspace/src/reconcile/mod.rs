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
//!
//! The flows of backends that leave a service (drains, sweeps) are handled in [`flows`];
//! problems are typed in [`problem`].

mod claims;
mod flows;
mod notice;
mod problem;

pub use flows::DRAIN_TIMEOUT;
pub use notice::{Notice, NoticeSender};
pub use problem::Problem;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Instant,
};

use crate::{
    health::{self, HealthView},
    metrics::{Metrics, Names, ScopeLabel},
    model::{BackendKey, Desired, ServiceName, ServiceSpec, object_range},
    store::{Change, Store},
    sync::{self, Applied, ApplyConfig, FlowTarget, Maps, PlanConfig},
    translate::{self, NodeInfo, ObjectKey},
};

/// Where the reconciler sends what the health checker must do.
pub struct HealthLinks {
    pub targets: tokio::sync::watch::Sender<BTreeMap<health::Probe, health::Schedule>>,
    pub commands: tokio::sync::mpsc::UnboundedSender<health::Command>,
}

/// What one sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Every Service was re-translated (first sync, or this node changed).
    pub full: bool,
    /// Kubernetes Services re-translated.
    pub translated: usize,
    pub services: usize,
    pub frontends: usize,
    pub backends: usize,
    pub writes: usize,
    /// Problems found (objects rejected, services not programmed, writes failed).
    pub problems: Vec<Problem>,
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
    /// Which node addresses serve NodePorts.
    nodeport: translate::NodePortAddresses,
    /// Dirty Services, with when they were first seen dirty.
    pending: BTreeMap<ObjectKey, Instant>,
    /// A full sync is due, since then.
    full: Option<Instant>,
    /// Services currently rejected, and why.
    rejected: BTreeMap<ObjectKey, translate::TranslateError>,
    /// Who claims which frontend, and who wins it.
    claims: claims::Claims,
    pub applied: Applied,
    plan_cfg: PlanConfig,
    apply_cfg: ApplyConfig,
    synced: bool,
    /// The metrics' id -> name maps need refreshing.
    names_stale: bool,
    metrics: Arc<Metrics>,
    /// Where this node's addresses go when they change (the device follower).
    node_watch: Option<tokio::sync::watch::Sender<Vec<std::net::IpAddr>>>,
    /// Where problems of objects are told (Kubernetes Events), if anywhere.
    notices: Option<NoticeSender>,
    /// Each `healthCheckNodePort` and what it reports, by Service.
    lb_health: BTreeMap<ObjectKey, (u16, usize)>,
    lb_health_tx: Option<tokio::sync::watch::Sender<HealthChecks>>,
}

/// The `healthCheckNodePort`s this node serves: port -> (namespace, name, local usable
/// endpoints).
pub type HealthChecks = BTreeMap<u16, (String, String, usize)>;

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
            nodeport: translate::NodePortAddresses::default(),
            pending: BTreeMap::new(),
            full: Some(Instant::now()),
            rejected: BTreeMap::new(),
            claims: claims::Claims::default(),
            applied,
            plan_cfg,
            apply_cfg,
            synced: false,
            names_stale: false,
            metrics,
            node_watch: None,
            notices: None,
            lb_health: BTreeMap::new(),
            lb_health_tx: None,
        }
    }

    /// Serves NodePorts on the node addresses `nodeport` selects (default: all of its
    /// InternalIP and ExternalIP addresses).
    pub fn with_nodeport_addresses(mut self, nodeport: translate::NodePortAddresses) -> Self {
        self.nodeport = nodeport;
        self
    }

    /// Publishes the `healthCheckNodePort`s to serve, and their answers, on `tx`.
    pub fn with_health_checks(mut self, tx: tokio::sync::watch::Sender<HealthChecks>) -> Self {
        self.lb_health_tx = Some(tx);
        self
    }

    /// Tells `tx` about every problem of an object (and skipped parts of Services).
    pub fn with_notices(mut self, tx: NoticeSender) -> Self {
        self.notices = Some(tx);
        self
    }

    /// Publishes this node's addresses whenever they change.
    pub fn with_node_watch(
        mut self,
        tx: tokio::sync::watch::Sender<Vec<std::net::IpAddr>>,
    ) -> Self {
        self.node_watch = Some(tx);
        self
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
            let node = self.store.node_info(&self.node_fallback, &self.nodeport);
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
        let pending = std::mem::take(&mut self.pending);
        // The scope: everything (the first sync, or this node changed), or the dirty
        // Services.
        let (scope, mut since) = match self.full.take() {
            Some(since) => {
                report.full = true;
                self.node = self.store.node_info(&self.node_fallback, &self.nodeport);
                if let Some(tx) = &self.node_watch {
                    tx.send_if_modified(|a| {
                        let changed = *a != self.node.addresses;
                        a.clone_from(&self.node.addresses);
                        changed
                    });
                }
                // The first sync's start is the agent's, not a change's: only the changes
                // it carries count as programming latency.
                (None, if self.synced { vec![since] } else { Vec::new() })
            }
            None => (
                Some(pending.keys().cloned().collect::<BTreeSet<_>>()),
                Vec::new(),
            ),
        };
        since.extend(pending.into_values());
        let extra = self.retranslate(scope.as_ref(), &mut report);
        // Services whose claim on a frontend changed hands are planned too.
        let scope = scope.map(|mut keys| {
            keys.extend(extra);
            keys
        });
        let before = self.members(self.applied_in(scope.as_ref()).into_iter());
        let plan = sync::plan(&self.desired, &self.applied, scope.as_ref(), &self.plan_cfg);
        for e in plan.errors.iter().cloned() {
            self.report_problem(Problem::NotProgrammed(e), Some(&mut report));
        }
        let applied = sync::apply_with(plan, &mut self.applied, maps, &self.apply_cfg);
        report.writes = applied.writes;
        for e in applied.errors {
            self.report_problem(Problem::MapWrite(e), Some(&mut report));
        }
        self.retire_flows(before, maps);
        self.finish(&mut report, started, since);
        Some(report)
    }

    /// Re-translates the Services in `scope` (every Service when `None`) from the store:
    /// what each translates to, filtered by health and by who wins each frontend,
    /// replaces what it translated to before. Returns the other Services whose desired
    /// state changed with it (a frontend they claim changed hands), which the sync must
    /// plan too.
    fn retranslate(
        &mut self,
        scope: Option<&BTreeSet<ObjectKey>>,
        report: &mut SyncReport,
    ) -> BTreeSet<ObjectKey> {
        let (keys, previous): (Vec<ObjectKey>, Option<Desired>) = match scope {
            Some(keys) => (keys.iter().cloned().collect(), None),
            None => {
                // Everything afresh: what no Service holds any more goes.
                self.rejected.clear();
                self.health.forget_all();
                self.claims.clear();
                self.lb_health.clear();
                self.desired = Desired::default();
                let keys = self
                    .store
                    .services()
                    .iter()
                    .map(|s| translate::service_key(s))
                    .collect();
                (keys, Some(std::mem::take(&mut self.translated)))
            }
        };
        let mut contested = BTreeSet::new();
        for key in &keys {
            let before = previous.as_ref().unwrap_or(&self.translated);
            let kept: Vec<(ServiceName, ServiceSpec)> =
                object_range(&before.services, &key.0, &key.1)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
            contested.extend(self.retranslate_one(key, kept, report));
        }
        // Every claim is known now: derive the desired state of the Services translated,
        // and of the others that claim a frontend whose claimants changed.
        let mut extra = self.claims.claimants_of(&contested);
        for key in &keys {
            extra.remove(key);
        }
        let now = Instant::now();
        for key in keys.iter().chain(&extra) {
            self.derive(key, now, report);
        }
        extra
    }

    /// Re-translates one Service into `self.translated` and records its claims;
    /// `previous` is what it translated to before (kept when it is rejected now). Returns
    /// the frontends whose claimants changed.
    fn retranslate_one(
        &mut self,
        key: &ObjectKey,
        previous: Vec<(ServiceName, ServiceSpec)>,
        report: &mut SyncReport,
    ) -> BTreeSet<lb_common::maps::FrontendKey> {
        report.translated += 1;
        self.rejected.remove(key);
        self.health.forget_object(&key.0, &key.1);
        let svc = self.store.service(key);
        let fresh = match &svc {
            Some(svc) => self.translate(key, svc, previous, report),
            None => Vec::new(),
        };
        let created = svc
            .as_ref()
            .and_then(|s| s.metadata.creation_timestamp.as_ref())
            .map(|t| t.0.as_second());
        let changed = self.claims.set(key, created, &fresh);
        self.translated.replace_object(&key.0, &key.1, fresh);
        changed
    }

    /// The desired state of the Service `key`: its translation, filtered by health, with
    /// only the frontends it wins (the others are reported as conflicts).
    fn derive(&mut self, key: &ObjectKey, now: Instant, report: &mut SyncReport) {
        if self.lb_health_tx.is_some() {
            let check = self.store.service(key).and_then(|svc| {
                let slices = self.store.slices_of(key);
                let slices: Vec<&_> = slices.iter().map(|s| &**s).collect();
                translate::health_check(&svc, &slices, &self.node)
            });
            match check {
                Some(c) => self.lb_health.insert(key.clone(), c),
                None => self.lb_health.remove(key),
            };
        }
        let mut lost = Vec::new();
        let derived: Vec<(ServiceName, ServiceSpec)> =
            object_range(&self.translated.services, &key.0, &key.1)
                .map(|(name, spec)| {
                    let mut spec = self.health.filter(name, spec, now).spec;
                    let proto = spec.proto;
                    spec.frontends.retain(|fe| {
                        let fk = lb_common::maps::FrontendKey::new(fe.ip, fe.port, proto);
                        match self.claims.winner(&fk) {
                            Some(owner) if owner != name => {
                                lost.push(sync::PlanError::FrontendConflict {
                                    service: name.clone(),
                                    frontend: fk.to_string(),
                                    owner: owner.clone(),
                                });
                                false
                            }
                            _ => true,
                        }
                    });
                    (name.clone(), spec)
                })
                .collect();
        self.desired.replace_object(&key.0, &key.1, derived);
        for e in lost {
            self.report_problem(Problem::NotProgrammed(e), Some(report));
        }
    }

    /// Translates the Service `key`; a rejected Service keeps `previous`.
    fn translate(
        &mut self,
        key: &ObjectKey,
        svc: &k8s_openapi::api::core::v1::Service,
        previous: Vec<(ServiceName, ServiceSpec)>,
        report: &mut SyncReport,
    ) -> Vec<(ServiceName, ServiceSpec)> {
        let slices = self.store.slices_of(key);
        let slices: Vec<&_> = slices.iter().map(|s| &**s).collect();
        // Where the object was read (manifests: file and document), for every message.
        let origin = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::store::ORIGIN_ANNOTATION))
            .cloned();
        match translate::translate_service(svc, &slices, &self.node) {
            Ok(t) => {
                for w in t.warnings {
                    self.notify(Notice::skipped(&key.0, &key.1, &w));
                    let w = match &origin {
                        Some(o) => format!("{o}: {w}"),
                        None => w,
                    };
                    tracing::warn!("{w}");
                    report.warnings.push(w);
                }
                t.services
            }
            Err(error) => {
                self.rejected.insert(key.clone(), error.clone());
                let kept_previous = !previous.is_empty();
                self.report_problem(
                    Problem::Rejected {
                        error,
                        origin,
                        kept_previous,
                    },
                    Some(report),
                );
                previous
            }
        }
    }

    /// The applied services in `scope` (all when `None`).
    fn applied_in(&self, scope: Option<&BTreeSet<ObjectKey>>) -> Vec<ServiceName> {
        match scope {
            None => self.applied.services.keys().cloned().collect(),
            Some(keys) => keys
                .iter()
                .flat_map(|k| {
                    object_range(&self.applied.services, &k.0, &k.1).map(|(n, _)| n.clone())
                })
                .collect(),
        }
    }

    /// Logs and counts a problem, and adds it to `report` when there is one.
    fn report_problem(&self, problem: Problem, report: Option<&mut SyncReport>) {
        match problem {
            Problem::MapWrite(_) => tracing::error!("{problem}"),
            _ => tracing::warn!("{problem}"),
        }
        self.metrics.error(problem.kind());
        if let Some(notice) = Notice::of(&problem) {
            self.notify(notice);
        }
        if let Some(r) = report {
            r.problems.push(problem);
        }
    }

    /// Hands a notice on without waiting (a full queue drops it: the log and the metric
    /// have it already).
    fn notify(&self, mut notice: Notice) {
        let Some(tx) = &self.notices else {
            return;
        };
        if notice.kind == "Service" {
            let key = (notice.namespace.clone(), notice.name.clone());
            notice.uid = self
                .store
                .service(&key)
                .and_then(|s| s.metadata.uid.clone());
        }
        if tx.try_send(notice).is_err() {
            tracing::debug!("the event queue is full: an event was dropped");
        }
    }

    /// After a sync: health targets, gauges, latency and readiness.
    fn finish(&mut self, report: &mut SyncReport, started: Instant, since: Vec<Instant>) {
        if let Some(tx) = &self.lb_health_tx {
            let checks: HealthChecks = self
                .lb_health
                .iter()
                .map(|((ns, name), (port, count))| (*port, (ns.clone(), name.clone(), *count)))
                .collect();
            tx.send_if_modified(|current| {
                let changed = *current != checks;
                *current = checks;
                changed
            });
        }
        if let Some(targets) = self.health.take_targets()
            && let Some(links) = &self.health_links
        {
            let _ = links.targets.send(targets);
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
        self.update_gauges(report.writes);
        self.names_stale = true;
        if !self.synced {
            self.synced = true;
            self.metrics.set_ready();
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
        for e in reaped.errors {
            self.report_problem(Problem::MapWrite(e), None);
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
