//! The manifests source: Kubernetes objects read from YAML and JSON files in a directory.
//!
//! Files ending in `.yaml`, `.yml` or `.json` (not hidden, not in subdirectories) are read in
//! name order. A YAML file may hold several documents separated by `---` lines; a JSON file
//! holds one object. `v1 List` objects are expanded. `v1 Service`,
//! `discovery.k8s.io/v1 EndpointSlice` and `v1 Node` objects are kept (the Node named like
//! this node gives its addresses and zone); other kinds are ignored, so the directory may
//! hold a whole application's manifests. Every object that cannot be used is
//! reported with its file, document and reason, and skipped: the rest is still served.
//! So is every entry with a manifest's name that cannot be read as one: not a regular
//! file (a directory, a FIFO, which would block a read, a dangling symlink), unreadable,
//! or larger than [`MAX_FILE_BYTES`]; what such a file held before stays served.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use serde_json::Value;

use crate::{
    store::ORIGIN_ANNOTATION,
    translate::{DEFAULT_NAMESPACE, Rejection, TranslateError, validate_slice},
};

/// Where an object came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    /// 1-based document number within the file.
    pub document: usize,
    /// 1-based line where the document starts.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (document {}, line {})",
            self.file.display(),
            self.document,
            self.line
        )
    }
}

/// The largest manifest file read (a directory of a whole cluster's objects is a few
/// megabytes; a file beyond this is a mistake, not data).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifests directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read an entry of manifests directory {dir}: {source}")]
    Entry {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not read: it is {what}, not a regular file")]
    NotAFile { file: PathBuf, what: &'static str },
    #[error(
        "{file}: not read: {size} bytes is more than the {limit}-byte limit of a manifest \
         file (split it)"
    )]
    TooLarge {
        file: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{file}: cannot read: {source}")]
    File {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A document or object that cannot be used; `identity` when the object's kind and
    /// name could be read.
    #[error("{origin}: {}{reason}", identity.as_ref().map(|i| format!("{i}: ")).unwrap_or_default())]
    Object {
        origin: Origin,
        #[source]
        reason: DocumentError,
        identity: Option<Identity>,
    },
}

/// What is wrong with a document or the object it holds.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("invalid YAML: {0}")]
    Yaml(#[source] serde_saphyr::Error),
    #[error("not a Kubernetes object (expected a mapping)")]
    NotAnObject,
    #[error("List without items")]
    ListWithoutItems,
    #[error("apiVersion and kind are required")]
    NoKind,
    #[error("apiVersion {0:?} is not supported")]
    UnsupportedVersion(String),
    /// The object does not decode into its Kubernetes type.
    #[error("{0}")]
    Decode(#[source] serde_json::Error),
    /// The object decodes but cannot be used.
    #[error("{0}")]
    Invalid(#[source] Rejection),
}

impl ManifestError {
    fn document(origin: &Origin, reason: DocumentError) -> Self {
        Self::Object {
            origin: origin.clone(),
            reason,
            identity: None,
        }
    }
}

/// An object with the place it was read from.
#[derive(Clone, Debug)]
pub struct Sourced<T> {
    pub object: T,
    pub origin: Origin,
}

/// Everything read from a directory.
#[derive(Debug, Default)]
pub struct Loaded {
    pub services: Vec<Sourced<Service>>,
    pub slices: Vec<Sourced<EndpointSlice>>,
    pub nodes: Vec<Sourced<Node>>,
    /// Objects (or files) that were skipped, and why.
    pub errors: Vec<ManifestError>,
    /// Files read.
    pub files: Vec<PathBuf>,
}

/// Whether a path is a manifest file this source reads.
pub fn is_manifest_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'));
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    !hidden && matches!(ext, "yaml" | "yml" | "json")
}

/// Reads every manifest file of `dir`. Fails only if the directory itself cannot be read.
pub fn load_dir(dir: &Path) -> Result<Loaded, ManifestError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ManifestError::Dir {
        dir: dir.into(),
        source,
    })?;
    let mut loaded = Loaded::default();
    let mut files = Vec::new();
    for entry in entries {
        let path = match entry {
            Ok(e) => e.path(),
            Err(source) => {
                loaded.errors.push(ManifestError::Entry {
                    dir: dir.into(),
                    source,
                });
                continue;
            }
        };
        // Other names are not manifests (the directory may hold anything else).
        if is_manifest_file(&path) {
            files.push(path);
        }
    }
    files.sort();
    for file in files {
        match read_manifest(&file) {
            Ok(text) => load_text(&file, &text, &mut loaded),
            Err(e) => loaded.errors.push(e),
        }
        loaded.files.push(file);
    }
    Ok(loaded)
}

