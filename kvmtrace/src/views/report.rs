//! `report`: a postmortem of a recorded trace, ready to attach to a ticket, as Markdown and as
//! one self-contained HTML page (inline CSS, no script, no external resource).
//!
//! Both are rendered from one small document ([`Doc`]) so they always say the same thing:
//! the summary verdict, the flows, the evidence for each finding (drop reason and location,
//! firewall and chains, route, rewrites, the kernel stack), the path with packet counts per
//! hop, a timeline, and the environment the trace was recorded in.

use crate::model::event::{Direction, Point, TraceEvent};
use crate::model::{point_label, Status, Verdict};
use crate::trace::analysis::{iso_utc, severity, warnings, Analysis};
use crate::views::output::{self, group_verdicts, VerdictGroup};

mod svg;
use crate::trace::Trace;
use std::fmt::Write as _;

/// Timeline rows shown; the trace keeps every event (`kvmtrace replay` shows them all).
pub const TIMELINE_MAX: usize = 500;
/// Rows of the flows table.
pub const FLOWS_MAX: usize = 100;
/// Flow names listed under a finding shared by many flows.
const GROUP_NAMES_MAX: usize = 10;

/// Inline text.
#[derive(Clone, Debug, PartialEq)]
pub enum Inline {
    Text(String),
    Bold(String),
    Code(String),
    /// A status, rendered as a coloured badge in HTML.
    Status(Status),
}

/// A block of the document.
#[derive(Clone, Debug, PartialEq)]
pub enum Block {
    Heading(u8, String),
    Para(Vec<Inline>),
    List(Vec<Vec<Inline>>),
    Table {
        head: Vec<String>,
        rows: Vec<Vec<Vec<Inline>>>,
    },
    Pre(String),
    Note(String),
    /// A picture (inline SVG from [`svg`]): drawn in HTML; Markdown has the table after it.
    Figure(String),
}

/// The report, before rendering.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc {
    pub title: String,
    pub blocks: Vec<Block>,
}

fn t(s: impl Into<String>) -> Inline {
    Inline::Text(s.into())
}
fn b(s: impl Into<String>) -> Inline {
    Inline::Bold(s.into())
}
fn c(s: impl Into<String>) -> Inline {
    Inline::Code(s.into())
}
fn cell(s: impl Into<String>) -> Vec<Inline> {
    vec![t(s)]
}
fn code_cell(s: impl Into<String>) -> Vec<Inline> {
    let s = s.into();
    if s.is_empty() || s == "-" {
        vec![t("-")]
    } else {
        vec![c(s)]
    }
}

fn status_word(s: Status) -> String {
    s.name().to_uppercase().replace('_', " ")
}

fn where_of(v: &Verdict) -> String {
    let mut w = Vec::new();
    if let Some(s) = v.stage {
        w.push(s.name().to_string());
    }
    if let Some(h) = v.hook {
        w.push(h.name().to_string());
    }
    if let Some(d) = &v.device {
        w.push(format!("on {d}"));
    }
    if let Some(d) = v.direction {
        w.push(format!("({d})"));
    }
    if w.is_empty() {
        "-".into()
    } else {
        w.join(" ")
    }
}

