//! No traffic: what the guest said on its tap (ARP, DHCP) when no request reached DEST, and
//! the guest's ARP as evidence for replies that never reached it.

use crate::model::event::{Direction, NfHook, Point, TraceEvent, L2};
use crate::model::facts::{DevFacts, HostFacts, NfChain};
use crate::model::fix::{self, ChainRef, HostService};
use crate::model::stage::Stage;
use crate::model::verdict::{FlowKey, Status, Verdict};
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};

/// The one verdict of a run in which no request to `dest` was seen: why, from what the guest
/// said on its tap (`l2`: the ARP, NDP and DHCP a model keeps).
pub(in crate::model) fn no_traffic(
    l2: &VecDeque<TraceEvent>,
    facts: &HostFacts,
    dest: &str,
) -> Verdict {
    let said = GuestL2 { l2 };
    let mut v = Verdict::new(format!("any > {dest}"), None, Status::NoTraffic);
    v.summary = said.no_traffic_summary(dest, facts);
    v.fix = said.no_traffic_fix(facts);
    // The guest's DHCP / RS dropped by the host's INPUT: that hook is where it stopped.
    said.place_host_input_drop(facts, &mut v);
    // The guest's ARP went unanswered because its tap is in no bridge: name the tap.
    if let Some(tap) = said.unbridged_asking_tap(facts) {
        v.stage = Some(Stage::Tap);
        v.device = Some(tap);
    }
    v
}

/// Replies of the flow `k` that came back but never reached the tap: does the guest answer
/// the host's ARP (`l2`: what the guest said on its tap)?
pub(in crate::model) fn add_guest_arp_evidence(
    l2: &VecDeque<TraceEvent>,
    v: &mut Verdict,
    k: FlowKey,
) {
    GuestL2 { l2 }.add_guest_arp_evidence(v, k)
}

/// What the guest said on its tap (ARP, NDP, DHCP), as a model keeps it.
struct GuestL2<'a> {
    l2: &'a VecDeque<TraceEvent>,
}

