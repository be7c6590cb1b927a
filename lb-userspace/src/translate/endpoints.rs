//! EndpointSlices, read for the translation: which endpoint addresses serve a Service
//! port, on which target port, under which conditions and topology hints; and the
//! validation of a slice.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::{
    core::v1::ServicePort,
    discovery::v1::{Endpoint, EndpointSlice},
};
use lb_common::{Family, Proto};

use super::{DEFAULT_NAMESPACE, NodeInfo, Rejection, TranslateError};
use crate::model::Backend;

/// An endpoint address with what the policies look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Candidate {
    pub(super) backend: Backend,
    ready: bool,
    pub(super) serving_terminating: bool,
    node: Option<String>,
    /// Zones the endpoint is hinted for; None: no hints.
    zones: Option<BTreeSet<String>>,
    /// Nodes the endpoint is hinted for (`trafficDistribution: PreferSameNode`); None: no
    /// hints.
    nodes: Option<BTreeSet<String>>,
}

/// Every endpoint address of `family` that serves `port`, with its conditions.
pub(super) fn candidates(
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
            let hints = ep.hints.as_ref();
            // An empty hint list is no hint, as for kube-proxy.
            let zones: Option<BTreeSet<String>> = hints
                .and_then(|h| h.for_zones.as_ref())
                .map(|zs| zs.iter().map(|z| z.name.clone()).collect())
                .filter(|zs: &BTreeSet<String>| !zs.is_empty());
            let nodes: Option<BTreeSet<String>> = hints
                .and_then(|h| h.for_nodes.as_ref())
                .map(|ns| ns.iter().map(|n| n.name.clone()).collect())
                .filter(|ns: &BTreeSet<String>| !ns.is_empty());
            // The first address is the endpoint's (the API: consumers use the first;
            // kube-proxy reads only it).
            if let Some(addr) = ep.addresses.first() {
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
                    zones,
                    nodes,
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

/// `ready` (unset: true), `serving` (unset: true, as kube-proxy reads it; the API
/// documentation says to defer to `ready`, see the module docs), `terminating` (unset:
/// false).
fn conditions(ep: &Endpoint) -> (bool, bool, bool) {
    let c = ep.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let serving = c.and_then(|c| c.serving).unwrap_or(true);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    (ready, serving, terminating)
}

/// The backends that take new flows: the ready ones, else the serving-terminating ones.
fn usable<'a>(candidates: impl Iterator<Item = &'a Candidate> + Clone) -> Vec<Backend> {
    let ready: Vec<Backend> = candidates
        .clone()
        .filter(|c| c.ready)
        .map(|c| c.backend)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    candidates
        .filter(|c| c.serving_terminating)
        .map(|c| c.backend)
        .collect()
}

/// How many endpoints of the Service are local and usable (this node's ready ones, else
/// its serving-terminating ones), counted by address over every slice: what a
/// `healthCheckNodePort` reports (kube-proxy's service health server).
pub(super) fn local_endpoint_count(slices: &[&EndpointSlice], node: &NodeInfo) -> usize {
    let Some(name) = node.name.as_deref() else {
        return 0;
    };
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices {
        for ep in &slice.endpoints {
            if ep.node_name.as_deref() != Some(name) {
                continue;
            }
            let Some(addr) = ep.addresses.first() else {
                continue;
            };
            let (is_ready, serving, is_terminating) = conditions(ep);
            if is_ready {
                ready.insert(addr.clone());
            } else if serving && is_terminating {
                terminating.insert(addr.clone());
            }
        }
    }
    if ready.is_empty() {
        terminating.len()
    } else {
        ready.len()
    }
}

/// The backends of a Local traffic policy: this node's ready endpoints, else its
/// serving-terminating ones (kube-proxy's `localEndpoints`).
pub(super) fn local(candidates: &[Candidate], node: &NodeInfo) -> Vec<Backend> {
    usable(
        candidates
            .iter()
            .filter(|c| node.name.is_some() && c.node == node.name),
    )
}

/// The topology the hints select, decided over the ready endpoints only (kube-proxy's
/// `topologyModeFromHints`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topology {
    /// Every endpoint.
    Any,
    /// Every ready endpoint has node hints and one names this node: those.
    SameNode,
    /// Every ready endpoint has zone hints and one names this node's zone: those.
    SameZone,
}

fn topology(candidates: &[Candidate], node: &NodeInfo) -> Topology {
    let ready: Vec<&Candidate> = candidates.iter().filter(|c| c.ready).collect();
    if ready.is_empty() {
        return Topology::Any;
    }
    let hinted = |hints: fn(&Candidate) -> Option<&BTreeSet<String>>, mine: Option<&String>| {
        ready.iter().all(|c| hints(c).is_some())
            && mine.is_some_and(|m| {
                ready
                    .iter()
                    .any(|c| hints(c).is_some_and(|h| h.contains(m)))
            })
    };
    if hinted(|c| c.nodes.as_ref(), node.name.as_ref()) {
        Topology::SameNode
    } else if hinted(|c| c.zones.as_ref(), node.zone.as_ref()) {
        Topology::SameZone
    } else {
        Topology::Any
    }
}

/// The backends of a Cluster traffic policy (kube-proxy's `clusterEndpoints`): the ready
/// endpoints the topology allows; when there are none, every serving-terminating endpoint,
/// whatever the topology (the topology was already dropped unless some ready endpoint
/// fits it, so none is ready anywhere then).
pub(super) fn cluster(candidates: &[Candidate], node: &NodeInfo) -> Vec<Backend> {
    let mode = topology(candidates, node);
    let allowed = |c: &Candidate| match mode {
        Topology::Any => true,
        Topology::SameNode => c
            .nodes
            .as_ref()
            .is_some_and(|n| node.name.as_ref().is_some_and(|m| n.contains(m))),
        Topology::SameZone => c
            .zones
            .as_ref()
            .is_some_and(|z| node.zone.as_ref().is_some_and(|m| z.contains(m))),
    };
    let ready: Vec<Backend> = candidates
        .iter()
        .filter(|c| c.ready && allowed(c))
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

/// The port number endpoints of `slice` serve Service port `port` on (see the module docs).
fn target_port(port: &ServicePort, proto: Proto, slice: &EndpointSlice) -> Option<u16> {
    let ports = slice.ports.as_deref()?;
    let same_proto = |p: &&k8s_openapi::api::discovery::v1::EndpointPort| {
        p.protocol.as_deref().unwrap_or("TCP") == if proto == Proto::TCP { "TCP" } else { "UDP" }
    };
    // By the Service port's name only, as kube-proxy matches them (the endpoint
    // controller names each slice port after its Service port).
    let service_port_name = port.name.as_deref().unwrap_or("");
    let by_name = ports
        .iter()
        .filter(same_proto)
        .find(|p| p.name.as_deref().unwrap_or("") == service_port_name)?;
    // A slice port without a number (or 0) is ignored, as kube-proxy does: the Service
    // port has no endpoints from this slice.
    by_name
        .port
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n != 0)
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
        if let Some(n) = p.port
            && !(1..=65535).contains(&n)
        {
            return Err(err(format!("ports[{i}].port: {n} is not a valid port")));
        }
    }
    Ok(())
}
