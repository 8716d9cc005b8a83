//! Repairs that are one shell command, worded once for the two places that propose them: a
//! verdict's `fix` (model/diagnose) and a doctor check's `fix` (doctor/checks). Each function
//! only builds the text; whoever calls it decides that the fault is the one the command
//! repairs and that every name in it is known (no placeholders). Pure, like the model.
//!
//! Commands that need several steps are joined with ` && `, as doctor always did: the whole
//! string runs with `sh -c`.

use crate::model::event::NfHook;
use crate::model::facts::{HostFacts, NfChain};

/// Turns IP forwarding on (`net.ipv4.ip_forward`, or `net.ipv6.conf.all.forwarding`).
pub fn forwarding_on(v6: bool) -> String {
    if v6 {
        "sysctl -w net.ipv6.conf.all.forwarding=1".into()
    } else {
        "sysctl -w net.ipv4.ip_forward=1".into()
    }
}

/// Sets a device up.
pub fn link_up(dev: &str) -> String {
    format!("ip link set dev {dev} up")
}

/// Makes `dev` a port of `bridge`.
pub fn set_master(dev: &str, bridge: &str) -> String {
    format!("ip link set dev {dev} master {bridge}")
}

/// Puts a bridge port in the forwarding state (3, `BR_STATE_FORWARDING`,
/// include/uapi/linux/if_bridge.h).
pub fn port_forwarding(dev: &str) -> String {
    format!("bridge link set dev {dev} state 3")
}

/// Sets a device's MTU.
pub fn link_mtu(dev: &str, mtu: u32) -> String {
    format!("ip link set dev {dev} mtu {mtu}")
}

/// A sysctl path (`net/ipv4/conf/br0/rp_filter`) in the form `sysctl -w` takes: dotted, unless
/// a part holds a dot itself (an interface `eth0.100`), when the slashed path is the only
/// unambiguous spelling.
pub fn sysctl_name(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').collect();
    if parts.iter().any(|p| p.contains('.')) {
        path.to_string()
    } else {
        parts.join(".")
    }
}

/// Loose reverse-path filtering on `dev`. The kernel applies the larger of the `all` and the
/// device's value (`IN_DEV_RPFILTER`, include/linux/inetdevice.h), and 2 is the largest, so
/// setting the device alone is enough whatever `all` says.
pub fn rp_filter_loose(dev: &str) -> String {
    format!(
        "sysctl -w {}=2",
        sysctl_name(&format!("net/ipv4/conf/{dev}/rp_filter"))
    )
}

/// Gives a VXLAN device a default remote VTEP through an all-zeros forwarding entry.
pub fn vxlan_default_remote(dev: &str, remote: &str) -> String {
    format!("bridge fdb append 00:00:00:00:00:00 dev {dev} dst {remote}")
}

/// Puts a macvtap in bridge mode, where it passes frames to the other macvtaps of its lower
/// device.
pub fn macvtap_bridge_mode(dev: &str) -> String {
    format!("ip link set dev {dev} type macvtap mode bridge")
}

/// A base chain a rule goes into: `family table chain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainRef<'a> {
    pub family: &'a str,
    pub table: &'a str,
    pub chain: &'a str,
}

impl ChainRef<'_> {
    /// One of iptables-nft's / ip6tables-nft's own chains (their tables, upper-case chain
    /// names): a rule there is added with iptables, which keeps the table readable to it.
    pub fn is_xtables(&self) -> bool {
        matches!(self.family, "ip" | "ip6")
            && ["filter", "nat", "mangle", "raw", "security"].contains(&self.table)
            && self.chain.chars().all(|c| !c.is_ascii_lowercase())
    }
    fn xtables_cmd(&self) -> &'static str {
        if self.family == "ip6" {
            "ip6tables"
        } else {
            "iptables"
        }
    }
    /// A rule at the head of this chain that accepts what it matches: with iptables' match
    /// `xt` for iptables-nft's own chains, else with nftables' match `nft`.
    fn insert_accept(&self, xt: &str, nft: &str) -> String {
        if self.is_xtables() {
            format!("{} -I {} {xt} -j ACCEPT", self.xtables_cmd(), self.chain)
        } else {
            format!(
                "nft 'insert rule {} {} {} {nft} accept'",
                self.family, self.table, self.chain
            )
        }
    }
}

/// A message of the guest that a service on the host answers: DHCP (UDP 67), DHCPv6 (UDP
/// 547), a router solicitation (ICMPv6 133, answered by radvd or dnsmasq's `enable-ra`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostService {
    Dhcp,
    Dhcp6,
    RouterSolicit,
}

impl HostService {
    /// Its IP version is 6.
    pub fn v6(self) -> bool {
        !matches!(self, HostService::Dhcp)
    }
}

/// Accepts the guest's `what` at the head of the input chain `ch`, so that the host's own
/// service hears it.
pub fn input_accept(ch: ChainRef, what: HostService) -> String {
    let (xt, nft) = match what {
        HostService::Dhcp => ("-p udp --dport 67", "udp dport 67"),
        HostService::Dhcp6 => ("-p udp --dport 547", "udp dport 547"),
        HostService::RouterSolicit => (
            "-p ipv6-icmp --icmpv6-type router-solicitation",
            "icmpv6 type nd-router-solicit",
        ),
    };
    ch.insert_accept(xt, nft)
}

