//! What the golden and adoption tests share: the golden cases, their steps in order, and
//! feeding a step's manifests to a reconciler.

use std::path::{Path, PathBuf};

use xlb::{
    reconcile::Reconciler,
    sources::manifests::{self, ManifestSource, Reload},
};

/// Every golden case (a directory under `testdata/golden/`), in name order.
pub fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/golden");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no golden cases in {}", root.display());
    cases
}

/// The case's `--nodeport-addresses` (its `nodeport-addresses` file; default: all).
pub fn nodeport_addresses(case: &Path) -> xlb::translate::NodePortAddresses {
    let flag = std::fs::read_to_string(case.join("nodeport-addresses")).unwrap_or_default();
    xlb::translate::NodePortAddresses::parse(&[flag.trim().to_string()]).expect("a valid flag")
}

/// The `step<N>.yaml` files of a case, by N.
pub fn steps(case: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(case)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("step"))
        .collect();
    v.sort_by_key(|p| {
        let n = p.file_stem().unwrap().to_string_lossy();
        n.trim_start_matches("step").parse::<u32>().unwrap()
    });
    v
}

/// Reads a step's manifests as the manifests source would (the step stands for the
/// whole directory) and hands the relist to `rec`.
pub fn feed(rec: &mut Reconciler, source: &mut ManifestSource, step: &Path) -> Reload {
    let mut loaded = manifests::Loaded::default();
    let file = Path::new(step.file_name().unwrap());
    manifests::load_text(file, &std::fs::read_to_string(step).unwrap(), &mut loaded);
    loaded.files.push(file.to_path_buf());
    let reload = source.absorb(loaded);
    for change in &reload.changes {
        rec.handle(change);
    }
    reload
}
