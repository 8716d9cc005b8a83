//! kvmtrace's own table: two base chains at priority -350 (after defragmentation at -400,
//! before raw at -300 and conntrack at -200) on prerouting and output, whose rules set
//! `meta nftrace` for the followed flow only, built as nf_tables netlink expressions.
//!
//! ```text
//! table inet kvmtrace_nftrace_<pid>_<n> {          # flags owner (the kernel removes it with us)
//!     chain pre { type filter hook prerouting priority -350; policy accept;
//!         meta nfproto ipv4 ip saddr 10.77.0.2 ip daddr 203.0.113.1 meta l4proto 6 th dport 8080 meta nftrace set 1
//!         meta nfproto ipv4 ip saddr 203.0.113.1 meta l4proto 6 th sport 8080 meta nftrace set 1
//!     }
//!     chain out { type filter hook output priority -350; policy accept; (the same rules) }
//! }
//! ```
//!
//! An IPv6 destination gets the same rules with `meta nfproto ipv6` and `ip6 saddr/daddr`.
//!
//! A frame the bridge forwards never reaches the `inet` hooks (without br_netfilter), so a
//! second table of the same name in the `bridge` family holds the same chains and rules, with
//! `ether type ip`/`ether type ip6` where the inet ones say `meta nfproto` (in a bridge chain
//! `meta nfproto` is NFPROTO_BRIDGE for every frame: `nft_meta_get_eval`,
//! net/netfilter/nft_meta.c). A bridge chain sees the IP and transport headers the same way
//! (`nft_do_chain_bridge` sets the packet info from the ether type, net/netfilter/
//! nft_chain_filter.c), so the payload loads are the inet ones. Priority -350 is before the
//! bridge's DNAT (-300) and filter (-200) priorities.
//!
//! ```text
//! table bridge kvmtrace_nftrace_<pid>_<n> {
//!     chain pre { type filter hook prerouting priority -350; policy accept;
//!         ether type ip ip saddr 10.77.0.2 ip daddr 203.0.113.1 meta nftrace set 1
//!         ether type ip ip saddr 203.0.113.1 meta nftrace set 1
//!     }
//!     chain out { type filter hook output priority -350; policy accept; (the same rules) }
//! }
//! ```

use super::decode::has_ports;
use super::filter::TraceFilter;
use crate::host::nftables::{
    nft_type, NFTA_BITWISE_DREG, NFTA_BITWISE_LEN, NFTA_BITWISE_MASK, NFTA_BITWISE_SREG,
    NFTA_BITWISE_XOR, NFTA_CHAIN_HOOK, NFTA_CHAIN_NAME, NFTA_CHAIN_POLICY, NFTA_CHAIN_TABLE,
    NFTA_CHAIN_TYPE, NFTA_CMP_DATA, NFTA_CMP_OP, NFTA_CMP_SREG, NFTA_DATA_VALUE, NFTA_EXPR_DATA,
    NFTA_EXPR_NAME, NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY, NFTA_IMMEDIATE_DATA,
    NFTA_IMMEDIATE_DREG, NFTA_LIST_ELEM, NFTA_META_DREG, NFTA_META_KEY, NFTA_META_SREG,
    NFTA_PAYLOAD_BASE, NFTA_PAYLOAD_DREG, NFTA_PAYLOAD_LEN, NFTA_PAYLOAD_OFFSET, NFTA_RULE_CHAIN,
    NFTA_RULE_EXPRESSIONS, NFTA_RULE_TABLE, NFTA_TABLE_FLAGS, NFTA_TABLE_NAME, NFTA_TABLE_USERDATA,
    NFT_CMP_EQ, NFT_META_L4PROTO, NFT_META_NFPROTO, NFT_META_NFTRACE, NFT_MSG_DELTABLE,
    NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE, NFT_MSG_NEWTABLE, NFT_PAYLOAD_LL_HEADER,
    NFT_PAYLOAD_NETWORK_HEADER, NFT_PAYLOAD_TRANSPORT_HEADER, NFT_TABLE_F_OWNER,
};
use crate::host::nl::{Attrs, BatchMsg, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL};
use ipnet::IpNet;
use std::net::IpAddr;

