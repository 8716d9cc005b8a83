//! The kernel matrix (issue 17): kvmtrace inside a small hypervisor on Debian 11, 12 and 13's
//! kernels (5.10, 6.1, 6.12) booted under QEMU TCG, and the same cases on the build host as the
//! reference column. One test per column; at the end a table kernel × case.
//!
//! Its own harness (`harness = false` in Cargo.toml), for two reasons: this binary is also the
//! stand-in QEMU packed into each VM (started with a QEMU-like `-name guest=kvm1 …` command
//! line, see `kvmtrace_lab::kernels::standin`), and the table is printed after every column.
//! It prints libtest's lines (`test NAME ... ok`, `test result: …`), so `cargo xtask test` counts
//! it like any other test binary. Arguments: a name filter (`kernel_6_1`), `--exact`, and
//! `--list`; others are ignored.
//!
//! The binary under test is `$KVMTRACE_MATRIX_BIN`, else this workspace's `kvmtrace`. The kernels
//! come from `cargo xtask setup` (`kvmtrace_lab::kernels::fetch`); a missing one fails its test.
//! The host column runs first, then the VMs `$KVMTRACE_MATRIX_JOBS` (default 2) at a time.
//!
//! A cell passes when the verdict's status, stage, hook, reason and device are the expected ones
//! ([`expected`]: the host's, measured), or the documented degraded form. Cells a kernel cannot
//! do yet are listed in [`KNOWN_GAPS`] with the reason: they are reported as `gap` in the table and
//! do not fail the column; one that starts passing is reported as `FIXED` so that its line goes.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Instant,
};

use kvmtrace_lab::kernels::{self, Cell, MatrixRun, KERNELS};

/// The cases, in the order of the table.
const CASES: &[&str] = &[
    "healthy4",
    "healthy6",
    "forward_drop",
    "explain",
    "blackhole",
    "ip_forward_off",
    "qdisc_drop",
    "no_masquerade",
    "doctor",
    "watch",
    "replay",
    "noclsact",
];

/// Cells a kernel cannot do yet: (kernel id, case, what the cell shows today, why). Reported as
/// `gap` and not failed while the cell shows exactly that; anything else fails, and a gap that
/// starts passing shows as `FIXED` so that its line goes. Empty: every kernel of the matrix
/// gives every cell (5.10 infers its drop reasons, 6.1 without clsact is seen through the
/// tracepoints).
const KNOWN_GAPS: &[(&str, &str, &str, &str)] = &[];

/// What a case must give: measured on the host kernel (6.18), every field.
fn expected(case: &str) -> Option<Vec<Cell>> {
    let c = Cell::new;
    Some(match case {
        "healthy4" | "healthy6" | "replay" | "noclsact" => {
            vec![c("delivered", "tap", "-", "-", "vnet0")]
        }
        "forward_drop" | "explain" => vec![c(
            "dropped",
            "netfilter",
            "FORWARD",
            "NETFILTER_DROP",
            "br0",
        )],
        // ip_error frees a packet to a blackhole route without a specific reason.
        "blackhole" => vec![c("dropped", "routing", "-", "NOT_SPECIFIED", "br0")],
        "ip_forward_off" => vec![c("dropped", "routing", "-", "IP_INADDRERRORS", "br0")],
        "qdisc_drop" => vec![c("dropped", "egress", "-", "QDISC_DROP", "up0")],
        // Without MASQUERADE the outside has no route back to 10.77.0.0/24.
        "no_masquerade" => vec![c("no_reply", "egress", "-", "-", "up0")],
        // With ip_forward off (cells: the failing checks).
        "doctor" => vec![
            c("fail", "ip_forward", "-", "-", "-"),
            c("fail", "route", "-", "-", "-"),
        ],
        // `watch` during the FORWARD drop (cells: kvm1's non-zero drop series).
        "watch" => vec![c(
            "counted",
            "netfilter",
            "FORWARD",
            "NETFILTER_DROP",
            "br0",
        )],
        _ => return None,
    })
}

