//! From Kubernetes objects to the desired state: the one translation both sources (the API
//! server and manifest files) go through. Every rule below has a golden test
//! (`testdata/golden/`).
//!
//! Frontends
//! - ClusterIPs (`clusterIPs`, or `clusterIP`): the in-cluster frontends.
//! - `externalIPs`, `status.loadBalancer.ingress[].ip`, and, for NodePort and
//!   LoadBalancer Services, `nodePort` on each of this node's addresses (its Node's
//!   InternalIP and ExternalIP addresses): the external frontends.
//! - Only in the Service's address families (`ipFamilies`, else those of its cluster IPs;
//!   both for a Service without any): addresses of another family are reported and
//!   skipped, as kube-proxy does.
//! - Headless (`clusterIP: None`) and ExternalName Services are not load-balanced, nor
//!   are Services labelled `service.kubernetes.io/service-proxy-name` (another proxy's).
//! - Every TCP or UDP port; other protocols are reported and skipped.
//!
//! Backends, per Service port and address family (EndpointSlices labelled
//! `kubernetes.io/service-name` in the Service's namespace, of that `addressType`)
//! - The target port is the slice port of the Service port's name (the endpoint
//!   controller resolved a named `targetPort` there); a slice port named like a string
//!   `targetPort` also matches (hand-written slices); a slice port without a number ("all
//!   ports") takes a numeric `targetPort`.
//! - Conditions, as kube-proxy applies them: `ready` endpoints (unset means ready) take new
//!   flows; when none is ready, `serving` and `terminating` ones do; other endpoints take
//!   none. Established connections are never cut by the translation: the datapath's
//!   connection table keeps them on their backend.
//! - `internalTrafficPolicy: Local` limits the in-cluster frontends, and
//!   `externalTrafficPolicy: Local` the external ones, to endpoints whose `nodeName` is
//!   this node (ready first, then serving-terminating, among those); with no such
//!   endpoint the frontends drop, as kube-proxy's do.
//! - Topology: for Cluster policies, when the Service asks for topology-aware routing
//!   (`service.kubernetes.io/topology-mode` or the older `...topology-aware-hints`
//!   annotation, set and not `disabled`, or `spec.trafficDistribution`), every usable
//!   endpoint carries zone hints and one of them names this node's zone, only the
//!   endpoints hinted for this zone are used. Otherwise hints are ignored.
//! - Weights: the Service annotation [`WEIGHTS_ANNOTATION`] gives endpoints, by pod name
//!   (the endpoint's `targetRef`) or by address, a Maglev weight (default 1); weight 0
//!   takes no new flows.
//! - `sessionAffinity: ClientIP`: new flows of a client go to its previous backend while
//!   within `timeoutSeconds` (default 3 h) of its last new flow.
//!
//! When the in-cluster and external frontends end up with the same backends, one datapath
//! service serves both; otherwise each set gets its own.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::{
    api::{
        core::v1::{Node, Service, ServicePort, ServiceSpec as K8sServiceSpec},
        discovery::v1::{Endpoint, EndpointSlice},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use lb_common::{Family, Proto};

use crate::model::{Backend, Desired, Frontend, Scope, ServiceName, ServiceSpec};

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
const TOPOLOGY_MODE_ANNOTATION: &str = "service.kubernetes.io/topology-mode";
const TOPOLOGY_HINTS_ANNOTATION: &str = "service.kubernetes.io/topology-aware-hints";
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

/// What the translation needs to know about the node it runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: Option<String>,
    /// Addresses NodePorts are served on.
    pub addresses: Vec<IpAddr>,
    pub zone: Option<String>,
}