impl GuestL2<'_> {
    /// The ARP messages seen at `point` (tap ingress: the guest's; tap egress: to the guest)
    /// with opcode `op` (1 request, 2 reply), each with its sender's and target's address.
    fn arps(
        &self,
        point: Point,
        op: u8,
    ) -> impl Iterator<Item = (&TraceEvent, Ipv4Addr, Ipv4Addr)> + '_ {
        self.l2.iter().filter_map(move |e| match e.l2 {
            Some(L2::Arp {
                op: o,
                sender,
                target,
            }) if o == op && e.point == point => Some((e, sender, target)),
            _ => None,
        })
    }

    fn add_guest_arp_evidence(&self, v: &mut Verdict, k: FlowKey) {
        if v.status == Status::Delivered || v.replies == 0 {
            return;
        }
        let asks = self
            .arps(Point::TapEgress, 1)
            .filter(|&(_, _, target)| target == k.guest)
            .count();
        let answers = self
            .arps(Point::TapIngress, 2)
            .filter(|&(_, sender, _)| sender == k.guest)
            .count();
        if asks > 0 && answers == 0 {
            v.summary.push_str(&format!(
                "; the host asked {asks} time(s) on the VM's bridge who has {} (ARP) and the \
                 guest never answered → is the guest's interface up with that address?",
                k.guest
            ));
        }
    }

    /// The tap the guest asked ARP on, without an answer, when the facts show it is a port of
    /// no bridge: nothing but the host's own stack can hear the guest there.
    fn unbridged_asking_tap(&self, facts: &HostFacts) -> Option<String> {
        let tap = self.arps(Point::TapIngress, 1).next()?.0.device.clone();
        let answered = self.arps(Point::TapEgress, 2).next().is_some();
        let unbridged = facts
            .device(&tap)
            .is_some_and(|d| d.master.is_none() && d.macvtap_lower.is_none());
        (unbridged && !answered).then_some(tap)
    }

    /// The bridge of the tap that asked, when `ip` is that bridge's own address: the host
    /// itself was asked.
    fn bridge_owning(&self, facts: &HostFacts, ip: IpAddr) -> Option<String> {
        let tap = &self
            .l2
            .iter()
            .find(|e| e.point == Point::TapIngress && e.l2.is_some())?
            .device;
        let br = facts.master_of(tap)?;
        facts
            .device(br)?
            .addrs
            .iter()
            .any(|a| a.addr == ip)
            .then(|| br.to_string())
    }

    /// The bridge of the tap the guest asked ARP or NDP on, and its own address on the subnet
    /// of `ip` (another one): the gateway the guest most likely means.
    fn bridge_address_near(&self, facts: &HostFacts, ip: IpAddr) -> Option<(String, IpAddr)> {
        let tap = &self
            .l2
            .iter()
            .find(|e| {
                e.point == Point::TapIngress
                    && matches!(
                        e.l2,
                        Some(L2::Arp { op: 1, .. })
                            | Some(L2::Ndp {
                                icmp6_type: 135,
                                ..
                            })
                    )
            })?
            .device;
        let br = facts.master_of(tap)?;
        let own = facts
            .device(br)?
            .addrs
            .iter()
            .find(|a| a.addr != ip && a.addr.is_ipv4() == ip.is_ipv4() && a.contains(ip))?
            .addr;
        Some((br.to_string(), own))
    }

    /// The macvtap the guest asked ARP on and its lower device, when the facts show one.
    fn asking_macvtap<'f>(&self, facts: &'f HostFacts) -> Option<(String, &'f DevFacts)> {
        let tap = &self.arps(Point::TapIngress, 1).next()?.0.device;
        let lower = facts.device(tap)?.macvtap_lower.as_deref()?;
        Some((tap.clone(), facts.device(lower)?))
    }

    /// The one command behind [`Self::no_traffic_summary`]'s next step, when it is one on
    /// this host: the macvtap's lower device to set up, or the bridgeless tap to put into
    /// the bridge that holds the address the guest asked for.
    fn no_traffic_fix(&self, facts: &HostFacts) -> Option<String> {
        if let Some((_, lower)) = self.asking_macvtap(facts) {
            return (!lower.up).then(|| fix::link_up(&lower.name));
        }
        if let Some(tap) = self.unbridged_asking_tap(facts) {
            let (_, _, asked) = self.arps(Point::TapIngress, 1).next()?;
            let br = facts.bridge_for(IpAddr::V4(asked))?;
            return Some(fix::set_master(&tap, br));
        }
        // The host's firewall keeps the host from hearing the guest: its question for the
        // host's own address, and what its DHCP / RA service answers; one accept rule per
        // message, in the chain whose policy drops it.
        let mut cmds: Vec<String> = Vec::new();
        if let Some((_, _, cmd)) = self.own_address_drop(facts) {
            cmds.push(cmd);
        }
        for (what, asks, answers) in self.service_asks() {
            if asks == 0 || answers > 0 {
                continue;
            }
            if let Some(d) = self.host_input_drop(facts, what) {
                let cmd = fix::input_accept(
                    ChainRef {
                        family: &d.chain.family,
                        table: &d.chain.table,
                        chain: &d.chain.chain,
                    },
                    what,
                );
                if !cmds.contains(&cmd) {
                    cmds.push(cmd);
                }
            }
        }
        (!cmds.is_empty()).then(|| cmds.join(" && "))
    }

    /// Places a `no_traffic` verdict at the host's INPUT (stage netfilter, the bridge, the
    /// chains that see the message) when the first unanswered message a host service answers
    /// is dropped there ([`Self::host_input_drop`]).
    fn place_host_input_drop(&self, facts: &HostFacts, v: &mut Verdict) {
        let service = self
            .service_asks()
            .into_iter()
            .filter(|(_, asks, answers)| *asks > 0 && *answers == 0)
            .find_map(|(what, _, _)| self.host_input_drop(facts, what))
            .map(|d| (d.bridge, d.chains));
        let Some((bridge, chains)) = self
            .own_address_drop(facts)
            .map(|(br, chains, _)| (br, chains))
            .or(service)
        else {
            return;
        };
        v.stage = Some(Stage::Netfilter);
        v.hook = Some(NfHook::Input);
        v.direction = Some(Direction::Request);
        v.device = Some(bridge);
        v.firewall = Some("nftables".into());
        v.chains = chains.iter().map(|c| c.label()).collect();
    }

    /// How often the guest sent each message a host service answers, and how often an answer
    /// reached it: DHCP (request, answer), DHCPv6, router solicitation (advertisement).
    fn service_asks(&self) -> [(HostService, usize, usize); 3] {
        let mut out = [
            (HostService::Dhcp, 0, 0),
            (HostService::Dhcp6, 0, 0),
            (HostService::RouterSolicit, 0, 0),
        ];
        for e in self.l2 {
            let (i, ask) = match &e.l2 {
                Some(L2::Dhcp { from_guest }) => (0, *from_guest),
                Some(L2::Dhcp6 { from_guest }) => (1, *from_guest),
                Some(L2::Ndp {
                    icmp6_type: 133, ..
                }) if e.point == Point::TapIngress => (2, true),
                Some(L2::Ndp {
                    icmp6_type: 134, ..
                }) if e.point == Point::TapEgress => (2, false),
                _ => continue,
            };
            if ask {
                out[i].1 += 1;
            } else {
                out[i].2 += 1;
            }
        }
        out
    }

    /// The guest's `what` went unanswered, the host is on the guest's network (the tap's
    /// bridge holds an address of that IP version: the host is the one expected to answer,
    /// as libvirt's dnsmasq and radvd do) and a base chain on the host's INPUT with policy
    /// drop sees it: an `ip`/`ip6` (by version), `inet` or `bridge` chain. The messages are
    /// addressed to the host (broadcast, all-routers, all-DHCP-servers), so INPUT is their
    /// only way to a listening service, and a drop policy there is what keeps it silent.
    fn host_input_drop<'f>(
        &self,
        facts: &'f HostFacts,
        what: HostService,
    ) -> Option<HostInputDrop<'f>> {
        let first = self.l2.iter().find(|e| {
            e.point == Point::TapIngress
                && matches!(
                    (&e.l2, what),
                    (Some(L2::Dhcp { from_guest: true }), HostService::Dhcp)
                        | (Some(L2::Dhcp6 { from_guest: true }), HostService::Dhcp6)
                        | (
                            Some(L2::Ndp {
                                icmp6_type: 133,
                                ..
                            }),
                            HostService::RouterSolicit
                        )
                )
        })?;
        let tap = &first.device;
        // Who sent it: the guest's MAC on its tap, and for NDP its (link-local) source.
        let mut sender = match &first.smac {
            Some(mac) => format!("{mac} on {tap}"),
            None => format!("on {tap}"),
        };
        if let Some(L2::Ndp { source, .. }) = &first.l2 {
            sender = format!("{source}, {sender}");
        }
        let br = facts.master_of(tap)?;
        let v6 = what.v6();
        let own = facts
            .device(br)?
            .addrs
            .iter()
            .find(|a| a.addr.is_ipv6() == v6)?
            .addr;
        let ip_family = if v6 { "ip6" } else { "ip" };
        let chains: Vec<&NfChain> = facts
            .nft_chains
            .iter()
            .filter(|c| {
                c.hook == NfHook::Input
                    && [ip_family, "inet", "bridge"].contains(&c.family.as_str())
            })
            .collect();
        let chain = *chains.iter().find(|c| c.policy == "drop")?;
        Some(HostInputDrop {
            sender,
            bridge: br.to_string(),
            own,
            chains,
            chain,
        })
    }

    /// The addresses the guest asked for (ARP, NDP) and got no answer about, with how often
    /// it asked; and those it was answered about.
    fn neighbour_asks(&self) -> (Vec<(IpAddr, usize)>, std::collections::BTreeSet<IpAddr>) {
        let mut asked: BTreeMap<IpAddr, usize> = BTreeMap::new();
        let mut answered: std::collections::BTreeSet<IpAddr> = Default::default();
        for e in self.l2 {
            match &e.l2 {
                Some(L2::Arp { op: 1, target, .. }) if e.point == Point::TapIngress => {
                    *asked.entry(IpAddr::V4(*target)).or_default() += 1
                }
                Some(L2::Arp { op: 2, sender, .. }) if e.point == Point::TapEgress => {
                    answered.insert(IpAddr::V4(*sender));
                }
                Some(L2::Ndp {
                    icmp6_type: 135,
                    target,
                    ..
                }) if e.point == Point::TapIngress => {
                    *asked.entry(IpAddr::V6(*target)).or_default() += 1
                }
                Some(L2::Ndp {
                    icmp6_type: 136,
                    target,
                    ..
                }) if e.point == Point::TapEgress => {
                    answered.insert(IpAddr::V6(*target));
                }
                _ => {}
            }
        }
        let unanswered = asked
            .into_iter()
            .filter(|(ip, _)| !answered.contains(ip))
            .collect();
        (unanswered, answered)
    }

    /// The guest asked for the host's own address on its bridge (ARP, NDP), got no answer,
    /// and a chain that sees the question drops it by policy: the bridge, the chains, and
    /// the command that lets the question in.
    fn own_address_drop<'f>(
        &self,
        facts: &'f HostFacts,
    ) -> Option<(String, Vec<&'f NfChain>, String)> {
        self.neighbour_asks().0.into_iter().find_map(|(ip, _)| {
            let br = self.bridge_owning(facts, ip)?;
            let chains = own_address_chains(facts, ip);
            let c = *chains.iter().find(|c| c.policy == "drop")?;
            let cmd = format!(
                "nft insert rule {} {} {} {}",
                c.family,
                c.table,
                c.chain,
                own_address_allow(ip)
            );
            Some((br, chains, cmd))
        })
    }

    /// Why nothing reached the destination, from what the guest did say on its tap.
    fn no_traffic_summary(&self, dest: &str, facts: &HostFacts) -> String {
        let (unanswered, answered) = self.neighbour_asks();
        let mut parts = Vec::new();
        for (what, asks, answers) in self.service_asks() {
            if asks > 0 && answers == 0 {
                parts.push(
                    self.host_input_drop(facts, what)
                        .map_or_else(|| unserved(what, asks), |d| d.summary(what, asks)),
                );
            }
        }
        let unbridged = self.unbridged_asking_tap(facts);
        let macvtap = self.asking_macvtap(facts);
        for (ip, n) in &unanswered {
            let how = if ip.is_ipv6() { "NDP" } else { "ARP" };
            // A macvtap: no bridge, no host stack; the lower device is the only way out.
            if let Some((tap, lower)) = &macvtap {
                let l = &lower.name;
                parts.push(if !lower.up {
                    format!(
                        "the guest asked {n} time(s) who has {ip} ({how}) and nobody answered: \
                         the lower device {l} of its macvtap {tap} is down, so its frames \
                         leave nowhere → `ip link set {l} up` (and check {l}'s cable or peer)"
                    )
                } else if lower.addrs.iter().any(|a| a.addr == *ip) {
                    format!(
                        "the guest asked {n} time(s) who has {ip} ({how}) and nobody answered: \
                         {ip} is the host's own address on {l}, the lower device of the \
                         guest's macvtap {tap}, and a macvtap never passes frames between its \
                         guest and the host's stack on the lower device → reach the host on \
                         another address, or give the host a macvlan on {l} (`ip link add \
                         link {l} name mvhost type macvlan mode bridge`) and move {ip} there"
                    )
                } else if let Some(hint) = sibling_hint(facts, tap) {
                    format!(
                        "the guest asked {n} time(s) who has {ip} ({how}) and nobody on the \
                         network of {l} (the lower device of its macvtap {tap}) answered: \
                         {hint}"
                    )
                } else {
                    format!(
                        "the guest asked {n} time(s) who has {ip} ({how}) and nobody on the \
                         network of {l} (the lower device of its macvtap {tap}) answered: if \
                         {ip} is its gateway, the gateway setting is wrong or that address is \
                         not on {l}'s network"
                    )
                });
                continue;
            }
            if let Some(tap) = &unbridged {
                let br = facts.bridge_for(*ip).unwrap_or("BRIDGE");
                parts.push(format!(
                    "the guest asked {n} time(s) who has {ip} ({how}) and nobody answered: its tap \
                     {tap} is not a port of any bridge, so no bridge hears it → add the tap to \
                     the VM's bridge: `ip link set {tap} master {br}`"
                ));
                continue;
            }
            if let Some(br) = self.bridge_owning(facts, *ip) {
                parts.push(host_firewall_hint(facts, *ip, &br, *n));
                continue;
            }
            if let Some((br, own)) = self.bridge_address_near(facts, *ip) {
                parts.push(format!(
                    "the guest asked {n} time(s) who has {ip} ({how}) and nobody on its bridge \
                     answered: the host's {br} is {own} on that subnet, so if {ip} is meant as \
                     the guest's gateway, that setting is wrong → set the guest's default \
                     gateway to {own}"
                ));
                continue;
            }
            parts.push(format!(
                "the guest asked {n} time(s) who has {ip} ({how}) and nobody on its bridge \
                 answered: if {ip} is its gateway, the gateway setting is wrong or that address \
                 is not on the bridge"
            ));
        }
        if parts.is_empty() {
            let resolved: Vec<String> = answered.iter().map(|a| a.to_string()).collect();
            let mut s = format!(
                "no packet from the VM to {dest} was seen on its tap: the guest sent nothing"
            );
            if resolved.is_empty() {
                s.push_str(
                    " (is it up, does it have an address and a route, is its gateway reachable?)",
                );
            } else {
                s.push_str(&format!(
                    " although it resolved {} by ARP or NDP (check the guest's routes and \
                     firewall)",
                    resolved.join(", ")
                ));
            }
            return s;
        }
        format!("no packet from the VM to {dest}: {}", parts.join("; "))
    }
}

