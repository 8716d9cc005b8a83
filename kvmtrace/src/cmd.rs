//! Command line: flags are parsed once into a validated config, `run` does the work.
//!
//! Exit codes: 0 every flow delivered; 1 a problem found; 2 usage error (bad flag, bad
//! address, unknown VM); 3 environment error (not root, no BTF, a kernel feature missing).

pub mod offline;

use crate::capture::probe::{Spec, Tracer};
use crate::error::{EnvError, Usage};
use crate::host::resolve::{self, Roots, UnknownVm};
use crate::model::event::Direction;
use crate::model::{stage_of, HostFacts, Model, Status};
use crate::views::output;
use anyhow::{anyhow, Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "kvmtrace",
    version,
    about = "Follow a KVM guest's packets through the host and say where they stop"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Proto {
    Icmp,
    Tcp,
    Udp,
    Any,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Follow the VM's packets to DEST and their replies; print each hop and a verdict per flow.
    Follow {
        /// The VM: its name (QEMU -name, libvirt, Proxmox, OpenStack), Proxmox VMID, UUID, its
        /// tap device, or the guest's MAC.
        vm: String,
        /// Destination: an IPv4 address or CIDR (203.0.113.1, 203.0.113.0/24).
        dest: String,
        /// Which NIC of a VM with several: its number (Proxmox netN, else as `list` shows
        /// it), its tap or its MAC.
        #[arg(long, value_name = "N|TAP|MAC")]
        nic: Option<String>,
        /// Protocol to follow.
        #[arg(long, value_enum, default_value_t = Proto::Any)]
        proto: Proto,
        /// Remote TCP/UDP port to follow (default: any).
        #[arg(long)]
        port: Option<u16>,
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        duration: Option<f64>,
        /// Stop after this many request packets (and a short wait for their replies).
        #[arg(long)]
        count: Option<u64>,
        /// JSON Lines on stdout: hop events, then one verdict per flow, then stats.
        #[arg(long)]
        json: bool,
        /// Print hop lines instead of the terminal UI (the UI opens only when stdout is a
        /// terminal; logs then go to /tmp/kvmtrace-PID.log).
        #[arg(long)]
        no_tui: bool,
        /// Also write everything to this trace file (mode 0600; headers only, never payload),
        /// for `replay`, `export` and `report`.
        #[arg(long, value_name = "FILE")]
        record: Option<std::path::PathBuf>,
        /// Name the exact nftables rule (or chain policy) behind each netfilter drop, with
        /// nftables tracing for the followed flow only. This adds a table of its own while
        /// running (removed on exit, also by the kernel after a crash); off by default.
        #[arg(long)]
        explain_rules: bool,
        /// Packets per flow and direction shown in full; past it the kernel only counts them
        /// (exact counts, reported per flow). 0 = no limit.
        #[arg(long, default_value_t = 200)]
        budget: u32,
        /// Ring buffer size in KiB (a power of two, at least 4). Events that find it full are
        /// counted as lost and reported.
        #[arg(long, default_value_t = 4096)]
        ring_kib: u32,
        /// Every SECS seconds, a progress line on stderr (JSON): events, lost, peak RSS and the
        /// kernel maps' entries, for long runs and soak tests.
        #[arg(long, value_name = "SECS")]
        stats_every: Option<u64>,
        /// Which hooks to attach: `path` (TC on the devices of the VM's path, drops and route
        /// lookups: other traffic pays only where it crosses those devices) or `all` (also
        /// every device's receive/transmit tracepoints and netfilter links at every IPv4 hook:
        /// each netfilter hook's entry and exit shown, at a cost to every packet of the host).
        #[arg(long, value_enum, default_value_t = crate::capture::probe::HookSet::Path)]
        hooks: crate::capture::probe::HookSet,
    },
    /// List the VMs (one line per NIC) and taps that can be followed from this network
    /// namespace.
    List {
        /// Also VMs whose QEMU runs in another network namespace, with its name.
        #[arg(long)]
        all: bool,
        /// JSON Lines on stdout: one `vm` object per NIC.
        #[arg(long)]
        json: bool,
    },
    /// Show a recorded trace (`follow --record`) with the same views, offline, without root.
    Replay(crate::cmd::offline::ReplayArgs),
    /// Export a recorded trace (pcapng for Wireshark/tshark, JSON Lines for scripts).
    Export(crate::cmd::offline::ExportArgs),
    /// Write a postmortem report (Markdown and self-contained HTML) from a recorded trace.
    Report(crate::cmd::offline::ReportArgs),
    /// Check everything along a VM's path without waiting for traffic: pass / warn / fail with
    /// the evidence and the fix.
    Doctor(crate::doctor::DoctorArgs),
    /// Watch every VM of the host as a service: drop and tap counters for Prometheus
    /// (`/metrics`), and a flight recording (`follow --record`) of a VM whose drops cross a
    /// threshold. docs/watch.md.
    Watch(crate::watch::WatchArgs),
}

/// Parses `203.0.113.1` or `203.0.113.0/24`.
pub fn parse_dest(s: &str) -> Result<(Ipv4Addr, u8)> {
    let bad =
        || anyhow!("'{s}' is not an IPv4 address or CIDR (examples: 203.0.113.1, 203.0.113.0/24)");
    match s.split_once('/') {
        Some((a, p)) => {
            if !p.parse::<u8>().is_ok_and(|p| p <= 32) {
                return Err(anyhow!("bad prefix length in '{s}': expected 0-32"));
            }
            a.parse::<Ipv4Addr>().map_err(|_| bad())?;
            let net: ipnet::Ipv4Net = s.parse().map_err(|_| bad())?;
            Ok((net.addr(), net.prefix_len()))
        }
        None => Ok((s.parse().map_err(|_| bad())?, 32)),
    }
}

/// After the stop (deadline, count, signal), how long replies to requests in flight are
/// still collected.
const GRACE_MS: u64 = 1000;

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // While the terminal UI owns the screen, logs go to a file instead.
    let tui = matches!(
        &cli.cmd,
        Cmd::Follow {
            json: false,
            no_tui: false,
            ..
        }
    ) && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"));
    logger.target(env_logger::Target::Stderr);
    if tui {
        let path = format!("/tmp/kvmtrace-{}.log", std::process::id());
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&path);
        if let Ok(f) = file {
            logger.target(env_logger::Target::Pipe(Box::new(f)));
        }
    }
    logger.init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let code =
                if e.downcast_ref::<Usage>().is_some() || e.downcast_ref::<UnknownVm>().is_some() {
                    2
                } else if e.downcast_ref::<EnvError>().is_some() {
                    3
                } else if e
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
                {
                    return ExitCode::SUCCESS;
                } else {
                    1
                };
            eprintln!("kvmtrace: {e:#}");
            ExitCode::from(code)
        }
    }
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::List { all, json } => list(all, json),
        Cmd::Replay(a) => crate::cmd::offline::replay(a),
        Cmd::Export(a) => crate::cmd::offline::export(a),
        Cmd::Report(a) => crate::cmd::offline::report(a),
        Cmd::Doctor(a) => crate::doctor::run(a),
        Cmd::Watch(a) => crate::watch::run(a),
        Cmd::Follow {
            vm,
            dest,
            nic,
            proto,
            port,
            duration,
            count,
            json,
            no_tui,
            record,
            explain_rules,
            budget,
            ring_kib,
            stats_every,
            hooks,
        } => {
            if !(ring_kib >= 4 && ring_kib.is_power_of_two() && ring_kib <= 1 << 20) {
                return Err(Usage(format!(
                    "--ring-kib must be a power of two between 4 and 1048576, not {ring_kib}"
                ))
                .into());
            }
            let (dst, prefix) = parse_dest(&dest).map_err(|e| Usage(format!("{e:#}")))?;
            if port.is_some() && proto == Proto::Icmp {
                return Err(Usage("--port applies to tcp and udp, not icmp".into()).into());
            }
            if let Some(d) = duration {
                if !(d > 0.0 && d.is_finite()) {
                    return Err(Usage(format!(
                        "--duration must be a positive number of seconds, not {d}"
                    ))
                    .into());
                }
            }
            let info = resolve::resolve(&vm, nic.as_deref(), &Roots::system())?;
            let spec = Spec {
                tap: info.tap.clone(),
                guest_mac: info.mac.as_deref().and_then(resolve::parse_mac),
                dst,
                prefix,
                proto: match proto {
                    Proto::Icmp => 1,
                    Proto::Tcp => 6,
                    Proto::Udp => 17,
                    Proto::Any => 0,
                },
                port: port.unwrap_or(0),
                budget,
                ring_bytes: ring_kib * 1024,
                hooks,
            };
            let tui = !json && !no_tui && std::io::IsTerminal::is_terminal(&std::io::stdout());
            let view = View {
                json,
                tui,
                record: record.as_deref(),
                explain_rules,
                stats_every: stats_every.filter(|s| *s > 0).map(Duration::from_secs),
            };
            follow(
                &info,
                &spec,
                &dest,
                duration.map(Duration::from_secs_f64),
                count,
                view,
            )
        }
    }
}