/// A manifest file's text, if it is a regular file (symlinks followed) within the size
/// limit.
fn read_manifest(file: &Path) -> Result<String, ManifestError> {
    use std::io::Read as _;
    let io = |source| ManifestError::File {
        file: file.into(),
        source,
    };
    let meta = std::fs::metadata(file).map_err(io)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        use std::os::unix::fs::FileTypeExt as _;
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_block_device() || kind.is_char_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(ManifestError::NotAFile {
            file: file.into(),
            what,
        });
    }
    let too_large = |size| ManifestError::TooLarge {
        file: file.into(),
        size,
        limit: MAX_FILE_BYTES,
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large(meta.len()));
    }
    // Read at most one byte past the limit: a file that grew since is caught too.
    let mut text = String::new();
    std::fs::File::open(file)
        .map_err(io)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large(text.len() as u64));
    }
    Ok(text)
}

/// Parses one file's text into `loaded`.
pub fn load_text(file: &Path, text: &str, loaded: &mut Loaded) {
    let is_json = file.extension().and_then(|e| e.to_str()) == Some("json");
    let documents = if is_json {
        vec![(1, text.to_string())]
    } else {
        split_documents(text)
    };
    for (index, (line, doc)) in documents.into_iter().enumerate() {
        let origin = Origin {
            file: file.to_path_buf(),
            document: index + 1,
            line,
        };
        let value: Value = if is_json {
            match serde_json::from_str(&doc) {
                Ok(v) => v,
                Err(e) => {
                    loaded
                        .errors
                        .push(ManifestError::document(&origin, DocumentError::Json(e)));
                    continue;
                }
            }
        } else {
            match serde_saphyr::from_str::<Option<Value>>(&doc) {
                Ok(Some(v)) => v,
                // An empty document (comments only, or a trailing `---`).
                Ok(None) => continue,
                Err(e) => {
                    loaded
                        .errors
                        .push(ManifestError::document(&origin, DocumentError::Yaml(e)));
                    continue;
                }
            }
        };
        add_object(value, &origin, loaded);
    }
}

/// Whether a chunk of YAML holds anything but comments and blank lines.
fn has_content(chunk: &str) -> bool {
    chunk.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#')
    })
}

/// Splits YAML text into documents at `---` lines; returns each with its first line number.
/// Chunks of only comments (a file header before the first `---`) are not documents.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let is_separator =
            line.starts_with("---") && line[3..].chars().next().is_none_or(char::is_whitespace);
        if is_separator {
            if has_content(&current) {
                docs.push((start, std::mem::take(&mut current)));
            }
            current.clear();
            start = i + 2;
            // Content after the marker on the same line belongs to the next document.
            let rest = line[3..].trim();
            if !rest.is_empty() && !rest.starts_with('#') {
                current.push_str(rest);
                current.push('\n');
            }
        } else if line.starts_with("...") && line.trim_end() == "..." {
            // Explicit end of document.
            continue;
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    if has_content(&current) {
        docs.push((start, current));
    }
    docs
}

/// The kind, namespace and name of an object, when they could be read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == "Node" {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

