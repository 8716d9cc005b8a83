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
    /// `/` and a new filter: `proto` 0 any, 1 icmp, 6 tcp, 17 udp; `port` 0 any.
    SetFilter {
        proto: u8,
        port: u16,
    },
}

/// Parses what is typed after `/`: `tcp 443`, `tcp port 443`, `udp 53`, `icmp`, `any`, `443`
/// (any protocol, that port) or nothing (any). Returns (proto, port) or a message for the input
/// line.
pub fn parse_filter(s: &str) -> Result<(u8, u16), String> {
    let words: Vec<String> = s
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .filter(|w| w != "port")
        .collect();
    let proto_of = |w: &str| match w {
        "any" | "all" | "ip" => Some(0u8),
        "icmp" => Some(1),
        "tcp" => Some(6),
        "udp" => Some(17),
        _ => None,
    };
    let port_of = |w: &str| {
        w.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("'{w}' is not a port (1-65535)"))
    };
    let (proto, port) = match words.as_slice() {
        [] => (0, 0),
        [w] => match proto_of(w) {
            Some(p) => (p, 0),
            None if w.chars().all(|c| c.is_ascii_digit()) => (0, port_of(w)?),
            None => return Err(format!("unknown protocol '{w}': icmp, tcp, udp or any")),
        },
        [p, n] => {
            let p = proto_of(p)
                .ok_or_else(|| format!("unknown protocol '{p}': icmp, tcp, udp or any"))?;
            (p, port_of(n)?)
        }
        _ => return Err("expected: PROTO [PORT], e.g. 'tcp 443', 'icmp', 'any'".into()),
    };
    if proto == 1 && port != 0 {
        return Err("a port applies to tcp and udp, not icmp".into());
    }
    Ok((proto, port))
}

/// How a filter is shown in the status line: `any`, `icmp`, `tcp port 443`, `any port 53`.
pub fn filter_label(proto: u8, port: u16) -> String {
    let p = if proto == 0 {
        "any"
    } else {
        crate::model::event::proto_name(proto)
    };
    if port == 0 {
        p.to_string()
    } else {
        format!("{p} port {port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_as_typed() {
        assert_eq!(parse_filter("tcp 443"), Ok((6, 443)));
        assert_eq!(parse_filter("  TCP port 443 "), Ok((6, 443)));
        assert_eq!(parse_filter("udp 53"), Ok((17, 53)));
        assert_eq!(parse_filter("icmp"), Ok((1, 0)));
        assert_eq!(parse_filter("any"), Ok((0, 0)));
        assert_eq!(parse_filter(""), Ok((0, 0)));
        assert_eq!(parse_filter("8080"), Ok((0, 8080)));
        assert!(parse_filter("icmp 7").unwrap_err().contains("not icmp"));
        assert!(parse_filter("sctp")
            .unwrap_err()
            .contains("unknown protocol"));
        assert!(parse_filter("tcp 0").unwrap_err().contains("not a port"));
        assert!(parse_filter("tcp 70000")
            .unwrap_err()
            .contains("not a port"));
        assert!(parse_filter("tcp 1 2").is_err());
    }

    #[test]
    fn filter_labels() {
        assert_eq!(filter_label(0, 0), "any");
        assert_eq!(filter_label(1, 0), "icmp");
        assert_eq!(filter_label(6, 443), "tcp port 443");
        assert_eq!(filter_label(0, 53), "any port 53");
    }
}