/// `kvmtrace list [--all] [--json]`.
fn list(all: bool, json: bool) -> Result<ExitCode> {
    let roots = Roots::system();
    let every = resolve::list_all(&roots);
    let elsewhere = every.iter().filter(|v| !v.netns.here).count();
    let shown: Vec<&resolve::VmInfo> = every.iter().filter(|v| all || v.netns.here).collect();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if !json {
        eprintln!(
            "kvmtrace: network namespace {}",
            resolve::current_netns(&roots)
        );
    }
    if shown.is_empty() {
        eprintln!("kvmtrace: no VM or tap device found in this network namespace");
    }
    for v in &shown {
        if json {
            writeln!(out, "{}", v.to_json())?;
        } else {
            writeln!(out, "{v}")?;
        }
    }
    out.flush()?;
    if !all && elsewhere > 0 {
        eprintln!(
            "kvmtrace: {elsewhere} more NIC(s) in other network namespaces (cannot be followed \
             from here): `kvmtrace list --all`"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// How a live run shows itself.
#[derive(Clone, Copy, Debug)]
struct View<'a> {
    json: bool,
    tui: bool,
    record: Option<&'a std::path::Path>,
    explain_rules: bool,
    stats_every: Option<Duration>,
}

fn follow(
    info: &resolve::VmInfo,
    spec: &Spec,
    dest: &str,
    duration: Option<Duration>,
    count: Option<u64>,
    view: View<'_>,
) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    rt.block_on(follow_async(info, spec, dest, duration, count, view))
}

async fn follow_async(
    info: &resolve::VmInfo,
    spec: &Spec,
    dest: &str,
    duration: Option<Duration>,
    count: Option<u64>,
    view: View<'_>,
) -> Result<ExitCode> {
    let json = view.json;
    use tokio::io::unix::AsyncFd;
    use tokio::signal::unix::{signal, SignalKind};

    let started = Instant::now();
    // Rule tracing first: it only reads the ruleset and adds its own table, before any hook.
    let rules = if view.explain_rules {
        let f = crate::capture::nftrace::TraceFilter {
            guest_ips: Vec::new(),
            dst: spec.dst,
            prefix: spec.prefix,
            proto: spec.proto,
            port: spec.port,
        };
        let (rt, warnings) = crate::capture::nftrace::RuleTracer::start(&f)
            .map_err(|e| EnvError(format!("--explain-rules: nftables tracing: {e:#}")))?;
        for w in warnings {
            eprintln!("kvmtrace: warning: {w}");
        }
        Some(rt)
    } else {
        None
    };
    let mut tracer = Tracer::start(spec)?;
    for w in &tracer.warnings {
        eprintln!("kvmtrace: warning: {w}");
    }
    eprintln!(
        "kvmtrace: following {} (tap {}{}) → {dest}, ready in {} ms; attached: {}",
        info.name.as_deref().unwrap_or("VM"),
        info.tap,
        info.mac
            .as_deref()
            .map(|m| format!(", mac {m}"))
            .unwrap_or_default(),
        started.elapsed().as_millis(),
        tracer.attached.join("; ")
    );
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd holds it.
    let mut ring = unsafe { AsyncFd::register(tracer.take_ring()) }
        .map_err(|e| anyhow!("polling the ring buffer: {e}"))?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let deadline = duration.map(|d| tokio::time::Instant::now() + d);
    let mut count_deadline: Option<tokio::time::Instant> = None;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    // The terminal UI reads the same model; it redraws on a 100 ms tick, decoupled from the
    // ring buffer, and keeps bounded state of its own.
    let facts_live: HostFacts = crate::host::facts::gather();
    let mut live = if view.tui {
        Some(crate::views::tui::Live::start()?)
    } else {
        None
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut progress = tokio::time::interval(view.stats_every.unwrap_or(Duration::from_secs(3600)));
    progress.tick().await;
    let mut last_verdicts = Instant::now();
    let mut filter = (spec.proto, spec.port);
    let writer = match view.record {
        Some(path) => {
            let mut meta = crate::trace::Meta::new(
                info.name.clone(),
                &info.tap,
                info.mac.clone(),
                dest,
                &crate::views::tui::filter_label(spec.proto, spec.port),
            );
            meta.facts = Some(facts_live.clone());
            Some(
                crate::trace::Writer::create(path, &meta)
                    .with_context(|| format!("creating the trace file {}", path.display()))?,
            )
        }
        None => None,
    };
    let mut st = Follow {
        writer,
        tui: view.tui.then(|| {
            crate::views::tui::App::new(crate::views::tui::TuiMeta {
                vm: info.name.clone().unwrap_or_else(|| info.tap.clone()),
                tap: info.tap.clone(),
                filter: crate::views::tui::filter_label(spec.proto, spec.port),
                dest: dest.to_string(),
            })
        }),
        model: Model::bounded(crate::model::DEFAULT_RETAINED),
        delivered: 0,
        undecodable: 0,
        requests: 0,
        t0: None,
        json,
        routed_to: Vec::new(),
    };
    // The path hook set follows route and bridge-port changes, and the devices the followed
    // packets are actually routed to.
    let mut path_tick = tokio::time::interval(Duration::from_millis(500));
    path_tick.tick().await;

    loop {
        let sleep_until = match (deadline, count_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timer = async {
            match sleep_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = timer => break,
            _ = path_tick.tick() => {
                for note in tracer.refresh_path(&st.routed_to, started.elapsed().as_secs_f64()) {
                    if view.tui {
                        log::info!("{note}");
                    } else {
                        eprintln!("kvmtrace: {note}");
                    }
                }
            }
            _ = progress.tick(), if view.stats_every.is_some() => {
                let c = tracer.counters();
                let maps: serde_json::Map<String, serde_json::Value> = tracer
                    .map_entries()
                    .into_iter()
                    .map(|(k, v)| (k, serde_json::json!(v)))
                    .collect();
                eprintln!(
                    "{}",
                    serde_json::json!({
                        "type": "progress",
                        "elapsed_s": started.elapsed().as_secs_f64(),
                        "events": c.events,
                        "delivered": st.delivered,
                        "lost": c.lost,
                        "sampled_out": c.sampled_out,
                        "rss_kib": rss_kib(),
                        "peak_rss_kib": peak_rss_kib(),
                        "journeys_held": st.model.journeys.len(),
                        "maps": maps,
                    })
                );
            }
            _ = tick.tick(), if live.is_some() => {
                let c = tracer.counters();
                let (Some(app), Some(ui)) = (st.tui.as_mut(), live.as_mut()) else { break };
                let el = started.elapsed();
                app.set_stats(crate::views::tui::TuiStats {
                    elapsed: el,
                    events_per_sec: st.delivered as f64 / el.as_secs_f64().max(0.001),
                    events: c.events,
                    lost: c.lost,
                    sampled_out: c.sampled_out,
                });
                if last_verdicts.elapsed() >= Duration::from_millis(500) {
                    app.set_judged(&st.model, st.model.verdicts(&facts_live, dest, None));
                    last_verdicts = Instant::now();
                }
                match ui.tick(app)? {
                    Some(crate::views::tui::Action::Quit) => break,
                    Some(crate::views::tui::Action::SetFilter { proto, port }) => {
                        match tracer.set_filter(proto, port) {
                            Ok(()) => filter = (proto, port),
                            Err(e) => {
                                log::warn!("changing the filter: {e:#}");
                                app.set_filter_label(crate::views::tui::filter_label(filter.0, filter.1));
                            }
                        }
                    }
                    Some(crate::views::tui::Action::None) | None => {}
                }
            }
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                st.drain(&tracer, guard.get_inner_mut(), &mut out)?;
                guard.clear_ready();
                out.flush()?;
                if let Some(n) = count {
                    if st.requests >= n && count_deadline.is_none() {
                        // Give the last requests a moment for their replies.
                        count_deadline = Some(tokio::time::Instant::now());
                    }
                }
            }
        }
    }
    // Requests seen from now on are not judged; the ones in flight get a moment for their
    // replies. Then drain, and read the counters (exact: each event delivered or counted lost).
    let until = crate::host::monotonic_ns();
    if let Some(w) = &mut st.writer {
        w.stop(until)?;
    }
    if let Some(ui) = live.take() {
        ui.finish();
    }
    let grace = tokio::time::Instant::now() + Duration::from_millis(GRACE_MS);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(grace) => break,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                st.drain(&tracer, guard.get_inner_mut(), &mut out)?;
                guard.clear_ready();
            }
        }
    }
    st.drain(&tracer, ring.get_mut(), &mut out)?;
    let counters = tracer.counters();
    let programs = tracer.program_stats();
    let (attached, warnings) = (tracer.attached.clone(), tracer.warnings.clone());
    // Every input of the verdicts besides the events goes into the trace too, and replay
    // computes its verdicts from them with the same function: a replay equals this run.
    // The rule tracer's own table is removed first, so the host facts do not show it.
    let decisions = rules
        .map(|rt| crate::trace::distinct_decisions(rt.stop()))
        .unwrap_or_default();
    let inputs = crate::trace::Inputs {
        dest: dest.to_string(),
        facts: crate::host::facts::gather(),
        until_ns: Some(until),
        decisions,
        budgets: tracer.flow_budgets(),
        budget: spec.budget,
        // The bound of `st.model`: replay folds old journeys the same way.
        retained: Some(crate::model::DEFAULT_RETAINED),
    };
    let verdicts = inputs.verdicts(&st.model);
    if let Some(mut w) = st.writer.take() {
        w.inputs(&inputs)?;
        w.finish(&verdicts, counters, &inputs.facts)?;
    }
    drop(tracer);
    if json {
        for v in &verdicts {
            writeln!(out, "{}", serde_json::to_string(v)?)?;
        }
        let mut stats: serde_json::Value = serde_json::from_str(&output::stats_json_live(
            counters,
            st.delivered,
            &attached,
            &warnings,
        ))?;
        stats["programs"] = serde_json::to_value(&programs)?;
        stats["peak_rss_kib"] = serde_json::json!(peak_rss_kib());
        writeln!(out, "{stats}")?;
    } else {
        writeln!(out)?;
        output::write_verdicts_text(
            &mut out,
            &verdicts,
            &output::flow_times(&st.model, &verdicts),
            st.t0.unwrap_or(0),
        )?;
    }
    out.flush()?;
    eprintln!(
        "kvmtrace: {} events ({} read), {} lost to a full ring buffer, {} over the per-flow budget (counted, not shown); all hooks detached",
        counters.events, st.delivered, counters.lost, counters.sampled_out
    );
    // Nothing seen at all: the static checks say what along the path is wrong.
    if verdicts.iter().any(|v| v.status == Status::NoTraffic) {
        let checks = crate::doctor::checks_for(info);
        let failing: Vec<&crate::doctor::Check> = checks
            .iter()
            .filter(|c| matches!(c.status, crate::doctor::CheckStatus::Fail))
            .collect();
        if !failing.is_empty() {
            if json {
                for c in &failing {
                    writeln!(out, "{}", crate::doctor::check_json(c))?;
                }
            } else {
                writeln!(
                    out,
                    "\nno traffic: `kvmtrace doctor` finds {} failing check(s):",
                    failing.len()
                )?;
                for c in &failing {
                    crate::doctor::write_check_text(&mut out, c)?;
                }
            }
            out.flush()?;
        }
    }
    if st.undecodable > 0 {
        eprintln!(
            "kvmtrace: warning: {} events could not be decoded",
            st.undecodable
        );
    }
    let ok = verdicts.iter().all(|v| v.status == Status::Delivered);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// VmRSS of this process (KiB).
