//! A Kubernetes API server for tests, speaking the real list/watch protocol for the three
//! resources xlb watches (`/api/v1/services`, `/apis/discovery.k8s.io/v1/endpointslices`,
//! `/api/v1/nodes`), as kube-rs clients use it:
//!
//! - JSON lists with `metadata.resourceVersion`, `limit`/`continue` paging, label and
//!   field selectors;
//! - watches (`?watch=true&resourceVersion=N`) streaming newline-delimited
//!   `ADDED`/`MODIFIED`/`DELETED` events after N, `BOOKMARK`s when asked for
//!   (`allowWatchBookmarks`), ended after `timeoutSeconds`;
//! - a global resource version, as etcd's; history before the compaction point is gone,
//!   and a watch from there gets an `ERROR` event with a `410 Expired` Status, as from a
//!   real API server, so the client must relist.
//!
//! Longer than most files: one concern (the protocol a kube-rs client speaks), whose
//! parts (lists, watches, compaction, outages) only make sense together.
//!
//! It also takes what an agent writes, Events (`events.k8s.io/v1`: create, and the merge
//! patch of a repeat's series), and keeps them for tests to read ([`ApiServer::events`]).
//!
//! Tests drive it: create, update and delete objects, compact the history, drop every
//! watch connection, or take the whole server down (connections reset, the port refuses)
//! and bring it back on the same port.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, patch, post},
};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

/// A resource the server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Services,
    EndpointSlices,
    Nodes,
}

impl Resource {
    pub const ALL: [Resource; 3] = [Self::Services, Self::EndpointSlices, Self::Nodes];

    fn api_version(self) -> &'static str {
        match self {
            Self::EndpointSlices => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Self::Services => "Service",
            Self::EndpointSlices => "EndpointSlice",
            Self::Nodes => "Node",
        }
    }

    /// The resource of an object, by its `kind`.
    pub fn of(obj: &Value) -> Option<Self> {
        match obj.get("kind")?.as_str()? {
            "Service" => Some(Self::Services),
            "EndpointSlice" => Some(Self::EndpointSlices),
            "Node" => Some(Self::Nodes),
            _ => None,
        }
    }
}

type Key = (String, String);

fn key_of(obj: &Value) -> Key {
    let meta = &obj["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("").to_string(),
        meta["name"].as_str().unwrap_or("").to_string(),
    )
}

#[derive(Debug)]
struct StoredEvent {
    rv: u64,
    resource: Resource,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    /// Watches may start after this resource version only.
    compacted: u64,
    objects: BTreeMap<Resource, BTreeMap<Key, Value>>,
    history: Vec<Arc<StoredEvent>>,
}

/// What the server saw, for tests to assert on.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub lists: usize,
    pub watches: usize,
    /// Watches answered with `410 Gone`.
    pub expired: usize,
    pub bookmarks_sent: usize,
    /// The resource versions watches were started from.
    pub watch_from: Vec<u64>,
}

struct Shared {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<StoredEvent>>,
    /// Bumped to end every watch stream.
    generation: watch::Sender<u64>,
    bookmark_every: Duration,
    seen: Mutex<Seen>,
    /// Events written by clients, by (namespace, name).
    recorded: Mutex<BTreeMap<Key, Value>>,
}

/// The running server.
pub struct ApiServer {
    shared: Arc<Shared>,
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    bind: Box<dyn Fn(SocketAddr) -> std::io::Result<std::net::TcpListener> + Send + Sync>,
    serving: Option<tokio::task::JoinHandle<()>>,
}

