//! Command line: flags are parsed once into a validated config, `run` does the work.
//!
//! Exit codes: 0 every flow delivered; 1 a problem found; 2 usage error (bad flag, bad
//! address, unknown VM); 3 environment error (not root, no BTF, a kernel feature missing).

pub mod assets;
mod follow;
mod list;
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
use std::net::IpAddr;
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
        #[arg(long, value_enum, default_value_t = Hooks::Path)]
        hooks: Hooks,
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
    /// Print a shell completion script on stdout (bash, zsh, fish, elvish, powershell).
    Completions(crate::cmd::assets::CompletionsArgs),
    /// Write one man page per command into DIR (for packagers).
    #[command(hide = true)]
    Manpages(crate::cmd::assets::ManpagesArgs),
}

/// The whole command line as a `clap::Command`, for generators (man pages, completions).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Parses a destination: an IPv4 or IPv6 address (a /32 or /128) or a prefix
/// (`203.0.113.0/24`, `2001:db8::/64`; host bits are cleared).
pub fn parse_dest(s: &str) -> Result<ipnet::IpNet> {
    let bad = || {
        anyhow!(
            "'{s}' is not an IP address or prefix (examples: 203.0.113.1, 203.0.113.0/24, \
             2001:db8::1, 2001:db8::/64)"
        )
    };
    match s.split_once('/') {
        Some((a, p)) => {
            let addr: IpAddr = a.parse().map_err(|_| bad())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if !p.parse::<u8>().is_ok_and(|p| p <= max) {
                return Err(anyhow!("bad prefix length in '{s}': expected 0-{max}"));
            }
            let net: ipnet::IpNet = s.parse().map_err(|_| bad())?;
            Ok(net.trunc())
        }
        None => Ok(ipnet::IpNet::from(s.parse::<IpAddr>().map_err(|_| bad())?)),
    }
}

/// Parses `follow`'s one or two destinations: at most one per IP version.
pub fn parse_dests(v: &[String]) -> Result<Vec<ipnet::IpNet>> {
    let nets = v
        .iter()
        .map(|d| parse_dest(d))
        .collect::<Result<Vec<_>>>()?;
    if let [a, b] = nets.as_slice() {
        if a.addr().is_ipv4() == b.addr().is_ipv4() {
            return Err(anyhow!(
                "'{a}' and '{b}' are both {}: give one destination, or one IPv4 and one IPv6 \
                 to follow both versions at once",
                if a.addr().is_ipv4() { "IPv4" } else { "IPv6" }
            ));
        }
    }
    Ok(nets)
}

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
        Cmd::List { all, json } => list::list(all, json),
        Cmd::Replay(a) => crate::cmd::offline::replay(a),
        Cmd::Export(a) => crate::cmd::offline::export(a),
        Cmd::Report(a) => crate::cmd::offline::report(a),
        Cmd::Doctor(a) => crate::doctor::run(a),
        Cmd::Watch(a) => crate::watch::run(a),
        Cmd::Completions(a) => assets::completions(a),
        Cmd::Manpages(a) => assets::manpages(a),
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
            let dests = parse_dests(&dest).map_err(|e| Usage(format!("{e:#}")))?;
            let dest = dest.join(" ");
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
                dests,
                proto: match proto {
                    Proto::Icmp => 1,
                    Proto::Tcp => 6,
                    Proto::Udp => 17,
                    Proto::Any => 0,
                },
                port: port.unwrap_or(0),
                budget,
                ring_bytes: ring_kib * 1024,
                hooks: hooks.into(),
            };
            let tui = !json && !no_tui && std::io::IsTerminal::is_terminal(&std::io::stdout());
            let view = follow::View {
                json,
                tui,
                record: record.as_deref(),
                explain_rules,
                stats_every: stats_every.filter(|s| *s > 0).map(Duration::from_secs),
            };
            follow::follow(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dest_forms() {
        let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
        assert_eq!(parse_dest("203.0.113.1").unwrap(), net("203.0.113.1/32"));
        assert_eq!(
            parse_dest("198.51.100.7/24").unwrap(),
            net("198.51.100.0/24")
        );
        assert!(parse_dest("203.0.113.1/33").is_err());
        let e = parse_dest("not-an-ip").unwrap_err().to_string();
        assert!(e.contains("not an IP address"), "{e}");
        assert_eq!(parse_dest("2001:db8::1").unwrap(), net("2001:db8::1/128"));
        assert_eq!(parse_dest("2001:db8::5/32").unwrap(), net("2001:db8::/32"));
        let e = parse_dest("2001:db8::/129").unwrap_err().to_string();
        assert!(e.contains("0-128"), "{e}");
        let both = ["203.0.113.1".to_string(), "2001:db8::1".to_string()];
        assert_eq!(parse_dests(&both).unwrap().len(), 2);
        let two4 = ["203.0.113.1".to_string(), "198.51.100.1".to_string()];
        let e = parse_dests(&two4).unwrap_err().to_string();
        assert!(e.contains("both IPv4"), "{e}");
    }
}
