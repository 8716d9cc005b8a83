//! `kvmtrace follow` over IPv6 against real packets: the lab's routed IPv6 half (fd00:77::/64
//! behind br0, 2001:db8:ffff::1 outside), a fake VM speaking NDP and ICMPv6/TCP/UDP into the
//! tap, and each IPv6 fault created for real and asserted field by field. Needs root.

mod common;

use common::{assert_fields, field, fix_then_delivered, start};
use kvmtrace_lab::lab::{Firewall, Lab, LabOptions};
use kvmtrace_lab::vm::{FakeVm, Reply6};
use std::time::Duration;

const DEST6: &str = "2001:db8:ffff::1";

/// Pings the outside over IPv6 from the fake VM while kvmtrace follows `dests`.
fn ping6_run(
    lab: &Lab,
    dests: &[&str],
    extra: &[&str],
    n: u16,
) -> (common::Run, Vec<Option<Reply6>>) {
    let mut args = vec!["follow", "vnet0"];
    args.extend_from_slice(dests);
    args.push("--json");
    if !extra.contains(&"--duration") {
        args.extend_from_slice(&["--duration", "4"]);
    }
    args.extend_from_slice(extra);
    let running = start(lab, &args);
    let mut vm = FakeVm::attach(lab);
    let mut got = Vec::new();
    for seq in 1..=n {
        got.push(vm.ping6(lab.dest6, 0x4b36, seq, Duration::from_millis(500)));
    }
    (running.wait(), got)
}

#[test]
fn healthy_ipv6_path_is_delivered_through_every_stage() {
    let lab = Lab::new(LabOptions::default());
    let (run, got) = ping6_run(&lab, &[DEST6], &[], 3);
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
    assert_eq!(v["requests"], 3, "{}", run.dump());
    assert_eq!(run.code, 0, "{}", run.dump());
    let attached = run.stats()["attached"].to_string();
    assert!(
        attached.contains("tc dev_ingress/dev_egress on up0 (route ::/0 table main)"),
        "{attached}"
    );
    let hops = run.hops();
    for stage in ["tap", "bridge", "routing", "egress"] {
        assert!(
            hops.iter()
                .any(|h| h["dir"] == "request" && h["stage"] == stage),
            "no request hop at {stage}:\n{}",
            run.dump()
        );
    }
    let req = hops
        .iter()
        .find(|h| h["dir"] == "request" && h["point"] == "tap_ingress" && h["tuple"].is_object())
        .unwrap_or_else(|| panic!("{}", run.dump()));
    assert_eq!(req["tuple"]["src"], "fd00:77::2");
    assert_eq!(req["tuple"]["dst"], DEST6);
    assert_eq!(req["tuple"]["proto"], 58);
    // No NAT66 in the lab: the request leaves with the guest's own address.
    assert!(
        hops.iter().any(|h| h["dir"] == "request"
            && h["device"] == "up0"
            && h["tuple"]["src"] == "fd00:77::2"),
        "{}",
        run.dump()
    );
    assert!(
        hops.iter()
            .any(|h| h["dir"] == "reply" && h["point"] == "tap_egress"),
        "{}",
        run.dump()
    );
    let route = hops
        .iter()
        .find(|h| h["point"] == "fib" && h["dir"] == "request")
        .unwrap_or_else(|| panic!("no route hop: {}", run.dump()));
    assert_eq!(route["route"]["device"], "up0", "{}", run.dump());
    assert_eq!(route["route"]["gateway"], "2001:db8:2::1", "{}", run.dump());
    assert_eq!(route["route"]["table"], 254, "{}", run.dump());
    assert_eq!(run.stats()["lost"], 0);
}

/// The guest resolving its gateway is seen on the tap as NDP, both ways.
#[test]
fn ndp_for_the_gateway_is_seen_on_the_tap() {
    let lab = Lab::new(LabOptions::default());
    let (run, _) = ping6_run(&lab, &[DEST6], &[], 1);
    let hops = run.hops();
    assert!(
        hops.iter().any(|h| h["point"] == "tap_ingress"
            && h["l2"]["kind"] == "ndp"
            && h["l2"]["icmp6_type"] == 135
            && h["l2"]["target"] == "fd00:77::1"),
        "{}",
        run.dump()
    );
    assert!(
        hops.iter().any(|h| h["point"] == "tap_egress"
            && h["l2"]["kind"] == "ndp"
            && h["l2"]["icmp6_type"] == 136
            && h["l2"]["target"] == "fd00:77::1"),
        "{}",
        run.dump()
    );
}

fn assert_no_answer(got: &[Option<Reply6>]) {
    assert!(
        got.iter()
            .all(|r| !matches!(r, Some(Reply6::EchoReply { .. }))),
        "the fault did not break the lab: {got:?}"
    );
}

fn assert_forward_drop(run: &common::Run, firewall: &str) {
    let v = run.verdict();
    assert_fields(
        run,
        v,
        "status=dropped stage=netfilter hook=FORWARD direction=request reason=NETFILTER_DROP",
    );
    assert_eq!(field(v, "firewall"), firewall, "{}", run.dump());
    assert_eq!(field(v, "device"), "br0", "{}", run.dump());
    assert!(
        field(v, "summary").contains("FORWARD hook"),
        "{}",
        run.dump()
    );
}

