//! Recorded traces: the file `follow --record` writes and `replay`, `export` and `report` read.
//!
//! JSON Lines, one object per line, written as a stream (docs/trace-format.md):
//!
//! ```text
//! {"type":"kvmtrace-trace","format":2, …meta}    header: who, where, what was followed
//! {"type":"event","journey":0, …TraceEvent}       one per decoded event, as they arrive
//! {"type":"vm_gone","at_ns":…,"what":…}          optional: the VM went away, as it happened
//! {"type":"stop","until_ns":…}                    optional: when the trace was asked to stop
//! {"type":"rule", …RuleDecision}                  format 2: one per distinct nftables decision
//! {"type":"budget","proto":…,"suppressed":…}      format 2: one per kernel per-flow budget entry
//! {"type":"verdict", …Verdict}                    one per flow
//! {"type":"end","events":…,"counters":…,"facts":…,"budget":…}
//! ```
//!
//! A replay equals the live run: every input of the verdicts besides the events ([`Inputs`]:
//! DEST, the stop time, the host facts, the `--explain-rules` decisions, the kernel's per-flow
//! budget counts, the `--budget` value and the live model's bound) is in the file, and `follow`
//! and `replay` both compute their verdicts with [`Inputs::verdicts`].
//!
//! Why JSON Lines: a trace is appended to as events arrive and flushed after each batch, so a
//! recording cut short by a crash, `kill -9` or a full disk is still a valid prefix that opens
//! ("incomplete": no end line, counters unknown). The events are [`TraceEvent`]s, already
//! decoded (drop reasons, symbols, device kinds), so nothing about the capturing host is
//! needed to replay them.
//!
//! A file is untrusted input: every line is bounded, parsed into a JSON value first, checked
//! for its place in the file, and only then typed; control characters in strings are replaced
//! so a hostile file cannot drive a terminal. Reading never panics (see the mutation test).

pub mod analysis;

use crate::host::sys::uname;
use crate::model::decision::RuleDecision;
use crate::model::event::Counters;
use crate::model::event::TraceEvent;
use crate::model::{Blind, BudgetEntry, HostFacts, Model, Verdict, VmGone};
use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read as _, Write};
use std::path::Path;

/// The format this binary writes, and the newest it reads. Bumped for any change an older
/// reader would misread (a new line type, a changed meaning); new optional fields are not a
/// bump: readers ignore fields they do not know. Format 2 added the `rule` and `budget` lines;
/// format 1 traces are still read (their replay lacks rule names and budget counts).
pub const FORMAT: u32 = 2;

/// `type` of the first line: what makes a file a kvmtrace trace.
pub const MAGIC: &str = "kvmtrace-trace";

/// Longest line accepted. Real lines are under 2 KiB (an event with a 16-deep kernel stack).
pub const MAX_LINE: usize = 1 << 20;

/// What was followed, where and by what: the header line.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Meta {
    /// `kvmtrace`.
    pub tool: String,
    /// The writing kvmtrace's version.
    pub version: String,
    /// Host name (uname nodename).
    pub host: String,
    /// Kernel release (uname release).
    pub kernel: String,
    /// The VM's name, when known (QEMU `-name`, libvirt).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// The VM's tap device.
    pub tap: String,
    /// The guest's MAC, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// DEST as given on the command line (address or CIDR).
    pub dest: String,
    /// The filter in words: `proto icmp`, `proto tcp port 443`, budget, ….
    pub filter: String,
    /// Wall clock when the recording started (ns since the Unix epoch).
    pub started_unix_ns: u64,
    /// Kernel monotonic clock at the same moment: events carry monotonic timestamps
    /// (`bpf_ktime_get_ns`), this maps them to wall-clock time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_mono_ns: Option<u64>,
    /// Payload bytes kept beyond the headers. Always 0: kvmtrace records headers only.
    pub snaplen: u32,
    /// Host facts read at start (the end line has them again, read at the end). Lets a trace
    /// cut short still name the firewall chains.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub facts: Option<HostFacts>,
    /// Observation points on the tap that could not be attached (see [`Blind`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blind: Option<Blind>,
}

