//! Watching the manifests directory (inotify, debounced: a burst of writes, as an
//! editor or a `kubectl`-like tool makes them, is one reload; SIGHUP also reloads), and
//! the source's driver, which hands each reload to the reconciler.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use super::{parse, snapshot::ManifestSource};
use crate::{metrics::Metrics, sources::Sink};

/// How long the directory must be quiet before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// Reload at the latest this long after the first change of a burst.
pub const DEBOUNCE_MAX: Duration = Duration::from_millis(500);

/// Runs the manifests source: reads `dir` now, then again after each debounced burst of
/// changes and on SIGHUP, handing every reload to `sink`. Returns only on an error (or
/// when the receiver is gone).
pub async fn run(dir: PathBuf, sink: Sink, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let mut source = ManifestSource::new(&dir);
    let (trigger_tx, mut trigger) = tokio::sync::mpsc::unbounded_channel();
    let _watcher = watch(&dir, trigger_tx)?;
    let mut hup = signal(SignalKind::hangup())?;
    reload(&mut source, &sink, &metrics, "start")?;
    loop {
        tokio::select! {
            Some(()) = trigger.recv() => reload(&mut source, &sink, &metrics, "files changed")?,
            _ = hup.recv() => reload(&mut source, &sink, &metrics, "SIGHUP")?,
        }
    }
}

fn reload(
    source: &mut ManifestSource,
    sink: &Sink,
    metrics: &Metrics,
    why: &str,
) -> anyhow::Result<()> {
    let r = source.reload();
    for p in &r.problems {
        tracing::warn!("{p}");
        metrics.error(p.kind());
    }
    tracing::info!(dir = %source.dir().display(), files = r.files, objects = r.objects, why, "manifests read");
    for change in r.changes {
        if !sink(change) {
            anyhow::bail!("the reconciler is gone");
        }
    }
    // The files' text and parse trees are gone now: give the memory back.
    crate::memory::release_freed();
    Ok(())
}

/// Watches `dir` and sends a unit on `tx` after every debounced burst of changes.
/// Returns the watcher, which stops watching when dropped.
pub fn watch(
    dir: &Path,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher as _};

    let (raw_tx, mut raw_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            Ok(e) => {
                !e.kind.is_access() && (e.paths.is_empty() || e.paths.iter().any(|p| relevant(p)))
            }
            Err(_) => true,
        };
        if relevant {
            let _ = raw_tx.send(());
        }
    })
    .with_context(|| format!("--manifests {}: cannot watch", dir.display()))?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("--manifests {}: cannot watch", dir.display()))?;
    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            // Debounce: wait for DEBOUNCE of quiet, at most DEBOUNCE_MAX in all.
            let deadline = tokio::time::Instant::now() + DEBOUNCE_MAX;
            loop {
                let quiet = tokio::time::sleep(DEBOUNCE);
                tokio::select! {
                    more = raw_rx.recv() => if more.is_none() { return },
                    _ = quiet => break,
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
            if tx.send(()).is_err() {
                return;
            }
        }
    });
    Ok(watcher)
}

/// Whether a changed path can change what the source reads: a manifest file, or a
/// ConfigMap-style `..data` symlink swap.
fn relevant(path: &Path) -> bool {
    parse::is_manifest_file(path)
        || path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".."))
}
