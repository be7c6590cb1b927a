//! From Kubernetes objects to the desired state: the one translation both sources (the API
//! server and manifest files) go through. Every rule below has a golden test
//! (`testdata/golden/`).
//!
//! Frontends
//! - ClusterIPs (`clusterIPs`, or `clusterIP`): the in-cluster frontends.
//! - `externalIPs`, `status.loadBalancer.ingress[].ip` (not those with `ipMode: Proxy`,
//!   whose traffic must reach the load balancer: kube-proxy skips them too), and, for
//!   NodePort and LoadBalancer Services, `nodePort` on this node's NodePort addresses
//!   (its Node's InternalIP and ExternalIP addresses, as `--nodeport-addresses` selects
//!   them: all, `primary`, or CIDRs): the external frontends.
//! - Only in the Service's address families (`ipFamilies`, else those of its cluster IPs;
//!   both for a Service without any): addresses of another family are reported and
//!   skipped, as kube-proxy does.
//! - Headless (`clusterIP: None`) and ExternalName Services are not load-balanced, nor
//!   are Services labelled `service.kubernetes.io/service-proxy-name` (another proxy's),
//!   unless the label names this agent's `--service-proxy-name` (then only those).
//! - Every TCP or UDP port; other protocols (SCTP) are reported as unsupported and
//!   skipped.
//!
//! Backends, per Service port and address family (EndpointSlices labelled
//! `kubernetes.io/service-name` in the Service's namespace, of that `addressType`), as
//! kube-proxy reads them (pkg/proxy: endpointslicecache.go, topology.go)
//! - The target port is the number of the slice port named like the Service port (the
//!   endpoint controller resolved a named `targetPort` there); a slice port without a
//!   number is ignored: no endpoints from that slice.
//! - An endpoint is its first address (the endpoint controller writes exactly one).
//! - Conditions: `ready` (unset: true) endpoints take new flows; when none is ready,
//!   `serving` (unset: true, as kube-proxy reads it; the API reference says to defer to
//!   `ready`, but the endpoint controller always sets it, and matching kube-proxy keeps a
//!   cluster's behaviour unchanged when xlb replaces it) and `terminating` ones do; other
//!   endpoints take none. Established connections are never cut by the translation: the
//!   datapath's connection table keeps them on their backend.
//! - `internalTrafficPolicy: Local` limits the in-cluster frontends, and
//!   `externalTrafficPolicy: Local` the external ones, to endpoints whose `nodeName` is
//!   this node (ready first, then serving-terminating, among those); with no such
//!   endpoint the frontends drop, as kube-proxy's do.
//! - Topology, for Cluster policies, decided over the ready endpoints only: when every
//!   ready endpoint has node hints (`hints.forNodes`, from `trafficDistribution:
//!   PreferSameNode`) and one names this node, the ready endpoints hinted for this node;
//!   else when every ready endpoint has zone hints and one names this node's zone, the
//!   ready endpoints hinted for this zone; else every ready endpoint. Hints are used
//!   whenever they are there (the EndpointSlice controller decides, from the Service's
//!   annotation or `trafficDistribution`, whether to write them). With no ready endpoint
//!   at all, every serving-terminating endpoint, whatever the topology.
//! - Weights: the Service annotation [`WEIGHTS_ANNOTATION`] gives endpoints, by pod name
//!   (the endpoint's `targetRef`) or by address, a Maglev weight (default 1); weight 0
//!   takes no new flows.
//! - `sessionAffinity: ClientIP`: new flows of a client go to its previous backend while
//!   within `timeoutSeconds` (default 3 h) of its last new flow.
//!
//! When the in-cluster and external frontends end up with the same backends, one datapath
//! service serves both; otherwise each set gets its own.
//!
//! [`service`] reads a Service's spec (frontends, families, policies); [`endpoints`] its
//! EndpointSlices (conditions, topology, target ports).

mod endpoints;
mod service;

pub use endpoints::validate_slice;
use service::Shape;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

use crate::model::{Desired, ServiceName, ServiceSpec};

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Namespace of objects that do not name one (as `kubectl apply` does).
pub const DEFAULT_NAMESPACE: &str = "default";
/// Service annotation with endpoint weights: comma-separated `key=weight`, where `key` is
/// a pod name (the endpoint's `targetRef.name`) or an endpoint address, and `weight` an
/// integer 0..=1000. Unlisted endpoints weigh 1; weight 0 takes no new flows.
pub const WEIGHTS_ANNOTATION: &str = "xlb.dev/endpoint-weights";
/// Services labelled with it are handled by the proxy it names, not by xlb (as for
/// kube-proxy).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Node label holding its zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
const DEFAULT_AFFINITY_TIMEOUT_S: i32 = 10_800;
const MAX_WEIGHT: u32 = 1000;

