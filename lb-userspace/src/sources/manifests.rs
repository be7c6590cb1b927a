//! The manifests source: a directory of Kubernetes YAML/JSON, watched with inotify.
//!
//! Every change of the directory (debounced: a burst of writes, as an editor or
//! `kubectl`-like tool makes them, is one reload) re-reads it and hands the store the
//! complete object set as a relist; the store diffs it, so only the Services whose
//! objects changed are re-programmed. Removing a file removes its objects.
//!
//! Bad input loses nothing: an object that fails to parse or validate keeps its last
//! valid version (found by kind, namespace and name); a file that cannot be read, or
//! holds a document that is not even YAML, keeps all its previous objects. Each such
//! problem is reported with its file, document and line, until it is fixed.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::runtime::watcher::Event;

use crate::{
    manifests::{self, Identity, Loaded, ManifestError, Origin, Sourced},
    store::{Change, key_of},
};

/// How long the directory must be quiet before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// Reload at the latest this long after the first change of a burst.
pub const DEBOUNCE_MAX: Duration = Duration::from_millis(500);

/// The objects in effect: what the directory holds, with the last valid version of
/// whatever it holds broken.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    objects: BTreeMap<Identity, Object>,
}

#[derive(Debug, Clone)]
enum Object {
    Service(Sourced<Service>),
    Slice(Sourced<EndpointSlice>),
    Node(Sourced<Node>),
}

impl Object {
    fn origin(&self) -> &Origin {
        match self {
            Self::Service(s) => &s.origin,
            Self::Slice(s) => &s.origin,
            Self::Node(s) => &s.origin,
        }
    }
}

fn identity<K: kube::Resource>(kind: &str, obj: &K) -> Identity {
    let (namespace, name) = key_of(obj);
    let namespace = if kind == "Node" {
        String::new()
    } else {
        namespace
    };
    Identity {
        kind: kind.into(),
        namespace,
        name,
    }
}

/// One reload's outcome.
#[derive(Debug, Default)]
pub struct Reload {
    /// The relist to hand to the store.
    pub changes: Vec<Change>,
    /// Problems, each with where it is (already worded for a log line).
    pub problems: Vec<String>,
    pub files: usize,
    pub objects: usize,
}

/// The manifests source's memory between reloads.
#[derive(Debug, Default)]
pub struct ManifestSource {
    dir: PathBuf,
    snapshot: Snapshot,
}

impl ManifestSource {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            snapshot: Snapshot::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the directory and returns the relist to apply.
    pub fn reload(&mut self) -> Reload {
        match manifests::load_dir(&self.dir) {
            Ok(loaded) => self.absorb(loaded),
            Err(e) => Reload {
                // The directory itself is unreadable: keep everything.
                changes: Vec::new(),
                problems: vec![format!("{e}; keeping the objects read before")],
                files: 0,
                objects: self.snapshot.objects.len(),
            },
        }
    }

    /// Takes a fresh read of the directory, keeps the last valid version of what it
    /// holds broken, and returns the relist.
    pub fn absorb(&mut self, loaded: Loaded) -> Reload {
        let mut problems = Vec::new();
        let mut next: BTreeMap<Identity, Object> = BTreeMap::new();
        let mut put = |id: Identity, obj: Object, problems: &mut Vec<String>| {
            let origin = obj.origin().clone();
            if let Some(previous) = next.insert(id.clone(), obj) {
                problems.push(format!(
                    "{origin}: {id} is also defined at {}; using this one",
                    previous.origin()
                ));
            }
        };
        for s in loaded.services {
            put(
                identity("Service", &s.object),
                Object::Service(s),
                &mut problems,
            );
        }
        for s in loaded.slices {
            put(
                identity("EndpointSlice", &s.object),
                Object::Slice(s),
                &mut problems,
            );
        }
        for n in loaded.nodes {
            put(identity("Node", &n.object), Object::Node(n), &mut problems);
        }
        // Broken files and documents keep what they held.
        let mut broken_files: Vec<PathBuf> = Vec::new();
        for e in &loaded.errors {
            match e {
                ManifestError::Object {
                    identity: Some(id), ..
                } => match self.snapshot.objects.get(id) {
                    Some(old) if !next.contains_key(id) => {
                        problems.push(format!("rejected (keeping its last valid version): {e}"));
                        next.insert(id.clone(), old.clone());
                    }
                    _ => problems.push(format!("rejected: {e}")),
                },
                ManifestError::Object {
                    origin,
                    identity: None,
                    ..
                } => {
                    problems.push(format!(
                        "rejected (keeping the file's last valid objects): {e}"
                    ));
                    broken_files.push(origin.file.clone());
                }
                ManifestError::File { file, .. } => {
                    problems.push(format!(
                        "rejected (keeping the file's last valid objects): {e}"
                    ));
                    broken_files.push(file.clone());
                }
                ManifestError::Dir { .. } => problems.push(e.to_string()),
            }
        }
        for (id, old) in &self.snapshot.objects {
            if broken_files.contains(&old.origin().file) && !next.contains_key(id) {
                next.insert(id.clone(), old.clone());
            }
        }
        self.snapshot = Snapshot { objects: next };
        Reload {
            changes: self.relist(),
            problems,
            files: loaded.files.len(),
            objects: self.snapshot.objects.len(),
        }
    }

