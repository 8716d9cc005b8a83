//! `replay`, `export` and `report`: work on a recorded trace, offline, without root.
//! (Being written: issue 5.)

use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// The trace file written by `follow --record`.
    pub file: PathBuf,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The trace file written by `follow --record`.
    pub file: PathBuf,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The trace file written by `follow --record`.
    pub file: PathBuf,
}

pub fn replay(_a: ReplayArgs) -> Result<ExitCode> {
    bail!("replay is not implemented yet")
}

pub fn export(_a: ExportArgs) -> Result<ExitCode> {
    bail!("export is not implemented yet")
}

pub fn report(_a: ReportArgs) -> Result<ExitCode> {
    bail!("report is not implemented yet")
}
