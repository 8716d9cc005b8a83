//! `kvmtrace doctor VM [DEST]`: its flags, checked once, and its exit code (1 when a check
//! fails); the checks and their rendering are `crate::doctor`'s.

use crate::doctor::{checks_for_dest, tally, write_json, write_report};
use crate::error::{EnvError, Usage};
use crate::host::resolve::{self, Roots};
use crate::model::dest::parse_dest;
use anyhow::Result;
use std::io::{self, Write as _};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// The VM: its name, Proxmox VMID, UUID, its tap device, or the guest's MAC.
    pub vm: String,
    /// A destination the VM should reach (IPv4 or IPv6 address or prefix): the route to it
    /// is looked up, and the firewall is judged for packets to it.
    pub dest: Option<String>,
    /// Which NIC of a VM with several: its number, its tap or its MAC (as `follow --nic`).
    #[arg(long, value_name = "N|TAP|MAC")]
    pub nic: Option<String>,
    /// JSON Lines on stdout: one `check` object per check, then a `summary`.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn run(a: DoctorArgs) -> Result<ExitCode> {
    // A bad argument is a usage error (exit 2) whoever runs it.
    let dest = a
        .dest
        .as_deref()
        .map(parse_dest)
        .transpose()
        .map_err(Usage)?;
    crate::capture::privileges::require("kvmtrace doctor", &crate::capture::privileges::DOCTOR)?;
    if !std::path::Path::new("/proc/sys/net/ipv4").is_dir() {
        return Err(EnvError(
            "/proc/sys/net/ipv4 is missing: doctor needs procfs (and sysfs at /sys) mounted".into(),
        )
        .into());
    }
    let info = resolve::resolve(&a.vm, a.nic.as_deref(), &Roots::system())?;
    let checks = checks_for_dest(&info, dest);
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    if a.json {
        write_json(&mut out, &info, &checks)?;
    } else {
        write_report(&mut out, &info, &checks)?;
    }
    out.flush()?;
    Ok(if tally(&checks).fail > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
