//! What the caller hands the UI about the run (its names, its counters) and what a key asks
//! the caller to do.

use std::time::Duration;

/// What the UI shows about the run in its status line; fixed for the run except the filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TuiMeta {
    /// The VM as resolved (its name, or the argument when it has none).
    pub vm: String,
    /// The VM's tap device.
    pub tap: String,
    /// The protocol/port filter in force, as shown (`icmp`, `tcp port 443`, `any`).
    pub filter: String,
    /// The destination as given (`203.0.113.1`, `203.0.113.0/24`).
    pub dest: String,
}

/// Run counters for the status line, from the caller (it owns the clock and the tracer).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TuiStats {
    pub elapsed: Duration,
    pub events_per_sec: f64,
    /// Events delivered to userspace.
    pub events: u64,
    /// Events lost to a full ring buffer.
    pub lost: u64,
    /// Events past the per-flow budget (counted in the kernel, not delivered).
    pub sampled_out: u64,
}

/// What a key asks the caller to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    /// `q` or Ctrl-C (raw mode turns Ctrl-C into a key, not a SIGINT).
    Quit,
    /// `/` and a new filter.
    SetFilter(crate::model::filter::PacketFilter),
}
