//! `kvmtrace follow` against real packets: a lab of namespaces with a real bridge, tap,
//! nftables/iptables rules and NAT, and a fake VM writing frames into the tap. Each test
//! creates the fault, runs the binary, and asserts the verdict fields. Needs root.

mod common;

use common::{assert_fields, field, fix_then_delivered, start};
use kvmtrace_lab::lab::{Firewall, Lab, LabOptions};
use kvmtrace_lab::vm::{FakeVm, Reply};
use std::time::Duration;

const DEST: &str = "203.0.113.1";

fn lab(opts: LabOptions) -> Lab {
    Lab::new(opts)
}

/// Pings from the fake VM while kvmtrace follows; returns the run and the replies the VM got.
fn ping_run(lab: &Lab, extra: &[&str], n: u16) -> (common::Run, Vec<Option<Reply>>) {
    let mut args = vec!["follow", "vnet0", DEST, "--json", "--duration", "4"];
    args.extend_from_slice(extra);
    let running = start(lab, &args);
    let mut vm = FakeVm::attach(lab);
    let mut got = Vec::new();
    for seq in 1..=n {
        got.push(vm.ping(lab.dest, 0x4b54, seq, Duration::from_millis(500)));
    }
    (running.wait(), got)
}

#[test]
fn healthy_path_is_delivered_with_snat_before_and_after() {
    let lab = lab(LabOptions::default());
    let (run, got) = ping_run(&lab, &["--proto", "icmp"], 3);
    assert!(
        got.iter().all(Option::is_some),
        "lab itself broken: {got:?}"
    );
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=delivered stage=tap direction=reply device=vnet0",
    );
    assert_eq!(run.code, 0, "{}", run.dump());
    assert_eq!(v["schema"], 1);
    assert_eq!(v["requests"], 3, "{}", run.dump());
    let rw = v["rewrites"].as_array().expect("rewrites");
    let src = rw
        .iter()
        .find(|r| r["field"] == "src")
        .unwrap_or_else(|| panic!("{}", run.dump()));
    assert_eq!(src["from"], "10.77.0.2");
    assert_eq!(src["to"], "192.0.2.2");
    assert_eq!(src["at"], "POSTROUTING exit", "{}", run.dump());
    // Every stage of the path hook set was seen for the request (netfilter links are in
    // the full set only: `the_full_hook_set_shows_each_netfilter_hook`), and the reply
    // reached the tap.
    // The path hook set: TC on the bridge and on the route's device, no global hooks.
    let attached = run.stats()["attached"].to_string();
    for want in [
        "tc dev_ingress/dev_egress on br0 (vnet0's bridge)",
        "tc dev_ingress/dev_egress on up0 (route 0.0.0.0/0 table main)",
    ] {
        assert!(attached.contains(want), "{want}: {attached}");
    }
    for global in [
        "netif_receive_skb",
        "net_dev_start_xmit",
        "consume_skb",
        "netfilter",
    ] {
        assert!(!attached.contains(global), "{global}: {attached}");
    }
    let hops = run.hops();
    for stage in ["tap", "bridge", "routing", "egress"] {
        assert!(
            hops.iter()
                .any(|h| h["dir"] == "request" && h["stage"] == stage),
            "no request hop at {stage}:\n{}",
            run.dump()
        );
    }
    assert!(
        hops.iter()
            .any(|h| h["dir"] == "reply" && h["point"] == "tap_egress"),
        "{}",
        run.dump()
    );
    // The reply was seen before de-NAT at the uplink.
    assert!(
        hops.iter().any(|h| h["dir"] == "reply"
            && h["device"] == "up0"
            && h["tuple"]["dst"] == "192.0.2.2"),
        "{}",
        run.dump()
    );
    assert_eq!(run.stats()["lost"], 0);
}

