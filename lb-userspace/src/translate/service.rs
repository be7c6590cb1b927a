//! A Service's spec, read for the translation: its frontends' addresses and families,
//! its ports, and the policies its backends are chosen by; and the datapath services of
//! each port and family.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::{
    core::v1::{Service, ServicePort, ServiceSpec as K8sServiceSpec},
    discovery::v1::EndpointSlice,
};
use lb_common::{Family, Proto};

use super::{
    DEFAULT_AFFINITY_TIMEOUT_S, MAX_WEIGHT, NodeInfo, Rejection, SERVICE_PROXY_NAME_LABEL,
    WEIGHTS_ANNOTATION,
    endpoints::{candidates, cluster, local},
};
use crate::model::{Backend, Frontend, Scope, ServiceName, ServiceSpec};

fn policy_is_local(policy: Option<&String>) -> bool {
    policy.is_some_and(|p| p == "Local")
}

/// What a Service's spec says, beyond its ports: its frontends' addresses, families and
/// the policies its backends are chosen by.
pub(super) struct Shape<'a> {
    namespace: &'a str,
    name: &'a str,
    cluster_vips: Vec<IpAddr>,
    external_vips: Vec<IpAddr>,
    pub(super) families: Vec<Family>,
    /// NodePort or LoadBalancer: node ports are served.
    node_ports: bool,
    affinity_timeout_s: Option<u32>,
    health: crate::health::HealthAnnotations,
    weights: BTreeMap<String, u32>,
    internal_local: bool,
    external_local: bool,
}

/// One Service port, validated.
pub(super) struct Port<'a> {
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
    pub(super) fn of(
        svc: &'a Service,
        namespace: &'a str,
        name: &'a str,
        proxy_name: Option<&str>,
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
        let proxy = svc
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL));
        if proxy.map(String::as_str) != proxy_name {
            // Another proxy's (or, with a proxy name, not labelled for this one).
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
        let mut external_vips = parse("externalIPs", spec.external_ips.iter().flatten().collect())?;
        let ingress: Vec<&String> = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            // `ipMode: Proxy`: the load balancer proxies, and traffic for this address
            // must reach it: kube-proxy programs nothing for such an ingress.
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
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
            internal_local: policy_is_local(spec.internal_traffic_policy.as_ref()),
            external_local: policy_is_local(spec.external_traffic_policy.as_ref()),
        }))
    }

    /// Validates port `i`; `None` (with a warning) for a protocol xlb does not balance.
    pub(super) fn port(
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
            .ok_or_else(|| {
                err(format!(
                    "ports[{i}].port: {} is not a valid port",
                    port.port
                ))
            })?;
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
            (true, Some(p)) => Some(
                u16::try_from(p)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| err(format!("ports[{i}].nodePort: {p} is not a valid port")))?,
            ),
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
    pub(super) fn services(
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
        let backends_for = |local_only: bool| {
            if local_only {
                local(&candidates, node)
            } else {
                cluster(&candidates, node)
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
                (
                    name_for(Scope::Internal),
                    spec_for(internal, internal_backends),
                ),
                (
                    name_for(Scope::External),
                    spec_for(external, external_backends),
                ),
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
