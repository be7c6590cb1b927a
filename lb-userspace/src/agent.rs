//! The agent: loads and attaches the datapath, then keeps its maps in sync with a source
//! until it is told to stop.
//!
//! Threads: the async runtime runs the source (manifest watcher or Kubernetes watchers),
//! the HTTP endpoint and signal handling; one dedicated thread, the reconciler, owns the
//! store, the desired and applied state and the maps, and is the only writer of the maps.
//! Sources hand it events through a channel; it drains whatever has arrived, then syncs
//! once for the lot.

use std::{
    path::Path,
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::StreamExt as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::AgentArgs,
    datapath::{self, Attachment, Datapath, Hook, LoadOptions, RealMaps, Signals},
    devices::{
        self,
        follow::{FollowConfig, Follower},
    },
    metrics::{self, Metrics},
    reconcile::Reconciler,
    sources::{self, manifests::ManifestSource},
    store::{Change, Store},
    sync::{Applied, ApplyConfig, PlanConfig},
    translate::NodeInfo,
};

/// What the reconciler thread is sent.
#[derive(Debug)]
pub enum Msg {
    Change(Change),
    /// An active health probe changed state.
    Health(crate::health::Transition),
    /// The datapath saw a new connection to this backend (id) fail.
    ConnectionFailed(u32),
    Stop,
}

/// How long device changes must be quiet before the devices are listed again.
const DEVICE_DEBOUNCE: Duration = Duration::from_millis(100);

/// How often the reconciler does its periodic work (reaping retired backends, metrics
/// names, heartbeat).
const TICK: Duration = Duration::from_millis(500);

/// This host's name (the default node name with --manifests).
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec())
        .ok()
        .filter(|s| !s.is_empty())
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    // Everything that can be wrong with the command line fails here, before the datapath
    // is touched.
    let node_name = match (&args.node_name, args.kubernetes) {
        (Some(name), _) => name.clone(),
        (None, true) => {
            anyhow::bail!("--kubernetes needs this node's name: give --node-name or set NODE_NAME")
        }
        (None, false) => {
            hostname().context("no --node-name given and the host name is unreadable")?
        }
    };
    if let Some(dir) = &args.manifests
        && !dir.is_dir()
    {
        anyhow::bail!("--manifests {}: not a directory", dir.display());
    }
    let listener = metrics::bind("--metrics-addr", args.metrics_addr).await?;
    let health_listener = match args.health_addr {
        Some(addr) => Some(metrics::bind("--health-addr", addr).await?),
        None => None,
    };
    let client = if args.kubernetes {
        Some(sources::kube::client(args.kubeconfig.as_deref(), args.api_server.as_ref()).await?)
    } else {
        None
    };

    let opts = LoadOptions {
        pin_dir: args.bpffs.clone(),
        config: args.datapath.config(),
        conntrack_entries: args.datapath.conntrack_entries,
        backends: args.datapath.max_backends,
    };
    let mut dp = Datapath::load(&opts).context("loading the datapath")?;
    let result = serve(
        &args,
        &mut dp,
        node_name,
        (listener, health_listener),
        client,
    )
    .await;
    if args.cleanup_on_exit {
        dp.detach_all();
        drop(dp);
        datapath::remove_pins(&args.bpffs)?;
        tracing::info!("detached, pins removed, stopped");
    } else {
        let hooks: Vec<String> = dp.pinned_hooks().iter().map(ToString::to_string).collect();
        drop(dp);
        tracing::info!(
            dir = %args.bpffs.display(),
            ?hooks,
            "stopped; the datapath keeps serving from its pinned links and maps until the next agent takes over (`xlb cleanup` removes it)"
        );
    }
    result
}