/// Why an object was rejected. The object is skipped; everything else is still served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {namespace}/{name}: {reason}")]
pub struct TranslateError {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    #[source]
    pub reason: Rejection,
}

/// What is wrong with a rejected object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A field that cannot be used (the message names it).
    #[error("{0}")]
    Field(String),
    /// An invalid `xlb.dev/health-check*` annotation.
    #[error(transparent)]
    HealthCheck(#[from] crate::health::AnnotationError),
}

/// What the translation needs to know about the node it runs on (and the proxy it is).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: Option<String>,
    /// Addresses NodePorts are served on.
    pub addresses: Vec<IpAddr>,
    pub zone: Option<String>,
    /// `--service-proxy-name`: serve the Services labelled
    /// `service.kubernetes.io/service-proxy-name` with it; without it, the Services no
    /// proxy is named for.
    pub proxy_name: Option<String>,
}

/// Which of the node's addresses serve NodePorts (`--nodeport-addresses`, kube-proxy's
/// flag of the same name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every InternalIP and ExternalIP address of the Node.
    #[default]
    All,
    /// The node's primary address of each family: its first InternalIP (else its first
    /// ExternalIP) of that family, as kube-proxy's `primary`.
    Primary,
    /// The node's addresses within these ranges.
    Cidrs(Vec<ipnet::IpNet>),
}

impl NodePortAddresses {
    /// Parses the flag's values: `primary`, or CIDRs (each may be comma-separated).
    pub fn parse(values: &[String]) -> Result<Self, String> {
        let items: Vec<&str> = values
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        if items.is_empty() {
            return Ok(Self::All);
        }
        if items.contains(&"primary") {
            if items.len() > 1 {
                return Err("`primary` cannot be combined with CIDRs".into());
            }
            return Ok(Self::Primary);
        }
        items
            .iter()
            .map(|c| {
                c.parse::<ipnet::IpNet>().map(|n| n.trunc()).map_err(|_| {
                    format!("{c:?} is neither `primary` nor a CIDR such as 10.0.0.0/8")
                })
            })
            .collect::<Result<_, _>>()
            .map(Self::Cidrs)
    }

    /// The NodePort addresses among a node's `(type, address)` pairs, in their order.
    fn select(&self, addresses: &[(String, IpAddr)]) -> Vec<IpAddr> {
        let typed = |t: &'static str| {
            addresses
                .iter()
                .filter(move |(k, _)| k == t)
                .map(|(_, a)| *a)
        };
        let all = || typed("InternalIP").chain(typed("ExternalIP"));
        let mut out: Vec<IpAddr> = match self {
            Self::All => all().collect(),
            Self::Primary => [false, true]
                .into_iter()
                .filter_map(|v6| all().find(|a| a.is_ipv6() == v6))
                .collect(),
            Self::Cidrs(nets) => all()
                .filter(|a| nets.iter().any(|n| n.contains(a)))
                .collect(),
        };
        out.sort();
        out.dedup();
        out
    }

    /// The NodePort addresses among plain addresses (`--node-address`).
    pub fn select_plain(&self, addresses: &[IpAddr]) -> Vec<IpAddr> {
        let typed: Vec<(String, IpAddr)> = addresses
            .iter()
            .map(|a| ("InternalIP".to_string(), *a))
            .collect();
        self.select(&typed)
    }
}

impl NodeInfo {
    /// From the Node object: its NodePort addresses (of its InternalIP and ExternalIP
    /// addresses, as `nodeport` selects), the zone label.
    pub fn from_node(node: &Node, nodeport: &NodePortAddresses) -> Self {
        let typed: Vec<(String, IpAddr)> = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|a| Some((a.type_.clone(), a.address.parse().ok()?)))
            .collect();
        Self {
            name: node.metadata.name.clone(),
            addresses: nodeport.select(&typed),
            proxy_name: None,
            zone: node
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(ZONE_LABEL))
                .cloned(),
        }
    }
}

/// What one Service translated to, and what of it was skipped.
#[derive(Debug, Default)]
pub struct Translated {
    pub services: Vec<(ServiceName, ServiceSpec)>,
    /// Parts skipped without rejecting the object (e.g. an SCTP port).
    pub warnings: Vec<String>,
}

/// A namespace and name.
pub type ObjectKey = (String, String);

/// The key of a Service, with the default namespace applied.
pub fn service_key(svc: &Service) -> ObjectKey {
    (
        svc.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
        svc.metadata.name.clone().unwrap_or_default(),
    )
}

