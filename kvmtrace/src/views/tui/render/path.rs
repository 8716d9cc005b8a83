//! The path panel: the request's way through the host and the reply's, packets counted at
//! each hop, the stop point marked.

use super::style::*;
use crate::model::event::{Direction, NfHook};
use crate::views::tui::app::{dir_idx, Node, View};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};

pub(super) const REQUEST_PATH: [Node; 7] = [
    Node::Tap,
    Node::Bridge,
    Node::Prerouting,
    Node::Routing,
    Node::Forward,
    Node::Postrouting,
    Node::Uplink,
];

/// The reply's path, in the columns of the request's (it is read right to left).
pub(super) const REPLY_COLUMNS: [Node; 7] = [
    Node::Tap,
    Node::Bridge,
    Node::Postrouting,
    Node::Forward,
    Node::Routing,
    Node::Prerouting,
    Node::Uplink,
];

/// One cell of the path diagram.
pub(super) struct Hop {
    label: String,
    count: u64,
    drops: u64,
    /// Where packets stop: reached here, fewer (or none) went on.
    stop: bool,
}

impl Hop {
    fn text(&self) -> String {
        let mut s = format!(
            "{}{} {}",
            if self.stop { "■ " } else { "" },
            self.label,
            self.count
        );
        if self.drops > 0 {
            s.push_str(&format!(" ✗{}", self.drops));
        }
        s
    }
    fn style(&self) -> Style {
        if self.stop && self.drops > 0 {
            bold().fg(Color::White).bg(Color::Red)
        } else if self.stop {
            bold().fg(Color::Black).bg(Color::Yellow)
        } else if self.drops > 0 {
            bold().fg(Color::Red)
        } else if self.count > 0 {
            Style::new().fg(Color::Green)
        } else {
            dim()
        }
    }
}

pub(super) fn node_label(n: Node, v: &View, tap: &str, short: bool) -> String {
    let named = |kind: &str, name: Option<&str>| match name {
        Some(d) if !d.is_empty() && !short => format!("{kind} {d}"),
        _ => kind.to_string(),
    };
    // A netfilter hook: its abbreviation, or the hook's own name.
    let hook = |h: NfHook, abbrev: &str| if short { abbrev } else { h.name() }.to_string();
    match n {
        Node::Tap => named("tap", Some(tap)),
        Node::Bridge => named(if short { "br" } else { "bridge" }, v.bridge.as_deref()),
        Node::Uplink => named(if short { "up" } else { "uplink" }, v.uplink.as_deref()),
        Node::Routing => if short { "route" } else { "routing" }.into(),
        Node::Prerouting => hook(NfHook::Prerouting, "PRE"),
        Node::Input => hook(NfHook::Input, "IN"),
        Node::Forward => hook(NfHook::Forward, "FWD"),
        Node::Output => hook(NfHook::Output, "OUT"),
        Node::Postrouting => hook(NfHook::Postrouting, "POST"),
    }
}

/// Where the packets of one direction stop: the first hop, in the order they pass, that was
/// reached and where a drop was seen or after which fewer packets were seen.
pub(super) fn stop_of(v: &View, dir: Direction) -> Option<Node> {
    let d = dir_idx(dir);
    let order: Vec<Node> = match dir {
        Direction::Request => REQUEST_PATH.to_vec(),
        Direction::Reply => REPLY_COLUMNS.iter().rev().copied().collect(),
    };
    let c = |n: Node| v.hop_counts[d][n.idx()];
    // After the route lookup a packet goes on to FORWARD, or to INPUT when it is for the host.
    let onward = |m: Node| match m {
        Node::Forward => c(Node::Forward) + c(Node::Input),
        m => c(m),
    };
    // Compared with the furthest any later node got: a node no hook observes (a netfilter
    // hook without the full hook set) shows 0 and is not a stop by itself.
    order.iter().enumerate().find_map(|(i, &n)| {
        let later = order[i + 1..].iter().map(|&m| onward(m)).max();
        let next_fewer = later.is_some_and(|m| m < c(n));
        (c(n) > 0 && (v.drop_counts[d][n.idx()] > 0 || next_fewer)).then_some(n)
    })
}

