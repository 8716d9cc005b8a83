//! Diagnosis depth: each common way a VM's path breaks, created in a lab and named by the
//! verdict with its evidence.

mod common;

use common::{assert_fields, field, fix_then_delivered, start, Run};
use kvmtrace_lab::lab::{Lab, LabOptions};
use kvmtrace_lab::vm::{FakeVm, Reply};
use std::time::Duration;

const DEST: &str = "203.0.113.1";

fn ping_run(lab: &Lab, extra: &[&str], n: u16, secs: &str) -> (Run, Vec<Option<Reply>>) {
    let mut args = vec!["follow", "vnet0", DEST, "--json", "--duration", secs];
    args.extend_from_slice(extra);
    let running = start(lab, &args);
    let mut vm = FakeVm::attach(lab);
    let got = (1..=n)
        .map(|seq| vm.ping(lab.dest, 0x4444, seq, Duration::from_millis(500)))
        .collect();
    (running.wait(), got)
}

#[test]
fn a_forward_chain_without_established_accept_drops_the_reply() {
    let lab = Lab::new(LabOptions::default());
    lab.nft(
        "table inet replydrop {\n chain forward {\n  type filter hook forward priority 0; policy drop;\n  ip saddr 10.77.0.0/24 accept\n }\n}\n",
    );
    let (run, got) = ping_run(&lab, &[], 2, "3");
    assert!(got.iter().all(Option::is_none), "{got:?}");
    let v = run.verdict();
    assert_fields(&run, v, "status=dropped direction=reply stage=netfilter hook=FORWARD reason=NETFILTER_DROP device=up0");
    assert!(
        field(v, "summary").contains("established"),
        "{}",
        run.dump()
    );
    // The request itself was rewritten and left: the SNAT is still reported.
    assert_eq!(v["rewrites"][0]["field"], "src", "{}", run.dump());
    // Only the replies need letting through.
    fix_then_delivered(
        &lab.hv,
        &run,
        v,
        "nft 'insert rule inet replydrop forward oifname \"br0\" ip daddr 10.77.0.0/24 ct state \
         established,related accept'",
        || ping_run(&lab, &[], 2, "3").0,
    );
}

#[test]
fn policy_routing_into_the_vm_bridge_is_misrouted() {
    let lab = Lab::new(LabOptions::default());
    lab.hv_run(&[
        "ip",
        "route",
        "add",
        "203.0.113.0/24",
        "dev",
        "br0",
        "table",
        "100",
    ]);
    lab.hv_run(&["ip", "rule", "add", "from", "10.77.0.0/24", "lookup", "100"]);
    let (run, _) = ping_run(&lab, &[], 1, "2");
    let v = run.verdict();
    assert_fields(&run, v, "status=misrouted stage=routing direction=request");
    assert_eq!(v["route"]["table"], 100, "{}", run.dump());
    assert_eq!(v["route"]["device"], "br0", "{}", run.dump());
    assert!(field(v, "summary").contains("table 100"), "{}", run.dump());
    assert!(field(v, "summary").contains("ip rule"), "{}", run.dump());
}

/// The path hook set takes routes from bpf_fib_lookup, which knows no table: the table of an
/// error route chosen by a policy rule still comes out right, and so does a fwmark rule
/// (the lookup carries the skb's mark).
#[test]
fn a_blackhole_in_a_policy_table_and_a_fwmark_rule_are_named_with_their_table() {
    let lab = Lab::new(LabOptions::default());
    lab.hv_run(&[
        "ip",
        "route",
        "add",
        "blackhole",
        "203.0.113.0/24",
        "table",
        "101",
    ]);
    lab.hv_run(&["ip", "rule", "add", "from", "10.77.0.0/24", "lookup", "101"]);
    let (run, _) = ping_run(&lab, &[], 1, "2");
    let v = run.verdict();
    assert_fields(&run, v, "status=dropped stage=routing");
    assert_eq!(v["route"]["err"], -22, "{}", run.dump());
    assert_eq!(v["route"]["table"], 101, "{}", run.dump());
    assert!(field(v, "summary").contains("table 101"), "{}", run.dump());

    // A mark set before routing selects table 102, whose route leads back into br0.
    lab.hv_run(&["ip", "rule", "del", "from", "10.77.0.0/24", "lookup", "101"]);
    lab.hv_run(&[
        "ip",
        "route",
        "add",
        "203.0.113.0/24",
        "dev",
        "br0",
        "table",
        "102",
    ]);
    lab.hv_run(&["ip", "rule", "add", "fwmark", "0x2a", "lookup", "102"]);
    lab.nft(
        "table ip markit {\n chain pre {\n  type filter hook prerouting priority -300;\n  ip saddr 10.77.0.0/24 meta mark set 0x2a\n }\n}\n",
    );
    let (run, _) = ping_run(&lab, &[], 1, "2");
    let v = run.verdict();
    assert_eq!(field(v, "status"), "misrouted", "{}", run.dump());
    assert_eq!(v["route"]["table"], 102, "{}", run.dump());
    assert_eq!(v["route"]["device"], "br0", "{}", run.dump());

    // Replies marked in PREROUTING, after up0's ingress saw them: looked up again as they
    // leave br0, with the mark, so the route shown is table 103's. (A new lab: the misrouted
    // ping left an un-NATed conntrack entry for the same ICMP id.)
    drop(lab);
    let lab = Lab::new(LabOptions::default());
    lab.hv_run(&[
        "ip",
        "route",
        "add",
        "10.77.0.0/24",
        "dev",
        "br0",
        "table",
        "103",
    ]);
    lab.hv_run(&["ip", "rule", "add", "fwmark", "0x2b", "lookup", "103"]);
    lab.nft(
        "table ip markreply {\n chain pre {\n  type filter hook prerouting priority -300;\n  iifname \"up0\" meta mark set 0x2b\n }\n}\n",
    );
    let (run, got) = ping_run(&lab, &[], 1, "2");
    assert!(
        matches!(got.first(), Some(Some(Reply::IcmpEchoReply { .. }))),
        "{got:?}"
    );
    assert_eq!(
        field(run.verdict(), "status"),
        "delivered",
        "{}",
        run.dump()
    );
    let reply_routes: Vec<_> = run
        .hops()
        .into_iter()
        .filter(|h| h["dir"] == "reply" && h["stage"] == "routing")
        .collect();
    let last = reply_routes.last().expect("a reply route hop");
    assert_eq!(last["route"]["table"], 103, "{}", run.dump());
    assert_eq!(last["route"]["device"], "br0", "{}", run.dump());
}

