//! A plan scoped to the objects that changed must do exactly what a full plan does (the
//! incremental path must not drift from the level-triggered one).

use std::{collections::BTreeSet, net::IpAddr};

use lb_common::{Family, Proto};
use xlb::{
    model::{Backend, Desired, Frontend, Scope, ServiceName, ServiceSpec},
    sync::{self, Applied, FakeMaps, PlanConfig},
};

fn service(i: u32, backends: &[u32]) -> (ServiceName, ServiceSpec) {
    let ip = |a: u32| IpAddr::from([10, 96, (a >> 8) as u8, a as u8]);
    (
        ServiceName {
            namespace: "ns".into(),
            name: format!("s{i}"),
            port: "80".into(),
            family: Family::V4,
            scope: Scope::All,
        },
        ServiceSpec::new(
            Proto::TCP,
            [Frontend {
                ip: ip(i),
                port: 80,
            }]
            .into(),
            backends
                .iter()
                .map(|b| Backend {
                    ip: IpAddr::from([10, 128, (b >> 8) as u8, *b as u8]),
                    port: 8080,
                    weight: 1,
                })
                .collect(),
        ),
    )
}

#[test]
fn scoped_plan_equals_full_plan_for_a_one_object_change() {
    let mut desired = Desired::default();
    for i in 0..50 {
        desired
            .services
            .extend([service(i, &[i * 3, i * 3 + 1, i * 3 + 2])]);
    }
    let (mut applied, mut maps, cfg) = (
        Applied::new(1024, 4096),
        FakeMaps::default(),
        PlanConfig::default(),
    );
    let report = sync::apply(
        sync::plan(&desired, &applied, None, &cfg),
        &mut applied,
        &mut maps,
    );
    assert!(report.errors.is_empty());

    // Change one service's endpoints (one replaced, one added), delete another, add one.
    desired.replace_object("ns", "s7", [service(7, &[21, 22, 999, 1000])]);
    desired.replace_object("ns", "s9", []);
    desired.replace_object("ns", "s77", [service(77, &[5, 6])]);
    let scope: BTreeSet<(String, String)> = ["s7", "s9", "s77"]
        .iter()
        .map(|n| ("ns".to_string(), n.to_string()))
        .collect();
    let full = sync::plan(&desired, &applied, None, &cfg);
    let scoped = sync::plan(&desired, &applied, Some(&scope), &cfg);
    assert_eq!(full, scoped);
    assert!(!scoped.ops.is_empty());
}
