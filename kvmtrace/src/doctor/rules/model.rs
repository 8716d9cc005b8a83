//! The rules' model: address prefixes, conditions, actions, rules, chains and rulesets, and
//! how each is written. A leaf of `rules`: [`super::decode`] builds it, [`super::judge`]
//! walks it.

use crate::model::event::NfHook;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `ct state` bits as the kernel computes them (`NF_CT_STATE_BIT`, nf_conntrack_common.h).
pub const CT_INVALID: u32 = 1;
pub const CT_ESTABLISHED: u32 = 2;
pub const CT_RELATED: u32 = 4;
pub const CT_NEW: u32 = 8;
pub const CT_UNTRACKED: u32 = 64;

/// An address prefix of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Net {
    pub addr: IpAddr,
    pub len: u8,
}

impl Net {
    /// The network containing `addr` (host bits cleared).
    pub fn new(addr: impl Into<IpAddr>, len: u8) -> Net {
        let a: IpAddr = addr.into();
        let max = if a.is_ipv6() { 128 } else { 32 };
        Net::from(ipnet::IpNet::new_assert(a, len.min(max)).trunc())
    }
    fn ipnet(&self) -> ipnet::IpNet {
        ipnet::IpNet::new_assert(self.addr, self.len)
    }
    pub fn is_v6(&self) -> bool {
        self.addr.is_ipv6()
    }
    /// The prefix length of one address of this family.
    pub fn max_len(&self) -> u8 {
        if self.is_v6() {
            128
        } else {
            32
        }
    }
    /// The IPv4 network address (None for IPv6).
    pub fn v4(&self) -> Option<Ipv4Addr> {
        match self.addr {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }
    pub fn contains(&self, a: impl Into<IpAddr>) -> bool {
        self.ipnet().contains(&a.into())
    }
    /// Every address of `other` is in `self` (never across families).
    pub fn covers(&self, other: &Net) -> bool {
        self.ipnet().contains(&other.ipnet())
    }
    pub fn overlaps(&self, other: &Net) -> bool {
        self.covers(other) || other.covers(self)
    }
    /// IPv4: RFC 1918, CGNAT (RFC 6598), loopback, link-local, multicast, reserved; IPv6:
    /// unspecified, loopback, IPv4-mapped, link-local, ULA, multicast: addresses that are not
    /// "somewhere on the internet".
    pub fn is_special(&self) -> bool {
        if self.is_v6() {
            SPECIAL6
                .iter()
                .any(|(a, l)| Net::new(Ipv6Addr::from(*a), *l).covers(self))
        } else {
            SPECIAL
                .iter()
                .any(|(a, l)| Net::new(Ipv4Addr::from(*a), *l).covers(self))
        }
    }
    /// IPv4 RFC 1918 or CGNAT, IPv6 ULA (fc00::/7): needs NAT to reach the internet.
    pub fn is_private(&self) -> bool {
        if self.is_v6() {
            return Net::new(Ipv6Addr::from(0xfc00u128 << 112), 7).covers(self);
        }
        [
            ([10, 0, 0, 0], 8),
            ([172, 16, 0, 0], 12),
            ([192, 168, 0, 0], 16),
            ([100, 64, 0, 0], 10),
        ]
        .iter()
        .any(|(a, l)| Net::new(Ipv4Addr::from(*a), *l).covers(self))
    }
    /// How many addresses (saturated at 2^63 for IPv6).
    pub fn size(&self) -> u64 {
        1u64 << (u32::from(self.max_len() - self.len)).min(63)
    }
}

const SPECIAL: [([u8; 4], u8); 9] = [
    ([0, 0, 0, 0], 8),
    ([10, 0, 0, 0], 8),
    ([100, 64, 0, 0], 10),
    ([127, 0, 0, 0], 8),
    ([169, 254, 0, 0], 16),
    ([172, 16, 0, 0], 12),
    ([192, 168, 0, 0], 16),
    ([224, 0, 0, 0], 4),
    ([240, 0, 0, 0], 4),
];

const SPECIAL6: [(u128, u8); 6] = [
    (0, 128),
    (1, 128),
    (0xffff_0000_0000, 96),
    (0xfe80 << 112, 10),
    (0xfc00 << 112, 7),
    (0xff00 << 112, 8),
];

impl From<ipnet::IpNet> for Net {
    fn from(n: ipnet::IpNet) -> Net {
        Net {
            addr: n.addr(),
            len: n.prefix_len(),
        }
    }
}

impl From<ipnet::Ipv4Net> for Net {
    fn from(n: ipnet::Ipv4Net) -> Net {
        Net::from(ipnet::IpNet::V4(n))
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// What a rule tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cond {
    /// `ip saddr|daddr [!=] NET`.
    Addr { dst: bool, neg: bool, net: Net },
    /// `iifname|oifname [!=] "NAME"` (`wildcard`: a prefix, `"br*"`).
    Ifname {
        out: bool,
        neg: bool,
        name: String,
        wildcard: bool,
    },
    /// `iif|oif [!=] INDEX`.
    Ifindex { out: bool, neg: bool, index: u32 },
    /// `((ct state & mask) ^ xor) [!]= value`.
    CtState {
        mask: u32,
        xor: u32,
        neg: bool,
        value: u32,
    },
    /// `meta nfproto [!=] N` (2 = IPv4, 10 = IPv6).
    Nfproto { neg: bool, value: u8 },
    /// A reverse-path test: nft `fib saddr [. mark] [. iif] oif missing|exists`, iptables
    /// `-m rpfilter [--loose] [--invert]`. `strict`: the route back must leave by the input
    /// device (`. iif`, not `--loose`); `on_fail`: the rule matches when the test fails.
    RpFilter {
        strict: bool,
        on_fail: bool,
        text: String,
    },
    /// Anything else: always "maybe".
    Other(String),
}

/// What a rule does when it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing decisive (counter, log, …): the next rule is evaluated.
    Continue,
    Accept,
    Drop,
    Reject,
    Jump(String),
    Goto(String),
    Return,
    Masquerade,
    Snat,
    Dnat,
    /// A verdict map (`… vmap @m`): the verdict depends on the map's elements.
    Vmap(String),
    /// Queue to userspace and the like: the outcome is unknown.
    Other(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub handle: u64,
    pub conds: Vec<Cond>,
    pub action: Action,
}

/// A base chain's hook, priority, policy and type, as the nftables reader gives them.
pub use crate::host::nftables::Hook as Base;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// `ip`, `inet`, `bridge`, …
    pub family: String,
    pub table: String,
    pub name: String,
    pub base: Option<Base>,
    pub rules: Vec<Rule>,
}

impl Chain {
    /// `inet labfilter forward`.
    pub fn id(&self) -> String {
        format!("{} {} {}", self.family, self.table, self.name)
    }
    /// `inet labfilter forward (filter, hook forward, priority 0, policy drop, 0 rules)`.
    pub fn describe(&self) -> String {
        match &self.base {
            Some(b) => format!(
                "{} ({}, hook {}, priority {}, policy {}, {} rule{})",
                self.id(),
                b.kind,
                b.hook.name().to_ascii_lowercase(),
                b.priority,
                b.policy,
                self.rules.len(),
                if self.rules.len() == 1 { "" } else { "s" }
            ),
            None => self.id(),
        }
    }
    /// iptables-nft's own tables and chains (`ip filter FORWARD`): fixes are then given as
    /// iptables commands.
    pub fn is_iptables(&self) -> bool {
        self.family == "ip"
            && ["filter", "nat", "mangle", "raw", "security"].contains(&self.table.as_str())
            && self.name.chars().all(|c| !c.is_ascii_lowercase())
    }
    /// Handles IPv4 packets at a hook (the `ip` and `inet` families).
    pub fn sees_ipv4(&self) -> bool {
        self.family == "ip" || self.family == "inet"
    }
    /// Handles IPv6 packets at a hook (the `ip6` and `inet` families).
    pub fn sees_ipv6(&self) -> bool {
        self.family == "ip6" || self.family == "inet"
    }
    /// ip6tables-nft's own tables and chains (`ip6 filter FORWARD`).
    pub fn is_ip6tables(&self) -> bool {
        self.family == "ip6"
            && ["filter", "nat", "mangle", "raw", "security"].contains(&self.table.as_str())
            && self.name.chars().all(|c| !c.is_ascii_lowercase())
    }
}

/// Every chain of every table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub chains: Vec<Chain>,
}

