//! `cargo xtask scale`: how `kvmtrace watch` and `follow` grow with the number of VM NICs on a
//! host (issue 20, "Dense hosts"). Measured, never asserted.
//!
//! For each count N of `--nics`: a network namespace of its own (`kvmscale-<pid>-<N>`) with N
//! taps (`vnet0`…) spread over bridges of at most 1 000 ports (the kernel allows 1 024,
//! `BR_MAX_PORTS` in net/bridge/br_private.h), each tap up and nobody holding it (a bare tap:
//! `watch` watches it by name, as a VM whose QEMU is not visible). In it, a release build of
//! `kvmtrace watch --no-record` is started; measured:
//! - **ready**: the `ready in N ms` of its start line (every tap attached);
//! - **watched / not watched**: `kvmtrace_vms` and the `kvmtrace_vm_unwatched` series;
//! - **RSS**: `VmRSS` and `VmHWM` of the process after the first scrape;
//! - **scrape**: the time and size of a `/metrics` GET (the median of 3, after the first
//!   update has created every tap's series);
//! - **stop**: SIGTERM to exit (every link released);
//! - with `--bench`: the per-packet cost of a watched VM, `cargo xtask bench --cases watch`
//!   with N more taps in the bench's hypervisor namespace (the watched flood's ratio beside
//!   the host's untraced rate).
//!
//! Then `follow`'s ready (`follow vnet0 … --duration 1`, the `ready in` of its start line) with
//! `--follow-taps` taps in a namespace. Every namespace is deleted when its measurement ends,
//! on error too (a guard), and namespaces `kvmscale-<pid>-*` left by a run that was killed are
//! deleted at the next start. Results: `target/bench/scale.json` and a table on stdout.

use crate::bench::{add_taps, build_release, target_dir};
use anyhow::{anyhow, bail, Context as _, Result};
use clap::Args;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// NIC counts to measure `watch` at, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "300,1000,2000")]
    nics: Vec<usize>,
    /// Taps on the host while `follow`'s ready is measured (0: not measured).
    #[arg(long, default_value_t = 1000)]
    follow_taps: usize,
    /// Also measure the per-packet cost of a watched VM at each count (`cargo xtask bench
    /// --cases watch` with that many more taps; ~1 minute each).
    #[arg(long)]
    bench: bool,
}

/// A namespace of this run, deleted on drop (with every device in it).
pub struct Ns {
    pub name: String,
}

