//! `replay`, `export` and `report`: work on a recorded trace (`follow --record`, [`crate::trace`])
//! offline, on any machine: no root, no eBPF, no access to the host that recorded it.
//!
//! Each command reads the trace, rebuilds the journeys and verdicts with the same [`Model`] the
//! live run used ([`Analysis`]), and renders one view of it. A trace that cannot be read is a
//! usage error (exit 2) with the reason; an incomplete one (cut short) opens with a warning.

use crate::event::TraceEvent;
use crate::model::{stage_of, FlowKey, HostFacts, Model, Status, Verdict, SCHEMA};
use crate::output;
use crate::probe::Counters;
use crate::trace::{self, Trace};
use anyhow::{bail, Context as _, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The trace file written by `follow --record`.
    pub file: PathBuf,
    /// JSON Lines on stdout, as `follow --json` prints them (docs/json-schema.md).
    #[arg(long)]
    pub json: bool,
    /// Print lines instead of the terminal UI (the UI opens only when stdout is a terminal).
    #[arg(long)]
    pub no_tui: bool,
}

/// `export --format`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ExportFormat {
    /// pcapng for Wireshark/tshark: one interface per observation point, a comment per packet.
    Pcapng,
    /// JSON Lines for scripts: `follow --json`'s hop, verdict and stats lines, each hop with its
    /// flow and that flow's status.
    Jsonl,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The trace file written by `follow --record`.
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Pcapng)]
    pub format: ExportFormat,
    /// Output file ("-": stdout). Default: FILE with the extension .pcapng or .jsonl.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

/// `report --format`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ReportFormat {
    /// Markdown (BASE.md).
    Md,
    /// One self-contained HTML page (BASE.html).
    Html,
    /// Both.
    Both,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The trace file written by `follow --record`.
    pub file: PathBuf,
    /// Which report(s) to write.
    #[arg(long, value_enum, default_value_t = ReportFormat::Both)]
    pub format: ReportFormat,
    /// Base name of the report files (BASE.md, BASE.html; "-": stdout, with one format).
    /// Default: FILE without its extension, plus ".report".
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

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

    /// `follow`'s exit code for these verdicts: 0 when every flow was delivered, else 1.
    pub fn exit_code(&self) -> ExitCode {
        if self.verdicts.iter().all(|v| v.status == Status::Delivered) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }
}

