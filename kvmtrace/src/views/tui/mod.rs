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
//! - [`draw`] (render/): renders an `App` into a ratatui `Frame`, generic over the backend, so
//!   tests render recorded events into a `TestBackend` and compare the text.
//! - [`Live`] (live.rs): the only part that touches the terminal: raw mode, alternate screen, a
//!   panic hook that gives the terminal back, a thread reading keys into a channel. The caller
//!   calls [`Live::tick`] on a timer (10 Hz is plenty): rendering is decoupled from collection,
//!   so a flood of events costs one bounded `push` each and never a redraw.

mod app;
mod live;
mod meta;
mod render;

pub use app::{App, DropPoint, Node, Packet, DROP_POINT_CAP, HOP_CAP, PACKET_CAP};
pub use live::Live;
pub use meta::{Action, TuiMeta, TuiStats};
pub use render::draw;