/// Every table kvmtrace adds starts with this; the rest is `<pid>_<n>`.
pub const TABLE_PREFIX: &str = "kvmtrace_nftrace_";
/// NFPROTO_INET.
pub const FAMILY_INET: u8 = 1;
/// NFPROTO_BRIDGE.
pub const FAMILY_BRIDGE: u8 = 7;

/// The two families kvmtrace adds a table in: `inet` for what the host routes or receives,
/// `bridge` for the frames its bridges forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Inet,
    Bridge,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Inet, Family::Bridge];

    pub fn num(self) -> u8 {
        match self {
            Family::Inet => FAMILY_INET,
            Family::Bridge => FAMILY_BRIDGE,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Bridge => "bridge",
        }
    }

    /// The family of a table name as nft spells it.
    pub fn from_name(name: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.name() == name)
    }
}
/// Before conntrack (-200) and raw (-300), after defragmentation (-400): NF_IP_PRI_* in
/// include/uapi/linux/netfilter_ipv4.h.
pub const PRIORITY: i32 = -350;
/// (chain, hook number): NF_INET_PRE_ROUTING, NF_INET_LOCAL_OUT.
pub const CHAINS: [(&str, u32); 2] = [("pre", 0), ("out", 3)];

/// libnftnl's NFTNL_UDATA_TABLE_COMMENT: what `nft list` shows as `comment "…"`.
const UDATA_TABLE_COMMENT: u8 = 0;

const NF_ACCEPT: u32 = 1;

/// NFT_REG_1 (a 16-byte register; nft uses it the same way).
const REG: u32 = 1;

/// The name of the `n`th table of process `pid`.
pub fn table_name(pid: u32, n: u32) -> String {
    format!("{TABLE_PREFIX}{pid}_{n}")
}

/// The pid in one of kvmtrace's table names.
pub fn pid_of(table: &str) -> Option<u32> {
    let rest = table.strip_prefix(TABLE_PREFIX)?;
    let (pid, n) = rest.split_once('_')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// One match of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    /// `meta nfproto ipv4` or `ipv6` (the dependency nft adds before `ip …`/`ip6 …` in an
    /// inet table).
    Family {
        v6: bool,
    },
    /// `ether type ip` or `ip6`: the same dependency in a bridge table.
    EtherType {
        v6: bool,
    },
    Saddr(IpNet),
    Daddr(IpNet),
    L4proto(u8),
    Sport(u16),
    Dport(u16),
}

/// The rules of a table of `family`: [`rules`], with the ether type instead of `meta nfproto`
/// in a bridge table.
pub fn rules_for(family: Family, f: &TraceFilter) -> Vec<Vec<Match>> {
    let mut out = rules(f);
    if family == Family::Bridge {
        for m in out.iter_mut().flatten() {
            if let Match::Family { v6 } = *m {
                *m = Match::EtherType { v6 };
            }
        }
    }
    out
}

