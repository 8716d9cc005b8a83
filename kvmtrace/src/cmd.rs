//! Command line: flags are parsed once into a validated config, `run` does the work.
//!
//! Exit codes: 0 every flow delivered; 1 a problem found; 2 usage error (bad flag, bad
//! address, unknown VM); 3 environment error (not root, no BTF, a kernel feature missing).

pub mod assets;
#[cfg(feature = "live")]
mod doctor;
#[cfg(feature = "live")]
mod follow;
pub mod list;
pub mod offline;
#[cfg(feature = "live")]
mod watch;

use crate::error::{EnvError, Usage};
use crate::host::resolve::UnknownVm;
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::os::unix::fs::OpenOptionsExt as _;
use std::process::ExitCode;

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

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Follow the VM's packets to DEST and their replies; print each hop and a verdict per flow.
    #[cfg(feature = "live")]
    Follow(follow::FollowArgs),
    /// List the VMs (one line per NIC) and taps that can be followed from this network
    /// namespace.
    List(list::ListArgs),
    /// Show a recorded trace (`follow --record`) with the same views, offline, without root.
    Replay(offline::ReplayArgs),
    /// Export a recorded trace (pcapng for Wireshark/tshark, JSON Lines for scripts).
    Export(offline::ExportArgs),
    /// Write a postmortem report (Markdown and self-contained HTML) from a recorded trace.
    Report(offline::ReportArgs),
    /// Check everything along a VM's path without waiting for traffic: pass / warn / fail with
    /// the evidence and the fix.
    #[cfg(feature = "live")]
    Doctor(doctor::DoctorArgs),
    /// Watch every VM of the host as a service: drop and tap counters for Prometheus
    /// (`/metrics`), and a flight recording (`follow --record`) of a VM whose drops cross a
    /// threshold. docs/watch.md.
    #[cfg(feature = "live")]
    Watch(watch::WatchArgs),
    /// Print a shell completion script on stdout (bash, zsh, fish, elvish, powershell).
    Completions(assets::CompletionsArgs),
    /// Write one man page per command into DIR (for packagers).
    #[command(hide = true)]
    Manpages(assets::ManpagesArgs),
}

/// The whole command line as a `clap::Command`, for generators (man pages, completions).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
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
    #[cfg(feature = "live")]
    let tui = matches!(&cli.cmd, Cmd::Follow(a) if a.shows_tui());
    #[cfg(not(feature = "live"))]
    let tui = false;
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
        Cmd::List(a) => list::list(a),
        Cmd::Replay(a) => offline::replay(a),
        Cmd::Export(a) => offline::export(a),
        Cmd::Report(a) => offline::report(a),
        #[cfg(feature = "live")]
        Cmd::Doctor(a) => doctor::run(a),
        #[cfg(feature = "live")]
        Cmd::Watch(a) => crate::watch::run(a.launch()),
        Cmd::Completions(a) => assets::completions(a, command()),
        Cmd::Manpages(a) => assets::manpages(a, command()),
        #[cfg(feature = "live")]
        Cmd::Follow(a) => follow::run(a),
    }
}
