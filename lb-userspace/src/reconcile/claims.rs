//! Frontends that two Services claim (externalIPs and load-balancer ingress can collide;
//! cluster IPs cannot): exactly one serves it, decided by the Services themselves, not by
//! the order an agent happened to see them in. The oldest Service (`creationTimestamp`)
//! wins, then the first by namespace and name; the same winner after any restart, on
//! every node. When the winner goes or gives the frontend up, the next claimant is
//! re-derived in the same sync (its object joins the sync's scope) and takes it over.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::maps::FrontendKey;

use crate::{
    model::{ServiceName, ServiceSpec},
    translate::ObjectKey,
};

/// Who claims a frontend, ordered so that the first is the winner.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Claimant {
    /// Seconds since the epoch of the Service's creation; none (a manifest without it)
    /// sorts last.
    created: i64,
    namespace: String,
    name: String,
    service: ServiceName,
}

#[derive(Debug, Default)]
pub struct Claims {
    by_frontend: BTreeMap<FrontendKey, BTreeSet<Claimant>>,
    by_object: BTreeMap<ObjectKey, Vec<(FrontendKey, Claimant)>>,
}

/// The key a frontend of `spec` is programmed under.
pub fn key_of(spec: &ServiceSpec, fe: &crate::model::Frontend) -> FrontendKey {
    FrontendKey::new(fe.ip, fe.port, spec.proto)
}

impl Claims {
    pub fn clear(&mut self) {
        self.by_frontend.clear();
        self.by_object.clear();
    }

    /// Records what the Service `key` (created at `created`, seconds) claims now, in
    /// place of what it claimed before. Returns the frontends whose claimants changed.
    pub fn set(
        &mut self,
        key: &ObjectKey,
        created: Option<i64>,
        services: &[(ServiceName, ServiceSpec)],
    ) -> BTreeSet<FrontendKey> {
        let mut changed = BTreeSet::new();
        for (fk, claimant) in self.by_object.remove(key).unwrap_or_default() {
            if let Some(set) = self.by_frontend.get_mut(&fk) {
                set.remove(&claimant);
                if set.is_empty() {
                    self.by_frontend.remove(&fk);
                }
            }
            changed.insert(fk);
        }
        let mut mine = Vec::new();
        for (name, spec) in services {
            for fe in &spec.frontends {
                let fk = key_of(spec, fe);
                let claimant = Claimant {
                    created: created.unwrap_or(i64::MAX),
                    namespace: key.0.clone(),
                    name: key.1.clone(),
                    service: name.clone(),
                };
                self.by_frontend
                    .entry(fk)
                    .or_default()
                    .insert(claimant.clone());
                mine.push((fk, claimant));
                changed.insert(fk);
            }
        }
        if !mine.is_empty() {
            self.by_object.insert(key.clone(), mine);
        }
        changed
    }

    /// The service that serves frontend `fk`, if anyone claims it.
    pub fn winner(&self, fk: &FrontendKey) -> Option<&ServiceName> {
        self.by_frontend
            .get(fk)
            .and_then(|set| set.first())
            .map(|c| &c.service)
    }

    /// The Services claiming any of `frontends`.
    pub fn claimants_of<'a>(
        &self,
        frontends: impl IntoIterator<Item = &'a FrontendKey>,
    ) -> BTreeSet<ObjectKey> {
        frontends
            .into_iter()
            .filter_map(|fk| self.by_frontend.get(fk))
            .flatten()
            .map(|c| (c.namespace.clone(), c.name.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use lb_common::{Family, Proto};

    use super::*;
    use crate::model::{Frontend, Scope};

    fn service(name: &str, ip: &str) -> (ServiceName, ServiceSpec) {
        let frontends = BTreeSet::from([Frontend {
            ip: ip.parse().unwrap(),
            port: 80,
        }]);
        (
            ServiceName {
                namespace: "default".into(),
                name: name.into(),
                port: "80".into(),
                family: Family::V4,
                scope: Scope::All,
            },
            ServiceSpec::new(Proto::TCP, frontends, Vec::new()),
        )
    }

    #[test]
    fn the_oldest_wins_then_the_name_and_the_next_takes_over() {
        let mut c = Claims::default();
        let fk = FrontendKey::new("192.0.2.1".parse().unwrap(), 80, Proto::TCP);
        let a = ("default".to_string(), "a".to_string());
        let b = ("default".to_string(), "b".to_string());
        // b is older: it wins although a sorts first, whatever the order they come in.
        c.set(&a, Some(200), &[service("a", "192.0.2.1")]);
        c.set(&b, Some(100), &[service("b", "192.0.2.1")]);
        assert_eq!(c.winner(&fk).unwrap().name, "b");
        assert_eq!(
            c.claimants_of([&fk]),
            BTreeSet::from([a.clone(), b.clone()])
        );
        // b goes: a takes over.
        let changed = c.set(&b, Some(100), &[]);
        assert!(changed.contains(&fk));
        assert_eq!(c.winner(&fk).unwrap().name, "a");
        // Same age (or none): by name.
        c.set(&b, None, &[service("b", "192.0.2.1")]);
        assert_eq!(c.winner(&fk).unwrap().name, "a");
        c.set(&a, None, &[service("a", "192.0.2.1")]);
        assert_eq!(c.winner(&fk).unwrap().name, "a");
        c.set(&a, None, &[]);
        c.set(&b, None, &[]);
        assert!(c.winner(&fk).is_none());
    }
}
