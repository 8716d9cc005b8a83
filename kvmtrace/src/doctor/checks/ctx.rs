//! What the checks share: the VM's devices and, for each IP version, its half of the path
//! ([`Ctx`], [`Side`]), made once from the [`Host`] snapshot; and the small helpers every
//! family of checks uses. A leaf of `checks`: the check families and `checks/mod.rs` import
//! it, it imports none of them.

use crate::doctor::check::{Check, CheckStatus};
use crate::doctor::family::Family;
use crate::doctor::host::{Dev, Host};
use crate::doctor::rules::{self, Iface, Net, Pkt, Place, Ruleset, Tri};
use crate::host::netlink::IpRoute;
use std::net::{IpAddr, Ipv6Addr};

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

/// What the checks share: the VM's devices, and each IP version's half of its path.
pub(super) struct Ctx<'a> {
    pub(super) h: &'a Host,
    pub(super) tap_name: &'a str,
    pub(super) tap: Option<&'a Dev>,
    /// The tap's master, when it is a Linux bridge.
    pub(super) bridge: Option<&'a Dev>,
    /// The device holding the VM's gateway address: the bridge, or a routed tap.
    pub(super) l3: Option<&'a Dev>,
    pub(super) v4: Side<'a>,
    pub(super) v6: Side<'a>,
}

/// One IP version's half of the VM's path: its network, the way out.
pub(super) struct Side<'a> {
    /// Why this half's checks do not apply (None: they do). IPv4's always apply; IPv6's when
    /// the VM's device holds a global IPv6 address or the destination is IPv6.
    pub(super) off: Option<String>,
    /// The gateway address on `l3` and the VM's subnet (IPv6: its prefix).
    pub(super) gw: Option<(IpAddr, u8)>,
    pub(super) subnet: Option<Net>,
    /// Why `subnet` is unknown.
    pub(super) no_subnet: String,
    /// Main-table default routes, lowest metric first.
    pub(super) defaults: Vec<&'a IpRoute>,
    /// The way out: the device of the route to the destination, or of the default route.
    pub(super) uplink: Option<&'a Dev>,
    /// The way out is `l3` itself: the VM is bridged onto the uplink's network and the host
    /// does not route its packets.
    pub(super) bridged: bool,
    /// The guest's address and its neighbour state, when the host has seen it (the entry of
    /// its MAC; IPv6: a global one, in a prefix of `l3`).
    pub(super) guest: Option<(IpAddr, u16)>,
    /// The destination given on the command line (`doctor VM DEST`), of this family: the
    /// model packets go there, and the route to it is looked up instead of judging the
    /// default route.
    pub(super) dest: Option<Net>,
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
        let side = |f| Side::new(h, f, tap_name, tap, bridge, l3, mac, dest);
        Ctx {
            h,
            tap_name,
            tap,
            bridge,
            l3,
            v4: side(Family::V4),
            v6: side(Family::V6),
        }
    }

    /// The VM's tap, or the check's skip when it is not in this network namespace.
    pub(super) fn tap_or_skip(&self, name: &str) -> Result<&'a Dev, Check> {
        self.tap.ok_or_else(|| {
            check(
                name,
                Skip,
                format!("{} is not in this network namespace", self.tap_name),
                None,
            )
        })
    }

    /// The half of the path of family `f`.
    pub(super) fn side(&self, f: Family) -> &Side<'a> {
        match f {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
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

    /// A new connection from the VM's `subnet` of family `f`, at FORWARD (and PREROUTING).
    pub(super) fn pkt_out(&self, f: Family, subnet: Net) -> Pkt {
        let s = self.side(f);
        let src = Place::In(subnet);
        Pkt {
            rp: rp_passes(self.h, f, &src, self.l3),
            src,
            dst: s.far(),
            iif: Self::iface(self.l3),
            oif: Self::iface(s.uplink),
            ct: rules::CT_NEW,
            v6: f.is_v6(),
        }
    }

    /// A reply to the VM's `subnet` (after de-NAT), at FORWARD (and PREROUTING).
    pub(super) fn pkt_back(&self, f: Family, subnet: Net) -> Pkt {
        let s = self.side(f);
        let src = s.far();
        Pkt {
            rp: rp_passes(self.h, f, &src, s.uplink),
            src,
            dst: Place::In(subnet),
            iif: Self::iface(s.uplink),
            oif: Self::iface(self.l3),
            ct: rules::CT_ESTABLISHED,
            v6: f.is_v6(),
        }
    }

    pub(super) fn l3_name(&self) -> &str {
        self.l3.map(|d| d.name.as_str()).unwrap_or("<bridge>")
    }

    /// What the way out of family `f` is called in evidence: `the default route`, `the IPv6
    /// default route`.
    pub(super) fn default_route_words(&self, f: Family) -> &'static str {
        match f {
            Family::V4 => "the default route",
            Family::V6 => "the IPv6 default route",
        }
    }

    /// `skip` with the reason when the checks of family `f` do not apply.
    pub(super) fn skip(&self, f: Family, name: &str) -> Option<Check> {
        self.side(f)
            .off
            .as_ref()
            .map(|r| check(name, Skip, r.clone(), None))
    }

    /// The VM's subnet (IPv6: prefix) of family `f`, for a check of its routed path; else the
    /// check's skip: the half off, the VM bridged onto the uplink's network (`bridged`: what
    /// that means for this check), or no subnet known.
    pub(super) fn routed(&self, f: Family, name: &str, bridged: &str) -> Result<Net, Check> {
        if let Some(s) = self.skip(f, name) {
            return Err(s);
        }
        let s = self.side(f);
        let l3 = self.l3_name();
        if s.bridged {
            return Err(check(
                name,
                Skip,
                format!(
                    "{} leaves through {l3} itself: {bridged}",
                    self.default_route_words(f)
                ),
                None,
            ));
        }
        s.subnet.ok_or_else(|| {
            let why = match f {
                Family::V4 => format!("the VM's subnet is unknown: {}", s.no_subnet),
                Family::V6 => {
                    format!("the VM's IPv6 prefix is unknown: {l3} has no global IPv6 address")
                }
            };
            check(name, Skip, why, None)
        })
    }
}

