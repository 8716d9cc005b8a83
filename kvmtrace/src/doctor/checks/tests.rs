//! The checks on hand-built snapshots: the healthy lab, then one fault at a time.

use super::*;
use crate::doctor::check::CheckStatus::{Fail, Pass, Skip, Warn};
use crate::doctor::host::{DestRoute, Dev, RaDaemon, UdpSock};
use crate::doctor::rules::{Action, Base, Chain, Cond, Rule, Ruleset};
use crate::host::netlink;
use crate::host::netlink::{IpNeigh, IpRoute, IpRule};
use crate::model::event::NfHook;
use crate::model::fix::sysctl_name;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

fn dev(name: &str, ifindex: u32) -> Dev {
    Dev {
        name: name.into(),
        ifindex,
        mtu: Some(1500),
        admin_up: true,
        carrier: Some(true),
        operstate: "up".into(),
        flags: 0x1003,
        ..Default::default()
    }
}

fn nat_chain(rules: Vec<Rule>) -> Chain {
    Chain {
        family: "ip".into(),
        table: "labnat".into(),
        name: "post".into(),
        base: Some(Base {
            hook: NfHook::Postrouting,
            priority: 100,
            policy: "accept".into(),
            kind: "nat".into(),
        }),
        rules,
    }
}

fn masq_rule() -> Rule {
    Rule {
        handle: 2,
        conds: vec![
            Cond::Addr {
                dst: false,
                neg: false,
                net: Net::new(Ipv4Addr::new(10, 77, 0, 0), 24),
            },
            Cond::Ifname {
                out: true,
                neg: false,
                name: "up0".into(),
                wildcard: false,
            },
        ],
        action: Action::Masquerade,
    }
}

/// The healthy lab as a snapshot.
fn healthy() -> Host {
    let mut tap = dev("vnet0", 3);
    tap.is_tap = true;
    tap.master = Some("br0".into());
    tap.brport_state = Some(3);
    let mut br = dev("br0", 2);
    br.is_bridge = true;
    br.ports = vec!["vnet0".into()];
    br.addrs = vec![(Ipv4Addr::new(10, 77, 0, 1), 24)];
    let mut up = dev("up0", 4);
    up.addrs = vec![(Ipv4Addr::new(192, 0, 2, 2), 24)];
    let mut sysctl = BTreeMap::new();
    for (k, v) in [
        ("net/ipv4/ip_forward", "1"),
        ("net/ipv4/conf/all/rp_filter", "0"),
        ("net/ipv4/conf/br0/rp_filter", "0"),
        ("net/ipv4/conf/up0/rp_filter", "0"),
        ("net/ipv4/conf/br0/forwarding", "1"),
        ("net/ipv4/conf/up0/forwarding", "1"),
        ("net/bridge/bridge-nf-call-iptables", "1"),
        ("net/bridge/bridge-nf-call-ip6tables", "1"),
        ("net/netfilter/nf_conntrack_count", "3"),
        ("net/netfilter/nf_conntrack_max", "262144"),
    ] {
        sysctl.insert(k.to_string(), v.to_string());
    }
    Host {
        devs: vec![dev("lo", 1), br, tap, up],
        sysctl,
        routes: Ok(vec![
            IpRoute {
                table: 254,
                dst: Ipv4Addr::UNSPECIFIED.into(),
                dst_len: 0,
                kind: 1,
                protocol: 0,
                priority: 0,
                nexthops: vec![(4, Some(Ipv4Addr::new(192, 0, 2, 1).into()))],
            },
            IpRoute {
                table: 254,
                dst: Ipv4Addr::new(10, 77, 0, 0).into(),
                dst_len: 24,
                kind: 1,
                protocol: 0,
                priority: 0,
                nexthops: vec![(2, None)],
            },
        ]),
        neighs: Ok(vec![
            IpNeigh {
                ifindex: 4,
                dst: Ipv4Addr::new(192, 0, 2, 1).into(),
                state: netlink::NUD_REACHABLE,
                lladdr: Some("02:00:00:00:00:01".into()),
                router: false,
            },
            IpNeigh {
                ifindex: 2,
                dst: Ipv4Addr::new(10, 77, 0, 2).into(),
                state: netlink::NUD_STALE,
                lladdr: Some("52:54:00:4b:54:02".into()),
                router: false,
            },
        ]),
        ruleset: Ok(Ruleset {
            chains: vec![nat_chain(vec![masq_rule()])],
        }),
        legacy_tables: Vec::new(),
        br_netfilter: true,
        udp67: Ok(vec![UdpSock {
            local: Ipv4Addr::UNSPECIFIED,
            inode: 1,
            owner: Some("pid 9 (dnsmasq)".into()),
        }]),
        routes6: Ok(vec![]),
        neighs6: Ok(vec![]),
        ip_rules4: Ok(vec![]),
        ip_rules6: Ok(vec![]),
        legacy_tables6: vec![],
        ra_daemons: Ok(vec![]),
        dest_route: None,
        vxlans: Vec::new(),
    }
}

fn get<'a>(v: &'a [Check], name: &str) -> &'a Check {
    v.iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name}: {v:?}"))
}

fn run(h: &Host) -> Vec<Check> {
    run_checks(h, "vnet0", Some("52:54:00:4b:54:02"))
}

