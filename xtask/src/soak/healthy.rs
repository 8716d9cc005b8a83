//! `cargo xtask soak --healthy`: a healthy path followed for minutes must give nothing but
//! `delivered`. A command for people (issue 18), not a CI test.
//!
//! The lab's default host (IPv4 with MASQUERADE, IPv6 routed) with two VMs on its bridge:
//! - a real QEMU guest on `vnet0` (tests/src/guest.rs), which in its own loop pings the lab's
//!   outside IPv4 and IPv6 destinations and opens a TCP connection to port 80 of each, one
//!   new ICMP identifier and one new TCP source port per attempt, so every attempt is a flow;
//! - a fake VM on `vnet1` (10.77.0.3, fd00:77::3) writing `--rate` frames a second into its
//!   tap, to the same two destinations: UDP to the discard port over `--flows` source ports and
//!   ICMP echo requests over 256 identifiers, for each version in turn. The outside answers the
//!   echoes (the replies come back through the same NAT and uplink as the guest's) and drops
//!   the UDP silently; the fake VM drains its tap.
//!
//! The outside accepts the guest's TCP connections and closes them (a listener nobody accepts
//! from would fill its backlog within minutes and refuse SYNs: a real failure, not the one
//! looked for). kvmtrace follows the guest by its QEMU name to both destinations (`--proto
//! any`, `--json`, `--record`) for `--minutes`. Reported: flows and verdicts by status and by
//! kind, every verdict that is not `delivered` in full with the hops of its flow (from the
//! trace, `kvmtrace export --format jsonl`), the guest's own count of successes and failures
//! in the same window, events, lost events, RSS at the first and last progress line, and the
//! hops the trace shows outside every judged flow (among them, journeys carrying the other
//! VM's packets). Exits 1 when any verdict is not `delivered`, none was given, a verdict is
//! about an address that is not the guest's, or a hop of the other VM's packets sits in a
//! judged flow. The trace is kept in `target/bench/soak-healthy.trace` for `kvmtrace replay`;
//! the numbers in `target/bench/soak-healthy.json`.

use anyhow::{bail, Context as _, Result};
use kvmtrace_lab::guest::{build_image, default_cache_dir, Guest, GuestConfig};
use kvmtrace_lab::lab::{Lab, LabOptions};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bench::{VM2_IP, VM2_MAC};

/// The flooding VM (`vnet1`): its IPv6 address (the rest is bench's second VM).
const VM2_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 3);
/// ICMP identifiers the flood cycles through (echo requests of many short "pings").
const FLOOD_ICMP_IDS: u16 = 256;
const TCP_PORT: u16 = 80;

pub struct Healthy {
    pub minutes: f64,
    pub rate: u32,
    pub flows: u16,
}

/// One's-complement sum of 16-bit words, not yet inverted.
fn sum16(data: &[u8], mut s: u32) -> u32 {
    for c in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    s
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn ether(dst: [u8; 6], src: [u8; 6], ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + l3.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], id: u16, l4: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = fold(sum16(&ip, 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(l4);
    ip
}

/// IPv6 header plus `l4`, whose checksum (at `csum_at`) is filled over the pseudo-header
/// (RFC 8200 section 8.1).
fn ipv6(next: u8, src: Ipv6Addr, dst: Ipv6Addr, mut l4: Vec<u8>, csum_at: usize) -> Vec<u8> {
    let len = l4.len() as u32;
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&len.to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, next]);
    let c = fold(sum16(&l4, sum16(&pseudo, 0)));
    l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(len as u16).to_be_bytes());
    ip.extend_from_slice(&[next, 64]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip.extend_from_slice(&l4);
    ip
}

fn udp(sport: u16) -> Vec<u8> {
    let mut u = Vec::with_capacity(26);
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&9u16.to_be_bytes());
    u.extend_from_slice(&26u16.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(&[0u8; 18]);
    u
}

fn echo(kind: u8, id: u16, seq: u16) -> Vec<u8> {
    let mut e = vec![kind, 0, 0, 0];
    e.extend_from_slice(&id.to_be_bytes());
    e.extend_from_slice(&seq.to_be_bytes());
    e.extend_from_slice(&[0u8; 32]);
    e
}

