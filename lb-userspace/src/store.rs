//! The object store both sources feed: Services, EndpointSlices and this node's Node, kept
//! in kube-rs reflector stores, plus an index of slices by the Service they belong to.
//!
//! Sources speak one language, kube-rs [`watcher::Event`]s: the Kubernetes source passes
//! its watch streams through; the manifests source describes every (re)load of its
//! directory as a relist (`Init`, `InitApply` per object, `InitDone`). Applying an event
//! returns what it made dirty, so that the reconciler re-translates only the Services
//! that changed. A relist swaps the whole store at `InitDone` (until then the previous
//! state is served) and is diffed against what it replaces: a relist that brings back
//! the same objects, as after an API-server outage, dirties nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Resource, ResourceExt as _,
    runtime::{
        reflector::{ObjectRef, Store as Reader, store::Writer},
        watcher::Event,
    },
};

use crate::translate::{DEFAULT_NAMESPACE, NodeInfo, NodePortAddresses, ObjectKey, slice_owner};

/// Annotation a source may set on the objects it hands over: where the object was read
/// (the manifests source: its file, document and line), so that problems found later
/// (by the translation) can say where to look.
pub const ORIGIN_ANNOTATION: &str = "xlb.dev/origin";

/// One event of one kind, from a source.
#[derive(Clone, Debug)]
pub enum Change {
    Services(Event<Service>),
    Slices(Event<EndpointSlice>),
    Nodes(Event<Node>),
}

impl Change {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Services(_) => "Service",
            Self::Slices(_) => "EndpointSlice",
            Self::Nodes(_) => "Node",
        }
    }
}

/// What an event made dirty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Services (namespace, name) to translate again.
    pub services: BTreeSet<ObjectKey>,
    /// This node changed: every Service is translated again.
    pub node: bool,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && !self.node
    }
}

/// The (namespace, name) of an object, with the default namespace applied.
pub fn key_of<K: Resource>(obj: &K) -> ObjectKey {
    (
        obj.meta()
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

/// One kind's reflector store and its relist bookkeeping.
struct Kind<K: Resource<DynamicType = ()> + Clone + 'static> {
    writer: Writer<K>,
    reader: Reader<K>,
    /// A relist is under way (between `Init` and `InitDone`).
    relisting: bool,
    /// The first list has completed.
    listed: bool,
}

impl<K> Kind<K>
where
    K: Resource<DynamicType = ()> + Clone + PartialEq + 'static,
{
    fn new() -> Self {
        let writer = Writer::default();
        let reader = writer.as_reader();
        Self {
            writer,
            reader,
            relisting: false,
            listed: false,
        }
    }

    fn get(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.reader.get(&ObjectRef::new(&key.1).within(&key.0))
    }

    /// Applies `event`; returns the keys of the objects it added, changed or removed
    /// (with the object before and after).
    #[allow(clippy::type_complexity)]
    fn apply(&mut self, event: &Event<K>) -> Vec<(ObjectKey, Option<Arc<K>>, Option<Arc<K>>)> {
        match event {
            Event::Apply(obj) | Event::Delete(obj) => {
                let key = key_of(obj);
                let oref = ObjectRef::from_obj(obj);
                let before = self.reader.get(&oref);
                self.writer.apply_watcher_event(event);
                let after = self.reader.get(&oref);
                if same(before.as_deref(), after.as_deref()) {
                    vec![]
                } else {
                    vec![(key, before, after)]
                }
            }
            Event::Init => {
                self.relisting = true;
                self.writer.apply_watcher_event(event);
                vec![]
            }
            Event::InitApply(_) => {
                self.writer.apply_watcher_event(event);
                vec![]
            }
            Event::InitDone => {
                let before: BTreeMap<ObjectKey, Arc<K>> = self
                    .reader
                    .state()
                    .into_iter()
                    .map(|o| (key_of(&*o), o))
                    .collect();
                self.writer.apply_watcher_event(event);
                let mut after: BTreeMap<ObjectKey, Arc<K>> = self
                    .reader
                    .state()
                    .into_iter()
                    .map(|o| (key_of(&*o), o))
                    .collect();
                self.relisting = false;
                self.listed = true;
                let mut changed = Vec::new();
                for (key, old) in before {
                    let new = after.remove(&key);
                    if !same(Some(&*old), new.as_deref()) {
                        changed.push((key, Some(old), new));
                    }
                }
                changed.extend(after.into_iter().map(|(key, new)| (key, None, Some(new))));
                changed
            }
        }
    }
}

/// Whether two versions of an object are the same: equal resource versions when both
/// have one (API objects), else equal contents (manifests).
fn same<K: Resource + PartialEq>(a: Option<&K>, b: Option<&K>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => match (&a.meta().resource_version, &b.meta().resource_version) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
        _ => false,
    }
}