#[test]
fn an_upstream_gateway_that_does_not_answer_arp_is_named() {
    let lab = Lab::new(LabOptions::default());
    lab.hv_run(&[
        "ip",
        "route",
        "replace",
        "default",
        "via",
        "192.0.2.99",
        "dev",
        "up0",
    ]);
    let (run, _) = ping_run(&lab, &[], 1, "5");
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=dropped stage=egress direction=request device=up0 reason=NEIGH_FAILED",
    );
    assert!(field(v, "summary").contains("192.0.2.99"), "{}", run.dump());
}

#[test]
fn too_big_with_df_gets_frag_needed_and_the_mtu() {
    let lab = Lab::new(LabOptions::default());
    lab.hv_run(&["ip", "link", "set", "up0", "mtu", "1000"]);
    let running = start(
        &lab,
        &["follow", "vnet0", DEST, "--json", "--duration", "3"],
    );
    let mut vm = FakeVm::attach(&lab);
    vm.dont_fragment = true;
    let got = vm.ping_sized(lab.dest, 0x4545, 1, 1400, Duration::from_millis(800));
    let run = running.wait();
    assert!(
        matches!(
            got,
            Some(Reply::IcmpError {
                icmp_type: 3,
                code: 4,
                ..
            })
        ),
        "{got:?}"
    );
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=dropped reason=PKT_TOO_BIG direction=request",
    );
    // Dropped in ip_forward, for the MTU of the device the route chose.
    assert_fields(&run, v, "stage=egress device=up0");
    let s = field(v, "summary");
    assert!(
        s.contains("MTU 1000") && s.contains("up0"),
        "{}",
        run.dump()
    );
    // The uplink raised to the VM side's MTU (br0's 1500): the same packet goes through.
    fix_then_delivered(&lab.hv, &run, v, "ip link set dev up0 mtu 1500", || {
        drop(vm);
        let running = start(
            &lab,
            &["follow", "vnet0", DEST, "--json", "--duration", "3"],
        );
        let mut vm = FakeVm::attach(&lab);
        vm.dont_fragment = true;
        let got = vm.ping_sized(lab.dest, 0x4545, 2, 1400, Duration::from_millis(800));
        assert!(matches!(got, Some(Reply::IcmpEchoReply { .. })), "{got:?}");
        running.wait()
    });
}

#[test]
fn strict_reverse_path_filtering_is_named() {
    let lab = Lab::new(LabOptions::default());
    // The way back to the guest now leaves through up0, not br0: strict rp_filter on br0 drops.
    lab.hv_run(&[
        "ip",
        "route",
        "add",
        "10.77.0.2/32",
        "via",
        "192.0.2.1",
        "dev",
        "up0",
    ]);
    // The replies come back anyway: marked where they enter (up0), they are routed by a rule
    // for the mark to a table that sends the guest's subnet to br0. The reverse-path check
    // looks the source up without the mark (src_valid_mark = 0, `IN_DEV_SRC_VMARK` in
    // __fib_validate_source, net/ipv4/fib_frontend.c), so only the check is broken and
    // loosening it repairs the path.
    lab.nft(
        "table ip labmark {\n chain pre {\n  type filter hook prerouting priority mangle;\n  iifname \"up0\" meta mark set 1\n }\n}\n",
    );
    lab.hv_run(&[
        "ip",
        "route",
        "add",
        "10.77.0.0/24",
        "dev",
        "br0",
        "table",
        "100",
    ]);
    lab.hv_run(&[
        "ip", "rule", "add", "fwmark", "1", "lookup", "100", "pref", "100",
    ]);
    lab.hv_run(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1"]);
    lab.hv_run(&["sysctl", "-qw", "net.ipv4.conf.br0.rp_filter=1"]);
    let running = start(
        &lab,
        &["follow", "vnet0", DEST, "--json", "--duration", "2"],
    );
    let mut vm = FakeVm::attach(&lab);
    // The host no longer answers the guest's ARP on br0 (the same check): a guest that
    // learned the gateway's MAC before still sends.
    let mac = lab.hv_run(&["cat", "/sys/class/net/br0/address"]);
    vm.send_echo_to_mac(lab.dest, 0x4848, 1, parse_mac(mac.trim()));
    let run = running.wait();
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=dropped stage=routing direction=request reason=IP_RPFILTER",
    );
    assert!(field(v, "summary").contains("rp_filter"), "{}", run.dump());
    // Loose mode on br0 alone is enough although `all` stays strict (the kernel takes the
    // larger value).
    fix_then_delivered(
        &lab.hv,
        &run,
        v,
        "sysctl -w net.ipv4.conf.br0.rp_filter=2",
        || {
            drop(vm);
            ping_run(&lab, &[], 2, "3").0
        },
    );
}

/// Makes the host's neighbour entry for the outside gateway permanent, so that packets reach
/// up0's queue instead of waiting for ARP.
fn pin_gateway_neighbour(lab: &Lab) {
    let gw_mac = lab.outside_run(&["cat", "/sys/class/net/eth0/address"]);
    lab.hv_run(&[
        "ip",
        "neigh",
        "replace",
        "192.0.2.1",
        "lladdr",
        gw_mac.trim(),
        "dev",
        "up0",
        "nud",
        "permanent",
    ]);
}

#[test]
fn uplink_qdisc_drops_are_named() {
    let lab = Lab::new(LabOptions::default());
    // The next hop is known (no ARP through the slow queue), then the queue is made tiny.
    pin_gateway_neighbour(&lab);
    lab.hv_run(&[
        "tc", "qdisc", "add", "dev", "up0", "root", "tbf", "rate", "8kbit", "burst", "1600",
        "limit", "1",
    ]);
    let running = start(
        &lab,
        &[
            "follow",
            "vnet0",
            DEST,
            "--json",
            "--duration",
            "3",
            "--budget",
            "0",
        ],
    );
    let mut vm = FakeVm::attach(&lab);
    assert!(vm.resolve_gateway(Duration::from_secs(3)));
    for seq in 0..50 {
        vm.send_echo(lab.dest, 0x4646, seq);
    }
    let run = running.wait();
    let drops: Vec<_> = run
        .hops()
        .into_iter()
        .filter(|h| h["point"] == "drop")
        .collect();
    assert!(!drops.is_empty(), "{}", run.dump());
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=dropped stage=egress direction=request device=up0 reason=QDISC_DROP",
    );
    assert!(field(v, "summary").contains("qdisc"), "{}", run.dump());
    assert!(field(v, "summary").contains("tc "), "{}", run.dump());
}

