//! The service health server, as kube-proxy's: for every LoadBalancer Service with
//! `externalTrafficPolicy: Local`, an HTTP server on its `healthCheckNodePort` (on every
//! node address) that answers 200 while this node has usable endpoints of the Service and
//! 503 otherwise, with a JSON body naming the Service and the count. Cloud load balancers
//! probe it to send traffic only to nodes that can serve it without leaving the node.

use std::{
    collections::BTreeMap,
    net::{Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};

use crate::reconcile::HealthChecks;

/// What one port answers: (namespace, name, local usable endpoints).
type Answer = Arc<Mutex<(String, String, usize)>>;

async fn answer(State(a): State<Answer>) -> impl IntoResponse {
    let (namespace, name, count) = a.lock().expect("not poisoned").clone();
    let body = serde_json::json!({
        "service": {"namespace": namespace, "name": name},
        "localEndpoints": count,
        "serviceProxyHealthy": true,
    });
    let status = if count > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body.to_string(),
    )
}

/// Serves the ports `rx` names until the channel closes: a listener per port (both
/// families), opened when a port appears, closed when it goes; answers follow the
/// counts without reopening. A port that cannot be bound is logged and retried with the
/// next change.
pub async fn run(mut rx: tokio::sync::watch::Receiver<HealthChecks>) {
    let mut servers: BTreeMap<u16, (tokio::task::JoinHandle<()>, Answer)> = BTreeMap::new();
    loop {
        let checks = rx.borrow_and_update().clone();
        servers.retain(|port, (task, _)| {
            let keep = checks.contains_key(port);
            if !keep {
                task.abort();
            }
            keep
        });
        for (port, value) in checks {
            if let Some((_, answer)) = servers.get(&port) {
                *answer.lock().expect("not poisoned") = value;
                continue;
            }
            let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
            let listener = match bind_dual_stack(addr) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(port, service = format!("{}/{}", value.0, value.1), error = %e, "cannot serve the healthCheckNodePort");
                    continue;
                }
            };
            let answer: Answer = Arc::new(Mutex::new(value));
            let app = Router::new()
                .fallback(self::answer)
                .with_state(answer.clone());
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            servers.insert(port, (task, answer));
        }
        if rx.changed().await.is_err() {
            break;
        }
    }
    for (task, _) in servers.into_values() {
        task.abort();
    }
}

/// A listener on `[::]:port` that takes IPv4 too.
fn bind_dual_stack(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v6()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}