/// A macvtap guest: mvtap0 on low0, the host's 10.78.0.3/24 on low0 (or none).
fn macvtap_host(lower_up: bool, host_addr: bool) -> Host {
    let mut low = dev("low0", 2);
    low.admin_up = lower_up;
    if !lower_up {
        low.carrier = None;
        low.operstate = "down".into();
    }
    if host_addr {
        low.addrs = vec![(Ipv4Addr::new(10, 78, 0, 3), 24)];
    }
    let mut mv = dev("mvtap0", 3);
    mv.macvtap_lower = Some("low0".into());
    mv.macvtap_mode = Some("bridge".into());
    Host {
        devs: vec![low, mv],
        ..healthy()
    }
}

#[test]
fn a_macvtap_is_checked_on_its_lower_device_and_host_isolation_only() {
    let c = run_checks(&macvtap_host(true, false), "mvtap0", None);
    let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["tap", "lower_device", "macvtap_mode", "macvtap_host"]
    );
    assert!(c.iter().all(|c| c.status == Pass), "{c:?}");

    // A private macvtap with another guest's on the same lower device: kept apart.
    let mut h = macvtap_host(true, false);
    h.devs[1].macvtap_mode = Some("private".into());
    let mut sib = dev("mvtap1", 4);
    sib.macvtap_lower = Some("low0".into());
    sib.macvtap_mode = Some("bridge".into());
    h.devs.push(sib);
    let m = get(&run_checks(&h, "mvtap0", None), "macvtap_mode").clone();
    assert_eq!(m.status, Warn, "{m:?}");
    assert_eq!(
        m.evidence,
        "mvtap0 is in private mode and low0 also carries mvtap1 (bridge): its guest never \
         reaches the other guests on it, whatever the switch does"
    );
    assert!(get(&c, "tap")
        .evidence
        .starts_with("mvtap0 (macvtap) is up"));

    let c = run_checks(&macvtap_host(false, true), "mvtap0", None);
    let l = get(&c, "lower_device");
    assert_eq!(l.status, Fail, "{l:?}");
    assert_eq!(
        l.evidence,
        "low0, the lower device of the macvtap mvtap0, is administratively down (operstate \
         down): the guest's frames leave nowhere and nothing reaches it"
    );
    assert_eq!(l.fix.as_deref(), Some("ip link set dev low0 up"));
    let h = get(&c, "macvtap_host");
    assert_eq!(h.status, Warn, "{h:?}");
    assert!(
        h.evidence.starts_with(
            "the host's 10.78.0.3/24 on low0 cannot reach the guest of the macvtap mvtap0"
        ),
        "{h:?}"
    );
}

const V6_CHECKS: [&str; 8] = [
    "br_netfilter6",
    "ip6_forward",
    "rpfilter6",
    "forward_filter6",
    "nat6",
    "default_route6",
    "gateway_neighbour6",
    "ra_service",
];

#[test]
fn healthy_host_passes_everything() {
    let v = run(&healthy());
    assert_eq!(v.len(), 21, "{v:?}");
    for c in &v {
        if V6_CHECKS.contains(&c.name.as_str()) {
            // No IPv6 on the VM's side: the IPv6 half is not judged, and says why.
            assert_eq!(c.status, Skip, "{c:?}");
            assert_eq!(
                c.evidence,
                "br0 has no global IPv6 address and no IPv6 destination was given: the VM has no IPv6 path through this host"
            );
        } else {
            assert_eq!(c.status, Pass, "{c:?}");
        }
    }
    assert!(get(&v, "bridge")
        .evidence
        .contains("the guest's MAC is at 10.77.0.2"));
    assert!(get(&v, "nat")
        .evidence
        .contains("`ip saddr 10.77.0.0/24 oifname \"up0\" masquerade` (handle 2)"));
}

#[test]
fn mtu_tap_below_bridge_fails_uplink_below_bridge_warns() {
    let mut h = healthy();
    h.devs.iter_mut().find(|d| d.name == "vnet0").unwrap().mtu = Some(1400);
    let c = run(&h);
    let m = get(&c, "mtu");
    assert_eq!(m.status, Fail, "{m:?}");
    assert!(
        m.evidence
            .starts_with("vnet0 1400, br0 1500, up0 1500 (uplink)"),
        "{m:?}"
    );
    assert_eq!(m.fix.as_deref(), Some("ip link set dev vnet0 mtu 1500"));

    let mut h = healthy();
    h.devs.iter_mut().find(|d| d.name == "up0").unwrap().mtu = Some(1400);
    let m = get(&run(&h), "mtu").clone();
    assert_eq!(m.status, Warn, "{m:?}");
    assert!(m.evidence.contains("path-MTU black hole"), "{m:?}");
    assert_eq!(
        m.fix.as_deref(),
        Some(
            "lower the guest's MTU to 1400 (and: ip link set dev br0 mtu 1400), or raise up0's \
             where its network carries 1500-byte packets: ip link set dev up0 mtu 1500"
        )
    );
}

#[test]
fn a_disabled_port_with_its_link_up_is_set_forwarding_as_follow_says() {
    let mut h = healthy();
    h.devs
        .iter_mut()
        .find(|d| d.name == "vnet0")
        .unwrap()
        .brport_state = Some(0);
    let b = get(&run(&h), "bridge_port").clone();
    assert_eq!(b.status, Fail, "{b:?}");
    assert_eq!(b.fix.as_deref(), Some("bridge link set dev vnet0 state 3"));
}