impl NodeInfo {
    /// From the Node object: InternalIP and ExternalIP addresses, the zone label.
    pub fn from_node(node: &Node) -> Self {
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect::<BTreeSet<IpAddr>>()
            .into_iter()
            .collect();
        Self {
            name: node.metadata.name.clone(),
            addresses,
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

fn policy_is_local(policy: Option<&String>) -> bool {
    policy.is_some_and(|p| p == "Local")
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
    let Some(service) = Shape::of(svc, &namespace, &name, &mut out.warnings).map_err(reject)?
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

/// What a Service's spec says, beyond its ports: its frontends' addresses, families and
/// the policies its backends are chosen by.
struct Shape<'a> {
    namespace: &'a str,
    name: &'a str,
    cluster_vips: Vec<IpAddr>,
    external_vips: Vec<IpAddr>,
    families: Vec<Family>,
    /// NodePort or LoadBalancer: node ports are served.
    node_ports: bool,
    affinity_timeout_s: Option<u32>,
    health: crate::health::HealthAnnotations,
    weights: BTreeMap<String, u32>,
    topology: bool,
    internal_local: bool,
    external_local: bool,
}

/// One Service port, validated.
struct Port<'a> {
    port: &'a ServicePort,
    number: u16,
    proto: Proto,
    node_port: Option<u16>,
    /// The port's name, or its number when unnamed.
    id: String,
}

impl<'a> Shape<'a> {
    /// The Service's shape; `None` when it is not load-balanced (ExternalName, headless,
    /// another proxy's).
    fn of(
        svc: &'a Service,
        namespace: &'a str,
        name: &'a str,
        warnings: &mut Vec<String>,
    ) -> Result<Option<Self>, Rejection> {
        let err = |reason: String| Rejection::Field(reason);
        if name.is_empty() {
            return Err(err("metadata.name is missing".into()));
        }
        let Some(spec) = svc.spec.as_ref() else {
            return Err(err("spec is missing".into()));
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            return Ok(None);
        }
        if svc
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL))
        {
            // Delegated to another proxy.
            return Ok(None);
        }
        let cluster_ips: Vec<&String> = match (&spec.cluster_ips, &spec.cluster_ip) {
            (Some(ips), _) if !ips.is_empty() => ips.iter().collect(),
            (_, Some(ip)) => vec![ip],
            _ => vec![],
        };
        if cluster_ips.iter().any(|ip| ip.as_str() == "None") {
            // Headless: clients resolve the endpoints directly; nothing to balance.
            return Ok(None);
        }
        let parse = |field: &str, ips: Vec<&String>| -> Result<Vec<IpAddr>, Rejection> {
            ips.into_iter()
                .map(|ip| {
                    ip.parse()
                        .map_err(|_| err(format!("{field}: {ip:?} is not an IP address")))
                })
                .collect()
        };
        let cluster_vips = parse("clusterIPs", cluster_ips)?;
        let mut external_vips =
            parse("externalIPs", spec.external_ips.iter().flatten().collect())?;
        let ingress: Vec<&String> = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_ref())
            .collect();
        external_vips.extend(parse("status.loadBalancer.ingress", ingress)?);
        let families = families(spec, &cluster_vips)?;
        for ip in cluster_vips.iter().chain(&external_vips) {
            if !families.contains(&Family::of(ip)) {
                warnings.push(format!(
                    "Service {namespace}/{name}: {ip} skipped: the Service has no {} family",
                    Family::of(ip).name()
                ));
            }
        }
        Ok(Some(Self {
            namespace,
            name,
            cluster_vips,
            external_vips,
            families,
            node_ports: matches!(
                spec.type_.as_deref(),
                Some("NodePort") | Some("LoadBalancer")
            ),
            affinity_timeout_s: session_affinity(spec).map_err(err)?,
            health: crate::health::HealthAnnotations::parse(svc.metadata.annotations.as_ref())?,
            weights: weights(svc).map_err(err)?,
            topology: wants_topology(svc, spec),
            internal_local: policy_is_local(spec.internal_traffic_policy.as_ref()),
            external_local: policy_is_local(spec.external_traffic_policy.as_ref()),
        }))
    }

    /// Validates port `i`; `None` (with a warning) for a protocol xlb does not balance.
    fn port(
        &self,
        i: usize,
        port: &'a ServicePort,
        seen: &mut BTreeSet<(u16, Proto)>,
        warnings: &mut Vec<String>,
    ) -> Result<Option<Port<'a>>, Rejection> {
        let (namespace, name) = (self.namespace, self.name);
        let err = |reason: String| Rejection::Field(reason);
        let number = u16::try_from(port.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| err(format!("ports[{i}].port: {} is not a valid port", port.port)))?;
        let proto = match port.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Proto::TCP,
            "UDP" => Proto::UDP,
            other => {
                warnings.push(format!(
                    "Service {namespace}/{name}: port {number}/{other} skipped: only TCP and UDP are load-balanced"
                ));
                return Ok(None);
            }
        };
        if !seen.insert((number, proto)) {
            return Err(err(format!(
                "ports[{i}]: port {number}/{} is listed twice",
                proto.name()
            )));
        }
        let node_port = match (self.node_ports, port.node_port) {
            (true, Some(p)) => Some(u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(
                || err(format!("ports[{i}].nodePort: {p} is not a valid port")),
            )?),
            _ => None,
        };
        let id = port
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| number.to_string());
        Ok(Some(Port {
            port,
            number,
            proto,
            node_port,
            id,
        }))
    }

    /// The datapath services of one port and family: one for all its frontends, or one
    /// for the in-cluster and one for the external frontends when the traffic policies
    /// give them different backends.
    fn services(
        &self,
        port: &Port<'_>,
        family: Family,
        slices: &[&EndpointSlice],
        node: &NodeInfo,
    ) -> Vec<(ServiceName, ServiceSpec)> {
        let of_family = |ips: &[IpAddr], p: u16| -> BTreeSet<Frontend> {
            ips.iter()
                .filter(|ip| Family::of(ip) == family)
                .map(|ip| Frontend { ip: *ip, port: p })
                .collect()
        };
        let internal = of_family(&self.cluster_vips, port.number);
        let mut external = of_family(&self.external_vips, port.number);
        if let Some(np) = port.node_port {
            external.extend(of_family(&node.addresses, np));
        }
        if internal.is_empty() && external.is_empty() {
            return Vec::new();
        }
        let candidates = candidates(port.port, port.proto, family, slices, &self.weights);
        let terminating: Vec<(IpAddr, u16)> = candidates
            .iter()
            .filter(|c| c.serving_terminating)
            .map(|c| (c.backend.ip, c.backend.port))
            .collect();
        let cluster_set = if self.topology {
            by_zone(&candidates, node)
        } else {
            candidates.clone()
        };
        let backends_for = |local_only: bool| {
            if local_only {
                usable(local(&candidates, node))
            } else {
                usable(cluster_set.clone())
            }
        };
        let internal_backends = backends_for(self.internal_local);
        let external_backends = backends_for(self.external_local);
        let name_for = |scope| ServiceName {
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
            port: port.id.clone(),
            family,
            scope,
        };
        let spec_for = |frontends: BTreeSet<Frontend>, backends: Vec<Backend>| ServiceSpec {
            proto: port.proto,
            frontends,
            backends,
            affinity_timeout_s: self.affinity_timeout_s,
            health: self.health.clone(),
            fail_open: false,
            terminating: terminating.clone(),
        };
        if external.is_empty() || internal.is_empty() || internal_backends == external_backends {
            let backends = if internal.is_empty() {
                external_backends
            } else {
                internal_backends
            };
            let all: BTreeSet<Frontend> = internal.union(&external).copied().collect();
            vec![(name_for(Scope::All), spec_for(all, backends))]
        } else {
            vec![
                (name_for(Scope::Internal), spec_for(internal, internal_backends)),
                (name_for(Scope::External), spec_for(external, external_backends)),
            ]
        }
    }
}

