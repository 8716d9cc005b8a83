//! Verdicts from recorded events: the fixtures are real runs (regenerate with
//! `cargo xtask fixtures`), replayed here without
//! root or eBPF; synthetic variations pin the rules one by one.

use super::*;
use crate::model::event::{DevKind, Direction, NfHook, Point, TraceEvent, Tuple};
use std::net::{IpAddr, Ipv4Addr};

fn load(text: &str) -> Vec<TraceEvent> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("fixture line {l}: {e}")))
        .collect()
}

fn model(events: Vec<TraceEvent>) -> Model {
    let mut m = Model::new();
    for e in events {
        m.push(e);
    }
    m
}

fn nft_forward_drop_facts() -> HostFacts {
    HostFacts {
        ip_forward: Some(true),
        ip6_forward: None,
        nft_chains: vec![NfChain {
            family: "inet".into(),
            table: "labfilter".into(),
            chain: "forward".into(),
            hook: NfHook::Forward,
            priority: 0,
            policy: "drop".into(),
        }],
        legacy_tables: vec![],
        devices: vec![],
        vxlans: vec![],
    }
}

const HEALTHY: &str = include_str!("fixtures/healthy.jsonl");
const FORWARD_DROP: &str = include_str!("fixtures/forward_drop.jsonl");
const NO_MASQ: &str = include_str!("fixtures/no_masquerade.jsonl");
const NO_ROUTE: &str = include_str!("fixtures/no_route.jsonl");

#[test]
fn healthy_run_is_delivered_with_the_snat_rewrite() {
    let m = model(load(HEALTHY));
    let v = m.verdicts(&HostFacts::default(), "203.0.113.1", None);
    assert_eq!(v.len(), 1);
    let v = &v[0];
    assert_eq!(v.status, Status::Delivered);
    assert_eq!(v.requests, 2);
    assert_eq!(v.replies, 2);
    assert_eq!(
        v.rewrites,
        vec![Rewrite {
            field: "src".into(),
            from: "10.77.0.2".into(),
            to: "192.0.2.2".into(),
            at: "POSTROUTING exit".into()
        }]
    );
    // The reply's de-NAT happens in PREROUTING.
    let reply = m
        .journeys
        .iter()
        .find(|j| j.dir == Direction::Reply)
        .unwrap();
    let rw = reply.rewrites();
    assert_eq!(rw[0].field, "dst");
    assert_eq!(rw[0].at, "PREROUTING exit");
}

#[test]
fn forward_drop_names_hook_reason_firewall_and_chain() {
    let m = model(load(FORWARD_DROP));
    let v = &m.verdicts(&nft_forward_drop_facts(), "203.0.113.1", None)[0];
    assert_eq!(v.status, Status::Dropped);
    assert_eq!(v.stage, Some(Stage::Netfilter));
    assert_eq!(v.hook, Some(NfHook::Forward));
    assert_eq!(v.direction, Some(Direction::Request));
    assert_eq!(v.reason.as_deref(), Some("NETFILTER_DROP"));
    assert_eq!(v.firewall.as_deref(), Some("nftables"));
    assert_eq!(v.device.as_deref(), Some("br0"));
    assert!(
        v.summary
            .contains("chain inet labfilter forward (policy drop"),
        "{}",
        v.summary
    );
    // Without the VM's bridge and subnet in the facts, no command can be complete.
    assert_eq!(v.fix, None);
    let mut facts = nft_forward_drop_facts();
    facts.devices = tap_facts(Some("br0")).devices;
    let v = &m.verdicts(&facts, "203.0.113.1", None)[0];
    assert_eq!(
        v.fix.as_deref(),
        Some(
            "nft 'insert rule inet labfilter forward iifname \"br0\" ip saddr 10.77.0.0/24 \
             accept' && nft 'insert rule inet labfilter forward oifname \"br0\" ip daddr \
             10.77.0.0/24 ct state established,related accept'"
        )
    );
    // A second chain on the hook might be the one that dropped: no single command then.
    let mut other = facts.nft_chains[0].clone();
    other.table = "other".into();
    facts.nft_chains.push(other);
    assert_eq!(m.verdicts(&facts, "203.0.113.1", None)[0].fix, None);
}

#[test]
fn the_hook_comes_from_the_stack_when_netfilter_links_are_missing() {
    // Kernels without BPF netfilter links: no nf_enter/nf_exit hops, only the drop's stack.
    let events: Vec<TraceEvent> = load(FORWARD_DROP)
        .into_iter()
        .filter(|e| !matches!(e.point, Point::NfEnter | Point::NfExit))
        .map(|mut e| {
            if e.point == Point::Drop {
                e.stack = vec![
                    "sk_skb_reason_drop+0x90".into(),
                    "nf_hook_slow+0xa3".into(),
                    "ip_forward+0x4a1".into(),
                    "ip_rcv+0x171".into(),
                ];
            }
            e
        })
        .collect();
    let v = &model(events).verdicts(&HostFacts::default(), "203.0.113.1", None)[0];
    assert_eq!(v.hook, Some(NfHook::Forward));
    assert_eq!(v.stage, Some(Stage::Netfilter));
}

#[test]
fn iptables_legacy_is_named_when_only_its_tables_exist() {
    let facts = HostFacts {
        legacy_tables: vec!["filter".into()],
        ..Default::default()
    };
    let v = &model(load(FORWARD_DROP)).verdicts(&facts, "203.0.113.1", None)[0];
    assert_eq!(v.firewall.as_deref(), Some("iptables-legacy"));
}

#[test]
fn missing_masquerade_is_no_reply_with_the_private_source() {
    let v = &model(load(NO_MASQ)).verdicts(&HostFacts::default(), "203.0.113.1", None)[0];
    assert_eq!(v.status, Status::NoReply);
    assert_eq!(v.stage, Some(Stage::Egress));
    assert_eq!(v.device.as_deref(), Some("up0"));
    assert!(v.rewrites.is_empty());
    assert!(v.summary.contains("MASQUERADE"), "{}", v.summary);
    assert_eq!(v.fix, None, "the VM's subnet is not known");
    // With the VM's subnet known: into iptables-nft's nat table when it is there.
    let mut facts = tap_facts(Some("br0"));
    facts.nft_chains.push(NfChain {
        family: "ip".into(),
        table: "nat".into(),
        chain: "POSTROUTING".into(),
        hook: NfHook::Postrouting,
        priority: 100,
        policy: "accept".into(),
    });
    let v = &model(load(NO_MASQ)).verdicts(&facts, "203.0.113.1", None)[0];
    assert_eq!(
        v.fix.as_deref(),
        Some("iptables -t nat -A POSTROUTING -s 10.77.0.0/24 -o up0 -j MASQUERADE")
    );
}