impl Meta {
    /// Meta for a recording starting now on this host: tool, version, host, kernel and both
    /// clocks filled in. `filter` describes the follow options in words.
    pub fn new(
        vm: Option<String>,
        tap: &str,
        mac: Option<String>,
        dest: &str,
        filter: &str,
    ) -> Meta {
        let (host, kernel) = uname();
        Meta {
            tool: "kvmtrace".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            host,
            kernel,
            vm,
            tap: tap.into(),
            mac,
            dest: dest.into(),
            filter: filter.into(),
            started_unix_ns: now_unix_ns(),
            started_mono_ns: Some(crate::host::monotonic_ns()),
            snaplen: 0,
            facts: None,
            blind: None,
        }
    }

    /// Wall-clock time (ns since the epoch) of an event's monotonic timestamp; `t0` (the first
    /// event's timestamp) anchors it when the header has no monotonic clock.
    pub fn wall_ns(&self, ts_ns: u64, t0: u64) -> u64 {
        let anchor = self.started_mono_ns.unwrap_or(t0);
        let wall = self.started_unix_ns as i128 + (ts_ns as i128 - anchor as i128);
        wall.clamp(0, u64::MAX as i128) as u64
    }
}

/// A trace's `snaplen`: only 0 (headers only) is written, since no payload is captured.
pub fn check_snaplen(snaplen: u32) -> Result<()> {
    if snaplen != 0 {
        bail!(
            "snaplen {snaplen}: kvmtrace records packet headers only and captures no payload; \
             0 (headers only) is the only value"
        );
    }
    Ok(())
}

/// Creates (or truncates) a file only its owner can read: mode 0600, also when it existed
/// with another mode. The last path component must not be a symlink (kvmtrace runs as root).
pub fn create_private(path: &Path) -> Result<File> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    // `mode` applies to new files only.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private (mode 0600)", path.display()))?;
    Ok(file)
}

/// Wall clock now, ns since the Unix epoch.
pub fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[derive(Serialize)]
struct HeaderLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    format: u32,
    #[serde(flatten)]
    meta: &'a Meta,
}

#[derive(Serialize)]
struct EventLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    journey: Option<usize>,
    #[serde(flatten)]
    event: &'a TraceEvent,
}

#[derive(Serialize, Deserialize)]
struct StopLine {
    /// Kernel monotonic ns when the trace was asked to stop: requests first seen later are
    /// not judged (`Model::verdicts`' `until`).
    until_ns: u64,
}

/// A line of the file whose fields are those of one value: its `type`, then the value's.
#[derive(Serialize)]
struct Typed<'a, T> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

/// The end line; `F` is the facts, borrowed when written and owned when read.
#[derive(Serialize, Deserialize)]
struct EndLine<F> {
    ended_unix_ns: u64,
    /// Event and verdict lines in the file: a reader checks them.
    events: u64,
    verdicts: u64,
    counters: Counters,
    facts: F,
    /// Format 2: `rule` and `budget` lines in the file (checked like `events`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rules: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    budgets: Option<u64>,
    /// Format 2: the `--budget` value (packets per flow and direction shown; 0: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    budget: Option<u32>,
    /// Format 2: journeys the live model kept in full (`Model::bounded`); absent: unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retained: Option<usize>,
}

/// A `budget` line: one entry of the kernel's per-flow budget map, read at the end of the run.
/// The file's own shape (not the model's struct), so the format does not move with the code.
#[derive(Serialize, Deserialize)]
struct BudgetLine {
    proto: u8,
    remote: std::net::IpAddr,
    local: std::net::IpAddr,
    local_port: u16,
    shown: u32,
    suppressed: u32,
}

impl From<&BudgetEntry> for BudgetLine {
    fn from(b: &BudgetEntry) -> Self {
        BudgetLine {
            proto: b.proto,
            remote: b.remote,
            local: b.local,
            local_port: b.local_port,
            shown: b.shown,
            suppressed: b.suppressed,
        }
    }
}

impl From<BudgetLine> for BudgetEntry {
    fn from(b: BudgetLine) -> Self {
        BudgetEntry {
            proto: b.proto,
            remote: b.remote,
            local: b.local,
            local_port: b.local_port,
            shown: b.shown,
            suppressed: b.suppressed,
        }
    }
}