#[test]
fn ip6tables_forward_drop_is_named() {
    let lab = Lab::new(LabOptions {
        forward6_drop: Some(Firewall::Iptables),
        ..LabOptions::default()
    });
    let (run, got) = ping6_run(&lab, &[DEST6], &[], 2);
    assert_no_answer(&got);
    // ip6tables on Debian 12 is the nf_tables back end.
    assert_forward_drop(&run, "nftables");
    fix_then_delivered(
        &lab.hv,
        &run,
        run.verdict(),
        "ip6tables -I FORWARD -i br0 -s fd00:77::/64 -j ACCEPT && ip6tables -I FORWARD -o br0 -d \
         fd00:77::/64 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        || ping6_run(&lab, &[DEST6], &[], 2).0,
    );
}

#[test]
fn nft_ip6_forward_drop_is_named() {
    let lab = Lab::new(LabOptions {
        forward6_drop: Some(Firewall::Nftables),
        ..LabOptions::default()
    });
    let (run, got) = ping6_run(&lab, &[DEST6], &[], 2);
    assert_no_answer(&got);
    assert_forward_drop(&run, "nftables");
    fix_then_delivered(
        &lab.hv,
        &run,
        run.verdict(),
        "nft 'insert rule ip6 labfilter6 forward iifname \"br0\" ip6 saddr fd00:77::/64 accept' \
         && nft 'insert rule ip6 labfilter6 forward oifname \"br0\" ip6 daddr fd00:77::/64 ct \
         state established,related accept'",
        || ping6_run(&lab, &[DEST6], &[], 2).0,
    );
}

#[test]
fn ipv6_forwarding_off_is_a_routing_drop() {
    let lab = Lab::new(LabOptions {
        ip6_forward: false,
        ..LabOptions::default()
    });
    let (run, got) = ping6_run(&lab, &[DEST6], &[], 2);
    assert_no_answer(&got);
    let v = run.verdict();
    assert_fields(&run, v, "status=dropped stage=routing direction=request");
    assert!(
        field(v, "summary").contains("net.ipv6.conf.all.forwarding"),
        "{}",
        run.dump()
    );
    fix_then_delivered(
        &lab.hv,
        &run,
        v,
        "sysctl -w net.ipv6.conf.all.forwarding=1",
        || ping6_run(&lab, &[DEST6], &[], 2).0,
    );
}

#[test]
fn no_ipv6_route_is_a_routing_drop() {
    let lab = Lab::new(LabOptions::default());
    lab.hv_run(&["ip", "-6", "route", "del", "default"]);
    let (run, got) = ping6_run(&lab, &[DEST6], &[], 2);
    assert_no_answer(&got);
    let v = run.verdict();
    assert_fields(&run, v, "status=dropped stage=routing direction=request");
    assert!(field(v, "summary").contains("no route"), "{}", run.dump());
}

#[test]
fn ipv6_blackhole_and_unreachable_routes_are_named_with_their_table() {
    for (kind, word) in [("blackhole", "blackhole"), ("unreachable", "unreachable")] {
        let lab = Lab::new(LabOptions::default());
        lab.hv_run(&[
            "ip",
            "-6",
            "route",
            "add",
            kind,
            "2001:db8:ffff::/48",
            "table",
            "main",
        ]);
        let (run, got) = ping6_run(&lab, &[DEST6], &[], 2);
        assert_no_answer(&got);
        let v = run.verdict();
        assert_eq!(field(v, "status"), "dropped", "{kind}: {}", run.dump());
        assert_eq!(field(v, "stage"), "routing", "{kind}: {}", run.dump());
        assert_eq!(field(v, "direction"), "request", "{kind}: {}", run.dump());
        let s = field(v, "summary");
        assert!(
            s.contains(word) && s.contains("main"),
            "{kind}: {}",
            run.dump()
        );
    }
}

#[test]
fn an_ipv6_gateway_that_does_not_answer_ndp_is_named() {
    let lab = Lab::new(LabOptions::default());
    lab.hv_run(&[
        "ip",
        "-6",
        "route",
        "replace",
        "default",
        "via",
        "2001:db8:2::99",
        "dev",
        "up0",
    ]);
    // The neighbour entry fails ~3 s after the request (3 solicitations, 1 s apart): 8 s
    // leaves the drop well inside the run on a loaded machine.
    let (run, got) = ping6_run(&lab, &[DEST6], &["--duration", "8"], 1);
    assert_no_answer(&got);
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=dropped stage=egress direction=request device=up0",
    );
    // IPv6's neighbour code frees the queued packet without a specific reason.
    assert!(
        field(v, "location").starts_with("neigh_invalidate"),
        "{}",
        run.dump()
    );
    assert!(field(v, "summary").contains("NDP"), "{}", run.dump());
    assert!(
        field(v, "summary").contains("2001:db8:2::99"),
        "{}",
        run.dump()
    );
}

