//! `cargo xtask`: orchestration for kvmtrace (machine setup, the QEMU guest image, and later the
//! test, demo and lab commands). The eBPF objects are not built here: `kvmtrace/build.rs` builds
//! them with aya-build.
//!
//! Adding a command is one [`Command`] variant plus one arm in [`run`].

mod bench;
mod demo;
mod deps;
mod dist;
mod scale;
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
    /// The checks `test` starts with: format, clippy (userspace and the eBPF crate), unused
    /// workspace dependencies, and the offline half built without aya.
    Lint,
    /// Set up, build a lab, boot a real guest, break its path, follow it, repair it, tear down.
    Demo,
    /// Measure what following costs: packet rate with kvmtrace off and on, interleaved.
    Bench(bench::BenchArgs),
    /// How `watch` and `follow` grow with the VM NICs of a host: ready, RSS, scrape, cost.
    Scale(scale::ScaleArgs),
    /// Follow a VM under steady load for minutes: RSS and kernel maps must stay flat.
    Soak(soak::SoakArgs),
    /// Build the static (musl) release binary, eBPF object inside, and print its path.
    Static,
    /// Build the static binary, the Debian package (cargo-deb) and the RPM (cargo-generate-rpm)
    /// around it; print the three paths.
    Dist,
    /// Re-record the model's fixtures (kvmtrace/src/model/fixtures) from live runs in a lab.
    Fixtures,
    /// Run the kernel matrix alone (docs/kernels.md): Debian's 5.10, 6.1 and 6.12 under QEMU
    /// and the host kernel, with a given kvmtrace binary.
    Kernels(KernelsArgs),
}

