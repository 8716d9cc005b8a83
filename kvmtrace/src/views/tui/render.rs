//! Rendering: an [`App`] into a ratatui [`Frame`], nothing else. No I/O and no state of its own
//! (scroll offsets are derived from the selection), so the same `App` always draws the same
//! screen, on a terminal or on a `TestBackend`.

use super::app::{dir_idx, App, DropPoint, Mode, Node, Packet, View};
use crate::model::event::{Direction, Point, TraceEvent, Tuple};
use crate::model::{point_label, Outcome, Stage, Status, Verdict};
use crate::views::output::group_verdicts;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Table, TableState};
use ratatui::Frame;
use std::time::Duration;

const REQUEST_PATH: [Node; 7] = [
    Node::Tap,
    Node::Bridge,
    Node::Prerouting,
    Node::Routing,
    Node::Forward,
    Node::Postrouting,
    Node::Uplink,
];
/// The reply's path, in the columns of the request's (it is read right to left).
const REPLY_COLUMNS: [Node; 7] = [
    Node::Tap,
    Node::Bridge,
    Node::Postrouting,
    Node::Forward,
    Node::Routing,
    Node::Prerouting,
    Node::Uplink,
];

fn dim() -> Style {
    Style::new().fg(Color::DarkGray)
}
fn bold() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    let [status, body, hints] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(status_line(app)), status);
    match &app.mode {
        Mode::Main => draw_main(frame, body, app),
        Mode::Journey { id, copy, scroll } => {
            let p = app.view().packet(*id).unwrap_or(copy);
            draw_journey(frame, body, app.view(), p, *scroll);
        }
    }
    frame.render_widget(Paragraph::new(hint_line(app)), hints);
    if app.help {
        draw_help(frame, area);
    }
}

fn elapsed(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{:02}:{:02}", s / 60, s % 60)
    }
}

fn status_line(app: &App) -> Line<'static> {
    let m = &app.meta;
    let s = &app.stats;
    let sep = || Span::styled(" │ ", dim());
    let mut spans = vec![
        Span::styled(" kvmtrace ", bold().add_modifier(Modifier::REVERSED)),
        Span::raw(format!(" VM {} · tap {} → {}", m.vm, m.tap, m.dest)),
        sep(),
        Span::raw(format!("filter {}", m.filter)),
        sep(),
        Span::raw(elapsed(s.elapsed)),
        sep(),
        Span::raw(format!("{:.0} ev/s", s.events_per_sec)),
        sep(),
        Span::raw(format!("{} events", s.events)),
        sep(),
        Span::styled(
            format!("lost {}", s.lost),
            if s.lost > 0 {
                bold().fg(Color::Red)
            } else {
                Style::new()
            },
        ),
        sep(),
        Span::raw(format!("sampled out {}", s.sampled_out)),
    ];
    if app.is_paused() {
        spans.push(Span::raw(" "));
        spans.push(Span::styled(
            format!(
                " PAUSED +{} events ",
                app.pushed.saturating_sub(app.pushed_at_pause)
            ),
            bold().fg(Color::Black).bg(Color::Yellow),
        ));
    }
    Line::from(spans)
}

fn hint_line(app: &App) -> Line<'static> {
    if let Some(input) = &app.input {
        let mut spans = vec![
            Span::styled(" filter> ", bold().fg(Color::Cyan)),
            Span::raw(input.text.clone()),
            Span::styled("█", Style::new().fg(Color::Cyan)),
        ];
        match &input.error {
            Some(e) => spans.push(Span::styled(format!("  {e}"), bold().fg(Color::Red))),
            None => spans.push(Span::styled(
                "  icmp | tcp [PORT] | udp [PORT] | any · Enter apply · Esc cancel",
                dim(),
            )),
        }
        return Line::from(spans);
    }
    let keys: &[(&str, &str)] = match app.mode {
        Mode::Main => &[
            ("↑↓ PgUp PgDn", "select"),
            ("Enter", "inspect"),
            ("p", if app.is_paused() { "resume" } else { "pause" }),
            ("/", "filter"),
            ("?", "help"),
            ("q", "quit"),
        ],
        Mode::Journey { .. } => &[
            ("Esc", "back"),
            ("↑↓ PgUp PgDn", "scroll"),
            ("p", if app.is_paused() { "resume" } else { "pause" }),
            ("/", "filter"),
            ("?", "help"),
            ("q", "quit"),
        ],
    };
    let mut spans = vec![Span::raw(" ")];
    for (k, what) in keys {
        spans.push(Span::styled(*k, bold().fg(Color::Cyan)));
        spans.push(Span::raw(format!(" {what}  ")));
    }
    Line::from(spans)
}

