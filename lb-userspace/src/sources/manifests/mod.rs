//! The manifests source: a directory of Kubernetes YAML/JSON files.
//! - [`parse`]: reading files into objects, each with its origin (file, document, line);
//! - [`snapshot`]: the objects in effect across reloads (the last valid version of what is
//!   broken), each reload as a relist for the store, and its problems;
//! - [`watch`]: inotify with debouncing, SIGHUP, and the source's driver.

pub mod parse;
pub mod snapshot;
pub mod watch;

pub use parse::{
    Identity, Loaded, ManifestError, Origin, Sourced, is_manifest_file, load_dir, load_text,
};
pub use snapshot::{Kept, ManifestProblem, ManifestSource, Reload};
pub use watch::{DEBOUNCE, DEBOUNCE_MAX, run};