/// The Service's address families: `ipFamilies`, else those of its cluster IPs, else
/// (a hand-written Service without cluster IPs) both.
fn families(spec: &K8sServiceSpec, cluster_vips: &[IpAddr]) -> Result<Vec<Family>, Rejection> {
    match &spec.ip_families {
        Some(names) if !names.is_empty() => names
            .iter()
            .map(|f| match f.as_str() {
                "IPv4" => Ok(Family::V4),
                "IPv6" => Ok(Family::V6),
                other => Err(Rejection::Field(format!(
                    "ipFamilies: {other:?} is neither IPv4 nor IPv6"
                ))),
            })
            .collect(),
        _ if !cluster_vips.is_empty() => Ok([Family::V4, Family::V6]
            .into_iter()
            .filter(|f| cluster_vips.iter().any(|ip| Family::of(ip) == *f))
            .collect()),
        _ => Ok(vec![Family::V4, Family::V6]),
    }
}

/// The `sessionAffinity: ClientIP` timeout.
fn session_affinity(spec: &K8sServiceSpec) -> Result<Option<u32>, String> {
    match spec.session_affinity.as_deref() {
        None | Some("None") => Ok(None),
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_S);
            if !(1..=86_400).contains(&t) {
                return Err(format!(
                    "sessionAffinityConfig.clientIP.timeoutSeconds: {t} is outside 1..=86400"
                ));
            }
            Ok(Some(t as u32))
        }
        Some(other) => Err(format!(
            "sessionAffinity: {other:?} is neither None nor ClientIP"
        )),
    }
}

