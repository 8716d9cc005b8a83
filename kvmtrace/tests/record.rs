//! `follow --record` on a real lab, then `replay`, `export` and `report` on the file.

mod common;

use common::{assert_fields, assert_offline_equals_live, field, hand_down_fds, run_plain, start};
use kvmtrace_lab::lab::{Firewall, Lab, LabOptions};
use kvmtrace_lab::vm::FakeVm;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn a_recorded_outage_replays_exports_and_reports_the_same_verdict() {
    let lab = Lab::new(LabOptions {
        forward_drop: Some(Firewall::Nftables),
        ..Default::default()
    });
    let dir = std::env::temp_dir().join(format!("{}-rec", lab.id));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("outage.kvmtrace");
    let f = file.to_str().unwrap();
    let running = start(
        &lab,
        &[
            "follow",
            "vnet0",
            "203.0.113.1",
            "--json",
            "--duration",
            "3",
            "--record",
            f,
        ],
    );
    let mut vm = FakeVm::attach(&lab);
    for seq in 1..=2 {
        assert!(vm
            .ping(lab.dest, 0x5555, seq, Duration::from_millis(400))
            .is_none());
    }
    let live = running.wait();
    let live_v = live.verdict().clone();
    assert_eq!(field(&live_v, "status"), "dropped", "{}", live.dump());

    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "trace files hold host details: private");

    let replay = run_plain(&["replay", f, "--json"]);
    assert_eq!(replay.code, 1, "{}", replay.dump());
    let rv: Vec<serde_json::Value> = replay
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["type"] == "verdict")
        .collect();
    assert_eq!(rv.len(), 1, "{}", replay.dump());
    for k in [
        "status",
        "stage",
        "hook",
        "reason",
        "device",
        "direction",
        "firewall",
    ] {
        assert_eq!(
            rv[0][k],
            live_v[k],
            "{k} differs in replay:\n{}",
            replay.dump()
        );
    }

    let pcap = dir.join("outage.pcapng");
    let exp = run_plain(&[
        "export",
        f,
        "--format",
        "pcapng",
        "-o",
        pcap.to_str().unwrap(),
    ]);
    assert_eq!(exp.code, 0, "{}", exp.dump());
    let ts = std::process::Command::new("tshark")
        .args([
            "-r",
            pcap.to_str().unwrap(),
            "-T",
            "fields",
            "-e",
            "frame.interface_name",
            "-e",
            "frame.comment",
        ])
        .output()
        .expect("tshark");
    let text = String::from_utf8_lossy(&ts.stdout);
    assert!(text.contains("NETFILTER_DROP"), "{text}");
    assert!(text.contains("FORWARD"), "{text}");

    let base = dir.join("report");
    let rep = run_plain(&[
        "report",
        f,
        "--format",
        "both",
        "-o",
        base.to_str().unwrap(),
    ]);
    assert_eq!(rep.code, 0, "{}", rep.dump());
    let md = std::fs::read_to_string(base.with_extension("md")).expect("markdown report");
    assert!(
        md.contains("FORWARD") && md.contains("NETFILTER_DROP"),
        "{md}"
    );
    let html = std::fs::read_to_string(base.with_extension("html")).expect("html report");
    assert!(html.contains("<html") && html.contains("NETFILTER_DROP"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_replay_of_an_explained_forward_drop_equals_the_live_run() {
    let lab = Lab::new(LabOptions {
        forward_drop: Some(Firewall::Nftables),
        ..Default::default()
    });
    let dir = std::env::temp_dir().join(format!("{}-rec-rules", lab.id));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("explained.kvmtrace");
    let f = file.to_str().unwrap();
    let running = start(
        &lab,
        &[
            "follow",
            "vnet0",
            "203.0.113.1",
            "--json",
            "--duration",
            "3",
            "--explain-rules",
            "--record",
            f,
        ],
    );
    let mut vm = FakeVm::attach(&lab);
    for seq in 1..=2 {
        assert!(vm
            .ping(lab.dest, 0x5656, seq, Duration::from_millis(400))
            .is_none());
    }
    let live = running.wait();
    let v = live.verdict();
    assert_fields(&live, v, "status=dropped hook=FORWARD");
    // The lab's policy (inet labfilter forward, policy drop), named by nftables tracing: the
    // input replay had no way to know before format 2.
    assert_eq!(
        field(v, "rule"),
        "inet labfilter forward (FORWARD): policy drop",
        "{}",
        live.dump()
    );
    assert_eq!(v["requests"], 2, "{}", live.dump());
    assert_eq!(live.code, 1);
    let trace = std::fs::read_to_string(&file).unwrap();
    assert!(
        trace.contains(r#""type":"rule","family":"inet","table":"labfilter","chain":"forward""#),
        "the decision is recorded:\n{trace}"
    );
    assert_offline_equals_live(f, &live);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_replay_of_a_flood_over_the_budget_equals_the_live_run() {
    let lab = Lab::new(LabOptions::default());
    let dir = std::env::temp_dir().join(format!("{}-rec-flood", lab.id));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("flood.kvmtrace");
    let f = file.to_str().unwrap();
    let running = start(
        &lab,
        &[
            "follow",
            "vnet0",
            "203.0.113.1",
            "--json",
            "--budget",
            "20",
            "--proto",
            "icmp",
            "--duration",
            "4",
            "--record",
            f,
        ],
    );
    let mut vm = FakeVm::attach(&lab);
    assert!(vm.resolve_gateway(Duration::from_secs(3)));
    let n = 500u64;
    for seq in 0..n as u16 {
        vm.send_echo(lab.dest, 0x6262, seq);
    }
    let live = running.wait();
    let v = live.verdict();
    assert_eq!(field(v, "status"), "delivered", "{}", live.dump());
    assert_eq!(v["requests"], 20, "{}", live.dump());
    assert_eq!(v["replies"], 20, "{}", live.dump());
    // The kernel's per-flow counts, read at the end of the run: the input replay had no way
    // to know before format 2.
    assert_eq!(v["suppressed"], 2 * (n - 20), "{}", live.dump());
    assert!(
        field(v, "summary").contains(&format!(
            "the first 20 packets of each direction are shown, {} more",
            2 * (n - 20)
        )),
        "{}",
        live.dump()
    );
    assert_eq!(live.code, 0);
    let stats = assert_offline_equals_live(f, &live);
    // The counters are the recorded kernel ones.
    for k in ["events", "lost", "sampled_out"] {
        assert_eq!(stats[k], live.stats()[k], "{k}: {stats}\n{}", live.dump());
    }
    drop(vm);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 18: a guest stopped mid-run ended DELIVERED with exit 0 and nothing said. The VM's
/// tap going away is said at that moment, ends the run, is in every verdict and in the trace,
/// and the replay says and exits the same.
#[test]
fn a_vm_that_goes_away_is_said_at_once_in_every_verdict_and_in_the_replay() {
    let lab = Lab::new(LabOptions::default());
    let dir = std::env::temp_dir().join(format!("{}-gone", lab.id));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gone.kvmtrace");
    let f = file.to_str().unwrap();
    let started = std::time::Instant::now();
    let running = start(
        &lab,
        &[
            "follow",
            "vnet0",
            "203.0.113.1",
            "--json",
            "--duration",
            "20",
            "--record",
            f,
        ],
    );
    let mut vm = FakeVm::attach(&lab);
    for seq in 1..=2 {
        assert!(vm
            .ping(lab.dest, 0x6666, seq, Duration::from_secs(2))
            .is_some());
    }
    drop(vm);
    lab.hv_run(&["ip", "link", "del", "vnet0"]);
    let live = running.wait();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the run ends when the VM goes, not at --duration ({:?})",
        started.elapsed()
    );
    assert_eq!(live.code, 1, "not a success: {}", live.dump());
    assert!(
        live.stderr.contains("kvmtrace: the VM went away at +")
            && live.stderr.contains("tap vnet0 was removed"),
        "{}",
        live.dump()
    );
    let v = live.verdict().clone();
    assert_eq!(field(&v, "status"), "delivered", "{}", live.dump());
    let gone = v["vm_gone"].as_str().expect("vm_gone in the verdict");
    assert!(gone.contains("tap vnet0 was removed"), "{gone}");
    assert!(
        field(&v, "summary").contains("the VM went away"),
        "{}",
        live.dump()
    );

    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("\"type\":\"vm_gone\""))
            .count(),
        1,
        "one vm_gone line in the trace"
    );
    let replay = run_plain(&["replay", f, "--json"]);
    assert_eq!(replay.code, 1, "{}", replay.dump());
    let rv: serde_json::Value = replay
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|v: &serde_json::Value| v["type"] == "verdict")
        .expect("a replayed verdict");
    assert_eq!(rv["vm_gone"], v["vm_gone"], "{}", replay.dump());
    assert_eq!(rv["summary"], v["summary"], "{}", replay.dump());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 18, the other half of `vm_gone`: the VM's QEMU exits while its tap stays (a
/// persistent tap, as libvirt's and the lab's are, outlives the process that held it). A
/// stand-in QEMU in the hypervisor holds the tap's tun fd with QEMU's command line, so `follow`
/// resolves the VM by its `-name` to that process; killed mid-run, the pid check (every 500 ms)
/// says so at once, ends the run, and every verdict carries it (exit 1). Without the pid check
/// the tap alone would keep the run going until --duration.
#[test]
fn a_vm_whose_qemu_exits_is_said_at_once_while_its_tap_stays() {
    let lab = Lab::new(LabOptions::default());
    let mut vm = FakeVm::attach(&lab);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.hv, "sh", "-c", "sleep 60 7>&-; :"])
        .args([
            "/usr/bin/qemu-system-x86_64",
            "-name",
            "guest=gonevm,debug-threads=on",
            "-netdev",
            "tap,id=n0,ifname=vnet0,script=no,downscript=no",
            "-device",
            "virtio-net-pci,netdev=n0,mac=52:54:00:4b:54:02",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    hand_down_fds(&mut cmd, vec![vm.tap_fd().as_raw_fd()], 7);
    let mut qemu = cmd.spawn().expect("spawn the stand-in QEMU");
    let pid = qemu.id();
    // Wait until the shell (exec'd by `ip netns exec` in place) holds the tun fd.
    let holds = || {
        std::fs::read_link(format!("/proc/{pid}/fd/7"))
            .is_ok_and(|t| t.as_os_str() == "/dev/net/tun")
            && std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.contains("guest=gonevm"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !holds() {
        assert!(
            std::time::Instant::now() < deadline,
            "the stand-in never held the tap"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = std::time::Instant::now();
    let running = start(
        &lab,
        &[
            "follow",
            "gonevm",
            "203.0.113.1",
            "--json",
            "--duration",
            "20",
        ],
    );
    for seq in 1..=2 {
        assert!(vm
            .ping(lab.dest, 0x6767, seq, Duration::from_secs(2))
            .is_some());
    }
    qemu.kill().expect("kill the stand-in QEMU");
    qemu.wait().expect("reap it");
    let live = running.wait();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the run ends when QEMU exits, not at --duration ({:?}): {}",
        started.elapsed(),
        live.dump()
    );
    assert!(
        live.stderr
            .contains("kvmtrace: following gonevm (tap vnet0, mac 52:54:00:4b:54:02)"),
        "followed as the stand-in's VM: {}",
        live.dump()
    );
    let said = format!("its QEMU (pid {pid}) exited; the run ends here");
    assert!(
        live.stderr
            .lines()
            .any(|l| l.starts_with("kvmtrace: the VM went away at +") && l.ends_with(&said)),
        "{}",
        live.dump()
    );
    assert_eq!(live.code, 1, "not a success: {}", live.dump());
    let v = live.verdict();
    assert_fields(&live, v, "status=delivered stage=tap device=vnet0");
    let gone = field(v, "vm_gone");
    assert!(
        gone.starts_with("the VM went away ")
            && gone.ends_with(&format!(" s into the run: its QEMU (pid {pid}) exited")),
        "{gone}"
    );
    assert!(field(v, "summary").contains(gone), "{}", live.dump());
    assert!(
        lab.hv_run(&["cat", "/sys/class/net/vnet0/ifindex"])
            .trim()
            .parse::<u32>()
            .is_ok(),
        "the tap is still there: only the pid check can have seen it"
    );
}
