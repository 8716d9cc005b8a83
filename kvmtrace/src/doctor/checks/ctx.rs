//! What the checks share: the VM's devices and networks and the way out ([`Ctx`]), made once
//! from the [`Host`] snapshot, and the small helpers every family of checks uses. A leaf of
//! `checks`: the check families and `checks/mod.rs` import it, it imports none of them.

use crate::doctor::check::{Check, CheckStatus};
use crate::doctor::host::{Dev, Host};
use crate::doctor::rules::{self, Iface, Net, Pkt, Place, Ruleset, Tri};
use crate::host::netlink::IpRoute;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use CheckStatus::{Fail, Pass, Skip, Warn};

pub(super) fn check(
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
pub(super) struct DefaultRoute {
    pub(super) kind: u8,
    pub(super) priority: u32,
    /// (output device index, gateway) per next hop.
    pub(super) nexthops: Vec<(u32, Option<Ipv4Addr>)>,
}

/// What the checks share: the VM's devices and network, the way out.
pub(super) struct Ctx<'a> {
    pub(super) h: &'a Host,
    pub(super) tap_name: &'a str,
    pub(super) tap: Option<&'a Dev>,
    /// The tap's master, when it is a Linux bridge.
    pub(super) bridge: Option<&'a Dev>,
    /// The device holding the VM's gateway address: the bridge, or a routed tap.
    pub(super) l3: Option<&'a Dev>,
    /// The gateway address on `l3` and the VM's subnet.
    pub(super) gw: Option<(Ipv4Addr, u8)>,
    pub(super) subnet: Option<Net>,
    /// Why `subnet` is unknown.
    pub(super) no_subnet: String,
    pub(super) defaults: Vec<DefaultRoute>,
    pub(super) uplink: Option<&'a Dev>,
    /// The default route leaves through `l3` itself: the VM is bridged onto the uplink's
    /// network and the host does not route its packets.
    pub(super) bridged: bool,
    pub(super) guest: Option<(Ipv4Addr, u16)>,
    /// The destination given on the command line (`doctor VM DEST`): the model packets go
    /// there, and the route to it is looked up instead of judging the default route.
    pub(super) dest: Option<Net>,
    /// The IPv6 half of the path.
    pub(super) v6: Ctx6<'a>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(
        h: &'a Host,
        tap_name: &'a str,
        mac: Option<&str>,
        dest: Option<Net>,
    ) -> Ctx<'a> {
        let tap = h.dev(tap_name);
        let bridge = tap
            .and_then(|t| t.master.as_deref())
            .and_then(|m| h.dev(m))
            .filter(|m| m.is_bridge);
        let l3 =
            bridge.or(
                tap.filter(|t| t.master.is_none() && (!t.addrs.is_empty() || !t.addrs6.is_empty()))
            );
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
        let dest4 = dest.filter(|d| !d.is_v6());
        // The way out: to the destination, the device of the kernel's route to it; else (or
        // when that route refuses) the default route's.
        let uplink = dest4.and_then(|_| dest_out_dev(h, false)).or_else(|| {
            defaults
                .first()
                .filter(|d| d.kind == 1)
                .and_then(|d| d.nexthops.first())
                .and_then(|(oif, _)| h.dev_by_index(*oif))
        });
        let bridged = matches!((uplink, l3), (Some(u), Some(l)) if u.name == l.name);
        let v6 = Ctx6::new(h, bridge, l3, mac, dest);
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
            dest: dest4,
            v6,
        }
    }

    pub(super) fn iface(d: Option<&Dev>) -> Iface {
        match d {
            Some(d) => Iface::Is {
                name: d.name.clone(),
                index: d.ifindex,
            },
            None => Iface::Unknown,
        }
    }

    /// Where the VM's new connections go: the destination, or the internet.
    pub(super) fn far(&self, subnet: Net) -> Place {
        match self.dest {
            Some(d) => Place::In(d),
            None => Place::Internet {
                not_in: Some(subnet),
            },
        }
    }

    /// ` to DEST` when a destination was given.
    pub(super) fn to_dest(&self) -> String {
        self.dest
            .map(|d| format!(" to {}", net_text(d)))
            .unwrap_or_default()
    }

    /// A new connection from the VM to the internet, at FORWARD.
    pub(super) fn pkt_out(&self, subnet: Net) -> Pkt {
        Pkt {
            src: Place::In(subnet),
            dst: self.far(subnet),
            iif: Self::iface(self.l3),
            oif: Self::iface(self.uplink),
            ct: rules::CT_NEW,
            v6: false,
            rp: rules::Tri::Maybe,
        }
    }

    /// A reply from the internet to the VM (after de-NAT), at FORWARD.
    pub(super) fn pkt_back(&self, subnet: Net) -> Pkt {
        Pkt {
            src: self.far(subnet),
            dst: Place::In(subnet),
            iif: Self::iface(self.uplink),
            oif: Self::iface(self.l3),
            ct: rules::CT_ESTABLISHED,
            v6: false,
            rp: rules::Tri::Maybe,
        }
    }

    pub(super) fn l3_name(&self) -> &str {
        self.l3.map(|d| d.name.as_str()).unwrap_or("<bridge>")
    }

    /// The uplink's name, or what stands for it when there is no default route.
    pub(super) fn uplink_desc(&self) -> String {
        self.uplink
            .map(|u| u.name.clone())
            .unwrap_or_else(|| "any uplink".into())
    }
}

