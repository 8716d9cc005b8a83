//! `cargo xtask soak`: kvmtrace following a VM under load for minutes (10 by default), to show
//! flat memory and kernel maps that stop growing. A command for people, not a CI test.
//!
//! Load: UDP from the fake VM to the destination over many source ports (thousands of flows, so
//! the per-flow maps fill to their bounds and must recycle), at a steady rate, while kvmtrace
//! follows that VM with `--stats-every`. Reports RSS and map entries over time and writes
//! `target/bench/soak.json`.
//!
//! `--watch`: `kvmtrace watch` instead, over every VM of the lab, with the flood dropped at
//! FORWARD (every packet a counted drop, flight recordings every cooldown) and its RSS sampled
//! from /proc every 10 s.
//!
//! `--healthy`: a real guest and a flooding second VM on a healthy path, every verdict must be
//! `delivered` ([`healthy`]).

mod healthy;

use anyhow::{bail, Result};
use clap::Args;
use kvmtrace_lab::lab::{Lab, LabOptions};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct SoakArgs {
    /// How long to run.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Packets per second offered.
    #[arg(long, default_value_t = 20_000)]
    rate: u32,
    /// Distinct UDP source ports (flows).
    #[arg(long, default_value_t = 8192)]
    flows: u16,
    /// Soak `kvmtrace watch` (every VM, the flood dropped at FORWARD) instead of `follow`.
    #[arg(long, conflicts_with = "healthy")]
    watch: bool,
    /// A real QEMU guest (IPv4 and IPv6, ICMP and TCP) followed on a healthy path while a second
    /// VM floods the same destinations at `--rate` (UDP over `--flows` source ports, and ICMP
    /// echo): exits 1 unless every verdict is `delivered`.
    #[arg(long)]
    healthy: bool,
}

/// VmRSS of a process (KiB), 0 when it is gone.
fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

pub fn run(a: &SoakArgs) -> Result<ExitCode> {
    if a.healthy {
        return healthy::run(&healthy::Healthy {
            minutes: a.minutes,
            rate: a.rate,
            flows: a.flows,
        });
    }
    let bin = crate::bench::build_release()?;
    let lab = Lab::new(LabOptions::default());
    crate::bench::discard_udp9(&lab, "ip");
    let fd = crate::bench::open_tap(&lab.hv, &lab.tap)?;
    let gw = crate::bench::mac_of(&lab, &lab.bridge)?;
    let frames: Vec<Vec<u8>> = (0..a.flows)
        .map(|i| {
            crate::bench::udp_frame(
                lab.guest_mac,
                gw,
                lab.guest_ip.octets(),
                lab.dest.octets(),
                20_000 + i,
            )
        })
        .collect();
    let dest = lab.dest.to_string();
    let rec_dir = std::env::temp_dir().join(format!("kvmtrace-soak-{}", std::process::id()));
    let rec = rec_dir.to_string_lossy().into_owned();
    let args: Vec<&str> = if a.watch {
        // Every flood packet is a drop of the watched VM at FORWARD.
        lab.nft("table inet soakdrop {\n chain forward {\n  type filter hook forward priority 0;\n  udp dport 9 drop\n }\n}\n");
        vec![
            "watch",
            "--listen",
            "127.0.0.1:19464",
            "--record-dir",
            &rec,
            "--cooldown-s",
            "20",
            "--record-s",
            "3",
            "--record-max-mib",
            "64",
        ]
    } else {
        vec!["follow", "vnet0", &dest, "--no-tui", "--stats-every", "10"]
    };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;
    // watch's JSON lines (recordings started and written) are kept for a look afterwards.
    let out_log = std::fs::File::create(dir.join("soak-stdout.jsonl"))?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.hv])
        .arg(&bin)
        .args(&args)
        .stdout(out_log)
        .stderr(Stdio::piped())
        .spawn()?;
    let err = child.stderr.take().expect("stderr");
    let samples = Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let (watch_pid, started) = (child.id(), Instant::now());
    let watching = a.watch;
    let s3 = samples.clone();
    let sampler = std::thread::spawn(move || {
        // watch prints no progress line: its RSS is read from /proc.
        if !watching {
            return;
        }
        loop {
            std::thread::sleep(Duration::from_secs(10));
            let rss = rss_of(watch_pid);
            if rss == 0 {
                break;
            }
            let elapsed = started.elapsed().as_secs_f64();
            eprintln!("[soak] {elapsed:>6.0} s  rss {rss:>7} KiB  (watch)");
            s3.lock()
                .unwrap()
                .push(json!({"elapsed_s": elapsed, "rss_kib": rss, "maps": null}));
        }
    });
    let s2 = samples.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["type"] == "progress" {
                    eprintln!(
                        "[soak] {:>6.0} s  rss {:>7} KiB  events {:>10}  lost {:>8}  maps {}",
                        v["elapsed_s"].as_f64().unwrap_or(0.0),
                        v["rss_kib"],
                        v["events"],
                        v["lost"],
                        v["maps"]
                    );
                    s2.lock().unwrap().push(v);
                }
            }
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let raw = fd.as_raw_fd();
    let rate = a.rate.max(1);
    let writer = std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent: u64 = 0;
        while !st.load(Ordering::Relaxed) {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                let f = &frames[(sent % frames.len() as u64) as usize];
                // SAFETY: writing a frame to the tap fd owned by the caller for this duration.
                unsafe { libc::write(raw, f.as_ptr().cast(), f.len()) };
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        sent
    });
    std::thread::sleep(Duration::from_secs_f64(a.minutes * 60.0));
    stop.store(true, Ordering::Relaxed);
    let sent = writer.join().unwrap_or(0);
    // SAFETY: signal our child (ip netns exec execs kvmtrace in place).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait()?;
    let _ = reader.join();
    let _ = sampler.join();
    let traces = std::fs::read_dir(&rec_dir).map(|d| d.count()).unwrap_or(0);
    let _ = std::fs::remove_dir_all(&rec_dir);
    drop(fd);
    drop(lab);
    let samples = samples.lock().unwrap().clone();
    if samples.len() < 2 {
        bail!(
            "too few progress samples ({}) to judge: run longer",
            samples.len()
        );
    }
    let rss: Vec<u64> = samples
        .iter()
        .filter_map(|v| v["rss_kib"].as_u64())
        .collect();
    // Judge growth after the first minute (start-up allocations settle).
    let settled = samples
        .iter()
        .position(|v| v["elapsed_s"].as_f64().unwrap_or(0.0) >= 60.0)
        .unwrap_or(0);
    let first = rss[settled.min(rss.len() - 1)];
    let last = *rss.last().unwrap_or(&0);
    let growth = if first > 0 {
        last as f64 / first as f64 - 1.0
    } else {
        0.0
    };
    let out = json!({
        "minutes": a.minutes,
        "rate_pps": rate,
        "flows": a.flows,
        "sent": sent,
        "watch": a.watch,
        "flight_recordings": traces,
        "rss_after_1min_kib": first,
        "rss_last_kib": last,
        "rss_growth": growth,
        "samples": samples,
    });
    std::fs::write(dir.join("soak.json"), serde_json::to_string_pretty(&out)?)?;
    println!(
        "soak{}: {:.1} min at {rate} pps over {} flows: RSS {first} KiB after 1 min, {last} KiB at the end ({:+.1} %); last maps {}",
        if a.watch {
            format!(" (watch, {traces} flight recordings kept)")
        } else {
            String::new()
        },
        a.minutes,
        a.flows,
        growth * 100.0,
        samples.last().map(|v| v["maps"].to_string()).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}