/// The fake VM's frames: UDP and ICMP echo, IPv4 and IPv6, in turn; packet `n` of the flood.
struct Flood {
    br_mac: [u8; 6],
    dest: [u8; 4],
    dest6: Ipv6Addr,
    flows: u16,
}

impl Flood {
    fn frame(&self, n: u64) -> Vec<u8> {
        let round = (n / 4) as u16;
        let sport = 20_000 + round % self.flows.max(1);
        let id = 0x4b00 + (round % FLOOD_ICMP_IDS);
        let seq = (n / 4 / u64::from(FLOOD_ICMP_IDS)) as u16;
        match n % 4 {
            0 => ether(
                self.br_mac,
                VM2_MAC,
                0x0800,
                &ipv4(17, VM2_IP, self.dest, round, &udp(sport)),
            ),
            1 => {
                let mut e = echo(8, id, seq);
                let c = fold(sum16(&e, 0));
                e[2..4].copy_from_slice(&c.to_be_bytes());
                ether(
                    self.br_mac,
                    VM2_MAC,
                    0x0800,
                    &ipv4(1, VM2_IP, self.dest, round, &e),
                )
            }
            2 => ether(
                self.br_mac,
                VM2_MAC,
                0x86dd,
                &ipv6(17, VM2_IP6, self.dest6, udp(sport), 6),
            ),
            _ => ether(
                self.br_mac,
                VM2_MAC,
                0x86dd,
                &ipv6(58, VM2_IP6, self.dest6, echo(128, id, seq), 2),
            ),
        }
    }
}

/// Accepts and closes TCP connections on `addrs` inside network namespace `ns` until `stop`;
/// counts them (per address, in order).
fn serve_tcp(
    ns: &str,
    addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<Vec<u64>>> {
    let file = std::fs::File::open(format!("/run/netns/{ns}"))?;
    let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
    let handle = std::thread::spawn(move || {
        // SAFETY: setns on this thread only, which serves the outside until stopped.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            let _ = tx.send(Err(anyhow::anyhow!(
                "setns: {}",
                std::io::Error::last_os_error()
            )));
            return Vec::new();
        }
        let mut listeners = Vec::new();
        for a in &addrs {
            match TcpListener::bind(a).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
                Ok(l) => listeners.push(l),
                Err(e) => {
                    let _ = tx.send(Err(anyhow::anyhow!("listening on {a}: {e}")));
                    return Vec::new();
                }
            }
        }
        let _ = tx.send(Ok(()));
        let mut counts = vec![0u64; listeners.len()];
        while !stop.load(Ordering::Relaxed) {
            let mut any = false;
            for (l, n) in listeners.iter().zip(counts.iter_mut()) {
                while let Ok((conn, _)) = l.accept() {
                    drop(conn);
                    *n += 1;
                    any = true;
                }
            }
            if !any {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        counts
    });
    rx.recv().context("TCP server thread")??;
    Ok(handle)
}

/// The guest's `KT <what> ok|fail` console lines counted by what.
fn console_counts(log: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for l in log.lines() {
        let mut w = l.split_whitespace();
        if let (Some("KT"), Some(what), Some(res @ ("ok" | "fail"))) =
            (w.next(), w.next(), w.next())
        {
            *m.entry(format!("{what} {res}")).or_insert(0) += 1;
        }
    }
    m
}

fn diff_counts(
    after: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .collect()
}

/// A verdict's kind: `icmp`, `icmp6`, `tcp`, `tcp6`, `udp`…
fn kind_of(v: &Value) -> String {
    let v6 = v["key"]["guest"].as_str().is_some_and(|g| g.contains(':'));
    let base = match v["key"]["proto"].as_u64() {
        Some(1) | Some(58) => "icmp",
        Some(6) => "tcp",
        Some(17) => "udp",
        Some(p) => return format!("proto {p}"),
        None => return "none".into(),
    };
    format!("{base}{}", if v6 { "6" } else { "" })
}