/// Everything the verdicts depend on besides the events. `follow` computes its verdicts with
/// [`Inputs::verdicts`] and records every field; `replay`, `export` and `report` read them back
/// ([`Trace::inputs`]) and compute the same verdicts with the same function.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inputs {
    /// DEST as given (address or CIDR): named by a `no_traffic` verdict.
    pub dest: String,
    /// Host facts read at the end of the run (chains, ip_forward, devices).
    pub facts: HostFacts,
    /// When the run was asked to stop (kernel monotonic ns): later flows are not judged.
    pub until_ns: Option<u64>,
    /// `--explain-rules`: the nftables trace decisions (see [`distinct_decisions`]).
    pub decisions: Vec<RuleDecision>,
    /// The kernel's per-flow budget counts, read at the end.
    pub budgets: Vec<BudgetEntry>,
    /// `--budget` (named in the summary of a sampled flow).
    pub budget: u32,
    /// The bound of the live model ([`Model::bounded`]), None for an unbounded one: a long run
    /// folds old journeys into per-flow counts, and replay folds them the same way
    /// ([`Inputs::model`]) so that its verdicts are the live ones.
    pub retained: Option<usize>,
    /// The VM went away during the run (its tap removed, its QEMU gone).
    pub vm_gone: Option<VmGone>,
    /// The tap's observation points that could not be attached: verdicts resting on them
    /// are `blind`.
    pub blind: Option<Blind>,
}

impl Inputs {
    /// The verdicts of the model's flows: the model's own judgement, then the deciding nftables
    /// rule of each netfilter drop, then the exact counts of packets over the budget.
    pub fn verdicts(&self, model: &Model) -> Vec<Verdict> {
        let mut v = model.verdicts(&self.facts, &self.dest, self.until_ns);
        if let Some(b) = &self.blind {
            b.apply(&mut v, &self.dest);
        }
        crate::model::decision::explain(&mut v, &self.decisions);
        model.apply_budgets(&mut v, &self.budgets, self.budget);
        if let Some(g) = &self.vm_gone {
            g.mark(&mut v);
        }
        v
    }

    /// A model like the live one (bounded as it was) fed these events: the one to judge with.
    pub fn model<'a>(&self, events: impl IntoIterator<Item = &'a TraceEvent>) -> Model {
        let mut m = match self.retained {
            Some(r) => Model::bounded(r),
            None => Model::new(),
        };
        for e in events {
            let _ = m.try_push(e.clone());
        }
        m
    }
}

/// The decisions with repeats left out: a repeat differs from an earlier decision only in its
/// `trace_id` (one per packet), so a flood does not write one line per packet and hook. Verdicts
/// are unchanged: [`crate::model::decision::explain`] takes the first decision that matches, and a
/// repeat matches exactly when its first occurrence (earlier, kept) does.
pub fn distinct_decisions(all: Vec<RuleDecision>) -> Vec<RuleDecision> {
    let mut seen = std::collections::HashSet::new();
    all.into_iter()
        .filter(|d| {
            seen.insert(RuleDecision {
                trace_id: 0,
                ..d.clone()
            })
        })
        .collect()
}

/// Writes a trace as a stream. Dropping it without [`Writer::finish`] leaves a valid,
/// incomplete trace (the buffer is flushed on drop).
pub struct Writer<W: Write = File> {
    out: BufWriter<W>,
    events: u64,
    /// `rule` and `budget` lines written, the `--budget` value and the model's bound: None
    /// until [`Writer::inputs`] (a format-1 style end line).
    inputs: Option<(u64, u64, u32, Option<usize>)>,
}

impl Writer<File> {
    /// Creates (or truncates) `path` with mode 0600 (a trace shows the guest's addresses and
    /// flows) and writes the header. The last path component must not be a symlink.
    pub fn create(path: &Path, meta: &Meta) -> Result<Writer> {
        check_snaplen(meta.snaplen)?;
        let file = create_private(path)?;
        Writer::new(file, meta).with_context(|| format!("writing {}", path.display()))
    }

    /// Writes the verdicts and the end line, flushes and syncs the file.
    pub fn finish(self, verdicts: &[Verdict], counters: Counters, facts: &HostFacts) -> Result<()> {
        let file = self.end(verdicts, counters, facts, now_unix_ns())?;
        file.sync_data().context("syncing the trace file")?;
        Ok(())
    }
}