/// `--hooks all` adds the global hooks: each netfilter hook's entry and exit is a hop, and
/// the SNAT is seen at the POSTROUTING exit itself. The verdict is the path set's.
#[test]
fn the_full_hook_set_shows_each_netfilter_hook() {
    let lab = lab(LabOptions::default());
    let (run, got) = ping_run(&lab, &["--proto", "icmp", "--hooks", "all"], 2);
    assert!(
        got.iter().all(Option::is_some),
        "lab itself broken: {got:?}"
    );
    let v = run.verdict();
    assert_eq!(field(v, "status"), "delivered", "{}", run.dump());
    assert_eq!(v["rewrites"][0]["at"], "POSTROUTING exit", "{}", run.dump());
    let hops = run.hops();
    for (point, dev) in [
        ("nf_enter", "br0"),
        ("nf_exit", "up0"),
        ("netif_receive", "br0"),
        ("dev_xmit", "up0"),
    ] {
        assert!(
            hops.iter().any(|h| h["dir"] == "request"
                && h["point"] == point
                && (dev.is_empty() || h["device"] == dev)),
            "no request hop {point} {dev}:\n{}",
            run.dump()
        );
    }
    // The route comes from the fib_table_lookup tracepoint here (its record read at the
    // offsets of its format file), with the table it was found in.
    assert!(
        hops.iter().any(|h| h["dir"] == "request"
            && h["point"] == "fib"
            && h["route"]["table"] == 254
            && h["route"]["err"] == 0
            && h["route"]["device"] == "up0"
            && h["route"]["gateway"] == "192.0.2.1"),
        "no route hop from the tracepoint:\n{}",
        run.dump()
    );
    let attached = run.stats()["attached"].to_string();
    assert!(attached.contains("netfilter links"), "{attached}");
    assert!(
        attached.contains("tracepoint fib:fib_table_lookup"),
        "{attached}"
    );
    assert!(!attached.contains("dev_ingress"), "{attached}");
}

/// Asserts the verdict of a run where nothing comes back.
#[track_caller]
fn assert_no_answer(got: &[Option<Reply>]) {
    assert!(
        got.iter().all(Option::is_none),
        "the fault did not break the lab: {got:?}"
    );
}

#[test]
fn forward_policy_drop_with_nftables_is_named() {
    let lab = lab(LabOptions {
        forward_drop: Some(Firewall::Nftables),
        ..Default::default()
    });
    let (run, got) = ping_run(&lab, &[], 2);
    assert_no_answer(&got);
    let v = run.verdict();
    assert_eq!(field(v, "status"), "dropped", "{}", run.dump());
    assert_eq!(field(v, "stage"), "netfilter");
    assert_eq!(field(v, "hook"), "FORWARD");
    assert_eq!(field(v, "direction"), "request");
    assert_eq!(field(v, "reason"), "NETFILTER_DROP");
    assert_eq!(field(v, "firewall"), "nftables");
    assert_eq!(field(v, "device"), "br0");
    let chains = v["chains"].to_string();
    assert!(
        chains.contains("inet labfilter forward (policy drop"),
        "{}",
        run.dump()
    );
    assert!(
        field(v, "summary").contains("FORWARD hook"),
        "{}",
        run.dump()
    );
    assert_eq!(run.code, 1);
    fix_then_delivered(
        &lab.hv,
        &run,
        v,
        "nft 'insert rule inet labfilter forward iifname \"br0\" ip saddr 10.77.0.0/24 accept' && \
         nft 'insert rule inet labfilter forward oifname \"br0\" ip daddr 10.77.0.0/24 ct state \
         established,related accept'",
        || ping_run(&lab, &[], 2).0,
    );
}

#[test]
fn forward_policy_drop_with_iptables_is_named() {
    let lab = lab(LabOptions {
        forward_drop: Some(Firewall::Iptables),
        ..Default::default()
    });
    let (run, got) = ping_run(&lab, &[], 2);
    assert_no_answer(&got);
    let v = run.verdict();
    assert_eq!(field(v, "status"), "dropped", "{}", run.dump());
    assert_eq!(field(v, "stage"), "netfilter");
    assert_eq!(field(v, "hook"), "FORWARD");
    assert_eq!(field(v, "direction"), "request");
    assert_eq!(field(v, "reason"), "NETFILTER_DROP");
    assert_eq!(field(v, "device"), "br0");
    // Debian's iptables is iptables-nft: the drop is in its `ip filter FORWARD` chain.
    assert_eq!(field(v, "firewall"), "nftables");
    assert!(
        v["chains"]
            .to_string()
            .contains("ip filter FORWARD (policy drop"),
        "{}",
        run.dump()
    );
    assert_eq!(run.code, 1);
    fix_then_delivered(
        &lab.hv,
        &run,
        v,
        "iptables -I FORWARD -i br0 -s 10.77.0.0/24 -j ACCEPT && iptables -I FORWARD -o br0 -d \
         10.77.0.0/24 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        || ping_run(&lab, &[], 2).0,
    );
}

