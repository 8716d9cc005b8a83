//! `replay`, `export` and `report`: work on a recorded trace (`follow --record`, [`crate::trace`])
//! offline, on any machine: no root, no eBPF, no access to the host that recorded it.
//!
//! Each command reads the trace, rebuilds the journeys and verdicts with the same [`Model`] the
//! live run used ([`Analysis`]), and renders one view of it. A trace that cannot be read is a
//! usage error (exit 2) with the reason; an incomplete one (cut short) opens with a warning.

use crate::trace::analysis::{counters_of, iso_utc, or_unknown, warnings, Analysis};
use crate::trace::{self, Trace};
use crate::views::replay::{write_jsonl, write_replay};
use anyhow::{bail, Context as _, Result};
use clap::{Args, ValueEnum};
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

/// Reads a trace for a command and replays it through the model, saying what was recorded;
/// a file that cannot be read is a usage error (exit 2).
fn open(path: &Path) -> Result<(Trace, Analysis)> {
    let t = trace::read(path).map_err(|e| crate::error::usage(format!("{e:#}")))?;
    let an = Analysis::of(&t);
    describe(path, &t, &an);
    Ok((t, an))
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

pub fn replay(a: ReplayArgs) -> Result<ExitCode> {
    let (t, an) = open(&a.file)?;
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
    use crate::views::tui::{Action, App, Live, TuiMeta, TuiStats};
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
    let (t, an) = open(&a.file)?;
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
            let s = crate::views::pcapng::write(&t, &an, &mut out)
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
    let (t, an) = open(&a.file)?;
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
    let doc = crate::views::report::build(&t, &an, &name);
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
