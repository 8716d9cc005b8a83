//! Text and JSON Lines views of hops and verdicts. They read the model only.

use crate::event::TraceEvent;
use crate::model::{point_label, Stage, Verdict, SCHEMA};
use crate::probe::Counters;
use serde::Serialize;
use std::io::{self, Write};

/// One hop line: `   0.000123 req  #3  tap ingress       vnet0      10.0.0.2 > … `.
pub fn hop_line(t0: u64, journey: impl Into<Option<usize>>, e: &TraceEvent) -> String {
    let journey = match journey.into() {
        Some(j) => j.to_string(),
        None => "-".into(),
    };
    let t = e.ts_ns.saturating_sub(t0) as f64 / 1e9;
    let dir = match e.dir {
        crate::event::Direction::Request => "req",
        crate::event::Direction::Reply => "rep",
    };
    let mut line = format!(
        "{t:>11.6} {dir} #{journey:<4} {:<18} {:<10} {}",
        point_label(e),
        if e.device.is_empty() { "-" } else { &e.device },
        e.headers()
    );
    if let Some(r) = &e.route {
        line = format!(
            "{t:>11.6} {dir} #{journey:<4} {:<18} {:<10} table {} {}{}",
            "route lookup",
            if r.device.is_empty() { "-" } else { &r.device },
            r.table_name(),
            r.err_name().unwrap_or("found"),
            r.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
        );
    }
    if let Some(reason) = &e.reason {
        line.push_str(&format!(
            "  DROP {reason} at {}",
            e.location.as_deref().unwrap_or("?")
        ));
    }
    line
}

#[derive(Serialize)]
struct JsonHop<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    schema: u32,
    /// None: an event whose packet's earlier events were lost (a route lookup without its packet).
    journey: Option<usize>,
    stage: Stage,
    #[serde(flatten)]
    event: &'a TraceEvent,
}

pub fn hop_json(journey: impl Into<Option<usize>>, e: &TraceEvent, stage: Stage) -> String {
    serde_json::to_string(&JsonHop {
        kind: "hop",
        schema: SCHEMA,
        journey: journey.into(),
        stage,
        event: e,
    })
    .unwrap_or_default()
}

pub fn write_verdict_text(w: &mut dyn Write, v: &Verdict) -> io::Result<()> {
    writeln!(w, "flow {}: {}", v.flow, v.status.name().to_uppercase())?;
    let mut kv = Vec::new();
    if let Some(s) = v.stage {
        kv.push(format!("stage={}", s.name()));
    }
    if let Some(h) = v.hook {
        kv.push(format!("hook={h}"));
    }
    if let Some(f) = &v.firewall {
        kv.push(format!("firewall={f}"));
    }
    if let Some(d) = &v.device {
        kv.push(format!("device={d}"));
    }
    if let Some(d) = v.direction {
        kv.push(format!("direction={d}"));
    }
    if let Some(r) = &v.reason {
        kv.push(format!("reason={r}"));
    }
    if let Some(l) = &v.location {
        kv.push(format!("location={l}"));
    }
    kv.push(format!("requests={} replies={}", v.requests, v.replies));
    writeln!(w, "  {}", kv.join(" "))?;
    for c in &v.chains {
        writeln!(w, "  chain: {c}")?;
    }
    if let Some(r) = &v.route {
        writeln!(
            w,
            "  route: table {} → {}{}",
            r.table_name(),
            r.err_name()
                .unwrap_or(if r.device.is_empty() { "?" } else { &r.device }),
            r.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
        )?;
    }
    for r in &v.rewrites {
        writeln!(
            w,
            "  rewrite: {} {} → {} (at {})",
            r.field, r.from, r.to, r.at
        )?;
    }
    writeln!(w, "  summary: {}", v.summary)
}

#[derive(Serialize)]
pub struct JsonStats<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub schema: u32,
    #[serde(flatten)]
    pub counters: Counters,
    /// Records userspace read from the ring buffer: equals `events` (every event submitted
    /// by the kernel is read); `lost` counts those that found the buffer full.
    pub delivered: u64,
    pub attached: &'a [String],
    pub warnings: &'a [String],
}

/// The stats line of a recorded trace (delivered = events: what was recorded was read).
pub fn stats_json(c: Counters, attached: &[String], warnings: &[String]) -> String {
    stats_json_live(c, c.events, attached, warnings)
}

/// The stats line of a live run.
pub fn stats_json_live(
    c: Counters,
    delivered: u64,
    attached: &[String],
    warnings: &[String],
) -> String {
    serde_json::to_string(&JsonStats {
        kind: "stats",
        schema: SCHEMA,
        counters: c,
        delivered,
        attached,
        warnings,
    })
    .unwrap_or_default()
}
