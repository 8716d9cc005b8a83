//! Checks of the firewall on the VM's path, for each IP version: bridge netfilter, the
//! reverse-path filter rules (IPv6), the FORWARD rules, NAT; and conntrack.

use super::ctx::{check, main_route, ruleset_or_skip, worst, Ctx};
use crate::doctor::check::{Check, CheckStatus};
use crate::doctor::family::Family;
use crate::doctor::rules::{self, Chain, Fate, Iface, Net, Pkt, Place, Ruleset, Tri};
use crate::model::event::NfHook;
use crate::model::fix as repair;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use CheckStatus::{Fail, Pass, Skip, Warn};

/// How the FORWARD chains treat each of `pkts` (what, packet): the worst status, one sentence
/// per chain, and the (packet index, chain) pairs that surely drop.
fn forward_verdicts<'a>(
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
            // A decision a rule kvmtrace cannot judge statically may overturn first:
            // `unless RULE drops|accepts them first (…)`.
            let unless = |f: Fate, does: &str, note: &str| {
                let d: Vec<String> = v.doubts.iter().filter(|d| d.fate == f).map(&by).collect();
                (!d.is_empty()).then(|| {
                    format!(
                        "unless {} {does} them first (it tests what kvmtrace cannot judge statically{note})",
                        d.join(" or ")
                    )
                })
            };
            let decided = by(&v.decided);
            let (st, s) = match v.decided.fate {
                Fate::Accept => match unless(Fate::Drop, "drops", "") {
                    None => (Pass, format!("{what} are accepted by {decided}")),
                    Some(u) => (Warn, format!("{what} are accepted by {decided}, {u}")),
                },
                Fate::Drop => match unless(Fate::Accept, "accepts", ": only some traffic?") {
                    None => {
                        failing.push((i, *ch));
                        (Fail, format!("{what} are dropped by {decided}"))
                    }
                    Some(u) => (Warn, format!("{what} are dropped by {decided} {u}")),
                },
                _ => (
                    Warn,
                    format!("{what} are handed on by {decided} (outcome unknown)"),
                ),
            };
            status = worst(status, st);
            parts.push(s);
        }
        lines.push(format!("{}: {}", ch.describe(), parts.join("; ")));
    }
    (status, lines, failing)
}