fn draw_main(frame: &mut Frame, area: Rect, app: &App) {
    let v = app.view();
    let width = area.width.saturating_sub(2).max(1) as usize;
    let path = path_lines(v, &app.meta.tap, width);
    let verdicts = verdict_text(v, width);
    let verdict_rows = verdicts.lines.len();
    let [path_area, verdict_area, drop_area, packet_area] = Layout::vertical([
        Constraint::Length(path.len() as u16 + 2),
        Constraint::Length((verdict_rows.clamp(1, 8) + 2) as u16),
        Constraint::Length(if v.drops.is_empty() {
            3
        } else {
            v.drops.len().min(6) as u16 + 3
        }),
        Constraint::Min(4),
    ])
    .areas(area);
    frame.render_widget(
        Paragraph::new(path).block(Block::bordered().title(" packet path ")),
        path_area,
    );
    frame.render_widget(
        Paragraph::new(verdicts).block(Block::bordered().title(" verdict per flow ")),
        verdict_area,
    );
    draw_drops(frame, drop_area, app);
    draw_packets(frame, packet_area, app);
}

/// One cell of the path diagram.
struct Hop {
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

fn node_label(n: Node, v: &View, tap: &str, short: bool) -> String {
    let named = |kind: &str, name: Option<&str>| match name {
        Some(d) if !d.is_empty() && !short => format!("{kind} {d}"),
        _ => kind.to_string(),
    };
    match (n, short) {
        (Node::Tap, _) => named("tap", Some(tap)),
        (Node::Bridge, _) => named(if short { "br" } else { "bridge" }, v.bridge.as_deref()),
        (Node::Uplink, _) => named(if short { "up" } else { "uplink" }, v.uplink.as_deref()),
        (Node::Routing, true) => "route".into(),
        (Node::Routing, false) => "routing".into(),
        (Node::Prerouting, true) => "PRE".into(),
        (Node::Input, true) => "IN".into(),
        (Node::Forward, true) => "FWD".into(),
        (Node::Output, true) => "OUT".into(),
        (Node::Postrouting, true) => "POST".into(),
        (Node::Prerouting, false) => "PREROUTING".into(),
        (Node::Input, false) => "INPUT".into(),
        (Node::Forward, false) => "FORWARD".into(),
        (Node::Output, false) => "OUTPUT".into(),
        (Node::Postrouting, false) => "POSTROUTING".into(),
    }
}

/// Where the packets of one direction stop: the first hop, in the order they pass, that was
/// reached and where a drop was seen or after which fewer packets were seen.
fn stop_of(v: &View, dir: Direction) -> Option<Node> {
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

fn path_lines(v: &View, tap: &str, width: usize) -> Vec<Line<'static>> {
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

fn status_style(s: Status) -> Style {
    match s {
        Status::Delivered => bold().fg(Color::Green),
        Status::Dropped => bold().fg(Color::Red),
        Status::NoReply => bold().fg(Color::Yellow),
        Status::Misrouted => bold().fg(Color::Magenta),
        Status::NoTraffic => bold().fg(Color::DarkGray),
    }
}

/// Splits `text` into lines of at most `width` characters, at spaces where it can.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(10);
    let mut lines = vec![String::new()];
    for word in text.split(' ') {
        let cur = lines.last_mut().expect("one line at least");
        let (n, w) = (cur.chars().count(), word.chars().count());
        if n > 0 && n + 1 + w > width {
            lines.push(word.to_string());
        } else {
            if n > 0 {
                cur.push(' ');
            }
            cur.push_str(word);
        }
    }
    lines
}

/// Each flow: its status, name, counts and place, then the summary (the next step after its
/// `→`) wrapped under it. Flows that ended identically (`output::same_as`) are one entry: their
/// count, common name, summed counts and the times of their first and last packet.
fn verdict_text(v: &View, width: usize) -> Text<'static> {
    if v.verdicts.is_empty() {
        return Text::from(Line::styled("no flow judged yet", dim()));
    }
    let mut lines = Vec::new();
    for g in group_verdicts(&v.verdicts, &v.verdict_times) {
        let first = g.first();
        let mut at = Vec::new();
        if let Some(s) = first.stage {
            at.push(s.name().to_string());
        }
        if let Some(h) = first.hook {
            at.push(h.to_string());
        }
        if let Some(d) = &first.device {
            at.push(d.clone());
        }
        if let Some(r) = &first.reason {
            at.push(r.clone());
        }
        let mut spans = vec![Span::styled(
            format!("{:<10}", first.status.name().to_uppercase()),
            status_style(first.status),
        )];
        if g.count() > 1 {
            spans.push(Span::styled(format!("{} flows ", g.count()), bold()));
        }
        spans.push(Span::styled(g.label(), bold()));
        spans.push(Span::raw(format!(
            "  requests {} replies {}  {}",
            g.requests(),
            g.replies(),
            at.join(" ")
        )));
        lines.push(Line::from(spans));
        if g.count() > 1 {
            let mut seen = format!("{:10}", "");
            if let Some((a, b)) = g.span {
                seen.push_str(&format!(
                    "first {}s, last {}s; ",
                    rel_secs(v, a),
                    rel_secs(v, b)
                ));
            }
            seen.push_str(&g.members_text(5));
            lines.push(Line::styled(seen, dim()));
        }
        for l in wrap(&g.summary(), width.saturating_sub(10)) {
            lines.push(Line::raw(format!("{:10}{l}", "")));
        }
    }
    Text::from(lines)
}