/// The objects the agent translates, as the sources last reported them.
pub struct Store {
    services: Kind<Service>,
    slices: Kind<EndpointSlice>,
    nodes: Kind<Node>,
    /// Slices of each Service (the `kubernetes.io/service-name` label).
    by_owner: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// This node's name: the Node of that name describes it.
    node_name: Option<String>,
}

impl Store {
    pub fn new(node_name: Option<String>) -> Self {
        Self {
            services: Kind::new(),
            slices: Kind::new(),
            nodes: Kind::new(),
            by_owner: BTreeMap::new(),
            node_name,
        }
    }

    pub fn node_name(&self) -> Option<&str> {
        self.node_name.as_deref()
    }

    /// Applies one event; returns what it made dirty.
    pub fn apply(&mut self, change: &Change) -> Dirty {
        let mut dirty = Dirty::default();
        match change {
            Change::Services(event) => {
                for (key, _, _) in self.services.apply(event) {
                    dirty.services.insert(key);
                }
            }
            Change::Slices(event) => {
                for (key, before, after) in self.slices.apply(event) {
                    if let Some(owner) = before.as_deref().and_then(slice_owner) {
                        self.unindex(&owner, &key);
                        dirty.services.insert(owner);
                    }
                    if let Some(owner) = after.as_deref().and_then(slice_owner) {
                        self.by_owner
                            .entry(owner.clone())
                            .or_default()
                            .insert(key.clone());
                        dirty.services.insert(owner);
                    }
                }
            }
            Change::Nodes(event) => {
                let name = self.node_name.clone();
                for (key, _, _) in self.nodes.apply(event) {
                    if name.as_deref() == Some(key.1.as_str()) {
                        dirty.node = true;
                    }
                }
            }
        }
        dirty
    }

    fn unindex(&mut self, owner: &ObjectKey, slice: &ObjectKey) {
        if let Some(set) = self.by_owner.get_mut(owner) {
            set.remove(slice);
            if set.is_empty() {
                self.by_owner.remove(owner);
            }
        }
    }

    /// Whether every kind has completed its first list (before that, translating would
    /// program Services without their endpoints).
    pub fn listed(&self) -> bool {
        self.services.listed && self.slices.listed && self.nodes.listed
    }

    /// Kinds whose first list has not completed.
    pub fn unlisted(&self) -> Vec<&'static str> {
        [
            (!self.services.listed).then_some("Services"),
            (!self.slices.listed).then_some("EndpointSlices"),
            (!self.nodes.listed).then_some("Nodes"),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    pub fn service(&self, key: &ObjectKey) -> Option<Arc<Service>> {
        self.services.get(key)
    }

    /// Every Service, in key order.
    pub fn services(&self) -> Vec<Arc<Service>> {
        let mut all = self.services.reader.state();
        all.sort_by_key(|s| key_of(&**s));
        all
    }

    pub fn service_count(&self) -> usize {
        self.services.reader.len()
    }

    /// The EndpointSlices of a Service, in name order.
    pub fn slices_of(&self, service: &ObjectKey) -> Vec<Arc<EndpointSlice>> {
        self.by_owner
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|key| self.slices.get(key))
            .collect()
    }

    pub fn slice_count(&self) -> usize {
        self.slices.reader.len()
    }