impl Ns {
    /// `taps` bare taps `vnet0`… on bridges `sbr0`… of at most [`crate::bench::PORTS_PER_BRIDGE`] ports,
    /// each up, in a new namespace `name`.
    pub fn with_taps(name: &str, taps: usize) -> Result<Ns> {
        run(&["ip", "netns", "add", name])?;
        let ns = Ns { name: name.into() };
        run(&["ip", "-n", name, "link", "set", "lo", "up"])?;
        add_taps(name, "sbr", 0, taps)?;
        Ok(ns)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(args: &[&str]) -> Result<()> {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .with_context(|| args.join(" "))?;
    if !st.success() {
        bail!("{} failed: {st}", args.join(" "));
    }
    Ok(())
}

/// Deletes namespaces `kvmscale-<pid>-*` whose process is gone (a killed run's).
fn sweep() {
    let Ok(d) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in d.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix("kvmscale-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("[scale] deleting {name}, left by a run that was killed");
            drop(Ns { name });
        }
    }
}

/// A running kvmtrace (`ip netns exec` execs it in place, so the child's pid is kvmtrace's).
struct Running {
    child: Child,
    ready_ms: u64,
    /// The `listening on` address (watch).
    port: Option<u16>,
    /// The start line.
    line: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start(bin: &Path, ns: &str, args: &[&str]) -> Result<Running> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let err = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(err).lines();
    let mut r = Running {
        child,
        ready_ms: 0,
        port: None,
        line: String::new(),
    };
    let mut said = 0usize;
    for line in lines.by_ref() {
        let line = line?;
        if let Some(i) = line.find("ready in ") {
            r.ready_ms = line[i + 9..]
                .split(' ')
                .next()
                .unwrap_or("0")
                .parse()
                .unwrap_or(0);
            r.port = line
                .split("http://127.0.0.1:")
                .nth(1)
                .and_then(|s| s.split('/').next())
                .and_then(|p| p.parse().ok());
            r.line = line;
            break;
        }
        if line.contains("error") {
            bail!("kvmtrace: {line}");
        }
        said += 1;
    }
    if r.line.is_empty() {
        bail!("kvmtrace exited before it was ready ({said} lines on stderr)");
    }
    // Keeps reading stderr (a full pipe would stall kvmtrace); counts the warning lines.
    std::thread::spawn(move || for _ in lines {});
    Ok(r)
}

fn stop(mut r: Running) -> Result<f64> {
    let t = Instant::now();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(r.child.id() as i32, libc::SIGTERM) };
    let st = r.child.wait()?;
    if !st.success() {
        bail!("kvmtrace exited with {st}");
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// GET /metrics from 127.0.0.1:`port` in namespace `ns`: (ms, body).
fn scrape(ns: &str, port: u16) -> Result<(f64, String)> {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<(f64, String)> {
            // SAFETY: setns(2) on this thread only, with an fd we own.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            let t = Instant::now();
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
            c.set_read_timeout(Some(Duration::from_secs(30)))?;
            write!(
                c,
                "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )?;
            let mut text = String::new();
            c.read_to_string(&mut text)?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            let body = text
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .ok_or_else(|| anyhow!("no HTTP body"))?;
            Ok((ms, body))
        })
        .join()
        .map_err(|_| anyhow!("scrape thread panicked"))?
    })
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `watch` over `nics` bare taps.
fn measure_watch(bin: &Path, nics: usize) -> Result<Value> {
    let ns = Ns::with_taps(&format!("kvmscale-{}-{nics}", std::process::id()), nics)?;
    eprintln!("[scale] {nics} taps in {}; starting watch", ns.name);
    let w = start(
        bin,
        &ns.name,
        &["watch", "--listen", "127.0.0.1:0", "--no-record"],
    )?;
    let port = w.port.ok_or_else(|| anyhow!("no port in: {}", w.line))?;
    let pid = w.child.id();
    // The first update (1 s after ready) creates every tap's series.
    std::thread::sleep(Duration::from_millis(2500));
    let mut times = Vec::new();
    let mut body = String::new();
    for _ in 0..3 {
        let (ms, b) = scrape(&ns.name, port)?;
        times.push(ms);
        body = b;
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let rss = status_kib(pid, "VmRSS:");
    let hwm = status_kib(pid, "VmHWM:");
    let watched = sample(&body, "kvmtrace_vms").unwrap_or(-1.0);
    let unwatched = body
        .lines()
        .filter(|l| l.starts_with("kvmtrace_vm_unwatched{"))
        .count();
    let tap_series = body
        .lines()
        .filter(|l| l.starts_with("kvmtrace_tap_packets_total{") && l.contains("from_vm"))
        .count();
    let ready_ms = w.ready_ms;
    let stop_ms = stop(w)?;
    drop(ns);
    let v = json!({
        "nics": nics,
        "ready_ms": ready_ms,
        "watched": watched,
        "unwatched": unwatched,
        "tap_series_from_vm": tap_series,
        "rss_kib": rss,
        "peak_rss_kib": hwm,
        "scrape_ms": times,
        "scrape_bytes": body.len(),
        "stop_ms": stop_ms,
    });
    eprintln!("[scale] {v}");
    Ok(v)
}

/// `follow`'s ready with `taps` taps in its namespace, beside one with a single tap: 5 runs
/// each, alternating, so that the machine's load moves both alike.
fn measure_follow(bin: &Path, taps: usize) -> Result<Value> {
    let pid = std::process::id();
    let many = Ns::with_taps(&format!("kvmscale-{pid}-follow"), taps)?;
    let one = Ns::with_taps(&format!("kvmscale-{pid}-follow1"), 1)?;
    let (mut ready_many, mut ready_one) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        for (ns, out) in [(&one, &mut ready_one), (&many, &mut ready_many)] {
            let mut f = start(
                bin,
                &ns.name,
                &[
                    "follow",
                    "vnet0",
                    "10.99.0.1",
                    "--json",
                    "--duration",
                    "0.3",
                ],
            )?;
            out.push(f.ready_ms);
            let _ = f.child.wait();
        }
    }
    let v = json!({ "taps": taps, "ready_ms": ready_many, "ready_ms_one_tap": ready_one });
    eprintln!("[scale] follow: {v}");
    Ok(v)
}

/// The bench's `watch` case with `extra` more taps: (median ratio, min, max).
fn bench_watch(extra: usize) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args([
            "bench",
            "--cases",
            "watch",
            "--extra-taps",
            &extra.to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("the bench with {extra} more taps failed");
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let row = text
        .lines()
        .find(|l| l.starts_with("| watch |"))
        .unwrap_or_default()
        .to_string();
    Ok(json!({ "extra_taps": extra, "row": row, "out": text }))
}

pub fn run_scale(a: &ScaleArgs) -> Result<ExitCode> {
    sweep();
    let bin = build_release()?;
    let mut watch = Vec::new();
    for &n in &a.nics {
        let mut v = measure_watch(&bin, n)?;
        if a.bench {
            v["bench"] = bench_watch(n)?;
        }
        watch.push(v);
    }
    let follow = if a.follow_taps > 0 {
        Some(measure_follow(&bin, a.follow_taps)?)
    } else {
        None
    };
    let out = json!({
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "watch": watch,
        "follow": follow,
    });
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let path: PathBuf = dir.join("scale.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out)?)?;
    println!("| NICs | watched | not watched | ready | RSS (peak) | scrape (median of 3) | scrape size | stop | bench `watch` ratio |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for v in &watch {
        let t = v["scrape_ms"].as_array().cloned().unwrap_or_default();
        let med = t.get(1).and_then(Value::as_f64).unwrap_or(0.0);
        println!(
            "| {} | {} | {} | {} ms | {:.1} MiB ({:.1}) | {med:.0} ms | {} KB | {:.0} ms | {} |",
            v["nics"],
            v["watched"],
            v["unwatched"],
            v["ready_ms"],
            v["rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            v["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
            v["scrape_bytes"].as_u64().unwrap_or(0) / 1000,
            v["stop_ms"].as_f64().unwrap_or(0.0),
            v["bench"]["row"].as_str().unwrap_or("—"),
        );
    }
    if let Some(f) = &follow {
        let med = |k: &str| {
            let mut v: Vec<u64> = f[k]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            v.sort();
            v.get(v.len() / 2).copied().unwrap_or(0)
        };
        println!(
            "follow ready with {} taps: median {} ms {} (with 1 tap: median {} ms {})",
            f["taps"],
            med("ready_ms"),
            f["ready_ms"],
            med("ready_ms_one_tap"),
            f["ready_ms_one_tap"]
        );
    }
    eprintln!("[scale] results: {}", path.display());
    Ok(ExitCode::SUCCESS)
}
