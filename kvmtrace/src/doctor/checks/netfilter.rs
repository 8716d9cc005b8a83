//! Checks of the firewall on the VM's path: bridge netfilter, the FORWARD rules, NAT,
//! conntrack.

use super::ctx::{check, ruleset_or_skip, worst, Ctx};
use crate::doctor::check::{Check, CheckStatus};
use crate::doctor::rules::{self, Chain, Fate, Iface, Net, Pkt, Place, Ruleset};
use crate::model::event::NfHook;
use crate::model::fix::{self as repair};
use std::net::{Ipv4Addr, Ipv6Addr};

use CheckStatus::{Fail, Pass, Skip, Warn};

/// How the FORWARD chains treat each of `pkts` (what, packet): the worst status, one sentence
/// per chain, and the (packet index, chain) pairs that surely drop.
pub(super) fn forward_verdicts<'a>(
    rs: &Ruleset,
    chains: &[&'a Chain],
    pkts: &[(&str, Pkt)],
) -> (CheckStatus, Vec<String>, Vec<(usize, &'a Chain)>) {
    let mut status = Pass;
    let mut lines = Vec::new();
    let mut failing = Vec::new();
    for ch in chains {
        let id = format!("{}: ", ch.id());
        // A rule of this chain is named by itself; one of a jumped-to chain keeps its chain.
        let by = |d: &rules::Decider| match d.handle {
            None => "its policy".to_string(),
            Some(_) => {
                let w = d.what.strip_prefix(id.as_str()).unwrap_or(&d.what);
                format!("rule {w}")
            }
        };
        let mut parts = Vec::new();
        for (i, (what, pkt)) in pkts.iter().enumerate() {
            let v = rules::judge(rs, ch, pkt);
            let opposite = |f: Fate| {
                v.doubts
                    .iter()
                    .filter(|d| d.fate == f)
                    .map(&by)
                    .collect::<Vec<_>>()
            };
            let (st, s) = match v.decided.fate {
                Fate::Accept => {
                    let d = opposite(Fate::Drop);
                    if d.is_empty() {
                        (Pass, format!("{what} are accepted by {}", by(&v.decided)))
                    } else {
                        (
                            Warn,
                            format!(
                                "{what} are accepted by {}, unless {} drops them first (it tests what kvmtrace cannot judge statically)",
                                by(&v.decided),
                                d.join(" or ")
                            ),
                        )
                    }
                }
                Fate::Drop => {
                    let a = opposite(Fate::Accept);
                    if a.is_empty() {
                        failing.push((i, *ch));
                        (Fail, format!("{what} are dropped by {}", by(&v.decided)))
                    } else {
                        (
                            Warn,
                            format!(
                                "{what} are dropped by {} unless {} accepts them first (it tests what kvmtrace cannot judge statically: only some traffic?)",
                                by(&v.decided),
                                a.join(" or ")
                            ),
                        )
                    }
                }
                _ => (
                    Warn,
                    format!(
                        "{what} are handed on by {} (outcome unknown)",
                        by(&v.decided)
                    ),
                ),
            };
            status = worst(status, st);
            parts.push(s);
        }
        lines.push(format!("{}: {}", ch.describe(), parts.join("; ")));
    }
    (status, lines, failing)
}

pub(super) fn br_netfilter_check(c: &Ctx) -> Check {
    br_netfilter_of(c, false)
}

/// Bridge netfilter for one IP version: `bridge-nf-call-iptables` and the bridge's
/// `nf_call_iptables` (IPv4), or `bridge-nf-call-ip6tables` and `nf_call_ip6tables` (IPv6),
/// hand bridged frames of that version to its FORWARD hook (net/bridge/br_netfilter_hooks.c:
/// either switch is enough).
pub(super) fn br_netfilter_of(c: &Ctx, v6: bool) -> Check {
    let (name, ver, tables) = if v6 {
        ("br_netfilter6", "IPv6", "ip6tables")
    } else {
        ("br_netfilter", "IPv4", "iptables")
    };
    let Some(br) = c.bridge else {
        return check(name, Skip, "the VM is not on a Linux bridge", None);
    };
    if !c.h.br_netfilter {
        return check(
            name,
            Pass,
            format!(
                "br_netfilter is not loaded (no /proc/sys/net/bridge): frames bridged on {} do not pass the {ver} netfilter hooks",
                br.name
            ),
            None,
        );
    }
    let global = c.h.sysctl(&format!("net/bridge/bridge-nf-call-{tables}"));
    let per_bridge = if v6 {
        br.nf_call_ip6tables
    } else {
        br.nf_call_iptables
    }
    .unwrap_or(false);
    let ev_vals = format!(
        "net.bridge.bridge-nf-call-{tables} = {}, {} nf_call_{tables} = {}",
        global.unwrap_or("?"),
        br.name,
        u8::from(per_bridge)
    );
    if global != Some("1") && !per_bridge {
        return check(
            name,
            Pass,
            format!(
                "{ev_vals}: frames bridged on {} skip the {ver} hooks",
                br.name
            ),
            None,
        );
    }
    let fix = if per_bridge {
        format!("ip link set dev {} type bridge nf_call_{tables} 0", br.name)
    } else {
        format!("sysctl -w net.bridge.bridge-nf-call-{tables}=0")
    };
    let (bridged, subnet, any) = if v6 {
        (
            c.v6.bridged,
            c.v6.subnet,
            Net::new(Ipv6Addr::UNSPECIFIED, 0),
        )
    } else {
        (c.bridged, c.subnet, Net::new(Ipv4Addr::UNSPECIFIED, 0))
    };
    // Bridged traffic: onto the uplink's network (a bridged VM), or between guests.
    let (what, pkt, bad) = if bridged {
        let p = Pkt {
            src: Place::In(subnet.unwrap_or(any)),
            dst: Place::Internet { not_in: subnet },
            iif: Ctx::iface(Some(br)),
            oif: Ctx::iface(Some(br)),
            ct: rules::CT_NEW,
            v6,
            rp: rules::Tri::Maybe,
        };
        (
            "the VM's packets bridged onto the uplink's network",
            p,
            Fail,
        )
    } else {
        if br.ports.len() < 2 {
            return check(
                name,
                Pass,
                format!(
                    "{ev_vals}, but {} has no other port than {}: no frame is bridged between ports",
                    br.name, c.tap_name
                ),
                None,
            );
        }
        let any = subnet.unwrap_or(any);
        let p = Pkt {
            src: Place::In(any),
            dst: Place::In(any),
            iif: Ctx::iface(Some(br)),
            oif: Ctx::iface(Some(br)),
            ct: rules::CT_NEW,
            v6,
            rp: rules::Tri::Maybe,
        };
        (
            "frames between ports of the bridge (guest to guest)",
            p,
            Warn,
        )
    };
    let rs = match &c.h.ruleset {
        Ok(rs) => rs,
        Err(e) => {
            return check(
                name,
                Skip,
                format!(
                    "{ev_vals}: {what} pass the {ver} FORWARD hook, whose rules cannot be read: {e}"
                ),
                None,
            )
        }
    };
    let chains = rs.base_chains_of(v6, NfHook::Forward, "filter");
    let (st, lines, _) = forward_verdicts(rs, &chains, &[(what, pkt)]);
    let ev = format!(
        "{ev_vals}: {what} also pass the {ver} FORWARD hook{}{}",
        if lines.is_empty() {
            " (no chain there: accepted)"
        } else {
            "; "
        },
        lines.join("; ")
    );
    match st {
        Fail => check(name, bad, ev, Some(fix)),
        Warn => check(name, Warn, ev, Some(fix)),
        s => check(name, s, ev, None),
    }
}

pub(super) fn forward_filter_check(c: &Ctx) -> Check {
    let name = "forward_filter";
    if c.bridged {
        return check(
            name,
            Skip,
            format!(
                "the default route leaves through {} itself: the VM's packets are bridged, not routed (see br_netfilter)",
                c.l3_name()
            ),
            None,
        );
    }
    let Some(subnet) = c.subnet else {
        return check(
            name,
            Skip,
            format!("the VM's subnet is unknown: {}", c.no_subnet),
            None,
        );
    };
    let rs = match ruleset_or_skip(c, name) {
        Ok(r) => r,
        Err(ch) => return ch,
    };
    let chains = rs.base_chains(NfHook::Forward, "filter");
    let l3 = c.l3_name();
    let up = c.uplink_desc();
    let out_what = format!("new connections from {subnet}{} ({l3} → {up})", c.to_dest());
    let back_what = format!("replies to {subnet} ({up} → {l3})");
    let (mut status, mut lines, failing) = forward_verdicts(
        rs,
        &chains,
        &[
            (out_what.as_str(), c.pkt_out(subnet)),
            (back_what.as_str(), c.pkt_back(subnet)),
        ],
    );
    if chains.is_empty() {
        lines.push(
            "no nftables or iptables-nft chain at the forward hook: forwarded packets are accepted"
                .into(),
        );
    }
    if c.h.legacy_tables.iter().any(|t| t == "filter") {
        status = worst(status, Warn);
        lines.push("the iptables-legacy filter table is in use: its FORWARD chain is invisible to nftables, check it with `iptables-legacy -S FORWARD`".into());
    }
    let mut fixes = Vec::new();
    for (i, ch) in &failing {
        let chain = repair::ChainRef {
            family: &ch.family,
            table: &ch.table,
            chain: &ch.name,
        };
        let subnet = subnet.to_string();
        fixes.push(if *i == 0 {
            repair::forward_accept_out(chain, l3, &subnet, false)
        } else {
            repair::forward_accept_back(chain, l3, &subnet, false)
        });
    }
    check(
        name,
        status,
        lines.join("; "),
        (!fixes.is_empty()).then(|| fixes.join(" && ")),
    )
}

pub(super) fn nat_check(c: &Ctx) -> Check {
    let name = "nat";
    if c.bridged {
        return check(
            name,
            Skip,
            format!(
                "the default route leaves through {} itself: the VM is on the uplink's network and needs no NAT on this host",
                c.l3_name()
            ),
            None,
        );
    }
    let Some(subnet) = c.subnet else {
        return check(
            name,
            Skip,
            format!("the VM's subnet is unknown: {}", c.no_subnet),
            None,
        );
    };
    let rs = match ruleset_or_skip(c, name) {
        Ok(r) => r,
        Err(ch) => return ch,
    };
    let pkt = Pkt {
        src: Place::In(subnet),
        dst: c.far(subnet),
        // No input device at POSTROUTING: `iifname` tests never match there.
        iif: Iface::Absent,
        oif: Ctx::iface(c.uplink),
        ct: rules::CT_NEW,
        v6: false,
        rp: rules::Tri::Maybe,
    };
    let f = find_snat(rs, &pkt);
    let what = match c.uplink {
        Some(u) => format!(
            "new connections from {subnet}{} leaving via {}",
            c.to_dest(),
            u.name
        ),
        None => format!("new connections from {subnet} leaving the host (no default route: by which device is unknown)"),
    };
    if let Some(ch) = f.found(name, &what) {
        return ch;
    }
    let mut ev = f.none_text(&what, "");
    let legacy = c.h.legacy_tables.iter().any(|t| t == "nat");
    if legacy {
        ev.push_str("; the iptables-legacy nat table is in use and invisible to nftables: check `iptables-legacy -t nat -S POSTROUTING`");
    }
    let fix = snat_fix(rs, &f.chains, subnet, c.uplink.map(|u| u.name.as_str()));
    if subnet.is_private() && !legacy {
        ev.push_str(&format!(
            ": {subnet} is a private network, so replies from the internet cannot find their way back"
        ));
        check(name, Fail, ev, Some(fix))
    } else if legacy {
        check(name, Warn, ev, Some(fix))
    } else {
        ev.push_str(&format!(
            ": fine if the upstream network routes {subnet} back to this host"
        ));
        check(name, Warn, ev, Some(fix))
    }
}

/// What source-NATs a model packet at postrouting, in the nat base chains of its IP version.
pub(super) struct Snat<'a> {
    pub chains: Vec<&'a Chain>,
    /// Rules that surely source-NAT it.
    definite: Vec<String>,
    /// Rules that may (they test what kvmtrace cannot judge).
    maybe: Vec<String>,
    /// Rules that may decide otherwise first.
    blockers: Vec<String>,
}