/// The Service an EndpointSlice belongs to, if it is labelled with one.
pub fn slice_owner(slice: &EndpointSlice) -> Option<ObjectKey> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((
        slice
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
        name.clone(),
    ))
}

/// Translates every Service against the slices that belong to it.
pub fn translate_all<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    node: &NodeInfo,
) -> (Desired, Vec<TranslateError>, Vec<String>) {
    let mut by_owner: BTreeMap<ObjectKey, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        if let Some(owner) = slice_owner(slice) {
            by_owner.entry(owner).or_default().push(slice);
        }
    }
    let mut desired = Desired::default();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for svc in services {
        let key = service_key(svc);
        let slices = by_owner.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        match translate_service(svc, slices, node) {
            Ok(t) => {
                desired.services.extend(t.services);
                warnings.extend(t.warnings);
            }
            Err(e) => errors.push(e),
        }
    }
    (desired, errors, warnings)
}

/// A Service's `healthCheckNodePort` (LoadBalancer with `externalTrafficPolicy: Local`)
/// and how many usable endpoints it has on this node: cloud load balancers probe the
/// port on every node and send traffic only to nodes that answer 200.
pub fn health_check(
    svc: &Service,
    slices: &[&EndpointSlice],
    node: &NodeInfo,
) -> Option<(u16, usize)> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() != Some("LoadBalancer")
        || spec.external_traffic_policy.as_deref() != Some("Local")
    {
        return None;
    }
    let port = u16::try_from(spec.health_check_node_port?)
        .ok()
        .filter(|p| *p != 0)?;
    Some((port, endpoints::local_endpoint_count(slices, node)))
}

/// Translates one Service and its EndpointSlices.
pub fn translate_service(
    svc: &Service,
    slices: &[&EndpointSlice],
    node: &NodeInfo,
) -> Result<Translated, TranslateError> {
    let (namespace, name) = service_key(svc);
    let reject = |reason: Rejection| TranslateError {
        kind: "Service",
        namespace: namespace.clone(),
        name: name.clone(),
        reason,
    };
    let mut out = Translated::default();
    let Some(service) = Shape::of(
        svc,
        &namespace,
        &name,
        node.proxy_name.as_deref(),
        &mut out.warnings,
    )
    .map_err(reject)?
    else {
        return Ok(out);
    };
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or(&[]);
    let mut seen = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let Some(port) = service
            .port(i, port, &mut seen, &mut out.warnings)
            .map_err(reject)?
        else {
            continue;
        };
        for family in service.families.iter().copied() {
            out.services
                .extend(service.services(&port, family, slices, node));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{NodeInfo, NodePortAddresses, translate_service};

    #[test]
    fn a_proxy_name_selects_the_services_labelled_for_it_and_only_those() {
        let service = |label: Option<&str>| -> k8s_openapi::api::core::v1::Service {
            let mut v = serde_json::json!({
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]},
            });
            if let Some(l) = label {
                v["metadata"]["labels"] =
                    serde_json::json!({"service.kubernetes.io/service-proxy-name": l});
            }
            serde_json::from_value(v).unwrap()
        };
        let served = |label: Option<&str>, proxy: Option<&str>| {
            let node = NodeInfo {
                proxy_name: proxy.map(str::to_string),
                ..Default::default()
            };
            !translate_service(&service(label), &[], &node)
                .unwrap()
                .services
                .is_empty()
        };
        // As kube-proxy: unlabelled Services only.
        assert!(served(None, None));
        assert!(!served(Some("xlb"), None));
        // Named: exactly the Services labelled with the name.
        assert!(served(Some("xlb"), Some("xlb")));
        assert!(!served(None, Some("xlb")));
        assert!(!served(Some("other"), Some("xlb")));
    }

    #[test]
    fn nodeport_addresses_flag() {
        let p = |v: &[&str]| {
            NodePortAddresses::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(p(&[]), Ok(NodePortAddresses::All));
        assert_eq!(p(&["primary"]), Ok(NodePortAddresses::Primary));
        let Ok(NodePortAddresses::Cidrs(nets)) = p(&["10.0.0.0/8, fd00::/8", "192.0.2.7/24"])
        else {
            panic!("CIDRs");
        };
        // Host bits are dropped, as kube-proxy's net.ParseCIDR does.
        assert_eq!(nets[2].to_string(), "192.0.2.0/24");
        assert_eq!(nets.len(), 3);
        let err = p(&["10.0.0.0/8,primary"]).unwrap_err();
        assert!(err.contains("primary"), "{err}");
        let err = p(&["10.0.0.0/33"]).unwrap_err();
        assert!(err.contains("\"10.0.0.0/33\""), "{err}");
    }
}