/// The rules of each chain, for each destination followed: requests (guest → destination, or
/// anything → destination when no guest address of that version is known) and replies
/// (destination → anywhere: before de-NAT the reply is addressed to the host).
pub fn rules(f: &TraceFilter) -> Vec<Vec<Match>> {
    let mut out = Vec::new();
    for dst in f.dsts.iter().map(IpNet::trunc) {
        let v6 = matches!(dst, IpNet::V6(_));
        let protos: Vec<Option<u8>> = match (f.proto_for(v6), f.packets.port) {
            (0, None) => vec![None],
            (0, Some(_)) => vec![Some(6), Some(17), Some(132)], // a port: TCP, UDP, SCTP
            (p, _) => vec![Some(p)],
        };
        let mut sources: Vec<Option<IpAddr>> = f
            .guest_ips
            .iter()
            .filter(|g| g.is_ipv6() == v6)
            .copied()
            .map(Some)
            .collect();
        if sources.is_empty() {
            sources.push(None);
        }
        let family = Match::Family { v6 };
        for proto in &protos {
            let l4 = |port_match: fn(u16) -> Match| {
                let mut m = Vec::new();
                if let Some(p) = *proto {
                    m.push(Match::L4proto(p));
                    if let Some(port) = f.packets.port.filter(|_| has_ports(p)) {
                        m.push(port_match(port));
                    }
                }
                m
            };
            for s in &sources {
                let mut r = vec![family];
                if let Some(s) = s {
                    r.push(Match::Saddr(IpNet::from(*s)));
                }
                r.push(Match::Daddr(dst));
                r.extend(l4(Match::Dport));
                out.push(r);
            }
            let mut r = vec![family, Match::Saddr(dst)];
            r.extend(l4(Match::Sport));
            out.push(r);
        }
    }
    out
}

fn addr_text(n: IpNet) -> String {
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

/// A rule in nft syntax (for logs and docs; the kernel gets [`rule_exprs`]).
pub fn rule_text(r: &[Match]) -> String {
    let mut parts: Vec<String> = r
        .iter()
        .map(|m| match *m {
            Match::Family { v6 } => format!("meta nfproto {}", ip_word(v6, "ipv4", "ipv6")),
            Match::EtherType { v6 } => format!("ether type {}", ip_word(v6, "ip", "ip6")),
            Match::Saddr(n) => format!(
                "{} saddr {}",
                ip_word(n.addr().is_ipv6(), "ip", "ip6"),
                addr_text(n)
            ),
            Match::Daddr(n) => format!(
                "{} daddr {}",
                ip_word(n.addr().is_ipv6(), "ip", "ip6"),
                addr_text(n)
            ),
            Match::L4proto(p) => format!("meta l4proto {p}"),
            Match::Sport(p) => format!("th sport {p}"),
            Match::Dport(p) => format!("th dport {p}"),
        })
        .collect();
    parts.push("meta nftrace set 1".into());
    parts.join(" ")
}

fn ip_word(v6: bool, four: &'static str, six: &'static str) -> &'static str {
    if v6 {
        six
    } else {
        four
    }
}

/// The whole table in nft syntax (for logs and docs).
pub fn ruleset_text(family: Family, table: &str, f: &TraceFilter) -> String {
    let mut s = format!("table {} {table} {{\n", family.name());
    for (chain, hook) in CHAINS {
        let hook = if hook == 0 { "prerouting" } else { "output" };
        s += &format!(
            "    chain {chain} {{\n        type filter hook {hook} priority {PRIORITY}; policy accept;\n"
        );
        for r in rules_for(family, f) {
            s += &format!("        {}\n", rule_text(&r));
        }
        s += "    }\n";
    }
    s + "}\n"
}

fn expr(name: &str, data: Attrs) -> Attrs {
    Attrs::new()
        .str(NFTA_EXPR_NAME, name)
        .nested(NFTA_EXPR_DATA, data)
}

fn data(v: &[u8]) -> Attrs {
    Attrs::new().bytes(NFTA_DATA_VALUE, v)
}

fn meta_load(key: u32) -> Attrs {
    expr(
        "meta",
        Attrs::new()
            .be32(NFTA_META_KEY, key)
            .be32(NFTA_META_DREG, REG),
    )
}

fn payload_load(base: u32, offset: u32, len: u32) -> Attrs {
    expr(
        "payload",
        Attrs::new()
            .be32(NFTA_PAYLOAD_DREG, REG)
            .be32(NFTA_PAYLOAD_BASE, base)
            .be32(NFTA_PAYLOAD_OFFSET, offset)
            .be32(NFTA_PAYLOAD_LEN, len),
    )
}