#[test]
fn no_route_is_a_routing_drop_with_enetunreach() {
    let v = &model(load(NO_ROUTE)).verdicts(&HostFacts::default(), "203.0.113.1", None)[0];
    assert_eq!(v.status, Status::Dropped);
    assert_eq!(v.stage, Some(Stage::Routing));
    assert_eq!(v.route.as_ref().map(|r| r.err), Some(-101));
    assert!(v.summary.contains("no route"), "{}", v.summary);
}

#[test]
fn a_reply_dropped_on_its_way_back_is_reported_on_the_reply() {
    // Healthy run, but the replies die in FORWARD instead of reaching the tap.
    let mut events = Vec::new();
    let mut cut = std::collections::HashSet::new();
    for mut e in load(HEALTHY) {
        if e.dir == Direction::Reply {
            if cut.contains(&e.skb) {
                continue;
            }
            if e.point == Point::NfEnter && e.nf_hook == Some(NfHook::Forward) {
                events.push(e.clone());
                e.point = Point::Drop;
                e.nf_hook = None;
                e.reason = Some("NETFILTER_DROP".into());
                e.location = Some("nf_hook_slow+0xa3".into());
                cut.insert(e.skb);
            }
        }
        events.push(e);
    }
    let v = &model(events).verdicts(&nft_forward_drop_facts(), "203.0.113.1", None)[0];
    assert_eq!(v.status, Status::Dropped);
    assert_eq!(v.direction, Some(Direction::Reply));
    assert_eq!(v.hook, Some(NfHook::Forward));
    assert_eq!(v.device.as_deref(), Some("up0"));
}

#[test]
fn nothing_seen_is_no_traffic() {
    let v = Model::new().verdicts(&HostFacts::default(), "203.0.113.1", None);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].status, Status::NoTraffic);
    assert!(v[0].key.is_none());
}

/// Nothing seen because kvmtrace was blind at the tap is `blind`, never `no_traffic`; a drop
/// that was seen stands; "no reply" becomes `blind` only when the side towards the guest was
/// unseen.
#[test]
fn a_blind_tap_turns_silence_into_blind_and_leaves_seen_drops() {
    let blind = |from_guest, to_guest| Blind {
        tap: "vnet0".into(),
        from_guest,
        to_guest,
        why: vec!["from the guest: TC tap_ingress: refused".into()],
    };
    let mut v = Model::new().verdicts(&HostFacts::default(), "203.0.113.1", None);
    blind(true, false).apply(&mut v, "203.0.113.1");
    assert_eq!(v[0].status, Status::Blind);
    assert_eq!(v[0].stage, Some(Stage::Tap));
    assert_eq!(v[0].device.as_deref(), Some("vnet0"));
    assert_eq!(v[0].direction, Some(Direction::Request));
    assert!(
        v[0].summary
            .contains("could not observe the tap vnet0 from the guest"),
        "{}",
        v[0].summary
    );
    assert!(v[0].summary.contains("TC tap_ingress: refused"));

    let mut dropped = model(load(FORWARD_DROP)).verdicts(&nft_forward_drop_facts(), "x", None);
    assert_eq!(dropped[0].status, Status::Dropped);
    blind(true, true).apply(&mut dropped, "x");
    assert_eq!(dropped[0].status, Status::Dropped);

    let mut no_reply = vec![Verdict::new("f".into(), None, Status::NoReply)];
    blind(true, false).apply(&mut no_reply, "x");
    assert_eq!(no_reply[0].status, Status::NoReply);
    blind(false, true).apply(&mut no_reply, "x");
    assert_eq!(no_reply[0].status, Status::Blind);
    assert_eq!(no_reply[0].direction, Some(Direction::Reply));
}

#[test]
fn requests_after_the_stop_and_half_seen_packets_are_not_judged() {
    let events = load(HEALTHY);
    let first_ts = events[0].ts_ns;
    // Stop before the first request: nothing is judged.
    let v = model(events.clone()).verdicts(&HostFacts::default(), "x", Some(first_ts - 1));
    assert_eq!(v[0].status, Status::NoTraffic);
    // A packet first seen half-way (no tap hop) is not a flow of its own.
    let half: Vec<TraceEvent> = events
        .into_iter()
        .filter(|e| e.dev_kind != DevKind::Tap && e.point != Point::TapIngress)
        .collect();
    let v = model(half).verdicts(&HostFacts::default(), "x", None);
    assert_eq!(v[0].status, Status::NoTraffic);
}

#[test]
fn a_reused_skb_address_starts_a_new_journey() {
    let events = load(HEALTHY);
    let req: Vec<TraceEvent> = events
        .iter()
        .filter(|e| e.dir == Direction::Request && e.skb == events[0].skb)
        .cloned()
        .collect();
    let mut m = Model::new();
    for e in req.iter().chain(req.iter()) {
        m.push(e.clone());
    }
    assert_eq!(
        m.journeys.len(),
        2,
        "the second first-sight must open a new journey"
    );
}

/// The healthy run repeated `n` times, each copy as new packets (new skb addresses, later).
fn repeated(text: &str, n: u64) -> Vec<TraceEvent> {
    let base = load(text);
    let span = base.iter().map(|e| e.ts_ns).max().unwrap() - base[0].ts_ns + 1;
    let mut out = Vec::new();
    for i in 0..n {
        for e in &base {
            let mut e = e.clone();
            e.skb = e.skb.wrapping_add(i << 20);
            e.ts_ns += i * span;
            out.push(e);
        }
    }
    out
}

#[test]
fn a_bounded_model_keeps_memory_flat_and_verdicts_right() {
    let n = 2000;
    let mut m = Model::bounded(64);
    for e in repeated(HEALTHY, n) {
        m.push(e);
        assert!(m.journeys.len() <= 64 + 16, "retained {}", m.journeys.len());
    }
    let v = &m.verdicts(&HostFacts::default(), "203.0.113.1", None)[0];
    assert_eq!(v.status, Status::Delivered);
    assert_eq!(v.requests as u64, 2 * n, "every request counted");
    assert_eq!(v.replies as u64, 2 * n);
    assert!(
        v.summary
            .contains(&format!("{} of {} requests", 2 * n, 2 * n)),
        "{}",
        v.summary
    );
    assert_eq!(v.rewrites[0].field, "src");
    // Lookups by id still work for what is retained.
    let last = m.base + m.journeys.len() - 1;
    assert_eq!(m.journey(last).unwrap().id, last);
    assert!(m.journey(0).is_none());
}