/// Bridge netfilter for one IP version: `bridge-nf-call-iptables` and the bridge's
/// `nf_call_iptables` (IPv4), or `bridge-nf-call-ip6tables` and `nf_call_ip6tables` (IPv6),
/// hand bridged frames of that version to its FORWARD hook (net/bridge/br_netfilter_hooks.c:
/// either switch is enough).
pub(super) fn br_netfilter_check(c: &Ctx, f: Family) -> Check {
    let name = &f.name("br_netfilter");
    if let Some(s) = c.skip(f, name) {
        return s;
    }
    let (v6, ver, tables) = (f.is_v6(), f.ver(), f.tables());
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
    let (bridged, subnet) = (c.side(f).bridged, c.side(f).subnet);
    let any = Net::new(
        if v6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        },
        0,
    );
    // Bridged traffic: onto the uplink's network (a bridged VM), or between guests.
    let (what, src, dst, bad) = if bridged {
        (
            "the VM's packets bridged onto the uplink's network",
            Place::In(subnet.unwrap_or(any)),
            Place::Internet { not_in: subnet },
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
        let any = Place::In(subnet.unwrap_or(any));
        (
            "frames between ports of the bridge (guest to guest)",
            any.clone(),
            any,
            Warn,
        )
    };
    // A new connection, in by the bridge and out by it again.
    let pkt = Pkt {
        src,
        dst,
        iif: Ctx::iface(Some(br)),
        oif: Ctx::iface(Some(br)),
        ct: rules::CT_NEW,
        v6,
        rp: rules::Tri::Maybe,
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

/// Reverse-path filter rules at IPv6 prerouting (IPv6 has no rp_filter sysctl), judged from
/// the snapshot's IPv6 routes for the VM's packets and the replies to them.
pub(super) fn rpfilter6_check(c: &Ctx) -> Check {
    let name = "rpfilter6";
    let f = Family::V6;
    let subnet = match c.routed(f, name, "the VM's packets are bridged, not routed") {
        Ok(s) => s,
        Err(skip) => return skip,
    };
    let rs = match ruleset_or_skip(c, name) {
        Ok(r) => r,
        Err(ch) => return ch,
    };
    // Reverse-path rules sit at prerouting (raw, mangle or filter priority).
    let chains: Vec<&Chain> = rs.base_chains_of(true, NfHook::Prerouting, "filter");
    let mut found = Vec::new();
    let mut status = Pass;
    let mut lines = Vec::new();
    let l3 = c.l3_name();
    let up = c.v6.uplink_desc();
    let out_what = format!(
        "new connections from {subnet}{} ({l3} → {up})",
        c.v6.to_dest()
    );
    let back_what = format!("replies to {subnet} ({up} → {l3})");
    let pkts = [
        (out_what, c.pkt_out(f, subnet)),
        (back_what, c.pkt_back(f, subnet)),
    ];
    let mut visit: Vec<&Chain> = chains.clone();
    // The chains the base chains jump to hold such rules too (firewalld's filter_PREROUTING).
    for ch in &chains {
        for r in &ch.rules {
            if let rules::Action::Jump(t) | rules::Action::Goto(t) = &r.action {
                if let Some(x) = rs
                    .chains
                    .iter()
                    .find(|x| x.family == ch.family && x.table == ch.table && &x.name == t)
                {
                    visit.push(x);
                }
            }
        }
    }
    for ch in visit {
        for r in &ch.rules {
            if !r
                .conds
                .iter()
                .any(|c| matches!(c, rules::Cond::RpFilter { .. }))
            {
                continue;
            }
            let drops = matches!(r.action, rules::Action::Drop | rules::Action::Reject);
            found.push(format!("{}: {r}", ch.id()));
            if !drops {
                continue;
            }
            for (what, p) in &pkts {
                match r.matches(p) {
                    Tri::Yes => {
                        status = worst(status, Fail);
                        lines.push(format!("{what} are dropped by {}: {r}", ch.id()));
                    }
                    Tri::Maybe => {
                        status = worst(status, Warn);
                        lines.push(format!("{what} may be dropped by {}: {r}", ch.id()));
                    }
                    Tri::No => {}
                }
            }
        }
    }
    if found.is_empty() {
        return check(
            name,
            Pass,
            "no IPv6 reverse-path filter rule (`fib saddr . iif oif missing`, `-m rpfilter`) at prerouting (IPv6 has no rp_filter sysctl)",
            None,
        );
    }
    let route = main_route(c.h, subnet.addr, true);
    let routed = match route.and_then(|r| r.nexthops.first()) {
        Some((o, _)) => format!(
            "{subnet} is routed via {}",
            c.h.dev_by_index(*o).map(|d| d.name.as_str()).unwrap_or("?")
        ),
        None => format!("no route to {subnet}"),
    };
    if status == Pass {
        return check(
            name,
            Pass,
            format!(
                "{}: the routes back to the VM's prefix and to where its packets go leave by the devices they come in on ({routed})",
                found.join(", ")
            ),
            None,
        );
    }
    // Send the VM's prefix back out of its own device: replacing the route that took it
    // elsewhere (same prefix and metric), or adding one.
    let fix = match route {
        Some(r)
            if r.nexthops
                .first()
                .is_some_and(|(o, _)| Some(*o) != c.l3.map(|d| d.ifindex)) =>
        {
            Some(format!(
                "ip -6 route replace {} dev {l3} metric {}",
                Net::new(r.dst, r.dst_len),
                r.priority
            ))
        }
        None => Some(format!("ip -6 route add {subnet} dev {l3}")),
        _ => None,
    };
    check(
        name,
        status,
        format!("{} ({routed})", lines.join("; ")),
        fix,
    )
}

/// The FORWARD rules of family `f` for the VM's new connections and the replies to them.
pub(super) fn forward_filter_check(c: &Ctx, f: Family) -> Check {
    let name = &f.name("forward_filter");
    let see = if f.is_v6() { "" } else { " (see br_netfilter)" };
    let subnet = match c.routed(
        f,
        name,
        &format!("the VM's packets are bridged, not routed{see}"),
    ) {
        Ok(s) => s,
        Err(skip) => return skip,
    };
    let rs = match ruleset_or_skip(c, name) {
        Ok(r) => r,
        Err(ch) => return ch,
    };
    let side = c.side(f);
    let chains = rs.base_chains_of(f.is_v6(), NfHook::Forward, "filter");
    let l3 = c.l3_name();
    let up = side.uplink_desc();
    let out_what = format!(
        "new connections from {subnet}{} ({l3} → {up})",
        side.to_dest()
    );
    let back_what = format!("replies to {subnet} ({up} → {l3})");
    let (mut status, mut lines, failing) = forward_verdicts(
        rs,
        &chains,
        &[
            (out_what.as_str(), c.pkt_out(f, subnet)),
            (back_what.as_str(), c.pkt_back(f, subnet)),
        ],
    );
    let (tables, ipv) = (f.tables(), if f.is_v6() { "IPv6 " } else { "" });
    if chains.is_empty() {
        lines.push(format!(
            "no nftables or {tables}-nft chain at the {ipv}forward hook: forwarded packets are accepted"
        ));
    }
    if c.h.legacy_of(f).iter().any(|t| t == "filter") {
        status = worst(status, Warn);
        lines.push(format!("the {tables}-legacy filter table is in use: its FORWARD chain is invisible to nftables, check it with `{tables}-legacy -S FORWARD`"));
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
            repair::forward_accept_out(chain, l3, &subnet, f.is_v6())
        } else {
            repair::forward_accept_back(chain, l3, &subnet, f.is_v6())
        });
    }
    check(
        name,
        status,
        lines.join("; "),
        (!fixes.is_empty()).then(|| fixes.join(" && ")),
    )
}

