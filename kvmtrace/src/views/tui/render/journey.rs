//! The journey view: one packet's hops, every rewrite before → after.

use super::packets::{first_headers, outcome_text};
use super::style::*;
use crate::model::event::{Point, TraceEvent, Tuple};
use crate::model::{point_label, Outcome};
use crate::views::tui::app::{Packet, View};
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};
use ratatui::Frame;

/// Changes between two header sets, as `src 10.77.0.2 → 192.0.2.2`.
pub(super) fn tuple_changes(a: &Tuple, b: &Tuple) -> Vec<String> {
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

pub(super) fn hop_detail(h: &TraceEvent) -> String {
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

pub(super) fn draw_journey(frame: &mut Frame, area: Rect, v: &View, p: &Packet, scroll: u16) {
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