impl<W: Write> Writer<W> {
    /// Starts a trace on any writer (tests, pipes); writes and flushes the header.
    pub fn new(out: W, meta: &Meta) -> Result<Writer<W>> {
        let mut w = Writer {
            out: BufWriter::new(out),
            events: 0,
            inputs: None,
        };
        w.line(&HeaderLine {
            kind: MAGIC,
            format: FORMAT,
            meta,
        })?;
        w.flush()?;
        Ok(w)
    }

    fn line<T: Serialize>(&mut self, v: &T) -> Result<()> {
        serde_json::to_writer(&mut self.out, v).context("writing a trace line")?;
        self.out.write_all(b"\n").context("writing a trace line")?;
        Ok(())
    }

    /// Appends one event (buffered: call [`Writer::flush`] after each batch). `journey` is the
    /// model's journey id, None for an event it placed in no journey (a route lookup whose
    /// packet was not seen), as `follow` prints them.
    pub fn event(&mut self, journey: impl Into<Option<usize>>, ev: &TraceEvent) -> Result<()> {
        self.events += 1;
        self.line(&EventLine {
            kind: "event",
            journey: journey.into(),
            event: ev,
        })
    }

    /// Records that the VM went away, when it is seen (flushed at once: a run cut short after
    /// it still says so).
    pub fn vm_gone(&mut self, gone: &VmGone) -> Result<()> {
        self.line(&Typed {
            kind: "vm_gone",
            body: gone,
        })?;
        self.flush()
    }

    /// Records when the trace was asked to stop (kernel monotonic ns, the `until` given to
    /// `Model::verdicts`), so replay judges the same requests. Flushed at once.
    pub fn stop(&mut self, until_ns: u64) -> Result<()> {
        self.line(&Typed {
            kind: "stop",
            body: &StopLine { until_ns },
        })?;
        self.flush()
    }

    /// Hands what is buffered to the kernel: after this a crash loses nothing written so far.
    pub fn flush(&mut self) -> Result<()> {
        self.out.flush().context("flushing the trace file")
    }

    /// Records the verdicts' inputs that are not events (rule decisions, budget counts and the
    /// `--budget` value; the facts, DEST and stop time have lines of their own): call it once,
    /// after the last event and before [`Writer::finish`]. Decisions are written as given: pass
    /// them through [`distinct_decisions`] first, and compute the live verdicts from the same list.
    pub fn inputs(&mut self, inputs: &Inputs) -> Result<()> {
        for d in &inputs.decisions {
            self.line(&Typed {
                kind: "rule",
                body: d,
            })?;
        }
        for b in &inputs.budgets {
            self.line(&Typed {
                kind: "budget",
                body: &BudgetLine::from(b),
            })?;
        }
        let (r, b, _, _) = self.inputs.unwrap_or_default();
        self.inputs = Some((
            r + inputs.decisions.len() as u64,
            b + inputs.budgets.len() as u64,
            inputs.budget,
            inputs.retained,
        ));
        self.flush()
    }

    /// Writes the verdicts and the end line with the given end time; returns the writer.
    pub fn end(
        mut self,
        verdicts: &[Verdict],
        counters: Counters,
        facts: &HostFacts,
        ended_unix_ns: u64,
    ) -> Result<W> {
        for v in verdicts {
            self.line(v)?;
        }
        self.line(&Typed {
            kind: "end",
            body: &EndLine {
                ended_unix_ns,
                events: self.events,
                verdicts: verdicts.len() as u64,
                counters,
                facts,
                rules: self.inputs.map(|i| i.0),
                budgets: self.inputs.map(|i| i.1),
                budget: self.inputs.map(|i| i.2),
                retained: self.inputs.and_then(|i| i.3),
            },
        })?;
        self.flush()?;
        self.out
            .into_inner()
            .map_err(|e| anyhow!("flushing the trace file: {}", e.error()))
    }
}

