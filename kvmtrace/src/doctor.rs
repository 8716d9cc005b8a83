//! `kvmtrace doctor <VM>`: a static check of everything along the VM's path. (Being written:
//! issue 3.)

use anyhow::{bail, Result};
use clap::Args;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// The VM: its name, its tap device, or the guest's MAC.
    pub vm: String,
}

pub fn run(_a: DoctorArgs) -> Result<ExitCode> {
    bail!("doctor is not implemented yet")
}