/// The weights annotation, parsed (see [`WEIGHTS_ANNOTATION`]).
fn weights(svc: &Service) -> Result<BTreeMap<String, u32>, String> {
    let Some(text) = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(WEIGHTS_ANNOTATION))
    else {
        return Ok(BTreeMap::new());
    };
    let mut out = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (key, weight) = item.split_once('=').ok_or_else(|| {
            format!("annotation {WEIGHTS_ANNOTATION}: {item:?} is not key=weight")
        })?;
        let weight: u32 = weight.trim().parse().ok().filter(|w| *w <= MAX_WEIGHT).ok_or_else(|| {
            format!("annotation {WEIGHTS_ANNOTATION}: weight {weight:?} of {key:?} is not an integer 0..={MAX_WEIGHT}")
        })?;
        out.insert(key.trim().to_string(), weight);
    }
    Ok(out)
}

/// Whether the Service asks for topology-aware routing.
fn wants_topology(svc: &Service, spec: &K8sServiceSpec) -> bool {
    let annotations = svc.metadata.annotations.as_ref();
    let annotated = [TOPOLOGY_MODE_ANNOTATION, TOPOLOGY_HINTS_ANNOTATION]
        .iter()
        .any(|a| {
            annotations
                .and_then(|m| m.get(*a))
                .is_some_and(|v| !v.is_empty() && !v.eq_ignore_ascii_case("disabled"))
        });
    annotated || spec.traffic_distribution.is_some()
}

/// An endpoint address with what the policies look at.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Candidate {
    backend: Backend,
    ready: bool,
    serving_terminating: bool,
    node: Option<String>,
    /// Zones the endpoint is hinted for; None: no hints.
    zones: Option<BTreeSet<String>>,
}

/// Every endpoint address of `family` that serves `port`, with its conditions.
fn candidates(
    port: &ServicePort,
    proto: Proto,
    family: Family,
    slices: &[&EndpointSlice],
    weights: &BTreeMap<String, u32>,
) -> Vec<Candidate> {
    let address_type = if family == Family::V4 { "IPv4" } else { "IPv6" };
    let mut out: BTreeMap<(IpAddr, u16), Candidate> = BTreeMap::new();
    for slice in slices.iter().filter(|s| s.address_type == address_type) {
        let Some(target) = target_port(port, proto, slice) else {
            continue;
        };
        for ep in &slice.endpoints {
            let (ready, serving, terminating) = conditions(ep);
            let pod = ep.target_ref.as_ref().and_then(|r| r.name.clone());
            let zones = ep
                .hints
                .as_ref()
                .and_then(|h| h.for_zones.as_ref())
                .map(|zs| zs.iter().map(|z| z.name.clone()).collect());
            for addr in &ep.addresses {
                // Slices are validated when read; an unparsable address is skipped here.
                let Ok(ip) = addr.parse::<IpAddr>() else {
                    continue;
                };
                if Family::of(&ip) != family {
                    continue;
                }
                let weight = pod
                    .as_ref()
                    .and_then(|p| weights.get(p))
                    .or_else(|| weights.get(addr))
                    .copied()
                    .unwrap_or(1);
                let c = Candidate {
                    backend: Backend {
                        ip,
                        port: target,
                        weight,
                    },
                    ready,
                    serving_terminating: serving && terminating,
                    node: ep.node_name.clone(),
                    zones: zones.clone(),
                };
                // The same address in two slices: the ready one wins.
                match out.get(&(ip, target)) {
                    Some(existing) if existing.ready && !c.ready => {}
                    _ => {
                        out.insert((ip, target), c);
                    }
                }
            }
        }
    }
    out.into_values().collect()
}

/// `ready` (unset: ready), `serving` (unset: as ready), `terminating` (unset: false).
fn conditions(ep: &Endpoint) -> (bool, bool, bool) {
    let c = ep.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let serving = c.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    (ready, serving, terminating)
}

