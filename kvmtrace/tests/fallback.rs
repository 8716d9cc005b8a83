//! Kernels that refuse a hook: TC left out (as where neither TCX nor a clsact qdisc can be
//! had), every observation point of the tap refused, and TC through clsact + cls_bpf (as
//! before Linux 6.6) with its leftovers after a `kill -9`. The refusals are made with
//! `KVMTRACE_SKIP_HOOKS` on this 6.18 host; the packets, namespaces and TC state are real.

mod common;

use common::{assert_fields, field, start_env};
use kvmtrace_lab::lab::{Firewall, Lab, LabOptions};
use kvmtrace_lab::vm::{FakeVm, Reply};
use std::time::Duration;

const DEST: &str = "203.0.113.1";

fn ping_run(lab: &Lab, skip: &str, n: u16, id: u16) -> (common::Run, Vec<Option<Reply>>) {
    ping_run_with(lab, skip, n, id, &[])
}

fn ping_run_with(
    lab: &Lab,
    skip: &str,
    n: u16,
    id: u16,
    extra: &[&str],
) -> (common::Run, Vec<Option<Reply>>) {
    let mut args = vec!["follow", "vnet0", DEST, "--json", "--duration", "4"];
    args.extend_from_slice(extra);
    let running = start_env(lab, &args, &[("KVMTRACE_SKIP_HOOKS", skip)]);
    let mut vm = FakeVm::attach(lab);
    let got = (1..=n)
        .map(|seq| vm.ping(lab.dest, id, seq, Duration::from_millis(500)))
        .collect();
    (running.wait(), got)
}

#[test]
fn without_tc_a_healthy_path_is_delivered_from_the_receive_and_transmit_tracepoints() {
    let lab = Lab::new(LabOptions::default());
    let (run, got) = ping_run(&lab, "tc", 3, 0x6101);
    assert!(got.iter().all(Option::is_some), "lab broken: {got:?}");
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=delivered stage=tap direction=reply device=vnet0",
    );
    assert_eq!(v["requests"], 3, "{}", run.dump());
    assert_eq!(v["replies"], 3, "{}", run.dump());
    assert_eq!(run.code, 0, "{}", run.dump());
    // Seen by the tracepoints, not by TC anywhere; the start says so and what it costs.
    let attached = run.stats()["attached"].to_string();
    for want in ["tp_btf netif_receive_skb", "tp_btf net_dev_start_xmit"] {
        assert!(attached.contains(want), "{want}: {}", run.dump());
    }
    assert!(!attached.contains("tc "), "{}", run.dump());
    assert!(
        run.stderr.contains(
            "cannot attach tap_ingress to vnet0 (left out by KVMTRACE_SKIP_HOOKS=tc); its \
             packets from the guest are seen by tp_btf netif_receive_skb instead"
        ),
        "{}",
        run.dump()
    );
    assert!(run.stderr.contains("~70 ns per hook"), "{}", run.dump());
    assert!(run.stderr.contains("kvmtrace: kernel "), "{}", run.dump());
    // The reply was seen handed to the guest on the tap by the transmit tracepoint.
    assert!(
        run.hops()
            .iter()
            .any(|h| h["point"] == "dev_xmit" && h["device"] == "vnet0"),
        "{}",
        run.dump()
    );
    assert!(!run.hops().iter().any(|h| h["point"] == "tap_ingress"));
}

#[test]
fn without_tc_a_forward_policy_drop_is_dropped_at_forward() {
    let lab = Lab::new(LabOptions {
        forward_drop: Some(Firewall::Nftables),
        ..Default::default()
    });
    let (run, got) = ping_run(&lab, "tc", 2, 0x6102);
    assert!(got.iter().all(Option::is_none), "{got:?}");
    let v = run.verdict();
    assert_fields(&run, v, "status=dropped stage=netfilter hook=FORWARD direction=request reason=NETFILTER_DROP firewall=nftables device=br0");
    assert_eq!(v["requests"], 2, "{}", run.dump());
    assert_eq!(run.code, 1, "{}", run.dump());
}