#[test]
fn a_bounded_model_still_names_the_drop() {
    let mut m = Model::bounded(16);
    for e in repeated(FORWARD_DROP, 500) {
        m.push(e);
    }
    let v = &m.verdicts(&nft_forward_drop_facts(), "203.0.113.1", None)[0];
    assert_eq!(v.status, Status::Dropped);
    assert_eq!(v.hook, Some(NfHook::Forward));
    assert_eq!(v.requests, 500);
}

/// Host facts of a lab: vnet0 a port of `master` (or of none), br0 10.77.0.1/24, an empty br1,
/// the uplink up0.
fn tap_facts(master: Option<&str>) -> HostFacts {
    let dev = |name: &str, master: Option<&str>, bridge: bool, addrs: Vec<DevAddr>| DevFacts {
        name: name.into(),
        master: master.map(str::to_string),
        mtu: Some(1500),
        up: true,
        bridge,
        addrs,
        macvtap_lower: None,
        no_carrier: false,
        macvtap_mode: None,
        mac: None,
    };
    HostFacts {
        ip_forward: Some(true),
        devices: vec![
            dev("br1", None, true, vec![]),
            dev(
                "br0",
                None,
                true,
                vec![DevAddr {
                    addr: Ipv4Addr::new(10, 77, 0, 1).into(),
                    prefix: 24,
                }],
            ),
            dev("up0", None, false, vec![]),
            dev("vnet0", master, false, vec![]),
        ],
        ..Default::default()
    }
}

/// The healthy run as a tap outside the bridge sees it once the host answers the guest's ARP
/// on the tap: the requests enter on vnet0 itself and leave, the replies are routed to br0
/// and die there because nobody answers the host's ARP for the guest.
fn replies_dying_on_br0() -> Vec<TraceEvent> {
    let mut out = Vec::new();
    let mut cut = std::collections::HashSet::new();
    for mut e in load(HEALTHY) {
        if e.dir == Direction::Request && e.device == "br0" {
            e.device = "vnet0".into();
            e.dev_kind = DevKind::Tap;
        }
        if e.dir == Direction::Reply {
            if cut.contains(&e.skb) {
                continue;
            }
            if e.point == Point::DevXmit && e.device == "br0" {
                e.point = Point::Drop;
                e.reason = Some("NEIGH_FAILED".into());
                e.location = Some("neigh_invalidate+0x7e".into());
                cut.insert(e.skb);
            }
        }
        out.push(e);
    }
    out
}

#[test]
fn replies_dying_on_the_bridge_of_an_unbridged_tap_name_the_tap() {
    let v = &model(replies_dying_on_br0()).verdicts(&tap_facts(None), "203.0.113.1", None)[0];
    assert_eq!(v.status, Status::Dropped);
    assert_eq!(v.direction, Some(Direction::Reply));
    assert_eq!(v.stage, Some(Stage::Tap));
    assert_eq!(v.device.as_deref(), Some("vnet0"));
    assert_eq!(v.reason.as_deref(), Some("NEIGH_FAILED"));
    assert_eq!(v.route.as_ref().map(|r| r.device.as_str()), Some("br0"));
    assert_eq!(
        v.summary,
        "the reply was dropped on br0 [NEIGH_FAILED]: the replies are routed to br0, but the \
         tap vnet0 is not a port of any bridge, so the guest is not on br0 and cannot answer the \
         host's ARP there → add the tap to the VM's bridge: `ip link set vnet0 master br0`"
    );
    assert_eq!(v.fix.as_deref(), Some("ip link set dev vnet0 master br0"));
}

#[test]
fn replies_dying_on_the_bridge_of_a_tap_in_another_bridge_name_the_tap() {
    let v = &model(replies_dying_on_br0()).verdicts(&tap_facts(Some("br1")), "x", None)[0];
    assert_eq!(v.status, Status::Dropped);
    assert_eq!(v.stage, Some(Stage::Tap));
    assert_eq!(v.device.as_deref(), Some("vnet0"));
    assert!(
        v.summary
            .contains("the tap vnet0 is a port of br1 — the tap is on the wrong bridge")
            && v.summary.contains("`ip link set vnet0 master br0`"),
        "{}",
        v.summary
    );
    assert_eq!(v.fix.as_deref(), Some("ip link set dev vnet0 master br0"));
}

#[test]
fn replies_dying_on_the_bridge_of_a_bridged_tap_blame_the_guest_not_upstream() {
    let v = &model(replies_dying_on_br0()).verdicts(&tap_facts(Some("br0")), "x", None)[0];
    assert_eq!(v.status, Status::Dropped);
    assert_eq!(v.direction, Some(Direction::Reply));
    assert_eq!(v.stage, Some(Stage::Tap));
    assert_eq!(v.device.as_deref(), Some("vnet0"));
    assert!(
        v.summary
            .contains("the guest does not answer the host's ARP for 10.77.0.2 there"),
        "{}",
        v.summary
    );
    assert!(!v.summary.contains("upstream"), "{}", v.summary);
    // The guest's side: nothing on the host to run.
    assert_eq!(v.fix, None);
}

#[test]
fn a_request_dying_on_the_uplink_for_lack_of_arp_is_still_upstream() {
    let events: Vec<TraceEvent> = load(HEALTHY)
        .into_iter()
        .filter(|e| e.dir == Direction::Request)
        .map(|mut e| {
            if e.point == Point::DevXmit {
                e.point = Point::Drop;
                e.reason = Some("NEIGH_FAILED".into());
            }
            e
        })
        .collect();
    let v = &model(events).verdicts(&tap_facts(Some("br0")), "x", None)[0];
    assert_eq!(v.status, Status::Dropped);
    assert_eq!(v.stage, Some(Stage::Egress));
    assert_eq!(v.device.as_deref(), Some("up0"));
    assert!(
        v.summary.contains("check the upstream gateway"),
        "{}",
        v.summary
    );
}

/// The guest's first request dies as OTHERHOST on a tap outside any bridge.
fn otherhost_on_the_tap() -> Vec<TraceEvent> {
    let mut out: Vec<TraceEvent> = load(HEALTHY)
        .into_iter()
        .take_while(|e| e.point != Point::NfEnter)
        .collect();
    let mut drop = out.last().unwrap().clone();
    drop.point = Point::Drop;
    drop.reason = Some("OTHERHOST".into());
    drop.location = Some("ip_rcv_core+0x22c".into());
    out.push(drop);
    out
}

