//! `kvmtrace list`: the VMs and taps of this network namespace (or all, with `--all`).

use crate::host::resolve::{self, Roots};
use anyhow::Result;
use std::io::Write as _;
use std::process::ExitCode;

/// `kvmtrace list [--all] [--json]`.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Also VMs whose QEMU runs in another network namespace, with its name.
    #[arg(long)]
    all: bool,
    /// JSON Lines on stdout: one `vm` object per NIC.
    #[arg(long)]
    json: bool,
}

pub(super) fn list(a: ListArgs) -> Result<ExitCode> {
    let ListArgs { all, json } = a;
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