impl ApiServer {
    /// Starts a server on a listener `bind` creates (called again, with the same
    /// address, when the server comes back after [`Self::go_down`]). `bind` gets
    /// 127.0.0.1:0 the first time.
    pub fn start(
        bind: impl Fn(SocketAddr) -> std::io::Result<std::net::TcpListener> + Send + Sync + 'static,
        bookmark_every: Duration,
    ) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::default()),
            events,
            generation: watch::channel(0).0,
            bookmark_every,
            seen: Mutex::new(Seen::default()),
            recorded: Mutex::new(BTreeMap::new()),
        });
        let listener = bind("127.0.0.1:0".parse()?)?;
        let addr = listener.local_addr()?;
        let mut server = Self {
            shared,
            rt,
            addr,
            bind: Box::new(bind),
            serving: None,
        };
        server.serve(listener)?;
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig pointing at this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster: {{server: \"http://{}\"}}\nusers:\n- name: test\n  user: {{token: test-token}}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\ncurrent-context: test\n",
            self.addr
        )
    }

    fn serve(&mut self, listener: std::net::TcpListener) -> anyhow::Result<()> {
        listener.set_nonblocking(true)?;
        let shared = self.shared.clone();
        let _guard = self.rt.enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let app = Router::new()
            .route("/api/v1/services", get(services))
            .route(
                "/apis/discovery.k8s.io/v1/endpointslices",
                get(endpointslices),
            )
            .route("/api/v1/nodes", get(nodes))
            .route(
                "/apis/events.k8s.io/v1/namespaces/{namespace}/events",
                post(create_event),
            )
            .route(
                "/apis/events.k8s.io/v1/namespaces/{namespace}/events/{name}",
                patch(patch_event),
            )
            .fallback(|| async {
                status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    "the server could not find the requested resource",
                )
            })
            .with_state(shared);
        // Connections are served by tasks of a JoinSet owned by the accept loop: aborting
        // the loop resets every connection (a real outage, not a graceful stop).
        self.serving = Some(self.rt.spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let service = hyper_util::service::TowerToHyperService::new(app.clone());
                        connections.spawn(async move {
                            let io = hyper_util::rt::TokioIo::new(stream);
                            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        }));
        Ok(())
    }

    /// Takes the server down: every connection is reset and the port refuses new ones.
    pub fn go_down(&mut self) {
        if let Some(task) = self.serving.take() {
            task.abort();
            let _ = self.rt.block_on(task);
        }
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Brings the server back on the same address.
    pub fn come_up(&mut self) -> anyhow::Result<()> {
        let listener = (self.bind)(self.addr)?;
        self.serve(listener)
    }

    /// Ends every watch stream (the connections stay up): clients resume from the last
    /// resource version they saw.
    pub fn drop_watches(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Forgets the history up to now: a watch resumed from an older resource version
    /// gets `410 Gone`.
    pub fn compact(&self) {
        let mut inner = self.shared.inner.lock().unwrap();
        inner.compacted = inner.rv;
        inner.history.clear();
    }

    pub fn seen(&self) -> Seen {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The Events clients created (with their latest patches), in name order.
    pub fn events(&self) -> Vec<Value> {
        self.shared
            .recorded
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect()
    }

    /// Creates or updates an object (its `kind` says which resource).
    pub fn apply(&self, mut obj: Value) {
        let resource = Resource::of(&obj).expect("a Service, EndpointSlice or Node");
        let mut inner = self.shared.inner.lock().unwrap();
        inner.rv += 1;
        let rv = inner.rv;
        let key = key_of(&obj);
        let meta = obj["metadata"].as_object_mut().expect("metadata");
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.entry("uid")
            .or_insert_with(|| json!(format!("uid-{}-{}-{}", resource.kind(), key.0, key.1)));
        // Set at creation and kept by updates, as a real server does. The clock is the
        // resource version (one second per write from a fixed epoch): objects created
        // later are younger, whatever the test's timing.
        let created = inner
            .objects
            .get(&resource)
            .and_then(|m| m.get(&key))
            .and_then(|old| {
                old["metadata"]["creationTimestamp"]
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| {
                jiff::Timestamp::from_second(1_700_000_000 + rv as i64)
                    .expect("in range")
                    .to_string()
            });
        meta.entry("creationTimestamp").or_insert(json!(created));
        let existed = inner
            .objects
            .entry(resource)
            .or_default()
            .insert(key, obj.clone())
            .is_some();
        let event = Arc::new(StoredEvent {
            rv,
            resource,
            kind: if existed { "MODIFIED" } else { "ADDED" },
            object: obj,
        });
        inner.history.push(event.clone());
        let _ = self.shared.events.send(event);
    }

    /// Deletes an object; false if it did not exist.
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) -> bool {
        let mut inner = self.shared.inner.lock().unwrap();
        let Some(mut obj) = inner
            .objects
            .entry(resource)
            .or_default()
            .remove(&(namespace.to_string(), name.to_string()))
        else {
            return false;
        };
        inner.rv += 1;
        let rv = inner.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let event = Arc::new(StoredEvent {
            rv,
            resource,
            kind: "DELETED",
            object: obj,
        });
        inner.history.push(event.clone());
        let _ = self.shared.events.send(event);
        true
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.go_down();
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A parsed label selector: `key`, `!key`, `key=value`, `key==value`, `key!=value`,
/// comma-separated.
fn label_matches(selector: &str, labels: &Value) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            let get = |k: &str| labels.get(k).and_then(Value::as_str);
            if let Some((k, v)) = term.split_once("!=") {
                get(k.trim()) != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                get(k.trim()) == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                get(k.trim()).is_none()
            } else {
                get(term).is_some()
            }
        })
}

/// A field selector over `metadata.name` and `metadata.namespace`.
fn field_matches(selector: &str, obj: &Value) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            let (k, v, eq) = match term.split_once("!=") {
                Some((k, v)) => (k, v, false),
                None => match term.split_once("==").or_else(|| term.split_once('=')) {
                    Some((k, v)) => (k, v, true),
                    None => return false,
                },
            };
            let got = match k.trim() {
                "metadata.name" => obj["metadata"]["name"].as_str(),
                "metadata.namespace" => obj["metadata"]["namespace"].as_str(),
                _ => None,
            };
            (got == Some(v.trim())) == eq
        })
}