async fn serve(
    args: &AgentArgs,
    dp: &mut Datapath,
    node_name: String,
    (listener, health_listener): (tokio::net::TcpListener, Option<tokio::net::TcpListener>),
    client: Option<kube::Client>,
) -> anyhow::Result<()> {
    let mut follower = Follower::new(
        FollowConfig {
            pinned: (!args.interfaces.is_empty()).then(|| args.interfaces.clone()),
            mode: args.xdp_mode.into(),
            pods: !args.no_pod_interfaces,
        },
        dp.tx_ports()?,
    )?;
    let mut device_changes = devices::netlink::changes()?;
    follower.sync(dp).await?;
    attach_sockets(args, dp)?;
    let maps = dp.maps()?;
    let signals = dp.signals()?;
    let applied = if dp.adopted() {
        let (applied, found) = Applied::adopt(
            maps.programmed()?,
            lb_common::maps::MAX_SERVICES,
            dp.backend_capacity()?,
        );
        tracing::info!(
            dir = %args.bpffs.display(),
            frontends = found.frontends,
            tables = found.tables,
            backends = found.backends,
            broken_tables = found.broken_tables,
            "adopted the maps an earlier agent pinned (connection table included); the first sync keeps what is right and prunes the rest"
        );
        applied
    } else {
        Applied::new(lb_common::maps::MAX_SERVICES, dp.backend_capacity()?)
    };
    let metrics = Arc::new(Metrics::new());
    metrics.beat();
    let registry = metrics.registry(Some(args.bpffs.clone()));
    let addr = listener.local_addr()?;
    let http = tokio::spawn(metrics::serve(listener, metrics.clone(), registry));
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    let health_http = match health_listener {
        Some(l) => {
            tracing::info!(addr = %l.local_addr()?, "serving /healthz, /readyz");
            Some(tokio::spawn(metrics::serve_health(l, metrics.clone())))
        }
        None => None,
    };

    let fallback = NodeInfo {
        name: Some(node_name.clone()),
        addresses: args.node_addresses.clone(),
        zone: args.node_zone.clone(),
        proxy_name: args.service_proxy_name.clone(),
    };
    let nodeport = crate::translate::NodePortAddresses::parse(&args.nodeport_addresses)
        .map_err(|e| anyhow::anyhow!("--nodeport-addresses: {e}"))?;
    // Problems of objects become Events on them (the manifests source has no API server:
    // the log and the metric only).
    let (notices, events) = match &client {
        Some(c) => {
            let (tx, rx) = tokio::sync::mpsc::channel(sources::events::QUEUE);
            let task = tokio::spawn(sources::events::run(c.clone(), node_name.clone(), rx));
            (Some(tx), Some(task))
        }
        None => (None, None),
    };
    let health_view = args.health.view()?;
    let (targets_tx, targets_rx) = tokio::sync::watch::channel(Default::default());
    // The node's addresses, as the reconciler learns them (they decide node devices).
    let (node_tx, mut node_addresses) = tokio::sync::watch::channel(Vec::new());
    let (commands_tx, commands_rx) = tokio::sync::mpsc::unbounded_channel();
    let reconciler = Reconciler::new(
        Store::new(Some(node_name.clone())),
        fallback,
        applied,
        PlanConfig {
            max_table_size: args.datapath.max_table_size,
            ..PlanConfig::default()
        },
        ApplyConfig::default(),
        metrics.clone(),
    )
    .with_nodeport_addresses(nodeport)
    .with_health(
        health_view,
        Some(crate::reconcile::HealthLinks {
            targets: targets_tx,
            commands: commands_tx,
        }),
        args.health.drain_timeout,
    )
    .with_node_watch(node_tx);
    let reconciler = match notices {
        Some(tx) => reconciler.with_notices(tx),
        None => reconciler,
    };
    let (checks_tx, checks_rx) = tokio::sync::watch::channel(Default::default());
    let reconciler = reconciler.with_health_checks(checks_tx);
    let service_health = tokio::spawn(crate::service_health::run(checks_rx));
    let (tx, rx) = mpsc::channel::<Msg>();
    let report_tx = tx.clone();
    let reporter: crate::health::Reporter =
        Arc::new(move |t| report_tx.send(Msg::Health(t)).is_ok());
    let signal_task = tokio::spawn(read_signals(signals, tx.clone()));
    let checker = tokio::spawn(
        crate::health::Checker::new(reporter, metrics.health.clone()).run(targets_rx, commands_rx),
    );
    let worker = std::thread::Builder::new()
        .name("xlb-reconcile".into())
        .spawn(move || reconcile_loop(reconciler, maps, rx))
        .context("starting the reconciler thread")?;

    let sink_tx = tx.clone();
    let sink: sources::Sink = Box::new(move |change| sink_tx.send(Msg::Change(change)).is_ok());
    let source = match (&args.manifests, client) {
        (Some(dir), _) => tokio::spawn(sources::manifests::run(dir.clone(), sink, metrics.clone())),
        (None, Some(client)) => tokio::spawn(sources::kube::run(
            client,
            node_name,
            args.service_proxy_name.clone(),
            sink,
            metrics.clone(),
        )),
        (None, None) => unreachable!("clap requires a source"),
    };

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    // Device changes come in bursts (a pod's veth: created, renamed, moved, up):
    // the devices are listed again once a burst is over.
    let mut resync: Option<tokio::time::Instant> = None;
    let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
    let result = loop {
        tokio::select! {
            _ = term.recv() => break Ok(()),
            _ = int.recv() => break Ok(()),
            Some(()) = device_changes.next() => {
                resync = Some(tokio::time::Instant::now() + DEVICE_DEBOUNCE);
            }
            Ok(()) = node_addresses.changed() => {
                let addresses = node_addresses.borrow_and_update().clone();
                if follower.set_node_addresses(addresses) {
                    resync = Some(tokio::time::Instant::now());
                }
            }
            _ = tokio::time::sleep_until(resync.unwrap_or_else(far)), if resync.is_some() => {
                resync = None;
                if let Err(e) = follower.sync(dp).await {
                    tracing::warn!(error = %e, "cannot list the devices; retrying at the next change");
                }
            }
            _ = check.tick() => {
                if worker.is_finished() {
                    break Err(anyhow::anyhow!("the reconciler thread stopped unexpectedly"));
                }
                if source.is_finished() {
                    break Err(anyhow::anyhow!("the source stopped unexpectedly"));
                }
            }
        }
    };
    source.abort();
    service_health.abort();
    if let Some(events) = events {
        events.abort();
    }
    http.abort();
    if let Some(h) = health_http {
        h.abort();
    }
    checker.abort();
    signal_task.abort();
    let _ = tx.send(Msg::Stop);
    match tokio::task::spawn_blocking(move || worker.join()).await {
        Ok(Ok(())) => {}
        _ => tracing::error!("the reconciler thread panicked"),
    }
    if let Ok(Err(e)) = source.await {
        tracing::error!("source failed: {e:#}");
    }
    result
}

