//! Where objects come from: a manifests directory or the Kubernetes API. Both produce
//! kube-rs watcher events for the [`crate::store`].

pub mod kube;
pub mod manifests;