/// An uplink without carrier (its peer, the "cable", down): the kernel swaps its qdisc for one
/// that drops everything, so the drop reads QDISC_DROP. Named as the link without carrier, with
/// the device to look at, not as a full queue.
#[test]
fn an_uplink_without_carrier_is_named_as_down_not_as_a_full_queue() {
    let lab = Lab::new(LabOptions::default());
    // The next hop is known, so the packets reach up0's queue rather than wait for ARP.
    pin_gateway_neighbour(&lab);
    lab.outside_run(&["ip", "link", "set", "eth0", "down"]);
    let (run, got) = ping_run(&lab, &[], 2, "3");
    assert!(got.iter().all(Option::is_none), "{got:?}");
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=dropped stage=egress direction=request device=up0 reason=QDISC_DROP",
    );
    assert!(
        field(v, "summary").ends_with(
            "was dropped on up0 [QDISC_DROP]: up0 has no carrier, and a device without a \
             working link drops everything it is given (its qdisc is swapped for one that \
             drops) → check up0's cable or peer (`ip link show up0`: NO-CARRIER)"
        ),
        "{}",
        run.dump()
    );
}

/// A tap without carrier while its VM still writes to it (`ip link set vnet0 carrier off`): the
/// bridge disables the port and drops the guest's frames for its STP state. Named as the tap
/// without carrier, not as an STP setting to change.
#[test]
fn a_tap_without_carrier_is_named_not_its_stp_state() {
    let lab = Lab::new(LabOptions::default());
    let running = start(
        &lab,
        &["follow", "vnet0", DEST, "--json", "--duration", "3"],
    );
    let mut vm = FakeVm::attach(&lab);
    assert!(vm.resolve_gateway(Duration::from_secs(3)));
    lab.hv_run(&["ip", "link", "set", "vnet0", "carrier", "off"]);
    // The bridge learns of it through the link watcher, within a second or so.
    let disabled = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        lab.hv_run(&["cat", "/sys/class/net/vnet0/brport/state"])
            .trim()
            == "0"
    });
    assert!(disabled, "br0 did not disable vnet0 without carrier");
    let got: Vec<_> = (1..=2)
        .map(|seq| vm.ping(lab.dest, 0x4747, seq, Duration::from_millis(500)))
        .collect();
    let run = running.wait();
    assert!(got.iter().all(Option::is_none), "{got:?}");
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=dropped direction=request stage=bridge device=vnet0",
    );
    assert_eq!(
        field(v, "reason"),
        "BRIDGE_INGRESS_STP_STATE",
        "{}",
        run.dump()
    );
    assert!(
        field(v, "summary").ends_with(
            "was dropped by br0 at port vnet0: vnet0 has no carrier, so br0 disabled the port \
             [BRIDGE_INGRESS_STP_STATE] → nothing holds the tap open or the VM's NIC link is \
             down: start the VM or re-attach its network interface (`ip link show vnet0` says \
             NO-CARRIER)"
        ),
        "{}",
        run.dump()
    );
}

/// A tap outside any bridge, in both phases an operator meets: first the guest's frames (sent to
/// the bridge's MAC it learned earlier) die as OTHERHOST on the tap; then, once the host answers
/// the guest's ARP on the tap itself (proxy_arp there), the requests are routed out and their
/// replies, routed to br0 where the guest is not, die as NEIGH_FAILED on br0. Both verdicts must
/// name the tap and the bridge it belongs in, never the upstream gateway.
#[test]
fn a_tap_outside_any_bridge_is_named() {
    let lab = Lab::new(LabOptions::default());
    lab.hv_run(&["ip", "link", "set", "vnet0", "nomaster"]);
    // The host answers ARP on the tap and takes the guest's packets there: proxy_arp on the tap,
    // no reverse-path filter (the guest's subnet is routed to br0, not to vnet0).
    for s in [
        "net.ipv4.conf.vnet0.proxy_arp=1",
        "net.ipv4.conf.vnet0.arp_ignore=0",
        "net.ipv4.conf.all.arp_ignore=0",
        "net.ipv4.conf.vnet0.rp_filter=0",
        "net.ipv4.conf.all.rp_filter=0",
        // Give up on the guest's MAC on br0 after one ARP probe of 200 ms instead of three of
        // one second, so that the replies' NEIGH_FAILED falls well inside the run.
        "net.ipv4.neigh.br0.mcast_solicit=1",
        "net.ipv4.neigh.br0.retrans_time_ms=200",
    ] {
        lab.hv_run(&["sysctl", "-q", "-w", s]);
    }
    let running = start(
        &lab,
        &["follow", "vnet0", DEST, "--json", "--duration", "4"],
    );
    let mut vm = FakeVm::attach(&lab);
    // Phase 1: a guest that learned the bridge's MAC earlier sends to it.
    let br_mac = lab.hv_run(&["cat", "/sys/class/net/br0/address"]);
    vm.send_echo_to_mac(lab.dest, 0x4747, 1, parse_mac(br_mac.trim()));
    // Phase 2: the guest asks again and the host answers on the tap with the tap's MAC.
    assert!(
        vm.resolve_gateway(Duration::from_secs(3)),
        "the host did not answer ARP on the unbridged tap"
    );
    let tap_mac = lab.hv_run(&["cat", "/sys/class/net/vnet0/address"]);
    assert_eq!(vm.gateway_mac(), Some(parse_mac(tap_mac.trim())));
    let got = vm.ping(lab.dest, 0x4848, 1, Duration::from_millis(800));
    assert_eq!(got, None, "the reply cannot reach a guest outside br0");
    let run = running.wait();
    assert_eq!(run.verdicts().len(), 2, "{}", run.dump());
    let flow = |id: u64| {
        run.verdicts()
            .into_iter()
            .find(|v| v["key"]["guest_port"] == id)
            .unwrap_or_else(|| panic!("no verdict for id {id:#x}:\n{}", run.dump()))
    };

    let v1 = flow(0x4747);
    assert_fields(
        &run,
        v1,
        "status=dropped stage=tap device=vnet0 reason=OTHERHOST direction=request",
    );
    let s1 = field(v1, "summary");
    assert!(s1.contains("not a port of any bridge"), "{}", run.dump());
    assert!(
        s1.contains("`ip link set vnet0 master br0`"),
        "{}",
        run.dump()
    );
    assert!(!s1.contains("upstream"), "{}", run.dump());

    let v2 = flow(0x4848);
    assert_fields(&run, v2, "status=dropped stage=tap device=vnet0");
    // The host gave up on the guest's neighbour entry: NEIGH_FAILED once its solicitations
    // ran out, or QUEUE_PURGE when br0 (no port left, no carrier) flushed its entries first.
    assert!(
        ["NEIGH_FAILED", "QUEUE_PURGE"].contains(&field(v2, "reason")),
        "{}",
        run.dump()
    );
    assert_eq!(field(v2, "direction"), "reply", "{}", run.dump());
    assert_eq!(v2["requests"], 1, "{}", run.dump());
    assert_eq!(v2["replies"], 1, "{}", run.dump());
    // Where the reply died stays in the evidence: routed to br0.
    assert_eq!(v2["route"]["device"], "br0", "{}", run.dump());
    let s2 = field(v2, "summary");
    assert!(s2.contains("not a port of any bridge"), "{}", run.dump());
    assert!(s2.contains("br0"), "{}", run.dump());
    assert!(
        s2.contains("`ip link set vnet0 master br0`"),
        "{}",
        run.dump()
    );
    assert!(!s2.contains("upstream"), "{}", run.dump());
    // Both phases have the one repair; a guest that asks for its gateway again is answered by
    // br0 and reaches the outside.
    assert_eq!(field(v1, "fix"), "ip link set dev vnet0 master br0");
    fix_then_delivered(
        &lab.hv,
        &run,
        v2,
        "ip link set dev vnet0 master br0",
        || {
            drop(vm);
            ping_run(&lab, &[], 2, "3").0
        },
    );
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (o, p) in m.iter_mut().zip(s.split(':')) {
        *o = u8::from_str_radix(p, 16).unwrap();
    }
    m
}

