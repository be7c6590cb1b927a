//! xlb: the agent and CLI of the xlb load balancer.
//!
//! Data flows one way: [`sources`] (a manifests directory or the Kubernetes API, both as
//! kube-rs watcher events) -> [`store`] (reflector stores, which say what changed) ->
//! [`reconcile`] -> [`translate`] -> [`model`] (the desired state) -> [`sync`] (a pure
//! plan, then the applier, the only writer of the maps) -> [`datapath`] (the only module
//! that talks to the kernel through aya). [`metrics`] serves the agent's metrics and
//! health.

pub mod agent;
pub mod cli;
pub mod datapath;
pub mod devices;
pub mod health;
pub mod maglev;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod reconcile;
pub mod service_health;
pub mod sources;
pub mod stats;
pub mod store;
pub mod sync;
pub mod translate;
