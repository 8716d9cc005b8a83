//! A trace replayed through the model: what every view (text, JSON Lines, pcapng, report,
//! terminal UI) renders, with the warnings each repeats.

use super::Trace;
use crate::model::event::Counters;
use crate::model::{FlowKey, HostFacts, Model, Status, Verdict};
use std::collections::HashMap;
use std::process::ExitCode;

/// A trace replayed through the model: what every view renders.
pub struct Analysis {
    /// The journeys, rebuilt from the events in file order.
    pub model: Model,
    /// For each event of the trace (file order): its journey id and its index among that
    /// journey's hops; None for an event the model placed nowhere (a route lookup while no
    /// followed packet was being processed).
    pub placed: Vec<Option<(usize, usize)>>,
    /// The verdicts, recomputed with the inputs the live run recorded (host facts, stop time,
    /// rule decisions, budget counts): the ones `follow` printed.
    pub verdicts: Vec<Verdict>,
    /// For each journey: the index in `verdicts` of the flow it belongs to.
    pub journey_flow: Vec<Option<usize>>,
    /// Timestamp of the first event (kernel monotonic ns): times are shown relative to it.
    pub t0: u64,
    /// The host facts the verdicts cite.
    pub facts: HostFacts,
    /// The trace holds verdicts (it finished) and they differ from the recomputed ones
    /// (recorded by another kvmtrace version, or the model changed).
    pub recorded_differ: bool,
}

impl Analysis {
    pub fn of(t: &Trace) -> Analysis {
        // Unbounded: a trace is finite and every view wants every journey (ids = indexes).
        let mut model = Model::new();
        let mut placed = Vec::with_capacity(t.events.len());
        for (_, ev) in &t.events {
            let at = model.push(ev.clone()).and_then(|j| {
                model
                    .journey(j)
                    .map(|jr| (j, jr.hops.len().saturating_sub(1)))
            });
            placed.push(at);
        }
        let inputs = t.inputs();
        // The live model was bounded: past its bound it folded old journeys into per-flow
        // counts, and its verdicts are those of the folded model. Judge with one folded the
        // same way (only built when the trace holds more journeys than the bound: below it
        // a bounded model folds nothing and is this one).
        let folded = inputs.retained.is_some_and(|r| model.journeys.len() > r);
        let verdicts = if folded {
            inputs.verdicts(&inputs.model(t.events.iter().map(|(_, e)| e)))
        } else {
            inputs.verdicts(&model)
        };
        let facts = inputs.facts;
        let journey_flow = journey_flows(&model, &verdicts);
        Analysis {
            t0: t.events.first().map(|(_, e)| e.ts_ns).unwrap_or(0),
            recorded_differ: t.complete && t.verdicts != verdicts,
            model,
            placed,
            verdicts,
            journey_flow,
            facts,
        }
    }

    /// The verdict of the flow a journey belongs to.
    pub fn flow_of(&self, journey: usize) -> Option<&Verdict> {
        self.journey_flow
            .get(journey)
            .copied()
            .flatten()
            .and_then(|i| self.verdicts.get(i))
    }

    /// The most serious verdict: what a report leads with.
    pub fn worst(&self) -> Option<&Verdict> {
        self.verdicts.iter().min_by_key(|v| severity(v.status))
    }

    /// `follow`'s exit code for these verdicts: 0 when every flow was delivered, 3 when
    /// kvmtrace was blind at the tap (an environment limit), else 1.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(crate::model::exit_status(&self.verdicts))
    }
}

/// Order of statuses from the most to the least serious.
pub fn severity(s: Status) -> u8 {
    match s {
        Status::Dropped => 0,
        Status::Misrouted => 1,
        Status::NoReply => 2,
        Status::NoTraffic => 3,
        Status::Blind => 4,
        Status::Delivered => 5,
    }
}

/// Maps each journey to its flow's verdict. The same grouping as `Model::verdicts` (which keeps
/// it private): requests by their first (guest-side) tuple, replies by their last one mapped back
/// through the requests' NAT, ICMP errors to the newest flow towards the address they quote.
fn journey_flows(m: &Model, verdicts: &[Verdict]) -> Vec<Option<usize>> {
    let index: HashMap<FlowKey, usize> = verdicts
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.key.map(|k| (k, i)))
        .collect();
    m.flow_keys()
        .into_iter()
        .map(|k| k.and_then(|k| index.get(&k).copied()))
        .collect()
}

/// Warnings every view repeats: incomplete trace, lost events, verdicts that changed.
pub fn warnings(t: &Trace, a: &Analysis) -> Vec<String> {
    let mut w = t.warnings.clone();
    if !t.complete {
        w.push(
            "the trace is incomplete (no end line: the recording was cut short); verdicts are \
             recomputed from the events it holds, and events lost are unknown"
                .into(),
        );
    }
    if let Some(c) = t.counters {
        if c.lost > 0 {
            w.push(format!(
                "{} events were lost to a full ring buffer while recording: journeys may miss hops",
                c.lost
            ));
        }
        if c.sampled_out > 0 {
            w.push(format!(
                "{} events were over the per-flow budget (counted, not recorded)",
                c.sampled_out
            ));
        }
    }
    // Format 1 recorded neither the rule decisions nor the budget counts.
    if t.format < 2
        && t.verdicts
            .iter()
            .any(|v| v.rule.is_some() || v.suppressed > 0)
    {
        w.push(format!(
            "this format-{} trace holds no --explain-rules decisions or --budget counts (added \
             in format 2): the verdicts below lack the rule and the sampled counts the live run \
             printed (the recorded verdicts have them)",
            t.format
        ));
    }
    if a.recorded_differ {
        w.push(format!(
            "the verdicts recorded by kvmtrace {} differ from the ones recomputed now: showing \
             the recomputed ones (the recorded ones are in the trace)",
            or_unknown(&t.meta.version)
        ));
    }
    w
}

pub fn or_unknown(s: &str) -> &str {
    if s.is_empty() {
        "?"
    } else {
        s
    }
}

/// Counters for the `stats` line: the recorded ones, or (incomplete trace) the events held.
pub fn counters_of(t: &Trace) -> Counters {
    t.counters.unwrap_or(Counters {
        events: t.events.len() as u64,
        lost: 0,
        sampled_out: 0,
        missed: 0,
    })
}

/// `2024-05-01T12:34:56.123456Z` from ns since the Unix epoch (UTC).
pub fn iso_utc(ns: u64) -> String {
    match jiff::Timestamp::from_nanosecond(i128::from(ns)) {
        Ok(t) => t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        Err(_) => format!("{ns} ns after the epoch"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            iso_utc(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(
            iso_utc(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        // Far future values do not panic.
        let _ = iso_utc(u64::MAX);
    }
}