pub(super) fn find_snat<'a>(rs: &'a Ruleset, pkt: &Pkt) -> Snat<'a> {
    let chains = rs.base_chains_of(pkt.v6, NfHook::Postrouting, "nat");
    let mut definite = Vec::new();
    let mut maybe = Vec::new();
    let mut blockers = Vec::new();
    for ch in &chains {
        let v = rules::judge(rs, ch, pkt);
        for d in &v.doubts {
            match d.fate {
                Fate::SourceNat => maybe.push(d.what.clone()),
                Fate::Accept | Fate::Drop => blockers.push(d.what.clone()),
                _ => {}
            }
        }
        match v.decided.fate {
            Fate::SourceNat => definite.push(v.decided.what.clone()),
            Fate::Drop => blockers.push(v.decided.what.clone()),
            _ => {}
        }
    }
    Snat {
        chains,
        definite,
        maybe,
        blockers,
    }
}

impl Snat<'_> {
    /// The check when a rule source-NATs (or may source-NAT) `what`; None when none does.
    pub(super) fn found(&self, name: &str, what: &str) -> Option<Check> {
        if let Some(d) = self.definite.first() {
            return Some(if self.blockers.is_empty() {
                check(name, Pass, format!("{what} are source-NATed by {d}"), None)
            } else {
                check(
                    name,
                    Warn,
                    format!(
                        "{what} are source-NATed by {d}, unless {} decides first (it tests what kvmtrace cannot judge statically)",
                        self.blockers.join(" or ")
                    ),
                    None,
                )
            });
        }
        if !self.maybe.is_empty() {
            return Some(check(
                name,
                Warn,
                format!(
                    "{what}: only {} may source-NAT them (it tests what kvmtrace cannot judge statically: some traffic only?)",
                    self.maybe.join(" or ")
                ),
                None,
            ));
        }
        None
    }

    /// The evidence when no rule source-NATs `what`: the nat chains counted (`ver`: "" or
    /// "IPv6 "), the source NAT there is for other traffic.
    pub(super) fn none_text(&self, what: &str, ver: &str) -> String {
        let others: Vec<String> = self
            .chains
            .iter()
            .flat_map(|ch| {
                ch.rules
                    .iter()
                    .filter(|r| matches!(r.action, rules::Action::Masquerade | rules::Action::Snat))
                    .map(|r| format!("{}: {r}", ch.id()))
            })
            .take(5)
            .collect();
        format!(
            "no nftables or {}-nft rule source-NATs {what} ({} nat chain(s) at {ver}postrouting{})",
            if ver.is_empty() {
                "iptables"
            } else {
                "ip6tables"
            },
            self.chains.len(),
            if others.is_empty() {
                String::new()
            } else {
                format!("; source NAT for other traffic: {}", others.join(", "))
            }
        )
    }
}