/// A trace read back.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trace {
    /// The header's `format`.
    pub format: u32,
    pub meta: Meta,
    /// Events in file order with the journey id the recorder gave them (None: in no journey).
    /// Informative: `replay` regroups the events by skb with the model, as the live run did.
    pub events: Vec<(Option<usize>, TraceEvent)>,
    /// The verdicts as recorded (replay recomputes them from the events).
    pub verdicts: Vec<Verdict>,
    /// When the trace was asked to stop (kernel monotonic ns), when recorded.
    pub until_ns: Option<u64>,
    /// `--explain-rules`' decisions (`rule` lines; format 2).
    pub decisions: Vec<RuleDecision>,
    /// The kernel's per-flow budget counts (`budget` lines; format 2).
    pub budgets: Vec<BudgetEntry>,
    /// The `--budget` value, from the end line (format 2).
    pub budget: Option<u32>,
    /// The `vm_gone` line: the VM went away during the run.
    pub vm_gone: Option<VmGone>,
    /// The live model's bound, from the end line (format 2; None: unbounded or unknown).
    pub retained: Option<usize>,
    /// From the end line: None when the trace is incomplete.
    pub counters: Option<Counters>,
    pub facts: Option<HostFacts>,
    pub ended_unix_ns: Option<u64>,
    /// The end line was read: the recording finished normally.
    pub complete: bool,
    /// Things a reader should know (a last line cut short, strings cleaned up).
    pub warnings: Vec<String>,
}

impl Trace {
    /// The host facts verdicts are computed with: the end's, else the start's, else none.
    pub fn host_facts(&self) -> HostFacts {
        self.facts
            .clone()
            .or_else(|| self.meta.facts.clone())
            .unwrap_or_default()
    }

    /// What the live run computed its verdicts with (besides the events), as recorded.
    pub fn inputs(&self) -> Inputs {
        Inputs {
            dest: self.meta.dest.clone(),
            facts: self.host_facts(),
            until_ns: self.until_ns,
            decisions: self.decisions.clone(),
            budgets: self.budgets.clone(),
            // Without budget lines the value is never used.
            budget: self.budget.unwrap_or(0),
            retained: self.retained,
            vm_gone: self.vm_gone.clone(),
            blind: self.meta.blind.clone(),
        }
    }
}

/// A trace written by a newer kvmtrace (a `format` this binary does not know).
#[derive(Debug)]
pub struct NewerFormat {
    pub found: u32,
    pub writer: String,
}

impl fmt::Display for NewerFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "this trace is in format {} (written by kvmtrace {}); this kvmtrace {} reads trace \
             formats up to {FORMAT}: open it with a newer kvmtrace",
            self.found,
            if self.writer.is_empty() {
                "?"
            } else {
                &self.writer
            },
            env!("CARGO_PKG_VERSION"),
        )
    }
}

impl std::error::Error for NewerFormat {}

/// Reads a trace file.
pub fn read(path: &Path) -> Result<Trace> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    read_from(BufReader::new(f)).with_context(|| format!("reading the trace {}", path.display()))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Section {
    Events,
    /// `rule` and `budget` lines: after the events, before the verdicts.
    Inputs,
    Verdicts,
    Ended,
}