/// The backends that take new flows: the ready ones, else the serving-terminating ones.
fn usable(candidates: Vec<Candidate>) -> Vec<Backend> {
    let ready: Vec<Backend> = candidates
        .iter()
        .filter(|c| c.ready)
        .map(|c| c.backend)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    candidates
        .iter()
        .filter(|c| c.serving_terminating)
        .map(|c| c.backend)
        .collect()
}

/// The candidates on this node.
fn local(candidates: &[Candidate], node: &NodeInfo) -> Vec<Candidate> {
    candidates
        .iter()
        .filter(|c| node.name.is_some() && c.node == node.name)
        .cloned()
        .collect()
}

/// Topology-aware filtering (see the module docs): the candidates hinted for this node's
/// zone, when the hints can be used; all of them otherwise.
fn by_zone(candidates: &[Candidate], node: &NodeInfo) -> Vec<Candidate> {
    let Some(zone) = node.zone.as_ref() else {
        return candidates.to_vec();
    };
    let relevant: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.ready || c.serving_terminating)
        .collect();
    let complete = !relevant.is_empty() && relevant.iter().all(|c| c.zones.is_some());
    let mine: Vec<Candidate> = candidates
        .iter()
        .filter(|c| c.zones.as_ref().is_some_and(|z| z.contains(zone)))
        .cloned()
        .collect();
    if complete && mine.iter().any(|c| c.ready || c.serving_terminating) {
        mine
    } else {
        candidates.to_vec()
    }
}

/// The port number endpoints of `slice` serve Service port `port` on (see the module docs).
fn target_port(port: &ServicePort, proto: Proto, slice: &EndpointSlice) -> Option<u16> {
    let ports = slice.ports.as_deref()?;
    let same_proto = |p: &&k8s_openapi::api::discovery::v1::EndpointPort| {
        p.protocol.as_deref().unwrap_or("TCP") == if proto == Proto::TCP { "TCP" } else { "UDP" }
    };
    let service_port_name = port.name.as_deref().unwrap_or("");
    let by_name = ports
        .iter()
        .filter(same_proto)
        .find(|p| p.name.as_deref().unwrap_or("") == service_port_name)
        .or_else(|| match &port.target_port {
            Some(IntOrString::String(target)) => ports
                .iter()
                .filter(same_proto)
                .find(|p| p.name.as_deref() == Some(target)),
            _ => None,
        })?;
    match by_name.port {
        Some(n) => u16::try_from(n).ok().filter(|n| *n != 0),
        // "All ports": the target port must then be a number.
        None => match &port.target_port {
            Some(IntOrString::Int(n)) => u16::try_from(*n).ok().filter(|n| *n != 0),
            None => u16::try_from(port.port).ok(),
            Some(IntOrString::String(_)) => None,
        },
    }
}

/// Validates an EndpointSlice beyond what deserialisation checks. Returns why it cannot be
/// used; a slice of an address type we do not balance (FQDN) is not an error.
pub fn validate_slice(slice: &EndpointSlice) -> Result<(), TranslateError> {
    let namespace = slice
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
    let name = slice.metadata.name.clone().unwrap_or_default();
    let err = |reason: String| TranslateError {
        kind: "EndpointSlice",
        namespace: namespace.clone(),
        name: name.clone(),
        reason: Rejection::Field(reason),
    };
    if name.is_empty() {
        return Err(err("metadata.name is missing".into()));
    }
    let family = match slice.address_type.as_str() {
        "IPv4" => Family::V4,
        "IPv6" => Family::V6,
        "FQDN" => return Ok(()),
        other => {
            return Err(err(format!(
                "addressType: {other:?} is not IPv4, IPv6 or FQDN"
            )));
        }
    };
    for (i, ep) in slice.endpoints.iter().enumerate() {
        for addr in &ep.addresses {
            match addr.parse::<IpAddr>() {
                Ok(ip) if Family::of(&ip) == family => {}
                Ok(_) => {
                    return Err(err(format!(
                        "endpoints[{i}].addresses: {addr} is not an {} address",
                        slice.address_type
                    )));
                }
                Err(_) => {
                    return Err(err(format!(
                        "endpoints[{i}].addresses: {addr:?} is not an IP address"
                    )));
                }
            }
        }
    }
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        if let Some(n) = p.port {
            if !(1..=65535).contains(&n) {
                return Err(err(format!("ports[{i}].port: {n} is not a valid port")));
            }
        }
    }
    Ok(())
}
