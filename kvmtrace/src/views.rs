//! Views: how a run or a trace is shown. Text and JSON Lines ([`output`], a trace's in
//! [`replay`]), pcapng
//! ([`pcapng`]), the HTML report with its SVG path ([`report`]), the terminal UI ([`tui`]).
//! They read the model and the trace; none captures or changes anything.
pub mod output;
pub mod pcapng;
pub mod replay;
pub mod report;
pub mod tui;