#[derive(Args)]
struct KernelsArgs {
    /// The kvmtrace binary to test (e.g. a static release build) [default: the workspace's].
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Only the columns whose test name contains this (`kernel_6_1`, `kernel_host`, …).
    filter: Option<String>,
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
        Command::Lint => lint().map(|()| ExitCode::SUCCESS),
        Command::Demo => demo::run(),
        Command::Bench(args) => bench::run(&args),
        Command::Soak(args) => soak::run(&args),
        Command::Scale(args) => scale::run_scale(&args),
        Command::Fixtures => fixtures(),
        Command::Dist => {
            let d = dist::dist(&dist::workspace())?;
            println!("{}", d.binary.display());
            println!("{}", d.deb.display());
            println!("{}", d.rpm.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Static => {
            println!("{}", dist::static_binary(&dist::workspace())?.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Kernels(args) => kernels(&args),
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

/// Format, clippy over the userspace crates and over the eBPF crate (for its own target, with
/// the nightly that builds it), unused workspace dependencies, the offline half.
fn lint() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ws = dist::workspace();
    deps::check(&ws)?;
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
    // The eBPF crate: its nightly (not the stable that runs this), its target, its own target
    // directory (so that it never invalidates what kvmtrace/build.rs built).
    let mut ebpf = std::process::Command::new("rustup");
    ebpf.current_dir(ws.join("kvmtrace-ebpf"))
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env("CARGO_TARGET_DIR", ws.join("target/ebpf-clippy"))
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]);
    step("clippy (eBPF)", &mut ebpf)?;
    eprintln!("[test] the offline half: kvmtrace --no-default-features, no aya in its tree");
    deps::check_offline(&cargo, &ws)
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
    lint()?;
    // A short smoke of the benchmark: it must run end to end; its numbers are not judged here.
    // (Before the tests, so that the test runner's summary closes the output.)
    eprintln!("[test] benchmark smoke (numbers not judged)");
    bench::run(&bench::BenchArgs::smoke())?;
    let mut t = std::process::Command::new(&cargo);
    // --no-fail-fast: every test binary runs even after one fails, so the totals are complete.
    t.args([
        "test",
        "--workspace",
        "--exclude",
        "kvmtrace-ebpf",
        "--no-fail-fast",
    ]);
    if !args.rest.is_empty() {
        t.arg("--").args(&args.rest);
    }
    // The kernel matrix runs the shipped binary: the static musl build (issue 17: the tested
    // binary is the one that goes onto hosts).
    eprintln!("[test] static binary for the kernel matrix");
    t.env(
        "KVMTRACE_MATRIX_BIN",
        dist::static_binary(&dist::workspace())?,
    );
    eprintln!("[test] tests: {t:?}");
    run_tests_and_total(&mut t)
}

/// Runs `cargo test` with its output passing through, adds up the per-binary summaries so the
/// run closes on one line with the totals (the last binary alone may hold no test), and fails
/// when cargo does.
fn run_tests_and_total(t: &mut std::process::Command) -> Result<ExitCode> {
    let mut child = t.stdout(std::process::Stdio::piped()).spawn()?;
    let out = child.stdout.take().expect("piped stdout");
    let mut total = Totals::default();
    for line in std::io::BufRead::lines(std::io::BufReader::new(out)) {
        let line = line?;
        println!("{line}");
        if let Some(t) = Totals::parse(&line) {
            total.add(t);
        }
    }
    let status = child.wait()?;
    println!(
        "tests: {} passed, {} failed, {} skipped",
        total.passed, total.failed, total.skipped
    );
    if !status.success() {
        if total.failed == 0 {
            // A binary that crashed or did not build prints no `test result:` line.
            println!("tests: cargo failed although no test reported a failure (see above)");
        }
        anyhow::bail!("tests failed ({status})");
    }
    Ok(ExitCode::SUCCESS)
}

/// Test counts, from one `test result:` line or summed over many.
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
struct Totals {
    passed: u64,
    failed: u64,
    /// Ignored tests: they did not run.
    skipped: u64,
}

impl Totals {
    /// Reads libtest's summary line, e.g.
    /// `test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 2 filtered out; finished in 0.01s`.
    /// Any other line is `None`.
    fn parse(line: &str) -> Option<Totals> {
        let rest = line.trim().strip_prefix("test result: ")?;
        let (_, counts) = rest.split_once(". ")?;
        let mut t = Totals::default();
        let mut seen = false;
        for part in counts.split(';') {
            let Some((n, word)) = part.trim().split_once(' ') else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else {
                continue;
            };
            match word {
                "passed" => t.passed = n,
                "failed" => t.failed = n,
                "ignored" => t.skipped = n,
                _ => continue,
            }
            seen = true;
        }
        seen.then_some(t)
    }

    fn add(&mut self, o: Totals) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.skipped += o.skipped;
    }
}

/// Re-records the model's fixtures (kvmtrace/src/model/fixtures) from live runs in a lab: the
/// ignored test `record_fixtures` in kvmtrace/tests/follow.rs, run alone.
fn fixtures() -> Result<ExitCode> {
    let code = setup::run(&setup::SetupArgs::default())?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    step(
        "record fixtures",
        std::process::Command::new(&cargo).args([
            "test",
            "-p",
            "kvmtrace",
            "--test",
            "follow",
            "--",
            "--ignored",
            "--exact",
            "record_fixtures",
        ]),
    )?;
    eprintln!("[fixtures] written to kvmtrace/src/model/fixtures; review with `git diff`");
    Ok(ExitCode::SUCCESS)
}

/// The kernel matrix alone: `cargo test -p kvmtrace --test kernels`, the binary under test in
/// `KVMTRACE_MATRIX_BIN`.
fn kernels(args: &KernelsArgs) -> Result<ExitCode> {
    let code = setup::run(&setup::SetupArgs::default())?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut t = std::process::Command::new(&cargo);
    t.args(["test", "-p", "kvmtrace", "--test", "kernels"]);
    if let Some(bin) = &args.binary {
        let bin =
            std::fs::canonicalize(bin).map_err(|e| anyhow::anyhow!("{}: {e}", bin.display()))?;
        t.env("KVMTRACE_MATRIX_BIN", bin);
    }
    if let Some(f) = &args.filter {
        t.arg("--").arg(f);
    }
    eprintln!("[kernels] {t:?}");
    run_tests_and_total(&mut t)
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

#[cfg(test)]
mod tests {
    use super::Totals;

    fn t(passed: u64, failed: u64, skipped: u64) -> Option<Totals> {
        Some(Totals {
            passed,
            failed,
            skipped,
        })
    }

    #[test]
    fn reads_a_passing_binary() {
        let l = "test result: ok. 12 passed; 0 failed; 3 ignored; 0 measured; 0 filtered out; finished in 4.02s";
        assert_eq!(Totals::parse(l), t(12, 0, 3));
    }

    #[test]
    fn reads_a_failing_binary() {
        let l = "test result: FAILED. 7 passed; 2 failed; 1 ignored; 0 measured; 5 filtered out; finished in 30.10s";
        assert_eq!(Totals::parse(l), t(7, 2, 1));
    }

    #[test]
    fn reads_an_empty_binary_and_ignores_other_lines() {
        let l = "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s";
        assert_eq!(Totals::parse(l), t(0, 0, 0));
        for other in [
            "test foo ... ok",
            "running 3 tests",
            "failures:",
            "     Running tests/cli.rs (target/debug/deps/cli-0123)",
            "",
        ] {
            assert_eq!(Totals::parse(other), None, "{other}");
        }
    }

    #[test]
    fn sums_over_binaries() {
        let mut sum = Totals::default();
        for l in [
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: FAILED. 4 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 2.00s",
            "test result: ok. 0 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        ] {
            sum.add(Totals::parse(l).unwrap());
        }
        assert_eq!(Some(sum), t(7, 1, 3));
    }
}
