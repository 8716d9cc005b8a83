//! The checks, in the order a packet from the VM meets what they check: tap, bridge port,
//! bridge, MTU, bridge netfilter, forwarding, reverse-path filter, FORWARD rules, NAT,
//! conntrack, default route, gateway neighbour, DHCP. Each is a pure function of a [`Host`]
//! snapshot and says what it read (evidence) and what to run (fix).

use super::host::{Dev, Host};
use super::rules::{self, Chain, Fate, Iface, Net, Pkt, Place, Ruleset};
use super::{Check, CheckStatus};
use crate::host::netlink::{self, nud_name};
use crate::model::event::NfHook;
use std::net::Ipv4Addr;

use CheckStatus::{Fail, Pass, Skip, Warn};

mod devices;
mod netfilter;
mod routing;
mod services;

use devices::*;
use netfilter::*;
use routing::*;
use services::*;

fn check(
    name: &str,
    status: CheckStatus,
    evidence: impl Into<String>,
    fix: Option<String>,
) -> Check {
    Check {
        name: name.to_string(),
        status,
        evidence: evidence.into(),
        fix,
    }
}

/// The default route the VM's packets to the internet take.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DefaultRoute {
    kind: u8,
    priority: u32,
    /// (output device index, gateway) per next hop.
    nexthops: Vec<(u32, Option<Ipv4Addr>)>,
}

/// What the checks share: the VM's devices and network, the way out.
struct Ctx<'a> {
    h: &'a Host,
    tap_name: &'a str,
    tap: Option<&'a Dev>,
    /// The tap's master, when it is a Linux bridge.
    bridge: Option<&'a Dev>,
    /// The device holding the VM's gateway address: the bridge, or a routed tap.
    l3: Option<&'a Dev>,
    /// The gateway address on `l3` and the VM's subnet.
    gw: Option<(Ipv4Addr, u8)>,
    subnet: Option<Net>,
    /// Why `subnet` is unknown.
    no_subnet: String,
    defaults: Vec<DefaultRoute>,
    uplink: Option<&'a Dev>,
    /// The default route leaves through `l3` itself: the VM is bridged onto the uplink's
    /// network and the host does not route its packets.
    bridged: bool,
    guest: Option<(Ipv4Addr, u16)>,
}