#[test]
fn too_big_for_the_uplink_gets_packet_too_big_with_the_mtu() {
    let lab = Lab::new(LabOptions::default());
    lab.hv_run(&["ip", "link", "set", "up0", "mtu", "1280"]);
    let running = start(
        &lab,
        &["follow", "vnet0", DEST6, "--json", "--duration", "3"],
    );
    let mut vm = FakeVm::attach(&lab);
    let got = vm.ping6_sized(lab.dest6, 0x4536, 1, 1400, Duration::from_millis(800));
    let run = running.wait();
    assert!(
        matches!(
            got,
            Some(Reply6::IcmpError {
                icmp_type: 2,
                mtu: Some(1280),
                ..
            })
        ),
        "{got:?}"
    );
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=dropped reason=PKT_TOO_BIG direction=request stage=egress device=up0",
    );
    let s = field(v, "summary");
    assert!(
        s.contains("MTU 1280") && s.contains("up0"),
        "{}",
        run.dump()
    );
    // The host's packet-too-big reached the guest, with its MTU.
    assert!(
        run.hops().iter().any(|h| h["point"] == "tap_egress"
            && h["icmp_type"] == 2
            && h["tuple"]["proto"] == 58
            && h["icmp_mtu"] == 1280),
        "{}",
        run.dump()
    );
    // The uplink raised to the VM side's MTU (br0's 1500): the same packet goes through.
    fix_then_delivered(&lab.hv, &run, v, "ip link set dev up0 mtu 1500", || {
        drop(vm);
        let running = start(
            &lab,
            &["follow", "vnet0", DEST6, "--json", "--duration", "3"],
        );
        let mut vm = FakeVm::attach(&lab);
        let got = vm.ping6_sized(lab.dest6, 0x4536, 2, 1400, Duration::from_millis(800));
        assert!(matches!(got, Some(Reply6::EchoReply { .. })), "{got:?}");
        running.wait()
    });
}

#[test]
fn an_ipv6_reverse_path_filter_rule_is_named() {
    let lab = Lab::new(LabOptions::default());
    // The guest learns its gateway first: the rule drops its NDP too.
    let mut vm = FakeVm::attach(&lab);
    assert!(
        vm.resolve_gateway6(Duration::from_secs(2)),
        "no NA from the gateway"
    );
    // The way back to the guest leaves through up0, so `fib saddr . iif oif missing` drops
    // its packets in PREROUTING (what `ip6tables -m rpfilter` and firewalld do).
    lab.hv_run(&[
        "ip",
        "-6",
        "route",
        "add",
        "fd00:77::2/128",
        "via",
        "2001:db8:2::1",
        "dev",
        "up0",
    ]);
    lab.nft(
        "table ip6 labrpf {\n chain pre {\n type filter hook prerouting priority raw;\n \
         fib saddr . iif oif missing drop\n }\n}\n",
    );
    let running = start(
        &lab,
        &["follow", "vnet0", DEST6, "--json", "--duration", "2"],
    );
    vm.send_echo6(lab.dest6, 0x4848, 1);
    let run = running.wait();
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=dropped stage=netfilter hook=PREROUTING direction=request reason=NETFILTER_DROP",
    );
}

