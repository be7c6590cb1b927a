//! Where objects come from: a manifests directory or the Kubernetes API. Both produce
//! kube-rs watcher events for the [`crate::store`], handed to the reconciler through a
//! [`Sink`].

pub mod events;
pub mod kube;
pub mod manifests;

use crate::store::Change;

/// Where a source delivers its changes; returns false once nobody receives them.
pub type Sink = Box<dyn Fn(Change) -> bool + Send + Sync>;