struct Column {
    name: String,
    /// Kernel id, `host` for the reference.
    id: String,
    run: Option<MatrixRun>,
    /// Per case: (text shown in the table, passed).
    cells: Vec<(String, bool)>,
    error: Option<String>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if kernels::standin::is_standin(&args) {
        if let Err(err) = kernels::standin::run(&args) {
            eprintln!("stand-in: {err:#}");
        }
        return ExitCode::FAILURE;
    }
    let exact = args.iter().any(|a| a == "--exact");
    let list = args.iter().any(|a| a == "--list");
    let filters: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with('-')).collect();
    let mut names = vec![("kernel_host".to_owned(), "host".to_owned())];
    for spec in &KERNELS {
        names.push((
            format!("kernel_{}", spec.id.replace('.', "_")),
            spec.id.to_owned(),
        ));
    }
    let total = names.len();
    let selected: Vec<(String, String)> = names
        .into_iter()
        .filter(|(name, _)| {
            filters.is_empty()
                || filters.iter().any(|f| {
                    if exact {
                        name == *f
                    } else {
                        name.contains(f.as_str())
                    }
                })
        })
        .collect();
    if list {
        for (name, _) in &selected {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let filtered_out = total - selected.len();
    let start = Instant::now();
    println!("\nrunning {} tests", selected.len());
    let kvmtrace = std::env::var_os("KVMTRACE_MATRIX_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_kvmtrace")),
        PathBuf::from,
    );
    let standin = std::env::current_exe().expect("current_exe");
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernels");
    // The host column first, alone; then the VMs, `jobs` at a time: each TCG guest keeps one
    // core busy (`-smp 1`), and the machine has two.
    let jobs: usize = std::env::var("KVMTRACE_MATRIX_JOBS")
        .ok()
        .and_then(|j| j.parse().ok())
        .filter(|&j| j > 0)
        .unwrap_or(2);
    let queue = std::sync::Mutex::new(selected.iter().enumerate().collect::<Vec<_>>());
    let done = std::sync::Mutex::new(Vec::new());
    let report = |i: usize, col: Column| {
        let failed: Vec<&str> = CASES
            .iter()
            .zip(&col.cells)
            .filter(|(_, (_, ok))| !ok)
            .map(|(c, _)| *c)
            .collect();
        let ok = col.error.is_none() && failed.is_empty();
        let name = &col.name;
        println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
        if let Some(e) = &col.error {
            println!("    {name}: {e}");
        }
        if !failed.is_empty() {
            println!("    {name}: failed cells: {}", failed.join(", "));
        }
        done.lock().unwrap().push((i, col));
    };
    let next = || {
        let mut q = queue.lock().unwrap();
        (!q.is_empty()).then(|| q.remove(0))
    };
    if let Some(host) = {
        let mut q = queue.lock().unwrap();
        q.iter()
            .position(|(_, (_, id))| id == "host")
            .map(|p| q.remove(p))
    } {
        let (i, (name, id)) = host;
        report(i, run_column(name, id, &kvmtrace, &standin, &work));
    }
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                while let Some((i, (name, id))) = next() {
                    report(i, run_column(name, id, &kvmtrace, &standin, &work));
                }
            });
        }
    });
    let mut columns = done.into_inner().unwrap();
    columns.sort_by_key(|(i, _)| *i);
    let columns: Vec<Column> = columns.into_iter().map(|(_, c)| c).collect();
    print_table(&columns);
    let passed = columns
        .iter()
        .filter(|c| c.error.is_none() && c.cells.iter().all(|(_, ok)| *ok))
        .count();
    let failed = columns.len() - passed;
    println!(
        "\ntest result: {}. {passed} passed; {failed} failed; 0 ignored; 0 measured; \
         {filtered_out} filtered out; finished in {:.2}s\n",
        if failed == 0 { "ok" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run_column(name: &str, id: &str, kvmtrace: &Path, standin: &Path, work: &Path) -> Column {
    let mut col = Column {
        name: name.to_owned(),
        id: id.to_owned(),
        run: None,
        cells: Vec::new(),
        error: None,
    };
    eprintln!("[kernels] {name}: starting");
    let run = if id == "host" {
        kernels::run_on_host(kvmtrace, standin, work)
    } else {
        let spec = KERNELS.iter().find(|s| s.id == id).expect("known kernel");
        match kernels::installed(&kernels::cache_dir(), spec) {
            Some(kernel) => kernels::boot(&kernel, kvmtrace, standin, work),
            None => Err(anyhow::anyhow!(
                "kernel {id} ({}) is not in {}: run `cargo xtask setup`",
                spec.suite,
                kernels::cache_dir().display()
            )),
        }
    };
    let run = match run {
        Ok(run) => run,
        Err(err) => {
            col.error = Some(format!("{err:#}"));
            col.cells = CASES.iter().map(|_| ("ERROR".into(), false)).collect();
            return col;
        }
    };
    eprintln!(
        "[kernels] {name}: {} in {:.1?} (log {})",
        run.kernel.as_deref().unwrap_or("host"),
        run.wall,
        run.serial_log
            .as_ref()
            .map_or(String::new(), |p| p.display().to_string())
    );
    if !run.done {
        col.error = Some(format!("the cases did not finish: {:?}", run.errors));
    } else if !run.errors.is_empty() {
        col.error = Some(format!("errors: {:?}", run.errors));
    }
    for case in CASES {
        let (text, ok) = judge(id, case, &run);
        if !ok {
            if let Some(out) = run.cases.get(*case) {
                eprintln!("[kernels] {name} {case}: rc {:?}", out.rc);
                for l in out.out.iter().chain(&out.err) {
                    eprintln!("[kernels] {name} {case}: {l}");
                }
            }
        }
        col.cells.push((text, ok));
    }
    col.run = Some(run);
    col
}

/// A cell's text and whether it passes.
fn judge(id: &str, case: &str, run: &MatrixRun) -> (String, bool) {
    if id == "host" && case == "noclsact" {
        // Modules on the host cannot be unloaded for one case: not run there.
        return ("n/a".into(), true);
    }
    let gap = KNOWN_GAPS
        .iter()
        .find(|(k, c, _, _)| *k == id && *c == case)
        .map(|(_, _, seen, why)| (*seen, *why));
    let want = expected(case).expect("every case has its expected cells");
    kernels::judge(case, run.cases.get(case), &want, gap)
}

fn print_table(columns: &[Column]) {
    println!("\nkernel matrix (status stage hook reason device):");
    let mut header = format!("| {:<14} |", "case");
    let mut rule = format!("|{:-<16}|", "");
    for c in columns {
        let title = match &c.run {
            Some(r) => format!(
                "{} {} ({:.0}s)",
                c.id,
                r.kernel.as_deref().unwrap_or(""),
                r.wall.as_secs_f64()
            ),
            None => c.id.clone(),
        };
        header.push_str(&format!(" {title} |"));
        rule.push_str("---|");
    }
    println!("{header}\n{rule}");
    for (i, case) in CASES.iter().enumerate() {
        let mut line = format!("| {case:<14} |");
        for c in columns {
            line.push_str(&format!(
                " {} |",
                c.cells.get(i).map_or("", |(t, _)| t.as_str())
            ));
        }
        println!("{line}");
    }
    for c in columns {
        if let Some(r) = &c.run {
            if !r.caps.is_empty() {
                println!("{}: {:?}", c.name, r.caps);
            }
        }
    }
}
