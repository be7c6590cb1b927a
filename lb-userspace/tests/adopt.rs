//! Adoption: an agent that starts on maps an earlier agent programmed (pinned maps)
//! adopts them. For every state of every golden case, a fresh reconciler adopting those
//! maps and syncing the same manifests writes nothing and ends with the same dump; and
//! it then handles the next step exactly as the original one did.

mod common;

use std::{sync::Arc, time::Duration};

use xlb::{
    metrics::Metrics,
    reconcile::{Problem, Reconciler},
    sources::manifests::ManifestSource,
    store::Store,
    sync::{Applied, ApplyConfig, FakeMaps, PlanConfig},
    translate::NodeInfo,
};

fn reconciler(case: &std::path::Path, applied: Applied) -> Reconciler {
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
    .with_nodeport_addresses(common::nodeport_addresses(case))
}

#[test]
fn every_golden_state_is_adopted_without_a_write() {
    let mut checked = 0;
    for case in common::cases() {
        let steps = common::steps(&case);

        let mut maps = FakeMaps::default();
        let mut original = reconciler(&case, Applied::new(1024, 4096));
        let mut source = ManifestSource::new(&case);
        // What the adopter of the previous state made of this step.
        let mut adopter_next: Option<String> = None;
        for (i, step) in steps.iter().enumerate() {
            common::feed(&mut original, &mut source, step);
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
            let mut adopter = reconciler(&case, applied);
            let mut adopter_source = ManifestSource::new(&case);
            let rejected = !common::feed(&mut adopter, &mut adopter_source, step)
                .problems
                .is_empty();
            let report = adopter.sync(&mut adopted_maps).unwrap();
            if rejected
                || report
                    .problems
                    .iter()
                    .any(|p| matches!(p, Problem::Rejected { .. }))
            {
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
                common::feed(&mut adopter, &mut adopter_source, next);
                adopter.sync(&mut adopted_maps).unwrap();
                adopter_next = Some(adopted_maps.dump(None));
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked} states");
}