    /// What the translation needs of this node: from its Node object when there is one,
    /// else `fallback` (given on the command line).
    pub fn node_info(&self, fallback: &NodeInfo, nodeport: &NodePortAddresses) -> NodeInfo {
        let node = self.node_name.as_ref().and_then(|name| {
            self.nodes
                .reader
                .state()
                .into_iter()
                .find(|n| n.name_any() == *name)
        });
        match node {
            Some(node) => {
                let mut info = NodeInfo::from_node(&node, nodeport);
                if info.addresses.is_empty() {
                    info.addresses = nodeport.select_plain(&fallback.addresses);
                }
                if info.zone.is_none() {
                    info.zone = fallback.zone.clone();
                }
                info.proxy_name = fallback.proxy_name.clone();
                info
            }
            None => NodeInfo {
                name: self.node_name.clone(),
                addresses: nodeport.select_plain(&fallback.addresses),
                ..fallback.clone()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, rv: &str) -> Service {
        let mut s = Service::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("ns".into());
        s.metadata.resource_version = Some(rv.into());
        s
    }

    fn slice(name: &str, owner: &str, rv: &str) -> EndpointSlice {
        let mut s = EndpointSlice {
            address_type: "IPv4".into(),
            ..Default::default()
        };
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("ns".into());
        s.metadata.resource_version = Some(rv.into());
        s.metadata.labels =
            Some([("kubernetes.io/service-name".to_string(), owner.to_string())].into());
        s
    }

    fn keys(d: &Dirty) -> Vec<&str> {
        d.services.iter().map(|(_, n)| n.as_str()).collect()
    }

    fn relist<K>(store: &mut Store, wrap: fn(Event<K>) -> Change, objects: Vec<K>) -> Dirty {
        let mut all = store.apply(&wrap(Event::Init));
        for o in objects {
            let d = store.apply(&wrap(Event::InitApply(o)));
            all.services.extend(d.services);
            all.node |= d.node;
        }
        let d = store.apply(&wrap(Event::InitDone));
        all.services.extend(d.services);
        all.node |= d.node;
        all
    }

    #[test]
    fn relists_dirty_only_what_changed() {
        let mut store = Store::new(Some("n1".into()));
        let d = relist(
            &mut store,
            Change::Services,
            vec![service("a", "1"), service("b", "1")],
        );
        assert_eq!(keys(&d), ["a", "b"]);
        assert!(!store.listed(), "slices and nodes not listed yet");
        relist(&mut store, Change::Slices, vec![slice("a-1", "a", "1")]);
        relist(&mut store, Change::Nodes, Vec::<Node>::new());
        assert!(store.listed());
        // The same objects again (an outage's relist): nothing dirty.
        let d = relist(
            &mut store,
            Change::Services,
            vec![service("a", "1"), service("b", "1")],
        );
        assert!(d.is_empty(), "{d:?}");
        // b changed, a gone, c new.
        let d = relist(
            &mut store,
            Change::Services,
            vec![service("b", "2"), service("c", "1")],
        );
        assert_eq!(keys(&d), ["a", "b", "c"]);
        // During a relist, the previous state is still served.
        store.apply(&Change::Services(Event::Init));
        store.apply(&Change::Services(Event::InitApply(service("z", "1"))));
        assert!(store.service(&("ns".into(), "b".into())).is_some());
        assert!(store.service(&("ns".into(), "z".into())).is_none());
    }

    #[test]
    fn slices_dirty_their_old_and_new_owner() {
        let mut store = Store::new(None);
        relist(&mut store, Change::Slices, vec![slice("s", "a", "1")]);
        assert_eq!(store.slices_of(&("ns".into(), "a".into())).len(), 1);
        let d = store.apply(&Change::Slices(Event::Apply(slice("s", "b", "2"))));
        assert_eq!(keys(&d), ["a", "b"]);
        assert!(store.slices_of(&("ns".into(), "a".into())).is_empty());
        assert_eq!(store.slices_of(&("ns".into(), "b".into())).len(), 1);
        // An identical re-delivery changes nothing.
        assert!(
            store
                .apply(&Change::Slices(Event::Apply(slice("s", "b", "2"))))
                .is_empty()
        );
        let d = store.apply(&Change::Slices(Event::Delete(slice("s", "b", "2"))));
        assert_eq!(keys(&d), ["b"]);
        assert!(store.slices_of(&("ns".into(), "b".into())).is_empty());
    }

    #[test]
    fn only_this_node_matters() {
        let mut store = Store::new(Some("n1".into()));
        let mut other = Node::default();
        other.metadata.name = Some("n2".into());
        assert!(!store.apply(&Change::Nodes(Event::Apply(other))).node);
        let mut mine = Node::default();
        mine.metadata.name = Some("n1".into());
        mine.metadata.labels =
            Some([("topology.kubernetes.io/zone".to_string(), "z1".to_string())].into());
        assert!(store.apply(&Change::Nodes(Event::Apply(mine))).node);
        let fallback = NodeInfo {
            zone: Some("flag".into()),
            ..Default::default()
        };
        assert_eq!(
            store
                .node_info(&fallback, &NodePortAddresses::default())
                .zone
                .as_deref(),
            Some("z1")
        );
    }
}