/// Neither TC nor the tracepoints of the fallback: kvmtrace cannot see what the guest sends.
/// The guest is healthy (its pings are answered), so `no_traffic` would be a lie.
#[test]
fn blind_at_the_tap_is_said_and_exits_3_never_no_traffic() {
    let lab = Lab::new(LabOptions::default());
    let trace = std::env::temp_dir().join(format!("kvmtrace-blind-{}.trace", lab.id));
    let trace = trace.to_str().unwrap().to_string();
    let (run, got) = ping_run_with(
        &lab,
        "tc,netif_receive_skb,net_dev_start_xmit",
        2,
        0x6103,
        &["--record", &trace],
    );
    assert!(got.iter().all(Option::is_some), "lab broken: {got:?}");
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=blind stage=tap device=vnet0 direction=request",
    );
    assert!(
        field(v, "summary").contains("could not observe the tap vnet0 in either direction"),
        "{}",
        run.dump()
    );
    assert!(
        !run.verdicts().iter().any(|v| v["status"] == "no_traffic"),
        "{}",
        run.dump()
    );
    assert_eq!(run.code, 3, "{}", run.dump());
    assert!(
        run.stderr
            .contains("kvmtrace is blind at the tap vnet0 from the guest: TC tap_ingress"),
        "{}",
        run.dump()
    );
    // No doctor output for "no traffic" either: nothing was judged as silence.
    assert!(!run.stdout.contains("\"type\":\"check\""), "{}", run.dump());
    // The trace carries it: replay says `blind` and exits 3 as well.
    common::assert_offline_equals_live(&trace, &run);
    let _ = std::fs::remove_file(&trace);
}

/// The cls_bpf filters on a device's clsact: (direction, pref, name), sorted.
fn filters(lab: &Lab, dev: &str) -> Vec<(String, u32, String)> {
    let mut out = Vec::new();
    for dir in ["ingress", "egress"] {
        let text = lab.hv_run(&["tc", "filter", "show", "dev", dev, dir]);
        for l in text.lines().filter(|l| l.contains(" handle ")) {
            let w: Vec<&str> = l.split_whitespace().collect();
            let pref = w
                .iter()
                .position(|x| *x == "pref")
                .and_then(|i| w.get(i + 1))
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let kind = w
                .iter()
                .position(|x| *x == "pref")
                .and_then(|i| w.get(i + 2))
                .copied()
                .unwrap_or("");
            let name = if kind == "bpf" {
                w.iter()
                    .position(|x| x.starts_with("handle"))
                    .and_then(|i| w.get(i + 2))
                    .filter(|n| !["not_in_hw", "bytecode", "direct-action"].contains(n))
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "(unnamed)".into())
            } else {
                kind.to_string()
            };
            out.push((dir.to_string(), pref, name));
        }
    }
    out.sort();
    out
}

fn has_clsact(lab: &Lab, dev: &str) -> bool {
    lab.hv_run(&["tc", "qdisc", "show", "dev", dev])
        .contains("clsact")
}

/// Starts a clsact run, waits until it is attached, and kills it with SIGKILL.
fn killed_clsact_run(lab: &Lab) -> u32 {
    let running = start_env(
        lab,
        &["follow", "vnet0", DEST, "--json", "--duration", "30"],
        &[("KVMTRACE_SKIP_HOOKS", "tcx")],
    );
    let pid = running.pid();
    running.signal(libc::SIGKILL);
    let run = running.wait();
    assert_eq!(run.code, -1, "killed: {}", run.dump());
    assert!(run.stderr.contains("kernel "), "{}", run.dump());
    assert!(
        run.stderr
            .contains("no TCX (left out by KVMTRACE_SKIP_HOOKS=tcx)"),
        "{}",
        run.dump()
    );
    pid
}

#[test]
fn clsact_filters_left_by_a_killed_run_are_removed_by_the_next_and_so_is_its_qdisc() {
    let lab = Lab::new(LabOptions::default());
    assert!(!has_clsact(&lab, "vnet0"));
    let pid = killed_clsact_run(&lab);
    // What the killed run added outlives it (no TCX): its filters on the tap and on the
    // path devices, and the qdisc it created.
    assert!(has_clsact(&lab, "vnet0"));
    let left = filters(&lab, "vnet0");
    assert_eq!(
        left,
        vec![
            ("egress".to_string(), 49152, "tap_egress".to_string()),
            ("ingress".to_string(), 49152, "tap_ingress".to_string()),
        ]
    );
    assert!(!filters(&lab, "br0").is_empty());
    let state = format!("/run/kvmtrace/clsact-{pid}.json");
    assert!(std::path::Path::new(&state).exists(), "{state}");

    // The next run removes them first, follows a healthy path through its own filters, and
    // leaves nothing when it ends.
    let (run, got) = ping_run(&lab, "tcx", 2, 0x6104);
    assert!(got.iter().all(Option::is_some), "lab broken: {got:?}");
    for (dev, dir, name) in [
        ("vnet0", "ingress", "tap_ingress"),
        ("vnet0", "egress", "tap_egress"),
        ("br0", "ingress", "dev_ingress"),
    ] {
        let want = format!("removed cls_bpf filter {name} from {dev} {dir}");
        assert!(run.stderr.contains(&want), "{want}: {}", run.dump());
    }
    assert!(
        run.stderr.contains(&format!(
            "removed the clsact qdisc kvmtrace added to vnet0 (left by kvmtrace pid {pid}, which is gone)"
        )),
        "{}",
        run.dump()
    );
    let v = run.verdict();
    assert_fields(&run, v, "status=delivered device=vnet0");
    assert_eq!(run.code, 0, "{}", run.dump());
    assert!(
        run.stats()["attached"]
            .to_string()
            .contains("tc tap_ingress on vnet0 (clsact)"),
        "{}",
        run.dump()
    );
    assert!(!std::path::Path::new(&state).exists(), "{state}");
    for dev in ["vnet0", "br0", "up0"] {
        assert!(!has_clsact(&lab, dev), "{dev} keeps a clsact qdisc");
    }
}

