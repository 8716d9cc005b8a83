//! `kvmtrace follow`: attach, read events, show them live (text, JSON Lines or the terminal
//! UI), record them, and print one verdict per flow at the end.

use crate::capture::probe::{Spec, Tracer};
use crate::error::{EnvError, Usage};
use crate::host::resolve::{self, Roots};
use crate::model::dest::parse_dests;
use crate::model::event::Direction;
use crate::model::filter::{PacketFilter, Proto};
use crate::model::{stage_of, HostFacts, Model, Status};
use crate::views::output;
use anyhow::{anyhow, Context as _, Result};
use clap::ValueEnum;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// `--hooks`: which hook set to attach (capture::probe::HookSet; the flag's values are the
/// command line's business, not the loader's).
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Hooks {
    Path,
    All,
}

impl From<Hooks> for crate::capture::probe::HookSet {
    fn from(h: Hooks) -> Self {
        match h {
            Hooks::Path => Self::Path,
            Hooks::All => Self::All,
        }
    }
}

/// `--proto`: one of the names of [`Proto::ALL`] (listed in `--help` and completions).
fn proto_arg() -> impl clap::builder::TypedValueParser<Value = Proto> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(Proto::ALL.map(Proto::name))
        .map(|s| Proto::from_name(&s).expect("one of Proto::ALL's names"))
}

/// `kvmtrace follow VM DEST… [flags]`: the flags as typed, validated once by [`run`].
#[derive(clap::Args, Debug)]
pub struct FollowArgs {
    /// The VM: its name (QEMU -name, libvirt, Proxmox, OpenStack), Proxmox VMID, UUID, its
    /// tap device, or the guest's MAC.
    vm: String,
    /// Destination: an IPv4 or IPv6 address or prefix (203.0.113.1, 203.0.113.0/24,
    /// 2001:db8::1, 2001:db8::/64). Give one of each to follow both at once
    /// (`follow vm1 203.0.113.1 2001:db8::1`).
    #[arg(required = true, num_args = 1..=2, value_name = "DEST")]
    dest: Vec<String>,
    /// Which NIC of a VM with several: its number (Proxmox netN, else as `list` shows
    /// it), its tap or its MAC.
    #[arg(long, value_name = "N|TAP|MAC")]
    nic: Option<String>,
    /// Protocol to follow.
    #[arg(long, value_parser = proto_arg(), default_value = "any")]
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
    #[arg(long, value_enum, default_value_t = Hooks::Path)]
    hooks: Hooks,
}

impl FollowArgs {
    /// Whether the run takes over the terminal (logs then go to a file).
    pub(super) fn shows_tui(&self) -> bool {
        !self.json && !self.no_tui && std::io::IsTerminal::is_terminal(&std::io::stdout())
    }
}

/// Validates the flags (a bad one is a usage error, exit 2), resolves the VM and follows it.
pub(super) fn run(a: FollowArgs) -> Result<ExitCode> {
    let ring_kib = a.ring_kib;
    if !(ring_kib >= 4 && ring_kib.is_power_of_two() && ring_kib <= 1 << 20) {
        return Err(Usage(format!(
            "--ring-kib must be a power of two between 4 and 1048576, not {ring_kib}"
        ))
        .into());
    }
    let dests: Vec<ipnet::IpNet> = parse_dests(&a.dest)
        .map_err(Usage)?
        .into_iter()
        .map(|d| d.net)
        .collect();
    let dest = a.dest.join(" ");
    let packets = PacketFilter::new(a.proto, a.port).map_err(|e| Usage(format!("--port: {e}")))?;
    if let Some(d) = a.duration {
        if !(d > 0.0 && d.is_finite()) {
            return Err(Usage(format!(
                "--duration must be a positive number of seconds, not {d}"
            ))
            .into());
        }
    }
    let info = resolve::resolve(&a.vm, a.nic.as_deref(), &Roots::system())?;
    let spec = Spec {
        tap: info.tap.clone(),
        guest_mac: info.mac.as_deref().and_then(resolve::parse_mac),
        dests,
        packets,
        budget: a.budget,
        ring_bytes: ring_kib * 1024,
        hooks: a.hooks.into(),
    };
    let view = View {
        json: a.json,
        tui: a.shows_tui(),
        record: a.record.as_deref(),
        explain_rules: a.explain_rules,
        stats_every: a.stats_every.filter(|s| *s > 0).map(Duration::from_secs),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    rt.block_on(follow_async(
        &info,
        &spec,
        &dest,
        a.duration.map(Duration::from_secs_f64),
        a.count,
        view,
    ))
}

/// After the stop (deadline, count, signal), how long replies to requests in flight are
/// still collected.
const GRACE_MS: u64 = 1000;

/// How a live run shows itself.
#[derive(Clone, Copy, Debug)]
pub(super) struct View<'a> {
    pub(super) json: bool,
    pub(super) tui: bool,
    pub(super) record: Option<&'a std::path::Path>,
    pub(super) explain_rules: bool,
    pub(super) stats_every: Option<Duration>,
}