fn matches(q: &HashMap<String, String>, obj: &Value) -> bool {
    let labels = &obj["metadata"]["labels"];
    q.get("labelSelector")
        .is_none_or(|s| label_matches(s, labels))
        && q.get("fieldSelector").is_none_or(|s| field_matches(s, obj))
}

type Params = Query<HashMap<String, String>>;

/// `POST .../namespaces/{namespace}/events`: an Event, stored as sent (201), or 409 when
/// one of that name exists, as a real server answers.
async fn create_event(
    State(shared): State<Arc<Shared>>,
    Path(namespace): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(mut event) = serde_json::from_slice::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "not a JSON object");
    };
    if event["kind"] != "Event" || event["metadata"]["name"].as_str().is_none() {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "not a named Event",
        );
    }
    event["metadata"]["namespace"] = json!(namespace);
    let key = key_of(&event);
    let mut recorded = shared.recorded.lock().unwrap();
    if recorded.contains_key(&key) {
        return status(StatusCode::CONFLICT, "AlreadyExists", "the event exists");
    }
    recorded.insert(key, event.clone());
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        event.to_string(),
    )
        .into_response()
}

/// `PATCH .../events/{name}` (a JSON merge patch): updates a stored Event.
async fn patch_event(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
        return status(StatusCode::BAD_REQUEST, "BadRequest", "not a JSON object");
    };
    let mut recorded = shared.recorded.lock().unwrap();
    let Some(event) = recorded.get_mut(&(namespace, name)) else {
        return status(StatusCode::NOT_FOUND, "NotFound", "no such event");
    };
    merge(event, &patch);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        event.to_string(),
    )
        .into_response()
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let object = target.as_object_mut().expect("an object");
    for (k, v) in fields {
        if v.is_null() {
            object.remove(k);
        } else {
            merge(object.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

async fn services(state: State<Arc<Shared>>, q: Params) -> Response {
    handle(state, q, Resource::Services)
}

async fn endpointslices(state: State<Arc<Shared>>, q: Params) -> Response {
    handle(state, q, Resource::EndpointSlices)
}

async fn nodes(state: State<Arc<Shared>>, q: Params) -> Response {
    handle(state, q, Resource::Nodes)
}

fn handle(State(shared): State<Arc<Shared>>, Query(q): Params, resource: Resource) -> Response {
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        watch_resource(shared, q, resource)
    } else {
        list(&shared, &q, resource)
    }
}

fn list(shared: &Shared, q: &HashMap<String, String>, resource: Resource) -> Response {
    shared.seen.lock().unwrap().lists += 1;
    let inner = shared.inner.lock().unwrap();
    let all: Vec<&Value> = inner
        .objects
        .get(&resource)
        .into_iter()
        .flat_map(|m| m.values())
        .filter(|o| matches(q, o))
        .collect();
    // `continue` is "<resource version>/<offset>".
    let (rv, offset) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => match c
            .split_once('/')
            .and_then(|(r, o)| Some((r.parse::<u64>().ok()?, o.parse::<usize>().ok()?)))
        {
            Some(x) => x,
            None => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "invalid continue token",
                );
            }
        },
        None => (inner.rv, 0),
    };
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let page: Vec<&Value> = all.iter().skip(offset).take(limit).copied().collect();
    let mut metadata = json!({ "resourceVersion": rv.to_string() });
    if offset + page.len() < all.len() {
        metadata["continue"] = json!(format!("{rv}/{}", offset + page.len()));
    }
    let body = json!({
        "apiVersion": resource.api_version(),
        "kind": format!("{}List", resource.kind()),
        "metadata": metadata,
        "items": page,
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn line(v: &Value) -> Result<bytes::Bytes, Infallible> {
    let mut s = v.to_string();
    s.push('\n');
    Ok(bytes::Bytes::from(s))
}

fn watch_resource(shared: Arc<Shared>, q: HashMap<String, String>, resource: Resource) -> Response {
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let timeout = Duration::from_secs(
        q.get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(1800),
    );
    {
        let mut seen = shared.seen.lock().unwrap();
        seen.watches += 1;
        seen.watch_from.push(from);
    }
    // Subscribe before reading the history, so that nothing falls in between.
    let mut live = shared.events.subscribe();
    let (backlog, expired, current) = {
        let inner = shared.inner.lock().unwrap();
        let from = if from == 0 { inner.rv } else { from };
        let expired = from < inner.compacted;
        let backlog: Vec<Arc<StoredEvent>> = inner
            .history
            .iter()
            .filter(|e| e.rv > from && e.resource == resource)
            .cloned()
            .collect();
        (backlog, expired, from)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, Infallible>>(64);
    if expired {
        shared.seen.lock().unwrap().expired += 1;
        let event = json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {from}"), "reason": "Expired", "code": 410,
        }});
        let _ = tx.try_send(line(&event));
    } else {
        let mut generation = shared.generation.subscribe();
        generation.mark_unchanged();
        tokio::spawn(async move {
            let event_line = |e: &StoredEvent| line(&json!({"type": e.kind, "object": e.object}));
            let mut last = current;
            for e in &backlog {
                if matches(&q, &e.object) && tx.send(event_line(e)).await.is_err() {
                    return;
                }
                last = e.rv;
            }
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            let mut tick = tokio::time::interval(shared.bookmark_every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = &mut deadline => return,
                    _ = generation.changed() => return,
                    got = live.recv() => match got {
                        Ok(e) => {
                            if e.resource == resource && e.rv > last {
                                last = e.rv;
                                if matches(&q, &e.object) && tx.send(event_line(&e)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        // Too far behind: end the watch; the client resumes or relists.
                        Err(_) => return,
                    },
                    _ = tick.tick(), if bookmarks => {
                        // A bookmark promises every event up to its resource version was
                        // sent: take what is queued while holding the lock (events are
                        // published under it), send that, then the bookmark.
                        let (queued, rv) = {
                            let inner = shared.inner.lock().unwrap();
                            let mut queued = Vec::new();
                            loop {
                                match live.try_recv() {
                                    Ok(e) => queued.push(e),
                                    Err(broadcast::error::TryRecvError::Empty) => break,
                                    Err(_) => return,
                                }
                            }
                            (queued, inner.rv)
                        };
                        for e in queued {
                            if e.resource == resource && e.rv > last {
                                last = e.rv;
                                if matches(&q, &e.object) && tx.send(event_line(&e)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        let rv = rv.max(last);
                        let bookmark = json!({"type": "BOOKMARK", "object": {
                            "apiVersion": resource.api_version(), "kind": resource.kind(),
                            "metadata": {"resourceVersion": rv.to_string()},
                        }});
                        if tx.send(line(&bookmark)).await.is_err() {
                            return;
                        }
                        shared.seen.lock().unwrap().bookmarks_sent += 1;
                        last = rv;
                    }
                }
            }
        });
    }
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let labels = json!({"kubernetes.io/service-name": "web", "a": "1"});
        assert!(label_matches(
            "kubernetes.io/service-name,!service.kubernetes.io/headless",
            &labels
        ));
        assert!(!label_matches("!a", &labels));
        assert!(label_matches("a=1,a!=2", &labels));
        assert!(!label_matches("a==2", &labels));
        let obj = json!({"metadata": {"name": "node-1"}});
        assert!(field_matches("metadata.name=node-1", &obj));
        assert!(!field_matches("metadata.name=node-2", &obj));
    }
}