/// Order of statuses from the most to the least serious.
pub fn severity(s: Status) -> u8 {
    match s {
        Status::Dropped => 0,
        Status::Misrouted => 1,
        Status::NoReply => 2,
        Status::NoTraffic => 3,
        Status::Delivered => 4,
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

/// Reads a trace for a command; a file that cannot be read is reported and exits 2.
fn open(path: &Path) -> std::result::Result<Trace, ExitCode> {
    match trace::read(path) {
        Ok(t) => Ok(t),
        Err(e) => {
            eprintln!("kvmtrace: {e:#}");
            Err(ExitCode::from(2))
        }
    }
}

/// What was recorded, on stderr, and whatever the reader should doubt.
fn describe(path: &Path, t: &Trace, a: &Analysis) {
    let m = &t.meta;
    eprintln!(
        "kvmtrace: {}: {} (tap {}{}) → {}, recorded on {} (kernel {}) by kvmtrace {} at {}; {} events",
        path.display(),
        m.vm.as_deref().unwrap_or("VM"),
        m.tap,
        m.mac
            .as_deref()
            .map(|x| format!(", mac {x}"))
            .unwrap_or_default(),
        m.dest,
        or_unknown(&m.host),
        or_unknown(&m.kernel),
        or_unknown(&m.version),
        iso_utc(m.started_unix_ns),
        t.events.len()
    );
    for w in warnings(t, a) {
        eprintln!("kvmtrace: warning: {w}");
    }
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

fn or_unknown(s: &str) -> &str {
    if s.is_empty() {
        "?"
    } else {
        s
    }
}

/// Counters for the `stats` line: the recorded ones, or (incomplete trace) the events held.
fn counters_of(t: &Trace) -> Counters {
    t.counters.unwrap_or(Counters {
        events: t.events.len() as u64,
        lost: 0,
        sampled_out: 0,
    })
}

pub fn replay(a: ReplayArgs) -> Result<ExitCode> {
    let t = match open(&a.file) {
        Ok(t) => t,
        Err(code) => return Ok(code),
    };
    let an = Analysis::of(&t);
    describe(&a.file, &t, &an);
    if !a.json && !a.no_tui && io::IsTerminal::is_terminal(&io::stdout()) {
        replay_tui(&t, &an)?;
        return Ok(an.exit_code());
    }
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    write_replay(&mut out, &t, &an, a.json)?;
    out.flush()?;
    Ok(an.exit_code())
}

/// The terminal UI on a recorded trace: every event is pushed at once, then the UI runs until
/// `q` (the same `App` and rendering as a live `follow`).
fn replay_tui(t: &Trace, an: &Analysis) -> Result<()> {
    use crate::tui::{Action, App, Live, TuiMeta, TuiStats};
    let mut app = App::new(TuiMeta {
        vm: t.meta.vm.clone().unwrap_or_else(|| t.meta.tap.clone()),
        tap: t.meta.tap.clone(),
        filter: format!("{} (replay)", t.meta.filter),
        dest: t.meta.dest.clone(),
    });
    for ((_, ev), at) in t.events.iter().zip(&an.placed) {
        if let Some((j, _)) = at {
            app.push(*j, ev);
        }
    }
    app.set_judged(&an.model, an.verdicts.clone());
    let c = counters_of(t);
    let span = t
        .events
        .last()
        .map(|(_, e)| e.ts_ns.saturating_sub(an.t0))
        .unwrap_or(0);
    app.set_stats(TuiStats {
        elapsed: std::time::Duration::from_nanos(span),
        events_per_sec: t.events.len() as f64 / (span as f64 / 1e9).max(0.001),
        events: c.events,
        lost: c.lost,
        sampled_out: c.sampled_out,
    });
    let mut ui = Live::start()?;
    loop {
        if let Some(Action::Quit) = ui.tick(&mut app)? {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
    ui.finish();
    Ok(())
}

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
        for v in &an.verdicts {
            writeln!(out, "{}", serde_json::to_string(v)?)?;
        }
        writeln!(
            out,
            "{}",
            output::stats_json(counters_of(t), &[], &warnings(t, an))
        )?;
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
    for v in &an.verdicts {
        writeln!(out, "{}", serde_json::to_string(v)?)?;
    }
    writeln!(
        out,
        "{}",
        output::stats_json(counters_of(t), &[], &warnings(t, an))
    )
}

/// `FILE` with its extension replaced (`run.trace` → `run.pcapng`).
fn beside(input: &Path, ext: &str) -> PathBuf {
    input.with_extension(ext)
}

/// Refuses to write over the trace being read.
fn not_the_input(input: &Path, output: &Path) -> Result<()> {
    let same = match (input.canonicalize(), output.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        bail!(
            "the output {} is the trace itself: choose another name with -o",
            output.display()
        );
    }
    Ok(())
}

/// Opens an output: stdout for "-", else a new private file (mode 0600: it shows the same
/// addresses and flows as the trace).
fn create_output(input: &Path, path: &Path) -> Result<Box<dyn Write>> {
    if path == Path::new("-") {
        return Ok(Box::new(io::BufWriter::new(io::stdout())));
    }
    not_the_input(input, path)?;
    Ok(Box::new(io::BufWriter::new(trace::create_private(path)?)))
}

pub fn export(a: ExportArgs) -> Result<ExitCode> {
    let t = match open(&a.file) {
        Ok(t) => t,
        Err(code) => return Ok(code),
    };
    let an = Analysis::of(&t);
    describe(&a.file, &t, &an);
    let path = a.output.clone().unwrap_or_else(|| {
        beside(
            &a.file,
            match a.format {
                ExportFormat::Pcapng => "pcapng",
                ExportFormat::Jsonl => "jsonl",
            },
        )
    });
    if a.format == ExportFormat::Pcapng
        && path == Path::new("-")
        && std::io::IsTerminal::is_terminal(&io::stdout())
    {
        bail!("pcapng is binary: write it to a file (-o FILE) or a pipe, not a terminal");
    }
    let mut out = create_output(&a.file, &path)?;
    match a.format {
        ExportFormat::Pcapng => {
            let s = crate::pcapng::write(&t, &an, &mut out)
                .with_context(|| format!("writing {}", path.display()))?;
            out.flush()
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "kvmtrace: wrote {} packets on {} interfaces to {}{}",
                s.packets,
                s.interfaces.len(),
                path.display(),
                if s.skipped > 0 {
                    format!(
                        " ({} events without a packet left out: route lookups and hops with no \
                         IPv4 header; their facts are in the comments)",
                        s.skipped
                    )
                } else {
                    String::new()
                }
            );
        }
        ExportFormat::Jsonl => {
            write_jsonl(&mut out, &t, &an)
                .and_then(|_| out.flush())
                .with_context(|| format!("writing {}", path.display()))?;
            if path != Path::new("-") {
                eprintln!("kvmtrace: wrote {}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn report(a: ReportArgs) -> Result<ExitCode> {
    let t = match open(&a.file) {
        Ok(t) => t,
        Err(code) => return Ok(code),
    };
    let an = Analysis::of(&t);
    describe(&a.file, &t, &an);
    let base = a.output.clone().unwrap_or_else(|| {
        let stem = a.file.with_extension("");
        PathBuf::from(format!("{}.report", stem.display()))
    });
    // The file's name only: the report travels to tickets, the local path means nothing there.
    let name = a
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| a.file.display().to_string());
    let doc = crate::report::build(&t, &an, &name);
    let stdout = base == Path::new("-");
    if stdout && a.format == ReportFormat::Both {
        bail!("-o - writes one report to stdout: add --format md or --format html");
    }
    let write = |ext: &str, text: String| -> Result<()> {
        let path = if stdout {
            base.clone()
        } else {
            PathBuf::from(format!("{}.{ext}", base.display()))
        };
        let mut out = create_output(&a.file, &path)?;
        out.write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .with_context(|| format!("writing {}", path.display()))?;
        if !stdout {
            eprintln!("kvmtrace: wrote {}", path.display());
        }
        Ok(())
    };
    if matches!(a.format, ReportFormat::Md | ReportFormat::Both) {
        write("md", doc.markdown())?;
    }
    if matches!(a.format, ReportFormat::Html | ReportFormat::Both) {
        write("html", doc.html())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `2024-05-01T12:34:56.123456Z` from ns since the Unix epoch (UTC; civil-from-days,
/// H. Hinnant's algorithm, so no date crate is needed).
pub fn iso_utc(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let micros = (ns % 1_000_000_000) / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
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