#[test]
fn router_solicitations_without_an_advertisement_are_named() {
    let lab = Lab::new(LabOptions::default());
    let running = start(
        &lab,
        &["follow", "vnet0", DEST6, "--json", "--duration", "2"],
    );
    let mut vm = FakeVm::attach(&lab);
    for _ in 0..3 {
        vm.router_solicit();
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = running.wait();
    let v = run.verdict();
    assert_eq!(field(v, "status"), "no_traffic", "{}", run.dump());
    let s = field(v, "summary");
    assert!(
        s.contains("router solicitation") && s.contains("3 time(s)"),
        "{}",
        run.dump()
    );
    assert!(s.contains("router advertisement"), "{}", run.dump());
}

#[test]
fn dhcpv6_solicits_without_an_answer_are_named() {
    let lab = Lab::new(LabOptions::default());
    let running = start(
        &lab,
        &["follow", "vnet0", DEST6, "--json", "--duration", "2"],
    );
    let mut vm = FakeVm::attach(&lab);
    vm.dhcpv6_solicit(0x1234);
    vm.dhcpv6_solicit(0x1235);
    let run = running.wait();
    let v = run.verdict();
    assert_eq!(field(v, "status"), "no_traffic", "{}", run.dump());
    assert!(field(v, "summary").contains("DHCPv6"), "{}", run.dump());
    assert!(field(v, "summary").contains("2 time(s)"), "{}", run.dump());
}

#[test]
fn a_gateway_nobody_owns_asked_by_ndp_is_named() {
    let lab = Lab::new(LabOptions::default());
    let running = start(
        &lab,
        &["follow", "vnet0", DEST6, "--json", "--duration", "2"],
    );
    let mut vm = FakeVm::attach(&lab);
    for _ in 0..3 {
        vm.neighbour_solicit("fd00:77::fe".parse().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = running.wait();
    let v = run.verdict();
    assert_eq!(field(v, "status"), "no_traffic", "{}", run.dump());
    let s = field(v, "summary");
    assert!(
        s.contains("who has fd00:77::fe") && s.contains("3 time(s)"),
        "{}",
        run.dump()
    );
    // br0's own address on that prefix is the gateway the guest most likely means.
    assert!(
        s.ends_with(
            "the host's br0 is fd00:77::1 on that subnet, so if fd00:77::fe is meant as the \
             guest's gateway, that setting is wrong → set the guest's default gateway to \
             fd00:77::1"
        ),
        "{}",
        run.dump()
    );
}

/// One run follows both versions: a v4 and a v6 destination, each flow with its verdict.
#[test]
fn both_versions_are_followed_at_once() {
    let lab = Lab::new(LabOptions::default());
    let running = start(
        &lab,
        &[
            "follow",
            "vnet0",
            "203.0.113.1",
            DEST6,
            "--json",
            "--duration",
            "4",
        ],
    );
    let mut vm = FakeVm::attach(&lab);
    assert!(vm
        .ping(lab.dest, 0x4b34, 1, Duration::from_millis(800))
        .is_some());
    assert!(vm
        .ping6(lab.dest6, 0x4b36, 1, Duration::from_millis(800))
        .is_some());
    let run = running.wait();
    let vs = run.verdicts();
    assert_eq!(vs.len(), 2, "{}", run.dump());
    for v in &vs {
        assert_fields(&run, v, "status=delivered device=vnet0");
    }
    let flows: Vec<String> = vs.iter().map(|v| field(v, "flow").to_string()).collect();
    assert!(flows.iter().any(|f| f.contains("203.0.113.1")), "{flows:?}");
    assert!(flows.iter().any(|f| f.contains(DEST6)), "{flows:?}");
}

#[test]
fn tcp6_to_a_listening_port_is_delivered_and_a_reset_is_the_host_answering() {
    let lab = Lab::new(LabOptions::default());
    lab.tcp_listen6(8080);
    let running = start(
        &lab,
        &[
            "follow",
            "vnet0",
            DEST6,
            "--proto",
            "tcp",
            "--port",
            "8080",
            "--json",
            "--duration",
            "3",
        ],
    );
    let mut vm = FakeVm::attach(&lab);
    let got = vm.tcp_syn6(lab.dest6, 8080, 40000, Duration::from_millis(800));
    let run = running.wait();
    assert!(matches!(got, Some(Reply6::Tcp { .. })), "{got:?}");
    let v = run.verdict();
    assert_fields(&run, v, "status=delivered direction=reply");
    assert!(
        run.hops()
            .iter()
            .any(|h| h["tuple"]["proto"] == 6 && h["tuple"]["dport"] == 8080),
        "{}",
        run.dump()
    );
}

#[test]
fn follow_refuses_two_destinations_of_one_version() {
    let lab = Lab::new(LabOptions::default());
    let out = lab
        .hv_cmd(common::BIN)
        .args(["follow", "vnet0", DEST6, "2001:db8::2", "--duration", "1"])
        .output()
        .expect("run kvmtrace");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("both IPv6"), "{err}");
}

/// `--hooks all` over IPv6: netfilter links at the IPv6 hooks show each hook's entry and exit,
/// and the route comes from the `fib6:fib6_table_lookup` tracepoint.
#[test]
fn the_full_hook_set_shows_the_ipv6_netfilter_hooks_and_fib6() {
    let lab = Lab::new(LabOptions::default());
    let (run, got) = ping6_run(&lab, &[DEST6], &["--hooks", "all"], 2);
    assert!(got.iter().all(Option::is_some), "{got:?}");
    let v = run.verdict();
    assert_eq!(field(v, "status"), "delivered", "{}", run.dump());
    let attached = run.stats()["attached"].to_string();
    assert!(attached.contains("IPv6 hooks"), "{attached}");
    assert!(
        attached.contains("tracepoint fib6:fib6_table_lookup"),
        "{attached}"
    );
    let hops = run.hops();
    for hook in ["PREROUTING", "FORWARD", "POSTROUTING"] {
        assert!(
            hops.iter()
                .any(|h| h["dir"] == "request" && h["point"] == "nf_exit" && h["nf_hook"] == hook),
            "no {hook} exit:\n{}",
            run.dump()
        );
    }
    let route = hops
        .iter()
        .find(|h| h["point"] == "fib" && h["dir"] == "request")
        .unwrap_or_else(|| panic!("no route hop: {}", run.dump()));
    assert_eq!(route["route"]["device"], "up0", "{}", run.dump());
    assert_eq!(route["route"]["gateway"], "2001:db8:2::1", "{}", run.dump());
}

/// A run following both versions, its IPv6 flow dropped by an ip6 FORWARD policy, recorded:
/// `replay` and `export --format jsonl` say exactly what the live run said, the pcapng export
/// holds IPv6 packets (ICMPv6 echo) beside the IPv4 ones, and the report names the drop.
#[test]
fn a_recorded_ipv6_drop_replays_and_exports_the_same() {
    let lab = Lab::new(LabOptions {
        forward6_drop: Some(Firewall::Nftables),
        ..LabOptions::default()
    });
    let dir = std::env::temp_dir().join(format!("{}-rec6", lab.id));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("v6.kvmtrace");
    let f = file.to_str().unwrap();
    let running = start(
        &lab,
        &[
            "follow",
            "vnet0",
            "203.0.113.1",
            DEST6,
            "--json",
            "--duration",
            "4",
            "--record",
            f,
        ],
    );
    let mut vm = FakeVm::attach(&lab);
    assert!(vm
        .ping(lab.dest, 0x5534, 1, Duration::from_millis(800))
        .is_some());
    assert!(vm
        .ping6(lab.dest6, 0x5536, 1, Duration::from_millis(800))
        .is_none());
    let live = running.wait();
    let vs = live.verdicts();
    assert_eq!(vs.len(), 2, "{}", live.dump());
    let v6 = vs
        .iter()
        .find(|v| field(v, "flow").contains(DEST6))
        .unwrap_or_else(|| panic!("{}", live.dump()));
    assert_fields(&live, v6, "status=dropped hook=FORWARD");
    common::assert_offline_equals_live(f, &live);

    let pcap = dir.join("v6.pcapng");
    let exp = common::run_plain(&[
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
            "-Y",
            "icmpv6.type == 128",
            "-T",
            "fields",
            "-e",
            "ipv6.src",
            "-e",
            "ipv6.dst",
            "-e",
            "icmpv6.echo.sequence_number",
            "-e",
            "frame.comment",
        ])
        .output()
        .expect("tshark");
    let text = String::from_utf8_lossy(&ts.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("fd00:77::2\t2001:db8:ffff::1\t1\t")),
        "{text}\n{}",
        String::from_utf8_lossy(&ts.stderr)
    );
    assert!(text.contains("NETFILTER_DROP"), "{text}");
    // The IPv4 flow's packets are in the same file.
    let ts4 = std::process::Command::new("tshark")
        .args([
            "-r",
            pcap.to_str().unwrap(),
            "-Y",
            "icmp.type == 8",
            "-T",
            "fields",
            "-e",
            "ip.dst",
        ])
        .output()
        .expect("tshark");
    assert!(String::from_utf8_lossy(&ts4.stdout).contains("203.0.113.1"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes the IPv6 fixture of the terminal UI's snapshot tests (real packets in the lab).
/// The outside has no route back to the VM's prefix: the request leaves with the guest's own
/// address and nothing comes back. IPv6 is routed, so the next step is the route back, not a
/// MASQUERADE rule.
#[test]
fn no_route_back_to_the_vm_prefix_is_no_reply_with_the_route_as_next_step() {
    let lab = Lab::new(LabOptions::default());
    lab.outside_run(&["ip", "-6", "route", "del", "fd00:77::/64"]);
    let (run, got) = ping6_run(&lab, &[DEST6], &[], 2);
    assert_no_answer(&got);
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=no_reply stage=egress device=up0 direction=request",
    );
    let s = field(v, "summary");
    assert!(
        s.contains("route back to the VM's IPv6 prefix"),
        "{}",
        run.dump()
    );
    assert!(!s.contains("add a masquerade rule"), "{}", run.dump());
}

/// The host's packet-too-big to the guest filtered in its own OUTPUT chain: that drop is the
/// root cause (the guest would have lowered its MTU), named with its hook and chain, and the
/// summary tells the black hole that follows from it.
#[test]
fn a_filtered_packet_too_big_is_named_a_pmtu_black_hole() {
    let lab = Lab::new(LabOptions::default());
    lab.hv_run(&["ip", "link", "set", "up0", "mtu", "1280"]);
    lab.nft(
        "table ip6 labptb {\n chain out {\n type filter hook output priority 0;\n \
         icmpv6 type packet-too-big drop\n }\n}\n",
    );
    let running = start(
        &lab,
        &["follow", "vnet0", DEST6, "--json", "--duration", "3"],
    );
    let mut vm = FakeVm::attach(&lab);
    let got = vm.ping6_sized(lab.dest6, 0x4537, 1, 1400, Duration::from_millis(800));
    let run = running.wait();
    assert!(got.is_none(), "the packet-too-big got through: {got:?}");
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=dropped reason=NETFILTER_DROP direction=reply stage=netfilter hook=OUTPUT",
    );
    assert_eq!(
        v["chains"][0],
        "ip6 labptb out (policy accept, priority 0)",
        "{}",
        run.dump()
    );
    let s = field(v, "summary");
    for want in [
        "larger than the MTU 1280 of up0 [PKT_TOO_BIG]",
        "black hole",
        "OUTPUT",
        "packet-too-big accept",
    ] {
        assert!(s.contains(want), "{want}: {}", run.dump());
    }
}

/// NAT66 (masquerade out of the uplink): the source rewrite is reported where the kernel does
/// it, and the reply, seen before de-NAT on the uplink, is followed back to the guest.
#[test]
fn nat66_masquerade_is_shown_as_a_rewrite() {
    let lab = Lab::new(LabOptions::default());
    lab.nft(
        "table ip6 labnat6 {\n chain post {\n type nat hook postrouting priority srcnat;\n \
         oifname \"up0\" ip6 saddr fd00:77::/64 masquerade\n }\n}\n",
    );
    let (run, got) = ping6_run(&lab, &[DEST6], &[], 2);
    assert!(got.iter().all(Option::is_some), "{got:?}");
    let v = run.verdict();
    assert_eq!(field(v, "status"), "delivered", "{}", run.dump());
    let rw = v["rewrites"].as_array().expect("rewrites");
    let src = rw
        .iter()
        .find(|r| r["field"] == "src")
        .unwrap_or_else(|| panic!("{}", run.dump()));
    assert_eq!(src["from"], "fd00:77::2", "{}", run.dump());
    assert_eq!(src["to"], "2001:db8:2::2", "{}", run.dump());
    assert_eq!(src["at"], "POSTROUTING exit", "{}", run.dump());
    assert!(
        run.hops().iter().any(|h| h["dir"] == "reply"
            && h["device"] == "up0"
            && h["tuple"]["dst"] == "2001:db8:2::2"),
        "{}",
        run.dump()
    );
}

#[test]
#[ignore = "writes kvmtrace/src/model/fixtures/forward6_drop.jsonl"]
fn record_ipv6_fixture() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/model/fixtures");
    let lab = Lab::new(LabOptions {
        forward6_drop: Some(Firewall::Nftables),
        ..LabOptions::default()
    });
    let (run, _) = ping6_run(&lab, &[DEST6], &[], 1);
    let hops: Vec<String> = run.hops().iter().map(|h| h.to_string()).collect();
    std::fs::write(dir.join("forward6_drop.jsonl"), hops.join("\n") + "\n").unwrap();
}

#[test]
#[ignore = "prints an IPv6 run for a human to read (the README's example)"]
fn show_text_output_v6() {
    let lab = Lab::new(LabOptions {
        forward6_drop: Some(Firewall::Nftables),
        ..LabOptions::default()
    });
    let running = start(
        &lab,
        &["follow", "vnet0", DEST6, "--no-tui", "--duration", "3"],
    );
    let mut vm = FakeVm::attach(&lab);
    vm.ping6(lab.dest6, 7, 1, Duration::from_millis(500));
    let run = running.wait();
    println!("{}", run.dump());
}

#[test]
fn explain_rules_names_the_ip6_rule_that_dropped_and_cleans_up() {
    let lab = Lab::new(LabOptions::default());
    lab.nft(
        "table ip6 labguard6 {\n chain forward {\n  type filter hook forward priority 0;\n  icmpv6 type echo-request drop\n }\n}\n",
    );
    let listing = lab.hv_run(&["nft", "-a", "list", "table", "ip6", "labguard6"]);
    let handle = listing
        .lines()
        .find(|l| l.contains("echo-request drop"))
        .and_then(|l| l.rsplit_once("# handle "))
        .map(|(_, h)| h.trim().to_string())
        .unwrap_or_else(|| panic!("{listing}"));
    let (run, got) = ping6_run(&lab, &[DEST6], &["--explain-rules"], 2);
    assert_no_answer(&got);
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=dropped stage=netfilter hook=FORWARD direction=request reason=NETFILTER_DROP",
    );
    assert_eq!(
        field(v, "rule"),
        format!(
            "ip6 labguard6 forward handle {handle} (FORWARD): icmpv6 type echo-request drop → drop"
        ),
        "{}",
        run.dump()
    );
    assert!(
        field(v, "summary").contains("decided by ip6 labguard6"),
        "{}",
        run.dump()
    );
    let tables = lab.hv_run(&["nft", "list", "tables"]);
    assert!(
        !tables.contains("kvmtrace_nftrace"),
        "tracing table left behind: {tables}"
    );
}