#[test]
fn conntrack_thresholds() {
    let mut h = healthy();
    h.sysctl
        .insert("net/netfilter/nf_conntrack_count".into(), "80".into());
    h.sysctl
        .insert("net/netfilter/nf_conntrack_max".into(), "100".into());
    assert_eq!(get(&run(&h), "conntrack").status, Warn);
    h.sysctl
        .insert("net/netfilter/nf_conntrack_count".into(), "95".into());
    let c = get(&run(&h), "conntrack").clone();
    assert_eq!(c.status, Fail);
    assert!(
        c.evidence
            .starts_with("nf_conntrack_count = 95, nf_conntrack_max = 100 (95% used)"),
        "{c:?}"
    );
    h.sysctl.remove("net/netfilter/nf_conntrack_count");
    assert_eq!(get(&run(&h), "conntrack").status, Skip);
}

#[test]
fn no_nat_fails_for_a_private_subnet_with_an_nft_fix() {
    let mut h = healthy();
    h.ruleset = Ok(Ruleset::default());
    let c = get(&run(&h), "nat").clone();
    assert_eq!(c.status, Fail, "{c:?}");
    assert_eq!(
        c.fix.as_deref(),
        Some("nft 'add table ip nat' && nft 'add chain ip nat postrouting { type nat hook postrouting priority srcnat; }' && nft 'add rule ip nat postrouting ip saddr 10.77.0.0/24 oifname \"up0\" masquerade'")
    );
    // A masquerade for another uplink does not count, and is shown.
    let mut r = masq_rule();
    r.conds[1] = Cond::Ifname {
        out: true,
        neg: false,
        name: "eth9".into(),
        wildcard: false,
    };
    h.ruleset = Ok(Ruleset {
        chains: vec![nat_chain(vec![r])],
    });
    let c = get(&run(&h), "nat").clone();
    assert_eq!(c.status, Fail, "{c:?}");
    assert!(c.evidence.contains("oifname \"eth9\" masquerade"), "{c:?}");
    assert_eq!(
        c.fix.as_deref(),
        Some("nft 'insert rule ip labnat post ip saddr 10.77.0.0/24 oifname \"up0\" masquerade'")
    );
}

#[test]
fn bridged_setup_skips_routing_checks_and_judges_br_netfilter() {
    let mut h = healthy();
    // The host's default route goes out of br0 itself, with eth0 as a second port.
    if let Ok(r) = &mut h.routes {
        r[0].nexthops = vec![(2, Some(Ipv4Addr::new(10, 77, 0, 254).into()))];
    }
    h.devs.iter_mut().find(|d| d.name == "br0").unwrap().ports =
        vec!["eth0".into(), "vnet0".into()];
    h.sysctl.insert("net/ipv4/ip_forward".into(), "0".into());
    h.ruleset = Ok(Ruleset {
        chains: vec![Chain {
            family: "ip".into(),
            table: "filter".into(),
            name: "FORWARD".into(),
            base: Some(Base {
                hook: NfHook::Forward,
                priority: 0,
                policy: "drop".into(),
                kind: "filter".into(),
            }),
            rules: vec![],
        }],
    });
    let v = run(&h);
    for n in ["ip_forward", "forward_filter", "nat", "dhcp"] {
        assert_eq!(get(&v, n).status, Skip, "{n}: {:?}", get(&v, n));
    }
    let b = get(&v, "br_netfilter");
    assert_eq!(b.status, Fail, "{b:?}");
    assert!(b.evidence.contains("ip filter FORWARD"), "{b:?}");
    assert_eq!(
        b.fix.as_deref(),
        Some("sysctl -w net.bridge.bridge-nf-call-iptables=0")
    );
}

#[test]
fn bridged_ipv6_setup_judges_br_netfilter6_with_the_ip6tables_switches() {
    let mut h = healthy6();
    // The host's IPv6 default route goes out of br0 itself, with eth0 as a second port.
    if let Ok(r) = &mut h.routes6 {
        r[0].nexthops = vec![(2, Some(IpAddr::V6(v6("fd00:77::fe"))))];
    }
    h.devs.iter_mut().find(|d| d.name == "br0").unwrap().ports =
        vec!["eth0".into(), "vnet0".into()];
    h.ruleset = Ok(Ruleset {
        chains: vec![
            nat_chain(vec![masq_rule()]),
            fwd_chain("ip6", "filter", "FORWARD", "drop"),
        ],
    });
    let v = run(&h);
    for n in ["forward_filter6", "nat6", "rpfilter6"] {
        assert_eq!(get(&v, n).status, Skip, "{n}: {:?}", get(&v, n));
    }
    let b = get(&v, "br_netfilter6");
    assert_eq!(b.status, Fail, "{b:?}");
    assert_eq!(b.evidence, "net.bridge.bridge-nf-call-ip6tables = 1, br0 nf_call_ip6tables = 0: the VM's packets bridged onto the uplink's network also pass the IPv6 FORWARD hook; ip6 filter FORWARD (filter, hook forward, priority 0, policy drop, 0 rules): the VM's packets bridged onto the uplink's network are dropped by its policy");
    assert_eq!(
        b.fix.as_deref(),
        Some("sysctl -w net.bridge.bridge-nf-call-ip6tables=0")
    );
    // The IPv4 switch and hook are another matter: IPv4 is routed, two ports, no IPv4
    // FORWARD chain.
    let b4 = get(&v, "br_netfilter");
    assert_eq!(b4.status, Pass, "{b4:?}");
    assert!(b4.evidence.contains("(no chain there: accepted)"), "{b4:?}");

    // The bridge's own option, with the global switch off.
    h.sysctl
        .insert("net/bridge/bridge-nf-call-ip6tables".into(), "0".into());
    h.devs
        .iter_mut()
        .find(|d| d.name == "br0")
        .unwrap()
        .nf_call_ip6tables = Some(true);
    let c = get(&run(&h), "br_netfilter6").clone();
    assert_eq!(c.status, Fail, "{c:?}");
    assert!(
        c.evidence
            .starts_with("net.bridge.bridge-nf-call-ip6tables = 0, br0 nf_call_ip6tables = 1: "),
        "{c:?}"
    );
    assert_eq!(
        c.fix.as_deref(),
        Some("ip link set dev br0 type bridge nf_call_ip6tables 0")
    );
    h.devs
        .iter_mut()
        .find(|d| d.name == "br0")
        .unwrap()
        .nf_call_ip6tables = Some(false);
    let c = get(&run(&h), "br_netfilter6").clone();
    assert_eq!(c.status, Pass, "{c:?}");
    assert_eq!(c.evidence, "net.bridge.bridge-nf-call-ip6tables = 0, br0 nf_call_ip6tables = 0: frames bridged on br0 skip the IPv6 hooks");

    // Routed, with a second port: guest-to-guest frames dropped there only warn.
    let mut h = healthy6();
    h.devs.iter_mut().find(|d| d.name == "br0").unwrap().ports =
        vec!["vnet0".into(), "vnet1".into()];
    h.ruleset = Ok(Ruleset {
        chains: vec![fwd_chain("inet", "t", "fw", "drop")],
    });
    let c = get(&run(&h), "br_netfilter6").clone();
    assert_eq!(c.status, Warn, "{c:?}");
    assert!(
        c.evidence.contains(
            "frames between ports of the bridge (guest to guest) are dropped by its policy"
        ),
        "{c:?}"
    );
    // Without br_netfilter, nothing bridged meets the IP hooks.
    h.br_netfilter = false;
    let c = get(&run(&h), "br_netfilter6").clone();
    assert_eq!(c.status, Pass, "{c:?}");
    assert_eq!(c.evidence, "br_netfilter is not loaded (no /proc/sys/net/bridge): frames bridged on br0 do not pass the IPv6 netfilter hooks");
}

