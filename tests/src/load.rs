//! Continuous load from the client namespace, for tests that change things underneath
//! running traffic (a backend killed, the agent killed or upgraded): a loop of new TCP
//! connections (one request each), long-lived TCP connections asking at a steady pace,
//! and a UDP request loop. Every request's outcome is recorded with its time, so a test
//! can say how many failed, which backend served what, and when new connections stopped
//! reaching a backend.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::client::{self, TcpSession};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A new TCP connection with one request.
    NewConnection,
    /// A request on a long-lived TCP connection (index of the connection).
    LongLived(usize),
    /// A UDP request from a new socket.
    Udp,
}

#[derive(Clone, Debug)]
pub struct Record {
    /// When the request started and when it ended.
    pub started: Instant,
    pub at: Instant,
    pub kind: Kind,
    /// The backend that answered, or the error.
    pub result: Result<String, String>,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub tcp: Option<SocketAddr>,
    /// Long-lived connections to `tcp`, each asking every `long_lived_every`.
    pub long_lived: usize,
    pub long_lived_every: Duration,
    pub udp: Option<SocketAddr>,
    /// Pause between two requests of a loop (keeps two cores from saturating).
    pub pace: Duration,
    /// Threads opening new TCP connections.
    pub tcp_threads: usize,
}

impl LoadSpec {
    pub fn tcp(vip: SocketAddr) -> Self {
        Self {
            tcp: Some(vip),
            long_lived: 0,
            long_lived_every: Duration::from_millis(20),
            udp: None,
            pace: Duration::from_millis(2),
            tcp_threads: 1,
        }
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    records: Arc<Mutex<Vec<Record>>>,
    threads: Vec<JoinHandle<()>>,
    /// The backend each long-lived connection is on.
    pub long_lived_backends: Vec<String>,
}

fn in_netns(path: &str, name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            use std::os::fd::AsRawFd as _;
            // SAFETY: setns on a valid namespace fd; it affects only this thread.
            assert_eq!(
                unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                0,
                "setns"
            );
            f()
        })
        .expect("spawn")
}

impl Load {
    /// Starts the load in the namespace at `netns_path`. Long-lived connections are
    /// established (and asked once) before this returns.
    pub fn start(netns_path: &str, spec: LoadSpec) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let records: Arc<Mutex<Vec<Record>>> = Arc::default();
        let mut threads = Vec::new();
        let mut long_lived_backends = Vec::new();
        let push = |records: &Arc<Mutex<Vec<Record>>>, started, kind, result| {
            records.lock().unwrap().push(Record {
                started,
                at: Instant::now(),
                kind,
                result,
            });
        };
        if let Some(vip) = spec.tcp {
            if spec.long_lived > 0 {
                let (tx, rx) = std::sync::mpsc::channel();
                let (stop, records, n, every) = (
                    stop.clone(),
                    records.clone(),
                    spec.long_lived,
                    spec.long_lived_every,
                );
                threads.push(in_netns(netns_path, "load-long", move || {
                    let mut sessions: Vec<Option<TcpSession>> = Vec::new();
                    let mut names = Vec::new();
                    for _ in 0..n {
                        let mut s = TcpSession::connect(vip).expect("long-lived connection");
                        names.push(s.ask().expect("first request"));
                        sessions.push(Some(s));
                    }
                    tx.send(names).unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        for (i, slot) in sessions.iter_mut().enumerate() {
                            let Some(s) = slot else { continue };
                            let started = Instant::now();
                            let result = s.ask().map_err(|e| e.to_string());
                            if result.is_err() {
                                // A broken connection stays broken: count it once.
                                *slot = None;
                            }
                            push(&records, started, Kind::LongLived(i), result);
                        }
                        std::thread::sleep(every);
                    }
                }));
                long_lived_backends = rx
                    .recv_timeout(Duration::from_secs(10))
                    .expect("long-lived connections");
            }
            for _ in 0..spec.tcp_threads.max(1) {
                let (stop, records, pace) = (stop.clone(), records.clone(), spec.pace);
                threads.push(in_netns(netns_path, "load-tcp", move || {
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let result = client::tcp_ask(vip).map_err(|e| e.to_string());
                        push(&records, started, Kind::NewConnection, result);
                        std::thread::sleep(pace);
                    }
                }));
            }
        }
        if let Some(vip) = spec.udp {
            let (stop, records, pace) = (stop.clone(), records.clone(), spec.pace);
            threads.push(in_netns(netns_path, "load-udp", move || {
                let mut id = 0;
                while !stop.load(Ordering::Relaxed) {
                    id += 1;
                    let started = Instant::now();
                    let result = client::udp_socket(vip)
                        .and_then(|s| client::udp_ask(&s, vip, id))
                        .map(|(name, _)| name)
                        .map_err(|e| e.to_string());
                    push(&records, started, Kind::Udp, result);
                    std::thread::sleep(pace);
                }
            }));
        }
        Self {
            stop,
            records,
            threads,
            long_lived_backends,
        }
    }

    /// The records so far.
    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    /// Waits until at least `n` more requests of `kind` completed (with a deadline).
    pub fn wait_for_more(&self, kind: Kind, n: usize, timeout: Duration) {
        let count = |load: &Self| {
            load.records
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.kind == kind)
                .count()
        };
        let target = count(self) + n;
        crate::wait::until(
            "more requests of the load",
            timeout,
            Duration::from_millis(5),
            || (count(self) >= target).then_some(()),
        )
        .unwrap();
    }

    /// Stops every loop and returns all records.
    pub fn stop(mut self) -> Vec<Record> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.records()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The failed records, as text (for assertion messages).
pub fn failures(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| {
            r.result
                .as_ref()
                .err()
                .map(|e| format!("{:?}: {e}", r.kind))
        })
        .collect()
}

/// The last time a request of `kind` was answered by `backend`.
pub fn last_served_by(records: &[Record], kind: Kind, backend: &str) -> Option<Instant> {
    records
        .iter()
        .filter(|r| r.kind == kind && r.result.as_ref().is_ok_and(|n| n == backend))
        .map(|r| r.at)
        .max()
}