/// Builds the report of a trace. `source` names the trace file in the footer.
pub fn build(tr: &Trace, an: &Analysis, source: &str) -> Doc {
    let m = &tr.meta;
    let who = m.vm.clone().unwrap_or_else(|| m.tap.clone());
    let title = format!("kvmtrace postmortem: {who} → {}", m.dest);
    let mut blocks = Vec::new();

    // Summary verdict.
    if let Some(w) = an.worst() {
        let mut p = vec![
            b("Verdict: "),
            Inline::Status(w.status),
            t(" — "),
            t(&w.summary),
        ];
        if an.verdicts.len() > 1 {
            let mut counts: Vec<(Status, usize)> = Vec::new();
            for v in &an.verdicts {
                match counts.iter_mut().find(|(s, _)| *s == v.status) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((v.status, 1)),
                }
            }
            counts.sort_by_key(|(s, _)| severity(*s));
            let list: Vec<String> = counts
                .iter()
                .map(|(s, n)| format!("{n} {}", s.name()))
                .collect();
            p.push(t(format!(
                " ({} flows: {})",
                an.verdicts.len(),
                list.join(", ")
            )));
        }
        blocks.push(Block::Para(p));
    }
    blocks.push(Block::Para(vec![t(format!(
        "Recorded on {} (kernel {}) from {} for {}{}; {} events{}.",
        m.host,
        m.kernel,
        iso_utc(m.started_unix_ns),
        duration(tr),
        if tr.complete { "" } else { " (cut short)" },
        tr.events.len(),
        tr.counters
            .map(|c| format!(", {} lost", c.lost))
            .unwrap_or_else(|| ", events lost unknown".into())
    ))]));
    for w in warnings(tr, an) {
        blocks.push(Block::Note(w));
    }

    // Flows, the most serious first; flows that ended identically are one row.
    let times = output::flow_times(&an.model, &an.verdicts);
    let groups = findings(an, &times);
    blocks.push(Block::Heading(2, "Flows".into()));
    push_capped_table(
        &mut blocks,
        &[
            "flow", "status", "where", "reason", "requests", "replies", "seen",
        ],
        &groups,
        FLOWS_MAX,
        |g| {
            let v = g.first();
            let mut flow = vec![c(g.label())];
            if g.count() > 1 {
                flow.push(t(format!(" ({} flows)", g.count())));
            }
            vec![
                flow,
                vec![Inline::Status(v.status)],
                cell(where_of(v)),
                code_cell(v.reason.clone().unwrap_or_default()),
                cell(g.requests().to_string()),
                cell(g.replies().to_string()),
                cell(span_text(an, g.span)),
            ]
        },
        |n| {
            format!(
                "the table shows the {FLOWS_MAX} most serious of {n} kinds of flow; `kvmtrace replay` lists them all"
            )
        },
    );

    // Findings with their evidence: flows that ended the same way share one finding.
    blocks.push(Block::Heading(2, "Findings".into()));
    for gr in &groups {
        let g = gr.members.as_slice();
        blocks.push(Block::Heading(3, group_title(an, gr)));
        blocks.push(Block::Para(vec![t(gr.summary())]));
        if let Some(f) = &gr.first().fix {
            blocks.push(Block::Para(vec![
                t("The one command that repairs it: "),
                c(f),
            ]));
        }
        if g.len() > 1 {
            let mut p = vec![t(format!("The {} flows ({}): ", g.len(), gr.label()))];
            p.push(c(gr.members_text(GROUP_NAMES_MAX)));
            p.push(t(format!(
                ", seen {}. They ended identically: the summary and the rewrites are theirs \
                 with each flow's own id or port as *; the packet counts are all of them.",
                span_text(an, gr.span)
            )));
            blocks.push(Block::Para(p));
        }
        blocks.push(Block::List(evidence(an, gr)));
        if let Some((e, j)) = first_drop(an, g) {
            if !e.stack.is_empty() {
                blocks.push(Block::Para(vec![t(format!(
                    "Kernel stack of the drop (journey #{j}, innermost first):"
                ))]));
                blocks.push(Block::Pre(e.stack.join("\n")));
            }
        }
    }

    // The path, per finding and direction.
    blocks.push(Block::Heading(2, "Path".into()));
    blocks.push(Block::Para(vec![t(
        "Every place the packets were seen, in path order, with the number of packets seen \
         there. A hop with fewer packets than the one before it is where packets went missing.",
    )]));
    for gr in &groups {
        let g = gr.members.as_slice();
        for dir in [Direction::Request, Direction::Reply] {
            let rows = path(an, Some(g), dir);
            if rows.is_empty() {
                continue;
            }
            let title = format!("{} — {}", group_title(an, gr), dir_plural(dir));
            let v = gr.first();
            let failed_here =
                v.status != Status::Delivered && v.direction.unwrap_or(Direction::Request) == dir;
            blocks.push(Block::Heading(3, title.clone()));
            blocks.push(path_figure(&rows, failed_here, &title));
            blocks.push(path_table(&rows));
        }
    }
    for dir in [Direction::Request, Direction::Reply] {
        let rows = path(an, None, dir);
        if !rows.is_empty() {
            let title = format!("Packets in no judged flow — {}", dir_plural(dir));
            blocks.push(Block::Heading(3, title.clone()));
            blocks.push(path_figure(&rows, false, &title));
            blocks.push(path_table(&rows));
        }
    }

    // Timeline.
    blocks.push(Block::Heading(2, "Timeline".into()));
    let placed: Vec<(usize, &TraceEvent)> = tr
        .events
        .iter()
        .zip(&an.placed)
        .filter_map(|((_, e), at)| at.map(|(j, _)| (j, e)))
        .collect();
    blocks.push(timeline_figure(an));
    push_capped_table(
        &mut blocks,
        &[
            "time (s)", "UTC", "journey", "dir", "hop", "device", "headers", "note",
        ],
        &placed,
        TIMELINE_MAX,
        |(j, e)| timeline_row(tr, an, *j, e),
        |n| {
            format!(
                "the timeline shows the first {TIMELINE_MAX} of {n} hops; `kvmtrace replay` shows them all"
            )
        },
    );

    // Environment.
    blocks.push(Block::Heading(2, "Environment".into()));
    blocks.push(environment(tr, an));
    blocks.push(Block::Para(vec![t(format!(
        "Generated by kvmtrace {} from {source} (trace format {}).",
        env!("CARGO_PKG_VERSION"),
        tr.format
    ))]));
    Doc { title, blocks }
}