#[test]
fn explain_rules_traces_both_versions_in_one_run() {
    let lab = Lab::new(LabOptions {
        forward6_drop: Some(Firewall::Nftables),
        ..LabOptions::default()
    });
    let running = start(
        &lab,
        &[
            "follow",
            "vnet0",
            "203.0.113.1",
            DEST6,
            "--json",
            "--duration",
            "4",
            "--explain-rules",
        ],
    );
    let mut vm = FakeVm::attach(&lab);
    assert!(vm
        .ping(lab.dest, 0x4b34, 1, Duration::from_millis(800))
        .is_some());
    assert_no_answer(&[vm.ping6(lab.dest6, 0x4b36, 1, Duration::from_millis(800))]);
    let run = running.wait();
    let vs = run.verdicts();
    assert_eq!(vs.len(), 2, "{}", run.dump());
    let v6 = vs
        .iter()
        .find(|v| field(v, "flow").contains(DEST6))
        .unwrap_or_else(|| panic!("{}", run.dump()));
    assert_fields(&run, v6, "status=dropped hook=FORWARD");
    assert_eq!(
        field(v6, "rule"),
        "ip6 labfilter6 forward (FORWARD): policy drop",
        "{}",
        run.dump()
    );
    let v4 = vs
        .iter()
        .find(|v| field(v, "flow").contains("203.0.113.1"))
        .unwrap_or_else(|| panic!("{}", run.dump()));
    assert_eq!(field(v4, "status"), "delivered", "{}", run.dump());
    assert!(v4.get("rule").is_none(), "{}", run.dump());
}