#[test]
fn missing_masquerade_leaves_with_the_private_source_and_gets_no_reply() {
    let lab = lab(LabOptions {
        masquerade: false,
        ..Default::default()
    });
    let (run, got) = ping_run(&lab, &[], 2);
    assert_no_answer(&got);
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=no_reply stage=egress direction=request device=up0",
    );
    assert!(
        v["rewrites"].as_array().unwrap().is_empty(),
        "{}",
        run.dump()
    );
    assert!(field(v, "summary").contains("MASQUERADE"), "{}", run.dump());
    // It left the host with the guest's own address.
    assert!(
        run.hops().iter().any(|h| h["point"] == "dev_xmit"
            && h["device"] == "up0"
            && h["tuple"]["src"] == "10.77.0.2"),
        "{}",
        run.dump()
    );
    assert_eq!(run.code, 1);
    // No nat chain at all: a new `ip nat` table with one, as doctor's `nat` check says.
    fix_then_delivered(
        &lab.hv,
        &run,
        v,
        "nft 'add table ip nat' && nft 'add chain ip nat postrouting { type nat hook postrouting \
         priority srcnat; }' && nft 'add rule ip nat postrouting ip saddr 10.77.0.0/24 oifname \
         \"up0\" masquerade'",
        || ping_run(&lab, &[], 2).0,
    );
}

#[test]
fn ip_forward_off_is_a_routing_drop() {
    let lab = lab(LabOptions {
        ip_forward: false,
        ..Default::default()
    });
    let (run, got) = ping_run(&lab, &[], 2);
    assert_no_answer(&got);
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=dropped stage=routing direction=request reason=IP_INADDRERRORS",
    );
    // The sysctl to set.
    assert!(
        field(v, "summary").contains("net.ipv4.ip_forward"),
        "{}",
        run.dump()
    );
    fix_then_delivered(&lab.hv, &run, v, "sysctl -w net.ipv4.ip_forward=1", || {
        ping_run(&lab, &[], 2).0
    });
}

#[test]
fn no_route_to_dest_is_a_routing_drop() {
    let lab = lab(LabOptions::default());
    lab.hv_run(&["ip", "route", "del", "default"]);
    let (run, got) = ping_run(&lab, &[], 2);
    assert!(
        got.iter()
            .all(|r| !matches!(r, Some(Reply::IcmpEchoReply { .. }))),
        "{got:?}"
    );
    let v = run.verdict();
    assert_fields(&run, v, "status=dropped stage=routing direction=request");
    assert_eq!(v["route"]["err"], -101, "{}", run.dump());
    assert!(
        field(v, "summary").contains("ENETUNREACH"),
        "{}",
        run.dump()
    );
    assert!(field(v, "summary").contains("no route"), "{}", run.dump());
}

#[test]
fn blackhole_route_to_dest_is_a_routing_drop() {
    let lab = lab(LabOptions::default());
    lab.hv_run(&["ip", "route", "add", "blackhole", "203.0.113.0/24"]);
    let (run, got) = ping_run(&lab, &[], 2);
    assert_no_answer(&got);
    let v = run.verdict();
    assert_fields(&run, v, "status=dropped stage=routing direction=request");
    // fib_lookup answers a blackhole route with -EINVAL.
    assert_eq!(v["route"]["err"], -22, "{}", run.dump());
    assert!(field(v, "summary").contains("blackhole"), "{}", run.dump());
}

