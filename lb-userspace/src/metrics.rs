//! The agent's own metrics (Prometheus/OpenMetrics, prometheus-client) and its HTTP
//! endpoint: `/metrics`, `/healthz` (the process serves), `/readyz` (the first complete
//! sync is done).
//!
//! Datapath counters are read from the pinned maps at each scrape, so `/metrics` shows
//! exactly what `xlb stats` shows.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _, text::encode},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// `/healthz` fails when the reconciler has not gone round its loop for this long.
pub const HEALTHY_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceNameLabel {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabel {
    pub scope: &'static str,
}

/// Kinds of problems (the `kind` label of `xlb_sync_errors_total`). Each layer's problem
/// type says which kind it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A manifest file or document that could not be read or parsed.
    InvalidManifest,
    /// An object rejected by the translation (the reason is logged).
    InvalidObject,
    /// A desired service the planner could not program (conflict, capacity).
    Plan,
    /// A map write that failed.
    MapWrite,
    /// The source lost its connection (watch errors; it retries with backoff).
    Source,
}

impl ErrorKind {
    /// The metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::InvalidManifest => "invalid_manifest",
            Self::InvalidObject => "invalid_object",
            Self::Plan => "plan",
            Self::MapWrite => "map_write",
            Self::Source => "source",
        }
    }
}

/// Everything the agent measures about itself.
#[derive(Debug)]
pub struct Metrics {
    /// From a change seen by a source to the maps written.
    pub programming_latency: Histogram,
    pub sync_duration: Family<ScopeLabel, Histogram>,
    pub sync_errors: Family<KindLabel, Counter>,
    pub map_writes: Counter,
    pub services: Gauge,
    pub frontends: Gauge,
    pub backends: Gauge,
    pub rejected_objects: Gauge,
    /// Backends ejected by passive detection.
    pub ejections: Counter,
    /// Services serving every backend because all are down.
    pub fail_open: Gauge,
    fail_open_services: Family<ServiceNameLabel, Gauge>,
    flows_swept: Family<ReasonLabel, Counter>,
    pub health: Arc<crate::health::HealthMetrics>,
    ready: AtomicBool,
    /// When the reconciler last went round its loop (ms since `started`).
    heartbeat_ms: AtomicU64,
    started: std::time::Instant,
    /// Service id -> name and backend id -> address, for the datapath counters' labels.
    names: Mutex<Names>,
}

#[derive(Debug, Default, Clone)]
pub struct Names {
    pub services: BTreeMap<u32, String>,
    pub backends: BTreeMap<u32, String>,
}