/// An address prefix as written on the command line: a single address without `/32` or
/// `/128`.
pub(super) fn net_text(n: Net) -> String {
    if n.len == n.max_len() {
        n.addr.to_string()
    } else {
        n.to_string()
    }
}

/// The device of the kernel's route to the destination of `v6`'s family, when it has one.
pub(super) fn dest_out_dev(h: &Host, v6: bool) -> Option<&Dev> {
    let d = h.dest_route.as_ref().filter(|d| d.dst.is_ipv6() == v6)?;
    let r = d.answer.as_ref().ok()?;
    (r.kind == 1)
        .then(|| r.nexthops.first())
        .flatten()
        .and_then(|(o, _)| h.dev_by_index(*o))
}

pub(super) fn dev_is_down(d: &Dev) -> bool {
    !d.admin_up || d.carrier == Some(false)
}

pub(super) fn worst(a: CheckStatus, b: CheckStatus) -> CheckStatus {
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
pub(super) fn route_dev(h: &Host, a: Ipv4Addr) -> Option<u32> {
    let rs = h.routes.as_ref().ok()?;
    rs.iter()
        .filter(|r| r.table == 254 && Net::new(r.dst, r.dst_len).contains(a))
        .max_by_key(|r| (r.dst_len, std::cmp::Reverse(r.priority)))
        .and_then(|r| r.nexthops.first().map(|(o, _)| *o))
}

pub(super) fn ruleset_or_skip<'a>(c: &'a Ctx, name: &str) -> Result<&'a Ruleset, Check> {
    c.h.ruleset.as_ref().map_err(|e| {
        check(
            name,
            Skip,
            format!("cannot read the nftables ruleset: {e}"),
            Some("run kvmtrace as root (reading nftables needs CAP_NET_ADMIN)".into()),
        )
    })
}

/// What the IPv6 checks share.
pub(super) struct Ctx6<'a> {
    /// Why the IPv6 checks do not apply (None: they do).
    pub(super) off: Option<String>,
    /// The gateway address on the VM's device and the VM's prefix.
    pub(super) gw: Option<(Ipv6Addr, u8)>,
    pub(super) subnet: Option<Net>,
    /// Main-table IPv6 default routes, lowest metric first.
    pub(super) defaults: Vec<&'a IpRoute>,
    /// The way out: the device of the route to the destination, or of the default route.
    pub(super) uplink: Option<&'a Dev>,
    /// The way out is the VM's own bridge: the VM is bridged onto the uplink's network.
    pub(super) bridged: bool,
    /// The guest's global address, when the host has seen it (NDP entry of its MAC).
    pub(super) guest: Option<Ipv6Addr>,
    pub(super) dest: Option<Net>,
}

impl<'a> Ctx6<'a> {
    pub(super) fn new(
        h: &'a Host,
        bridge: Option<&'a Dev>,
        l3: Option<&'a Dev>,
        mac: Option<&str>,
        dest: Option<Net>,
    ) -> Ctx6<'a> {
        let dest = dest.filter(Net::is_v6);
        let guest = match (l3, mac, &h.neighs6) {
            (Some(l3), Some(mac), Ok(ns)) => ns
                .iter()
                .filter(|n| {
                    n.ifindex == l3.ifindex
                        && n.lladdr
                            .as_deref()
                            .is_some_and(|m| m.eq_ignore_ascii_case(mac))
                })
                .find_map(|n| match n.dst {
                    IpAddr::V6(a)
                        if l3.addrs6.iter().any(|(g, l)| Net::new(*g, *l).contains(a)) =>
                    {
                        Some(a)
                    }
                    _ => None,
                }),
            _ => None,
        };
        let gw = l3.and_then(|d| {
            guest
                .and_then(|g| {
                    d.addrs6
                        .iter()
                        .find(|(a, l)| Net::new(*a, *l).contains(g))
                        .copied()
                })
                .or_else(|| d.addrs6.first().copied())
        });
        let subnet = gw.map(|(a, l)| Net::new(a, l));
        let off = match l3 {
            None => Some(match bridge {
                None => "the VM's device is unknown (no bridge, no routed tap)".to_string(),
                Some(b) => format!("{} is not usable", b.name),
            }),
            Some(d) if d.addrs6.is_empty() && dest.is_none() => Some(format!(
                "{} has no global IPv6 address and no IPv6 destination was given: the VM has no IPv6 path through this host",
                d.name
            )),
            _ => None,
        };
        let mut defaults: Vec<&IpRoute> = match &h.routes6 {
            Ok(rs) => rs
                .iter()
                .filter(|r| r.table == 254 && r.dst_len == 0)
                .collect(),
            Err(_) => Vec::new(),
        };
        defaults.sort_by_key(|d| d.priority);
        let uplink = dest.and_then(|_| dest_out_dev(h, true)).or_else(|| {
            defaults
                .first()
                .filter(|d| d.kind == 1)
                .and_then(|d| d.nexthops.first())
                .and_then(|(oif, _)| h.dev_by_index(*oif))
        });
        let bridged = matches!((uplink, l3), (Some(u), Some(l)) if u.name == l.name);
        Ctx6 {
            off,
            gw,
            subnet,
            defaults,
            uplink,
            bridged,
            guest,
            dest,
        }
    }

    /// Where the VM's new IPv6 connections go.
    pub(super) fn far(&self) -> Place {
        match self.dest {
            Some(d) => Place::In(d),
            None => Place::Internet {
                not_in: self.subnet,
            },
        }
    }
}