pub fn run(a: &Healthy) -> Result<ExitCode> {
    let bin = crate::bench::build_release()?;
    let image = build_image(&default_cache_dir())
        .context("building the guest image (`cargo xtask guest`)")?;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir)?;

    eprintln!("[soak] lab: a real guest on vnet0 and a flooding fake VM on vnet1, both on br0");
    let lab = Lab::new(LabOptions::default());
    lab.add_tap("vnet1");
    // The flood's UDP is dropped silently by the outside (no ICMP error storm), both versions.
    crate::bench::discard_udp9(&lab, "inet");
    // The fake VM answers no ARP or NDP: the host knows its MAC already.
    crate::bench::pin_vm2_neighbour(&lab, VM2_IP.into());
    crate::bench::pin_vm2_neighbour(&lab, VM2_IP6.into());
    let stop = Arc::new(AtomicBool::new(false));
    let server = serve_tcp(
        &lab.outside,
        vec![
            SocketAddr::from((lab.dest, TCP_PORT)),
            SocketAddr::from((lab.dest6, TCP_PORT)),
        ],
        stop.clone(),
    )?;

    let name = format!("ktsoak-{}", std::process::id());
    let mut cfg = GuestConfig::for_lab(&lab, &name, TCP_PORT);
    cfg.dest6 = Some(lab.dest6);
    let guest = Guest::boot(&image, &cfg)?;
    let booted = Instant::now();
    if !guest.wait_for_serial("KT tcp6 ok", Duration::from_secs(180)) {
        bail!(
            "the guest never completed a round (ping, TCP, ping6, TCP over IPv6):\n{}\n{}",
            guest.serial_log(),
            guest.qemu_stderr()
        );
    }
    eprintln!(
        "[soak] guest {name} up, a full round done {:.0} s after boot",
        booted.elapsed().as_secs_f64()
    );

    // The flood, from now to the end.
    let tap2 = crate::bench::open_tap(&lab.hv, "vnet1")?;
    // SAFETY: fcntl on an fd we own: non-blocking, so the drain never hangs.
    unsafe { libc::fcntl(tap2.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let flood = Flood {
        br_mac: crate::bench::mac_of(&lab, &lab.bridge)?,
        dest: lab.dest.octets(),
        dest6: lab.dest6,
        flows: a.flows,
    };
    let raw = tap2.as_raw_fd();
    let rate = a.rate.max(1);
    let (st, drained) = (stop.clone(), Arc::new(AtomicU64::new(0)));
    let writer = std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent: u64 = 0;
        while !st.load(Ordering::Relaxed) {
            let due = (start.elapsed().as_secs_f64() * f64::from(rate)) as u64;
            while sent < due {
                let f = flood.frame(sent);
                // SAFETY: writing a frame to the tap fd the caller keeps open until joined.
                unsafe { libc::write(raw, f.as_ptr().cast(), f.len()) };
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        sent
    });
    let (st, dr) = (stop.clone(), drained.clone());
    let drain = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !st.load(Ordering::Relaxed) {
            let mut pfd = libc::pollfd {
                fd: raw,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one pollfd we own; non-blocking reads into a local buffer.
            unsafe {
                if libc::poll(&mut pfd, 1, 100) > 0 {
                    while libc::read(raw, buf.as_mut_ptr().cast(), buf.len()) > 0 {
                        dr.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    });
    // Let conntrack, NAT and the bridge's FDB settle under the flood first.
    std::thread::sleep(Duration::from_secs(2));

    let secs = a.minutes * 60.0;
    let trace = dir.join("soak-healthy.trace");
    let _ = std::fs::remove_file(&trace);
    let out_path = dir.join("soak-healthy-stdout.jsonl");
    let dest4 = lab.dest.to_string();
    let dest6 = lab.dest6.to_string();
    let duration = format!("{secs}");
    let trace_s = trace.to_string_lossy().into_owned();
    let args = [
        "follow",
        &name,
        &dest4,
        &dest6,
        "--json",
        "--proto",
        "any",
        "--duration",
        &duration,
        "--stats-every",
        "10",
        "--record",
        &trace_s,
    ];
    eprintln!(
        "[soak] kvmtrace {} (flood {rate} packets/s from vnet1)",
        args.join(" ")
    );
    let console_before = console_counts(&guest.serial_log());
    let started = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.hv])
        .arg(&bin)
        .args(args)
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(Stdio::piped())
        .spawn()?;
    let err = child.stderr.take().context("stderr")?;
    let progress = Arc::new(Mutex::new(Vec::<Value>::new()));
    let p2 = progress.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            match serde_json::from_str::<Value>(&line) {
                Ok(v) if v["type"] == "progress" => {
                    eprintln!(
                        "[soak] {:>6.0} s  rss {:>7} KiB  events {:>9}  lost {:>6}  journeys held {}",
                        v["elapsed_s"].as_f64().unwrap_or(0.0),
                        v["rss_kib"],
                        v["events"],
                        v["lost"],
                        v["journeys_held"]
                    );
                    p2.lock().unwrap_or_else(|p| p.into_inner()).push(v);
                }
                _ => eprintln!("{line}"),
            }
        }
    });
    let status = child.wait()?;
    let _ = reader.join();
    let followed_s = started.elapsed().as_secs_f64();
    let console = diff_counts(&console_counts(&guest.serial_log()), &console_before);
    stop.store(true, Ordering::Relaxed);
    let sent = writer.join().unwrap_or(0);
    let _ = drain.join();
    let accepted = server.join().unwrap_or_default();
    let lab_guest = (lab.guest_ip, lab.guest_ip6);
    let guest_running = guest.is_running();
    drop(tap2);
    drop(guest);
    drop(lab);

    let lines: Vec<Value> = std::fs::read_to_string(&out_path)?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let verdicts: Vec<&Value> = lines.iter().filter(|v| v["type"] == "verdict").collect();
    let stats = lines
        .iter()
        .find(|v| v["type"] == "stats")
        .cloned()
        .unwrap_or(Value::Null);
    let hops = lines.iter().filter(|v| v["type"] == "hop").count();
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_kind: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for v in &verdicts {
        let s = v["status"].as_str().unwrap_or("?").to_string();
        *by_status.entry(s.clone()).or_insert(0) += 1;
        *by_kind.entry(kind_of(v)).or_default().entry(s).or_insert(0) += 1;
    }
    let bad: Vec<&Value> = verdicts
        .iter()
        .copied()
        .filter(|v| v["status"] != "delivered")
        .collect();
    let progress = progress.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let rss_first = progress
        .first()
        .and_then(|v| v["rss_kib"].as_u64())
        .unwrap_or(0);
    let rss_last = progress
        .last()
        .and_then(|v| v["rss_kib"].as_u64())
        .unwrap_or(0);

    // Each verdict that is not `delivered`, in full, with every hop of its flow; and the hops
    // the trace holds outside every judged flow (shown, but belonging to no verdict), of which
    // those of journeys that carry the other VM's packets.
    let hops_flowed = flow_hops(&bin, &trace)?;
    let mut bad_hops: Vec<Value> = Vec::new();
    for v in &bad {
        let flow = v["flow"].as_str().unwrap_or_default();
        let mine: Vec<&Value> = hops_flowed.iter().filter(|h| h["flow"] == flow).collect();
        println!("NOT DELIVERED: {}", serde_json::to_string_pretty(v)?);
        println!("  its {} hops (from the trace):", mine.len());
        for h in &mine {
            println!("    {h}");
        }
        bad_hops.push(json!({"verdict": v, "hops": mine}));
    }
    let guest_addrs = [lab_guest.0.to_string(), lab_guest.1.to_string()];
    let foreign_flows: Vec<&Value> = verdicts
        .iter()
        .copied()
        .filter(|v| {
            v["key"]["guest"]
                .as_str()
                .is_some_and(|g| !guest_addrs.iter().any(|a| a == g))
        })
        .collect();
    for v in &foreign_flows {
        println!("A FLOW OF ANOTHER ADDRESS: {v}");
    }
    let unflowed: Vec<&Value> = hops_flowed
        .iter()
        .filter(|h| h.get("flow").is_none())
        .collect();
    let vm2_journeys: std::collections::BTreeSet<i64> = hops_flowed
        .iter()
        .filter(|h| {
            let t = &h["tuple"];
            let vm2 = [VM2_IP6.to_string(), "10.77.0.3".to_string()];
            t["proto"] == 17 || vm2.iter().any(|a| t["src"] == **a || t["dst"] == **a)
        })
        .filter_map(|h| h["journey"].as_i64())
        .collect();
    let vm2_hops = hops_flowed
        .iter()
        .filter(|h| {
            h["journey"]
                .as_i64()
                .is_some_and(|j| vm2_journeys.contains(&j))
        })
        .count();
    let vm2_in_flows = hops_flowed
        .iter()
        .filter(|h| h.get("flow").is_some())
        .filter(|h| {
            h["journey"]
                .as_i64()
                .is_some_and(|j| vm2_journeys.contains(&j))
        })
        .count();

    let out = json!({
        "minutes": a.minutes,
        "followed_s": followed_s,
        "flood_rate_pps": rate,
        "flood_sent": sent,
        "flood_replies_drained": drained.load(Ordering::Relaxed),
        "kvmtrace_exit": status.code(),
        "flows": verdicts.len(),
        "by_status": by_status,
        "by_kind": by_kind,
        "hops": hops,
        "stats": stats,
        "rss_first_kib": rss_first,
        "rss_last_kib": rss_last,
        "guest_console": console,
        "tcp_accepted": {"ipv4": accepted.first(), "ipv6": accepted.get(1)},
        "guest_running_at_end": guest_running,
        "not_delivered": bad_hops,
        "flows_of_another_address": foreign_flows,
        "hops_in_no_flow": unflowed.len(),
        "hops_of_the_other_vm": {"journeys": vm2_journeys.len(), "hops": vm2_hops, "in_a_judged_flow": vm2_in_flows},
        "progress": progress,
        "trace": trace,
    });
    std::fs::write(
        dir.join("soak-healthy.json"),
        serde_json::to_string_pretty(&out)?,
    )?;
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "soak --healthy: {followed_s:.0} s followed, flood {sent} packets from vnet1 ({rate}/s), {} replies drained",
        drained.load(Ordering::Relaxed)
    )?;
    writeln!(o, "  flows {}: {}", verdicts.len(), fmt_counts(&by_status))?;
    for (k, m) in &by_kind {
        writeln!(o, "    {k:<6} {}", fmt_counts(m))?;
    }
    writeln!(o, "  guest console in the window: {}", fmt_counts(&console))?;
    writeln!(
        o,
        "  TCP accepted by the outside (whole run): ipv4 {}, ipv6 {}",
        accepted.first().copied().unwrap_or(0),
        accepted.get(1).copied().unwrap_or(0)
    )?;
    writeln!(
        o,
        "  events {} lost {} sampled_out {} hops shown {hops}; RSS {rss_first} KiB at the first progress line, {rss_last} KiB at the last, peak {}",
        stats["events"], stats["lost"], stats["sampled_out"], stats["peak_rss_kib"]
    )?;
    writeln!(
        o,
        "  hops in no judged flow {}; journeys carrying the other VM's packets {} ({vm2_hops} hops, {vm2_in_flows} of them in a judged flow)",
        unflowed.len(),
        vm2_journeys.len()
    )?;
    writeln!(
        o,
        "  kvmtrace exit {:?}; trace {}",
        status.code(),
        trace.display()
    )?;
    if verdicts.is_empty()
        || !bad.is_empty()
        || !foreign_flows.is_empty()
        || vm2_in_flows > 0
        || status.code() != Some(0)
    {
        writeln!(
            o,
            "FAILED: {} verdict(s) not delivered of {}, {} flow(s) of another address, {vm2_in_flows} hop(s) of the other VM in a judged flow, kvmtrace exit {:?}",
            bad.len(),
            verdicts.len(),
            foreign_flows.len(),
            status.code()
        )?;
        return Ok(ExitCode::FAILURE);
    }
    writeln!(o, "ok: every verdict delivered")?;
    Ok(ExitCode::SUCCESS)
}

fn fmt_counts(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The trace's hops, each with its flow (`kvmtrace export --format jsonl`).
fn flow_hops(bin: &Path, trace: &Path) -> Result<Vec<Value>> {
    let out = Command::new(bin)
        .arg("export")
        .arg(trace)
        .args(["--format", "jsonl", "-o", "-"])
        .stderr(Stdio::inherit())
        .output()
        .context("kvmtrace export")?;
    if !out.status.success() {
        bail!(
            "kvmtrace export {} failed ({})",
            trace.display(),
            out.status
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "hop")
        .collect())
}