#[test]
fn otherhost_on_an_unbridged_tap_names_the_bridge_of_the_guests_subnet() {
    let v = &model(otherhost_on_the_tap()).verdicts(&tap_facts(None), "x", None)[0];
    assert_eq!(v.status, Status::Dropped);
    assert_eq!(v.direction, Some(Direction::Request));
    assert_eq!(v.stage, Some(Stage::Tap));
    assert_eq!(v.device.as_deref(), Some("vnet0"));
    assert_eq!(v.reason.as_deref(), Some("OTHERHOST"));
    assert!(
        v.summary.contains("not a port of any bridge")
            && v.summary.ends_with("`ip link set vnet0 master br0`"),
        "{}",
        v.summary
    );
    assert_eq!(v.fix.as_deref(), Some("ip link set dev vnet0 master br0"));
    // Without host facts the bridge cannot be named.
    let v = &model(otherhost_on_the_tap()).verdicts(&HostFacts::default(), "x", None)[0];
    assert!(
        v.summary
            .ends_with("`ip link set vnet0 master BRIDGE`, BRIDGE being the VM's bridge"),
        "{}",
        v.summary
    );
    assert_eq!(v.fix, None, "no placeholder in a fix");
}

#[test]
fn the_vms_bridge_is_the_one_holding_its_subnet_or_the_only_one() {
    let facts = tap_facts(None);
    assert_eq!(
        facts.bridge_for(Ipv4Addr::new(10, 77, 0, 200).into()),
        Some("br0")
    );
    // Two bridges, neither holding the address: no guess.
    assert_eq!(facts.bridge_for(Ipv4Addr::new(10, 78, 0, 2).into()), None);
    let mut one = facts.clone();
    one.devices.retain(|d| d.name != "br0");
    assert_eq!(
        one.bridge_for(Ipv4Addr::new(10, 78, 0, 2).into()),
        Some("br1")
    );
    let host = |prefix| DevAddr {
        addr: Ipv4Addr::new(10, 77, 0, 1).into(),
        prefix,
    };
    assert!(host(0).contains(Ipv4Addr::new(192, 0, 2, 1).into()));
    assert!(host(32).contains(Ipv4Addr::new(10, 77, 0, 1).into()));
    assert!(!host(32).contains(Ipv4Addr::new(10, 77, 0, 2).into()));
    assert!(!host(24).contains(Ipv4Addr::new(10, 77, 1, 2).into()));
}

/// The guest's ARP for its gateway on the tap, as the tap hook reports it.
fn guest_arp(ts_ns: u64) -> TraceEvent {
    let mut e = load(HEALTHY)[1].clone();
    e.ts_ns = ts_ns;
    e.tuple = None;
    e.l2 = Some(crate::model::event::L2::Arp {
        op: 1,
        sender: Ipv4Addr::new(10, 77, 0, 2),
        target: Ipv4Addr::new(10, 77, 0, 1),
    });
    e
}

#[test]
fn unanswered_arp_on_an_unbridged_tap_names_the_tap_not_the_gateway_setting() {
    let m = model(vec![guest_arp(1), guest_arp(2)]);
    let v = &m.verdicts(&tap_facts(None), "203.0.113.1", None)[0];
    assert_eq!(v.status, Status::NoTraffic);
    assert_eq!(v.stage, Some(Stage::Tap));
    assert_eq!(v.device.as_deref(), Some("vnet0"));
    assert_eq!(
        v.summary,
        "no packet from the VM to 203.0.113.1: the guest asked 2 time(s) who has 10.77.0.1 (ARP) \
         and nobody answered: its tap vnet0 is not a port of any bridge, so no bridge hears it → \
         add the tap to the VM's bridge: `ip link set vnet0 master br0`"
    );
    assert_eq!(v.fix.as_deref(), Some("ip link set dev vnet0 master br0"));
    // Bridged, and the address asked is br0's own: the host was asked and did not answer
    // (no firewall chain in these facts): not the guest's gateway setting.
    let v = &m.verdicts(&tap_facts(Some("br0")), "203.0.113.1", None)[0];
    assert_eq!(v.device, None);
    assert_eq!(v.fix, None);
    assert!(
        v.summary
            .contains("10.77.0.1 is the host's own address on br0: the host was asked")
            && v.summary.contains("no firewall chain sits on its INPUT")
            && !v.summary.contains("gateway setting"),
        "{}",
        v.summary
    );
}