fn dir_plural(d: Direction) -> &'static str {
    match d {
        Direction::Request => "requests",
        Direction::Reply => "replies",
    }
}

fn duration(tr: &Trace) -> String {
    let end = tr.ended_unix_ns.or_else(|| {
        tr.events
            .last()
            .map(|(_, e)| tr.meta.wall_ns(e.ts_ns, tr.events[0].1.ts_ns))
    });
    match end {
        Some(e) if e >= tr.meta.started_unix_ns => {
            format!("{:.1} s", (e - tr.meta.started_unix_ns) as f64 / 1e9)
        }
        _ => "an unknown time".into(),
    }
}

/// The first drop event among the journeys of these flows, with its journey id.
fn first_drop<'a>(an: &'a Analysis, flows: &[usize]) -> Option<(&'a TraceEvent, usize)> {
    an.model
        .journeys
        .iter()
        .filter(|jr| {
            an.journey_flow
                .get(jr.id)
                .copied()
                .flatten()
                .is_some_and(|f| flows.contains(&f))
        })
        .find_map(|jr| {
            jr.hops
                .iter()
                .find(|h| h.point == Point::Drop)
                .map(|h| (h, jr.id))
        })
}

/// Flows grouped by what became of them ([`output::same_as`], the one definition every view
/// uses), the most serious first: many flows ending the same way are one finding.
fn findings<'a>(an: &'a Analysis, times: &[Option<(u64, u64)>]) -> Vec<VerdictGroup<'a>> {
    let mut out = group_verdicts(&an.verdicts, times);
    out.sort_by_key(|g| severity(g.first().status));
    out
}

/// `+0.000000 s` (one flow, one packet) or `+0.000000 … +3.000099 s`.
fn span_text(an: &Analysis, span: Option<(u64, u64)>) -> String {
    match span {
        None => "-".into(),
        Some((a, b)) => {
            let (a, b) = (
                a.saturating_sub(an.t0) as f64 / 1e9,
                b.saturating_sub(an.t0) as f64 / 1e9,
            );
            if a == b {
                format!("+{a:.6} s")
            } else {
                format!("+{a:.6} … +{b:.6} s")
            }
        }
    }
}