impl<'a> Ctx<'a> {
    fn new(h: &'a Host, tap_name: &'a str, mac: Option<&str>) -> Ctx<'a> {
        let tap = h.dev(tap_name);
        let bridge = tap
            .and_then(|t| t.master.as_deref())
            .and_then(|m| h.dev(m))
            .filter(|m| m.is_bridge);
        let l3 = bridge.or(tap.filter(|t| t.master.is_none() && !t.addrs.is_empty()));
        let guest = match (l3, mac, &h.neighs) {
            (Some(l3), Some(mac), Ok(ns)) => ns
                .iter()
                .find(|n| {
                    n.ifindex == l3.ifindex
                        && n.lladdr
                            .as_deref()
                            .is_some_and(|m| m.eq_ignore_ascii_case(mac))
                })
                .map(|n| (n.dst, n.state)),
            _ => None,
        };
        let gw = l3.and_then(|d| {
            guest
                .and_then(|(g, _)| {
                    d.addrs
                        .iter()
                        .find(|(a, l)| Net::new(*a, *l).contains(g))
                        .copied()
                })
                .or_else(|| d.addrs.first().copied())
        });
        let subnet = gw.map(|(a, l)| Net::new(a, l));
        let no_subnet = match (tap, bridge, l3) {
            (None, _, _) => format!("{tap_name} is not in this network namespace"),
            (Some(t), None, None) => match &t.master {
                Some(m) => format!("{tap_name}'s master {m} is not a Linux bridge"),
                None => format!("{tap_name} is in no bridge"),
            },
            (_, _, Some(d)) if d.addrs.is_empty() => format!("{} has no IPv4 address", d.name),
            _ => String::new(),
        };
        let mut defaults: Vec<DefaultRoute> = match &h.routes {
            Ok(rs) => rs
                .iter()
                .filter(|r| r.table == 254 && r.dst_len == 0)
                .map(|r| DefaultRoute {
                    kind: r.kind,
                    priority: r.priority,
                    nexthops: r.nexthops.clone(),
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        defaults.sort_by_key(|d| d.priority);
        let uplink = defaults
            .first()
            .filter(|d| d.kind == 1)
            .and_then(|d| d.nexthops.first())
            .and_then(|(oif, _)| h.dev_by_index(*oif));
        let bridged = matches!((uplink, l3), (Some(u), Some(l)) if u.name == l.name);
        Ctx {
            h,
            tap_name,
            tap,
            bridge,
            l3,
            gw,
            subnet,
            no_subnet,
            defaults,
            uplink,
            bridged,
            guest,
        }
    }

    fn iface(d: Option<&Dev>) -> Iface {
        match d {
            Some(d) => Iface::Is {
                name: d.name.clone(),
                index: d.ifindex,
            },
            None => Iface::Unknown,
        }
    }

    /// A new connection from the VM to the internet, at FORWARD.
    fn pkt_out(&self, subnet: Net) -> Pkt {
        Pkt {
            src: Place::In(subnet),
            dst: Place::Internet {
                not_in: Some(subnet),
            },
            iif: Self::iface(self.l3),
            oif: Self::iface(self.uplink),
            ct: rules::CT_NEW,
        }
    }

    /// A reply from the internet to the VM (after de-NAT), at FORWARD.
    fn pkt_back(&self, subnet: Net) -> Pkt {
        Pkt {
            src: Place::Internet {
                not_in: Some(subnet),
            },
            dst: Place::In(subnet),
            iif: Self::iface(self.uplink),
            oif: Self::iface(self.l3),
            ct: rules::CT_ESTABLISHED,
        }
    }

    fn l3_name(&self) -> &str {
        self.l3.map(|d| d.name.as_str()).unwrap_or("<bridge>")
    }

    /// The uplink's name, or what stands for it when there is no default route.
    fn uplink_desc(&self) -> String {
        self.uplink
            .map(|u| u.name.clone())
            .unwrap_or_else(|| "any uplink".into())
    }
}

/// `sysctl -w` name of a /proc/sys path: dotted, unless an interface name holds a dot (then
/// the path form, which sysctl also takes).
fn sysctl_name(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').collect();
    if parts.iter().any(|p| p.contains('.')) {
        path.to_string()
    } else {
        parts.join(".")
    }
}

fn dev_is_down(d: &Dev) -> bool {
    !d.admin_up || d.carrier == Some(false)
}

fn worst(a: CheckStatus, b: CheckStatus) -> CheckStatus {
    let rank = |s: CheckStatus| match s {
        Skip => 0,
        Pass => 1,
        Warn => 2,
        Fail => 3,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

/// The main table's route for `a` (longest prefix), as (dst_len, device index).
fn route_dev(h: &Host, a: Ipv4Addr) -> Option<u32> {
    let rs = h.routes.as_ref().ok()?;
    rs.iter()
        .filter(|r| r.table == 254 && Net::new(r.dst, r.dst_len).contains(a))
        .max_by_key(|r| (r.dst_len, std::cmp::Reverse(r.priority)))
        .and_then(|r| r.nexthops.first().map(|(o, _)| *o))
}

fn ruleset_or_skip<'a>(c: &'a Ctx, name: &str) -> Result<&'a Ruleset, Check> {
    c.h.ruleset.as_ref().map_err(|e| {
        check(
            name,
            Skip,
            format!("cannot read the nftables ruleset: {e}"),
            Some("run kvmtrace as root (reading nftables needs CAP_NET_ADMIN)".into()),
        )
    })
}

/// Every check for the VM whose tap is `tap` (guest MAC `mac`, when known), in path order.
pub fn run_checks(h: &Host, tap: &str, mac: Option<&str>) -> Vec<Check> {
    let c = Ctx::new(h, tap, mac);
    // A macvtap guest meets no bridge, no routing and no netfilter of this host: its frames
    // go straight out of the lower device. Its own faults are the lower device and the
    // host it cannot reach.
    if let Some(lower) = c.tap.and_then(|t| t.macvtap_lower.as_deref()) {
        return vec![
            tap_check(&c),
            lower_device_check(&c, lower),
            macvtap_host_check(&c, lower),
        ];
    }
    vec![
        tap_check(&c),
        bridge_port_check(&c),
        bridge_check(&c),
        mtu_check(&c),
        br_netfilter_check(&c),
        ip_forward_check(&c),
        rp_filter_check(&c),
        forward_filter_check(&c),
        nat_check(&c),
        conntrack_check(&c),
        default_route_check(&c),
        gateway_neighbour_check(&c),
        dhcp_check(&c),
    ]
}

#[cfg(test)]
mod tests {
    use super::super::host::UdpSock;
    use super::super::rules::{Action, Base, Cond, Rule};
    use super::*;
    use crate::host::netlink::{Neigh, Route};
    use std::collections::BTreeMap;

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
            ("net/netfilter/nf_conntrack_count", "3"),
            ("net/netfilter/nf_conntrack_max", "262144"),
        ] {
            sysctl.insert(k.to_string(), v.to_string());
        }
        Host {
            devs: vec![dev("lo", 1), br, tap, up],
            sysctl,
            routes: Ok(vec![
                Route {
                    table: 254,
                    dst: Ipv4Addr::UNSPECIFIED,
                    dst_len: 0,
                    kind: 1,
                    priority: 0,
                    nexthops: vec![(4, Some(Ipv4Addr::new(192, 0, 2, 1)))],
                },
                Route {
                    table: 254,
                    dst: Ipv4Addr::new(10, 77, 0, 0),
                    dst_len: 24,
                    kind: 1,
                    priority: 0,
                    nexthops: vec![(2, None)],
                },
            ]),
            neighs: Ok(vec![
                Neigh {
                    ifindex: 4,
                    dst: Ipv4Addr::new(192, 0, 2, 1),
                    state: netlink::NUD_REACHABLE,
                    lladdr: Some("02:00:00:00:00:01".into()),
                },
                Neigh {
                    ifindex: 2,
                    dst: Ipv4Addr::new(10, 77, 0, 2),
                    state: netlink::NUD_STALE,
                    lladdr: Some("52:54:00:4b:54:02".into()),
                },
            ]),
            fib_rules: Ok(vec![(0, 255), (32766, 254), (32767, 253)]),
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
        Host {
            devs: vec![low, mv],
            ..healthy()
        }
    }

    #[test]
    fn a_macvtap_is_checked_on_its_lower_device_and_host_isolation_only() {
        let c = run_checks(&macvtap_host(true, false), "mvtap0", None);
        let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["tap", "lower_device", "macvtap_host"]);
        assert!(c.iter().all(|c| c.status == Pass), "{c:?}");
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

    #[test]
    fn healthy_host_passes_everything() {
        let v = run(&healthy());
        for c in &v {
            assert_eq!(c.status, Pass, "{c:?}");
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
            Some(
                "nft 'insert rule ip labnat post ip saddr 10.77.0.0/24 oifname \"up0\" masquerade'"
            )
        );
    }

    #[test]
    fn bridged_setup_skips_routing_checks_and_judges_br_netfilter() {
        let mut h = healthy();
        // The host's default route goes out of br0 itself, with eth0 as a second port.
        if let Ok(r) = &mut h.routes {
            r[0].nexthops = vec![(2, Some(Ipv4Addr::new(10, 77, 0, 254)))];
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
            n[1].dst = Ipv4Addr::new(10, 99, 0, 5);
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
}