/// The rule or route behind a drop, when the verdicts name one.
fn rule_of(p: &DropPoint, verdicts: &[Verdict]) -> String {
    match (p.stage, p.hook, &p.route) {
        (Stage::Netfilter, Some(h), _) => verdicts
            .iter()
            .find(|v| v.hook == Some(h) && !v.chains.is_empty())
            .map(|v| {
                let chain = v
                    .chains
                    .iter()
                    .find(|c| c.contains("policy drop"))
                    .unwrap_or(&v.chains[0]);
                match &v.firewall {
                    Some(fw) => format!("{fw}: {chain}"),
                    None => chain.clone(),
                }
            })
            .unwrap_or_else(|| "-".into()),
        (Stage::Routing, _, Some(r)) => format!(
            "table {}: {}",
            r.table_name(),
            r.err_name().unwrap_or("route found")
        ),
        _ => "-".into(),
    }
}

/// How long ago kernel time `ns` was, on the caller's clock (`stats.elapsed`); without one,
/// the time into the run.
fn ago(app: &App, v: &View, ns: u64) -> String {
    let since_first = Duration::from_nanos(ns.saturating_sub(v.t0.unwrap_or(ns)));
    match app.first_event_at {
        Some(first) if !app.stats.elapsed.is_zero() => {
            let ago = app.stats.elapsed.saturating_sub(first + since_first);
            format!("{:.0}s ago", ago.as_secs_f64())
        }
        _ => format!("+{:.1}s", since_first.as_secs_f64()),
    }
}