/// Attaches the socket programs to the cgroup (or detaches them when turned off).
fn attach_sockets(args: &AgentArgs, dp: &mut Datapath) -> anyhow::Result<()> {
    if args.no_socket_lb {
        for hook in dp.pinned_hooks() {
            if let Hook::Cgroup(_) = hook {
                dp.detach(&hook)?;
                tracing::info!(%hook, "detached: --no-socket-lb");
            }
        }
        return Ok(());
    }
    let cgroup = match &args.cgroup {
        Some(dir) => dir.clone(),
        None => cgroup2_mount().context(
            "no cgroup v2 filesystem is mounted: mount one, give --cgroup, or turn the socket programs off with --no-socket-lb",
        )?,
    };
    let how = dp.attach_cgroup(&cgroup)?;
    let verb = if how == Attachment::Replaced {
        "took over"
    } else {
        "attached"
    };
    tracing::info!(cgroup = %cgroup.display(), "socket programs {verb}: connections and datagrams from this node's processes and pods are translated at the socket");
    Ok(())
}

/// Where the cgroup v2 hierarchy is mounted (its root: the whole node).
fn cgroup2_mount() -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let root = left.split_whitespace().nth(3)?;
        let point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2" && root == "/").then(|| point.into())
    })
}

/// Forwards the datapath's signals (failed new connections) to the reconciler as they
/// come.
async fn read_signals(mut signals: Signals, tx: mpsc::Sender<Msg>) -> anyhow::Result<()> {
    loop {
        let signal = signals
            .next()
            .await
            .context("reading the datapath's signals")?;
        if tx.send(Msg::ConnectionFailed(signal.backend_id)).is_err() {
            return Ok(());
        }
    }
}