fn latency_histogram() -> Histogram {
    // 50 us .. ~52 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 21))
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            programming_latency: latency_histogram(),
            sync_duration: Family::new_with_constructor(latency_histogram),
            sync_errors: Family::default(),
            map_writes: Counter::default(),
            services: Gauge::default(),
            frontends: Gauge::default(),
            backends: Gauge::default(),
            rejected_objects: Gauge::default(),
            ejections: Counter::default(),
            fail_open: Gauge::default(),
            fail_open_services: Family::default(),
            flows_swept: Family::default(),
            health: Arc::default(),
            ready: AtomicBool::new(false),
            heartbeat_ms: AtomicU64::new(0),
            started: std::time::Instant::now(),
            names: Mutex::new(Names::default()),
        }
    }

    pub fn error(&self, kind: ErrorKind) {
        self.sync_errors
            .get_or_create(&KindLabel { kind: kind.label() })
            .inc();
    }

    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.sync_errors
            .get_or_create(&KindLabel { kind: kind.label() })
            .get()
    }

    /// Counts connection-table entries removed for `reason`.
    pub fn flows_swept(&self, reason: &'static str, entries: u64) {
        self.flows_swept
            .get_or_create(&ReasonLabel { reason })
            .inc_by(entries);
    }

    /// The services in fail open (every backend down, all kept).
    pub fn set_fail_open(&self, services: &BTreeSet<crate::model::ServiceName>) {
        self.fail_open.set(services.len() as i64);
        self.fail_open_services.clear();
        for s in services {
            self.fail_open_services
                .get_or_create(&ServiceNameLabel {
                    service: s.to_string(),
                })
                .set(1);
        }
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The reconciler is alive (it calls this at least every second).
    pub fn beat(&self) {
        self.heartbeat_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Release);
    }

    /// Whether the reconciler went round its loop within `HEALTHY_WITHIN`.
    pub fn is_alive(&self) -> bool {
        let last = self.heartbeat_ms.load(Ordering::Acquire);
        (self.started.elapsed().as_millis() as u64).saturating_sub(last)
            <= HEALTHY_WITHIN.as_millis() as u64
    }

    pub fn set_names(&self, names: Names) {
        *self.names.lock().expect("not poisoned") = names;
    }

    fn names(&self) -> Names {
        self.names.lock().expect("not poisoned").clone()
    }

    /// A registry with these metrics, and the datapath counters of the instance pinned at
    /// `pin_dir` when given.
    pub fn registry(self: &Arc<Self>, pin_dir: Option<PathBuf>) -> Registry {
        let mut r = Registry::with_prefix("xlb");
        // `xlb_build_info{version, commit} 1`, the usual way to read what runs.
        let build: Family<Vec<(String, String)>, Gauge> = Family::default();
        build
            .get_or_create(&vec![
                ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
                ("commit".to_string(), env!("XLB_GIT_COMMIT").to_string()),
            ])
            .set(1);
        r.register("build_info", "The running build: version and commit", build);
        r.register(
            "programming_latency_seconds",
            "Time from a change seen by a source to the maps written",
            self.programming_latency.clone(),
        );
        r.register(
            "sync_duration_seconds",
            "Duration of a sync (translate, plan, apply)",
            self.sync_duration.clone(),
        );
        r.register(
            "sync_errors",
            "Sync errors by kind",
            self.sync_errors.clone(),
        );
        r.register(
            "map_writes",
            "Datapath map writes made by the agent",
            self.map_writes.clone(),
        );
        r.register(
            "services",
            "Datapath services programmed",
            self.services.clone(),
        );
        r.register(
            "frontends",
            "Frontends (VIP, port, protocol) programmed",
            self.frontends.clone(),
        );
        r.register("backends", "Backends programmed", self.backends.clone());
        r.register(
            "rejected_objects",
            "Objects currently rejected as invalid",
            self.rejected_objects.clone(),
        );
        r.register(
            "backend_ejections",
            "Backends ejected by passive health detection (failed new connections seen by the datapath)",
            self.ejections.clone(),
        );
        r.register(
            "services_fail_open",
            "Services whose backends are all down, so all of them are kept (fail open)",
            self.fail_open.clone(),
        );
        r.register(
            "service_fail_open",
            "1 for each service in fail open",
            self.fail_open_services.clone(),
        );
        r.register(
            "flows_swept",
            "Connection-table entries removed (UDP flows of removed backends, TCP past the drain timeout)",
            self.flows_swept.clone(),
        );
        r.register(
            "health_probe_up",
            "Active health check state per probe (method and address): 1 healthy, 0 unhealthy",
            self.health.probe_healthy.clone(),
        );
        r.register(
            "health_checks",
            "Active health checks run, by result",
            self.health.checks.clone(),
        );
        if let Some(dir) = pin_dir {
            r.register_collector(Box::new(DatapathCollector {
                dir,
                metrics: self.clone(),
            }));
        }
        r
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads the datapath counters from the pins at each scrape.
#[derive(Debug)]
struct DatapathCollector {
    dir: PathBuf,
    metrics: Arc<Metrics>,
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(&str, String)>, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family =
        encoder.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (labels, value) in rows {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for DatapathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let report = match crate::stats::read(&self.dir) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "datapath counters not readable");
                return Ok(());
            }
        };
        let names = self.metrics.names();
        let packets: Vec<_> = report
            .packets
            .iter()
            .map(|p| {
                (
                    vec![
                        ("verdict", p.verdict.to_string()),
                        ("reason", p.reason.to_string()),
                    ],
                    p.packets,
                )
            })
            .collect();
        counter(
            &mut encoder,
            "datapath_packets",
            "Packets by XDP verdict and reason",
            &packets,
        )?;
        let events: Vec<_> = report
            .events
            .iter()
            .map(|(e, n)| (vec![("event", e.to_string())], *n))
            .collect();
        counter(
            &mut encoder,
            "datapath_events",
            "Datapath events (flows, connection table)",
            &events,
        )?;
        let service = |id: u32| {
            names
                .services
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("id-{id}"))
        };
        let backend = |id: u32| {
            names
                .backends
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("id-{id}"))
        };
        let rows = |f: fn(&crate::stats::ServiceReport) -> u64| -> Vec<_> {
            report
                .services
                .iter()
                .map(|s| (vec![("service", service(s.id))], f(s)))
                .collect()
        };
        counter(
            &mut encoder,
            "service_packets",
            "Packets to a service's frontends",
            &rows(|s| s.packets),
        )?;
        counter(
            &mut encoder,
            "service_new_flows",
            "New flows of a service",
            &rows(|s| s.new_flows),
        )?;
        counter(
            &mut encoder,
            "service_no_backend",
            "Packets dropped: the service had no backend",
            &rows(|s| s.no_backend),
        )?;
        let rows = |f: fn(&crate::stats::BackendReport) -> u64| -> Vec<_> {
            report
                .backends
                .iter()
                .map(|b| (vec![("backend", backend(b.id))], f(b)))
                .collect()
        };
        counter(
            &mut encoder,
            "backend_new_flows",
            "New flows sent to a backend",
            &rows(|b| b.new_flows),
        )?;
        counter(
            &mut encoder,
            "backend_packets",
            "Packets sent to a backend",
            &rows(|b| b.packets),
        )?;
        counter(
            &mut encoder,
            "backend_reply_packets",
            "Reply packets from a backend",
            &rows(|b| b.reply_packets),
        )?;
        counter(
            &mut encoder,
            "backend_conn_refused",
            "New connections a backend refused (RST answering the SYN), seen by the datapath",
            &rows(|b| b.conn_refused),
        )?;
        counter(
            &mut encoder,
            "backend_unreachable",
            "ICMP destination unreachable a backend sent about its flows, seen by the datapath",
            &rows(|b| b.unreachable),
        )?;
        Ok(())
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
}