fn draw_drops(frame: &mut Frame, area: Rect, app: &App) {
    let v = app.view();
    let header = Row::new([
        "dir",
        "stage",
        "hook",
        "device",
        "reason",
        "rule",
        "count",
        "last seen",
    ])
    .style(bold());
    let block = Block::bordered().title(format!(" drop points ({}) ", v.drops.len()));
    if v.drops.is_empty() {
        frame.render_widget(
            Paragraph::new(Line::styled("no drop seen", dim())).block(block),
            area,
        );
        return;
    }
    let mut drops: Vec<&DropPoint> = v.drops.iter().collect();
    drops.sort_by(|a, b| b.count.cmp(&a.count).then(b.last_ns.cmp(&a.last_ns)));
    let rows: Vec<Row> = drops
        .iter()
        .map(|p| {
            Row::new([
                Cell::from(dir_short(p.dir)),
                Cell::from(p.stage.name()),
                Cell::from(p.hook.map(|h| h.name()).unwrap_or("-")),
                Cell::from(p.device.clone()),
                Cell::from(Span::styled(p.reason.clone(), bold().fg(Color::Red))),
                Cell::from(rule_of(p, &v.verdicts)),
                Cell::from(format!("{:>5}", p.count)),
                Cell::from(ago(app, v, p.last_ns)),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(3),
            Constraint::Length(9),
            Constraint::Length(11),
            Constraint::Length(8),
            Constraint::Length(22),
            Constraint::Fill(1),
            Constraint::Length(5),
            Constraint::Length(10),
        ],
    )
    .header(header)
    .block(block);
    frame.render_widget(table, area);
}

fn dir_short(d: Direction) -> &'static str {
    match d {
        Direction::Request => "req",
        Direction::Reply => "rep",
    }
}

/// The headers a packet had when first seen (route lookups carry no packet headers).
fn first_headers(p: &Packet) -> String {
    p.journey
        .hops
        .iter()
        .find(|h| h.point != Point::Fib && h.tuple.is_some())
        .map(TraceEvent::headers)
        .unwrap_or_else(|| "(no IPv4 header)".into())
}

fn outcome_text(p: &Packet) -> (String, Style) {
    let first = p.journey.first_tuple();
    match p.journey.outcome() {
        Outcome::Dropped(s) => (
            format!(
                "DROPPED at {} on {} [{}]",
                s.hook
                    .map(|h| h.name().to_string())
                    .unwrap_or_else(|| s.stage.name().to_string()),
                s.device,
                s.reason
            ),
            bold().fg(Color::Red),
        ),
        Outcome::LeftHost { device, tuple } => {
            let src = match (tuple, first) {
                (Some(t), Some(f)) if t.src != f.src => format!(" as {}", t.src),
                _ => String::new(),
            };
            (
                format!("left the host on {device}{src}"),
                Style::new().fg(Color::Green),
            )
        }
        Outcome::LoopedBack { device, .. } => (
            format!("LOOPED BACK out of {device}"),
            bold().fg(Color::Magenta),
        ),
        Outcome::DeliveredToVm { device } => (
            format!("delivered to the VM ({device})"),
            Style::new().fg(Color::Green),
        ),
        Outcome::DeliveredLocally => ("taken by the host (INPUT)".into(), Style::new()),
        Outcome::InFlight { stage, device } => (
            format!(
                "{} {} {device}",
                if p.journey.closed {
                    "freed at"
                } else {
                    "last seen at"
                },
                stage.name()
            ),
            Style::new().fg(Color::Yellow),
        ),
    }
}

fn rel_secs(v: &View, ts: u64) -> String {
    format!("+{:.6}", ts.saturating_sub(v.t0.unwrap_or(ts)) as f64 / 1e9)
}

fn draw_packets(frame: &mut Frame, area: Rect, app: &App) {
    let v = app.view();
    let visible = area.height.saturating_sub(3).max(1) as usize;
    let selected = app.selected_row();
    let offset = selected.map_or(0, |s| (s + 1).saturating_sub(visible));
    let rows: Vec<Row> = (offset..(offset + visible).min(v.packets.len()))
        .filter_map(|r| v.row(r))
        .map(|p| {
            let (status, style) = outcome_text(p);
            Row::new([
                Cell::from(format!("#{}", p.journey.id)),
                Cell::from(
                    p.journey
                        .hops
                        .first()
                        .map(|h| rel_secs(v, h.ts_ns))
                        .unwrap_or_default(),
                ),
                Cell::from(dir_short(p.journey.dir)),
                Cell::from(first_headers(p)),
                Cell::from(format!(
                    "{:>4}",
                    p.journey.hops.len() + p.hops_over_cap as usize
                )),
                Cell::from(Span::styled(status, style)),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(7),
            Constraint::Length(11),
            Constraint::Length(3),
            Constraint::Fill(3),
            Constraint::Length(4),
            Constraint::Fill(2),
        ],
    )
    .header(Row::new(["#", "time", "dir", "packet", "hops", "status"]).style(bold()))
    .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
    .highlight_symbol("▶ ")
    .block(Block::bordered().title(format!(
        " recent packets ({} kept, newest first; Enter: its journey) ",
        v.packets.len()
    )));
    let mut state = TableState::default().with_selected(selected.map(|s| s - offset));
    frame.render_stateful_widget(table, area, &mut state);
}

/// Changes between two header sets, as `src 10.77.0.2 → 192.0.2.2`.
fn tuple_changes(a: &Tuple, b: &Tuple) -> Vec<String> {
    let (id, seq) = if b.proto == 1 {
        ("icmp_id", "icmp_seq")
    } else {
        ("sport", "dport")
    };
    let mut out = Vec::new();
    if a.src != b.src {
        out.push(format!("src {} → {}", a.src, b.src));
    }
    if a.dst != b.dst {
        out.push(format!("dst {} → {}", a.dst, b.dst));
    }
    if a.sport != b.sport {
        out.push(format!("{id} {} → {}", a.sport, b.sport));
    }
    if a.dport != b.dport {
        out.push(format!("{seq} {} → {}", a.dport, b.dport));
    }
    out
}

fn hop_detail(h: &TraceEvent) -> String {
    if let Some(r) = &h.route {
        return format!(
            "table {}: {}{}",
            r.table_name(),
            r.err_name().map(str::to_string).unwrap_or_else(|| format!(
                "→ {}",
                if r.device.is_empty() { "?" } else { &r.device }
            )),
            r.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
        );
    }
    if h.point == Point::Drop {
        return format!(
            "DROP {} at {}",
            h.reason.as_deref().unwrap_or("?"),
            h.location.as_deref().unwrap_or("?")
        );
    }
    let mut s = format!("{}  ttl={} len={}", h.headers(), h.ttl, h.len);
    if let (Some(sm), Some(dm)) = (&h.smac, &h.dmac) {
        s.push_str(&format!("  {sm} > {dm}"));
    }
    s
}

fn draw_journey(frame: &mut Frame, area: Rect, v: &View, p: &Packet, scroll: u16) {
    let j = &p.journey;
    let (outcome, ostyle) = outcome_text(p);
    let mut lines = vec![Line::from(vec![
        Span::styled("outcome   ", bold()),
        Span::styled(outcome, ostyle),
    ])];
    let rewrites = j.rewrites();
    if rewrites.is_empty() {
        lines.push(Line::from(vec![
            Span::styled("rewrites  ", bold()),
            Span::styled("none", dim()),
        ]));
    }
    for r in &rewrites {
        lines.push(Line::from(vec![
            Span::styled("rewrite   ", bold()),
            Span::styled(
                format!("{} {} → {}", r.field, r.from, r.to),
                bold().fg(Color::Yellow),
            ),
            Span::raw(format!(" at {}", r.at)),
        ]));
    }
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        format!(
            "{:>12}  {:<18} {:<9} {}",
            "µs", "hop", "device", "headers at this hop"
        ),
        bold(),
    ));
    let t0 = j.hops.first().map_or(0, |h| h.ts_ns);
    let mut prev: Option<Tuple> = None;
    // The drop's hop says which netfilter hook it was in (from its stack, when no netfilter
    // link saw the packet enter it).
    let drop_hook = match j.outcome() {
        Outcome::Dropped(site) => site.hook.map(|h| h.name()),
        _ => None,
    };
    for h in &j.hops {
        let style = match h.point {
            Point::Drop => bold().fg(Color::Red),
            Point::Fib => Style::new().fg(Color::Cyan),
            _ => Style::new(),
        };
        let label = match (h.point, drop_hook) {
            (Point::Drop, Some(hook)) => format!("drop in {hook}"),
            _ => point_label(h),
        };
        lines.push(Line::styled(
            format!(
                "{:>12.1}  {:<18} {:<9} {}",
                h.ts_ns.saturating_sub(t0) as f64 / 1e3,
                label,
                if h.device.is_empty() { "-" } else { &h.device },
                hop_detail(h)
            ),
            style,
        ));
        if h.point == Point::Drop {
            // The kernel stack, innermost first, without our own tracing frames.
            let frames: Vec<&str> = h
                .stack
                .iter()
                .map(String::as_str)
                .filter(|f| !f.starts_with("bpf_prog_") && !f.starts_with("bpf_trace_run"))
                .take(12)
                .collect();
            for (i, chunk) in frames.chunks(4).enumerate() {
                lines.push(Line::styled(
                    format!(
                        "{:>14}{}{}",
                        "",
                        if i == 0 { "stack: " } else { "       ← " },
                        chunk.join(" ← ")
                    ),
                    Style::new().fg(Color::Red),
                ));
            }
        }
        if h.point == Point::Fib {
            continue;
        }
        if let Some(t) = h.tuple {
            if let Some(before) = prev {
                let changes = tuple_changes(&before, &t);
                if !changes.is_empty() {
                    lines.push(Line::styled(
                        format!(
                            "{:>14}↳ rewritten at {}: {}",
                            "",
                            point_label(h),
                            changes.join(", ")
                        ),
                        bold().fg(Color::Yellow),
                    ));
                }
            }
            prev = Some(t);
        }
    }
    if p.hops_over_cap > 0 {
        lines.push(Line::styled(
            format!("… {} more hops, not kept", p.hops_over_cap),
            dim(),
        ));
    }
    let title = format!(
        " packet #{} · {} · {} · first seen {} ",
        j.id,
        j.dir,
        first_headers(p),
        j.hops
            .first()
            .map(|h| rel_secs(v, h.ts_ns))
            .unwrap_or_default()
    );
    frame.render_widget(
        Paragraph::new(lines)
            .scroll((scroll, 0))
            .block(Block::bordered().title(title)),
        area,
    );
}

fn draw_help(frame: &mut Frame, area: Rect) {
    let keys = [
        ("q, Ctrl-C", "quit (verdicts are printed after)"),
        (
            "p, space",
            "pause / resume the display (collection goes on)",
        ),
        ("↑ ↓ PgUp PgDn", "select a packet (journey view: scroll)"),
        ("Home / End", "newest / oldest packet"),
        ("Enter", "the selected packet's journey, hop by hop"),
        ("Esc", "back to the overview"),
        ("/", "filter: tcp 443 · udp 53 · icmp · any"),
        ("?", "this help"),
    ];
    let mut lines: Vec<Line> = keys
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!(" {k:<15}"), bold().fg(Color::Cyan)),
                Span::raw(*what),
            ])
        })
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        " ■ marks the hop where packets stop; ✗N counts drops there.",
        dim(),
    ));
    let w = 66.min(area.width);
    let h = (lines.len() as u16 + 2).min(area.height);
    let popup = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" keys (any key closes) ")),
        popup,
    );
}