/// The guest's `what`, sent `n` times, went unanswered and nothing on the host drops it: no
/// service on its network answers.
fn unserved(what: HostService, n: usize) -> String {
    match what {
        HostService::Dhcp => format!(
            "the guest asked DHCP for an address {n} time(s) and got no answer: no DHCP server \
             serves its network (is the network's dnsmasq running?)"
        ),
        HostService::Dhcp6 => format!(
            "the guest asked DHCPv6 for an address {n} time(s) and got no answer: no DHCPv6 \
             server serves its network (dnsmasq `dhcp-range` for IPv6, or a DHCPv6 server on the \
             bridge)"
        ),
        HostService::RouterSolicit => format!(
            "the guest sent a router solicitation {n} time(s) (IPv6) and no router \
             advertisement reached it: nothing advertises a prefix and a default route on its \
             network → run an RA service on the bridge (radvd, dnsmasq `enable-ra`, a libvirt \
             network with an IPv6 <ip>), or give the guest a static IPv6 address and default \
             route"
        ),
    }
}

/// The host's INPUT dropping a message of the guest that a service of the host answers.
struct HostInputDrop<'f> {
    /// Who sent the first message: `52:54:00:… on vnet0` (with the source address for NDP).
    sender: String,
    bridge: String,
    /// The host's address on the bridge, of the message's IP version.
    own: IpAddr,
    /// The base chains on INPUT that see the message.
    chains: Vec<&'f NfChain>,
    /// The first of them whose policy is drop.
    chain: &'f NfChain,
}