#[test]
fn another_tools_clsact_and_filter_survive_a_killed_run_and_the_next() {
    let lab = Lab::new(LabOptions::default());
    lab.hv_run(&["tc", "qdisc", "add", "dev", "vnet0", "clsact"]);
    // A classic-BPF cls_bpf filter that never matches: a filter of the same kind as
    // kvmtrace's, unnamed, at a priority of its own.
    lab.hv_run(&[
        "tc",
        "filter",
        "add",
        "dev",
        "vnet0",
        "ingress",
        "pref",
        "7",
        "protocol",
        "all",
        "bpf",
        "bytecode",
        "1,6 0 0 0,",
    ]);
    let theirs = ("ingress".to_string(), 7, "(unnamed)".to_string());
    assert_eq!(filters(&lab, "vnet0"), vec![theirs.clone()]);
    let pid = killed_clsact_run(&lab);
    let mut left = filters(&lab, "vnet0");
    left.retain(|f| f != &theirs);
    assert_eq!(left.len(), 2, "{left:?}");
    // The next run removes the dead one's filters only, and its own on exit.
    let (run, got) = ping_run(&lab, "tcx", 1, 0x6105);
    assert!(got.iter().all(Option::is_some), "lab broken: {got:?}");
    assert_eq!(
        field(run.verdict(), "status"),
        "delivered",
        "{}",
        run.dump()
    );
    assert!(
        run.stderr
            .contains("removed cls_bpf filter tap_ingress from vnet0 ingress"),
        "{}",
        run.dump()
    );
    assert!(
        !run.stderr
            .contains("removed the clsact qdisc kvmtrace added to vnet0"),
        "{}",
        run.dump()
    );
    assert!(run.stderr.contains(&format!("pid {pid}")), "{}", run.dump());
    assert_eq!(filters(&lab, "vnet0"), vec![theirs]);
    assert!(has_clsact(&lab, "vnet0"));
}

/// Without TCX a device that already has another tool's `ingress` qdisc cannot take
/// kvmtrace's clsact: a real refusal, reported with its cause (not a later "Parent Qdisc
/// doesn't exists"), once; the tap is then seen by the tracepoints and the path stays
/// followed. The other tool's qdisc is left alone.
#[test]
fn a_tap_holding_another_tools_ingress_qdisc_is_seen_by_the_tracepoints() {
    let lab = Lab::new(LabOptions::default());
    lab.hv_run(&["tc", "qdisc", "add", "dev", "vnet0", "ingress"]);
    let (run, got) = ping_run(&lab, "tcx", 2, 0x6106);
    assert!(got.iter().all(Option::is_some), "lab broken: {got:?}");
    let v = run.verdict();
    assert_fields(&run, v, "status=delivered device=vnet0");
    assert_eq!(run.code, 0, "{}", run.dump());
    let why = "cannot attach tap_ingress to vnet0 (vnet0 has an ingress qdisc (another tool's) \
               where kvmtrace needs clsact; it is left as it is); its packets from the guest \
               are seen by tp_btf netif_receive_skb instead";
    assert_eq!(run.stderr.matches(why).count(), 1, "{}", run.dump());
    assert!(!run.stderr.contains("Parent Qdisc"), "{}", run.dump());
    let q = lab.hv_run(&["tc", "qdisc", "show", "dev", "vnet0"]);
    assert!(q.contains("qdisc ingress ffff:"), "{q}");
    for dev in ["vnet0", "br0", "up0"] {
        assert!(!has_clsact(&lab, dev), "{dev}");
    }
}

