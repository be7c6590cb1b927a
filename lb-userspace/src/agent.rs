//! The agent: loads and attaches the datapath, then keeps its maps in sync with the
//! manifests directory until it is told to stop.

use std::{collections::BTreeMap, path::Path};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::AgentArgs,
    datapath::{self, Datapath, LoadOptions},
    manifests::{self, Origin},
    sync::{self, Applied, Maps, PlanConfig},
    translate,
};

/// What one synchronisation did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub services: usize,
    pub frontends: usize,
    pub backends: usize,
    pub writes: usize,
    /// Problems found (objects skipped, writes failed); each was logged.
    pub problems: usize,
}

/// Reads the manifests, translates, plans and applies. Every problem is logged with where
/// it comes from; whatever is valid is programmed.
pub fn sync_manifests(
    dir: &Path,
    applied: &mut Applied,
    maps: &mut impl Maps,
    cfg: &PlanConfig,
) -> anyhow::Result<SyncReport> {
    let loaded = manifests::load_dir(dir)?;
    let mut report = SyncReport::default();
    for e in &loaded.errors {
        tracing::warn!("skipped: {e}");
        report.problems += 1;
    }
    let origins: BTreeMap<(String, String), Origin> = loaded
        .services
        .iter()
        .map(|s| (translate::service_key(&s.object), s.origin.clone()))
        .collect();
    let (desired, errors, warnings) = translate::translate_all(
        loaded.services.iter().map(|s| &s.object),
        loaded.slices.iter().map(|s| &s.object),
        &translate::NodeInfo::default(),
    );
    for e in &errors {
        match origins.get(&(e.namespace.clone(), e.name.clone())) {
            Some(origin) => tracing::warn!("skipped: {origin}: {e}"),
            None => tracing::warn!("skipped: {e}"),
        }
        report.problems += 1;
    }
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let plan = sync::plan(&desired, applied, None, cfg);
    for e in &plan.errors {
        tracing::warn!("not programmed: {e}");
        report.problems += 1;
    }
    let applied_report = sync::apply(plan, applied, maps);
    for e in &applied_report.errors {
        tracing::error!("map write failed: {e}");
        report.problems += 1;
    }
    report.services = desired.services.len();
    report.frontends = desired.frontend_count();
    report.backends = desired.backend_count();
    report.writes = applied_report.writes;
    Ok(report)
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    if !args.manifests.is_dir() {
        anyhow::bail!("--manifests {}: not a directory", args.manifests.display());
    }
    if args.bpffs.exists() {
        tracing::info!(dir = %args.bpffs.display(), "removing pins left by a previous run");
        datapath::remove_pins(&args.bpffs)?;
    }
    let opts = LoadOptions {
        pin_dir: args.bpffs.clone(),
        config: args.datapath.config(),
        conntrack_entries: args.datapath.conntrack_entries,
    };
    let mut dp = Datapath::load(&opts).context("loading the datapath")?;
    let result = serve(&args, &mut dp).await;
    dp.detach_all();
    drop(dp);
    datapath::remove_pins(&args.bpffs)?;
    tracing::info!("detached and stopped");
    result
}

async fn serve(args: &AgentArgs, dp: &mut Datapath) -> anyhow::Result<()> {
    for interface in &args.interfaces {
        let mode = dp.attach(interface, args.xdp_mode)?;
        tracing::info!(interface, ?mode, "attached");
    }
    let mut maps = dp.maps()?;
    let mut applied =
        Applied::new(lb_common::maps::MAX_SERVICES, lb_common::maps::MAX_BACKENDS);
    let cfg = PlanConfig { max_table_size: args.datapath.max_table_size, ..PlanConfig::default() };

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Clears retired backends once their grace period is over.
    let mut reap = tokio::time::interval(sync::BACKEND_GRACE);
    reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut generation = 0u64;
    loop {
        generation += 1;
        let started = std::time::Instant::now();
        match sync_manifests(&args.manifests, &mut applied, &mut maps, &cfg) {
            Ok(r) => tracing::info!(
                generation,
                services = r.services,
                frontends = r.frontends,
                backends = r.backends,
                writes = r.writes,
                problems = r.problems,
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "sync complete"
            ),
            Err(e) => tracing::error!(generation, "sync failed: {e:#}"),
        }
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: re-reading manifests");
                    break;
                }
                _ = reap.tick() => {
                    for e in sync::reap(&mut applied, &mut maps).errors {
                        tracing::error!("map write failed: {e}");
                    }
                }
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
            }
        }
    }
}