/// Accepts, at the head of the forward chain `ch`, new connections from the VM's `subnet`
/// entering through `l3` (its bridge).
pub fn forward_accept_out(ch: ChainRef, l3: &str, subnet: &str, v6: bool) -> String {
    let fam = if v6 { "ip6" } else { "ip" };
    ch.insert_accept(
        &format!("-i {l3} -s {subnet}"),
        &format!("iifname \"{l3}\" {fam} saddr {subnet}"),
    )
}

/// Accepts, at the head of the forward chain `ch`, the replies going back to `subnet`
/// through `l3`.
pub fn forward_accept_back(ch: ChainRef, l3: &str, subnet: &str, v6: bool) -> String {
    let fam = if v6 { "ip6" } else { "ip" };
    ch.insert_accept(
        &format!("-o {l3} -d {subnet} -m conntrack --ctstate RELATED,ESTABLISHED"),
        &format!("oifname \"{l3}\" {fam} daddr {subnet} ct state established,related"),
    )
}

/// Accepts, at the head of `ch`, a VXLAN overlay's outer packets (UDP to `port`) going to
/// (`to_peer`) or coming from the remote VTEP `peer`.
pub fn overlay_accept(ch: ChainRef, port: u16, peer: &str, to_peer: bool) -> String {
    let (xt_dir, nft_dir) = if to_peer {
        ("-d", "daddr")
    } else {
        ("-s", "saddr")
    };
    ch.insert_accept(
        &format!("-p udp --dport {port} {xt_dir} {peer}"),
        &format!("ip {nft_dir} {peer} udp dport {port}"),
    )
}

/// Where a masquerade rule goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatTarget<'a> {
    /// An nftables nat chain at postrouting that already exists.
    Chain(ChainRef<'a>),
    /// iptables-nft's (ip6tables-nft's) `nat` table is in use.
    Xtables,
    /// No nat chain: a new `ip nat` / `ip6 nat` table with one.
    NewTable,
}

/// Masquerades `subnet` leaving through `oif` (or, without one, to anywhere outside it).
pub fn masquerade(target: NatTarget, subnet: &str, v6: bool, oif: Option<&str>) -> String {
    let (fam, ipt) = if v6 {
        ("ip6", "ip6tables")
    } else {
        ("ip", "iptables")
    };
    let nft_out = oif
        .map(|o| format!("oifname \"{o}\" "))
        .unwrap_or_else(|| format!("{fam} daddr != {subnet} "));
    match target {
        NatTarget::Chain(ch) => format!(
            "nft 'insert rule {} {} {} {fam} saddr {subnet} {nft_out}masquerade'",
            ch.family, ch.table, ch.chain
        ),
        NatTarget::Xtables => format!(
            "{ipt} -t nat -A POSTROUTING -s {subnet} {}-j MASQUERADE",
            oif.map(|o| format!("-o {o} "))
                .unwrap_or_else(|| format!("! -d {subnet} "))
        ),
        NatTarget::NewTable => format!(
            "nft 'add table {fam} nat' && nft 'add chain {fam} nat postrouting {{ type nat hook postrouting priority srcnat; }}' && nft 'add rule {fam} nat postrouting {fam} saddr {subnet} {nft_out}masquerade'"
        ),
    }
}

/// The VM's bridge and its subnet there (`10.77.0.0/24`): the bridge whose address covers
/// `guest`. None when the facts do not show one.
pub fn vm_subnet(facts: &HostFacts, guest: std::net::IpAddr) -> Option<(&str, String)> {
    facts.devices.iter().filter(|d| d.bridge).find_map(|d| {
        let a = d.addrs.iter().find(|a| a.contains(guest))?;
        let net = ipnet::IpNet::new(a.addr, a.prefix).ok()?.trunc();
        Some((d.name.as_str(), net.to_string()))
    })
}

/// The one base chain of `hook` that handles the flow's family (`ip`/`ip6` and `inet`), when
/// there is exactly one and no iptables-legacy table could drop beside it: a rule inserted at
/// its head is then the rule that decides.
pub fn only_chain(facts: &HostFacts, hook: NfHook, v6: bool) -> Option<ChainRef<'_>> {
    let family = if v6 { "ip6" } else { "ip" };
    if !facts.legacy_tables.is_empty() {
        return None;
    }
    let mut on_hook = facts
        .nft_chains
        .iter()
        .filter(|c| c.hook == hook && (c.family == family || c.family == "inet"));
    let c = on_hook.next()?;
    if on_hook.next().is_some() {
        return None;
    }
    Some(ChainRef {
        family: &c.family,
        table: &c.table,
        chain: &c.chain,
    })
}

/// Where a masquerade rule for the flow's family goes, from the base chains the facts list
/// (their type is not among them: a chain at postrouting in a table named `nat` is taken for
/// the nat chain, as iptables-nft and most rulesets name it).
pub fn nat_target(facts: &HostFacts, v6: bool) -> NatTarget<'_> {
    let family = if v6 { "ip6" } else { "ip" };
    let at_post = || {
        facts
            .nft_chains
            .iter()
            .filter(|c| c.hook == NfHook::Postrouting && (c.family == family || c.family == "inet"))
    };
    let xtables = |c: &NfChain| {
        ChainRef {
            family: &c.family,
            table: &c.table,
            chain: &c.chain,
        }
        .is_xtables()
    };
    if at_post().any(|c| xtables(c) && c.table == "nat") {
        return NatTarget::Xtables;
    }
    match at_post().find(|c| c.table == "nat") {
        Some(c) => NatTarget::Chain(ChainRef {
            family: &c.family,
            table: &c.table,
            chain: &c.chain,
        }),
        None => NatTarget::NewTable,
    }
}

#[cfg(test)]
mod tests;
