//! The manifests source's memory: the objects in effect, and each reload turned into a
//! relist for the store (which diffs it, so only the Services whose objects changed are
//! re-programmed). Removing a file removes its objects.
//!
//! Bad input loses nothing: an object that fails to parse or validate keeps its last
//! valid version (found by kind, namespace and name); a file that cannot be read, or
//! holds a document that is not even YAML, keeps all its previous objects. Each such
//! problem is reported with its file, document and line, until it is fixed.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::runtime::watcher::Event;

use super::parse::{self as manifests, Identity, Loaded, ManifestError, Origin, Sourced};
use crate::{
    metrics::ErrorKind,
    store::{Change, key_of},
};

/// What a reload kept in place of something it could not use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kept {
    /// Nothing (the object was never valid).
    Nothing,
    /// The object's last valid version.
    LastValid,
    /// Every object the file held when it last could be read.
    FileObjects,
    /// Everything read before (the directory cannot be read).
    Everything,
}

/// A problem of one reload, with where it is.
#[derive(Debug, thiserror::Error)]
pub enum ManifestProblem {
    #[error("{}{error}", match kept {
        Kept::Nothing => "rejected: ",
        Kept::LastValid => "rejected (keeping its last valid version): ",
        Kept::FileObjects => "rejected (keeping the file's last valid objects): ",
        Kept::Everything => "",
    })]
    Rejected {
        #[source]
        error: ManifestError,
        kept: Kept,
    },
    #[error("{at}: {identity} is also defined at {also}; using this one")]
    Duplicate {
        identity: Identity,
        at: Origin,
        also: Origin,
    },
}

impl ManifestProblem {
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidManifest
    }
}

impl fmt::Display for Kept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Nothing => "nothing",
            Self::LastValid => "its last valid version",
            Self::FileObjects => "the file's last valid objects",
            Self::Everything => "everything read before",
        })
    }
}

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
    /// Problems, each with where it is.
    pub problems: Vec<ManifestProblem>,
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
                problems: vec![ManifestProblem::Rejected {
                    error: e,
                    kept: Kept::Everything,
                }],
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
        let mut put = |id: Identity, obj: Object, problems: &mut Vec<ManifestProblem>| {
            let at = obj.origin().clone();
            if let Some(previous) = next.insert(id.clone(), obj) {
                problems.push(ManifestProblem::Duplicate {
                    identity: id,
                    at,
                    also: previous.origin().clone(),
                });
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
        let mut keep_all = false;
        for error in loaded.errors {
            let kept = match &error {
                ManifestError::Object {
                    identity: Some(id), ..
                } => match self.snapshot.objects.get(id) {
                    Some(old) if !next.contains_key(id) => {
                        next.insert(id.clone(), old.clone());
                        Kept::LastValid
                    }
                    _ => Kept::Nothing,
                },
                ManifestError::Object {
                    origin,
                    identity: None,
                    ..
                } => {
                    broken_files.push(origin.file.clone());
                    Kept::FileObjects
                }
                ManifestError::File { file, .. }
                | ManifestError::NotAFile { file, .. }
                | ManifestError::TooLarge { file, .. } => {
                    broken_files.push(file.clone());
                    Kept::FileObjects
                }
                // A directory (or an entry of it) that cannot be read: nothing is known
                // to be gone.
                ManifestError::Dir { .. } | ManifestError::Entry { .. } => {
                    keep_all = true;
                    Kept::Everything
                }
            };
            problems.push(ManifestProblem::Rejected { error, kept });
        }
        for (id, old) in &self.snapshot.objects {
            if (keep_all || broken_files.contains(&old.origin().file)) && !next.contains_key(id) {
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
            matches!(
                r.problems[..],
                [ManifestProblem::Rejected {
                    kept: Kept::LastValid,
                    ..
                }]
            ),
            "{:?}",
            r.problems
        );
        // b.yaml is not YAML any more: db stays.
        let r = src.absorb(loaded(&[("a.yaml", WEB), ("b.yaml", "kind: [oops\n")]));
        assert_eq!(services(&r), ["db", "web"]);
        assert!(
            matches!(
                r.problems[..],
                [ManifestProblem::Rejected {
                    kept: Kept::FileObjects,
                    ..
                }]
            ),
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
        assert!(
            matches!(
                r.problems[..],
                [ManifestProblem::Rejected {
                    kept: Kept::Nothing,
                    ..
                }]
            ),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn duplicates_are_reported() {
        let mut src = ManifestSource::new(Path::new("."));
        let r = src.absorb(loaded(&[("a.yaml", WEB), ("b.yaml", WEB)]));
        assert_eq!(services(&r), ["web"]);
        assert!(
            matches!(&r.problems[..], [ManifestProblem::Duplicate { also, at, .. }]
                if also.file == Path::new("a.yaml") && at.file == Path::new("b.yaml")),
            "{:?}",
            r.problems
        );
    }
}