/// A finding's heading. A group names its flows (`icmp 10.77.0.2 > 203.0.113.1 id=*`), so that
/// two groups that ended the same way (ICMP and TCP flows both delivered at the tap) never
/// share a heading.
fn group_title(an: &Analysis, gr: &VerdictGroup) -> String {
    let g = gr.members.as_slice();
    let v = &an.verdicts[g[0]];
    if g.len() == 1 {
        format!("{}: {}", v.flow, status_word(v.status))
    } else {
        format!(
            "{}: {} flows {} — {}",
            status_word(v.status),
            g.len(),
            gr.label(),
            where_of(v)
        )
    }
}

fn evidence(an: &Analysis, gr: &VerdictGroup) -> Vec<Vec<Inline>> {
    let g = gr.members.as_slice();
    let v = gr.first();
    let mut items = Vec::new();
    items.push(vec![b("status: "), Inline::Status(v.status)]);
    if let Some(d) = v.direction {
        items.push(vec![b("about: "), t(format!("the {d}"))]);
    }
    if let Some(s) = v.stage {
        let mut it = vec![b("stage: "), t(s.name())];
        if let Some(h) = v.hook {
            it.push(t(", netfilter hook "));
            it.push(c(h.name()));
        }
        items.push(it);
    }
    if let Some(d) = &v.device {
        items.push(vec![b("device: "), c(d)]);
    }
    if let Some(r) = &v.reason {
        let mut it = vec![b("drop reason: "), c(r)];
        if let Some(l) = &v.location {
            it.push(t(" at "));
            it.push(c(l));
        }
        items.push(it);
    }
    if let Some(f) = &v.firewall {
        items.push(vec![b("firewall: "), t(f)]);
    }
    for ch in &v.chains {
        items.push(vec![b("chain: "), c(ch)]);
    }
    if let Some(r) = &v.route {
        items.push(vec![
            b("route: "),
            t(format!(
                "table {} → {}{}",
                r.table_name(),
                r.err_name()
                    .unwrap_or(if r.device.is_empty() { "?" } else { &r.device }),
                r.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
            )),
        ]);
    }
    if v.rewrites.is_empty() {
        if v.key.is_some() {
            items.push(vec![
                b("rewrites: "),
                t("none (the request left as the VM sent it)"),
            ]);
        }
    } else {
        for r in &v.rewrites {
            let (from, to) = gr.rewrite_text(r);
            items.push(vec![
                b("rewrite: "),
                c(format!("{} {from} → {to}", r.field)),
                t(format!(" at {}", r.at)),
            ]);
        }
    }
    let (req, rep) = g.iter().fold((0, 0), |(a, b), &i| {
        (a + an.verdicts[i].requests, b + an.verdicts[i].replies)
    });
    items.push(vec![
        b("packets: "),
        t(format!("{req} requests, {rep} replies")),
    ]);
    if let Some((e, j)) = first_drop(an, g) {
        items.push(vec![
            b("first drop: "),
            t(format!(
                "+{:.6} s, journey #{j} ({}), on {}",
                e.ts_ns.saturating_sub(an.t0) as f64 / 1e9,
                e.headers(),
                if e.device.is_empty() { "-" } else { &e.device }
            )),
        ]);
    }
    items
}

/// One hop of the path: label, device, packets seen there, what happened there.
struct PathRow {
    hop: String,
    device: String,
    packets: usize,
    /// `REASON at location` of the drops here.
    drops: Vec<String>,
    /// `field from → to` of the rewrites done here.
    rewrites: Vec<String>,
}