async fn metrics_page(State(s): State<HttpState>) -> impl IntoResponse {
    // Encoding reads the pinned maps (every table, with blocking syscalls): on a thread of
    // the blocking pool, so that a scrape never stalls the agent's event loop (signals,
    // netlink, the sources, health probes).
    let registry = s.registry.clone();
    let encoded = tokio::task::spawn_blocking(move || {
        let mut body = String::new();
        encode(&mut body, &registry).map(|()| body)
    })
    .await;
    match encoded
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
    {
        Ok(body) => (
            StatusCode::OK,
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain")],
            e,
        ),
    }
}

async fn healthz(State(s): State<HttpState>) -> impl IntoResponse {
    if s.metrics.is_alive() {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy: the reconciler is stuck\n",
        )
    }
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if s.metrics.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first sync has not completed\n",
        )
    }
}

/// Binds the HTTP endpoint (so that a bad address fails the start, not later).
/// Listens on `addr`, given as `flag`.
pub async fn bind(flag: &str, addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("{flag} {addr}: cannot listen: {e}"))
}

/// Serves `/healthz` and `/readyz` only (`--health-addr`) until the task is dropped.
pub async fn serve_health(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let state = HttpState {
        metrics,
        registry: Arc::new(Registry::default()),
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    axum::serve(listener, app).await?;
    Ok(())
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    registry: Registry,
) -> anyhow::Result<()> {
    let state = HttpState {
        metrics,
        registry: Arc::new(registry),
    };
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    axum::serve(listener, app).await?;
    Ok(())
}