fn rss_kib() -> u64 {
    proc_status_kib("VmRSS:")
}

fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// VmHWM of this process (KiB), for the benchmark.
fn peak_rss_kib() -> u64 {
    proc_status_kib("VmHWM:")
}

/// State of a running `follow`: the model and what the views need.
struct Follow {
    /// `--record`: the trace being written.
    writer: Option<crate::trace::Writer>,
    /// The terminal UI's state, when it is on (hops then go to it instead of stdout).
    tui: Option<crate::views::tui::App>,
    model: Model,
    /// Records read from the ring buffer (to compare with the kernel's count).
    delivered: u64,
    /// Records that could not be decoded (an unknown hook: a newer eBPF object).
    undecodable: u64,
    requests: u64,
    t0: Option<u64>,
    json: bool,
    /// Output devices of the followed packets' successful route lookups: the path hook set
    /// attaches there too.
    routed_to: Vec<u32>,
}

impl Follow {
    /// Handles every record the ring buffer holds now.
    fn drain(
        &mut self,
        tracer: &Tracer,
        rb: &mut aya::maps::RingBuf<aya::maps::MapData>,
        out: &mut dyn std::io::Write,
    ) -> Result<()> {
        while let Some(item) = rb.next() {
            self.delivered += 1;
            self.handle(tracer, &item, out)?;
        }
        // A trace cut short by a crash still holds everything read so far.
        if let Some(w) = &mut self.writer {
            w.flush()?;
        }
        Ok(())
    }

