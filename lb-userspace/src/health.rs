//! Active health checks of backends.
//!
//! Which check a Service's backends get comes from its annotations (parsed by the
//! translation, see [`HealthAnnotations`]), else from the agent's defaults (flags). A
//! check is a *probe* of one address and port by one method; backends of several
//! Services that ask for the same probe share it. The [`Checker`] runs every probe from
//! the node, each on its own interval with jitter, at most [`MAX_CONCURRENT`] at a time,
//! and reports only transitions (hysteresis: `unhealthy_threshold` consecutive failures
//! to go down, `healthy_threshold` consecutive successes to come back).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::{Semaphore, mpsc, watch},
    task::JoinHandle,
};

/// Annotation prefix of the health-check settings of a Service.
pub const ANNOTATION_PREFIX: &str = "xlb.dev/health-check";
/// Checks in flight at once, whatever the number of backends.
pub const MAX_CONCURRENT: usize = 64;

/// How to check a backend.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    /// A TCP connect.
    Tcp,
    /// `GET path` over HTTP/1.1; healthy when the status is within `min..=max`.
    Http { path: String, min: u16, max: u16 },
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp => write!(f, "tcp"),
            Self::Http { path, min, max } => write!(f, "http {path} {min}-{max}"),
        }
    }
}

/// A Service's health-check settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub method: Method,
    /// The port to check; `None`: each backend's target port.
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

/// What a Service's annotations say about health checks (see the README): `None` fields
/// take the agent's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthAnnotations {
    /// `Some(None)`: `none` (no check); `Some(Some(m))`: this method.
    pub method: Option<Option<MethodKind>>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub status: Option<(u16, u16)>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodKind {
    Tcp,
    Http,
}

/// The agent-wide defaults (flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthDefaults {
    /// `None`: no check unless a Service asks for one.
    pub method: Option<MethodKind>,
    pub path: String,
    pub status: (u16, u16),
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl Default for HealthDefaults {
    fn default() -> Self {
        Self {
            method: None,
            path: "/".into(),
            status: (200, 399),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        }
    }
}

/// Parses a duration such as `500ms`, `2s` or `1m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 2s or 1m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(60 * n),
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s or m)")),
    };
    if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
        return Err(format!("{text:?} is out of range (10ms..1h)"));
    }
    Ok(d)
}

fn parse_status(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{text:?} is not a status or a status range like 200-399");
    let (a, b) = text
        .trim()
        .split_once('-')
        .unwrap_or((text.trim(), text.trim()));
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if !(100..=599).contains(&a) || !(100..=599).contains(&b) || a > b {
        return Err(bad());
    }
    Ok((a, b))
}