/// Issue 18: an INPUT policy that drops NDP was reported as "if fd77::1 is its gateway, the
/// gateway setting is wrong", while fd77::1 was on the bridge and the firewall dropped the
/// question. The host's own address asked and not answered names the INPUT chain that keeps
/// the host from answering, and the command that lets the solicitations in (which then works).
#[test]
fn an_input_policy_dropping_the_guests_ndp_is_named_not_the_gateway() {
    let lab = Lab::new(LabOptions::default());
    lab.nft("table inet labin {\n chain input {\n  type filter hook input priority 0; policy drop;\n }\n}\n");
    let running = start(
        &lab,
        &["follow", "vnet0", DEST6, "--json", "--duration", "2"],
    );
    let mut vm = FakeVm::attach(&lab);
    for _ in 0..3 {
        vm.neighbour_solicit("fd00:77::1".parse().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = running.wait();
    let v = run.verdict();
    assert_eq!(field(v, "status"), "no_traffic", "{}", run.dump());
    let s = field(v, "summary");
    assert!(
        s.contains("fd00:77::1 is the host's own address on br0")
            && s.contains("at INPUT (inet labin input (INPUT, policy drop))"),
        "{}",
        run.dump()
    );
    assert!(!s.contains("gateway setting"), "{}", run.dump());
    // Placed where the question died, with the command as its fix (the summary's too).
    assert_fields(
        &run,
        v,
        "stage=netfilter hook=INPUT direction=request device=br0",
    );
    assert_eq!(
        v["chains"][0],
        "inet labin input (policy drop, priority 0)",
        "{}",
        run.dump()
    );
    let cmd = field(v, "fix").to_string();
    assert_eq!(
        cmd,
        "nft insert rule inet labin input icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept"
    );
    assert!(s.contains(&format!("`{cmd}`")), "{}", run.dump());
    // The fix, applied, makes the host answer.
    lab.nft(&format!("{}\n", cmd.trim_start_matches("nft ")));
    assert!(
        vm.resolve6("fd00:77::1".parse().unwrap(), Duration::from_secs(2))
            .is_some(),
        "the host answers once the rule is in"
    );
}

/// A raw ICMPv6 socket in the lab's hypervisor namespace: what the host's router advertisement
/// service (radvd) reads router solicitations from. The kernel hands it every ICMPv6 message
/// that passed INPUT (`raw6_local_deliver` runs after NF_INET_LOCAL_IN, net/ipv6/ip6_input.c).
fn icmp6_listener(lab: &Lab) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd as _;
    kvmtrace_lab::lab::in_netns(&lab.hv, || {
        // SAFETY: socket(2) returns a new fd or -1.
        let fd = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: fd is ours and open.
        unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
    })
    .expect("enter the hypervisor namespace")
}

/// Whether a router solicitation (ICMPv6 133) from `source` arrives on `sock` within `wait`.
fn router_solicit_seen(
    sock: &std::os::fd::OwnedFd,
    source: std::net::Ipv6Addr,
    wait: Duration,
) -> bool {
    use std::os::fd::AsRawFd as _;
    let deadline = std::time::Instant::now() + wait;
    let mut buf = [0u8; 1500];
    while std::time::Instant::now() < deadline {
        let mut from: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: buffers of the sizes given; non-blocking receive.
        let n = unsafe {
            libc::recvfrom(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&mut from as *mut libc::sockaddr_in6).cast(),
                &mut len,
            )
        };
        if n > 0 && buf[0] == 133 && from.sin6_addr.s6_addr == source.octets() {
            return true;
        }
        if n <= 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    false
}

/// Issue 18: the guest's router solicitations reach the host (fd00:77::1 on br0, forwarding
/// on: a router), whose INPUT policy drops them before a router advertisement service can hear
/// them. Named as the host's INPUT with the chain, the message and its sender (not "nothing
/// advertises a prefix"), and the `fix`, applied, lets the next solicitation in.
#[test]
fn an_input_policy_dropping_the_guests_router_solicitations_is_named_and_fixed() {
    let lab = Lab::new(LabOptions::default());
    lab.nft("table inet labin {\n chain input {\n  type filter hook input priority 0; policy drop;\n }\n}\n");
    let listener = icmp6_listener(&lab);
    let running = start(
        &lab,
        &["follow", "vnet0", DEST6, "--json", "--duration", "2"],
    );
    let mut vm = FakeVm::attach(&lab);
    let ll = vm.link_local();
    for _ in 0..2 {
        vm.router_solicit();
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = running.wait();
    assert!(
        !router_solicit_seen(&listener, ll, Duration::from_millis(300)),
        "the INPUT policy should drop the solicitations"
    );
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=no_traffic stage=netfilter hook=INPUT direction=request device=br0",
    );
    assert_eq!(
        v["chains"],
        serde_json::json!(["inet labin input (policy drop, priority 0)"]),
        "{}",
        run.dump()
    );
    let s = field(v, "summary");
    assert!(
        s.contains(&format!(
            "the guest ({ll}, 52:54:00:4b:54:02 on vnet0) sent a router solicitation (IPv6) 2 \
             time(s) and got no answer: the host is on its network (fd00:77::1 on br0) and its \
             firewall drops the guest's router solicitations (icmpv6 133) at INPUT (inet labin \
             input (INPUT, policy drop)), so a router advertisement service on the host (radvd, \
             dnsmasq `enable-ra`) never hears them → let them in: `nft 'insert rule inet labin \
             input icmpv6 type nd-router-solicit accept'`"
        )),
        "{}",
        run.dump()
    );
    assert!(!s.contains("nothing advertises"), "{}", run.dump());
    let fix = "nft 'insert rule inet labin input icmpv6 type nd-router-solicit accept'";
    assert_eq!(field(v, "fix"), fix, "{}", run.dump());
    let out = lab
        .hv_cmd("sh")
        .args(["-c", fix])
        .output()
        .expect("run the fix");
    assert!(out.status.success(), "{out:?}");
    vm.router_solicit();
    assert!(
        router_solicit_seen(&listener, ll, Duration::from_secs(2)),
        "the solicitation reaches the host after the fix"
    );
}

/// Issue 18, DHCPv6: the guest's solicits to all-DHCP-servers (ff02::1:2, udp 547) reach the
/// host (fd00:77::1 on br0), where a DHCPv6 server listens (here a socket on udp 547 that joined
/// the group on br0, as dnsmasq's does), and the INPUT policy drops them. Named as the host's
/// INPUT with the message and its sender; the `fix`, applied, lets the next solicit reach it.
#[test]
fn an_input_policy_dropping_the_guests_dhcpv6_is_named_and_fixed() {
    let lab = Lab::new(LabOptions::default());
    lab.nft("table inet labin {\n chain input {\n  type filter hook input priority 0; policy drop;\n }\n}\n");
    let br0: u32 = lab
        .hv_run(&["cat", "/sys/class/net/br0/ifindex"])
        .trim()
        .parse()
        .expect("br0's ifindex");
    let server = kvmtrace_lab::lab::in_netns(&lab.hv, || {
        let s = std::net::UdpSocket::bind("[::]:547").expect("bind udp 547");
        s.join_multicast_v6(&"ff02::1:2".parse().unwrap(), br0)
            .expect("join all-DHCP-servers on br0");
        s
    })
    .expect("enter the hypervisor namespace");
    server
        .set_read_timeout(Some(Duration::from_millis(700)))
        .expect("timeout");
    let running = start(
        &lab,
        &["follow", "vnet0", DEST6, "--json", "--duration", "2"],
    );
    let mut vm = FakeVm::attach(&lab);
    let ll = vm.link_local();
    for xid in [0x4b61, 0x4b62] {
        vm.dhcpv6_solicit(xid);
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = running.wait();
    let mut buf = [0u8; 1500];
    assert!(
        server.recv_from(&mut buf).is_err(),
        "the INPUT policy should drop the solicits"
    );
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=no_traffic stage=netfilter hook=INPUT direction=request device=br0",
    );
    assert_eq!(
        v["chains"],
        serde_json::json!(["inet labin input (policy drop, priority 0)"]),
        "{}",
        run.dump()
    );
    assert!(
        field(v, "summary").contains(
            "the guest (52:54:00:4b:54:02 on vnet0) asked DHCPv6 for an address 2 time(s) and \
             got no answer: the host is on its network (fd00:77::1 on br0) and its firewall \
             drops the guest's DHCPv6 solicits (udp 547) at INPUT (inet labin input (INPUT, \
             policy drop)), so a DHCPv6 server on the host (dnsmasq) never hears them → let \
             them in: `nft 'insert rule inet labin input udp dport 547 accept'`"
        ),
        "{}",
        run.dump()
    );
    let fix = "nft 'insert rule inet labin input udp dport 547 accept'";
    assert_eq!(field(v, "fix"), fix, "{}", run.dump());
    let out = lab
        .hv_cmd("sh")
        .args(["-c", fix])
        .output()
        .expect("run the fix");
    assert!(out.status.success(), "{out:?}");
    vm.dhcpv6_solicit(0x4b63);
    let (n, from) = server
        .recv_from(&mut buf)
        .expect("the solicit reaches the host's DHCPv6 socket after the fix");
    assert_eq!(from.ip(), std::net::IpAddr::from(ll));
    assert_eq!(from.port(), 546);
    assert!(n >= 4, "{n} bytes");
    assert_eq!(buf[..4], [1, 0, 0x4b, 0x63], "a SOLICIT with the third xid");
}