    fn handle(
        &mut self,
        tracer: &Tracer,
        bytes: &[u8],
        out: &mut dyn std::io::Write,
    ) -> Result<()> {
        let Some(ev) = tracer.decode(bytes) else {
            self.undecodable += 1;
            return Ok(());
        };
        let t0 = *self.t0.get_or_insert(ev.ts_ns);
        if ev.new && ev.dir == Direction::Request {
            self.requests += 1;
        }
        let stage = stage_of(&ev);
        if let Some(r) = ev.route.as_ref().filter(|r| r.err == 0 && r.oif != 0) {
            if !self.routed_to.contains(&r.oif) {
                self.routed_to.push(r.oif);
            }
        }
        let (j, orphan) = match self.model.try_push(ev) {
            Ok(j) => (Some(j), None),
            Err(ev) => (None, Some(*ev)),
        };
        let e = match (&orphan, j) {
            (Some(e), _) => e,
            (None, Some(j)) => self
                .model
                .journey(j)
                .and_then(|j| j.hops.last())
                .expect("just pushed"),
            (None, None) => return Ok(()),
        };
        if let Some(w) = &mut self.writer {
            w.event(j, e)?;
        }
        if let Some(app) = &mut self.tui {
            if let Some(j) = j {
                app.push(j, e);
            }
            return Ok(());
        }
        if self.json {
            writeln!(out, "{}", output::hop_json(j, e, stage))?;
        } else {
            writeln!(out, "{}", output::hop_line(t0, j, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dest_forms() {
        assert_eq!(
            parse_dest("203.0.113.1").unwrap(),
            ("203.0.113.1".parse().unwrap(), 32)
        );
        assert_eq!(parse_dest("198.51.100.0/24").unwrap().1, 24);
        assert!(parse_dest("203.0.113.1/33").is_err());
        let e = parse_dest("not-an-ip").unwrap_err().to_string();
        assert!(e.contains("not an IPv4"), "{e}");
    }
}