impl HealthAnnotations {
    /// Reads the `xlb.dev/health-check*` annotations; an invalid one is an error naming it.
    pub fn parse(annotations: Option<&BTreeMap<String, String>>) -> Result<Self, String> {
        let mut out = Self::default();
        let Some(all) = annotations else {
            return Ok(out);
        };
        for (key, value) in all.range(ANNOTATION_PREFIX.to_string()..) {
            let Some(rest) = key.strip_prefix(ANNOTATION_PREFIX) else {
                break;
            };
            let err = |e: String| format!("annotation {key}: {e}");
            let threshold = |v: &str| {
                v.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| err(format!("{v:?} is not an integer 1..100")))
            };
            match rest {
                "" => {
                    out.method = Some(match value.trim() {
                        "tcp" => Some(MethodKind::Tcp),
                        "http" => Some(MethodKind::Http),
                        "none" => None,
                        other => return Err(err(format!("{other:?} is not tcp, http or none"))),
                    })
                }
                "-port" => {
                    out.port = Some(
                        value
                            .trim()
                            .parse::<u16>()
                            .ok()
                            .filter(|p| *p != 0)
                            .ok_or_else(|| err(format!("{value:?} is not a port")))?,
                    )
                }
                "-path" => {
                    if !value.starts_with('/') || value.contains(char::is_whitespace) {
                        return Err(err(format!("{value:?} is not an absolute path")));
                    }
                    out.path = Some(value.clone());
                }
                "-status" => out.status = Some(parse_status(value).map_err(err)?),
                "-interval" => out.interval = Some(parse_duration(value).map_err(err)?),
                "-timeout" => out.timeout = Some(parse_duration(value).map_err(err)?),
                "-healthy-threshold" => out.healthy_threshold = Some(threshold(value)?),
                "-unhealthy-threshold" => out.unhealthy_threshold = Some(threshold(value)?),
                _ => return Err(err("unknown health-check annotation".into())),
            }
        }
        Ok(out)
    }

    /// The check of a Service port of protocol `udp` or not, with the defaults applied.
    /// A UDP port is checked only when a check port is given (TCP or HTTP on that port):
    /// its own port does not accept connections.
    pub fn resolve(&self, defaults: &HealthDefaults, udp: bool) -> Option<HealthCheck> {
        let kind = match self.method {
            Some(m) => m?,
            None => defaults.method?,
        };
        if udp && self.port.is_none() {
            return None;
        }
        let (min, max) = self.status.unwrap_or(defaults.status);
        let method = match kind {
            MethodKind::Tcp => Method::Tcp,
            MethodKind::Http => Method::Http {
                path: self.path.clone().unwrap_or_else(|| defaults.path.clone()),
                min,
                max,
            },
        };
        let interval = self.interval.unwrap_or(defaults.interval);
        Some(HealthCheck {
            method,
            port: self.port,
            interval,
            timeout: self.timeout.unwrap_or(defaults.timeout).min(interval),
            healthy_threshold: self.healthy_threshold.unwrap_or(defaults.healthy_threshold),
            unhealthy_threshold: self
                .unhealthy_threshold
                .unwrap_or(defaults.unhealthy_threshold),
        })
    }
}

/// One probe: what is checked, and how.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Probe {
    pub addr: SocketAddr,
    pub method: Method,
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.addr)
    }
}

/// How often and how strictly a probe runs (the most demanding of the Services sharing
/// it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl Schedule {
    pub fn of(check: &HealthCheck) -> Self {
        Self {
            interval: check.interval,
            timeout: check.timeout,
            healthy_threshold: check.healthy_threshold,
            unhealthy_threshold: check.unhealthy_threshold,
        }
    }

    /// The stricter of two schedules.
    pub fn merge(self, o: Self) -> Self {
        Self {
            interval: self.interval.min(o.interval),
            timeout: self.timeout.min(o.timeout),
            healthy_threshold: self.healthy_threshold.max(o.healthy_threshold),
            unhealthy_threshold: self.unhealthy_threshold.min(o.unhealthy_threshold),
        }
    }
}

/// The probe of a backend at `ip:target_port` under `check`.
pub fn probe_of(check: &HealthCheck, ip: IpAddr, target_port: u16) -> Probe {
    Probe {
        addr: SocketAddr::new(ip, check.port.unwrap_or(target_port)),
        method: check.method.clone(),
    }
}

/// A probe's state changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub probe: Probe,
    pub healthy: bool,
    /// The last failure's reason (for the log), when going down.
    pub reason: Option<String>,
}

/// Commands to the checker.
#[derive(Debug)]
pub enum Command {
    /// Treat the probe as down now (passive detection saw the backend fail): it comes back
    /// only after `healthy_threshold` successes.
    ForceDown(Probe),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ProbeLabel {
    pub probe: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// The checker's metrics.
#[derive(Debug, Default)]
pub struct HealthMetrics {
    /// 1 healthy, 0 unhealthy, per probe.
    pub probe_healthy: Family<ProbeLabel, Gauge>,
    pub checks: Family<ResultLabel, Counter>,
}

struct ProbeState {
    healthy: bool,
    successes: u32,
    failures: u32,
}

/// Runs the probes it is given (through a watch channel) and reports transitions.
pub struct Checker {
    tasks: BTreeMap<Probe, (Schedule, JoinHandle<()>)>,
    states: Arc<std::sync::Mutex<BTreeMap<Probe, ProbeState>>>,
    permits: Arc<Semaphore>,
    report: Reporter,
    metrics: Arc<HealthMetrics>,
}

/// Where transitions go; returns false once nobody listens.
pub type Reporter = Arc<dyn Fn(Transition) -> bool + Send + Sync>;

impl Checker {
    pub fn new(report: Reporter, metrics: Arc<HealthMetrics>) -> Self {
        Self {
            tasks: BTreeMap::new(),
            states: Arc::default(),
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT)),
            report,
            metrics,
        }
    }

