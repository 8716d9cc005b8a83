//! `cargo xtask`: orchestration for kvmtrace (machine setup, the QEMU guest image, and later the
//! test, demo and lab commands). The eBPF objects are not built here: `kvmtrace/build.rs` builds
//! them with aya-build.
//!
//! Adding a command is one [`Command`] variant plus one arm in [`run`].

mod setup;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "kvmtrace development tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install everything building and testing kvmtrace needs (as root; idempotent).
    Setup(setup::SetupArgs),
    /// Build the QEMU test guest (kernel + initramfs) and print their paths.
    Guest(GuestArgs),
}

#[derive(Args)]
struct GuestArgs {
    /// Cache directory [default: $KVMTRACE_GUEST_DIR or <workspace>/target/guest].
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Setup(args) => setup::run(&args),
        Command::Guest(args) => guest(&args),
    }
}

fn guest(args: &GuestArgs) -> Result<ExitCode> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(kvmtrace_lab::guest::default_cache_dir);
    let start = std::time::Instant::now();
    let image = kvmtrace_lab::guest::build_image(&dir)?;
    eprintln!("[guest] image ready in {:.1?}", start.elapsed());
    println!("kernel {}", image.kernel.display());
    println!("initrd {}", image.initrd.display());
    Ok(ExitCode::SUCCESS)
}