pub(super) fn path_lines(v: &View, tap: &str, width: usize) -> Vec<Line<'static>> {
    let stops = [stop_of(v, Direction::Request), stop_of(v, Direction::Reply)];
    let hop = |dir: Direction, n: Node, short: bool| {
        let d = dir_idx(dir);
        Hop {
            label: node_label(n, v, tap, short),
            count: v.hop_counts[d][n.idx()],
            drops: v.drop_counts[d][n.idx()],
            stop: stops[d] == Some(n),
        }
    };
    let rows = |short: bool| -> [Vec<Hop>; 2] {
        [
            REQUEST_PATH
                .iter()
                .map(|&n| hop(Direction::Request, n, short))
                .collect(),
            REPLY_COLUMNS
                .iter()
                .map(|&n| hop(Direction::Reply, n, short))
                .collect(),
        ]
    };
    let widths = |rows: &[Vec<Hop>; 2]| -> Vec<usize> {
        (0..REQUEST_PATH.len())
            .map(|i| {
                rows[0][i]
                    .text()
                    .chars()
                    .count()
                    .max(rows[1][i].text().chars().count())
            })
            .collect()
    };
    // Full names when they fit; short ones (PRE, FWD, …) on a narrow terminal.
    let mut short = false;
    let mut cells = rows(false);
    let mut w = widths(&cells);
    if "request VM".len() + w.iter().sum::<usize>() + 4 * 8 + "outside".len() > width {
        short = true;
        cells = rows(true);
        w = widths(&cells);
    }
    let nothing_back = v.hop_counts[0][Node::Uplink.idx()] > 0
        && v.hop_counts[1][Node::Uplink.idx()] == 0
        && v.hop_counts[1][Node::Tap.idx()] == 0;
    let mut lines = Vec::new();
    for (d, (name, arrow)) in [("request ", " ─▶ "), ("reply   ", " ◀─ ")]
        .into_iter()
        .enumerate()
    {
        let mut spans = vec![Span::styled(name, bold()), Span::raw("VM")];
        for (i, h) in cells[d].iter().enumerate() {
            spans.push(Span::styled(arrow, dim()));
            spans.push(Span::styled(format!("{:<1$}", h.text(), w[i]), h.style()));
        }
        spans.push(Span::styled(arrow, dim()));
        let outside_style = if d == 1 && nothing_back {
            bold().fg(Color::Black).bg(Color::Yellow)
        } else {
            Style::new()
        };
        spans.push(Span::styled(
            if short { "out" } else { "outside" },
            outside_style,
        ));
        // Packets the host itself takes or sends (INPUT/OUTPUT) are off the forwarding path.
        for n in [Node::Input, Node::Output] {
            let (c, x) = (v.hop_counts[d][n.idx()], v.drop_counts[d][n.idx()]);
            if c > 0 || x > 0 {
                spans.push(Span::styled(
                    format!("   host {} {c}", node_label(n, v, tap, false)),
                    Style::new().fg(Color::Cyan),
                ));
            }
            if x > 0 {
                spans.push(Span::styled(format!(" ✗{x}"), bold().fg(Color::Red)));
            }
        }
        lines.push(Line::from(spans));
    }
    let mut notes = Vec::new();
    for dir in [Direction::Request, Direction::Reply] {
        let Some(n) = stops[dir_idx(dir)] else {
            continue;
        };
        let d = dir_idx(dir);
        let reached = v.hop_counts[d][n.idx()];
        let dropped = v.drop_counts[d][n.idx()];
        let what = match dir {
            Direction::Request => "requests",
            Direction::Reply => "replies",
        };
        let label = node_label(n, v, tap, false);
        let (text, style) = if dropped > 0 {
            let reasons: Vec<String> = v
                .drops
                .iter()
                .filter(|p| p.dir == dir && Node::of_drop(p.stage, p.hook) == Some(n))
                .map(|p| p.reason.clone())
                .collect();
            (
                format!(
                    "■ {what} stop at {label}: {dropped} of {reached} dropped [{}]",
                    reasons.join(", ")
                ),
                bold().fg(Color::Red),
            )
        } else {
            (
                format!(
                    "■ {what} stop after {label}: {reached} reached it, fewer went on (no drop seen yet)"
                ),
                bold().fg(Color::Yellow),
            )
        };
        notes.push(Line::styled(text, style));
    }
    if nothing_back {
        notes.push(Line::styled(
            format!(
                "■ requests left the host on {} and no reply came back from outside",
                v.uplink.as_deref().unwrap_or("the uplink")
            ),
            bold().fg(Color::Yellow),
        ));
    }
    if v.packets.is_empty() {
        notes.push(Line::styled("waiting for packets from the VM…", dim()));
    }
    lines.extend(notes.into_iter().take(3));
    lines
}
