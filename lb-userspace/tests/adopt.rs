//! Adoption: an agent that starts on maps an earlier agent programmed (pinned maps)
//! adopts them. For every state of every golden case, a fresh reconciler adopting those
//! maps and syncing the same manifests writes nothing and ends with the same dump; and
//! it then handles the next step exactly as the original one did.

use std::{path::Path, sync::Arc, time::Duration};

use xlb::{
    manifests,
    metrics::Metrics,
    reconcile::Reconciler,
    sources::manifests::ManifestSource,
    store::Store,
    sync::{Applied, ApplyConfig, FakeMaps, PlanConfig},
    translate::NodeInfo,
};

fn reconciler(applied: Applied) -> Reconciler {
    Reconciler::new(
        Store::new(Some("node-a".into())),
        NodeInfo {
            name: Some("node-a".into()),
            ..Default::default()
        },
        applied,
        PlanConfig::default(),
        ApplyConfig {
            backend_grace: Duration::ZERO,
        },
        Arc::new(Metrics::new()),
    )
}

/// Feeds a step's manifests; returns whether any object was rejected.
fn feed(rec: &mut Reconciler, source: &mut ManifestSource, step: &Path) -> bool {
    let mut loaded = manifests::Loaded::default();
    let file = Path::new(step.file_name().unwrap());
    manifests::load_text(file, &std::fs::read_to_string(step).unwrap(), &mut loaded);
    loaded.files.push(file.to_path_buf());
    let reload = source.absorb(loaded);
    for change in &reload.changes {
        rec.handle(change);
    }
    !reload.problems.is_empty()
}

#[test]
fn every_golden_state_is_adopted_without_a_write() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/golden");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    let mut checked = 0;
    for case in cases {
        let mut steps: Vec<_> = std::fs::read_dir(&case)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("step"))
            .collect();
        steps.sort_by_key(|p| {
            p.file_stem()
                .unwrap()
                .to_string_lossy()
                .trim_start_matches("step")
                .parse::<u32>()
                .unwrap()
        });

        let mut maps = FakeMaps::default();
        let mut original = reconciler(Applied::new(1024, 4096));
        let mut source = ManifestSource::new(&case);
        // What the adopter of the previous state made of this step.
        let mut adopter_next: Option<String> = None;
        for (i, step) in steps.iter().enumerate() {
            feed(&mut original, &mut source, step);
            original.sync(&mut maps).unwrap();
            let dump = maps.dump(None);
            if let Some(theirs) = adopter_next.take() {
                assert_eq!(
                    theirs,
                    dump,
                    "{}: the adopter carried on differently",
                    step.display()
                );
            }

            // A new agent adopts these maps and syncs the same manifests.
            let (applied, found) = Applied::adopt(maps.programmed(), 1024, 4096);
            assert_eq!(found.broken_tables, 0, "{}: {found:?}", step.display());
            let mut adopted_maps = maps.clone();
            adopted_maps.log.clear();
            let mut adopter = reconciler(applied);
            let mut adopter_source = ManifestSource::new(&case);
            let rejected = feed(&mut adopter, &mut adopter_source, step);
            let report = adopter.sync(&mut adopted_maps).unwrap();
            if rejected || report.problems.iter().any(|p| p.starts_with("rejected")) {
                // A new agent cannot know the last valid version of an object that is
                // invalid when it starts: that Service is not programmed (documented).
                continue;
            }
            assert!(
                adopted_maps.log.is_empty(),
                "{}: adoption wrote {:?}",
                step.display(),
                adopted_maps.log
            );
            assert_eq!(adopted_maps.dump(None), dump, "{}", step.display());

            // And carries on with the next step as the original will.
            if let Some(next) = steps.get(i + 1) {
                feed(&mut adopter, &mut adopter_source, next);
                adopter.sync(&mut adopted_maps).unwrap();
                adopter_next = Some(adopted_maps.dump(None));
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked} states");
}
