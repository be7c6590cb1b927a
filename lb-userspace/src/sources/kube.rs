//! The Kubernetes source: Services, EndpointSlices and this node's Node, watched through
//! the API server with kube-rs runtime watchers (the streams under kube-rs reflectors),
//! whose events feed the store's reflector writers.
//!
//! The watchers request bookmarks, resume from the last resource version after a dropped
//! connection, relist when the server answers `410 Gone`, and back off exponentially on
//! errors. While the API server is unreachable nothing changes: the maps keep serving the
//! last programmed state. A relist after an outage is diffed by the store, so Services
//! that did not change are not touched.

use std::{path::Path, sync::Arc};

use anyhow::Context as _;
use futures::{StreamExt as _, stream::BoxStream};
use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, watcher},
};

use super::Sink;
use crate::{
    metrics::{ErrorKind, Metrics},
    store::Change,
    translate::SERVICE_PROXY_NAME_LABEL,
};

/// The label selectors of the Services and EndpointSlices this agent serves. Without a
/// proxy name, the Services no proxy was named for (kube-proxy's own rule: a Service
/// labelled `service.kubernetes.io/service-proxy-name` belongs to the proxy it names);
/// with `--service-proxy-name NAME`, exactly those labelled with NAME, so that xlb and
/// kube-proxy can share a cluster without both serving a Service, or neither. The
/// EndpointSlice controller copies the label to the Service's slices.
pub fn selectors(proxy_name: Option<&str>) -> (String, String) {
    let proxy = match proxy_name {
        Some(name) => format!("{SERVICE_PROXY_NAME_LABEL}={name}"),
        None => format!("!{SERVICE_PROXY_NAME_LABEL}"),
    };
    (
        proxy.clone(),
        format!("kubernetes.io/service-name,!service.kubernetes.io/headless,{proxy}"),
    )
}

/// A client for the API server.
///
/// The configuration is `kubeconfig` when given; otherwise kube-rs infers it as client-go
/// does: `$KUBECONFIG`, then `~/.kube/config`, then the in-cluster service account with
/// the API server at `$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`. `api_server`
/// replaces the address in any of them.
///
/// Without kube-proxy the in-cluster default, the `kubernetes` Service's ClusterIP, only
/// works once this agent programs it: the DaemonSet sets `KUBERNETES_SERVICE_HOST` and
/// `KUBERNETES_SERVICE_PORT` to the API server's real address (or pass `--api-server`),
/// as Cilium asks for `k8sServiceHost`.
pub async fn client(
    kubeconfig: Option<&Path>,
    api_server: Option<&http::Uri>,
) -> anyhow::Result<Client> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes configuration: none in $KUBECONFIG or ~/.kube/config, and not in a \
             cluster (the service account, $KUBERNETES_SERVICE_HOST and $KUBERNETES_SERVICE_PORT); \
             give --kubeconfig",
        )?,
    };
    if let Some(url) = api_server {
        config.cluster_url = url.clone();
    }
    tracing::info!(api_server = %config.cluster_url, "Kubernetes API server");
    Client::try_from(config).context("creating the Kubernetes client")
}

/// What the source reports.
#[derive(Debug)]
pub enum Report {
    Change(Change),
    /// The watch of a kind failed (it is retried with backoff).
    Error {
        kind: &'static str,
        error: watcher::Error,
    },
}

/// The watch streams of the three kinds, merged.
pub fn watch(
    client: Client,
    node_name: &str,
    proxy_name: Option<&str>,
) -> BoxStream<'static, Report> {
    let cfg = watcher::Config::default();
    let (service_selector, slice_selector) = selectors(proxy_name);
    let services = watcher(
        Api::<Service>::all(client.clone()),
        cfg.clone().labels(&service_selector),
    )
    .default_backoff()
    .map(|r| match r {
        Ok(e) => Report::Change(Change::Services(e)),
        Err(e) => Report::Error {
            kind: "Services",
            error: e,
        },
    });
    let slices = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        cfg.clone().labels(&slice_selector),
    )
    .default_backoff()
    .map(|r| match r {
        Ok(e) => Report::Change(Change::Slices(e)),
        Err(e) => Report::Error {
            kind: "EndpointSlices",
            error: e,
        },
    });
    let nodes = watcher(
        Api::<Node>::all(client),
        cfg.fields(&format!("metadata.name={node_name}")),
    )
    .default_backoff()
    .map(|r| match r {
        Ok(e) => Report::Change(Change::Nodes(e)),
        Err(e) => Report::Error {
            kind: "Node",
            error: e,
        },
    });
    futures::stream::select_all([services.boxed(), slices.boxed(), nodes.boxed()]).boxed()
}

/// Runs the Kubernetes source: the watch streams, forwarded to `sink`. Errors are logged
/// and counted (the watchers retry with backoff, and the maps keep serving meanwhile).
pub async fn run(
    client: Client,
    node_name: String,
    proxy_name: Option<String>,
    sink: Sink,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let mut stream = watch(client, &node_name, proxy_name.as_deref());
    let mut failing = false;
    while let Some(report) = stream.next().await {
        match report {
            Report::Change(change) => {
                if failing {
                    failing = false;
                    tracing::info!("Kubernetes API reachable again");
                }
                if !sink(change) {
                    anyhow::bail!("the reconciler is gone");
                }
            }
            Report::Error { kind, error } => {
                failing = true;
                metrics.error(ErrorKind::Source);
                tracing::warn!(
                    kind,
                    "Kubernetes API: {error}; retrying with backoff, the programmed state keeps serving"
                );
            }
        }
    }
    anyhow::bail!("the Kubernetes watch streams ended")
}

#[cfg(test)]
mod tests {
    #[test]
    fn selectors_follow_the_proxy_name() {
        assert_eq!(
            super::selectors(None),
            (
                "!service.kubernetes.io/service-proxy-name".to_string(),
                "kubernetes.io/service-name,!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name".to_string()
            )
        );
        let (svc, slices) = super::selectors(Some("xlb"));
        assert_eq!(svc, "service.kubernetes.io/service-proxy-name=xlb");
        assert!(slices.ends_with(",service.kubernetes.io/service-proxy-name=xlb"));
    }
}
