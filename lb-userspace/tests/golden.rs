//! Golden tests of the control plane: Kubernetes YAML in, map contents out, through the
//! agent's own path (manifests source, store, reconciler: translation, planning,
//! applying) into the fake maps.
//!
//! Each directory under `testdata/golden/` is a case: `step1.yaml`, `step2.yaml`, ... are
//! the complete manifests at successive moments; `expected.txt` holds, for every step, the
//! writes the applier made (in order: that is where make-before-break shows) and a dump of
//! the maps afterwards. The fake maps panic on any write that would let the datapath see a
//! broken state. `UPDATE_GOLDEN=1 cargo test --test golden` rewrites the expectations.

mod common;

use std::{fmt::Write as _, path::Path, sync::Arc};

use xlb::{
    metrics::Metrics,
    reconcile::{Problem, Reconciler},
    sources::manifests::ManifestSource,
    store::Store,
    sync::{self, Applied, FakeMaps, PlanConfig},
    translate,
};

fn run_case(dir: &Path) -> String {
    let mut maps = FakeMaps::default();
    // The node under test is always `node-a`; its Node object, if a step has one, gives
    // its addresses and zone. Zero grace: retired backends are cleared at once, so each
    // dump is the end state.
    let node = translate::NodeInfo {
        name: Some("node-a".into()),
        ..Default::default()
    };
    let mut rec = Reconciler::new(
        Store::new(Some("node-a".into())),
        node,
        Applied::new(1024, 4096),
        PlanConfig::default(),
        sync::ApplyConfig {
            backend_grace: std::time::Duration::ZERO,
        },
        Arc::new(Metrics::new()),
    )
    .with_nodeport_addresses(common::nodeport_addresses(dir));
    let mut source = ManifestSource::new(dir);
    let mut out = String::new();
    for step in common::steps(dir) {
        let reload = common::feed(&mut rec, &mut source, &step);
        let _ = writeln!(out, "### {}", step.file_name().unwrap().to_string_lossy());
        for p in &reload.problems {
            let _ = writeln!(out, "{p}");
        }
        maps.log.clear();
        let report = rec.sync(&mut maps).expect("every kind is listed");
        for p in &report.problems {
            assert!(
                !matches!(p, Problem::MapWrite(_)),
                "{}: {p}",
                step.display()
            );
            let _ = writeln!(out, "{p}");
        }
        for w in &report.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        let _ = writeln!(out, "writes: {}", maps.log.join(", "));
        out.push_str(&maps.dump(Some(&rec.applied)));
        // Planning again against the result must find nothing to do (idempotence).
        let again = sync::plan(rec.desired(), &rec.applied, None, &PlanConfig::default());
        assert!(
            again.ops.is_empty(),
            "{}: not idempotent: {:?}",
            step.display(),
            again.ops
        );
    }
    out
}

#[test]
fn golden() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failed = Vec::new();
    for case in common::cases() {
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
    assert!(
        failed.is_empty(),
        "golden cases differ: {failed:?} (UPDATE_GOLDEN=1 to accept)"
    );
}
