//! `follow --record` on a real lab, then `replay`, `export` and `report` on the file.

mod common;

use common::{field, run_plain, start};
use kvmtrace_lab::lab::{Firewall, Lab, LabOptions};
use kvmtrace_lab::vm::FakeVm;
use std::os::unix::fs::PermissionsExt;
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
