//! `cargo xtask bench`: what following costs the host, measured, never asserted.
//!
//! Builds the lab (VM tap → bridge → FORWARD → MASQUERADE → uplink → outside), floods small
//! UDP frames from a fake VM through it, and measures the packet rate the outside receives with
//! kvmtrace off and on, interleaved (off, case, off, case, …) so that drift cancels. Cases:
//! - `unrelated`: kvmtrace follows another VM (a second tap) to the same destination while
//!   this traffic flows (the worst unrelated case: every packet passes the cheap address test);
//! - `unrelated-dest`: the same, following another destination (the common case);
//! - `followed`: kvmtrace follows the flooding flow itself (the per-flow budget turns it into
//!   counters after `--budget` events);
//! - `other-proto`: kvmtrace follows the flooding VM's ICMP while its UDP floods;
//! - `unrelated-all`: `unrelated` with `--hooks all` (the global hook set), in the same run;
//! - `watch`: `kvmtrace watch` (every VM, counters only) while the flood flows.
//! - `watch-other`: `kvmtrace watch` over the other VM only (pinging): the flood is forwarding
//!   that no watched VM sends, as a host's non-VM traffic is.
//!
//! In every case but `followed` the followed VM pings its destination 10 times a second
//! throughout (off and on), so every hook is attached and busy with its traffic. Off and on
//! alternate which runs first; kvmtrace's output is read while measuring. The profiling pass
//! also gives program runs per flooded packet.
//!
//! Also reported: per-program ns per run (`kernel.bpf_stats_enabled`), time to ready, peak RSS,
//! events per second delivered and lost. Results go to `target/bench/results.json` and a table
//! on stdout; docs/benchmarks.md keeps the latest table.

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Args;
use kvmtrace_lab::lab::{Lab, LabOptions};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write as _};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Seconds of flood per measurement.
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Rounds (each measures every case once, with an untraced run before each).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// A quick run for CI: one round of one second (numbers are not meaningful).
    #[arg(long)]
    smoke: bool,
    /// Only these cases, comma-separated (default: every case).
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// This many more bare taps in the hypervisor namespace, on bridges of their own (at most
    /// 1 000 ports each): `watch` then watches them too (`cargo xtask scale --bench`).
    #[arg(long, default_value_t = 0)]
    extra_taps: usize,
}

impl BenchArgs {
    /// The quick run CI does.
    pub fn smoke() -> Self {
        BenchArgs {
            seconds: 1.0,
            rounds: 1,
            smoke: true,
            cases: Vec::new(),
            extra_taps: 0,
        }
    }
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

const CASES: [&str; 7] = [
    "unrelated",
    "unrelated-dest",
    "followed",
    "other-proto",
    "unrelated-all",
    "watch",
    "watch-other",
];

/// Opens the lab's tap inside its namespace (a thread that setns()-es) and returns the fd.
pub fn open_tap(netns: &str, tap: &str) -> Result<OwnedFd> {
    let ns = std::fs::File::open(format!("/run/netns/{netns}"))?;
    let tap = tap.to_string();
    std::thread::spawn(move || -> Result<OwnedFd> {
        // SAFETY: setns on this thread only; the fd is valid.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            bail!("open /dev/net/tun: {}", std::io::Error::last_os_error());
        }
        // SAFETY: fd just opened.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut ifr = [0u8; 40];
        ifr[..tap.len()].copy_from_slice(tap.as_bytes());
        let flags: u16 = 0x0002 | 0x1000; // IFF_TAP | IFF_NO_PI
        ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: TUNSETIFF with a 40-byte ifreq.
        if unsafe { libc::ioctl(owned.as_raw_fd(), 0x400454ca, ifr.as_mut_ptr()) } < 0 {
            bail!("TUNSETIFF {tap}: {}", std::io::Error::last_os_error());
        }
        Ok(owned)
    })
    .join()
    .map_err(|_| anyhow!("tap thread panicked"))?
}

fn csum(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in data.chunks(2) {
        s += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// A 64-byte Ethernet frame: IPv4/UDP from the guest to the destination, port 9 (discard).
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
) -> Vec<u8> {
    let payload = [0u8; 18];
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut udp = Vec::new();
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&9u16.to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]); // checksum optional for IPv4 UDP
    udp.extend_from_slice(&payload);
    f.extend_from_slice(&udp);
    f
}