/// Source NAT of family `f` for the VM's new connections leaving via the uplink. IPv4: a
/// private subnet without it fails; IPv6: only a unique-local prefix without NAT66 warns (a
/// routed global prefix needs none).
pub(super) fn nat_check(c: &Ctx, f: Family) -> Check {
    let name = &f.name("nat");
    let subnet = match c.routed(
        f,
        name,
        "the VM is on the uplink's network and needs no NAT on this host",
    ) {
        Ok(s) => s,
        Err(skip) => return skip,
    };
    let side = c.side(f);
    if f.is_v6() && !subnet.is_private() {
        return check(
            name,
            Pass,
            format!("{subnet} is a global prefix: no NAT is needed for a routed global prefix (replies come back when the upstream network routes it to this host)"),
            None,
        );
    }
    if let (Family::V6, None) = (f, side.uplink) {
        return check(
            name,
            Skip,
            format!(
                "no IPv6 route out of the host (see {}): no uplink for {subnet} to be source-NATed on",
                if side.dest.is_some() {
                    "route6"
                } else {
                    "default_route6"
                }
            ),
            None,
        );
    }
    let rs = match ruleset_or_skip(c, name) {
        Ok(r) => r,
        Err(ch) => return ch,
    };
    let pkt = Pkt {
        src: Place::In(subnet),
        dst: side.far(),
        // No input device at POSTROUTING: `iifname` tests never match there.
        iif: Iface::Absent,
        oif: Ctx::iface(side.uplink),
        ct: rules::CT_NEW,
        v6: f.is_v6(),
        rp: Tri::Maybe,
    };
    let snat = find_snat(rs, &pkt);
    let what = match side.uplink {
        Some(u) => format!(
            "new connections from {subnet}{} leaving via {}",
            side.to_dest(),
            u.name
        ),
        None => format!("new connections from {subnet} leaving the host (no default route: by which device is unknown)"),
    };
    if let Some(ch) = snat.found(name, &what) {
        return ch;
    }
    let mut ev = snat.none_text(&what, f);
    let legacy = c.h.legacy_of(f).iter().any(|t| t == "nat");
    if legacy {
        let t = f.tables();
        ev.push_str(&format!("; the {t}-legacy nat table is in use and invisible to nftables: check `{t}-legacy -t nat -S POSTROUTING`"));
    }
    let fix = snat_fix(
        rs,
        &snat.chains,
        subnet,
        side.uplink.map(|u| u.name.as_str()),
    );
    if f.is_v6() {
        ev.push_str(&format!(
            ": {subnet} is a unique-local (ULA, fc00::/7) prefix: replies come back only if the upstream network routes {subnet} to this host; otherwise it needs NAT66"
        ));
        check(name, Warn, ev, Some(fix))
    } else if subnet.is_private() && !legacy {
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
struct Snat<'a> {
    chains: Vec<&'a Chain>,
    /// Rules that surely source-NAT it.
    definite: Vec<String>,
    /// Rules that may (they test what kvmtrace cannot judge).
    maybe: Vec<String>,
    /// Rules that may decide otherwise first.
    blockers: Vec<String>,
}

fn find_snat<'a>(rs: &'a Ruleset, pkt: &Pkt) -> Snat<'a> {
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
    fn found(&self, name: &str, what: &str) -> Option<Check> {
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

    /// The evidence when no rule source-NATs `what`: the nat chains of family `f` counted,
    /// the source NAT there is for other traffic.
    fn none_text(&self, what: &str, f: Family) -> String {
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
            "no nftables or {}-nft rule source-NATs {what} ({} nat chain(s) at {}postrouting{})",
            f.tables(),
            self.chains.len(),
            if f.is_v6() { "IPv6 " } else { "" },
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
fn snat_fix(rs: &Ruleset, chains: &[&Chain], subnet: Net, oif: Option<&str>) -> String {
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