fn masq6_chain(family: &str, table: &str, handle: u64) -> Chain {
    let mut ch = nat_chain(vec![Rule {
        handle,
        conds: vec![
            Cond::Addr {
                dst: false,
                neg: false,
                net: Net::new(v6("fd00:77::"), 64),
            },
            Cond::Ifname {
                out: true,
                neg: false,
                name: "up0".into(),
                wildcard: false,
            },
        ],
        action: Action::Masquerade,
    }]);
    ch.family = family.into();
    ch.table = table.into();
    ch
}

#[test]
fn nat6_warns_for_a_ula_prefix_without_nat66_and_names_the_rule_that_nats() {
    let mut h = healthy6();
    let c = get(&run(&h), "nat6").clone();
    assert_eq!(c.status, Warn, "{c:?}");
    // The IPv4 masquerade of `ip labnat post` is not for IPv6 packets.
    assert_eq!(c.evidence, "no nftables or ip6tables-nft rule source-NATs new connections from fd00:77::/64 leaving via up0 (0 nat chain(s) at IPv6 postrouting): fd00:77::/64 is a unique-local (ULA, fc00::/7) prefix: replies come back only if the upstream network routes fd00:77::/64 to this host; otherwise it needs NAT66");
    assert_eq!(
        c.fix.as_deref(),
        Some("nft 'add table ip6 nat' && nft 'add chain ip6 nat postrouting { type nat hook postrouting priority srcnat; }' && nft 'add rule ip6 nat postrouting ip6 saddr fd00:77::/64 oifname \"up0\" masquerade'")
    );

    // A masquerade in an ip6 table.
    h.ruleset = Ok(Ruleset {
        chains: vec![nat_chain(vec![masq_rule()]), masq6_chain("ip6", "nat6", 5)],
    });
    let c = get(&run(&h), "nat6").clone();
    assert_eq!(c.status, Pass, "{c:?}");
    assert_eq!(c.evidence, "new connections from fd00:77::/64 leaving via up0 are source-NATed by ip6 nat6 post: `ip6 saddr fd00:77::/64 oifname \"up0\" masquerade` (handle 5)");
    assert_eq!(c.fix, None);

    // An inet nat chain masquerading another uplink: not for up0; the fix goes into it.
    let mut ch = masq6_chain("inet", "labnat", 7);
    ch.rules[0].conds[1] = Cond::Ifname {
        out: true,
        neg: false,
        name: "eth9".into(),
        wildcard: false,
    };
    h.ruleset = Ok(Ruleset { chains: vec![ch] });
    let c = get(&run(&h), "nat6").clone();
    assert_eq!(c.status, Warn, "{c:?}");
    assert!(c.evidence.contains("(1 nat chain(s) at IPv6 postrouting; source NAT for other traffic: inet labnat post: `ip6 saddr fd00:77::/64 oifname \"eth9\" masquerade` (handle 7))"), "{c:?}");
    assert_eq!(
        c.fix.as_deref(),
        Some(
            "nft 'insert rule inet labnat post ip6 saddr fd00:77::/64 oifname \"up0\" masquerade'"
        )
    );

    // ip6tables-nft in use: the fix is an ip6tables command.
    let mut ch = nat_chain(vec![]);
    ch.family = "ip6".into();
    ch.table = "nat".into();
    ch.name = "POSTROUTING".into();
    h.ruleset = Ok(Ruleset { chains: vec![ch] });
    let c = get(&run(&h), "nat6").clone();
    assert_eq!(c.status, Warn, "{c:?}");
    assert_eq!(
        c.fix.as_deref(),
        Some("ip6tables -t nat -A POSTROUTING -s fd00:77::/64 -o up0 -j MASQUERADE")
    );

    // A global prefix is routed: no NAT needed.
    for d in h.devs.iter_mut().filter(|d| d.name == "br0") {
        d.addrs6 = vec![(v6("2001:db8:77::1"), 64)];
    }
    let c = get(&run(&h), "nat6").clone();
    assert_eq!(c.status, Pass, "{c:?}");
    assert_eq!(c.evidence, "2001:db8:77::/64 is a global prefix: no NAT is needed for a routed global prefix (replies come back when the upstream network routes it to this host)");

    // No IPv6 way out: nothing to judge.
    let mut h = healthy6();
    if let Ok(r) = &mut h.routes6 {
        r.remove(0);
    }
    let c = get(&run(&h), "nat6").clone();
    assert_eq!(c.status, Skip, "{c:?}");
    assert!(
        c.evidence
            .starts_with("no IPv6 route out of the host (see default_route6)"),
        "{c:?}"
    );
}