/// Issue 18: the guest's DHCP, DHCPv6 and router solicitations, unanswered while the host is
/// on its network (br0's own addresses) and an INPUT chain with policy drop sees them: the
/// host's firewall is named with the message, its sender and the rule that lets it in, not
/// "no DHCP server serves its network".
#[test]
fn dhcp_and_router_solicitations_dropped_by_the_hosts_input_name_the_chain_and_the_fix() {
    use crate::model::event::L2;
    let msg = |ts_ns: u64, l2: L2| {
        let mut e = guest_arp(ts_ns);
        e.smac = Some("52:54:00:12:34:56".into());
        e.l2 = Some(l2);
        e
    };
    let rs = |ts_ns| {
        msg(
            ts_ns,
            L2::Ndp {
                icmp6_type: 133,
                source: "fe80::5054:ff:fe12:3456".parse().unwrap(),
                target: "ff02::2".parse().unwrap(),
            },
        )
    };
    let m = model(vec![
        msg(1, L2::Dhcp { from_guest: true }),
        msg(2, L2::Dhcp { from_guest: true }),
        rs(3),
        msg(4, L2::Dhcp6 { from_guest: true }),
    ]);
    let mut facts = tap_facts(Some("br0"));
    let chain = |family: &str, table: &str, chain: &str, policy: &str| NfChain {
        family: family.into(),
        table: table.into(),
        chain: chain.into(),
        hook: NfHook::Input,
        priority: 0,
        policy: policy.into(),
    };
    facts.nft_chains = vec![
        chain("ip", "filter", "INPUT", "accept"),
        chain("inet", "labin", "input", "drop"),
    ];
    // br0 has no IPv6 address: the host is not expected to answer DHCPv6 or RS.
    let v = &m.verdicts(&facts, "203.0.113.1", None)[0];
    assert_eq!(v.status, Status::NoTraffic);
    assert_eq!(
        v.summary,
        "no packet from the VM to 203.0.113.1: the guest (52:54:00:12:34:56 on vnet0) asked \
         DHCP for an address 2 time(s) and got no answer: the host is on its network (10.77.0.1 \
         on br0) and its firewall drops the guest's DHCP requests (udp 67) at INPUT (ip filter \
         INPUT (INPUT, policy accept), inet labin input (INPUT, policy drop)), so a DHCP server \
         on the host (dnsmasq) never hears them → let them in: `nft 'insert rule inet labin \
         input udp dport 67 accept'`; the guest asked DHCPv6 for an address 1 time(s) and got \
         no answer: no DHCPv6 server serves its network (dnsmasq `dhcp-range` for IPv6, or a \
         DHCPv6 server on the bridge); the guest sent a router solicitation 1 time(s) (IPv6) \
         and no router advertisement reached it: nothing advertises a prefix and a default \
         route on its network → run an RA service on the bridge (radvd, dnsmasq `enable-ra`, \
         a libvirt network with an IPv6 <ip>), or give the guest a static IPv6 address and \
         default route"
    );
    assert_eq!(
        v.fix.as_deref(),
        Some("nft 'insert rule inet labin input udp dport 67 accept'")
    );
    assert_eq!(v.stage, Some(Stage::Netfilter));
    assert_eq!(v.hook, Some(NfHook::Input));
    assert_eq!(v.direction, Some(Direction::Request));
    assert_eq!(v.device.as_deref(), Some("br0"));
    assert_eq!(
        v.chains,
        [
            "ip filter INPUT (policy accept, priority 0)",
            "inet labin input (policy drop, priority 0)"
        ]
    );
    // With fd00:77::1 on br0 all three are the firewall's, and one command lets them in.
    let br0 = facts.devices.iter_mut().find(|d| d.name == "br0").unwrap();
    br0.addrs.push(DevAddr {
        addr: "fd00:77::1".parse().unwrap(),
        prefix: 64,
    });
    let v = &m.verdicts(&facts, "203.0.113.1", None)[0];
    assert!(
        v.summary.contains(
            "the guest (fe80::5054:ff:fe12:3456, 52:54:00:12:34:56 on vnet0) sent a router \
             solicitation (IPv6) 1 time(s) and got no answer: the host is on its network \
             (fd00:77::1 on br0) and its firewall drops the guest's router solicitations \
             (icmpv6 133) at INPUT (inet labin input (INPUT, policy drop))"
        ),
        "{}",
        v.summary
    );
    assert_eq!(
        v.fix.as_deref(),
        Some(
            "nft 'insert rule inet labin input udp dport 67 accept' && nft 'insert rule inet \
             labin input udp dport 547 accept' && nft 'insert rule inet labin input icmpv6 type \
             nd-router-solicit accept'"
        )
    );
    // No drop policy on INPUT: not the firewall's (an accept policy with rules is not
    // evidence), the old words stay and there is no fix.
    facts.nft_chains = vec![chain("ip", "filter", "INPUT", "accept")];
    let v = &m.verdicts(&facts, "203.0.113.1", None)[0];
    assert!(
        v.summary.contains("no DHCP server serves its network"),
        "{}",
        v.summary
    );
    assert_eq!(v.fix, None);
    assert_eq!((v.stage, v.hook), (None, None));
    // iptables-nft's own chain gets an iptables command.
    facts.nft_chains = vec![chain("ip", "filter", "INPUT", "drop")];
    let v = &m.verdicts(&facts, "203.0.113.1", None)[0];
    assert_eq!(
        v.fix.as_deref(),
        Some("iptables -I INPUT -p udp --dport 67 -j ACCEPT")
    );
}