    /// Runs until `targets` closes.
    pub async fn run(
        mut self,
        mut targets: watch::Receiver<BTreeMap<Probe, Schedule>>,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) {
        loop {
            let wanted = targets.borrow_and_update().clone();
            self.reconcile(&wanted);
            tokio::select! {
                changed = targets.changed() => if changed.is_err() { break },
                Some(cmd) = commands.recv() => self.command(cmd),
            }
        }
        for (_, (_, task)) in std::mem::take(&mut self.tasks) {
            task.abort();
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::ForceDown(probe) => {
                let mut states = self.states.lock().unwrap();
                if let Some(s) = states.get_mut(&probe) {
                    s.healthy = false;
                    s.successes = 0;
                    self.metrics
                        .probe_healthy
                        .get_or_create(&ProbeLabel {
                            probe: probe.to_string(),
                        })
                        .set(0);
                }
            }
        }
    }

    fn reconcile(&mut self, wanted: &BTreeMap<Probe, Schedule>) {
        let gone: Vec<Probe> = self
            .tasks
            .keys()
            .filter(|p| !wanted.contains_key(*p))
            .cloned()
            .collect();
        for p in gone {
            if let Some((_, task)) = self.tasks.remove(&p) {
                task.abort();
            }
            self.states.lock().unwrap().remove(&p);
            self.metrics.probe_healthy.remove(&ProbeLabel {
                probe: p.to_string(),
            });
        }
        for (probe, schedule) in wanted {
            if self.tasks.get(probe).is_some_and(|(s, _)| s == schedule) {
                continue;
            }
            if let Some((_, old)) = self.tasks.remove(probe) {
                old.abort();
            }
            self.states
                .lock()
                .unwrap()
                .entry(probe.clone())
                .or_insert(ProbeState {
                    healthy: true,
                    successes: 0,
                    failures: 0,
                });
            let task = tokio::spawn(run_probe(
                probe.clone(),
                *schedule,
                self.states.clone(),
                self.permits.clone(),
                self.report.clone(),
                self.metrics.clone(),
            ));
            self.tasks.insert(probe.clone(), (*schedule, task));
        }
    }
}

/// `d` +- 10%, at random.
fn jittered(d: Duration) -> Duration {
    let tenth = d / 10;
    d - tenth + tenth.mul_f64(2.0 * fastrand::f64())
}

async fn run_probe(
    probe: Probe,
    schedule: Schedule,
    states: Arc<std::sync::Mutex<BTreeMap<Probe, ProbeState>>>,
    permits: Arc<Semaphore>,
    report: Reporter,
    metrics: Arc<HealthMetrics>,
) {
    let label = ProbeLabel {
        probe: probe.to_string(),
    };
    // Spread the first checks of many probes over an interval.
    tokio::time::sleep(schedule.interval.mul_f64(fastrand::f64())).await;
    loop {
        let result = {
            let _permit = permits.acquire().await.expect("never closed");
            match tokio::time::timeout(schedule.timeout, check(&probe)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {:?}", schedule.timeout)),
            }
        };
        metrics
            .checks
            .get_or_create(&ResultLabel {
                result: if result.is_ok() { "ok" } else { "fail" },
            })
            .inc();
        let transition = {
            let mut states = states.lock().unwrap();
            let Some(s) = states.get_mut(&probe) else {
                return;
            };
            match &result {
                Ok(()) => {
                    s.successes += 1;
                    s.failures = 0;
                    (!s.healthy && s.successes >= schedule.healthy_threshold).then(|| {
                        s.healthy = true;
                        Transition {
                            probe: probe.clone(),
                            healthy: true,
                            reason: None,
                        }
                    })
                }
                Err(e) => {
                    s.failures += 1;
                    s.successes = 0;
                    (s.healthy && s.failures >= schedule.unhealthy_threshold).then(|| {
                        s.healthy = false;
                        Transition {
                            probe: probe.clone(),
                            healthy: false,
                            reason: Some(e.clone()),
                        }
                    })
                }
            }
        };
        let healthy = states
            .lock()
            .unwrap()
            .get(&probe)
            .map(|s| s.healthy)
            .unwrap_or(true);
        metrics
            .probe_healthy
            .get_or_create(&label)
            .set(i64::from(healthy));
        if let Some(t) = transition {
            if !report(t) {
                return;
            }
        }
        tokio::time::sleep(jittered(schedule.interval)).await;
    }
}