/// A masquerade rule for `subnet` leaving via `oif` (or to anywhere outside it): into the
/// first nftables nat chain of its IP version, else with iptables / ip6tables when
/// iptables-nft's tables are in use, else in a new `ip nat` / `ip6 nat` table.
pub(super) fn snat_fix(rs: &Ruleset, chains: &[&Chain], subnet: Net, oif: Option<&str>) -> String {
    let v6 = subnet.is_v6();
    let nft_chain = chains
        .iter()
        .find(|ch| !ch.is_iptables() && !ch.is_ip6tables());
    let ipt_tables = if v6 {
        rs.chains.iter().any(Chain::is_ip6tables)
    } else {
        rs.has_iptables_tables()
    };
    let target = match nft_chain {
        Some(ch) => repair::NatTarget::Chain(repair::ChainRef {
            family: &ch.family,
            table: &ch.table,
            chain: &ch.name,
        }),
        None if ipt_tables => repair::NatTarget::Xtables,
        None => repair::NatTarget::NewTable,
    };
    repair::masquerade(target, &subnet.to_string(), v6, oif)
}

pub(super) fn conntrack_check(c: &Ctx) -> Check {
    let name = "conntrack";
    let (Some(n), Some(m)) = (
        c.h.sysctl("net/netfilter/nf_conntrack_count")
            .and_then(|v| v.parse::<u64>().ok()),
        c.h.sysctl("net/netfilter/nf_conntrack_max")
            .and_then(|v| v.parse::<u64>().ok()),
    ) else {
        return check(
            name,
            Skip,
            "nf_conntrack is not loaded here (no /proc/sys/net/netfilter/nf_conntrack_count): no connection tracking, no table to fill",
            None,
        );
    };
    let pct = (n * 100).checked_div(m).unwrap_or(0);
    let ev = format!(
        "nf_conntrack_count = {n}, nf_conntrack_max = {m} ({pct}% used{})",
        if m == 0 { ", no limit" } else { "" }
    );
    let fix = Some(format!(
        "sysctl -w net.netfilter.nf_conntrack_max={} (in the host's initial network namespace: the limit is global); then find what fills the table (`conntrack -S`, `conntrack -L`)",
        (m * 2).max(65536)
    ));
    if m > 0 && pct >= 90 {
        check(
            name,
            Fail,
            format!("{ev}: when the table is full new connections are dropped (kernel log: \"nf_conntrack: table full, dropping packet\")"),
            fix,
        )
    } else if m > 0 && pct >= 75 {
        check(
            name,
            Warn,
            format!("{ev}: close to the limit, where new connections are dropped"),
            fix,
        )
    } else {
        check(name, Pass, ev, None)
    }
}