/// Reads a trace from any reader.
pub fn read_from(mut r: impl BufRead) -> Result<Trace> {
    let mut t = Trace::default();
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    let mut section = Section::Events;
    let mut have_header = false;
    let mut cleaned = false;
    let mut stop_seen = false;
    let mut end_counts: Option<(u64, u64, Option<u64>, Option<u64>)> = None;
    sniff(r.fill_buf().context("reading")?)?;
    loop {
        buf.clear();
        let n = (&mut r)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("line {}", line_no + 1))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let terminated = buf.last() == Some(&b'\n');
        if !terminated && buf.len() > MAX_LINE {
            bail!(
                "line {line_no} is longer than {} KiB: not a kvmtrace trace, or corrupted",
                MAX_LINE / 1024
            );
        }
        let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = parse_value(text).map(|mut v| {
            cleaned |= clean_strings(&mut v);
            v
        });
        let mut obj = match parsed {
            Ok(Value::Object(o)) => o,
            Ok(_) => Err(anyhow!("line {line_no}: not a JSON object"))?,
            // The last line without its newline: a write cut short by a crash.
            Err(_) if !terminated && have_header => {
                t.warnings.push(format!(
                    "the last line ({line_no}) was cut short and is ignored: the recording \
                     stopped while writing it"
                ));
                break;
            }
            Err(e) if !have_header => {
                return Err(e.context(format!(
                    "line 1 is not a kvmtrace trace header (expected a JSON object with \
                     \"type\":\"{MAGIC}\")"
                )))
            }
            Err(e) => return Err(e.context(format!("line {line_no}"))),
        };
        let kind = match obj.remove("type") {
            // (Bounded: it may be quoted in an error.)
            Some(Value::String(s)) => s.chars().take(40).collect::<String>(),
            _ if !have_header => bail!(
                "not a kvmtrace trace: line 1 has no \"type\":\"{MAGIC}\" (is this the file \
                 written by `follow --record`?)"
            ),
            _ => bail!("line {line_no}: no \"type\""),
        };
        if !have_header {
            if kind != MAGIC {
                bail!(
                    "not a kvmtrace trace: line 1 is a \"{kind}\" object, not a \"{MAGIC}\" \
                     header (`follow --json` output is not a trace: record with `follow --record FILE`)"
                );
            }
            let format = obj
                .remove("format")
                .and_then(|f| f.as_u64())
                .ok_or_else(|| anyhow!("line 1: the header has no valid \"format\""))?;
            if format > FORMAT as u64 {
                return Err(NewerFormat {
                    found: format.min(u32::MAX as u64) as u32,
                    writer: obj
                        .get("version")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .chars()
                        .take(40)
                        .collect(),
                }
                .into());
            }
            if format == 0 {
                bail!("line 1: format 0 is not a trace format (formats start at 1)");
            }
            t.format = format as u32;
            t.meta =
                Meta::deserialize(Value::Object(obj)).context("line 1: the header's fields")?;
            have_header = true;
            continue;
        }
        let at = || format!("line {line_no}");
        match (kind.as_str(), section) {
            (_, Section::Ended) => bail!(
                "line {line_no}: data after the end line (two traces concatenated, or a \
                 corrupted file)"
            ),
            ("event", Section::Events) => {
                let journey = match obj.remove("journey") {
                    None | Some(Value::Null) => None,
                    Some(j) => Some(
                        j.as_u64()
                            .and_then(|j| usize::try_from(j).ok())
                            .ok_or_else(|| {
                                anyhow!("line {line_no}: an event with a bad journey")
                            })?,
                    ),
                };
                let ev = TraceEvent::deserialize(Value::Object(obj))
                    .with_context(|| format!("line {line_no}: a malformed event"))?;
                t.events.push((journey, ev));
            }
            ("event", Section::Inputs) => bail!(
                "line {line_no}: an event after the rule decisions and budget counts (they are \
                 written once the events end)"
            ),
            ("event", _) => bail!("line {line_no}: an event after the verdicts"),
            ("stop", Section::Events) if !stop_seen => {
                let s = StopLine::deserialize(Value::Object(obj)).with_context(at)?;
                t.until_ns = Some(s.until_ns);
                stop_seen = true;
            }
            ("vm_gone", Section::Events) if t.vm_gone.is_none() => {
                let g = VmGone::deserialize(Value::Object(obj))
                    .with_context(|| format!("line {line_no}: a malformed vm_gone line"))?;
                t.vm_gone = Some(g);
            }
            ("vm_gone", _) => bail!(
                "line {line_no}: a second vm_gone line, or one after the rule decisions, budget \
                 counts or verdicts"
            ),
            ("stop", _) => bail!(
                "line {line_no}: a second stop line, or one after the rule decisions, budget \
                 counts or verdicts"
            ),
            ("rule", Section::Events | Section::Inputs) => {
                let d = RuleDecision::deserialize(Value::Object(obj))
                    .with_context(|| format!("line {line_no}: a malformed rule decision"))?;
                t.decisions.push(d);
                section = Section::Inputs;
            }
            ("budget", Section::Events | Section::Inputs) => {
                let b = BudgetLine::deserialize(Value::Object(obj))
                    .with_context(|| format!("line {line_no}: a malformed budget count"))?;
                t.budgets.push(b.into());
                section = Section::Inputs;
            }
            ("rule" | "budget", _) => bail!(
                "line {line_no}: a \"{kind}\" line after the verdicts (they come before them)"
            ),
            ("verdict", _) => {
                // The verdict's own `type` is part of the struct.
                obj.insert("type".into(), Value::String(kind.clone()));
                let v = Verdict::deserialize(Value::Object(obj))
                    .with_context(|| format!("line {line_no}: a malformed verdict"))?;
                t.verdicts.push(v);
                section = Section::Verdicts;
            }
            ("end", _) => {
                let e = EndLine::<HostFacts>::deserialize(Value::Object(obj))
                    .with_context(|| format!("line {line_no}: a malformed end line"))?;
                t.counters = Some(e.counters);
                t.facts = Some(e.facts);
                t.ended_unix_ns = Some(e.ended_unix_ns);
                t.budget = e.budget;
                t.retained = e.retained;
                end_counts = Some((e.events, e.verdicts, e.rules, e.budgets));
                section = Section::Ended;
            }
            (MAGIC, _) => {
                bail!("line {line_no}: a second trace header (two traces concatenated? split them)")
            }
            (other, _) => bail!(
                "line {line_no}: unknown line type \"{other}\" (this kvmtrace reads trace format \
                 {FORMAT}; the header says {})",
                t.format
            ),
        }
    }
    if !have_header {
        bail!("empty file: not a kvmtrace trace (nothing was recorded)");
    }
    if let Some((events, verdicts, rules, budgets)) = end_counts {
        if events != t.events.len() as u64 || verdicts != t.verdicts.len() as u64 {
            bail!(
                "the end line counts {events} events and {verdicts} verdicts but the file holds \
                 {} and {}: lines are missing or were added",
                t.events.len(),
                t.verdicts.len()
            );
        }
        // Absent (format 1, or a writer that recorded no inputs): nothing to check, and
        // then the file must hold no such lines either.
        let (rules, budgets) = (rules.unwrap_or(0), budgets.unwrap_or(0));
        if rules != t.decisions.len() as u64 || budgets != t.budgets.len() as u64 {
            bail!(
                "the end line counts {rules} rule decisions and {budgets} budget counts but the \
                 file holds {} and {}: lines are missing or were added",
                t.decisions.len(),
                t.budgets.len()
            );
        }
        t.complete = true;
    }
    if cleaned {
        t.warnings.push(
            "control characters in the trace's strings were replaced by \u{fffd}".to_string(),
        );
    }
    Ok(t)
}

