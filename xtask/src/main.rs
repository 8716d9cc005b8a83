//! `cargo xtask`: orchestration for kvmtrace (machine setup, the QEMU guest image, and later the
//! test, demo and lab commands). The eBPF objects are not built here: `kvmtrace/build.rs` builds
//! them with aya-build.
//!
//! Adding a command is one [`Command`] variant plus one arm in [`run`].

mod bench;
mod demo;
mod setup;
mod soak;

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
    /// Set up the machine, then run the whole test suite (unit, lab and QEMU tests).
    Test(TestArgs),
    /// Set up, build a lab, boot a real guest, break its path, follow it, repair it, tear down.
    Demo,
    /// Measure what following costs: packet rate with kvmtrace off and on, interleaved.
    Bench(bench::BenchArgs),
    /// Follow a VM under steady load for minutes: RSS and kernel maps must stay flat.
    Soak(soak::SoakArgs),
}

#[derive(Args)]
struct TestArgs {
    /// Extra arguments for `cargo test` (after `--`, e.g. a test name filter).
    #[arg(trailing_var_arg = true)]
    rest: Vec<String>,
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
        Command::Test(args) => test(&args),
        Command::Demo => demo::run(),
        Command::Bench(args) => bench::run(&args),
        Command::Soak(args) => soak::run(&args),
    }
}

/// Runs a command with visible progress; fails on a non-zero exit.
fn step(what: &str, cmd: &mut std::process::Command) -> Result<()> {
    eprintln!("[test] {what}: {cmd:?}");
    let status = cmd.status()?;
    if !status.success() {
        anyhow::bail!("{what} failed ({status})");
    }
    Ok(())
}

fn test(args: &TestArgs) -> Result<ExitCode> {
    let code = setup::run(&setup::SetupArgs::default())?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The QEMU image is built once up front so that its progress is visible and the test
    // that boots it does not spend its time on it.
    guest(&GuestArgs { dir: None })?;
    step(
        "format",
        std::process::Command::new(&cargo).args(["fmt", "--all", "--", "--check"]),
    )?;
    step(
        "clippy",
        std::process::Command::new(&cargo).args([
            "clippy",
            "--workspace",
            // The eBPF crate only builds for the bpf target (kvmtrace/build.rs does that);
            // on the host, workspace feature unification would link std into it.
            "--exclude",
            "kvmtrace-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // A short smoke of the benchmark: it must run end to end; its numbers are not judged here.
    // (Before the tests, so that the test runner's summary closes the output.)
    eprintln!("[test] benchmark smoke (numbers not judged)");
    bench::run(&bench::BenchArgs::smoke())?;
    let mut t = std::process::Command::new(&cargo);
    t.args(["test", "--workspace", "--exclude", "kvmtrace-ebpf"]);
    if !args.rest.is_empty() {
        t.arg("--").args(&args.rest);
    }
    eprintln!("[test] tests: {t:?}");
    // The runner's output passes through; its per-binary summaries are added up so that the
    // run closes on one line with the totals (the last binary alone may hold no test).
    let mut child = t.stdout(std::process::Stdio::piped()).spawn()?;
    let out = child.stdout.take().expect("piped stdout");
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in std::io::BufRead::lines(std::io::BufReader::new(out)) {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |word: &str| {
                rest.split(';')
                    .find_map(|p| {
                        p.trim().strip_suffix(word).map(|n| {
                            n.trim()
                                .trim_start_matches("ok.")
                                .trim_start_matches("FAILED.")
                                .trim()
                                .to_string()
                        })
                    })
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            passed += num("passed");
            failed += num("failed");
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        anyhow::bail!("tests failed ({status})");
    }
    Ok(ExitCode::SUCCESS)
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