impl Ruleset {
    /// IPv4 (`v6` false) or IPv6 base chains at `hook` of type `kind`, in priority order.
    pub fn base_chains_of(&self, v6: bool, hook: NfHook, kind: &str) -> Vec<&Chain> {
        let mut v: Vec<&Chain> = self
            .chains
            .iter()
            .filter(|c| if v6 { c.sees_ipv6() } else { c.sees_ipv4() })
            .filter(|c| {
                c.base
                    .as_ref()
                    .is_some_and(|b| b.hook == hook && b.kind == kind)
            })
            .collect();
        v.sort_by_key(|c| c.base.as_ref().map(|b| b.priority).unwrap_or(0));
        v
    }
    pub(super) fn chain(&self, family: &str, table: &str, name: &str) -> Option<&Chain> {
        self.chains
            .iter()
            .find(|c| c.family == family && c.table == table && c.name == name)
    }
    pub fn has_iptables_tables(&self) -> bool {
        self.chains.iter().any(Chain::is_iptables)
    }
}

pub(super) fn op_str(op: u32) -> &'static str {
    match op {
        0 => "",
        1 => "!= ",
        2 => "< ",
        3 => "<= ",
        4 => "> ",
        _ => ">= ",
    }
}

fn ct_state_names(mask: u32) -> String {
    let names = [
        (CT_INVALID, "invalid"),
        (CT_ESTABLISHED, "established"),
        (CT_RELATED, "related"),
        (CT_NEW, "new"),
        (CT_UNTRACKED, "untracked"),
    ];
    let v: Vec<&str> = names
        .iter()
        .filter(|(b, _)| mask & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if v.is_empty() {
        format!("0x{mask:x}")
    } else {
        v.join(",")
    }
}

impl fmt::Display for Cond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ne = |neg: &bool| if *neg { "!= " } else { "" };
        match self {
            Cond::Addr { dst, neg, net } => {
                let field = if *dst { "daddr" } else { "saddr" };
                let fam = if net.is_v6() { "ip6" } else { "ip" };
                if net.len == net.max_len() {
                    write!(f, "{fam} {field} {}{}", ne(neg), net.addr)
                } else {
                    write!(f, "{fam} {field} {}{net}", ne(neg))
                }
            }
            Cond::Ifname {
                out,
                neg,
                name,
                wildcard,
            } => write!(
                f,
                "{} {}\"{name}{}\"",
                if *out { "oifname" } else { "iifname" },
                ne(neg),
                if *wildcard { "*" } else { "" }
            ),
            Cond::Ifindex { out, neg, index } => {
                write!(f, "{} {}{index}", if *out { "oif" } else { "iif" }, ne(neg))
            }
            Cond::CtState {
                mask,
                xor,
                neg,
                value,
            } => {
                if *xor == 0 && *value == 0 {
                    // `(state & mask) != 0` is nft's `ct state a,b`; `== 0` its negation.
                    let not = if *neg { "" } else { "!= " };
                    write!(f, "ct state {not}{}", ct_state_names(*mask))
                } else {
                    write!(
                        f,
                        "ct state & 0x{mask:x} ^ 0x{xor:x} {}0x{value:x}",
                        if *neg { "!= " } else { "== " }
                    )
                }
            }
            Cond::Nfproto { neg, value } => write!(
                f,
                "meta nfproto {}{}",
                ne(neg),
                match value {
                    2 => "ipv4".to_string(),
                    10 => "ipv6".to_string(),
                    v => v.to_string(),
                }
            ),
            Cond::RpFilter { text, .. } => f.write_str(text),
            Cond::Other(s) => f.write_str(s),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Continue => Ok(()),
            Action::Accept => f.write_str("accept"),
            Action::Drop => f.write_str("drop"),
            Action::Reject => f.write_str("reject"),
            Action::Jump(c) => write!(f, "jump {c}"),
            Action::Goto(c) => write!(f, "goto {c}"),
            Action::Return => f.write_str("return"),
            Action::Masquerade => f.write_str("masquerade"),
            Action::Snat => f.write_str("snat"),
            Action::Dnat => f.write_str("dnat"),
            Action::Vmap(m) => write!(f, "vmap @{m}"),
            Action::Other(s) => f.write_str(s),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.conds.iter().map(|c| c.to_string()).collect();
        let a = self.action.to_string();
        if !a.is_empty() {
            parts.push(a);
        }
        if parts.is_empty() {
            parts.push("(no statements)".into());
        }
        write!(f, "`{}` (handle {})", parts.join(" "), self.handle)
    }
}