#[test]
fn strict_rp_filter_fails_when_the_guest_is_routed_elsewhere() {
    let mut h = healthy();
    h.sysctl
        .insert("net/ipv4/conf/all/rp_filter".into(), "1".into());
    let c = get(&run(&h), "rp_filter").clone();
    assert_eq!(c.status, Warn);
    assert_eq!(
        c.fix.as_deref(),
        Some("sysctl -w net.ipv4.conf.all.rp_filter=2")
    );
    // The guest uses an address the host routes out of the uplink.
    if let Ok(n) = &mut h.neighs {
        n[1].dst = Ipv4Addr::new(10, 99, 0, 5).into();
    }
    let v = run(&h);
    assert_eq!(
        get(&v, "rp_filter").status,
        Fail,
        "{:?}",
        get(&v, "rp_filter")
    );
    assert_eq!(get(&v, "bridge").status, Warn);
}

#[test]
fn sysctl_names_keep_dotted_interfaces_as_paths() {
    assert_eq!(
        sysctl_name("net/ipv4/conf/br0/rp_filter"),
        "net.ipv4.conf.br0.rp_filter"
    );
    assert_eq!(
        sysctl_name("net/ipv4/conf/eth0.100/rp_filter"),
        "net/ipv4/conf/eth0.100/rp_filter"
    );
}

