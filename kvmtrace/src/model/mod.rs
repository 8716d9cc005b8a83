//! Events → packet journeys → flows → verdicts. Pure: no eBPF, no I/O, so every rule here is
//! unit-tested from recorded events and `replay` works on any machine.
//!
//! This file only declares the parts and hands their names on, so that the other layers
//! import `crate::model::Verdict`; the parts import each other by their own paths
//! (`crate::model::journey::Journey`), never through here. Bottom up: `event`, `stage`,
//! `facts`, `drop`, `journey`, `verdict`, `fix`, `decision`, `archive`, `diagnose`, `tracker`
//! (`dest`, the operator's destination, needs none of them).

mod archive;
pub mod decision;
pub mod dest;
mod diagnose;
pub mod drop;
pub mod event;
mod facts;
pub mod filter;
pub mod fix;
mod journey;
mod stage;
mod tracker;
mod verdict;

pub use diagnose::delivered_clause;
pub use facts::{DevAddr, DevFacts, HostFacts, NfChain, VxlanFacts, VXLAN_OVERHEAD};
pub use journey::{DropSite, Journey, Outcome, Rewrite};
pub use stage::{point_label, stage_of, Stage};
pub use tracker::{BudgetEntry, Model, DEFAULT_RETAINED, L2_KEPT, MAX_ARCHIVED_FLOWS};
pub use verdict::{exit_status, Blind, FlowKey, Status, Verdict, VmGone, SCHEMA};

#[cfg(test)]
mod tests;