/// The snapshot's route for `a` (longest prefix of the main table): its output device.
pub(super) fn route6_dev(h: &Host, a: IpAddr) -> Option<u32> {
    let rs = h.routes6.as_ref().ok()?;
    rs.iter()
        .filter(|r| r.table == 254 && r.kind == 1 && Net::new(r.dst, r.dst_len).contains(a))
        .max_by_key(|r| (r.dst_len, std::cmp::Reverse(r.priority)))
        .and_then(|r| r.nexthops.first().map(|(o, _)| *o))
}

/// Whether a strict reverse-path test passes for a packet from `src` arriving on `iif`.
pub(super) fn rp_passes(h: &Host, src: &Place, iif: Option<&Dev>) -> Tri {
    let (Some(iif), Ok(_)) = (iif, &h.routes6) else {
        return Tri::Maybe;
    };
    let probe = match src {
        Place::In(n) => n.addr,
        // Some internet address: the default route answers for it.
        Place::Internet { .. } => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1)),
    };
    match route6_dev(h, probe) {
        Some(o) if o == iif.ifindex => Tri::Yes,
        _ => Tri::No,
    }
}

impl Ctx<'_> {
    /// `skip` with the reason when the IPv6 checks do not apply.
    pub(super) fn skip6(&self, name: &str) -> Option<Check> {
        self.v6
            .off
            .as_ref()
            .map(|r| check(name, Skip, r.clone(), None))
    }

    /// The VM's IPv6 prefix, for a check of its routed IPv6 path; else the check's skip:
    /// the IPv6 half off, the VM bridged onto the uplink's network (`bridged`: what that means
    /// for this check), or no prefix known.
    pub(super) fn routed6(&self, name: &str, bridged: &str) -> Result<Net, Check> {
        if let Some(s) = self.skip6(name) {
            return Err(s);
        }
        let l3 = self.l3_name();
        if self.v6.bridged {
            return Err(check(
                name,
                Skip,
                format!("the IPv6 default route leaves through {l3} itself: {bridged}"),
                None,
            ));
        }
        self.v6.subnet.ok_or_else(|| {
            check(
                name,
                Skip,
                format!("the VM's IPv6 prefix is unknown: {l3} has no global IPv6 address"),
                None,
            )
        })
    }

    pub(super) fn uplink6_desc(&self) -> String {
        self.v6
            .uplink
            .map(|u| u.name.clone())
            .unwrap_or_else(|| "any uplink".into())
    }

    pub(super) fn to_dest6(&self) -> String {
        self.v6
            .dest
            .map(|d| format!(" to {}", net_text(d)))
            .unwrap_or_default()
    }

    /// A new IPv6 connection from the VM, at FORWARD (and PREROUTING).
    pub(super) fn pkt6_out(&self, subnet: Net) -> Pkt {
        let src = Place::In(subnet);
        Pkt {
            rp: rp_passes(self.h, &src, self.l3),
            src,
            dst: self.v6.far(),
            iif: Self::iface(self.l3),
            oif: Self::iface(self.v6.uplink),
            ct: rules::CT_NEW,
            v6: true,
        }
    }
}

impl Ctx<'_> {
    /// A reply to the VM's IPv6 prefix, at FORWARD (and PREROUTING).
    pub(super) fn pkt6_back(&self, subnet: Net) -> Pkt {
        let src = self.v6.far();
        Pkt {
            rp: rp_passes(self.h, &src, self.v6.uplink),
            src,
            dst: Place::In(subnet),
            iif: Self::iface(self.v6.uplink),
            oif: Self::iface(self.l3),
            ct: rules::CT_ESTABLISHED,
            v6: true,
        }
    }
}