impl HostInputDrop<'_> {
    fn summary(&self, what: HostService, n: usize) -> String {
        let (asked, msgs, service) = match what {
            HostService::Dhcp => (
                "asked DHCP for an address",
                "DHCP requests (udp 67)",
                "a DHCP server on the host (dnsmasq)",
            ),
            HostService::Dhcp6 => (
                "asked DHCPv6 for an address",
                "DHCPv6 solicits (udp 547)",
                "a DHCPv6 server on the host (dnsmasq)",
            ),
            HostService::RouterSolicit => (
                "sent a router solicitation (IPv6)",
                "router solicitations (icmpv6 133)",
                "a router advertisement service on the host (radvd, dnsmasq `enable-ra`)",
            ),
        };
        let chains = self
            .chains
            .iter()
            .map(|c| {
                format!(
                    "{} {} {} (INPUT, policy {})",
                    c.family, c.table, c.chain, c.policy
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let c = self.chain;
        let cmd = fix::input_accept(
            ChainRef {
                family: &c.family,
                table: &c.table,
                chain: &c.chain,
            },
            what,
        );
        format!(
            "the guest ({}) {asked} {n} time(s) and got no answer: the host is on its network \
             ({} on {}) and its firewall drops the guest's {msgs} at INPUT ({chains}), so \
             {service} never hears them → let them in: `{cmd}`",
            self.sender, self.own, self.bridge
        )
    }
}

/// The guest asked the host itself (`ip` is `br`'s own address) and got no answer: the host
/// heard the question and its firewall kept it from answering. The chains that can: for
/// NDP the ip6/inet INPUT chains, for ARP the `arp` family's input chains (hook 0,
/// NF_ARP_IN), and for both the `bridge` family's INPUT.
fn host_firewall_hint(facts: &HostFacts, ip: IpAddr, br: &str, n: usize) -> String {
    let (how, what) = if ip.is_ipv6() {
        ("NDP", "neighbour solicitations")
    } else {
        ("ARP", "ARP requests")
    };
    let chains = own_address_chains(facts, ip);
    let name = |c: &NfChain| {
        let hook = if c.family == "arp" { "input" } else { "INPUT" };
        format!(
            "{} {} {} ({hook}, policy {})",
            c.family, c.table, c.chain, c.policy
        )
    };
    let head = format!(
        "the guest asked {n} time(s) who has {ip} ({how}) and got no answer although {ip} is \
         the host's own address on {br}: the host was asked and did not answer"
    );
    match chains
        .iter()
        .find(|c| c.policy == "drop")
        .or(chains.first())
    {
        Some(c) => {
            let allow = own_address_allow(ip);
            format!(
                "{head}: its firewall drops the guest's {what} at INPUT ({}) → let them in: `nft \
                 insert rule {} {} {} {allow}`",
                chains
                    .iter()
                    .map(|c| name(c))
                    .collect::<Vec<_>>()
                    .join(", "),
                c.family,
                c.table,
                c.chain
            )
        }
        None => format!(
            "{head}, and no firewall chain sits on its INPUT: check the address's state on {br} \
             (`ip addr show dev {br}`: tentative or dadfailed addresses do not answer) and, for \
             ARP, net.ipv4.conf.{br}.arp_ignore"
        ),
    }
}

/// The base chains that see the guest's question for the host's own address `ip`: for NDP
/// the ip6/inet INPUT chains, for ARP the `arp` family's input chains (hook 0, NF_ARP_IN), and
/// for both the `bridge` family's INPUT.
fn own_address_chains(facts: &HostFacts, ip: IpAddr) -> Vec<&NfChain> {
    facts
        .nft_chains
        .iter()
        .filter(|c| {
            let f = c.family.as_str();
            (ip.is_ipv6() && matches!(f, "ip6" | "inet") && c.hook == NfHook::Input)
                || (ip.is_ipv4() && f == "arp" && c.hook == NfHook::Prerouting)
                || (f == "bridge" && c.hook == NfHook::Input)
        })
        .collect()
}

/// What an accept rule for that question matches.
fn own_address_allow(ip: IpAddr) -> &'static str {
    if ip.is_ipv6() {
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept"
    } else {
        "accept"
    }
}

/// When the macvtap `tap` is not in bridge mode (or a sibling is not) and other guests'
/// macvtaps share its lower device: the address asked for may be one of those guests, which
/// it cannot reach directly.
fn sibling_hint(facts: &HostFacts, tap: &str) -> Option<String> {
    let mine = facts.device(tap)?;
    let l = mine.macvtap_lower.as_deref()?;
    let sibs = facts.macvtap_siblings(tap);
    let mode = |d: &DevFacts| d.macvtap_mode.clone().unwrap_or("?".into());
    let m = mode(mine);
    if sibs.is_empty() || (m == "bridge" && sibs.iter().all(|d| mode(d) == "bridge")) {
        return None;
    }
    let others = sibs
        .iter()
        .map(|d| format!("{} ({})", d.name, mode(d)))
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!(
        "{tap} is in {m} mode and {l} also carries {others}: if the address belongs to one of \
         those guests, macvtaps of one lower device reach each other only when both are in \
         bridge mode (vepa: only through a switch that reflects frames; private: never) → \
         `ip link set {tap} type macvtap mode bridge` and the same for the other guest's \
         macvtap; else the gateway setting is wrong or that address is not on {l}'s network"
    ))
}