#[test]
fn gateway_states() {
    let mut h = healthy();
    if let Ok(n) = &mut h.neighs {
        n[0].state = netlink::NUD_FAILED;
    }
    let c = get(&run(&h), "gateway_neighbour").clone();
    assert_eq!(c.status, Fail);
    assert!(
        c.evidence.starts_with("192.0.2.1 on up0 is FAILED"),
        "{c:?}"
    );
    if let Ok(n) = &mut h.neighs {
        n.remove(0);
    }
    assert_eq!(get(&run(&h), "gateway_neighbour").status, Skip);
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn route6(table: u32, dst: &str, len: u8, kind: u8, hops: Vec<(u32, Option<&str>)>) -> IpRoute {
    IpRoute {
        table,
        dst: IpAddr::V6(v6(dst)),
        dst_len: len,
        kind,
        protocol: 4,
        priority: 1024,
        nexthops: hops
            .into_iter()
            .map(|(o, g)| (o, g.map(|g| IpAddr::V6(v6(g)))))
            .collect(),
    }
}

/// The healthy lab with IPv6: fd00:77::1/64 on br0, 2001:db8:2::2/64 on up0, default via
/// 2001:db8:2::1, forwarding on, radvd advertising on br0.
fn healthy6() -> Host {
    let mut h = healthy();
    for d in h.devs.iter_mut() {
        match d.name.as_str() {
            "br0" => d.addrs6 = vec![(v6("fd00:77::1"), 64)],
            "up0" => d.addrs6 = vec![(v6("2001:db8:2::2"), 64)],
            _ => {}
        }
    }
    for (k, v) in [
        ("net/ipv6/conf/all/forwarding", "1"),
        ("net/ipv6/conf/br0/forwarding", "1"),
        ("net/ipv6/conf/up0/forwarding", "1"),
        ("net/ipv6/conf/up0/accept_ra", "1"),
    ] {
        h.sysctl.insert(k.into(), v.into());
    }
    h.routes6 = Ok(vec![
        route6(254, "::", 0, 1, vec![(4, Some("2001:db8:2::1"))]),
        route6(254, "fd00:77::", 64, 1, vec![(2, None)]),
        route6(254, "2001:db8:2::", 64, 1, vec![(4, None)]),
    ]);
    h.neighs6 = Ok(vec![IpNeigh {
        ifindex: 4,
        dst: IpAddr::V6(v6("2001:db8:2::1")),
        state: netlink::NUD_REACHABLE,
        lladdr: Some("02:00:00:00:00:01".into()),
        router: true,
    }]);
    h.ra_daemons = Ok(vec![RaDaemon {
        who: "pid 7 (radvd)".into(),
        kind: "radvd".into(),
        ifaces: Some(vec!["br0".into()]),
        sends_ra: true,
        config: "/etc/radvd.conf".into(),
    }]);
    h
}

fn fwd_chain(family: &str, table: &str, name: &str, policy: &str) -> Chain {
    Chain {
        family: family.into(),
        table: table.into(),
        name: name.into(),
        base: Some(Base {
            hook: NfHook::Forward,
            priority: 0,
            policy: policy.into(),
            kind: "filter".into(),
        }),
        rules: vec![],
    }
}

#[test]
fn healthy_ipv6_passes_every_ipv6_check() {
    let v = run(&healthy6());
    for c in &v {
        // fd00:77::/64 is unique-local and nothing NATs it: nat6 warns (the upstream may
        // route it back, which the host cannot see). Every other check passes.
        let want = if c.name == "nat6" { Warn } else { Pass };
        assert_eq!(c.status, want, "{c:?}");
    }
    assert_eq!(
        get(&v, "br_netfilter6").evidence,
        "net.bridge.bridge-nf-call-ip6tables = 1, br0 nf_call_ip6tables = 0, but br0 has no other port than vnet0: no frame is bridged between ports"
    );
    assert_eq!(
        get(&v, "ip6_forward").evidence,
        "net.ipv6.conf.all.forwarding = 1 (br0 forwarding = 1, up0 forwarding = 1)"
    );
    assert_eq!(
        get(&v, "default_route6").evidence,
        "default via 2001:db8:2::1 dev up0 table main metric 1024"
    );
    assert_eq!(
        get(&v, "gateway_neighbour6").evidence,
        "2001:db8:2::1 on up0 is REACHABLE, lladdr 02:00:00:00:00:01"
    );
    assert_eq!(
        get(&v, "ra_service").evidence,
        "pid 7 (radvd) advertises on br0 (/etc/radvd.conf)"
    );
    assert!(get(&v, "forward_filter6")
        .evidence
        .contains("no nftables or ip6tables-nft chain at the IPv6 forward hook"));
    // The IPv4 verdicts are the same as without IPv6.
    let v4 = run(&healthy());
    for c in v4.iter().filter(|c| !V6_CHECKS.contains(&c.name.as_str())) {
        assert_eq!(get(&v, &c.name), c);
    }
}

#[test]
fn ipv6_forwarding_off_fails_with_the_sysctl_fix() {
    let mut h = healthy6();
    h.sysctl
        .insert("net/ipv6/conf/all/forwarding".into(), "0".into());
    let v = run(&h);
    let c = get(&v, "ip6_forward");
    assert_eq!(c.status, Fail, "{c:?}");
    assert!(
        c.evidence
            .starts_with("net.ipv6.conf.all.forwarding = 0 (br0 forwarding = 1"),
        "{c:?}"
    );
    assert_eq!(
        c.fix.as_deref(),
        Some("sysctl -w net.ipv6.conf.all.forwarding=1")
    );
    // An uplink whose default route comes from RAs also needs accept_ra = 2.
    if let Ok(r) = &mut h.routes6 {
        r[0].protocol = 9;
    }
    let c = get(&run(&h), "ip6_forward").clone();
    assert_eq!(
        c.fix.as_deref(),
        Some("sysctl -w net.ipv6.conf.all.forwarding=1 && sysctl -w net.ipv6.conf.up0.accept_ra=2")
    );
    assert!(c.evidence.ends_with("up0's default route comes from router advertisements, which forwarding = 1 makes it ignore unless net.ipv6.conf.up0.accept_ra = 2"), "{c:?}");
    // IPv4 forwarding is another switch.
    assert_eq!(get(&v, "ip_forward").status, Pass);
    // force_forwarding on the VM's bridge (Linux 6.17+) routes its packets anyway.
    h.sysctl
        .insert("net/ipv6/conf/br0/force_forwarding".into(), "1".into());
    assert_eq!(get(&run(&h), "ip6_forward").status, Pass);
}

#[test]
fn ip6_forward_drop_fails_naming_the_chain_and_ipv4_tables_do_not_count() {
    let mut h = healthy6();
    h.ruleset = Ok(Ruleset {
        chains: vec![
            nat_chain(vec![masq_rule()]),
            fwd_chain("ip6", "filter", "FORWARD", "drop"),
        ],
    });
    let v = run(&h);
    let c = get(&v, "forward_filter6");
    assert_eq!(c.status, Fail, "{c:?}");
    assert!(c.evidence.starts_with("ip6 filter FORWARD (filter, hook forward, priority 0, policy drop, 0 rules): new connections from fd00:77::/64 (br0 → up0) are dropped by its policy"), "{c:?}");
    assert_eq!(c.fix.as_deref(), Some("ip6tables -I FORWARD -i br0 -s fd00:77::/64 -j ACCEPT && ip6tables -I FORWARD -o br0 -d fd00:77::/64 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"));
    // An ip6 table is not on the IPv4 path.
    assert_eq!(get(&v, "forward_filter").status, Pass);

    // An `ip` drop is not on the IPv6 path; an `inet` one is on both.
    h.ruleset = Ok(Ruleset {
        chains: vec![
            nat_chain(vec![masq_rule()]),
            fwd_chain("ip", "t4", "fw", "drop"),
        ],
    });
    let v = run(&h);
    assert_eq!(get(&v, "forward_filter6").status, Pass);
    assert_eq!(get(&v, "forward_filter").status, Fail);
    h.ruleset = Ok(Ruleset {
        chains: vec![
            nat_chain(vec![masq_rule()]),
            fwd_chain("inet", "labfilter", "forward", "drop"),
        ],
    });
    let v = run(&h);
    let c = get(&v, "forward_filter6");
    assert_eq!(c.status, Fail);
    assert!(c.fix.as_deref().unwrap().starts_with(
        "nft 'insert rule inet labfilter forward iifname \"br0\" ip6 saddr fd00:77::/64 accept'"
    ));

    // An accept rule for the VM's prefix in an inet chain (IPv6 saddr after `meta nfproto
    // ipv6`): new connections pass, replies still dropped.
    let mut ch = fwd_chain("inet", "labfilter", "forward", "drop");
    ch.rules.push(Rule {
        handle: 4,
        conds: vec![
            Cond::Nfproto {
                neg: false,
                value: 10,
            },
            Cond::Addr {
                dst: false,
                neg: false,
                net: Net::new(v6("fd00:77::"), 64),
            },
        ],
        action: Action::Accept,
    });
    h.ruleset = Ok(Ruleset {
        chains: vec![nat_chain(vec![masq_rule()]), ch],
    });
    let v = run(&h);
    let c = get(&v, "forward_filter6");
    assert_eq!(c.status, Fail, "{c:?}");
    assert!(c.evidence.contains("new connections from fd00:77::/64 (br0 → up0) are accepted by rule `meta nfproto ipv6 ip6 saddr fd00:77::/64 accept` (handle 4); replies to fd00:77::/64 (up0 → br0) are dropped by its policy"), "{c:?}");
    // The IPv4 packets never match an IPv6 rule.
    assert_eq!(get(&v, "forward_filter").status, Fail);
}

#[test]
fn strict_ipv6_rpfilter_drops_when_the_prefix_is_routed_elsewhere() {
    let mut h = healthy6();
    let rp = Chain {
        family: "inet".into(),
        table: "raw6".into(),
        name: "pre".into(),
        base: Some(Base {
            hook: NfHook::Prerouting,
            priority: -300,
            policy: "accept".into(),
            kind: "filter".into(),
        }),
        rules: vec![Rule {
            handle: 3,
            conds: vec![Cond::RpFilter {
                strict: true,
                on_fail: true,
                text: "fib saddr . iif oif missing".into(),
            }],
            action: Action::Drop,
        }],
    };
    h.ruleset = Ok(Ruleset {
        chains: vec![nat_chain(vec![masq_rule()]), rp],
    });
    let c = get(&run(&h), "rpfilter6").clone();
    assert_eq!(c.status, Pass, "{c:?}");
    assert!(
        c.evidence
            .starts_with("inet raw6 pre: `fib saddr . iif oif missing drop` (handle 3)"),
        "{c:?}"
    );
    // The VM's prefix routed out of the uplink: every packet from the VM fails the test.
    if let Ok(r) = &mut h.routes6 {
        r[1].nexthops = vec![(4, None)];
    }
    let c = get(&run(&h), "rpfilter6").clone();
    assert_eq!(c.status, Fail, "{c:?}");
    assert_eq!(c.evidence, "new connections from fd00:77::/64 (br0 → up0) are dropped by inet raw6 pre: `fib saddr . iif oif missing drop` (handle 3) (fd00:77::/64 is routed via up0)");
    assert_eq!(
        c.fix.as_deref(),
        Some("ip -6 route replace fd00:77::/64 dev br0 metric 1024")
    );
}

#[test]
fn no_ipv6_default_route_and_a_failed_gateway() {
    let mut h = healthy6();
    if let Ok(n) = &mut h.neighs6 {
        n[0].state = netlink::NUD_FAILED;
    }
    let c = get(&run(&h), "gateway_neighbour6").clone();
    assert_eq!(c.status, Fail, "{c:?}");
    assert!(c.evidence.starts_with("2001:db8:2::1 on up0 is FAILED, lladdr 02:00:00:00:00:01: the gateway did not answer neighbour solicitations"), "{c:?}");
    if let Ok(r) = &mut h.routes6 {
        r.remove(0);
    }
    let v = run(&h);
    let c = get(&v, "default_route6");
    assert_eq!(c.status, Fail, "{c:?}");
    // Forwarding on with accept_ra = 1 on the uplink: RAs are ignored, say so.
    assert!(c.evidence.contains("accept_ra = 1 on up0"), "{c:?}");
    assert!(
        c.fix
            .as_deref()
            .unwrap()
            .starts_with("sysctl -w net.ipv6.conf.up0.accept_ra=2"),
        "{c:?}"
    );
    assert_eq!(get(&v, "gateway_neighbour6").status, Skip);
    // A blackhole default.
    if let Ok(r) = &mut h.routes6 {
        r.push(route6(254, "::", 0, 6, vec![(1, None)]));
    }
    let c = get(&run(&h), "default_route6").clone();
    assert_eq!(c.status, Fail, "{c:?}");
    assert!(
        c.evidence
            .starts_with("blackhole default table main metric 1024"),
        "{c:?}"
    );
}

#[test]
fn ra_service_warns_without_a_daemon_for_the_bridge() {
    let mut h = healthy6();
    h.ra_daemons = Ok(vec![]);
    let c = get(&run(&h), "ra_service").clone();
    assert_eq!(c.status, Warn, "{c:?}");
    assert!(c.evidence.starts_with("no radvd or dnsmasq runs in this namespace: nothing sends router advertisements on br0"), "{c:?}");
    assert!(
        c.fix
            .as_deref()
            .unwrap()
            .contains("interface br0 { AdvSendAdvert on; prefix fd00:77::/64 { }; };"),
        "{c:?}"
    );
    h.ra_daemons = Ok(vec![RaDaemon {
        who: "pid 8 (dnsmasq)".into(),
        kind: "dnsmasq".into(),
        ifaces: Some(vec!["virbr9".into()]),
        sends_ra: true,
        config: "its command line".into(),
    }]);
    let c = get(&run(&h), "ra_service").clone();
    assert_eq!(c.status, Warn, "{c:?}");
    assert!(
        c.evidence
            .contains("pid 8 (dnsmasq) (its command line) serves virbr9 only"),
        "{c:?}"
    );
    h.ra_daemons = Err("reading /proc: denied".into());
    assert_eq!(get(&run(&h), "ra_service").status, Warn);
}

#[test]
fn route_to_a_blackholed_destination_names_the_route_and_table() {
    let mut h = healthy6();
    if let Ok(r) = &mut h.routes6 {
        r.push(route6(100, "2001:db8:ffff::", 48, 6, vec![(1, None)]));
    }
    h.ip_rules6 = Ok(vec![
        IpRule {
            priority: 0,
            table: 255,
            action: 1,
            dst: None,
            src: None,
            iif: None,
            invert: false,
            other: vec![],
        },
        IpRule {
            priority: 100,
            table: 100,
            action: 1,
            dst: None,
            src: Some((IpAddr::V6(v6("fd00:77::")), 64)),
            iif: None,
            invert: false,
            other: vec![],
        },
        IpRule {
            priority: 32766,
            table: 254,
            action: 1,
            dst: None,
            src: None,
            iif: None,
            invert: false,
            other: vec![],
        },
    ]);
    let dst = IpAddr::V6(v6("2001:db8:ffff::1"));
    h.ruleset = Ok(Ruleset {
        chains: vec![fwd_chain("inet", "t", "fw", "accept")],
    });
    h.dest_route = Some(DestRoute {
        dst,
        from: Some((IpAddr::V6(v6("fd00:77::2")), "br0".into())),
        answer: Err(libc::EINVAL),
        local: Some(Err(libc::EINVAL)),
    });
    let v = run_checks_to(&h, "vnet0", None, Some(Net::new(dst, 128)));
    assert!(v.iter().all(|c| c.name != "default_route6"), "{v:?}");
    let c = get(&v, "route6");
    assert_eq!(c.status, Fail, "{c:?}");
    assert_eq!(c.evidence, "`ip -6 route get 2001:db8:ffff::1 from fd00:77::2 iif br0` is refused (EINVAL: a blackhole route): blackhole 2001:db8:ffff::/48 table 100 metric 1024 (chosen by policy rule 100: lookup 100): every packet to 2001:db8:ffff::1 is dropped silently");
    assert_eq!(
        c.fix.as_deref(),
        Some("ip -6 route del blackhole 2001:db8:ffff::/48 table 100")
    );
    assert_eq!(get(&v, "gateway_neighbour6").status, Skip);
    // The IPv4 half keeps its default-route checks.
    assert_eq!(get(&v, "default_route").status, Pass);
    // The forward rules are judged for packets to the destination.
    assert!(get(&v, "forward_filter6")
        .evidence
        .contains("new connections from fd00:77::/64 to 2001:db8:ffff::1 (br0 → up0) are accepted by its policy"));

    // A reachable destination: the route, its device and the gateway's state.
    h.dest_route = Some(DestRoute {
        dst,
        from: None,
        answer: Ok(route6(254, "::", 0, 1, vec![(4, Some("2001:db8:2::1"))])),
        local: None,
    });
    let v = run_checks_to(&h, "vnet0", None, Some(Net::new(dst, 128)));
    let c = get(&v, "route6");
    assert_eq!(c.status, Pass, "{c:?}");
    assert_eq!(c.evidence, "`ip -6 route get 2001:db8:ffff::1`: default via 2001:db8:2::1 dev up0 table main metric 1024; the gateway 2001:db8:2::1 on up0 is REACHABLE");
    assert_eq!(get(&v, "gateway_neighbour6").status, Pass);
}

#[test]
fn route_to_an_ipv4_destination_refused_only_when_forwarded() {
    let mut h = healthy();
    if let Ok(rs) = &mut h.ruleset {
        rs.chains.push(fwd_chain("inet", "t", "fw", "accept"));
    }
    let dst = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
    let local = IpRoute {
        table: 254,
        dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        dst_len: 0,
        kind: 1,
        protocol: 0,
        priority: 0,
        nexthops: vec![(4, Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))))],
    };
    h.dest_route = Some(DestRoute {
        dst,
        from: Some((IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2)), "br0".into())),
        answer: Err(libc::EHOSTUNREACH),
        local: Some(Ok(local.clone())),
    });
    let v = run_checks_to(&h, "vnet0", None, Some(Net::new(dst, 32)));
    let c = get(&v, "route");
    assert_eq!(c.status, Fail, "{c:?}");
    assert!(c.evidence.starts_with("`ip route get 203.0.113.1 from 10.77.0.2 iif br0` is refused (EHOSTUNREACH), but the host's own packets to 203.0.113.1 are routed (default via 192.0.2.1 dev up0 table main metric 0)"), "{c:?}");
    assert!(v.iter().all(|c| c.name != "default_route"));
    h.dest_route = Some(DestRoute {
        dst,
        from: None,
        answer: Ok(local),
        local: None,
    });
    let v = run_checks_to(&h, "vnet0", None, Some(Net::new(dst, 32)));
    assert_eq!(get(&v, "route").status, Pass, "{v:?}");
    assert_eq!(
        get(&v, "nat").evidence,
        "new connections from 10.77.0.0/24 to 203.0.113.1 leaving via up0 are source-NATed by ip labnat post: `ip saddr 10.77.0.0/24 oifname \"up0\" masquerade` (handle 2)"
    );
    // A destination inside a prefix no rule covers: the NAT rule still matches, and the
    // forward rules see the destination.
    assert!(get(&v, "forward_filter")
        .evidence
        .contains("new connections from 10.77.0.0/24 to 203.0.113.1 (br0 → up0)"));
}