/// The terminal UI while it is on: the screen (its state, `Follow::tui`, is fed the hops) and
/// the filter the kernel programs have now.
struct Screen {
    live: crate::views::tui::Live,
    filter: PacketFilter,
    last_verdicts: Instant,
}

impl Screen {
    fn start(spec: &Spec) -> Result<Screen> {
        Ok(Screen {
            live: crate::views::tui::Live::start()?,
            filter: spec.packets,
            last_verdicts: Instant::now(),
        })
    }

    /// One redraw: counters every tick, verdicts every 500 ms, keys. True: the operator quit.
    fn tick(
        &mut self,
        st: &mut Follow,
        tracer: &mut Tracer,
        facts: &HostFacts,
        dest: &str,
        started: Instant,
    ) -> Result<bool> {
        let c = tracer.counters();
        let el = started.elapsed();
        let Some(app) = st.tui.as_mut() else {
            return Ok(true);
        };
        app.set_stats(crate::views::tui::TuiStats {
            elapsed: el,
            events_per_sec: st.delivered as f64 / el.as_secs_f64().max(0.001),
            events: c.events,
            lost: c.lost,
            sampled_out: c.sampled_out,
        });
        if self.last_verdicts.elapsed() >= Duration::from_millis(500) {
            app.set_judged(&st.model, st.model.verdicts(facts, dest, None));
            self.last_verdicts = Instant::now();
        }
        match self.live.tick(app)? {
            Some(crate::views::tui::Action::Quit) => return Ok(true),
            Some(crate::views::tui::Action::SetFilter(f)) => match tracer.set_filter(f) {
                Ok(()) => self.filter = f,
                Err(e) => {
                    log::warn!("changing the filter: {e:#}");
                    app.set_filter_label(self.filter.label());
                }
            },
            Some(crate::views::tui::Action::None) | None => {}
        }
        Ok(false)
    }
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
        Some(start_rule_tracer(spec)?)
    } else {
        None
    };
    let mut tracer = Tracer::start(spec)?;
    announce(&tracer, spec, info, dest, started);
    let blind = tracer.blind.clone();
    // Read at the start: a tap removed and made again under its name is another device.
    let tap_ifindex: Option<u32> =
        std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", info.tap))
            .ok()
            .and_then(|s| s.trim().parse().ok());
    let mut vm_gone: Option<crate::model::VmGone> = None;
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
    let mut screen = if view.tui {
        Some(Screen::start(spec)?)
    } else {
        None
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut progress = tokio::time::interval(view.stats_every.unwrap_or(Duration::from_secs(3600)));
    progress.tick().await;
    let writer = match view.record {
        Some(path) => Some(open_trace(path, info, spec, dest, &facts_live, &blind)?),
        None => None,
    };
    let mut st = Follow {
        writer,
        tui: view.tui.then(|| {
            crate::views::tui::App::new(crate::views::tui::TuiMeta {
                vm: info.name.clone().unwrap_or_else(|| info.tap.clone()),
                tap: info.tap.clone(),
                filter: spec.packets.label(),
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
                // The VM going away ends the run: nothing more of it can be seen, and every
                // verdict says so (not "delivered", not "the guest sent nothing").
                if let Some(g) = vm_gone_now(info, tap_ifindex, started, view.tui, &mut st)? {
                    vm_gone = Some(g);
                    break;
                }
            }
            _ = progress.tick(), if view.stats_every.is_some() => {
                eprintln!("{}", progress_line(&tracer, &st, started));
            }
            _ = tick.tick(), if screen.is_some() => {
                let Some(sc) = screen.as_mut() else { break };
                if sc.tick(&mut st, &mut tracer, &facts_live, dest, started)? {
                    break;
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
    if let Some(sc) = screen.take() {
        sc.live.finish();
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
    let decisions = rules
        .map(|rt| crate::trace::distinct_decisions(rt.stop()))
        .unwrap_or_default();
    let end = End {
        until,
        decisions,
        vm_gone,
        blind,
    };
    conclude(st, tracer, end, spec, info, dest, &mut out)
}

/// `--explain-rules`: the nftables rule tracer for the followed flow, its warnings said.
fn start_rule_tracer(spec: &Spec) -> Result<crate::capture::nftrace::RuleTracer> {
    let f = crate::capture::nftrace::TraceFilter {
        guest_ips: Vec::new(),
        dsts: spec.dests.clone(),
        packets: spec.packets,
    };
    let (rt, warnings) = crate::capture::nftrace::RuleTracer::start(&f)
        .map_err(|e| EnvError(format!("--explain-rules: nftables tracing: {e:#}")))?;
    for w in warnings {
        eprintln!("kvmtrace: warning: {w}");
    }
    Ok(rt)
}

/// The start-up lines: the probe line (what this kernel offers, and what each missing piece
/// costs), notes and warnings, then "following … ready in N ms".
fn announce(tracer: &Tracer, spec: &Spec, info: &resolve::VmInfo, dest: &str, started: Instant) {
    eprintln!("kvmtrace: {}", tracer.caps.summary());
    for g in tracer
        .caps
        .gaps(spec.hooks == crate::capture::probe::HookSet::All)
    {
        eprintln!("kvmtrace: {g}");
    }
    for n in &tracer.notes {
        eprintln!("kvmtrace: {n}");
    }
    for w in &tracer.warnings {
        eprintln!("kvmtrace: warning: {w}");
    }
    eprintln!(
        "kvmtrace: following {} → {dest}, ready in {} ms; attached: {}",
        info.heading(),
        started.elapsed().as_millis(),
        tracer.attached.join("; ")
    );
}

/// `--record FILE`: the trace, its metadata written.
fn open_trace(
    path: &std::path::Path,
    info: &resolve::VmInfo,
    spec: &Spec,
    dest: &str,
    facts: &HostFacts,
    blind: &Option<crate::model::Blind>,
) -> Result<crate::trace::Writer> {
    let mut meta = crate::trace::Meta::new(
        info.name.clone(),
        &info.tap,
        info.mac.clone(),
        dest,
        &spec.packets.label(),
    );
    meta.facts = Some(facts.clone());
    meta.blind = blind.clone();
    crate::trace::Writer::create(path, &meta)
        .with_context(|| format!("creating the trace file {}", path.display()))
}

/// Whether the VM went away (its tap, or its QEMU): said at once, live and in the trace.
fn vm_gone_now(
    info: &resolve::VmInfo,
    tap_ifindex: Option<u32>,
    started: Instant,
    tui: bool,
    st: &mut Follow,
) -> Result<Option<crate::model::VmGone>> {
    let Some(what) = tap_ifindex.and_then(|i| crate::host::vm_went_away(&info.tap, i, info.pid))
    else {
        return Ok(None);
    };
    let g = crate::model::VmGone {
        at_ns: crate::host::monotonic_ns(),
        after_s: started.elapsed().as_secs_f64(),
        what,
    };
    let line = format!(
        "the VM went away at +{:.1} s: {}; the run ends here",
        g.after_s, g.what
    );
    if tui {
        log::warn!("{line}");
    } else {
        eprintln!("kvmtrace: {line}");
    }
    if let Some(w) = &mut st.writer {
        w.vm_gone(&g)?;
    }
    Ok(Some(g))
}

/// `--stats-every`: one JSON progress line.
fn progress_line(tracer: &Tracer, st: &Follow, started: Instant) -> serde_json::Value {
    let c = tracer.counters();
    let maps: serde_json::Map<String, serde_json::Value> = tracer
        .map_entries()
        .into_iter()
        .map(|(k, v)| (k, serde_json::json!(v)))
        .collect();
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
}

/// What the run learned besides the events, for the verdicts.
struct End {
    /// Requests seen after this instant are not judged.
    until: u64,
    decisions: Vec<crate::model::decision::RuleDecision>,
    vm_gone: Option<crate::model::VmGone>,
    blind: Option<crate::model::Blind>,
}

/// After the last event: the verdicts (from the same inputs a replay uses), the trace's end,
/// hooks detached, the verdicts and stats printed, the static checks when nothing was seen.
fn conclude(
    mut st: Follow,
    tracer: Tracer,
    end: End,
    spec: &Spec,
    info: &resolve::VmInfo,
    dest: &str,
    out: &mut dyn std::io::Write,
) -> Result<ExitCode> {
    let json = st.json;
    let counters = tracer.counters();
    let programs = tracer.program_stats();
    let (attached, warnings) = (tracer.attached.clone(), tracer.warnings.clone());
    // Every input of the verdicts besides the events goes into the trace too, and replay
    // computes its verdicts from them with the same function: a replay equals this run.
    // The rule tracer's own table is removed first, so the host facts do not show it.
    let inputs = crate::trace::Inputs {
        dest: dest.to_string(),
        facts: crate::host::facts::gather(),
        until_ns: Some(end.until),
        decisions: end.decisions,
        budgets: tracer.flow_budgets(),
        budget: spec.budget,
        // The bound of `st.model`: replay folds old journeys the same way.
        retained: Some(crate::model::DEFAULT_RETAINED),
        vm_gone: end.vm_gone,
        blind: end.blind,
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
            &mut *out,
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
    if counters.missed > 0 {
        eprintln!(
            "kvmtrace: the kernel skipped {} runs of kvmtrace's programs (another BPF program was running on that CPU); a packet may lack a hop there",
            counters.missed
        );
    }
    // Nothing seen at all: the static checks say what along the path is wrong.
    if verdicts.iter().any(|v| v.status == Status::NoTraffic) {
        write_failing_checks(spec, info, json, out)?;
    }
    if st.undecodable > 0 {
        eprintln!(
            "kvmtrace: warning: {} events could not be decoded",
            st.undecodable
        );
    }
    Ok(ExitCode::from(crate::model::exit_status(&verdicts)))
}

/// The doctor's failing checks towards each followed destination (its route, its firewall
/// verdict), for a run that saw nothing.
fn write_failing_checks(
    spec: &Spec,
    info: &resolve::VmInfo,
    json: bool,
    out: &mut dyn std::io::Write,
) -> Result<()> {
    // Checked towards each followed destination (its route, its firewall verdict).
    let mut checks: Vec<crate::doctor::Check> = Vec::new();
    for d in &spec.dests {
        for c in crate::doctor::checks_for_dest(info, Some((*d).into())) {
            if !checks.iter().any(|k| k.name == c.name) {
                checks.push(c);
            }
        }
    }
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
                crate::doctor::write_check_text(&mut *out, c)?;
            }
        }
        out.flush()?;
    }
    Ok(())
}

/// VmRSS of this process (KiB).
fn rss_kib() -> u64 {
    crate::host::sys::rss_kib().0
}

/// VmHWM of this process (KiB), for the benchmark.
fn peak_rss_kib() -> u64 {
    crate::host::sys::rss_kib().1
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
        rb: &mut crate::capture::probe::Ring,
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