impl<'a> Side<'a> {
    #[expect(
        clippy::too_many_arguments,
        reason = "the devices Ctx::new found, handed to each family's half"
    )]
    fn new(
        h: &'a Host,
        f: Family,
        tap_name: &str,
        tap: Option<&'a Dev>,
        bridge: Option<&'a Dev>,
        l3: Option<&'a Dev>,
        mac: Option<&str>,
        dest: Option<Net>,
    ) -> Side<'a> {
        let dest = dest.filter(|d| d.is_v6() == f.is_v6());
        let addrs = l3.map(|d| d.addrs_of(f)).unwrap_or_default();
        // IPv4: the first entry of the guest's MAC (an address outside the subnet is what
        // `bridge` reports); IPv6: a global address in a prefix of l3 (not its link-local).
        let guest = match (l3, mac, h.neighs_of(f)) {
            (Some(l3), Some(mac), Ok(ns)) => ns
                .iter()
                .filter(|n| {
                    n.ifindex == l3.ifindex
                        && n.lladdr
                            .as_deref()
                            .is_some_and(|m| m.eq_ignore_ascii_case(mac))
                })
                .find(|n| !f.is_v6() || addrs.iter().any(|(g, l)| Net::new(*g, *l).contains(n.dst)))
                .map(|n| (n.dst, n.state)),
            _ => None,
        };
        let gw = l3.and_then(|_| {
            guest
                .and_then(|(g, _)| {
                    addrs
                        .iter()
                        .find(|(a, l)| Net::new(*a, *l).contains(g))
                        .copied()
                })
                .or_else(|| addrs.first().copied())
        });
        let subnet = gw.map(|(a, l)| Net::new(a, l));
        let no_subnet = match (tap, bridge, l3) {
            (None, _, _) => format!("{tap_name} is not in this network namespace"),
            (Some(t), None, None) => match &t.master {
                Some(m) => format!("{tap_name}'s master {m} is not a Linux bridge"),
                None => format!("{tap_name} is in no bridge"),
            },
            (_, _, Some(d)) if addrs.is_empty() => format!("{} has no {} address", d.name, f.ver()),
            _ => String::new(),
        };
        let off = match (f, l3) {
            (Family::V4, _) => None,
            (Family::V6, None) => Some(match bridge {
                None => "the VM's device is unknown (no bridge, no routed tap)".to_string(),
                Some(b) => format!("{} is not usable", b.name),
            }),
            (Family::V6, Some(d)) if addrs.is_empty() && dest.is_none() => Some(format!(
                "{} has no global IPv6 address and no IPv6 destination was given: the VM has no IPv6 path through this host",
                d.name
            )),
            _ => None,
        };
        let mut defaults: Vec<&IpRoute> = match h.routes_of(f) {
            Ok(rs) => rs
                .iter()
                .filter(|r| r.table == 254 && r.dst_len == 0)
                .collect(),
            Err(_) => Vec::new(),
        };
        defaults.sort_by_key(|d| d.priority);
        // The way out: to the destination, the device of the kernel's route to it; else (or
        // when that route refuses) the default route's.
        let uplink = dest.and_then(|_| dest_out_dev(h, f)).or_else(|| {
            defaults
                .first()
                .filter(|d| d.kind == 1)
                .and_then(|d| d.nexthops.first())
                .and_then(|(oif, _)| h.dev_by_index(*oif))
        });
        let bridged = matches!((uplink, l3), (Some(u), Some(l)) if u.name == l.name);
        Side {
            off,
            gw,
            subnet,
            no_subnet,
            defaults,
            uplink,
            bridged,
            guest,
            dest,
        }
    }

    /// Where the VM's new connections go: the destination, or the internet.
    pub(super) fn far(&self) -> Place {
        match self.dest {
            Some(d) => Place::In(d),
            None => Place::Internet {
                not_in: self.subnet,
            },
        }
    }

    /// ` to DEST` when a destination was given.
    pub(super) fn to_dest(&self) -> String {
        self.dest
            .map(|d| format!(" to {}", net_text(d)))
            .unwrap_or_default()
    }

    /// The uplink's name, or what stands for it when there is no route out.
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