#[test]
fn tcp_syn_rejected_with_a_reset_by_the_host() {
    let lab = lab(LabOptions::default());
    lab.nft(
        "table inet labreject {\n chain forward {\n  type filter hook forward priority 0;\n  tcp dport 8080 reject with tcp reset\n }\n}\n",
    );
    let running = start(
        &lab,
        &[
            "follow",
            "vnet0",
            DEST,
            "--json",
            "--duration",
            "4",
            "--proto",
            "tcp",
        ],
    );
    let mut vm = FakeVm::attach(&lab);
    let got = vm.tcp_syn(lab.dest, 8080, 40100, Duration::from_millis(800));
    let run = running.wait();
    assert!(
        matches!(got, Some(Reply::Tcp { flags, .. }) if flags & 0x04 != 0),
        "{got:?}"
    );
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=dropped stage=netfilter hook=FORWARD direction=request",
    );
    assert!(
        field(v, "summary").contains("host answered"),
        "{}",
        run.dump()
    );
    assert!(field(v, "summary").contains("[R"), "{}", run.dump());
    // With something listening behind the host, the VM's connections let through ahead of the
    // rejecting rule are answered by the destination itself.
    lab.tcp_listen(8080);
    fix_then_delivered(
        &lab.hv,
        &run,
        v,
        "nft 'insert rule inet labreject forward iifname \"br0\" ip saddr 10.77.0.0/24 accept' && \
         nft 'insert rule inet labreject forward oifname \"br0\" ip daddr 10.77.0.0/24 ct state \
         established,related accept'",
        || {
            drop(vm);
            let running = start(
                &lab,
                &[
                    "follow",
                    "vnet0",
                    DEST,
                    "--json",
                    "--duration",
                    "3",
                    "--proto",
                    "tcp",
                ],
            );
            let mut vm = FakeVm::attach(&lab);
            let got = vm.tcp_syn(lab.dest, 8080, 40101, Duration::from_millis(800));
            assert!(
                matches!(got, Some(Reply::Tcp { flags, .. }) if flags & 0x12 == 0x12),
                "{got:?}"
            );
            running.wait()
        },
    );
}

#[test]
fn tcp_to_a_listening_port_is_delivered() {
    let lab = lab(LabOptions::default());
    lab.tcp_listen(8443);
    let running = start(
        &lab,
        &[
            "follow",
            "vnet0",
            DEST,
            "--json",
            "--duration",
            "3",
            "--proto",
            "tcp",
            "--port",
            "8443",
        ],
    );
    let mut vm = FakeVm::attach(&lab);
    let got = vm.tcp_syn(lab.dest, 8443, 40200, Duration::from_millis(800));
    let run = running.wait();
    assert!(
        matches!(got, Some(Reply::Tcp { flags, .. }) if flags & 0x12 == 0x12),
        "{got:?}"
    );
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=delivered stage=tap direction=reply device=vnet0",
    );
    assert_eq!(v["key"]["remote_port"], 8443);
    assert_eq!(run.code, 0);
}

#[test]
fn no_traffic_when_the_vm_is_silent() {
    let lab = lab(LabOptions::default());
    let run = start(
        &lab,
        &["follow", "vnet0", DEST, "--json", "--duration", "1"],
    )
    .wait();
    let v = run.verdict();
    assert_eq!(field(v, "status"), "no_traffic", "{}", run.dump());
    assert_eq!(run.code, 1);
}

#[test]
#[ignore = "prints a run for a human to read"]
fn show_text_output() {
    let lab = lab(LabOptions::default());
    let running = start(&lab, &["follow", "vnet0", DEST, "--duration", "3"]);
    let mut vm = FakeVm::attach(&lab);
    vm.ping(lab.dest, 7, 1, Duration::from_millis(500));
    vm.tcp_syn(lab.dest, 80, 40000, Duration::from_millis(500));
    let run = running.wait();
    println!("{}", run.dump());
}

/// Regenerates the recorded runs that the model's unit tests replay (`cargo xtask fixtures`
/// runs it alone).
#[test]
#[ignore = "writes kvmtrace/src/model/fixtures"]
fn record_fixtures() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/model/fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let save = |name: &str, run: &common::Run| {
        let hops: Vec<String> = run.hops().iter().map(|h| h.to_string()).collect();
        std::fs::write(dir.join(format!("{name}.jsonl")), hops.join("\n") + "\n").unwrap();
    };
    let healthy = lab(LabOptions::default());
    save("healthy", &ping_run(&healthy, &[], 2).0);
    drop(healthy);
    let nft = lab(LabOptions {
        forward_drop: Some(Firewall::Nftables),
        ..Default::default()
    });
    save("forward_drop", &ping_run(&nft, &[], 1).0);
    drop(nft);
    let nomasq = lab(LabOptions {
        masquerade: false,
        ..Default::default()
    });
    save("no_masquerade", &ping_run(&nomasq, &[], 1).0);
    drop(nomasq);
    let noroute = lab(LabOptions::default());
    noroute.hv_run(&["ip", "route", "del", "default"]);
    save("no_route", &ping_run(&noroute, &[], 1).0);
}