fn cmp_eq(v: &[u8]) -> Attrs {
    expr(
        "cmp",
        Attrs::new()
            .be32(NFTA_CMP_SREG, REG)
            .be32(NFTA_CMP_OP, NFT_CMP_EQ)
            .nested(NFTA_CMP_DATA, data(v)),
    )
}

fn bitwise_mask(m: &[u8]) -> Attrs {
    expr(
        "bitwise",
        Attrs::new()
            .be32(NFTA_BITWISE_SREG, REG)
            .be32(NFTA_BITWISE_DREG, REG)
            .be32(NFTA_BITWISE_LEN, m.len() as u32)
            .nested(NFTA_BITWISE_MASK, data(m))
            .nested(NFTA_BITWISE_XOR, data(&vec![0; m.len()])),
    )
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The expressions of one rule: each match loads into a register and compares; the rule ends
/// with `immediate reg 1 = 1; meta set nftrace with reg 1`.
pub fn rule_exprs(r: &[Match]) -> Vec<Attrs> {
    let mut e = Vec::new();
    // Source and destination: IPv4 at offsets 12 and 16, IPv6 at 8 and 24.
    let addr = |e: &mut Vec<Attrs>, dst: bool, n: IpNet| {
        let (v4, len) = if n.addr().is_ipv4() {
            ((12, 16), 4)
        } else {
            ((8, 24), 16)
        };
        let offset = if dst { v4.1 } else { v4.0 };
        e.push(payload_load(NFT_PAYLOAD_NETWORK_HEADER, offset, len));
        if n.prefix_len() < n.max_prefix_len() {
            e.push(bitwise_mask(&octets(n.netmask())));
        }
        e.push(cmp_eq(&octets(n.network())));
    };
    for m in r {
        match *m {
            Match::Family { v6 } => {
                e.push(meta_load(NFT_META_NFPROTO));
                e.push(cmp_eq(&[if v6 { 10 } else { 2 }])); // NFPROTO_IPV6, NFPROTO_IPV4
            }
            Match::EtherType { v6 } => {
                // The Ethernet header's type field (ETH_P_IP, ETH_P_IPV6), as nft loads it.
                e.push(payload_load(NFT_PAYLOAD_LL_HEADER, 12, 2));
                e.push(cmp_eq(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] }));
            }
            Match::Saddr(n) => addr(&mut e, false, n),
            Match::Daddr(n) => addr(&mut e, true, n),
            Match::L4proto(p) => {
                e.push(meta_load(NFT_META_L4PROTO));
                e.push(cmp_eq(&[p]));
            }
            Match::Sport(p) | Match::Dport(p) => {
                let offset = if matches!(m, Match::Sport(_)) { 0 } else { 2 };
                e.push(payload_load(NFT_PAYLOAD_TRANSPORT_HEADER, offset, 2));
                e.push(cmp_eq(&p.to_be_bytes()));
            }
        }
    }
    e.push(expr(
        "immediate",
        Attrs::new()
            .be32(NFTA_IMMEDIATE_DREG, REG)
            .nested(NFTA_IMMEDIATE_DATA, data(&[1])),
    ));
    e.push(expr(
        "meta",
        Attrs::new()
            .be32(NFTA_META_KEY, NFT_META_NFTRACE)
            .be32(NFTA_META_SREG, REG),
    ));
    e
}

/// The table comment (libnftnl user data: type, length, NUL-terminated text).
fn comment(text: &str) -> Vec<u8> {
    let mut t: Vec<u8> = text.bytes().take(250).collect();
    t.push(0);
    let mut u = vec![UDATA_TABLE_COMMENT, t.len() as u8];
    u.extend(t);
    u
}