/// An ICMP echo request frame (IPv4, 56 bytes of zero payload).
fn echo_frame(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x4b, 0x42];
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(&[0u8; 56]);
    let c = csum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&seq.to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::with_capacity(14 + ip.len() + icmp.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// The followed VM's own traffic: an echo request every 100 ms from `fd` until stopped, so
/// that every hook kvmtrace uses is attached and busy with it during a measurement.
struct Pinger {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pinger {
    fn start(fd: std::os::fd::RawFd, frames: impl Fn(u16) -> Vec<u8> + Send + 'static) -> Pinger {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seq = 0u16;
            while !s2.load(Ordering::Relaxed) {
                let f = frames(seq);
                // SAFETY: writing one frame to a tap fd the caller keeps open meanwhile.
                unsafe { libc::write(fd, f.as_ptr().cast(), f.len()) };
                seq = seq.wrapping_add(1);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Pinger {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn mac_of(lab: &Lab, dev: &str) -> Result<[u8; 6]> {
    let s = lab.hv_run(&["cat", &format!("/sys/class/net/{dev}/address")]);
    let mut m = [0u8; 6];
    for (o, p) in m.iter_mut().zip(s.trim().split(':')) {
        *o = u8::from_str_radix(p, 16)?;
    }
    Ok(m)
}

fn rx_packets(lab: &Lab) -> Result<u64> {
    let s = lab.outside_run(&["cat", "/sys/class/net/eth0/statistics/rx_packets"]);
    Ok(s.trim().parse()?)
}

/// Floods for `secs` and returns packets per second received by the outside.
fn flood(lab: &Lab, fd: &OwnedFd, frame: &[u8], secs: f64) -> Result<f64> {
    let before = rx_packets(lab)?;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let raw = fd.as_raw_fd();
    let frame = frame.to_vec();
    let s2 = stop.clone();
    let writer = std::thread::spawn(move || {
        while !s2.load(Ordering::Relaxed) {
            for _ in 0..256 {
                // SAFETY: writing a frame to the tap fd owned by the caller for this duration.
                unsafe { libc::write(raw, frame.as_ptr().cast(), frame.len()) };
            }
        }
    });
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    let elapsed = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(100));
    Ok((rx_packets(lab)? - before) as f64 / elapsed)
}

struct Tracer {
    child: std::process::Child,
    ready_ms: u64,
    /// Reads kvmtrace's stdout all along (a full pipe would stall it while measuring) and
    /// keeps the stats line.
    stdout: std::thread::JoinHandle<Option<Value>>,
}

fn start_tracer(bin: &PathBuf, lab: &Lab, args: &[&str]) -> Result<Tracer> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.hv])
        .arg(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Stdout is read from the start: `watch` writes a line per tap before it is ready, and
    // thousands of taps (`--extra-taps`) would fill the pipe and stall it.
    let out = child.stdout.take().expect("stdout");
    let stdout = std::thread::spawn(move || {
        BufReader::new(out)
            .lines()
            .map_while(|l| l.ok())
            .filter(|l| l.contains("\"type\":\"stats\""))
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .last()
    });
    let err = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(err).lines();
    let mut ready_ms = 0;
    for line in lines.by_ref() {
        let line = line?;
        if let Some(i) = line.find("ready in ") {
            ready_ms = line[i + 9..]
                .split(' ')
                .next()
                .unwrap_or("0")
                .parse()
                .unwrap_or(0);
            break;
        }
        if line.contains("error") {
            bail!("kvmtrace: {line}");
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok(Tracer {
        child,
        ready_ms,
        stdout,
    })
}

fn stop_tracer(mut t: Tracer) -> Result<Value> {
    // SAFETY: signal our child (ip netns exec execs kvmtrace in place).
    unsafe { libc::kill(t.child.id() as i32, libc::SIGTERM) };
    t.child.wait()?;
    let stats = t
        .stdout
        .join()
        .map_err(|_| anyhow!("stdout reader panicked"))?
        .ok_or_else(|| anyhow!("no stats line from kvmtrace"))?;
    Ok(json!({ "ready_ms": t.ready_ms, "stats": stats }))
}

/// The outside discards UDP to port 9 silently (no ICMP port-unreachable storm back), of the
/// nftables `family`: "ip" (IPv4) or "inet" (both versions).
pub fn discard_udp9(lab: &Lab, family: &str) {
    lab.outside_run(&["nft", "add", "table", family, "sink"]);
    lab.outside_run(&[
        "nft",
        "add",
        "chain",
        family,
        "sink",
        "in",
        "{ type filter hook input priority 0 ; }",
    ]);
    lab.outside_run(&[
        "nft", "add", "rule", family, "sink", "in", "udp", "dport", "9", "drop",
    ]);
}

/// The second, fake, VM on vnet1 (bench's unrelated cases, soak's flood).
pub const VM2_IP: [u8; 4] = [10, 77, 0, 3];
pub const VM2_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x4b, 0x54, 0x03];

/// Tells the hypervisor the second VM's MAC for its address `ip` on br0 (a permanent
/// neighbour entry): the fake VM answers no ARP or NDP.
pub fn pin_vm2_neighbour(lab: &Lab, ip: IpAddr) {
    let mac = VM2_MAC.map(|b| format!("{b:02x}")).join(":");
    lab.hv_run(&[
        "ip",
        "neigh",
        "replace",
        &ip.to_string(),
        "lladdr",
        &mac,
        "dev",
        "br0",
    ]);
}

/// kvmtrace's arguments for a case.
fn case_args<'a>(case: &str, dest: &'a str) -> Vec<&'a str> {
    match case {
        "unrelated" => vec!["follow", "vnet1", dest, "--json"],
        "unrelated-all" => vec!["follow", "vnet1", dest, "--json", "--hooks", "all"],
        "unrelated-dest" => vec!["follow", "vnet1", OTHER_DEST, "--json"],
        "followed" => vec!["follow", "vnet0", dest, "--json", "--proto", "udp"],
        "watch" => watch_args(),
        "watch-other" => vec![
            "watch",
            "--vm",
            "vnet1",
            "--listen",
            "127.0.0.1:0",
            "--no-record",
        ],
        _ => vec!["follow", "vnet0", dest, "--json", "--proto", "icmp"],
    }
}

/// `watch`: `kvmtrace watch` over every tap of the lab (the flooding VM's too, so its tap's
/// counters run for every flooded frame; nothing is dropped in the hypervisor namespace, but the
/// outside's discard is a drop, so `watch_kfree_skb` also runs per frame and returns at its
/// namespace test), metrics on a free port of the lab namespace, no flight recorder.
fn watch_args<'a>() -> Vec<&'a str> {
    vec!["watch", "--listen", "127.0.0.1:0", "--no-record"]
}

const OTHER_DEST: &str = "198.51.100.1";

/// The followed VM's own traffic in a case: (which tap, source, destination).
fn case_pings(case: &str) -> Option<(&'static str, [u8; 4])> {
    match case {
        "unrelated" | "unrelated-all" | "watch-other" => Some(("vnet1", [203, 0, 113, 1])),
        "unrelated-dest" => Some(("vnet1", [198, 51, 100, 1])),
        "other-proto" => Some(("vnet0", [203, 0, 113, 1])),
        _ => None,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// Builds kvmtrace in release mode and returns the binary's path.
pub fn build_release() -> Result<PathBuf> {
    eprintln!("[bench] building kvmtrace (release)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    if !Command::new(&cargo)
        .args(["build", "--release", "-p", "kvmtrace"])
        .current_dir(workspace())
        .status()?
        .success()
    {
        bail!("building kvmtrace failed");
    }
    Ok(target_dir().join("release/kvmtrace"))
}

pub fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("target"))
}

pub fn run(a: &BenchArgs) -> Result<ExitCode> {
    let (secs, rounds) = if a.smoke {
        (1.0, 1)
    } else {
        (a.seconds, a.rounds)
    };
    if let Some(c) = a.cases.iter().find(|c| !CASES.contains(&c.as_str())) {
        bail!("no bench case {c} (cases: {})", CASES.join(", "));
    }
    let cases: Vec<&'static str> = CASES
        .into_iter()
        .filter(|c| a.cases.is_empty() || a.cases.iter().any(|x| x == c))
        .collect();
    let bin = build_release()?;

    eprintln!(
        "[bench] lab: tap vnet0 (flooding VM) and vnet1 (another VM) → br0 → NAT → up0 → outside"
    );
    let lab = Lab::new(LabOptions::default());
    lab.hv_run(&["ip", "tuntap", "add", "dev", "vnet1", "mode", "tap"]);
    lab.hv_run(&["ip", "link", "set", "vnet1", "master", "br0", "up"]);
    if a.extra_taps > 0 {
        eprintln!(
            "[bench] {} more taps (vnet2…) on bridges xbr0…",
            a.extra_taps
        );
        add_taps(&lab.hv, "xbr", 2, a.extra_taps)?;
    }
    // The outside discards the flood without answering (no ICMP port unreachable storm).
    discard_udp9(&lab, "ip");
    // vnet1's replies reach its tap without ARP; its fd is drained by its pinger.
    pin_vm2_neighbour(&lab, VM2_IP.into());
    let fd = open_tap(&lab.hv, &lab.tap)?;
    let fd2 = open_tap(&lab.hv, "vnet1")?;
    // SAFETY: fcntl on an fd we own; non-blocking so the pinger can drain it.
    unsafe { libc::fcntl(fd2.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let br_mac = mac_of(&lab, &lab.bridge)?;
    let (guest_mac, guest_ip) = (lab.guest_mac, lab.guest_ip.octets());
    let pinger = |case: &str| {
        case_pings(case).map(|(tap, dst)| {
            let (raw, mac, ip) = if tap == "vnet1" {
                (fd2.as_raw_fd(), VM2_MAC, VM2_IP)
            } else {
                (fd.as_raw_fd(), guest_mac, guest_ip)
            };
            let drain = fd2.as_raw_fd();
            Pinger::start(raw, move |seq| {
                let mut buf = [0u8; 2048];
                // SAFETY: non-blocking reads into a local buffer: replies are discarded.
                while unsafe { libc::read(drain, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
                echo_frame(mac, br_mac, ip, dst, seq)
            })
        })
    };
    let frame = udp_frame(
        lab.guest_mac,
        br_mac,
        lab.guest_ip.octets(),
        lab.dest.octets(),
        40_000,
    );
    let stats_was =
        std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    // Run-time statistics cost two clock reads per program run: off while rates are measured,
    // on for a separate profiling pass at the end.
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0")
        .context("writing bpf_stats_enabled")?;

    // Warm up: ARP, conntrack, NAT.
    flood(&lab, &fd, &frame, 0.5)?;
    let dest = lab.dest.to_string();
    let mut off = Vec::new();
    let mut results: Vec<Value> = Vec::new();
    let mut rates: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for round in 0..rounds {
        for &case in &cases {
            let _pings = pinger(case);
            // Off first in even rounds, on first in odd ones: drift within a pair cancels.
            let off_first = round % 2 == 0;
            let mut r0 = 0.0;
            if off_first {
                r0 = flood(&lab, &fd, &frame, secs)?;
            }
            let args = case_args(case, &dest);
            let t = start_tracer(&bin, &lab, &args)?;
            let rss_pid = t.child.id();
            let r1 = flood(&lab, &fd, &frame, secs)?;
            let rss_now = std::fs::read_to_string(format!("/proc/{rss_pid}/status"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_string()))
                .unwrap_or_default();
            let mut res = stop_tracer(t)?;
            if !off_first {
                r0 = flood(&lab, &fd, &frame, secs)?;
            }
            off.push(r0);
            res["case"] = json!(case);
            res["round"] = json!(round);
            res["rate_off_pps"] = json!(r0);
            res["rate_on_pps"] = json!(r1);
            res["ratio"] = json!(if r0 > 0.0 { r1 / r0 } else { 0.0 });
            res["rss_during"] = json!(rss_now);
            res["seconds"] = json!(secs);
            eprintln!(
                "[bench] round {round} {case:<12} off {r0:>10.0} pps, on {r1:>10.0} pps, ratio {:.3}",
                if r0 > 0.0 { r1 / r0 } else { 0.0 }
            );
            rates
                .entry(case)
                .or_default()
                .push(if r0 > 0.0 { r1 / r0 } else { 0.0 });
            results.push(res);
        }
    }
    // Profiling pass: ns per program run, with kernel.bpf_stats_enabled=1.
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").context("enabling bpf stats")?;
    let mut profiles: std::collections::BTreeMap<&str, Value> = Default::default();
    let mut runs_per_packet: std::collections::BTreeMap<&str, f64> = Default::default();
    for &case in &cases {
        let _pings = pinger(case);
        let t = start_tracer(&bin, &lab, &case_args(case, &dest))?;
        let psecs = secs.min(1.0);
        let pps = flood(&lab, &fd, &frame, psecs)?;
        let res = stop_tracer(t)?;
        // Program runs per flooded packet: every run of every program while the flood
        // crossed the host (the followed VM's 10 pings/s are negligible beside it).
        let runs: u64 = res["stats"]["programs"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| p["runs"].as_u64()).sum())
            .unwrap_or(0);
        runs_per_packet.insert(case, runs as f64 / (pps * psecs).max(1.0));
        profiles.insert(case, res["stats"]["programs"].clone());
    }
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_was.trim());
    drop(fd);
    drop(fd2);
    drop(lab);

    let machine = json!({
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    let off_median = median(&mut off.clone());
    let out_dir = target_dir().join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let summary = json!({
        "machine": machine,
        "seconds": secs,
        "rounds": rounds,
        "untraced_median_pps": off_median,
        "runs": results,
        "profiles": profiles,
        "runs_per_packet": runs_per_packet,
    });
    let path = out_dir.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)?;

    // The table.
    println!(
        "untraced median: {off_median:.0} pps ({} rounds of {secs} s, machine {machine})",
        rounds
    );
    println!("| case | ratio median (min–max) | runs/packet | ready ms | peak RSS KiB | events/s | lost | sampled out | ns/run (hottest programs) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &case in &cases {
        let mut r = rates.get(case).cloned().unwrap_or_default();
        let (min, max) = (
            r.iter().cloned().fold(f64::INFINITY, f64::min),
            r.iter().cloned().fold(0.0, f64::max),
        );
        let med = median(&mut r);
        let runs: Vec<&Value> = results.iter().filter(|v| v["case"] == case).collect();
        let last = runs.last().copied().cloned().unwrap_or(Value::Null);
        let st = &last["stats"];
        let evs = st["events"].as_u64().unwrap_or(0) as f64 / secs.max(0.001);
        let mut progs: Vec<(String, f64, u64)> = profiles
            .get(case)
            .and_then(|p| p.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|p| {
                        let runs = p["runs"].as_u64()?;
                        let ns = p["run_time_ns"].as_u64()?;
                        (runs > 0).then(|| {
                            (
                                p["name"].as_str().unwrap_or("?").to_string(),
                                ns as f64 / runs as f64,
                                runs,
                            )
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        progs.sort_by_key(|p| std::cmp::Reverse(p.2));
        let ns = progs
            .iter()
            .take(4)
            .map(|(n, ns, _)| format!("{n} {ns:.0}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "| {case} | {med:.3} ({min:.3}–{max:.3}) | {:.2} | {} | {} | {evs:.0} | {} | {} | {ns} |",
            runs_per_packet.get(case).copied().unwrap_or(0.0),
            last["ready_ms"],
            st["peak_rss_kib"],
            st["lost"],
            st["sampled_out"],
        );
    }
    eprintln!("[bench] results: {}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// Most ports put on one bridge (a bridge takes at most 1 024: `BR_MAX_PORTS`).
pub const PORTS_PER_BRIDGE: usize = 1000;

/// Adds `taps` bare taps `vnet<first>`… to namespace `ns`, up, on bridges `<prefix>0`… of at
/// most [`PORTS_PER_BRIDGE`] ports each, in one `ip -batch` (one process, not one per tap).
pub fn add_taps(ns: &str, prefix: &str, first: usize, taps: usize) -> Result<()> {
    let mut batch = String::new();
    for i in 0..taps {
        let b = i / PORTS_PER_BRIDGE;
        if i % PORTS_PER_BRIDGE == 0 {
            batch.push_str(&format!(
                "link add {prefix}{b} type bridge\nlink set {prefix}{b} up\n"
            ));
        }
        let t = first + i;
        batch.push_str(&format!(
            "tuntap add dev vnet{t} mode tap\nlink set vnet{t} master {prefix}{b} up\n"
        ));
    }
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .context("ip -batch")?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(batch.as_bytes())?;
    if !child.wait()?.success() {
        bail!("creating {taps} taps in {ns} failed");
    }
    Ok(())
}
