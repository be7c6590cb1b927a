//! The prober: runs every probe from the node, each on its own interval with jitter, at
//! most [`MAX_CONCURRENT`] at a time, and reports only transitions (hysteresis:
//! `unhealthy_threshold` consecutive failures to go down, `healthy_threshold` consecutive
//! successes to come back). Backends of several Services that ask for the same probe
//! share it.

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

use super::spec::{HealthCheck, Method};

/// Checks in flight at once, whatever the number of backends.
pub const MAX_CONCURRENT: usize = 64;

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
#[derive(Clone, Debug)]
pub struct Transition {
    pub probe: Probe,
    pub healthy: bool,
    /// The last failure (for the log), when going down.
    pub reason: Option<ProbeFailure>,
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
            match tokio::time::timeout(schedule.timeout, probe_once(&probe)).await {
                Ok(r) => r,
                Err(_) => Err(ProbeFailure::Timeout(schedule.timeout)),
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
        if let Some(t) = transition
            && !report(t)
        {
            return;
        }
        tokio::time::sleep(jittered(schedule.interval)).await;
    }
}

/// Why one check of a probe failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProbeFailure {
    #[error("connect: {0}")]
    Connect(#[source] Arc<std::io::Error>),
    #[error("send: {0}")]
    Send(#[source] Arc<std::io::Error>),
    #[error("read: {0}")]
    Read(#[source] Arc<std::io::Error>),
    #[error("not an HTTP response: {line:?}")]
    NotHttp { line: String },
    #[error("status {0}")]
    Status(u16),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Checks a probe once: connects, and for HTTP sends the request and reads the status
/// line. `Ok` when the backend passes.
async fn probe_once(probe: &Probe) -> Result<(), ProbeFailure> {
    let io = |f: fn(Arc<std::io::Error>) -> ProbeFailure| move |e| f(Arc::new(e));
    let mut stream = tokio::net::TcpStream::connect(probe.addr)
        .await
        .map_err(io(ProbeFailure::Connect))?;
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
        .map_err(io(ProbeFailure::Send))?;
    // The status line is all that matters: read until its end.
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(io(ProbeFailure::Read))?;
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
        .ok_or_else(|| ProbeFailure::NotHttp {
            line: line.lines().next().unwrap_or("").to_string(),
        })?;
    if (*min..=*max).contains(&status) {
        Ok(())
    } else {
        Err(ProbeFailure::Status(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(probe_once(&ok).await.is_ok());
        let bad = Probe {
            addr: http_server(503),
            method,
        };
        assert!(matches!(
            probe_once(&bad).await,
            Err(ProbeFailure::Status(503))
        ));
        // Not HTTP at all.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            use std::io::Write as _;
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.write_all(b"SSH-2.0-x\r\n");
        });
        let e = probe_once(&Probe {
            addr,
            method: Method::Http {
                path: "/ready".into(),
                min: 200,
                max: 299,
            },
        })
        .await
        .unwrap_err();
        assert!(
            matches!(&e, ProbeFailure::NotHttp { line } if line.starts_with("SSH-2.0")),
            "{e}"
        );
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
            !down.0.healthy && matches!(down.0.reason, Some(ProbeFailure::Connect(_))),
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
