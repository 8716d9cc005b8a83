//! `kvmtrace watch` against real packets and a real Prometheus: a lab with a fake VM on tap
//! vnet0, watch running in the lab's hypervisor namespace, Prometheus (Debian's package)
//! scraping it there every second, and a FORWARD drop made with nftables. Needs root and
//! `prometheus` (`cargo xtask setup` installs it).

mod common;

use common::bpf_objects;
use kvmtrace_lab::lab::{netns_path, Lab, LabOptions};
use kvmtrace_lab::vm::FakeVm;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = common::BIN;

/// A nftables FORWARD drop of the test's own (removed with the namespace).
const FORWARD_DROP: &str =
    "table inet watchtest {\n chain forward {\n  type filter hook forward priority 0; policy drop;\n }\n}\n";

/// Runs `f` on a thread that joined the lab's hypervisor namespace.
fn in_hv<T: Send>(lab: &Lab, f: impl FnOnce() -> T + Send) -> T {
    let path = netns_path(&lab.hv);
    let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns(2) on an fd we own; only this thread changes namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A port nothing listens on in the root namespace (and a fresh lab namespace has none).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` from 127.0.0.1:`port` inside the lab's namespace: (status line, body).
fn http_get(lab: &Lab, port: u16, path: &str) -> Option<(String, String)> {
    in_hv(lab, || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        Some((head.lines().next()?.to_string(), body.to_string()))
    })
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A running `kvmtrace watch` in the lab: stdout JSON lines and stderr collected.
struct Watch {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    port: u16,
}

impl Watch {
    fn start(lab: &Lab, extra: &[&str]) -> Watch {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.hv, BIN, "watch", "--listen", &listen])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kvmtrace watch");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("watch wrote a bad JSON line {line}: {e}"));
                l2.lock().unwrap().push(v);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let e2 = stderr.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                e2.lock().unwrap().push_str(&(line.clone() + "\n"));
                if !sent && line.contains("listening on") {
                    let _ = tx.send(());
                    sent = true;
                }
            }
            if !sent {
                let _ = tx.send(());
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("watch did not get ready within 60 s");
        let w = Watch {
            child,
            lines,
            stderr,
            port,
        };
        assert!(
            w.stderr().contains("listening on"),
            "watch did not start:\n{}",
            w.stderr()
        );
        w
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn line(&self, ty: &str) -> Option<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find(|v| v["type"] == ty)
            .cloned()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our child (`ip netns exec` execs kvmtrace in place).
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> (i32, String) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "watch did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(100));
        (status.code().unwrap_or(-1), self.stderr())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A real Prometheus server in the lab's namespace, scraping watch every second.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Prometheus {
    fn start(lab: &Lab, target_port: u16) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("kvmtrace-prom-{}", lab.id));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: kvmtrace\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &lab.hv, "prometheus"])
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus (cargo xtask setup installs it)");
        let p = Prometheus { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((status, _)) = http_get(lab, port, "/-/ready") {
                if status.contains("200") {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 60 s: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The value of an instant query returning one sample (None: no sample).
    fn query(&self, lab: &Lab, q: &str) -> Option<f64> {
        let (status, body) = http_get(
            lab,
            self.port,
            &format!("/api/v1/query?query={}", url_encode(q)),
        )?;
        assert!(status.contains("200"), "{status}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{body}");
        let r = v["data"]["result"].as_array()?.first()?.clone();
        r["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A directory removed at the end of the test.
struct TempDir(PathBuf);
impl TempDir {
    fn new(lab: &Lab, what: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("kvmtrace-{what}-{}", lab.id));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls until `f` gives Some, pinging from the VM meanwhile (seq continues from `seq`).
fn ping_until<T>(
    lab: &Lab,
    vm: &mut FakeVm,
    seq: &mut u16,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        *seq = seq.wrapping_add(1);
        let _ = vm.ping(lab.dest, 0x5754, *seq, Duration::from_millis(250));
        if let Some(v) = f() {
            return Some(v);
        }
    }
    None
}

fn replay_json(file: &Path) -> Vec<Value> {
    let out = Command::new(BIN)
        .args(["replay", file.to_str().unwrap(), "--json"])
        .output()
        .expect("run kvmtrace replay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "replay of {} failed: {}\n{stdout}\n{}",
        file.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn forward_drop_shows_in_prometheus_and_is_flight_recorded() {
    let lab = Lab::new(LabOptions::default());
    let rec = TempDir::new(&lab, "rec");
    let watch = Watch::start(
        &lab,
        &[
            "--record-dir",
            rec.0.to_str().unwrap(),
            "--record-s",
            "4",
            "--rescan-s",
            "1",
        ],
    );
    let prom = Prometheus::start(&lab, watch.port);
    let mut vm = FakeVm::attach(&lab);
    let fwd = "sum(kvmtrace_drops_total{tap=\"vnet0\",stage=\"netfilter\",hook=\"FORWARD\",reason=\"NETFILTER_DROP\",direction=\"from_vm\",device=\"br0\"})";
    let tx = "kvmtrace_tap_packets_total{tap=\"vnet0\",direction=\"from_vm\"}";

    // Healthy first: the pings are answered, Prometheus sees tap traffic and no drop at FORWARD.
    let answered = (1..=3)
        .filter(|s| {
            vm.ping(lab.dest, 0x5754, *s, Duration::from_millis(1000))
                .is_some()
        })
        .count();
    let mut seq = 3u16;
    assert!(answered > 0, "the lab's healthy path did not answer");
    let sent = ping_until(&lab, &mut vm, &mut seq, Duration::from_secs(30), || {
        prom.query(&lab, tx).filter(|v| *v >= 3.0)
    });
    assert!(
        sent.is_some(),
        "Prometheus never saw the VM's frames ({tx}); prometheus log:\n{}\nwatch:\n{}",
        prom.log(),
        watch.stderr()
    );
    assert_eq!(
        prom.query(&lab, fwd),
        None,
        "a FORWARD drop before the fault"
    );

    // The fault: FORWARD policy drop.
    lab.nft(FORWARD_DROP);
    let drops = ping_until(&lab, &mut vm, &mut seq, Duration::from_secs(40), || {
        prom.query(&lab, fwd).filter(|v| *v >= 5.0)
    });
    assert!(
        drops.is_some(),
        "kvmtrace_drops_total at FORWARD did not reach 5 in Prometheus; metrics now:\n{}\nwatch:\n{}",
        http_get(&lab, watch.port, "/metrics").map(|r| r.1).unwrap_or_default(),
        watch.stderr()
    );
    assert_eq!(
        prom.query(&lab, "kvmtrace_vm_info{tap=\"vnet0\"}"),
        Some(1.0)
    );
    // The pings before the fault were answered, the ones after it not.
    let conv = "{tap=\"vnet0\",kind=\"icmp_echo\",dest_class=\"public\"}";
    let replies = prom.query(&lab, &format!("sum(kvmtrace_tap_replies_total{conv})"));
    assert!(replies.is_some_and(|r| r >= 1.0), "{replies:?}");
    let unanswered = prom.query(
        &lab,
        &format!("sum(kvmtrace_tap_requests_total{conv}) - sum(kvmtrace_tap_replies_total{conv})"),
    );
    assert!(unanswered.is_some_and(|u| u >= 5.0), "{unanswered:?}");
    // Every query of the Grafana dashboard is valid PromQL on this Prometheus, and the drop
    // panel shows the drop.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../contrib/grafana-kvmtrace.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut n = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let q = t["expr"]
                .as_str()
                .unwrap()
                .replace("$vm", ".*")
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m");
            let v = prom.query(&lab, &q);
            if panel["title"] == "Drops by VM, stage and hook" {
                assert!(v.is_some_and(|v| v > 0.0), "{q}: {v:?}");
            }
            n += 1;
        }
    }
    assert!(n >= 11, "{n} dashboard queries");

    // The flight recorder: started by the drops, it records the VM's next packets.
    let done = ping_until(&lab, &mut vm, &mut seq, Duration::from_secs(40), || {
        watch.line("flight_recording")
    })
    .unwrap_or_else(|| {
        panic!(
            "no flight recording finished; stdout: {:?}\nstderr:\n{}",
            watch.lines.lock().unwrap(),
            watch.stderr()
        )
    });
    eprintln!("flight recording: {done}");
    assert_eq!(done["tap"], "vnet0", "{done}");
    assert_eq!(done["dest"], lab.dest.to_string(), "{done}");
    assert_eq!(done["verdict"]["status"], "dropped", "{done}");
    assert_eq!(done["verdict"]["hook"], "FORWARD", "{done}");
    let file = PathBuf::from(done["file"].as_str().unwrap());
    assert!(file.starts_with(&rec.0), "{}", file.display());
    let replay = replay_json(&file);
    let verdicts: Vec<&Value> = replay.iter().filter(|v| v["type"] == "verdict").collect();
    assert!(
        verdicts.iter().any(|v| v["status"] == "dropped"
            && v["hook"] == "FORWARD"
            && v["stage"] == "netfilter"),
        "replay of {} does not name the FORWARD drop: {replay:?}",
        file.display()
    );
    assert!(
        prom.query(&lab, "kvmtrace_flight_recordings_total{tap=\"vnet0\"}")
            .is_some_and(|v| v >= 1.0)
            || ping_until(&lab, &mut vm, &mut seq, Duration::from_secs(5), || {
                prom.query(&lab, "kvmtrace_flight_recordings_total{tap=\"vnet0\"}")
                    .filter(|v| *v >= 1.0)
            })
            .is_some()
    );
    let (code, stderr) = watch.stop();
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn sighup_reloads_the_config_and_sigterm_detaches_everything() {
    let lab = Lab::new(LabOptions::default());
    let dir = TempDir::new(&lab, "cfg");
    std::fs::create_dir_all(&dir.0).unwrap();
    let cfg = dir.0.join("watch.json");
    std::fs::write(&cfg, r#"{"record": false}"#).unwrap();
    let before = bpf_objects::system();
    let watch = Watch::start(&lab, &["--config", cfg.to_str().unwrap()]);
    let _vm = FakeVm::attach(&lab);
    let mut ours = bpf_objects::attached_by(watch.child.id(), &before);
    // kfree_skb plus TC ingress and egress on the tap.
    assert!(ours.links.len() >= 3, "{ours:?}\n{}", watch.stderr());
    let (status, body) = http_get(&lab, watch.port, "/healthz").expect("healthz");
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, "ok\n");

    let count = |event: &str| {
        watch
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["type"] == "vm" && v["event"] == event && v["tap"] == "vnet0")
            .count()
    };
    let wait_for = |what: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !what() {
            assert!(Instant::now() < deadline, "timed out:\n{}", watch.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(&|| count("added") == 1);
    // SIGHUP with a selection that excludes vnet0: it is let go.
    std::fs::write(&cfg, r#"{"record": false, "vms": ["no-such-vm"]}"#).unwrap();
    watch.signal(libc::SIGHUP);
    wait_for(&|| count("removed") == 1);
    assert!(watch.stderr().contains("settings reloaded"));
    let (_, metrics) = http_get(&lab, watch.port, "/metrics").unwrap();
    assert!(!metrics.contains("vnet0"), "{metrics}");
    // A bad file keeps the old settings.
    std::fs::write(&cfg, r#"{"window_s": -1}"#).unwrap();
    watch.signal(libc::SIGHUP);
    wait_for(&|| watch.stderr().contains("keeping the old settings"));
    // Back to every VM.
    std::fs::write(&cfg, r#"{"record": false}"#).unwrap();
    watch.signal(libc::SIGHUP);
    wait_for(&|| count("added") == 2);
    let now = bpf_objects::held_by(watch.child.id());
    ours.links.extend(now.links);
    ours.progs.extend(now.progs);

    let (code, stderr) = watch.stop();
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("all hooks detached"), "{stderr}");
    bpf_objects::assert_all_gone(&ours, Duration::from_secs(10));
}

#[test]
fn vms_come_and_go_and_a_vanishing_vm_leaves_a_readable_trace() {
    let lab = Lab::new(LabOptions::default());
    let rec = TempDir::new(&lab, "rec");
    lab.nft(FORWARD_DROP);
    let watch = Watch::start(
        &lab,
        &[
            "--record-dir",
            rec.0.to_str().unwrap(),
            "--record-s",
            "8",
            "--rescan-s",
            "1",
        ],
    );
    // A second VM appears while watch runs.
    lab.hv_run(&["ip", "tuntap", "add", "dev", "vnet1", "mode", "tap"]);
    let added = (0..50).find_map(|_| {
        std::thread::sleep(Duration::from_millis(100));
        watch
            .lines
            .lock()
            .unwrap()
            .iter()
            .find(|v| v["type"] == "vm" && v["event"] == "added" && v["tap"] == "vnet1")
            .cloned()
    });
    assert!(added.is_some(), "vnet1 not picked up:\n{}", watch.stderr());
    let (_, metrics) = http_get(&lab, watch.port, "/metrics").unwrap();
    assert!(metrics.contains("tap=\"vnet1\""), "{metrics}");

    let mut vm = FakeVm::attach(&lab);
    let mut seq = 0u16;
    let started = ping_until(&lab, &mut vm, &mut seq, Duration::from_secs(40), || {
        watch.line("flight_recording_started")
    });
    let started = started.unwrap_or_else(|| panic!("no recording started:\n{}", watch.stderr()));
    // The recording has begun once its (still open) trace shows the VM's dropped requests.
    let file = PathBuf::from(started["file"].as_str().unwrap());
    let recording = ping_until(&lab, &mut vm, &mut seq, Duration::from_secs(20), || {
        let out = Command::new(BIN)
            .args(["replay", file.to_str().unwrap(), "--json"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["type"] == "verdict" && v["requests"].as_u64().unwrap_or(0) > 0)
    });
    assert!(
        recording.is_some(),
        "the recording never showed the VM's requests:\n{}",
        watch.stderr()
    );
    // Mid-recording, the VM goes away: its tap is deleted.
    drop(vm);
    lab.hv_run(&["ip", "link", "del", "vnet0"]);
    let done = (0..300).find_map(|_| {
        std::thread::sleep(Duration::from_millis(100));
        watch.line("flight_recording")
    });
    let done = done.unwrap_or_else(|| panic!("recording did not end:\n{}", watch.stderr()));
    let removed = watch
        .lines
        .lock()
        .unwrap()
        .iter()
        .any(|v| v["type"] == "vm" && v["event"] == "removed" && v["tap"] == "vnet0");
    assert!(removed, "vnet0's removal not noticed");
    assert_eq!(done["file"], started["file"]);
    let replay = replay_json(&file);
    assert!(
        replay
            .iter()
            .any(|v| v["type"] == "verdict" && v["status"] == "dropped" && v["hook"] == "FORWARD"),
        "{replay:?}"
    );
    let (_, metrics) = http_get(&lab, watch.port, "/metrics").unwrap();
    assert!(!metrics.contains("tap=\"vnet0\""), "{metrics}");
    let (code, stderr) = watch.stop();
    assert_eq!(code, 0, "{stderr}");
}

/// The alerting rules in contrib/ are valid, and the FORWARD alert fires as documented
/// (`promtool test rules` with the series in contrib/kvmtrace-alerts.test.yml).
#[test]
fn alerting_rules_fire_as_documented() {
    let contrib = concat!(env!("CARGO_MANIFEST_DIR"), "/../contrib");
    for args in [
        &["check", "rules", "kvmtrace-alerts.yml"][..],
        &["test", "rules", "kvmtrace-alerts.test.yml"][..],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(contrib)
            .output()
            .expect("run promtool (Debian's prometheus package; cargo xtask setup installs it)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// What a watched VM's frame costs at its tap, measured with BPF_PROG_TEST_RUN (no global
/// `bpf_stats_enabled`, which would slow the other programs of a shared machine): every run
/// counts exactly once, learns the guest's address once, and stays far from a ring-buffer
/// event's cost.
#[test]
fn a_frame_at_a_watched_tap_costs_one_cheap_count() {
    use kvmtrace::capture::watch::WatchKernel;
    let lab = Lab::new(LabOptions::default());
    let (guest, dest) = (lab.guest_ip.octets(), lab.dest.octets());
    // A 64-byte UDP frame from the guest (Ethernet, IPv4 without options, UDP 40000 → 9).
    let mut f = vec![0u8; 64];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&lab.guest_mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&50u16.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&guest);
    f[30..34].copy_from_slice(&dest);
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&9u16.to_be_bytes());
    f[38..40].copy_from_slice(&30u16.to_be_bytes());
    const RUNS: u32 = 200_000;
    let (out, ns, totals, learned) = in_hv(&lab, || {
        let mut k = WatchKernel::start().expect("load the watch programs");
        let ifindex = k.add_tap(7, &lab.tap).expect("watch the lab's tap");
        let (retval, ns) = k.test_run_tap(true, ifindex, &f, RUNS).expect("test run");
        let (_, ns_out) = k.test_run_tap(false, ifindex, &f, RUNS).expect("test run");
        let totals = k.tap_totals();
        let learned = k.guest_addresses();
        ((retval, ns_out), ns, totals, learned)
    });
    eprintln!(
        "watch_tap_in: {ns} ns per 64-byte frame, watch_tap_out: {} ns (mean of {RUNS} runs each)",
        out.1
    );
    // TC_ACT_UNSPEC (-1): observe only.
    assert_eq!(out.0 as i32, -1);
    let from_vm = totals
        .iter()
        .find(|(k, _)| k.dir == 0)
        .map(|(_, t)| *t)
        .expect("from_vm counters");
    let to_vm = totals
        .iter()
        .find(|(k, _)| k.dir == 1)
        .map(|(_, t)| *t)
        .expect("to_vm counters");
    assert_eq!(from_vm.packets, RUNS as u64, "{from_vm:?}");
    assert_eq!(from_vm.bytes, 64 * RUNS as u64);
    assert_eq!(to_vm.packets, RUNS as u64, "{to_vm:?}");
    assert_eq!(from_vm.vm, 7);
    assert_eq!(learned, vec![(IpAddr::V4(lab.guest_ip), 7)]);
    // A ring-buffer event per packet costs microseconds (docs/benchmarks.md); a count must not.
    assert!(ns < 1000 && out.1 < 1000, "{ns} ns, {} ns per run", out.1);
}

/// Set in the child process of [`a_vm_named_after_its_tap_appeared_moves_its_series`]: the tap
/// it holds open.
const HOLDER_ENV: &str = "KVMTRACE_WATCH_HOLD_TAP";

#[test]
#[ignore = "child process of a_vm_named_after_its_tap_appeared_moves_its_series"]
fn tap_holder_child() {
    let Some(tap) = std::env::var_os(HOLDER_ENV) else {
        return;
    };
    let tap = tap.into_string().unwrap();
    // SAFETY: NUL-terminated path literal.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    assert!(
        fd >= 0,
        "open /dev/net/tun: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(tap.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes the one struct ifreq we pass.
    let rc = unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut ifr) };
    assert!(
        rc == 0,
        "TUNSETIFF {tap}: {}",
        std::io::Error::last_os_error()
    );
    println!("HOLDING {tap}");
    // Held until the parent closes our stdin.
    let _ = std::io::stdin().read(&mut [0u8; 1]);
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
}

/// A tap first seen bare (libvirt creates it before QEMU holds it) is labelled by its name;
/// once a QEMU-like process (`-name guest=web7`) holds it, its series move to `vm="web7"`.
#[test]
fn a_vm_named_after_its_tap_appeared_moves_its_series() {
    let lab = Lab::new(LabOptions::default());
    lab.hv_run(&["ip", "tuntap", "add", "dev", "vnet1", "mode", "tap"]);
    let watch = Watch::start(&lab, &["--no-record", "--rescan-s", "1"]);
    let event =
        |ev: &str, vm: &str| {
            watch.lines.lock().unwrap().iter().any(|v| {
                v["type"] == "vm" && v["event"] == ev && v["tap"] == "vnet1" && v["vm"] == vm
            })
        };
    // Its stdout is read by a thread: the line may come a moment after "listening".
    let deadline = Instant::now() + Duration::from_secs(10);
    while !event("added", "vnet1") {
        assert!(
            Instant::now() < deadline,
            "vnet1 not added:\n{}",
            watch.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The holder runs in the lab's namespace as a whole process whose command line reads like
    // QEMU's: `-name guest=web7 …` (bash's `exec -a` sets argv[0]).
    let test_bin = std::env::current_exe().unwrap();
    let mut holder = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.hv,
            "bash",
            "-c",
            "exec -a -name \"$0\" \"$@\"",
        ])
        .arg(&test_bin)
        .args([
            "guest=web7",
            "tap_holder_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(HOLDER_ENV, "vnet1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the tap holder");
    let mut out = BufReader::new(holder.stdout.take().unwrap()).lines();
    let holding = out
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.starts_with("HOLDING vnet1"));
    assert!(holding, "the holder did not attach to vnet1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !event("renamed", "web7") {
        assert!(
            Instant::now() < deadline,
            "vnet1 not renamed: {:?}\n{}",
            watch.lines.lock().unwrap(),
            watch.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, metrics) = http_get(&lab, watch.port, "/metrics").unwrap();
    assert!(
        metrics.contains("kvmtrace_vm_info{vm=\"web7\",tap=\"vnet1\""),
        "{metrics}"
    );
    assert!(!metrics.contains("vm=\"vnet1\""), "{metrics}");
    drop(holder.stdin.take());
    // Read the holder's last lines (libtest's summary) so that it exits cleanly.
    out.for_each(drop);
    let _ = holder.wait();
    let (code, stderr) = watch.stop();
    assert_eq!(code, 0, "{stderr}");
}