fn add_object(mut value: Value, origin: &Origin, loaded: &mut Loaded) {
    let Some(obj) = value.as_object_mut() else {
        loaded
            .errors
            .push(ManifestError::document(origin, DocumentError::NotAnObject));
        return;
    };
    let api_version = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let name = obj
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_string();
    // Namespaced kinds without a namespace go to the default one (as `kubectl apply`).
    if matches!(kind.as_str(), "Service" | "EndpointSlice")
        && let Some(Value::Object(meta)) = obj.get_mut("metadata")
        && meta
            .get("namespace")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        meta.insert("namespace".into(), Value::String(DEFAULT_NAMESPACE.into()));
    }
    // Objects remember where they were read, so that later stages (the translation) can
    // say where a problem is.
    if matches!(kind.as_str(), "Service" | "EndpointSlice" | "Node")
        && let Some(Value::Object(meta)) = obj.get_mut("metadata")
    {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(a) = annotations {
            a.insert(ORIGIN_ANNOTATION.into(), Value::String(origin.to_string()));
        }
    }
    let namespace = obj
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let identity = Identity {
        kind: kind.clone(),
        namespace,
        name: name.clone(),
    };
    let fail = |loaded: &mut Loaded, reason: DocumentError| {
        loaded.errors.push(ManifestError::Object {
            origin: origin.clone(),
            reason,
            identity: Some(identity.clone()),
        });
    };
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "List") => match obj.get("items").and_then(Value::as_array) {
            Some(items) => {
                for item in items.clone() {
                    add_object(item, origin, loaded);
                }
            }
            None => loaded.errors.push(ManifestError::document(
                origin,
                DocumentError::ListWithoutItems,
            )),
        },
        ("v1", "Service") => match serde_json::from_value::<Service>(value) {
            Ok(object) => loaded.services.push(Sourced {
                object,
                origin: origin.clone(),
            }),
            Err(e) => fail(loaded, DocumentError::Decode(e)),
        },
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            match serde_json::from_value::<EndpointSlice>(value) {
                Ok(object) => match validate_slice(&object) {
                    Ok(()) => loaded.slices.push(Sourced {
                        object,
                        origin: origin.clone(),
                    }),
                    Err(TranslateError { reason, .. }) => {
                        fail(loaded, DocumentError::Invalid(reason))
                    }
                },
                Err(e) => fail(loaded, DocumentError::Decode(e)),
            }
        }
        ("v1", "Node") => match serde_json::from_value::<Node>(value) {
            Ok(object) => loaded.nodes.push(Sourced {
                object,
                origin: origin.clone(),
            }),
            Err(e) => fail(loaded, DocumentError::Decode(e)),
        },
        (_, "Service") | (_, "EndpointSlice") | (_, "Node") => fail(
            loaded,
            DocumentError::UnsupportedVersion(api_version.clone()),
        ),
        ("", _) | (_, "") => loaded
            .errors
            .push(ManifestError::document(origin, DocumentError::NoKind)),
        _ => {
            tracing::debug!(%origin, kind, "ignoring object of a kind xlb does not use");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str, text: &str) -> Loaded {
        let mut l = Loaded::default();
        load_text(Path::new(name), text, &mut l);
        l
    }

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: 10.96.0.10\n  ports:\n  - port: 80\n";

    #[test]
    fn entries_that_are_not_readable_manifests_are_reported_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("web.yaml"), SVC).unwrap();
        std::fs::create_dir(d.join("dir.yaml")).unwrap();
        let fifo =
            std::ffi::CString::new(d.join("pipe.yaml").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        std::os::unix::fs::symlink(d.join("gone"), d.join("dangling.yaml")).unwrap();
        // Sparse: over the limit without writing 64 MiB.
        std::fs::File::create(d.join("huge.yaml"))
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        std::fs::write(d.join("notes.txt"), "not a manifest").unwrap();
        let loaded = load_dir(d).unwrap();
        assert_eq!(loaded.services.len(), 1, "the valid file is served");
        let messages: Vec<String> = loaded.errors.iter().map(|e| e.to_string()).collect();
        let has = |file: &str, text: &str| {
            messages
                .iter()
                .any(|m| m.contains(file) && m.contains(text))
        };
        assert!(has("dir.yaml", "a directory"), "{messages:?}");
        // Reading a FIFO would block the source: it is never opened.
        assert!(has("pipe.yaml", "a FIFO"), "{messages:?}");
        assert!(has("dangling.yaml", "cannot read"), "{messages:?}");
        assert!(has("huge.yaml", "limit"), "{messages:?}");
        assert_eq!(
            messages.len(),
            4,
            "notes.txt is not a manifest: {messages:?}"
        );
    }

    #[test]
    fn reads_multiple_documents_and_skips_bad_ones() {
        let text = format!(
            "# leading comment\n---\n{SVC}---\napiVersion: v1\nkind: Service\nmetadata: [broken\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\n---\n"
        );
        let l = load("a.yaml", &text);
        assert_eq!(l.services.len(), 1);
        assert_eq!(l.errors.len(), 1, "{:?}", l.errors);
        assert!(
            matches!(&l.errors[0], ManifestError::Object { origin, reason: DocumentError::Yaml(_), .. }
                if origin.document == 2 && origin.line == 12 && origin.file == Path::new("a.yaml")),
            "{:?}",
            l.errors
        );
    }

    #[test]
    fn reports_type_errors_with_the_object_name() {
        let l = load(
            "b.yml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports: 80\n",
        );
        assert!(l.services.is_empty());
        let web = Identity {
            kind: "Service".into(),
            namespace: "default".into(),
            name: "web".into(),
        };
        assert!(
            matches!(&l.errors[0], ManifestError::Object { origin, reason: DocumentError::Decode(_), identity: Some(id) }
                if *id == web && origin.document == 1 && origin.line == 1),
            "{:?}",
            l.errors
        );
    }

    #[test]
    fn json_and_lists_are_expanded() {
        let json = r#"{"apiVersion":"v1","kind":"List","items":[
            {"apiVersion":"v1","kind":"Service","metadata":{"name":"a"},"spec":{"clusterIP":"10.96.0.1","ports":[{"port":53,"protocol":"UDP"}]}},
            {"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"a-1","labels":{"kubernetes.io/service-name":"a"}},
             "addressType":"IPv4","endpoints":[{"addresses":["10.1.0.1"]}],"ports":[{"port":5353,"protocol":"UDP"}]}]}"#;
        let l = load("c.json", json);
        assert_eq!(
            (l.services.len(), l.slices.len(), l.errors.len()),
            (1, 1, 0),
            "{:?}",
            l.errors
        );
    }

    #[test]
    fn invalid_slice_address_is_rejected() {
        let text = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s\naddressType: IPv4\nendpoints:\n- addresses: [\"fd00::1\"]\n";
        let l = load("d.yaml", text);
        assert!(l.slices.is_empty());
        assert!(
            matches!(
                &l.errors[0],
                ManifestError::Object {
                    reason: DocumentError::Invalid(Rejection::Field(_)),
                    ..
                }
            ),
            "{}",
            l.errors[0]
        );
    }

    #[test]
    fn only_manifest_files_are_read() {
        assert!(is_manifest_file(Path::new("/x/a.yaml")));
        assert!(is_manifest_file(Path::new("/x/a.json")));
        assert!(!is_manifest_file(Path::new("/x/.a.yaml")));
        assert!(!is_manifest_file(Path::new("/x/a.yaml.swp")));
    }
}