/// Facts of a macvtap guest: mvtap0 on low0 (up or down), the host's 10.78.0.3/24 on low0.
fn macvtap_facts(lower_up: bool) -> HostFacts {
    HostFacts {
        ip_forward: Some(false),
        devices: vec![
            DevFacts {
                name: "low0".into(),
                mtu: Some(1500),
                up: lower_up,
                addrs: vec![DevAddr {
                    addr: Ipv4Addr::new(10, 78, 0, 3).into(),
                    prefix: 24,
                }],
                ..Default::default()
            },
            DevFacts {
                name: "mvtap0".into(),
                mtu: Some(1500),
                up: true,
                macvtap_lower: Some("low0".into()),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

fn macvtap_arp(ts_ns: u64, target: Ipv4Addr) -> TraceEvent {
    let mut e = guest_arp(ts_ns);
    e.device = "mvtap0".into();
    e.l2 = Some(crate::model::event::L2::Arp {
        op: 1,
        sender: Ipv4Addr::new(10, 78, 0, 2),
        target,
    });
    e
}

#[test]
fn a_macvtap_guest_unanswered_names_the_lower_device_or_the_host_isolation_not_a_bridge() {
    let gw = Ipv4Addr::new(10, 78, 0, 1);
    let m = model(vec![macvtap_arp(1, gw), macvtap_arp(2, gw)]);
    let v = &m.verdicts(&macvtap_facts(false), "203.0.113.1", None)[0];
    assert_eq!(v.status, Status::NoTraffic);
    assert_eq!(
        v.summary,
        "no packet from the VM to 203.0.113.1: the guest asked 2 time(s) who has 10.78.0.1 (ARP) \
         and nobody answered: the lower device low0 of its macvtap mvtap0 is down, so its frames \
         leave nowhere → `ip link set low0 up` (and check low0's cable or peer)"
    );
    assert_eq!(v.fix.as_deref(), Some("ip link set dev low0 up"));
    let v = &m.verdicts(&macvtap_facts(true), "203.0.113.1", None)[0];
    assert_eq!(v.fix, None);
    assert!(
        v.summary.contains(
            "nobody on the network of low0 (the lower device of its macvtap mvtap0) answered"
        ),
        "{}",
        v.summary
    );
    assert!(!v.summary.contains("bridge"), "{}", v.summary);

    let host = Ipv4Addr::new(10, 78, 0, 3);
    let m = model(vec![macvtap_arp(1, host)]);
    let v = &m.verdicts(&macvtap_facts(true), "10.78.0.3", None)[0];
    assert!(
        v.summary.contains(
            "10.78.0.3 is the host's own address on low0, the lower device of the guest's \
             macvtap mvtap0, and a macvtap never passes frames between its guest and the \
             host's stack on the lower device"
        ),
        "{}",
        v.summary
    );
}

/// Facts of a host whose br0 has the VXLAN port vx0 (vni 42, bound to ul0, MTU 1450).
fn vxlan_facts(remote: Option<Ipv4Addr>) -> HostFacts {
    HostFacts {
        devices: vec![
            DevFacts {
                name: "vx0".into(),
                master: Some("br0".into()),
                mtu: Some(1450),
                up: true,
                ..Default::default()
            },
            DevFacts {
                name: "ul0".into(),
                mtu: Some(1500),
                up: true,
                ..Default::default()
            },
        ],
        vxlans: vec![VxlanFacts {
            name: "vx0".into(),
            vni: 42,
            remote,
            local: Some(Ipv4Addr::new(192, 0, 2, 2)),
            dev: Some("ul0".into()),
            route_dev: Some("ul0".into()),
            port: 4789,
            mtu: 1450,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The healthy run's requests, each dropped on `device` right after the tap (replies gone),
/// the drop as `edit` makes it.
fn requests_dropped_after_the_tap(device: &str, edit: impl Fn(&mut TraceEvent)) -> Vec<TraceEvent> {
    let mut out = Vec::new();
    let mut cut = std::collections::HashSet::new();
    for mut e in load(HEALTHY) {
        if e.dir == Direction::Reply || cut.contains(&e.skb) {
            continue;
        }
        if !matches!(e.point, Point::TapIngress | Point::NetifReceive) || e.device != "vnet0" {
            e.point = Point::Drop;
            e.device = device.into();
            e.dev_kind = DevKind::Other;
            e.nf_hook = None;
            edit(&mut e);
            cut.insert(e.skb);
        }
        out.push(e);
    }
    out
}

#[test]
fn a_drop_for_want_of_a_vxlan_remote_names_the_fdb_entry_to_add() {
    let events = requests_dropped_after_the_tap("vx0", |e| {
        e.reason = Some("NO_TX_TARGET".into());
        e.location = Some("vxlan_xmit+0xdab".into());
        e.dmac = Some("52:54:00:4b:58:03".into());
    });
    let remote = Ipv4Addr::new(198, 51, 100, 1);
    let v = &model(events).verdicts(&vxlan_facts(Some(remote)), "x", None)[0];
    assert_eq!(v.status, Status::Dropped);
    assert_eq!(v.stage, Some(Stage::Egress));
    assert_eq!(v.device.as_deref(), Some("vx0"));
    assert_eq!(v.reason.as_deref(), Some("NO_TX_TARGET"));
    // A remote is configured (its default entry was removed): the fix names it.
    assert!(
        v.summary.contains(
            "`bridge fdb append 00:00:00:00:00:00 dev vx0 dst 198.51.100.1` (or an entry for \
             52:54:00:4b:58:03)"
        ),
        "{}",
        v.summary
    );
    assert_eq!(
        v.fix.as_deref(),
        Some("bridge fdb append 00:00:00:00:00:00 dev vx0 dst 198.51.100.1")
    );
    // No remote known: the summary keeps its placeholder, and there is no fix.
    let events = requests_dropped_after_the_tap("vx0", |e| {
        e.reason = Some("NO_TX_TARGET".into());
        e.location = Some("vxlan_xmit+0xdab".into());
        e.dmac = Some("52:54:00:4b:58:03".into());
    });
    assert_eq!(
        model(events).verdicts(&vxlan_facts(None), "x", None)[0].fix,
        None
    );
}

#[test]
fn an_outer_packet_dropped_at_postrouting_is_found_by_its_vni_and_outer_source() {
    let events = requests_dropped_after_the_tap("ul0", |e| {
        e.reason = Some("NETFILTER_DROP".into());
        e.location = Some("nft_do_chain+0x46f".into());
        e.stack = ["nft_do_chain+0x46f", "nf_hook_slow+0x43", "ip_output+0x70"]
            .map(String::from)
            .to_vec();
        e.vxlan = Some(crate::model::event::Vxlan {
            vni: 42,
            src: Ipv4Addr::new(192, 0, 2, 2),
            dst: Ipv4Addr::new(198, 51, 100, 1),
        });
    });
    let v = &model(events).verdicts(&vxlan_facts(None), "x", None)[0];
    assert_eq!(v.status, Status::Dropped);
    assert_eq!(v.stage, Some(Stage::Netfilter));
    assert_eq!(v.hook, Some(NfHook::Postrouting));
    assert_eq!(v.device.as_deref(), Some("ul0"));
    assert!(
        v.summary
            .contains("left through the VXLAN device vx0 (vni 42)")
            && v.summary.contains(
                "encapsulated (outer) packet 192.0.2.2 > 198.51.100.1 udp/4789 was dropped by \
                 the POSTROUTING hook"
            ),
        "{}",
        v.summary
    );
    // Another VNI is not this overlay's: an ordinary netfilter drop.
    let other = requests_dropped_after_the_tap("ul0", |e| {
        e.reason = Some("NETFILTER_DROP".into());
        e.location = Some("nft_do_chain+0x46f".into());
        e.vxlan = Some(crate::model::event::Vxlan {
            vni: 7,
            src: Ipv4Addr::new(192, 0, 2, 9),
            dst: Ipv4Addr::new(198, 51, 100, 1),
        });
    });
    let v = &model(other).verdicts(&vxlan_facts(None), "x", None)[0];
    assert!(!v.summary.contains("VXLAN"), "{}", v.summary);
}

/// `watch` labels a drop from its reason, location, stack (cut to the depth its kernel program
/// keeps) and the kind of device; `follow` from its journey. Both go through the one drop
/// classifier (model::drop), and on every recorded drop they name the same stage and hook.
#[test]
fn watch_and_follow_place_every_recorded_drop_alike() {
    let fixtures = [
        HEALTHY,
        FORWARD_DROP,
        NO_MASQ,
        NO_ROUTE,
        include_str!("fixtures/forward6_drop.jsonl"),
    ];
    let mut compared = 0;
    for text in fixtures {
        let m = model(load(text));
        let v = m.verdicts(&HostFacts::default(), "any", None);
        for e in load(text).iter().filter(|e| e.point == Point::Drop) {
            let stack: Vec<String> = e
                .stack
                .iter()
                .take(kvmtrace_common::watch::WATCH_STACK_DEPTH)
                .cloned()
                .collect();
            let device_stage = match e.dev_kind {
                DevKind::Tap => Stage::Tap,
                DevKind::Bridge => Stage::Bridge,
                DevKind::Other => Stage::Egress,
            };
            let watch = drop::classify(e.reason.as_deref(), e.location.as_deref(), &stack)
                .place(device_stage);
            let verdict = v
                .iter()
                .find(|v| v.status == Status::Dropped)
                .expect("a dropped verdict for a fixture with a drop");
            assert_eq!(
                (Some(watch.0), watch.1),
                (verdict.stage, verdict.hook),
                "drop at {:?}",
                e.location
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 3, "the fixtures hold three drops");
}

/// A kernel before 5.17 gives `kfree_skb` no reason: the recorded FORWARD drop with its reason
/// taken away (and the location such a kernel reports) is still a FORWARD drop, named
/// NETFILTER_DROP, and the verdict says the reason was inferred.
#[test]
fn a_drop_without_a_kernel_reason_is_named_from_its_location_and_marked_inferred() {
    let events: Vec<TraceEvent> = load(FORWARD_DROP)
        .into_iter()
        .map(|mut e| {
            if e.point == Point::Drop {
                e.reason = None;
                e.location = Some("nf_hook_slow+0x8e".into());
            }
            e
        })
        .collect();
    let m = model(events);
    let v = m.verdicts(&nft_forward_drop_facts(), "203.0.113.1", None);
    let v = &v[0];
    assert_eq!(v.status, Status::Dropped);
    assert_eq!(v.stage, Some(Stage::Netfilter));
    assert_eq!(v.hook, Some(NfHook::Forward));
    assert_eq!(v.reason.as_deref(), Some("NETFILTER_DROP"));
    assert!(v.reason_inferred);
    assert!(v.summary.contains("inferred"), "{}", v.summary);
    let json = serde_json::to_value(v).unwrap();
    assert_eq!(json["reason_inferred"], true);
    // A kernel that names the reason: the field is absent, as before.
    let v = model(load(FORWARD_DROP)).verdicts(&nft_forward_drop_facts(), "203.0.113.1", None);
    assert!(serde_json::to_value(&v[0])
        .unwrap()
        .get("reason_inferred")
        .is_none());
}

/// One request and its reply of the healthy fixture as flow `id`, both in skb memory `skb`
/// (the kernel reused the request's skb for the reply), the reply not marked new (a stale
/// per-skb entry); IPv6 when `v6`, with a neighbour solicitation of the host sent between them
/// in the same memory.
fn recycled_flow(id: u16, skb: u64, ts: u64, v6: bool) -> Vec<TraceEvent> {
    let base = load(HEALTHY);
    let req_skb = base[0].skb;
    let rep_skb = base
        .iter()
        .find(|e| e.dir == Direction::Reply)
        .expect("a reply")
        .skb;
    let v6_of = |a: IpAddr| -> IpAddr {
        match a.to_string().as_str() {
            "10.77.0.2" => "fd00:77::2".parse().unwrap(),
            "203.0.113.1" => "2001:db8:ffff::1".parse().unwrap(),
            "192.0.2.2" => "2001:db8:2::2".parse().unwrap(),
            other => panic!("unexpected address {other}"),
        }
    };
    let mut out = Vec::new();
    let fix = |mut e: TraceEvent, first_reply: bool| -> TraceEvent {
        e.skb = skb;
        e.ts_ns = ts + (e.ts_ns - base[0].ts_ns);
        if first_reply {
            e.new = false;
        }
        if let Some(t) = e.tuple.as_mut() {
            if t.proto != 0 {
                t.sport = id;
            }
            if v6 {
                t.src = v6_of(t.src);
                t.dst = v6_of(t.dst);
                if t.proto == 1 {
                    t.proto = 58;
                }
            }
        }
        if v6 && e.tuple.is_some_and(|t| t.proto == 58) {
            e.icmp_type = if e.icmp_type == 8 { 128 } else { 129 };
        }
        e
    };
    let req: Vec<_> = base
        .iter()
        .filter(|e| e.skb == req_skb)
        .take_while(|e| e.dir == Direction::Request)
        .cloned()
        .collect();
    let rep: Vec<_> = base
        .iter()
        .filter(|e| e.skb == rep_skb && e.dir == Direction::Reply)
        .cloned()
        .collect();
    for e in req {
        out.push(fix(e, false));
    }
    if v6 {
        // The host asks for the guest's MAC in the same memory, through the stale entry.
        let mut ns = rep[0].clone();
        ns.point = Point::DevXmit;
        ns.dir = Direction::Request;
        ns.device = "br0".into();
        ns.dev_kind = DevKind::Bridge;
        ns.tuple = Some(Tuple {
            proto: 58,
            src: "fd00:77::1".parse().unwrap(),
            dst: "ff02::1:ff00:2".parse().unwrap(),
            sport: 0,
            dport: 0,
        });
        ns.icmp_type = 135;
        ns.new = false;
        ns.skb = skb;
        ns.ts_ns = ts + (rep[0].ts_ns - base[0].ts_ns) - 1;
        out.push(ns);
    }
    for (i, e) in rep.into_iter().enumerate() {
        out.push(fix(e, i == 0));
    }
    out
}

/// Thousands of short flows, IPv4 and IPv6, through three recycled skb addresses, each
/// reply reusing its request's memory with a stale "not new" mark, and host NDP in between:
/// every flow is delivered with exactly its own request and reply and only the SNAT rewrite
/// (the false no_reply, misrouted and invented rewrites of issue 18 came from stitching).
#[test]
fn recycled_skb_addresses_never_stitch_two_packets_together() {
    let n = 3000u64;
    let mut m = Model::new();
    for i in 0..n {
        let skb = 0xffff_8880_0000_0000 + (i % 3) * 0x100;
        for e in recycled_flow(1000 + i as u16, skb, 1_000_000 * (i + 1), i % 2 == 1) {
            m.push(e);
        }
    }
    // No hop of a journey contradicts it: one direction, one IP version, one echo id.
    for j in &m.journeys {
        let dirs: std::collections::HashSet<_> = j.hops.iter().map(|h| h.dir).collect();
        assert_eq!(dirs.len(), 1, "journey {} mixes directions", j.id);
        let ids: std::collections::HashSet<_> = j
            .hops
            .iter()
            .filter_map(|h| {
                h.tuple
                    .filter(|t| t.proto != 0 && t.proto != 58 || h.icmp_type < 133)
            })
            .filter(|t| t.proto != 0)
            .map(|t| (t.sport, t.src.is_ipv4()))
            .collect();
        assert!(ids.len() <= 1, "journey {} mixes packets: {ids:?}", j.id);
    }
    let v = m.verdicts(&HostFacts::default(), "any", None);
    assert_eq!(v.len() as u64, n, "one verdict per flow");
    for v in &v {
        assert_eq!(v.status, Status::Delivered, "{}: {}", v.flow, v.summary);
        assert_eq!((v.requests, v.replies), (1, 1), "{}", v.flow);
        assert_eq!(v.rewrites.len(), 1, "{}: {:?}", v.flow, v.rewrites);
        assert_eq!(v.rewrites[0].field, "src");
    }
}

/// One name per hook: the JSON `point` (serde) is the name every other view uses.
#[test]
fn every_hook_is_named_alike_in_json_and_in_the_views() {
    for h in Point::ALL {
        assert_eq!(serde_json::to_value(h).unwrap(), h.name(), "{h:?}");
        assert_eq!(Point::from_u8(h as u8), Some(h));
    }
    assert_eq!(Point::from_u8(0), None);
}

#[test]
fn a_drop_on_a_downed_device_or_below_the_vm_sides_mtu_carries_the_one_command() {
    let qdisc = || {
        requests_dropped_after_the_tap("up0", |e| {
            e.reason = Some("QDISC_DROP".into());
            e.location = Some("__dev_queue_xmit+0x8b1".into());
        })
    };
    let mut facts = tap_facts(Some("br0"));
    fn up0(f: &mut HostFacts) -> &mut DevFacts {
        f.devices.iter_mut().find(|d| d.name == "up0").unwrap()
    }
    up0(&mut facts).up = false;
    let v = &model(qdisc()).verdicts(&facts, "x", None)[0];
    assert_eq!(v.status, Status::Dropped);
    assert_eq!(
        v.fix.as_deref(),
        Some("ip link set dev up0 up"),
        "{}",
        v.summary
    );
    // Without carrier the cable or the peer is at fault: nothing to run here.
    up0(&mut facts).up = true;
    up0(&mut facts).no_carrier = true;
    assert_eq!(model(qdisc()).verdicts(&facts, "x", None)[0].fix, None);
    // A full queue is no command either.
    up0(&mut facts).no_carrier = false;
    assert_eq!(model(qdisc()).verdicts(&facts, "x", None)[0].fix, None);

    let too_big = || {
        requests_dropped_after_the_tap("up0", |e| {
            e.reason = Some("PKT_TOO_BIG".into());
            e.location = Some("ip_forward+0x3a1".into());
        })
    };
    up0(&mut facts).mtu = Some(1000);
    let v = &model(too_big()).verdicts(&facts, "x", None)[0];
    assert_eq!(
        v.fix.as_deref(),
        Some("ip link set dev up0 mtu 1500"),
        "{}",
        v.summary
    );
    // The uplink is not below the VM's bridge: only the guest's MTU is left to change.
    up0(&mut facts).mtu = Some(1500);
    assert_eq!(model(too_big()).verdicts(&facts, "x", None)[0].fix, None);
}

/// Before 5.17, ip_error's drop has no reason: the journey's route names it as 6.18 would
/// (no route: IP_INNOROUTES), marked inferred.
#[test]
fn an_ip_error_drop_without_a_kernel_reason_is_named_from_its_route() {
    let events: Vec<TraceEvent> = load(NO_ROUTE)
        .into_iter()
        .map(|mut e| {
            if e.point == Point::Drop {
                e.reason = None;
            }
            e
        })
        .collect();
    let v = &model(events).verdicts(&HostFacts::default(), "203.0.113.1", None)[0];
    assert_eq!(v.status, Status::Dropped);
    assert_eq!(v.stage, Some(Stage::Routing));
    assert_eq!(v.reason.as_deref(), Some("IP_INNOROUTES"));
    assert!(v.reason_inferred);
}

/// Recorded by `cargo xtask soak --healthy` (a real guest's `ping -6 -c1`, once a loop, while a
/// second VM flooded the same destination): the echo reply of flow id=136 was handed to the
/// guest (tap egress) and its skb memory was reused 58 s later by the echo reply of flow
/// id=411. The kernel marked that second reply "not new" (its per-skb entry was still there,
/// and the IPv6 stand-in for the IP id, the echo sequence, is 0 for every `ping -c1`), and the
/// model continued the finished journey with it: the journey's last tuple made it flow 411's,
/// and flow 136, whose reply the guest got, was judged `no_reply`.
#[test]
fn a_reply_handed_to_the_guest_is_not_continued_by_the_next_reply_in_its_memory() {
    let m = model(load(include_str!("fixtures/soak_icmp6_reply_reuse.jsonl")));
    let v = m.verdicts(&HostFacts::default(), "2001:db8:ffff::1", None);
    let flows: Vec<(&str, Status, usize, usize)> = v
        .iter()
        .map(|v| (v.flow.as_str(), v.status, v.requests, v.replies))
        .collect();
    assert_eq!(
        flows,
        vec![
            (
                "icmp6 fd00:77::2 > 2001:db8:ffff::1 id=136",
                Status::Delivered,
                1,
                1
            ),
            (
                "icmp6 fd00:77::2 > 2001:db8:ffff::1 id=411",
                Status::Delivered,
                1,
                1
            ),
        ],
        "{v:#?}"
    );
    // Four packets, four journeys: the second reply starts its own at up0.
    assert_eq!(m.journeys.len(), 4, "{:#?}", m.journeys);
    for v in &v {
        assert_eq!(v.stage, Some(Stage::Tap), "{}", v.flow);
        assert_eq!(v.device.as_deref(), Some("vnet0"), "{}", v.flow);
        assert_eq!(v.direction, Some(Direction::Reply), "{}", v.flow);
    }
}

/// A request last seen at its route lookup (its neighbour never answered, and the drop was not
/// seen): the verdict names the device the route chose, not an empty one (CI once printed
/// "last seen at the routing stage on  and").
#[test]
fn a_request_last_seen_at_its_route_lookup_names_the_routes_device() {
    let mut events = Vec::new();
    for e in load(HEALTHY) {
        if e.dir != Direction::Request {
            continue;
        }
        let fib = e.point == Point::Fib;
        events.push(e);
        if fib {
            break;
        }
    }
    assert_eq!(events.last().map(|e| e.point), Some(Point::Fib));
    assert_eq!(events.last().map(|e| e.device.as_str()), Some(""));
    let m = model(events);
    let v = &m.verdicts(&HostFacts::default(), "203.0.113.1", None)[0];
    assert_eq!(v.status, Status::NoReply);
    assert_eq!(v.stage, Some(Stage::Routing));
    assert_eq!(v.device.as_deref(), Some("up0"));
    assert!(
        v.summary
            .contains("last seen at the routing stage on up0 and"),
        "{}",
        v.summary
    );
}
