//! From Kubernetes objects to the desired state: the one translation both sources (the API
//! server and manifest files) go through.
//!
//! Rules implemented:
//! - A Service's VIPs are its `clusterIPs` (or `clusterIP`) and `externalIPs`; headless
//!   (`clusterIP: None`) and `ExternalName` Services are not load-balanced and are skipped.
//! - Each Service port becomes one datapath service per address family that has a VIP.
//! - Backends come from the EndpointSlices labelled `kubernetes.io/service-name: <name>` in
//!   the Service's namespace, of the matching `addressType`; an endpoint takes new flows
//!   when its `ready` condition is true or unset (the API's "unknown means ready").
//! - The target port of a Service port is the slice port of the same name (the endpoint
//!   controller has already resolved a named `targetPort` there); a slice port named like a
//!   string `targetPort` also matches (hand-written slices); a slice port without a number
//!   ("all ports") takes a numeric `targetPort`.
//! - Protocols other than TCP and UDP are reported and skipped.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use lb_common::{Family, Proto};

use crate::model::{Backend, Desired, Frontend, Scope, ServiceName, ServiceSpec};

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Namespace of objects that do not name one (as `kubectl apply` does).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Why an object was rejected. The object is skipped; everything else is still served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {namespace}/{name}: {reason}")]
pub struct TranslateError {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub reason: String,
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
        svc.metadata.namespace.clone().unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
        svc.metadata.name.clone().unwrap_or_default(),
    )
}

/// The Service an EndpointSlice belongs to, if it is labelled with one.
pub fn slice_owner(slice: &EndpointSlice) -> Option<ObjectKey> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((
        slice.metadata.namespace.clone().unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
        name.clone(),
    ))
}

/// Translates every Service against the slices that belong to it.
pub fn translate_all<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
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
        match translate_service(svc, slices) {
            Ok(t) => {
                desired.services.extend(t.services);
                warnings.extend(t.warnings);
            }
            Err(e) => errors.push(e),
        }
    }
    (desired, errors, warnings)
}

/// Translates one Service and its EndpointSlices.
pub fn translate_service(
    svc: &Service,
    slices: &[&EndpointSlice],
) -> Result<Translated, TranslateError> {
    let (namespace, name) = service_key(svc);
    let err = |reason: String| TranslateError {
        kind: "Service",
        namespace: namespace.clone(),
        name: name.clone(),
        reason,
    };
    if name.is_empty() {
        return Err(err("metadata.name is missing".into()));
    }
    let Some(spec) = svc.spec.as_ref() else {
        return Err(err("spec is missing".into()));
    };
    let mut out = Translated::default();
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(out);
    }

    let cluster_ips: Vec<&String> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.iter().collect(),
        (_, Some(ip)) => vec![ip],
        _ => vec![],
    };
    if cluster_ips.iter().any(|ip| ip.as_str() == "None") {
        // Headless: clients resolve the endpoints directly; nothing to balance.
        return Ok(out);
    }
    let mut vips = Vec::new();
    for (field, ips) in [("clusterIPs", cluster_ips), ("externalIPs", spec.external_ips.iter().flatten().collect())] {
        for ip in ips {
            let parsed: IpAddr =
                ip.parse().map_err(|_| err(format!("{field}: {ip:?} is not an IP address")))?;
            vips.push(parsed);
        }
    }
    if vips.is_empty() {
        out.warnings.push(format!(
            "Service {namespace}/{name}: no clusterIP or externalIPs, nothing to serve"
        ));
        return Ok(out);
    }
    let affinity_timeout_s = session_affinity(spec).map_err(err)?;

    let ports = spec.ports.as_deref().unwrap_or(&[]);
    let mut seen_ports = BTreeSet::new();
    for (i, port) in ports.iter().enumerate() {
        let number = u16::try_from(port.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| err(format!("ports[{i}].port: {} is not a valid port", port.port)))?;
        let proto = match port.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Proto::TCP,
            "UDP" => Proto::UDP,
            other => {
                out.warnings.push(format!(
                    "Service {namespace}/{name}: port {number}/{other} skipped: only TCP and UDP are load-balanced"
                ));
                continue;
            }
        };
        if !seen_ports.insert((number, proto)) {
            return Err(err(format!("ports[{i}]: port {number}/{} is listed twice", proto.name())));
        }
        let port_id = port.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| number.to_string());

        for family in [Family::V4, Family::V6] {
            let frontends: BTreeSet<Frontend> = vips
                .iter()
                .filter(|ip| Family::of(ip) == family)
                .map(|ip| Frontend { ip: *ip, port: number })
                .collect();
            if frontends.is_empty() {
                continue;
            }
            let backends = backends_for(port, proto, family, slices);
            out.services.push((
                ServiceName {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    port: port_id.clone(),
                    family,
                    scope: Scope::All,
                },
                ServiceSpec { proto, frontends, backends, affinity_timeout_s },
            ));
        }
    }
    Ok(out)
}

/// The `sessionAffinity: ClientIP` timeout (Kubernetes' default is 3 hours).
fn session_affinity(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Result<Option<u32>, String> {
    match spec.session_affinity.as_deref() {
        None | Some("None") => Ok(None),
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10_800);
            if !(1..=86_400).contains(&t) {
                return Err(format!(
                    "sessionAffinityConfig.clientIP.timeoutSeconds: {t} is outside 1..=86400"
                ));
            }
            Ok(Some(t as u32))
        }
        Some(other) => Err(format!("sessionAffinity: {other:?} is neither None nor ClientIP")),
    }
}

/// The ready endpoints of `slices` for one Service port and family, sorted and unique.
fn backends_for(
    port: &ServicePort,
    proto: Proto,
    family: Family,
    slices: &[&EndpointSlice],
) -> Vec<Backend> {
    let address_type = if family == Family::V4 { "IPv4" } else { "IPv6" };
    let mut set = BTreeSet::new();
    for slice in slices.iter().filter(|s| s.address_type == address_type) {
        let Some(target) = target_port(port, proto, slice) else {
            continue;
        };
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            for addr in &ep.addresses {
                // Slices are validated when loaded; an unparsable address is skipped here.
                if let Ok(ip) = addr.parse::<IpAddr>() {
                    if Family::of(&ip) == family {
                        set.insert(Backend { ip, port: target, weight: 1 });
                    }
                }
            }
        }
    }
    set.into_iter().collect()
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
            Some(IntOrString::String(target)) => {
                ports.iter().filter(same_proto).find(|p| p.name.as_deref() == Some(target))
            }
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
    let namespace = slice.metadata.namespace.clone().unwrap_or_else(|| DEFAULT_NAMESPACE.into());
    let name = slice.metadata.name.clone().unwrap_or_default();
    let err = |reason: String| TranslateError {
        kind: "EndpointSlice",
        namespace: namespace.clone(),
        name: name.clone(),
        reason,
    };
    if name.is_empty() {
        return Err(err("metadata.name is missing".into()));
    }
    let family = match slice.address_type.as_str() {
        "IPv4" => Family::V4,
        "IPv6" => Family::V6,
        "FQDN" => return Ok(()),
        other => return Err(err(format!("addressType: {other:?} is not IPv4, IPv6 or FQDN"))),
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
                    return Err(err(format!("endpoints[{i}].addresses: {addr:?} is not an IP address")));
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