#[test]
fn a_guest_asking_for_a_gateway_nobody_owns_is_named() {
    let lab = Lab::new(LabOptions::default());
    let running = start(
        &lab,
        &["follow", "vnet0", DEST, "--json", "--duration", "2"],
    );
    let mut vm = FakeVm::attach(&lab);
    for _ in 0..3 {
        vm.arp_request("10.77.0.254".parse().unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = running.wait();
    let v = run.verdict();
    assert_eq!(field(v, "status"), "no_traffic", "{}", run.dump());
    let s = field(v, "summary");
    assert!(
        s.contains("who has 10.77.0.254") && s.contains("gateway"),
        "{}",
        run.dump()
    );
    assert!(s.contains("3 time(s)"), "{}", run.dump());
    // The bridge's own address on that subnet is the gateway the guest most likely means.
    assert!(
        s.ends_with("→ set the guest's default gateway to 10.77.0.1"),
        "{}",
        run.dump()
    );
    assert!(
        run.hops()
            .iter()
            .any(|h| h["l2"]["kind"] == "arp" && h["l2"]["target"] == "10.77.0.254"),
        "{}",
        run.dump()
    );
}

#[test]
fn dhcp_discovers_without_an_offer_are_named() {
    let lab = Lab::new(LabOptions::default());
    let running = start(
        &lab,
        &["follow", "vnet0", DEST, "--json", "--duration", "2"],
    );
    let mut vm = FakeVm::attach(&lab);
    vm.dhcp_discover(0x1234);
    vm.dhcp_discover(0x1235);
    let run = running.wait();
    let v = run.verdict();
    assert_eq!(field(v, "status"), "no_traffic", "{}", run.dump());
    assert!(field(v, "summary").contains("DHCP"), "{}", run.dump());
    assert!(field(v, "summary").contains("2 time(s)"), "{}", run.dump());
}

/// Bridged mode: the tap and the uplink are ports of one bridge; the outside is the guest's
/// router. With br_netfilter's bridge-nf-call-iptables=1, the IPv4 FORWARD hook sees bridged
/// frames, and a drop policy there cuts the VM off.
#[test]
fn a_forward_drop_of_bridged_traffic_is_named_as_such() {
    let lab = bridged_lab();
    let set = lab
        .hv_cmd("sysctl")
        .args(["-qw", "net.bridge.bridge-nf-call-iptables=1"])
        .status()
        .expect("run sysctl");
    assert!(
        set.success(),
        "net.bridge.bridge-nf-call-iptables cannot be set: br_netfilter is not loaded \
         (`cargo xtask setup` loads it)"
    );
    lab.nft("table inet bfilter {\n chain forward {\n  type filter hook forward priority 0; policy drop;\n }\n}\n");
    let (run, got) = ping_run(&lab, &[], 2, "3");
    assert!(got.iter().all(Option::is_none), "{got:?}");
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=dropped stage=netfilter hook=FORWARD direction=request reason=NETFILTER_DROP",
    );
    assert!(field(v, "summary").contains("bridged"), "{}", run.dump());
    assert!(
        field(v, "summary").contains("bridge-nf-call-iptables"),
        "{}",
        run.dump()
    );
}

#[test]
fn a_disabled_bridge_port_is_named() {
    let lab = Lab::new(LabOptions::default());
    let mac = lab.hv_run(&["cat", "/sys/class/net/br0/address"]);
    let mut vm = FakeVm::attach(&lab);
    // After the tap has carrier (carrier up puts a port back to forwarding without STP).
    lab.hv_run(&["bridge", "link", "set", "dev", "vnet0", "state", "0"]);
    assert_eq!(
        lab.hv_run(&["cat", "/sys/class/net/vnet0/brport/state"])
            .trim(),
        "0"
    );
    let running = start(
        &lab,
        &["follow", "vnet0", DEST, "--json", "--duration", "2"],
    );
    vm.send_echo_to_mac(lab.dest, 0x5050, 1, parse_mac(mac.trim()));
    let run = running.wait();
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=dropped stage=bridge direction=request device=vnet0",
    );
    assert_eq!(
        field(v, "reason"),
        "BRIDGE_INGRESS_STP_STATE",
        "{}",
        run.dump()
    );
    assert!(field(v, "summary").contains("port"), "{}", run.dump());
    assert!(
        field(v, "summary").contains("bridge link"),
        "{}",
        run.dump()
    );
    fix_then_delivered(
        &lab.hv,
        &run,
        v,
        "bridge link set dev vnet0 state 3",
        || {
            drop(vm);
            ping_run(&lab, &[], 2, "3").0
        },
    );
}