impl PathRow {
    fn notes(&self) -> String {
        self.drops
            .iter()
            .map(|d| format!("dropped: {d}"))
            .chain(self.rewrites.iter().cloned())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The path of some flows' packets in one direction (`flows` None: packets in no flow). Hops
/// are merged across packets in path order: a hop one packet has and another lacks is placed
/// after the hop that preceded it.
fn path(an: &Analysis, flows: Option<&[usize]>, dir: Direction) -> Vec<PathRow> {
    let mut rows: Vec<PathRow> = Vec::new();
    for jr in &an.model.journeys {
        let flow = an.journey_flow.get(jr.id).copied().flatten();
        let wanted = match (flows, flow) {
            (Some(fs), Some(f)) => fs.contains(&f),
            (None, None) => true,
            _ => false,
        };
        if jr.dir != dir || !wanted {
            continue;
        }
        let mut prev: Option<usize> = None;
        let mut seen: Vec<usize> = Vec::new();
        let mut occurrences: Vec<(String, String)> = Vec::new();
        let rewrites = jr.rewrites();
        for h in &jr.hops {
            let (base, device) = match (&h.route, h.point) {
                (Some(r), Point::Fib) => (
                    "route lookup".to_string(),
                    format!(
                        "table {} → {}",
                        r.table_name(),
                        r.err_name()
                            .unwrap_or(if r.device.is_empty() { "?" } else { &r.device })
                    ),
                ),
                _ => (point_label(h), h.device.clone()),
            };
            // The same place twice in one packet's path (a second route lookup) is a hop of
            // its own, so the order stays the packet's.
            let again = occurrences
                .iter()
                .filter(|(b, d)| *b == base && *d == device)
                .count();
            occurrences.push((base.clone(), device.clone()));
            let hop = if again == 0 {
                base.clone()
            } else {
                format!("{base} (again)")
            };
            let pos = match rows.iter().position(|r| r.hop == hop && r.device == device) {
                Some(p) => p,
                None => {
                    let at = prev.map(|p| p + 1).unwrap_or(0);
                    rows.insert(
                        at,
                        PathRow {
                            hop: hop.clone(),
                            device: device.clone(),
                            packets: 0,
                            drops: Vec::new(),
                            rewrites: Vec::new(),
                        },
                    );
                    for s in seen.iter_mut().filter(|s| **s >= at) {
                        *s += 1;
                    }
                    at
                }
            };
            if !seen.contains(&pos) {
                rows[pos].packets += 1;
                seen.push(pos);
            }
            let row = &mut rows[pos];
            if let Some(r) = &h.reason {
                let d = format!(
                    "{r}{}",
                    h.location
                        .as_deref()
                        .map(|l| format!(" at {l}"))
                        .unwrap_or_default()
                );
                if !row.drops.contains(&d) {
                    row.drops.push(d);
                }
            }
            for r in rewrites
                .iter()
                .filter(|r| r.at == base && h.point == Point::NfExit)
            {
                let n = format!("{} {} → {}", r.field, r.from, r.to);
                if !row.rewrites.contains(&n) {
                    row.rewrites.push(n);
                }
            }
            prev = Some(pos);
        }
    }
    rows
}

/// The path as a picture: drops mark their hop; when none was seen and the flows failed in
/// this direction (`failed_here`), the last hop is where they were seen last.
fn path_figure(rows: &[PathRow], failed_here: bool, title: &str) -> Block {
    let any_drop = rows.iter().any(|r| !r.drops.is_empty());
    let hops: Vec<svg::Hop> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| svg::Hop {
            label: &r.hop,
            device: &r.device,
            packets: r.packets,
            drops: &r.drops,
            rewrites: &r.rewrites,
            stop: if !r.drops.is_empty() {
                svg::Stop::Dropped
            } else if failed_here && !any_drop && i + 1 == rows.len() {
                svg::Stop::LastSeen
            } else {
                svg::Stop::No
            },
        })
        .collect();
    Block::Figure(svg::path(&hops, &format!("Path: {title}")))
}

/// Every packet on one time axis: when each request and reply was first seen, and each drop.
fn timeline_figure(an: &Analysis) -> Block {
    let mut marks = Vec::new();
    for jr in &an.model.journeys {
        let secs = |ts: u64| ts.saturating_sub(an.t0) as f64 / 1e9;
        if let Some(h) = jr.hops.first() {
            marks.push(svg::Mark {
                lane: match jr.dir {
                    Direction::Request => svg::Lane::Request,
                    Direction::Reply => svg::Lane::Reply,
                },
                secs: secs(h.ts_ns),
                title: format!(
                    "journey #{} {}, +{:.6} s: {}",
                    jr.id,
                    jr.dir,
                    secs(h.ts_ns),
                    h.headers()
                ),
            });
        }
        for h in jr.hops.iter().filter(|h| h.point == Point::Drop) {
            marks.push(svg::Mark {
                lane: svg::Lane::Drop,
                secs: secs(h.ts_ns),
                title: format!(
                    "journey #{} dropped, +{:.6} s: {} on {}",
                    jr.id,
                    secs(h.ts_ns),
                    h.reason.as_deref().unwrap_or("?"),
                    if h.device.is_empty() { "-" } else { &h.device }
                ),
            });
        }
    }
    Block::Figure(svg::timeline(
        &marks,
        "Timeline: requests, replies and drops over the trace",
    ))
}

/// A table of the first `max` of `items`, one row each, then, when there are more, the note
/// `more(total)` says so.
fn push_capped_table<T>(
    blocks: &mut Vec<Block>,
    head: &[&str],
    items: &[T],
    max: usize,
    row: impl Fn(&T) -> Vec<Vec<Inline>>,
    more: impl FnOnce(usize) -> String,
) {
    blocks.push(table(head, items.iter().take(max).map(row).collect()));
    if items.len() > max {
        blocks.push(Block::Note(more(items.len())));
    }
}

/// A table with these column headings.
fn table(head: &[&str], rows: Vec<Vec<Vec<Inline>>>) -> Block {
    Block::Table {
        head: head.iter().map(|h| h.to_string()).collect(),
        rows,
    }
}

fn path_table(rows: &[PathRow]) -> Block {
    table(
        &["#", "hop", "device", "packets", "note"],
        rows.iter()
            .enumerate()
            .map(|(i, r)| {
                vec![
                    cell((i + 1).to_string()),
                    cell(&r.hop),
                    code_cell(&r.device),
                    cell(r.packets.to_string()),
                    cell(r.notes()),
                ]
            })
            .collect(),
    )
}

fn timeline_row(tr: &Trace, an: &Analysis, j: usize, e: &TraceEvent) -> Vec<Vec<Inline>> {
    let mut note = Vec::new();
    if let Some(r) = &e.reason {
        note.push(format!(
            "DROP {r}{}",
            e.location
                .as_deref()
                .map(|l| format!(" at {l}"))
                .unwrap_or_default()
        ));
    }
    let headers = match &e.route {
        Some(r) => format!(
            "table {} {}{}",
            r.table_name(),
            r.err_name().unwrap_or("found"),
            r.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
        ),
        None => e.headers(),
    };
    let device = match &e.route {
        Some(r) => r.device.clone(),
        None => e.device.clone(),
    };
    vec![
        cell(format!("{:.6}", e.ts_ns.saturating_sub(an.t0) as f64 / 1e9)),
        cell(iso_utc(tr.meta.wall_ns(e.ts_ns, an.t0))),
        cell(format!("#{j}")),
        cell(match e.dir {
            Direction::Request => "req",
            Direction::Reply => "rep",
        }),
        cell(point_label(e)),
        code_cell(device),
        cell(headers),
        cell(note.join("; ")),
    ]
}

fn environment(tr: &Trace, an: &Analysis) -> Block {
    let m = &tr.meta;
    let mut rows: Vec<(String, String)> = vec![
        ("host".into(), m.host.clone()),
        ("kernel".into(), m.kernel.clone()),
        ("recorded by".into(), format!("{} {}", m.tool, m.version)),
        ("VM".into(), m.vm.clone().unwrap_or_else(|| "-".into())),
        ("tap".into(), m.tap.clone()),
        (
            "guest MAC".into(),
            m.mac.clone().unwrap_or_else(|| "-".into()),
        ),
        ("destination".into(), m.dest.clone()),
        ("filter".into(), m.filter.clone()),
        ("started (UTC)".into(), iso_utc(m.started_unix_ns)),
        (
            "ended (UTC)".into(),
            tr.ended_unix_ns
                .map(iso_utc)
                .unwrap_or_else(|| "- (the trace was cut short)".into()),
        ),
        ("events recorded".into(), tr.events.len().to_string()),
    ];
    match tr.counters {
        Some(c) => {
            rows.push((
                "events delivered by the kernel".into(),
                c.events.to_string(),
            ));
            rows.push(("events lost (ring buffer full)".into(), c.lost.to_string()));
            rows.push((
                "events over the per-flow budget".into(),
                c.sampled_out.to_string(),
            ));
        }
        None => rows.push((
            "events lost".into(),
            "unknown (the trace was cut short)".into(),
        )),
    }
    rows.push((
        "payload".into(),
        format!("snaplen {} (headers only)", m.snaplen),
    ));
    let f = &an.facts;
    rows.push((
        "net.ipv4.ip_forward".into(),
        match f.ip_forward {
            Some(true) => "1".into(),
            Some(false) => "0".into(),
            None => "unknown".into(),
        },
    ));
    rows.push((
        "nftables base chains".into(),
        if f.nft_chains.is_empty() {
            "none".into()
        } else {
            f.nft_chains
                .iter()
                .map(|ch| {
                    format!(
                        "{} {} {} (hook {}, policy {}, priority {})",
                        ch.family, ch.table, ch.chain, ch.hook, ch.policy, ch.priority
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        },
    ));
    rows.push((
        "iptables-legacy tables".into(),
        if f.legacy_tables.is_empty() {
            "none".into()
        } else {
            f.legacy_tables.join(", ")
        },
    ));
    rows.push((
        "trace".into(),
        format!(
            "format {}, {}",
            tr.format,
            if tr.complete {
                "complete"
            } else {
                "incomplete"
            }
        ),
    ));
    table(
        &["", ""],
        rows.into_iter()
            .map(|(k, v)| vec![vec![b(k)], cell(v)])
            .collect(),
    )
}

/// A Markdown table row of these cells (already escaped).
fn md_row(cells: impl Iterator<Item = String>) -> String {
    format!("| {} |", cells.collect::<Vec<_>>().join(" | "))
}

/// Markdown: backslash-escapes what would start markup or break a table cell. Backticks are
/// kept: the summaries quote commands in them (`ip route get …`), which render as code.
/// Underscores inside words (`IP_INNOROUTES`) never start emphasis and are kept as they are.
fn md_text(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut o = String::with_capacity(s.len());
    for (i, &ch) in chars.iter().enumerate() {
        let word = |c: Option<&char>| c.is_some_and(|c| c.is_alphanumeric());
        let escape = match ch {
            '\\' | '*' | '<' | '&' | '|' | '[' | ']' => true,
            '_' => !(word(i.checked_sub(1).and_then(|p| chars.get(p))) && word(chars.get(i + 1))),
            _ => false,
        };
        if escape {
            o.push('\\');
        }
        o.push(ch);
    }
    o
}

fn longest_backtick_run(s: &str) -> usize {
    s.split(|c| c != '`').map(str::len).max().unwrap_or(0)
}

fn md_code(s: &str) -> String {
    // A code span cannot escape backticks: use a fence longer than any run inside.
    let fence = "`".repeat(longest_backtick_run(s) + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{}{pad}{fence}", s.replace('|', "\\|"))
}

fn md_inlines(v: &[Inline]) -> String {
    v.iter()
        .map(|i| match i {
            Inline::Text(s) => md_text(s),
            Inline::Bold(s) => {
                format!("**{}**", md_text(s.trim_end())) + if s.ends_with(' ') { " " } else { "" }
            }
            Inline::Code(s) => md_code(s),
            Inline::Status(s) => format!("**{}**", md_text(&status_word(*s))),
        })
        .collect()
}

/// The HTML page of a [`Doc`] (templates/report.html).
#[derive(askama::Template)]
#[template(path = "report.html")]
struct HtmlPage<'a> {
    doc: &'a Doc,
    css: &'static str,
}

impl HtmlPage<'_> {
    /// A table's head row is drawn when one of its cells says something.
    fn has_head(&self, head: &[String]) -> bool {
        head.iter().any(|h| !h.is_empty())
    }

    fn status(&self, s: &Status) -> String {
        status_word(*s)
    }
}

const CSS: &str = "\
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#1b1f24;line-height:1.45}
h1{font-size:1.6rem;border-bottom:2px solid #d0d7de;padding-bottom:.3rem}
h2{font-size:1.3rem;margin-top:2rem;border-bottom:1px solid #d0d7de}
h3{font-size:1.05rem;margin-top:1.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.85rem}
code{background:#f6f8fa;padding:0 .2rem;border-radius:3px}
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto}
.status{font-weight:700;padding:0 .4rem;border-radius:3px;color:#fff;white-space:nowrap}
.status.delivered{background:#1a7f37}.status.dropped{background:#cf222e}
.status.no_reply{background:#bc4c00}.status.misrouted{background:#8250df}.status.no_traffic{background:#57606a}.status.blind{background:#0969da}
.note{background:#fff8c5;border-left:4px solid #d4a72c;padding:.4rem .6rem;margin:.5rem 0}
";

impl Doc {
    pub fn markdown(&self) -> String {
        let mut o = format!("# {}\n", md_text(&self.title));
        for bl in &self.blocks {
            // Markdown keeps the tables; the pictures are the HTML report's.
            if matches!(bl, Block::Figure(_)) {
                continue;
            }
            o.push('\n');
            match bl {
                Block::Heading(l, s) => {
                    let _ = writeln!(o, "{} {}", "#".repeat(usize::from(*l)), md_text(s));
                }
                Block::Para(v) => {
                    let _ = writeln!(o, "{}", md_inlines(v));
                }
                Block::Note(s) => {
                    let _ = writeln!(o, "> **Warning:** {}", md_text(s));
                }
                Block::List(items) => {
                    for it in items {
                        let _ = writeln!(o, "- {}", md_inlines(it));
                    }
                }
                Block::Figure(_) => {}
                Block::Pre(s) => {
                    let fence = "`".repeat(longest_backtick_run(s).max(2) + 1);
                    let _ = writeln!(o, "{fence}\n{s}\n{fence}");
                }
                Block::Table { head, rows } => {
                    let _ = writeln!(o, "{}", md_row(head.iter().map(|h| md_text(h))));
                    let _ = writeln!(o, "|{}", "---|".repeat(head.len()));
                    for r in rows {
                        let _ = writeln!(o, "{}", md_row(r.iter().map(|c| md_inlines(c))));
                    }
                }
            }
        }
        o
    }

    pub fn html(&self) -> String {
        use askama::Template as _;
        let mut page = HtmlPage {
            doc: self,
            css: CSS,
        }
        .render()
        .unwrap_or_else(|e| format!("<!DOCTYPE html>\n<p>report: {e}</p>"));
        page.push('\n');
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_and_html_escape_hostile_text() {
        let d = Doc {
            title: "a <b> | *x*".into(),
            blocks: vec![
                Block::Para(vec![t("<script>alert(1)</script>"), c("x`y|z")]),
                Block::Table {
                    head: vec!["h".into()],
                    rows: vec![vec![cell("a|b")]],
                },
            ],
        };
        let h = d.html();
        assert!(!h.contains("<script>"), "{h}");
        // askama's escaper writes numeric entities.
        assert!(h.contains("&#60;script&#62;"), "{h}");
        let m = d.markdown();
        assert!(m.contains("a \\<b> \\| \\*x\\*"), "{m}");
        assert!(m.contains("``x`y\\|z``"), "{m}");
        assert!(m.contains("| a\\|b |"), "{m}");
    }
}