/// A path device (the uplink) that refuses clsact: said once, and the run switches to the
/// receive/transmit tracepoints for the whole path, with the same verdict.
#[test]
fn an_uplink_refusing_clsact_switches_the_path_to_the_tracepoints_once() {
    let lab = Lab::new(LabOptions {
        forward_drop: Some(Firewall::Nftables),
        ..Default::default()
    });
    lab.hv_run(&["tc", "qdisc", "add", "dev", "up0", "ingress"]);
    let (run, got) = ping_run(&lab, "tcx", 2, 0x6107);
    assert!(got.iter().all(Option::is_none), "{got:?}");
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=dropped stage=netfilter hook=FORWARD device=br0",
    );
    assert_eq!(run.code, 1, "{}", run.dump());
    let why = "cannot attach dev_ingress to up0 (route 0.0.0.0/0 table main): up0 has an \
               ingress qdisc (another tool's) where kvmtrace needs clsact";
    assert_eq!(run.stderr.matches(why).count(), 1, "{}", run.dump());
    let attached = run.stats()["attached"].to_string();
    assert!(
        attached.contains("tc tap_ingress on vnet0 (clsact)"),
        "{attached}"
    );
    assert!(attached.contains("tp_btf netif_receive_skb"), "{attached}");
    assert!(
        !attached.contains("dev_ingress/dev_egress on"),
        "{attached}"
    );
    // Nothing of kvmtrace's is left on any device; the other tool's qdisc is.
    for dev in ["vnet0", "br0", "up0"] {
        assert!(!has_clsact(&lab, dev), "{dev}");
    }
    let q = lab.hv_run(&["tc", "qdisc", "show", "dev", "up0"]);
    assert!(q.contains("qdisc ingress ffff:"), "{q}");
}

/// A device that joins the path while kvmtrace runs (a route to DEST in another table, on a
/// device holding another tool's `ingress` qdisc) and refuses clsact: said once at the next
/// refresh, not every half second, and from then on the path is seen by the tracepoints; the
/// packets before and after are judged as one healthy flow.
#[test]
fn a_device_joining_the_path_that_refuses_clsact_switches_once_while_running() {
    let lab = Lab::new(LabOptions::default());
    lab.hv_run(&[
        "ip", "link", "add", "up1", "type", "veth", "peer", "name", "up1p",
    ]);
    lab.hv_run(&["ip", "link", "set", "up1", "up"]);
    lab.hv_run(&["ip", "link", "set", "up1p", "up"]);
    lab.hv_run(&["tc", "qdisc", "add", "dev", "up1", "ingress"]);
    let running = start_env(
        &lab,
        &["follow", "vnet0", DEST, "--json", "--duration", "5"],
        &[("KVMTRACE_SKIP_HOOKS", "tcx")],
    );
    let mut vm = FakeVm::attach(&lab);
    let first = vm.ping(lab.dest, 0x6108, 1, Duration::from_millis(500));
    // Not used by any rule: it only makes up1 a device of the path.
    lab.hv_run(&[
        "ip",
        "route",
        "add",
        "203.0.113.1/32",
        "dev",
        "up1",
        "table",
        "100",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    let later: Vec<Option<Reply>> = (2..=3)
        .map(|seq| vm.ping(lab.dest, 0x6108, seq, Duration::from_millis(500)))
        .collect();
    let run = running.wait();
    assert!(
        first.is_some() && later.iter().all(Option::is_some),
        "lab broken"
    );
    let why = "cannot attach dev_ingress to up1 (route 203.0.113.1/32 table 100): up1 has an \
               ingress qdisc (another tool's) where kvmtrace needs clsact";
    assert_eq!(run.stderr.matches(why).count(), 1, "{}", run.dump());
    assert!(
        run.stderr
            .contains("the path is seen by tp_btf netif_receive_skb"),
        "{}",
        run.dump()
    );
    let v = run.verdict();
    assert_fields(&run, v, "status=delivered device=vnet0");
    assert_eq!(v["requests"], 3, "{}", run.dump());
    assert_eq!(v["replies"], 3, "{}", run.dump());
    assert_eq!(run.code, 0, "{}", run.dump());
    for dev in ["vnet0", "br0", "up0", "up1"] {
        assert!(!has_clsact(&lab, dev), "{dev}");
    }
    let q = lab.hv_run(&["tc", "qdisc", "show", "dev", "up1"]);
    assert!(q.contains("qdisc ingress ffff:"), "{q}");
}