    /// The snapshot as one relist per kind.
    fn relist(&self) -> Vec<Change> {
        let mut services = vec![Change::Services(Event::Init)];
        let mut slices = vec![Change::Slices(Event::Init)];
        let mut nodes = vec![Change::Nodes(Event::Init)];
        for obj in self.snapshot.objects.values() {
            match obj {
                Object::Service(s) => {
                    services.push(Change::Services(Event::InitApply(s.object.clone())))
                }
                Object::Slice(s) => slices.push(Change::Slices(Event::InitApply(s.object.clone()))),
                Object::Node(n) => nodes.push(Change::Nodes(Event::InitApply(n.object.clone()))),
            }
        }
        services.push(Change::Services(Event::InitDone));
        slices.push(Change::Slices(Event::InitDone));
        nodes.push(Change::Nodes(Event::InitDone));
        // Slices and the Node first: a Service is then translated with its endpoints.
        nodes.into_iter().chain(slices).chain(services).collect()
    }

    /// Where an object of the snapshot comes from (for error messages).
    pub fn origin_of(&self, kind: &str, namespace: &str, name: &str) -> Option<&Origin> {
        let id = Identity {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        self.snapshot.objects.get(&id).map(Object::origin)
    }
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
    .map_err(|e| anyhow::anyhow!("--manifests {}: cannot watch: {e}", dir.display()))?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| anyhow::anyhow!("--manifests {}: cannot watch: {e}", dir.display()))?;
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
    manifests::is_manifest_file(path)
        || path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(files: &[(&str, &str)]) -> Loaded {
        let mut l = Loaded::default();
        for (name, text) in files {
            manifests::load_text(Path::new(name), text, &mut l);
            l.files.push(PathBuf::from(name));
        }
        l
    }

    const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n";
    const WEB_BROKEN: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 10.96.0.1, ports: 80}\n";
    const DB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec: {clusterIP: 10.96.0.2, ports: [{port: 5432}]}\n";

    fn services(r: &Reload) -> Vec<String> {
        r.changes
            .iter()
            .filter_map(|c| match c {
                Change::Services(Event::InitApply(s)) => s.metadata.name.clone(),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn broken_objects_and_files_keep_their_last_valid_version() {
        let mut src = ManifestSource::new(Path::new("."));
        let r = src.absorb(loaded(&[("a.yaml", WEB), ("b.yaml", DB)]));
        assert_eq!(services(&r), ["db", "web"]);
        assert!(r.problems.is_empty());
        // web breaks: its last valid version stays, with the problem reported.
        let r = src.absorb(loaded(&[("a.yaml", WEB_BROKEN), ("b.yaml", DB)]));
        assert_eq!(services(&r), ["db", "web"]);
        assert!(
            r.problems[0].contains("keeping its last valid version"),
            "{:?}",
            r.problems
        );
        // b.yaml is not YAML any more: db stays.
        let r = src.absorb(loaded(&[("a.yaml", WEB), ("b.yaml", "kind: [oops\n")]));
        assert_eq!(services(&r), ["db", "web"]);
        assert!(
            r.problems[0].contains("keeping the file's last valid objects"),
            "{:?}",
            r.problems
        );
        // b.yaml removed: db goes.
        let r = src.absorb(loaded(&[("a.yaml", WEB)]));
        assert_eq!(services(&r), ["web"]);
        // A broken object never seen valid is just reported.
        let mut fresh = ManifestSource::new(Path::new("."));
        let r = fresh.absorb(loaded(&[("a.yaml", WEB_BROKEN)]));
        assert!(services(&r).is_empty());
        assert_eq!(r.problems.len(), 1);
    }

    #[test]
    fn duplicates_are_reported() {
        let mut src = ManifestSource::new(Path::new("."));
        let r = src.absorb(loaded(&[("a.yaml", WEB), ("b.yaml", WEB)]));
        assert_eq!(services(&r), ["web"]);
        assert!(
            r.problems[0].contains("also defined at a.yaml"),
            "{:?}",
            r.problems
        );
    }
}