/// One check.
async fn check(probe: &Probe) -> Result<(), String> {
    let mut stream = tokio::net::TcpStream::connect(probe.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let Method::Http { path, min, max } = &probe.method else {
        return Ok(());
    };
    let host = match probe.addr.ip() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: xlb-health\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    // The status line is all that matters: read until its end.
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let status: u16 = line
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP response: {:?}",
                line.lines().next().unwrap_or("")
            )
        })?;
    if (*min..=*max).contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

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
    down: std::collections::BTreeSet<Probe>,
    /// Passively ejected backends, until when.
    ejected: BTreeMap<BackendKey, Instant>,
    recent_failures: BTreeMap<BackendKey, std::collections::VecDeque<Instant>>,
    /// Per service: its check and the probe of each backend.
    checks: BTreeMap<ServiceName, (HealthCheck, Vec<(BackendKey, Probe)>)>,
    fail_open: std::collections::BTreeSet<ServiceName>,
    targets_changed: bool,
}

use std::time::Instant;

use crate::{
    model::{ServiceName, ServiceSpec, object_range},
    sync::BackendKey,
};

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
    pub fn fail_open(&self) -> &std::collections::BTreeSet<ServiceName> {
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
    ) -> std::collections::BTreeSet<(String, String)> {
        self.checks
            .iter()
            .filter(|(_, (_, probes))| probes.iter().any(|(b, p)| pred(b, p)))
            .map(|(n, _)| (n.namespace.clone(), n.name.clone()))
            .collect()
    }

    /// An active probe changed state; returns the objects to re-filter. A probe that comes
    /// back also ends the passive ejections of the backends it checks.
    pub fn transition(&mut self, t: &Transition) -> std::collections::BTreeSet<(String, String)> {
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
    ) -> std::collections::BTreeSet<(String, String)> {
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
        let checked: std::collections::BTreeSet<BackendKey> = self
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn annotations_override_defaults() {
        let a = HealthAnnotations::parse(Some(&ann(&[
            ("xlb.dev/health-check", "http"),
            ("xlb.dev/health-check-path", "/healthz"),
            ("xlb.dev/health-check-status", "200-204"),
            ("xlb.dev/health-check-interval", "500ms"),
            ("xlb.dev/health-check-unhealthy-threshold", "3"),
            ("other", "x"),
        ])))
        .unwrap();
        let c = a.resolve(&HealthDefaults::default(), false).unwrap();
        assert_eq!(
            c.method,
            Method::Http {
                path: "/healthz".into(),
                min: 200,
                max: 204
            }
        );
        assert_eq!(c.interval, Duration::from_millis(500));
        assert_eq!(
            c.timeout,
            Duration::from_millis(500),
            "the timeout never exceeds the interval"
        );
        assert_eq!((c.healthy_threshold, c.unhealthy_threshold), (2, 3));
        // The default is no check; "none" turns a default off.
        assert_eq!(
            HealthAnnotations::default().resolve(&HealthDefaults::default(), false),
            None
        );
        let on = HealthDefaults {
            method: Some(MethodKind::Tcp),
            ..Default::default()
        };
        let off =
            HealthAnnotations::parse(Some(&ann(&[("xlb.dev/health-check", "none")]))).unwrap();
        assert_eq!(off.resolve(&on, false), None);
        assert!(HealthAnnotations::default().resolve(&on, false).is_some());
        // UDP ports only with a check port.
        assert_eq!(HealthAnnotations::default().resolve(&on, true), None);
        let port =
            HealthAnnotations::parse(Some(&ann(&[("xlb.dev/health-check-port", "8080")]))).unwrap();
        assert_eq!(port.resolve(&on, true).unwrap().port, Some(8080));
    }

    #[test]
    fn invalid_annotations_say_which_and_why() {
        for (k, v, want) in [
            ("xlb.dev/health-check", "icmp", "not tcp, http or none"),
            ("xlb.dev/health-check-port", "70000", "not a port"),
            ("xlb.dev/health-check-interval", "fast", "not a duration"),
            ("xlb.dev/health-check-interval", "90m", "out of range"),
            ("xlb.dev/health-check-status", "500-200", "status range"),
            ("xlb.dev/health-check-path", "healthz", "absolute path"),
            ("xlb.dev/health-check-healthy-threshold", "0", "1..100"),
            ("xlb.dev/health-check-colour", "red", "unknown"),
        ] {
            let e = HealthAnnotations::parse(Some(&ann(&[(k, v)]))).unwrap_err();
            assert!(e.contains(k) && e.contains(want), "{k}={v}: {e}");
        }
    }

    #[test]
    fn schedules_merge_to_the_strictest() {
        let a = Schedule {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        };
        let b = Schedule {
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(500),
            healthy_threshold: 3,
            unhealthy_threshold: 2,
        };
        let m = a.merge(b);
        assert_eq!(
            (
                m.interval,
                m.timeout,
                m.healthy_threshold,
                m.unhealthy_threshold
            ),
            (b.interval, b.timeout, 3, 2)
        );
    }

    /// A one-shot HTTP server answering every request with `status`.
    fn http_server(status: u16) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                use std::io::{BufRead as _, Write as _};
                let mut stream = stream.unwrap();
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                assert!(line.starts_with("GET /ready HTTP/1.1"), "{line}");
                let _ = write!(stream, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_checks_look_at_the_status() {
        let method = Method::Http {
            path: "/ready".into(),
            min: 200,
            max: 299,
        };
        let ok = Probe {
            addr: http_server(204),
            method: method.clone(),
        };
        assert_eq!(check(&ok).await, Ok(()));
        let bad = Probe {
            addr: http_server(503),
            method,
        };
        assert_eq!(check(&bad).await, Err("status 503".to_string()));
        // Not HTTP at all.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            use std::io::Write as _;
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.write_all(b"SSH-2.0-x\r\n");
        });
        let e = check(&Probe {
            addr,
            method: Method::Http {
                path: "/ready".into(),
                min: 200,
                max: 299,
            },
        })
        .await
        .unwrap_err();
        assert!(e.contains("not an HTTP response"), "{e}");
    }

    #[tokio::test]
    async fn probes_go_down_and_up_with_hysteresis() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let metrics = Arc::new(HealthMetrics::default());
        let (targets_tx, targets_rx) = watch::channel(BTreeMap::new());
        let (_cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let report: Reporter = Arc::new(move |t| tx.send(t).is_ok());
        tokio::spawn(Checker::new(report, metrics.clone()).run(targets_rx, cmd_rx));
        let probe = Probe {
            addr,
            method: Method::Tcp,
        };
        let schedule = Schedule {
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(100),
            healthy_threshold: 3,
            unhealthy_threshold: 2,
        };
        targets_tx
            .send(BTreeMap::from([(probe.clone(), schedule)]))
            .unwrap();
        let next = |rx: &std::sync::mpsc::Receiver<Transition>| {
            rx.recv_timeout(Duration::from_secs(5))
                .expect("a transition")
        };
        // Listening: healthy from the start, no transition reported.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(rx.try_recv().is_err());
        drop(listener);
        let down = tokio::task::spawn_blocking(move || (next(&rx), rx))
            .await
            .unwrap();
        assert!(
            !down.0.healthy && down.0.reason.as_deref().unwrap_or("").contains("connect"),
            "{down:?}"
        );
        let rx = down.1;
        let _listener = std::net::TcpListener::bind(addr).unwrap();
        let up = tokio::task::spawn_blocking(move || next(&rx))
            .await
            .unwrap();
        assert!(up.healthy);
        assert!(
            metrics
                .checks
                .get_or_create(&ResultLabel { result: "fail" })
                .get()
                >= 2
        );
    }
}
