//! xlb: the agent and CLI of the xlb load balancer.
//!
//! Data flows one way: sources ([`manifests`], later the Kubernetes API) -> [`translate`]
//! -> [`model`] (the desired state) -> [`sync`] (a pure plan, then the applier) ->
//! [`datapath`] (the only module that talks to the kernel through aya).

pub mod agent;
pub mod cli;
pub mod datapath;
pub mod maglev;
pub mod manifests;
pub mod model;
pub mod stats;
pub mod sync;
pub mod translate;
