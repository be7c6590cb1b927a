//! The desired state: which frontends lead to which backends, independent of the source
//! (Kubernetes API or manifest files) it was translated from. Ordered collections
//! everywhere, so that planning and golden dumps are deterministic.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use lb_common::{Family, Proto, maps::BackendValue};

/// Which of a Service port's frontends a datapath service serves. Traffic policies can give
/// in-cluster and external traffic different backends; when they coincide, one service
/// (`All`) serves both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    All,
    /// ClusterIPs (`internalTrafficPolicy`).
    Internal,
    /// NodePorts, load-balancer IPs and external IPs (`externalTrafficPolicy`).
    External,
}

impl Scope {
    pub const fn name(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Internal => "internal",
            Self::External => "external",
        }
    }
}

/// Identity of one datapath service: a Service port, for one address family and scope.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
    /// The Service port's name, or its number when unnamed.
    pub port: String,
    pub family: Family,
    pub scope: Scope,
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}:{}/{}",
            self.namespace,
            self.name,
            self.port,
            self.family.name()
        )?;
        if self.scope != Scope::All {
            write!(f, "/{}", self.scope.name())?;
        }
        Ok(())
    }
}

/// A VIP and port on which a service is reachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub ip: IpAddr,
    pub port: u16,
}

/// An endpoint address and target port that takes new flows, with its Maglev weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub ip: IpAddr,
    pub port: u16,
    pub weight: u32,
}

/// A backend's identity in the maps: everything in its map value but the flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKey {
    pub ip: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

impl BackendKey {
    pub fn family(&self) -> Family {
        Family::of(&self.ip)
    }

    pub fn value(&self) -> BackendValue {
        BackendValue::new(self.ip, self.port, self.proto)
    }

    pub fn of(value: &BackendValue) -> Self {
        Self {
            ip: value.ip(),
            port: value.port(),
            proto: value.proto,
        }
    }

    /// The bytes Maglev hashes to place this backend: stable across nodes and restarts.
    pub fn identity(&self) -> [u8; 20] {
        let mut id = [0u8; 20];
        id[..16].copy_from_slice(&lb_common::Addr::from_ip(&self.ip).octets());
        id[16..18].copy_from_slice(&self.port.to_be_bytes());
        id[18] = self.proto.0;
        id[19] = self.family().0;
        id
    }
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}/{}", self.port, self.proto.name()),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}/{}", self.port, self.proto.name()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub proto: Proto,
    pub frontends: BTreeSet<Frontend>,
    /// Sorted by address and port, one entry per address and port.
    pub backends: Vec<Backend>,
    /// `sessionAffinity: ClientIP` timeout.
    pub affinity_timeout_s: Option<u32>,
    /// The Service's health-check annotations (the agent applies its defaults).
    pub health: crate::health::spec::HealthAnnotations,
    /// Every backend is down and all are kept (set by the health filter, not by the
    /// translation).
    pub fail_open: bool,
    /// Endpoints that are serving and terminating (graceful shutdown): their existing
    /// flows, UDP included, drain rather than move.
    pub terminating: Vec<(IpAddr, u16)>,
}

impl ServiceSpec {
    /// A plain service: these frontends and backends, no affinity, no health-check
    /// annotations, no terminating endpoints.
    pub fn new(proto: Proto, frontends: BTreeSet<Frontend>, backends: Vec<Backend>) -> Self {
        Self {
            proto,
            frontends,
            backends,
            affinity_timeout_s: None,
            health: Default::default(),
            fail_open: false,
            terminating: Vec::new(),
        }
    }

    pub fn family(&self) -> Option<Family> {
        self.frontends.first().map(|f| Family::of(&f.ip))
    }
}

/// The entries of `map` translated from the Kubernetes object `namespace/name`: adjacent in
/// the map's order, so found by a range rather than a scan.
pub fn object_range<'a, V>(
    map: &'a BTreeMap<ServiceName, V>,
    namespace: &'a str,
    name: &'a str,
) -> impl Iterator<Item = (&'a ServiceName, &'a V)> + 'a {
    let first = ServiceName {
        namespace: namespace.to_string(),
        name: name.to_string(),
        port: String::new(),
        family: Family(0),
        scope: Scope::All,
    };
    map.range(first..)
        .take_while(move |(k, _)| k.namespace == namespace && k.name == name)
}

/// All services the datapath should serve.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub services: BTreeMap<ServiceName, ServiceSpec>,
}

impl Desired {
    /// Replaces everything translated from the Kubernetes Service `namespace/name`.
    ///
    /// The entries of one Service are adjacent in the map's order (namespace, then name):
    /// they are found by a range, not by a scan of every service.
    pub fn replace_object(
        &mut self,
        namespace: &str,
        name: &str,
        services: impl IntoIterator<Item = (ServiceName, ServiceSpec)>,
    ) {
        let stale: Vec<ServiceName> = object_range(&self.services, namespace, name)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.services.remove(&k);
        }
        self.services.extend(services);
    }

    pub fn frontend_count(&self) -> usize {
        self.services.values().map(|s| s.frontends.len()).sum()
    }

    pub fn backend_count(&self) -> usize {
        self.services.values().map(|s| s.backends.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ns: &str, name: &str, port: &str) -> (ServiceName, ServiceSpec) {
        (
            ServiceName {
                namespace: ns.into(),
                name: name.into(),
                port: port.into(),
                family: Family::V4,
                scope: Scope::All,
            },
            ServiceSpec::new(Proto::TCP, BTreeSet::new(), vec![]),
        )
    }

    #[test]
    fn replace_object_touches_only_that_object() {
        let mut d = Desired::default();
        d.services.extend([
            entry("a", "web", "80"),
            entry("a", "web", "443"),
            entry("a", "webx", "80"),
            entry("b", "web", "80"),
        ]);
        d.replace_object("a", "web", [entry("a", "web", "8080")]);
        let names: Vec<String> = d
            .services
            .keys()
            .map(|k| format!("{}/{}:{}", k.namespace, k.name, k.port))
            .collect();
        assert_eq!(names, ["a/web:8080", "a/webx:80", "b/web:80"]);
    }
}