#[test]
fn a_guest_that_does_not_answer_the_hosts_arp_is_named() {
    let lab = Lab::new(LabOptions::default());
    let mac = lab.hv_run(&["cat", "/sys/class/net/br0/address"]);
    let running = start(
        &lab,
        &["follow", "vnet0", DEST, "--json", "--duration", "2"],
    );
    let mut vm = FakeVm::attach(&lab);
    // The guest sends with a remembered gateway MAC and then stops listening: the host has
    // to ask for the guest's MAC to hand it the reply, and nobody answers.
    vm.send_echo_to_mac(lab.dest, 0x5151, 1, parse_mac(mac.trim()));
    let run = running.wait();
    let v = run.verdict();
    // The replies came back to the host but could not be handed to the guest. (stage, device
    // and direction name the request's exit, up0, although the cause is on the VM's side; issue
    // 9 part 3 is about that, so they are not pinned here.)
    assert_eq!(field(v, "status"), "no_reply", "{}", run.dump());
    // The echo reply; near the end of the run the host may add its own unreachable (after the
    // neighbour entry fails, ~3 s), which also counts as a reply.
    assert!(v["replies"].as_u64().unwrap() >= 1, "{}", run.dump());
    assert!(
        field(v, "summary").contains("never answered"),
        "{}",
        run.dump()
    );
    drop(vm);
}

#[test]
fn replies_dropped_because_the_guest_does_not_read_its_tap_are_named() {
    let lab = Lab::new(LabOptions::default());
    lab.hv_run(&["ip", "link", "set", "vnet0", "txqueuelen", "4"]);
    let running = start(
        &lab,
        &[
            "follow",
            "vnet0",
            DEST,
            "--json",
            "--duration",
            "2",
            "--budget",
            "0",
        ],
    );
    let mut vm = FakeVm::attach(&lab);
    assert!(vm.resolve_gateway(Duration::from_secs(3)));
    // Send and never read: the tap's queue towards the guest fills up.
    for seq in 0..30 {
        vm.send_echo(lab.dest, 0x5252, seq);
    }
    let run = running.wait();
    let v = run.verdict();
    // The first replies fill the tap's queue (txqueuelen 4) and count as delivered to it; the
    // rest are dropped there, which the summary names with the kernel's reason.
    assert_fields(
        &run,
        v,
        "status=delivered direction=reply stage=tap device=vnet0",
    );
    assert!(
        field(v, "summary")
            .contains("replies were dropped before the guest got them (FULL_RING on vnet0"),
        "{}",
        run.dump()
    );
    assert!(
        field(v, "summary").contains("not reading its queue"),
        "{}",
        run.dump()
    );
    drop(vm);
}

#[test]
fn explain_rules_names_the_rule_that_rejected_and_cleans_up() {
    let lab = Lab::new(LabOptions::default());
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
            "3",
            "--proto",
            "tcp",
            "--explain-rules",
        ],
    );
    let mut vm = FakeVm::attach(&lab);
    let got = vm.tcp_syn(lab.dest, 8080, 40300, Duration::from_millis(800));
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
    let rule = field(v, "rule");
    assert!(
        rule.contains("inet labreject forward handle"),
        "{}",
        run.dump()
    );
    assert!(
        rule.contains("tcp dport 8080 reject with tcp reset"),
        "{}",
        run.dump()
    );
    assert!(field(v, "summary").contains("decided by"), "{}", run.dump());
    let tables = lab.hv_run(&["nft", "list", "tables"]);
    assert!(
        !tables.contains("kvmtrace_nftrace"),
        "tracing table left behind: {tables}"
    );
}

#[test]
fn explain_rules_names_a_drop_policy() {
    let lab = Lab::new(LabOptions {
        forward_drop: Some(kvmtrace_lab::lab::Firewall::Nftables),
        ..Default::default()
    });
    let (run, _) = ping_run(&lab, &["--explain-rules"], 1, "2");
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=dropped stage=netfilter hook=FORWARD direction=request reason=NETFILTER_DROP",
    );
    let rule = field(v, "rule");
    assert!(
        rule.contains("inet labfilter forward") && rule.contains("policy drop"),
        "{}",
        run.dump()
    );
}

#[test]
fn no_traffic_runs_the_static_checks() {
    let lab = Lab::new(LabOptions::default());
    lab.hv_run(&["ip", "link", "set", "vnet0", "down"]);
    let run = start(
        &lab,
        &["follow", "vnet0", DEST, "--json", "--duration", "1"],
    )
    .wait();
    assert_eq!(
        field(run.verdict(), "status"),
        "no_traffic",
        "{}",
        run.dump()
    );
    let checks: Vec<_> = run.lines.iter().filter(|l| l["type"] == "check").collect();
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "tap" && c["status"] == "fail"),
        "the tap being down is named: {}",
        run.dump()
    );
}

#[test]
fn a_packet_dropped_as_conntrack_invalid_is_named_with_its_rule() {
    let lab = Lab::new(LabOptions::default());
    lab.hv_run(&["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0"]);
    lab.nft(
        "table inet ctinvalid {\n chain forward {\n  type filter hook forward priority 0;\n  ct state invalid drop\n }\n}\n",
    );
    let running = start(
        &lab,
        &[
            "follow",
            "vnet0",
            DEST,
            "--json",
            "--duration",
            "2",
            "--proto",
            "tcp",
            "--explain-rules",
        ],
    );
    let mut vm = FakeVm::attach(&lab);
    assert!(vm.resolve_gateway(Duration::from_secs(3)));
    vm.tcp_stray_ack(lab.dest, 443, 40500);
    let run = running.wait();
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=dropped stage=netfilter hook=FORWARD direction=request reason=NETFILTER_DROP",
    );
    assert!(
        field(v, "rule").contains("ct state invalid drop") && field(v, "rule").contains("handle"),
        "{}",
        run.dump()
    );
}