/// The transaction that adds the table of `family`, its chains and rules.
pub fn create_batch(family: Family, table: &str, f: &TraceFilter, owner: bool) -> Vec<BatchMsg> {
    let (fam, fname) = (family.num(), family.name());
    let mut t = Attrs::new().str(NFTA_TABLE_NAME, table).bytes(
        NFTA_TABLE_USERDATA,
        &comment(&format!(
            "kvmtrace --explain-rules (pid {}): traces one flow, removed when kvmtrace exits",
            std::process::id()
        )),
    );
    if owner {
        t = t.be32(NFTA_TABLE_FLAGS, NFT_TABLE_F_OWNER);
    }
    let mut msgs = vec![BatchMsg {
        ty: nft_type(NFT_MSG_NEWTABLE),
        flags: NLM_F_CREATE | NLM_F_EXCL,
        family: fam,
        attrs: t,
        what: format!("add table {fname} {table}"),
    }];
    let rules = rules_for(family, f);
    for (chain, hook) in CHAINS {
        msgs.push(BatchMsg {
            ty: nft_type(NFT_MSG_NEWCHAIN),
            flags: NLM_F_CREATE | NLM_F_EXCL,
            family: fam,
            attrs: Attrs::new()
                .str(NFTA_CHAIN_TABLE, table)
                .str(NFTA_CHAIN_NAME, chain)
                .nested(
                    NFTA_CHAIN_HOOK,
                    Attrs::new()
                        .be32(NFTA_HOOK_HOOKNUM, hook)
                        .be32(NFTA_HOOK_PRIORITY, PRIORITY as u32),
                )
                .be32(NFTA_CHAIN_POLICY, NF_ACCEPT)
                .str(NFTA_CHAIN_TYPE, "filter"),
            what: format!("add chain {fname} {table} {chain}"),
        });
        for r in &rules {
            let mut list = Attrs::new();
            for e in rule_exprs(r) {
                list = list.nested(NFTA_LIST_ELEM, e);
            }
            msgs.push(BatchMsg {
                ty: nft_type(NFT_MSG_NEWRULE),
                flags: NLM_F_CREATE | NLM_F_APPEND,
                family: fam,
                attrs: Attrs::new()
                    .str(NFTA_RULE_TABLE, table)
                    .str(NFTA_RULE_CHAIN, chain)
                    .nested(NFTA_RULE_EXPRESSIONS, list),
                what: format!("add rule {fname} {table} {chain} {}", rule_text(r)),
            });
        }
    }
    msgs
}