fn handle(rec: &mut Reconciler, msg: Msg) {
    match msg {
        Msg::Change(change) => rec.handle(&change),
        Msg::Health(t) => rec.health_transition(&t),
        Msg::ConnectionFailed(id) => rec.connection_failed(id),
        Msg::Stop => {}
    }
}

/// The reconciler thread: applies changes as they come, syncing after each batch.
fn reconcile_loop(mut rec: Reconciler, mut maps: RealMaps, rx: mpsc::Receiver<Msg>) {
    let mut next_tick = Instant::now() + TICK;
    let mut waiting_logged = Instant::now();
    // After a big change, freed memory is released at once and again once the deferred
    // work (retired backends after their grace, drains) has freed its share.
    let mut trim_again: Option<Instant> = None;
    loop {
        let timeout = next_tick.saturating_duration_since(Instant::now());
        match rx.recv_timeout(timeout) {
            Ok(Msg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Ok(msg) => {
                handle(&mut rec, msg);
                // Take everything that has arrived meanwhile: one sync for the batch.
                loop {
                    match rx.try_recv() {
                        Ok(Msg::Stop) | Err(mpsc::TryRecvError::Disconnected) => return,
                        Ok(msg) => handle(&mut rec, msg),
                        Err(mpsc::TryRecvError::Empty) => break,
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(r) = rec.sync(&mut maps) {
            if r.translated >= TRIM_AFTER {
                crate::memory::release_freed();
                trim_again = Some(Instant::now() + TRIM_AGAIN_AFTER);
            }
            let ms = r.elapsed.as_secs_f64() * 1e3;
            if r.full || r.writes > 0 || !r.problems.is_empty() {
                tracing::info!(
                    full = r.full,
                    translated = r.translated,
                    services = r.services,
                    frontends = r.frontends,
                    backends = r.backends,
                    writes = r.writes,
                    problems = r.problems.len(),
                    elapsed_ms = ms,
                    "sync complete"
                );
            } else {
                tracing::debug!(
                    translated = r.translated,
                    elapsed_ms = ms,
                    "sync: nothing to write"
                );
            }
        } else if !rec.store.listed() && waiting_logged.elapsed() >= Duration::from_secs(5) {
            waiting_logged = Instant::now();
            tracing::info!(kinds = ?rec.store.unlisted(), "waiting for the first complete list before programming");
        }
        if Instant::now() >= next_tick {
            rec.tick(&mut maps);
            next_tick = Instant::now() + TICK;
            if trim_again.is_some_and(|t| Instant::now() >= t) {
                trim_again = None;
                crate::memory::release_freed();
            }
        }
    }
}

/// Reads `dir` once through the manifests source and programs it (no datapath needed
/// beyond `maps`): what the agent does at start, for tools and tests.
pub fn program_dir(
    dir: &Path,
    rec: &mut Reconciler,
    maps: &mut impl crate::sync::Maps,
) -> Vec<sources::manifests::ManifestProblem> {
    let mut source = ManifestSource::new(dir);
    let r = source.reload();
    for change in &r.changes {
        rec.handle(change);
    }
    rec.sync(maps);
    r.problems
}

/// A sync that re-translated at least this many Services (a big manifest file read or
/// removed, a relist) hands the memory it freed back to the system.
const TRIM_AFTER: usize = 1000;
/// When the memory of such a sync's deferred work is released (backends retire after a
/// one-second grace).
const TRIM_AGAIN_AFTER: Duration = Duration::from_secs(3);