/// The device of the kernel's route to the destination of family `f`, when it has one.
fn dest_out_dev(h: &Host, f: Family) -> Option<&Dev> {
    let d = h
        .dest_route
        .as_ref()
        .filter(|d| d.dst.is_ipv6() == f.is_v6())?;
    let r = d.answer.as_ref().ok()?;
    (r.kind == 1)
        .then(|| r.nexthops.first())
        .flatten()
        .and_then(|(o, _)| h.dev_by_index(*o))
}

pub(super) fn dev_is_down(d: &Dev) -> bool {
    !d.admin_up || d.carrier == Some(false)
}

/// The first output device of `hops` that is down.
pub(super) fn down_hop<'a>(h: &'a Host, hops: &[(u32, Option<IpAddr>)]) -> Option<&'a Dev> {
    hops.iter()
        .filter_map(|(o, _)| h.dev_by_index(*o))
        .find(|x| dev_is_down(x))
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

/// The main table's route for `a` (longest prefix, lowest metric): of any kind, or
/// (`unicast`) unicast only.
pub(super) fn main_route(h: &Host, a: IpAddr, unicast: bool) -> Option<&IpRoute> {
    h.routes_of(Family::of(a))
        .ok()?
        .iter()
        .filter(|r| {
            r.table == 254 && (!unicast || r.kind == 1) && Net::new(r.dst, r.dst_len).contains(a)
        })
        .max_by_key(|r| (r.dst_len, std::cmp::Reverse(r.priority)))
}

/// Whether a strict reverse-path test passes for a packet from `src` arriving on `iif`:
/// judged from the IPv6 routes; "maybe" for IPv4 (its rp_filter is a sysctl, `rp_filter`).
fn rp_passes(h: &Host, f: Family, src: &Place, iif: Option<&Dev>) -> Tri {
    let (Family::V6, Some(iif), Ok(_)) = (f, iif, h.routes_of(f)) else {
        return Tri::Maybe;
    };
    let probe = match src {
        Place::In(n) => n.addr,
        // Some internet address: the default route answers for it.
        Place::Internet { .. } => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1)),
    };
    match main_route(h, probe, true).and_then(|r| r.nexthops.first()) {
        Some((o, _)) if *o == iif.ifindex => Tri::Yes,
        _ => Tri::No,
    }
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