/// Recognises files that are clearly something else, for a better error than a JSON one.
fn sniff(first: &[u8]) -> Result<()> {
    let what = match first {
        [0x0a, 0x0d, 0x0d, 0x0a, ..] => {
            "a pcapng capture (`export` writes these; replay, export and report read the file \
             written by `follow --record`)"
        }
        [0xd4, 0xc3, 0xb2, 0xa1, ..] | [0xa1, 0xb2, 0xc3, 0xd4, ..] => "a pcap capture",
        [0x1f, 0x8b, ..] => "gzip-compressed: decompress it first (gunzip)",
        [0x28, 0xb5, 0x2f, 0xfd, ..] => "zstd-compressed: decompress it first (unzstd)",
        [0xfd, b'7', b'z', b'X', b'Z', ..] => "xz-compressed: decompress it first (unxz)",
        _ => return Ok(()),
    };
    bail!("not a kvmtrace trace: the file is {what}")
}

fn parse_value(text: &[u8]) -> Result<Value> {
    let s = std::str::from_utf8(text).map_err(|e| anyhow!("not UTF-8 text ({e})"))?;
    serde_json::from_str(s).map_err(|e| anyhow!("not valid JSON ({e})"))
}

/// Replaces control characters in every string (keys too); true when something changed.
/// Real traces never hold any; a hostile one must not reach a terminal or a report with them.
fn clean_strings(v: &mut Value) -> bool {
    fn clean(s: &str) -> Option<String> {
        s.chars().any(char::is_control).then(|| {
            s.chars()
                .map(|c| if c.is_control() { '\u{fffd}' } else { c })
                .collect()
        })
    }
    match v {
        Value::String(s) => match clean(s) {
            Some(c) => {
                *s = c;
                true
            }
            None => false,
        },
        Value::Array(a) => a.iter_mut().fold(false, |acc, x| clean_strings(x) | acc),
        Value::Object(o) => {
            let mut changed = false;
            if o.keys().any(|k| clean(k).is_some()) {
                let old = std::mem::take(o);
                *o = old
                    .into_iter()
                    .map(|(k, v)| (clean(&k).unwrap_or(k), v))
                    .collect::<Map<String, Value>>();
                changed = true;
            }
            o.values_mut()
                .fold(changed, |acc, x| clean_strings(x) | acc)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
