//! Synchronisation of the datapath maps with the desired state.
//!
//! - [`plan()`] is pure: from the desired state and the applied state it computes the
//!   operations that bring the maps from one to the other, Maglev tables included, in a
//!   make-before-break order: new backends, then new tables, then frontend flips; what
//!   became unreachable (frontends, tables, backends, in that order) is deleted last.
//! - [`apply()`] is the only writer of the maps. It runs a plan through a [`Maps`]
//!   implementation, re-checks every operation against the mirror of what is programmed
//!   (so a failed write never leaves a table pointing at a missing backend), and records
//!   each success in [`Applied`], which therefore always mirrors the maps exactly.
//!   Tables are written into the free half of their service's array and go live when the
//!   frontends switch to them; backends no table uses are cleared after a grace period.
//! - [`FakeMaps`] is an in-memory [`Maps`] for tests and golden dumps.

mod applied;
mod apply;
mod fake;
mod plan;

pub use applied::{Adopted, Applied, AppliedTable, Programmed};
pub use apply::{
    ApplyConfig, ApplyError, ApplyReport, BACKEND_GRACE, FlowTarget, HALF_GRACE, Maps, MapsError,
    TableWrite, apply, apply_with, reap,
};
pub use fake::FakeMaps;
pub use plan::{Op, Plan, PlanConfig, PlanError, plan};
