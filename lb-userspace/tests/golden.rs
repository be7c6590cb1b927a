//! Golden tests of the control plane: Kubernetes YAML in, map contents out.
//!
//! Each directory under `testdata/golden/` is a case: `step1.yaml`, `step2.yaml`, ... are
//! the complete manifests at successive moments; `expected.txt` holds, for every step, the
//! writes the applier made (in order: that is where make-before-break shows) and a dump of
//! the maps afterwards. The fake maps panic on any write that would let the datapath see a
//! broken state. `UPDATE_GOLDEN=1 cargo test --test golden` rewrites the expectations.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use xlb::{
    manifests,
    sync::{self, Applied, FakeMaps, PlanConfig},
    translate,
};

fn steps(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
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

fn run_case(dir: &Path) -> String {
    let mut applied = Applied::new(1024, 4096);
    let mut maps = FakeMaps::default();
    let cfg = PlanConfig::default();
    let mut out = String::new();
    for step in steps(dir) {
        let mut loaded = manifests::Loaded::default();
        let text = std::fs::read_to_string(&step).unwrap();
        manifests::load_text(Path::new(step.file_name().unwrap()), &text, &mut loaded);
        // The node under test is always `node-a`; its Node object, if the step has one,
        // gives its addresses and zone.
        let node = loaded
            .nodes
            .iter()
            .find(|n| n.object.metadata.name.as_deref() == Some("node-a"))
            .map(|n| translate::NodeInfo::from_node(&n.object))
            .unwrap_or(translate::NodeInfo { name: Some("node-a".into()), ..Default::default() });
        let (desired, errors, warnings) = translate::translate_all(
            loaded.services.iter().map(|s| &s.object),
            loaded.slices.iter().map(|s| &s.object),
            &node,
        );
        let _ = writeln!(out, "### {}", step.file_name().unwrap().to_string_lossy());
        for e in &loaded.errors {
            let _ = writeln!(out, "rejected: {e}");
        }
        for e in &errors {
            let _ = writeln!(out, "rejected: {e}");
        }
        for w in &warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        let plan = sync::plan(&desired, &applied, None, &cfg);
        for e in &plan.errors {
            let _ = writeln!(out, "not programmed: {e}");
        }
        maps.log.clear();
        // Zero grace: retired backends are cleared at once, so each dump is the end state.
        let no_grace = sync::ApplyConfig { backend_grace: std::time::Duration::ZERO };
        let report = sync::apply_with(plan, &mut applied, &mut maps, &no_grace);
        assert!(report.errors.is_empty(), "{}: {:?}", step.display(), report.errors);
        let _ = writeln!(out, "writes: {}", maps.log.join(", "));
        out.push_str(&maps.dump(Some(&applied)));
        // Planning again against the result must find nothing to do (idempotence).
        let again = sync::plan(&desired, &applied, None, &cfg);
        assert!(again.ops.is_empty(), "{}: not idempotent: {:?}", step.display(), again.ops);
    }
    out
}

#[test]
fn golden() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    cases.sort();
    assert!(!cases.is_empty());
    let mut failed = Vec::new();
    for case in cases {
        let got = run_case(&case);
        let file = case.join("expected.txt");
        if update {
            std::fs::write(&file, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&file).unwrap_or_default();
        if got != want {
            eprintln!("=== {} differs; got:\n{got}", case.display());
            failed.push(case.file_name().unwrap().to_string_lossy().to_string());
        }
    }
    assert!(failed.is_empty(), "golden cases differ: {failed:?} (UPDATE_GOLDEN=1 to accept)");
}
