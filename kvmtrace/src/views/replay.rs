//! A trace as text or JSON Lines: `replay`'s output (the lines `follow` printed) and
//! `export --format jsonl` (each hop with its flow and status).

use super::output;
use crate::model::event::TraceEvent;
use crate::model::{stage_of, Status, SCHEMA};
use crate::trace::analysis::{counters_of, warnings, Analysis};
use crate::trace::Trace;
use serde::Serialize;
use std::io::{self, Write};

/// The text or JSON view of a replayed trace: hops as they were recorded, then the verdicts,
/// exactly as `follow` prints them.
pub fn write_replay(out: &mut dyn Write, t: &Trace, an: &Analysis, json: bool) -> io::Result<()> {
    for ((_, ev), at) in t.events.iter().zip(&an.placed) {
        // Events in no journey are shown too, with no journey number, as `follow` does.
        let j = at.map(|(j, _)| j);
        if json {
            writeln!(out, "{}", output::hop_json(j, ev, stage_of(ev)))?;
        } else {
            writeln!(out, "{}", output::hop_line(an.t0, j, ev))?;
        }
    }
    if json {
        write_verdicts_json(out, t, an)?;
    } else {
        writeln!(out)?;
        output::write_verdicts_text(
            out,
            &an.verdicts,
            &output::flow_times(&an.model, &an.verdicts),
            an.t0,
        )?;
    }
    Ok(())
}

#[derive(Serialize)]
struct ExportHop<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    schema: u32,
    /// None: an event in no journey (as in `follow --json`).
    journey: Option<usize>,
    stage: crate::model::Stage,
    #[serde(flatten)]
    event: &'a TraceEvent,
    /// The flow this packet belongs to (the verdict's `flow`), when it belongs to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    flow: Option<&'a str>,
    /// That flow's status.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
}

/// `export --format jsonl`: `follow --json`'s lines, each hop with its flow and status.
pub fn write_jsonl(out: &mut dyn Write, t: &Trace, an: &Analysis) -> io::Result<()> {
    for ((_, ev), at) in t.events.iter().zip(&an.placed) {
        let j = at.map(|(j, _)| j);
        let v = j.and_then(|j| an.flow_of(j));
        let line = ExportHop {
            kind: "hop",
            schema: SCHEMA,
            journey: j,
            stage: stage_of(ev),
            event: ev,
            flow: v.map(|v| v.flow.as_str()),
            status: v.map(|v| v.status),
        };
        writeln!(out, "{}", serde_json::to_string(&line)?)?;
    }
    write_verdicts_json(out, t, an)
}

/// The verdicts and the stats line, as `follow --json` ends.
fn write_verdicts_json(out: &mut dyn Write, t: &Trace, an: &Analysis) -> io::Result<()> {
    for v in &an.verdicts {
        writeln!(out, "{}", serde_json::to_string(v)?)?;
    }
    writeln!(
        out,
        "{}",
        output::stats_json(counters_of(t), &[], &warnings(t, an))
    )
}