/// `delete table <family> <table>`.
pub fn delete_msg(family: Family, table: &str) -> BatchMsg {
    BatchMsg {
        ty: nft_type(NFT_MSG_DELTABLE),
        flags: 0,
        family: family.num(),
        attrs: Attrs::new().str(NFTA_TABLE_NAME, table),
        what: format!("delete table {} {table}", family.name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::nl::{attrs, be32, cstr};
    use crate::model::filter::{PacketFilter, Proto};

    fn filter(guests: &[&str], dsts: &[&str], proto: Proto, port: Option<u16>) -> TraceFilter {
        TraceFilter {
            guest_ips: guests.iter().map(|g| g.parse().unwrap()).collect(),
            dsts: dsts.iter().map(|d| d.parse().unwrap()).collect(),
            packets: PacketFilter { proto, port },
        }
    }

    #[test]
    fn a_tcp_port_flow_traces_requests_and_replies() {
        let f = filter(&["10.77.0.2"], &["203.0.113.1/32"], Proto::Tcp, Some(8080));
        let texts: Vec<String> = rules(&f).iter().map(|r| rule_text(r)).collect();
        assert_eq!(
            texts,
            [
                "meta nfproto ipv4 ip saddr 10.77.0.2 ip daddr 203.0.113.1 meta l4proto 6 th dport 8080 meta nftrace set 1",
                "meta nfproto ipv4 ip saddr 203.0.113.1 meta l4proto 6 th sport 8080 meta nftrace set 1",
            ]
        );
    }

    #[test]
    fn without_guest_address_only_the_destination_is_matched() {
        let f = filter(&[], &["203.0.113.77/24"], Proto::Any, None);
        let texts: Vec<String> = rules(&f).iter().map(|r| rule_text(r)).collect();
        assert_eq!(
            texts,
            [
                "meta nfproto ipv4 ip daddr 203.0.113.0/24 meta nftrace set 1",
                "meta nfproto ipv4 ip saddr 203.0.113.0/24 meta nftrace set 1",
            ]
        );
    }

    #[test]
    fn a_port_without_protocol_means_tcp_udp_and_sctp_and_icmp_ignores_ports() {
        let f = filter(
            &["10.0.0.1", "10.0.0.2"],
            &["1.1.1.1/32"],
            Proto::Any,
            Some(53),
        );
        assert_eq!(rules(&f).len(), 3 * 3, "(2 guests + 1 reply) × 3 protocols");
        let f = filter(&[], &["1.1.1.1/32"], Proto::Icmp, Some(53));
        assert!(rules(&f)
            .iter()
            .flatten()
            .all(|m| !matches!(m, Match::Dport(_) | Match::Sport(_))));
    }

    #[test]
    fn an_ipv6_destination_gets_ip6_rules_with_icmpv6_and_its_own_guests_only() {
        let f = filter(
            &["10.77.0.2", "fd00:77::2"],
            &["203.0.113.1/32", "2001:db8::/64"],
            Proto::Icmp,
            None,
        );
        let texts: Vec<String> = rules(&f).iter().map(|r| rule_text(r)).collect();
        assert_eq!(
            texts,
            [
                "meta nfproto ipv4 ip saddr 10.77.0.2 ip daddr 203.0.113.1 meta l4proto 1 meta nftrace set 1",
                "meta nfproto ipv4 ip saddr 203.0.113.1 meta l4proto 1 meta nftrace set 1",
                "meta nfproto ipv6 ip6 saddr fd00:77::2 ip6 daddr 2001:db8::/64 meta l4proto 58 meta nftrace set 1",
                "meta nfproto ipv6 ip6 saddr 2001:db8::/64 meta l4proto 58 meta nftrace set 1",
            ]
        );
    }

    #[test]
    fn ipv6_expressions_load_16_bytes_at_the_ipv6_offsets_and_mask_the_prefix() {
        let r = [
            Match::Family { v6: true },
            Match::Saddr("fd00:77::2/128".parse().unwrap()),
            Match::Daddr("2001:db8::/64".parse().unwrap()),
        ];
        let e = rule_exprs(&r);
        assert_eq!(
            expr_names(&e),
            "meta cmp payload cmp payload bitwise cmp immediate meta"
        );
        // nfproto compared with NFPROTO_IPV6.
        assert_eq!(cmp_value(&e[1]), [10]);
        assert_eq!(
            expr_fields(&e[2])[2..],
            [(NFTA_PAYLOAD_OFFSET, 8), (NFTA_PAYLOAD_LEN, 16)]
        );
        assert_eq!(
            expr_fields(&e[4])[2..],
            [(NFTA_PAYLOAD_OFFSET, 24), (NFTA_PAYLOAD_LEN, 16)]
        );
        assert_eq!(expr_fields(&e[5])[2], (NFTA_BITWISE_LEN, 16));
    }

    /// The expressions' names, in order, space-separated.
    fn expr_names(e: &[Attrs]) -> String {
        let names: Vec<String> = e
            .iter()
            .map(|a| {
                let (ty, p) = attrs(a.as_bytes()).next().expect("name");
                assert_eq!(ty, NFTA_EXPR_NAME);
                cstr(p)
            })
            .collect();
        names.join(" ")
    }

    /// An expression's data (`NFTA_EXPR_DATA`, after its name).
    fn expr_data(e: &Attrs) -> &[u8] {
        attrs(e.as_bytes()).nth(1).expect("data").1
    }

    /// An expression's data attributes, each read as a big-endian u32 (0: not 4 bytes).
    fn expr_fields(e: &Attrs) -> Vec<(u16, u32)> {
        attrs(expr_data(e))
            .map(|(t, p)| (t, be32(p).unwrap_or(0)))
            .collect()
    }

    /// The value a `cmp` expression compares with.
    fn cmp_value(e: &Attrs) -> &[u8] {
        let value = attrs(expr_data(e))
            .find(|(t, _)| *t == NFTA_CMP_DATA)
            .expect("cmp data")
            .1;
        attrs(value).next().expect("value").1
    }

    #[test]
    fn expressions_load_compare_and_set_nftrace() {
        let r = [
            Match::Family { v6: false },
            Match::Daddr("203.0.113.0/24".parse().unwrap()),
            Match::L4proto(17),
            Match::Dport(53),
        ];
        let e = rule_exprs(&r);
        assert_eq!(
            expr_names(&e),
            "meta cmp payload bitwise cmp meta cmp payload cmp immediate meta"
        );
        // The destination payload load: network header, offset 16, 4 bytes.
        assert_eq!(
            expr_fields(&e[2]),
            [
                (NFTA_PAYLOAD_DREG, REG),
                (NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER),
                (NFTA_PAYLOAD_OFFSET, 16),
                (NFTA_PAYLOAD_LEN, 4)
            ]
        );
        // The last expression sets nftrace from the register.
        assert_eq!(
            expr_fields(&e[10]),
            [(NFTA_META_KEY, NFT_META_NFTRACE), (NFTA_META_SREG, REG)]
        );
    }

    /// Issue 18: a bridge table cannot use `meta nfproto` (NFPROTO_BRIDGE for every frame); its
    /// rules match the ether type, loaded from the link-layer header as nft does it.
    #[test]
    fn a_bridge_table_matches_the_ether_type_instead_of_nfproto() {
        let f = filter(
            &["10.77.0.2", "fd00:77::2"],
            &["10.77.0.1/32", "fd00:77::1/128"],
            Proto::Icmp,
            None,
        );
        let texts: Vec<String> = rules_for(Family::Bridge, &f)
            .iter()
            .map(|r| rule_text(r))
            .collect();
        assert_eq!(
            texts,
            [
                "ether type ip ip saddr 10.77.0.2 ip daddr 10.77.0.1 meta l4proto 1 meta nftrace set 1",
                "ether type ip ip saddr 10.77.0.1 meta l4proto 1 meta nftrace set 1",
                "ether type ip6 ip6 saddr fd00:77::2 ip6 daddr fd00:77::1 meta l4proto 58 meta nftrace set 1",
                "ether type ip6 ip6 saddr fd00:77::1 meta l4proto 58 meta nftrace set 1",
            ]
        );
        assert_eq!(rules_for(Family::Inet, &f), rules(&f));
        let e = rule_exprs(&rules_for(Family::Bridge, &f)[2]);
        assert_eq!(
            expr_fields(&e[0]),
            [
                (NFTA_PAYLOAD_DREG, REG),
                (NFTA_PAYLOAD_BASE, NFT_PAYLOAD_LL_HEADER),
                (NFTA_PAYLOAD_OFFSET, 12),
                (NFTA_PAYLOAD_LEN, 2)
            ]
        );
        assert_eq!(cmp_value(&e[1]), [0x86, 0xdd]);
        let batch = create_batch(Family::Bridge, "kvmtrace_nftrace_1_0", &f, true);
        assert!(batch.iter().all(|m| m.family == FAMILY_BRIDGE));
        assert_eq!(batch[0].what, "add table bridge kvmtrace_nftrace_1_0");
        assert_eq!(
            delete_msg(Family::Bridge, "t").what,
            "delete table bridge t"
        );
    }

    #[test]
    fn table_names_carry_the_pid() {
        let n = table_name(4242, 3);
        assert_eq!(n, "kvmtrace_nftrace_4242_3");
        assert_eq!(pid_of(&n), Some(4242));
        assert_eq!(pid_of("kvmtrace_nftrace_x_1"), None);
        assert_eq!(pid_of("kvmtrace_nftrace_12"), None);
        assert_eq!(pid_of("labfilter"), None);
    }
}