#[test]
fn a_reject_with_icmp_is_the_host_answering() {
    let lab = Lab::new(LabOptions::default());
    lab.nft(
        "table inet icmpreject {\n chain forward {\n  type filter hook forward priority 0;\n  ip daddr 203.0.113.1 reject with icmp type host-unreachable\n }\n}\n",
    );
    let (run, got) = ping_run(&lab, &[], 1, "2");
    assert!(
        matches!(
            got[0],
            Some(Reply::IcmpError {
                icmp_type: 3,
                code: 1,
                ..
            })
        ),
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
    assert!(
        field(v, "summary").contains("dest-unreachable"),
        "{}",
        run.dump()
    );
    // An accept for the VM's connections ahead of the rejecting rule, in the one forward chain.
    fix_then_delivered(
        &lab.hv,
        &run,
        v,
        "nft 'insert rule inet icmpreject forward iifname \"br0\" ip saddr 10.77.0.0/24 accept' && \
         nft 'insert rule inet icmpreject forward oifname \"br0\" ip daddr 10.77.0.0/24 ct state \
         established,related accept'",
        || ping_run(&lab, &[], 2, "3").0,
    );
}

#[test]
fn a_tap_on_the_wrong_bridge_is_named() {
    let lab = Lab::new(LabOptions::default());
    let mac = lab.hv_run(&["cat", "/sys/class/net/br0/address"]);
    lab.hv_run(&["ip", "link", "add", "br1", "type", "bridge"]);
    lab.hv_run(&["ip", "link", "set", "br1", "up"]);
    lab.hv_run(&["ip", "link", "set", "vnet0", "master", "br1"]);
    let running = start(
        &lab,
        &["follow", "vnet0", DEST, "--json", "--duration", "2"],
    );
    let mut vm = FakeVm::attach(&lab);
    vm.send_echo_to_mac(lab.dest, 0x5353, 1, parse_mac(mac.trim()));
    let run = running.wait();
    let v = run.verdict();
    // br1 has no address but the host still forwards what arrives on it; the replies are
    // routed to br0, where the VM no longer is.
    // (stage, device and direction name the request's exit, up0, although the cause is the
    // tap's bridge; issue 9 part 3 is about that, so they are not pinned here.)
    // no_reply while the host still solicits the guest on br0; dropped (same cause, the tap,
    // docs/diagnosis.md) once it gave up or br0 flushed its neighbour entries.
    match field(v, "status") {
        "no_reply" => {}
        "dropped" => {
            assert_fields(&run, v, "stage=tap device=vnet0");
            assert!(
                ["NEIGH_FAILED", "QUEUE_PURGE"].contains(&field(v, "reason")),
                "{}",
                run.dump()
            );
        }
        other => panic!("status {other}: {}", run.dump()),
    }
    let s = field(v, "summary");
    assert!(
        s.contains("wrong bridge") && s.contains("br1") && s.contains("br0"),
        "{}",
        run.dump()
    );
    fix_then_delivered(&lab.hv, &run, v, "ip link set dev vnet0 master br0", || {
        drop(vm);
        ping_run(&lab, &[], 2, "3").0
    });
}

/// The bridged lab of `a_forward_drop_of_bridged_traffic_is_named_as_such`: up0 a port of br0,
/// the outside on the VM's subnet, no NAT; bridge netfilter off unless asked.
fn bridged_lab() -> Lab {
    let lab = Lab::new(LabOptions::default());
    lab.hv_run(&["nft", "delete", "table", "ip", "labnat"]);
    lab.hv_run(&["ip", "addr", "flush", "dev", "br0"]);
    lab.hv_run(&["ip", "addr", "flush", "dev", "up0"]);
    lab.hv_run(&["ip", "link", "set", "up0", "master", "br0"]);
    lab.outside_run(&["ip", "addr", "add", "10.77.0.1/24", "dev", "eth0"]);
    let mut vm = FakeVm::attach(&lab);
    assert!(
        vm.ping(lab.dest, 0x4a4a, 1, Duration::from_millis(800))
            .is_some(),
        "bridged lab broken"
    );
    lab
}

/// Issue 18: a frame dropped by an nftables `bridge` table was "dropped by br0 at port eno9
/// [NETFILTER_DROP]", with no hook, table or chain. The bridge hook, its family, the table and
/// chain are named, with the next step.
#[test]
fn a_bridge_family_firewall_drop_names_its_hook_table_and_chain() {
    let lab = bridged_lab();
    // IPv4 only: the guest's ARP still crosses the bridge.
    lab.nft("table bridge labbr {\n chain forward {\n  type filter hook forward priority 0;\n  ether type ip drop\n }\n}\n");
    let (run, got) = ping_run(&lab, &[], 2, "3");
    assert!(got.iter().all(Option::is_none), "{got:?}");
    let v = run.verdict();
    assert_fields(&run, v, "status=dropped stage=netfilter hook=FORWARD family=bridge firewall=nftables direction=request reason=NETFILTER_DROP");
    assert_eq!(
        v["chains"][0],
        "bridge labbr forward (policy accept, priority 0)",
        "{}",
        run.dump()
    );
    let s = field(v, "summary");
    assert!(
        s.contains("bridge FORWARD hook") && s.contains("a rule in bridge labbr forward"),
        "{}",
        run.dump()
    );
    assert!(!s.contains("bridge-nf-call-iptables"), "{}", run.dump());

    // The same table dropping at the bridge's input in the routed lab: the guest's packets
    // to the host (its gateway) die at the bridge INPUT hook of br0.
    drop(lab);
    let lab = Lab::new(LabOptions::default());
    lab.nft("table bridge labbrin {\n chain input {\n  type filter hook input priority 0;\n  ip saddr 10.77.0.2 drop\n }\n}\n");
    let (run, got) = ping_run(&lab, &[], 2, "3");
    assert!(got.iter().all(Option::is_none), "{got:?}");
    let v = run.verdict();
    assert_fields(&run, v, "status=dropped hook=INPUT family=bridge");
    assert_eq!(
        v["chains"][0],
        "bridge labbrin input (policy accept, priority 0)",
        "{}",
        run.dump()
    );
    assert!(
        field(v, "summary").contains("a rule in bridge labbrin input"),
        "{}",
        run.dump()
    );
}

/// Issue 18: with `--explain-rules` a drop by an nftables `bridge` table names its rule, not
/// only its hook and chain (the tracer's `inet` table never sees a bridged frame, and `meta
/// nfproto` is NFPROTO_BRIDGE in a bridge chain: its bridge table matches the ether type). The
/// tracer changes no frame's fate (a healthy bridged ping is answered while it runs) and removes
/// both its tables on exit.
#[test]
fn explain_rules_names_the_bridge_family_rule_that_dropped() {
    let lab = bridged_lab();
    let running = start(
        &lab,
        &[
            "follow",
            "vnet0",
            DEST,
            "--json",
            "--duration",
            "3",
            "--explain-rules",
        ],
    );
    let tables = lab.hv_run(&["nft", "list", "tables"]);
    let ours: Vec<&str> = tables
        .lines()
        .filter(|l| l.contains("kvmtrace_nftrace_"))
        .collect();
    assert_eq!(ours.len(), 2, "an inet and a bridge table: {tables}");
    assert!(
        ours[0].starts_with("table inet kvmtrace_nftrace_"),
        "{tables}"
    );
    assert!(
        ours[1].starts_with("table bridge kvmtrace_nftrace_"),
        "{tables}"
    );
    let mut vm = FakeVm::attach(&lab);
    let got: Vec<Option<Reply>> = (1..=2)
        .map(|seq| vm.ping(lab.dest, 0x4444, seq, Duration::from_millis(800)))
        .collect();
    drop(vm);
    let run = running.wait();
    assert!(
        got.iter().all(Option::is_some),
        "tracing changed the path: {got:?}"
    );
    assert_eq!(
        field(run.verdict(), "status"),
        "delivered",
        "{}",
        run.dump()
    );
    assert!(run.verdict().get("rule").is_none(), "{}", run.dump());
    assert!(
        !run.stderr.contains("cannot add table bridge"),
        "{}",
        run.dump()
    );

    lab.nft("table bridge labbr {\n chain forward {\n  type filter hook forward priority 0;\n  ether type ip drop\n }\n}\n");
    let listing = lab.hv_run(&["nft", "-a", "list", "table", "bridge", "labbr"]);
    let handle: u64 = listing
        .lines()
        .find(|l| l.contains("ether type ip drop"))
        .and_then(|l| l.rsplit_once("# handle "))
        .and_then(|(_, h)| h.trim().parse().ok())
        .unwrap_or_else(|| panic!("no handle in:\n{listing}"));
    let (run, got) = ping_run(&lab, &["--explain-rules"], 2, "3");
    assert!(got.iter().all(Option::is_none), "{got:?}");
    let v = run.verdict();
    assert_fields(&run, v, "status=dropped stage=netfilter hook=FORWARD family=bridge direction=request reason=NETFILTER_DROP");
    assert_eq!(
        v["chains"][0],
        "bridge labbr forward (policy accept, priority 0)",
        "{}",
        run.dump()
    );
    assert_eq!(
        field(v, "rule"),
        format!("bridge labbr forward handle {handle} (FORWARD): ether type ip drop → drop"),
        "{}",
        run.dump()
    );
    assert!(
        field(v, "summary").ends_with(&format!(
            "; decided by bridge labbr forward handle {handle} (FORWARD): ether type ip drop → drop"
        )),
        "{}",
        run.dump()
    );
    let tables = lab.hv_run(&["nft", "list", "tables"]);
    assert!(
        !tables.contains("kvmtrace_nftrace"),
        "tracing table left behind: {tables}"
    );
}

/// Issue 18: the guest's DHCP discovers reach the host (10.77.0.1 on br0), where a DHCP server
/// listens on udp 67 (here a plain socket, as dnsmasq's), and an INPUT policy drops them. Named
/// as the host's INPUT (the chain, the message, its sender), not "no DHCP server serves its
/// network"; the `fix`, applied, lets the next discover reach the listening socket.
#[test]
fn an_input_policy_dropping_the_guests_dhcp_is_named_and_fixed() {
    let lab = Lab::new(LabOptions::default());
    lab.nft("table inet labin {\n chain input {\n  type filter hook input priority 0; policy drop;\n }\n}\n");
    let server = kvmtrace_lab::lab::in_netns(&lab.hv, || std::net::UdpSocket::bind("0.0.0.0:67"))
        .expect("enter the hypervisor namespace")
        .expect("bind udp 67");
    server
        .set_read_timeout(Some(Duration::from_millis(700)))
        .expect("timeout");
    let running = start(
        &lab,
        &["follow", "vnet0", DEST, "--json", "--duration", "2"],
    );
    let mut vm = FakeVm::attach(&lab);
    for xid in [0x4b1801, 0x4b1802] {
        vm.dhcp_discover(xid);
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = running.wait();
    let mut buf = [0u8; 1500];
    assert!(
        server.recv_from(&mut buf).is_err(),
        "the INPUT policy should drop the discover"
    );
    let v = run.verdict();
    assert_fields(&run, v, "status=no_traffic stage=netfilter hook=INPUT direction=request device=br0 firewall=nftables");
    assert_eq!(
        v["chains"],
        serde_json::json!(["inet labin input (policy drop, priority 0)"]),
        "{}",
        run.dump()
    );
    assert_eq!(
        field(v, "summary"),
        "no packet from the VM to 203.0.113.1: the guest (52:54:00:4b:54:02 on vnet0) asked \
         DHCP for an address 2 time(s) and got no answer: the host is on its network (10.77.0.1 \
         on br0) and its firewall drops the guest's DHCP requests (udp 67) at INPUT (inet labin \
         input (INPUT, policy drop)), so a DHCP server on the host (dnsmasq) never hears them → \
         let them in: `nft 'insert rule inet labin input udp dport 67 accept'`",
        "{}",
        run.dump()
    );
    let fix = "nft 'insert rule inet labin input udp dport 67 accept'";
    assert_eq!(field(v, "fix"), fix, "{}", run.dump());
    assert_eq!(run.code, 1, "{}", run.dump());
    let out = lab
        .hv_cmd("sh")
        .args(["-c", fix])
        .output()
        .expect("run the fix");
    assert!(out.status.success(), "{out:?}");
    vm.dhcp_discover(0x4b1803);
    let (n, from) = server
        .recv_from(&mut buf)
        .expect("the discover reaches the host's DHCP socket after the fix");
    assert_eq!(from, "0.0.0.0:68".parse().unwrap());
    assert!(n >= 240, "{n} bytes");
    assert_eq!(
        buf[4..8],
        0x4b1803u32.to_be_bytes(),
        "the third discover's xid"
    );
}

/// The IPv4 twin of the NDP case: an `arp` family input chain with policy drop keeps the host
/// from answering the guest's ARP for its own gateway address; named with the chain, not as
/// a wrong gateway setting, and the printed command makes the host answer.
#[test]
fn an_arp_input_policy_dropping_the_guests_arp_is_named_not_the_gateway() {
    let lab = Lab::new(LabOptions::default());
    lab.nft(
        "table arp labarp {\n chain input {\n  type filter hook input priority 0; policy drop;\n }\n}\n",
    );
    let running = start(
        &lab,
        &["follow", "vnet0", DEST, "--json", "--duration", "2"],
    );
    let mut vm = FakeVm::attach(&lab);
    assert!(!vm.resolve_gateway(Duration::from_millis(800)));
    let run = running.wait();
    let v = run.verdict();
    assert_eq!(field(v, "status"), "no_traffic", "{}", run.dump());
    let s = field(v, "summary");
    assert!(
        s.contains("10.77.0.1 is the host's own address on br0")
            && s.contains("at INPUT (arp labarp input (input, policy drop))"),
        "{}",
        run.dump()
    );
    assert!(!s.contains("gateway setting"), "{}", run.dump());
    assert_fields(
        &run,
        v,
        "stage=netfilter hook=INPUT direction=request device=br0",
    );
    assert_eq!(
        v["chains"][0],
        "arp labarp input (policy drop, priority 0)",
        "{}",
        run.dump()
    );
    let cmd = field(v, "fix").to_string();
    assert_eq!(cmd, "nft insert rule arp labarp input accept");
    assert!(s.contains(&format!("`{cmd}`")), "{}", run.dump());
    lab.nft(&format!("{}\n", cmd.trim_start_matches("nft ")));
    assert!(
        vm.resolve_gateway(Duration::from_secs(2)),
        "answered after the fix"
    );
}

/// Issue 18: a PMTU black hole. The host's own firewall drops the "fragmentation needed" it
/// sends the guest (an OUTPUT rule against ICMP): that drop is the root cause, named with its
/// hook, chain, the message and who sent it — not "if the guest never gets the ICMP".
#[test]
fn the_hosts_firewall_dropping_its_frag_needed_is_the_root_cause() {
    let lab = Lab::new(LabOptions::default());
    lab.hv_run(&["ip", "link", "set", "up0", "mtu", "1000"]);
    lab.nft("table inet labout {\n chain output {\n  type filter hook output priority 0;\n  icmp type destination-unreachable drop\n }\n}\n");
    let running = start(
        &lab,
        &["follow", "vnet0", DEST, "--json", "--duration", "3"],
    );
    let mut vm = FakeVm::attach(&lab);
    vm.dont_fragment = true;
    let got = vm.ping_sized(lab.dest, 0x4646, 1, 1400, Duration::from_millis(800));
    let run = running.wait();
    assert!(
        got.is_none(),
        "the ICMP error must not reach the guest: {got:?}"
    );
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=dropped direction=reply stage=netfilter hook=OUTPUT",
    );
    assert_eq!(
        v["chains"][0],
        "inet labout output (policy accept, priority 0)",
        "{}",
        run.dump()
    );
    let s = field(v, "summary");
    assert!(
        s.contains("fragmentation-needed (MTU 1000)")
            && s.contains("sent by the host from br0")
            && s.contains("inet labout output"),
        "{}",
        run.dump()
    );
}

/// Issue 18: a DNAT rule sends the guest's traffic to an address that does not answer. The
/// packet is followed after the rewrite: the rewrite is shown (dst, at PREROUTING), the route
/// is the one after it, and the verdict names the rewrite as the cause, with the fix at it.
#[test]
fn a_destination_rewritten_to_an_address_that_does_not_answer_names_the_rewrite() {
    let lab = Lab::new(LabOptions::default());
    lab.nft("table ip labdnat {\n chain pre {\n  type nat hook prerouting priority -100;\n  ip daddr 203.0.113.1 dnat to 198.51.100.99\n }\n}\n");
    let (run, got) = ping_run(&lab, &[], 2, "3");
    assert!(got.iter().all(Option::is_none), "{got:?}");
    let v = run.verdict();
    assert_fields(&run, v, "status=no_reply direction=request");
    let rw: Vec<_> = v["rewrites"].as_array().unwrap().iter().collect();
    assert!(
        rw.iter().any(|r| r["field"] == "dst"
            && r["from"] == "203.0.113.1"
            && r["to"] == "198.51.100.99"
            && r["at"].as_str().unwrap().starts_with("PREROUTING")),
        "{}",
        run.dump()
    );
    assert_fields(&run, v, "stage=netfilter hook=PREROUTING");
    let s = field(v, "summary");
    assert!(
        s.contains("198.51.100.99") && s.contains("DNAT") && s.contains("ip labdnat pre"),
        "{}",
        run.dump()
    );
    // The rewritten request is followed out of the uplink with its new destination.
    assert!(
        run.hops().iter().any(|h| h["point"] == "dev_xmit"
            && h["device"] == "up0"
            && h["tuple"]["dst"] == "198.51.100.99"),
        "{}",
        run.dump()
    );

    // A DNAT to an address that answers: delivered, the rewrite shown, and nothing blamed.
    lab.nft("flush table ip labdnat\nadd rule ip labdnat pre ip daddr 203.0.113.77 dnat to 203.0.113.1\n");
    let running = start(
        &lab,
        &[
            "follow",
            "vnet0",
            "203.0.113.77",
            "--json",
            "--duration",
            "3",
        ],
    );
    let mut vm = FakeVm::attach(&lab);
    let got = vm.ping(
        "203.0.113.77".parse().unwrap(),
        0x4848,
        1,
        Duration::from_millis(800),
    );
    let run = running.wait();
    assert!(got.is_some(), "the DNAT target answers");
    let v = run.verdict();
    assert_eq!(field(v, "status"), "delivered", "{}", run.dump());
    assert!(
        v["rewrites"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["field"] == "dst" && r["to"] == "203.0.113.1"),
        "{}",
        run.dump()
    );
}
