//! The live terminal UI of `kvmtrace follow`: the packet path with its counters and the hop where
//! packets stop, the drop points, the recent packets (Enter: one packet's whole journey), the
//! verdict per flow (flows that ended identically on one line, `output::same_as`) and a status line.
//!
//! Three parts, as in bandwhich (collection, plain-data UI state, rendering):
//! - [`App`] (app.rs): plain-data UI state, no I/O. The follow loop pushes each event as the model
//!   placed it (`App::push(journey, &event)`), hands over verdicts and counters now and then, and
//!   feeds key presses to [`App::on_key`], which answers with an [`Action`] for the caller.
//!   Everything it keeps is bounded ([`PACKET_CAP`] packets of at most [`HOP_CAP`] hops, at most
//!   [`DROP_POINT_CAP`] drop points), so memory stays flat whatever the event rate.
//! - [`draw`] (render.rs): renders an `App` into a ratatui `Frame`, generic over the backend, so
//!   tests render recorded events into a `TestBackend` and compare the text.
//! - [`Live`] (live.rs): the only part that touches the terminal: raw mode, alternate screen, a
//!   panic hook that gives the terminal back, a thread reading keys into a channel. The caller
//!   calls [`Live::tick`] on a timer (10 Hz is plenty): rendering is decoupled from collection,
//!   so a flood of events costs one bounded `push` each and never a redraw.

mod app;
mod live;
mod render;

pub use app::{App, DropPoint, Node, Packet, DROP_POINT_CAP, HOP_CAP, PACKET_CAP};
pub use live::Live;
pub use render::draw;

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
