//! Decoding nf_tables rules into the model: the nftables reader (`host/nftables/`) lists the
//! chains and each rule's expressions; here each expression loads into a register or compares
//! one, and the comparisons become conditions.

use super::model::{op_str, Action, Chain, Cond, Net, Rule, Ruleset};
use crate::host::nftables::{
    self, NFTA_BITWISE_DREG, NFTA_BITWISE_MASK, NFTA_BITWISE_OP, NFTA_BITWISE_SREG,
    NFTA_BITWISE_XOR, NFTA_CMP_DATA, NFTA_CMP_OP, NFTA_CMP_SREG, NFTA_DATA_VALUE,
    NFTA_DATA_VERDICT, NFTA_IMMEDIATE_DATA, NFTA_IMMEDIATE_DREG, NFTA_META_DREG, NFTA_META_KEY,
    NFTA_PAYLOAD_BASE, NFTA_PAYLOAD_DREG, NFTA_PAYLOAD_LEN, NFTA_PAYLOAD_OFFSET,
    NFTA_VERDICT_CHAIN, NFTA_VERDICT_CODE,
};
pub(super) use crate::host::nftables::{
    NFT_META_IIF as META_IIF, NFT_META_IIFNAME as META_IIFNAME, NFT_META_L4PROTO as META_L4PROTO,
    NFT_META_NFPROTO as META_NFPROTO, NFT_META_OIF as META_OIF, NFT_META_OIFNAME as META_OIFNAME,
    NFT_META_PROTOCOL as META_PROTOCOL,
};
use crate::host::nl::{attr, be32, cstr, ne32};
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};

/// `NFTA_FIB_F_*` (nf_tables.h).
pub(super) const FIB_F_SADDR: u32 = 1;
pub(super) const FIB_F_DADDR: u32 = 2;
pub(super) const FIB_F_MARK: u32 = 4;
pub(super) const FIB_F_IIF: u32 = 8;
pub(super) const FIB_F_OIF: u32 = 16;
pub(super) const CT_STATE: u32 = 0;

/// What a register holds while a rule's expressions are decoded.
#[derive(Clone, Debug)]
pub(super) enum Src {
    /// `payload load LEN @ BASE + OFFSET` (base 0 link, 1 network, 2 transport).
    /// `v6`: the network header is IPv6 (Some(true)), IPv4 (Some(false)) or not known: from
    /// the table's family or the rule's `meta nfproto` test before the load.
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        v6: Option<bool>,
    },
    Meta(u32),
    /// `fib` (NFTA_FIB_FLAGS, NFTA_FIB_RESULT).
    Fib {
        flags: u32,
        result: u32,
    },
    Ct(u32),
    Masked {
        inner: Box<Src>,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Unknown(String),
}

impl Src {
    fn describe(&self) -> String {
        match self {
            Src::Payload {
                base,
                offset,
                len,
                v6: Some(true),
            } => match (base, offset, len) {
                (1, 6, 1) => "ip6 nexthdr".into(),
                (1, 8, _) => "ip6 saddr".into(),
                (1, 24, _) => "ip6 daddr".into(),
                (2, 0, 2) => "th sport".into(),
                (2, 2, 2) => "th dport".into(),
                _ => format!(
                    "@{}h,{},{}",
                    ["ll", "nh", "th", "ih"].get(*base as usize).unwrap_or(&"?"),
                    offset * 8,
                    len * 8
                ),
            },
            Src::Payload {
                base, offset, len, ..
            } => match (base, offset, len) {
                (1, 9, 1) => "ip protocol".into(),
                (2, 0, 2) => "th sport".into(),
                (2, 2, 2) => "th dport".into(),
                (1, 12, _) => "ip saddr".into(),
                (1, 16, _) => "ip daddr".into(),
                _ => format!(
                    "@{}h,{},{}",
                    ["ll", "nh", "th", "ih"].get(*base as usize).unwrap_or(&"?"),
                    offset * 8,
                    len * 8
                ),
            },
            Src::Meta(k) => match *k {
                META_L4PROTO => "meta l4proto".into(),
                1 => "meta protocol".into(),
                3 => "meta mark".into(),
                k => format!("meta key {k}"),
            },
            Src::Ct(k) => match *k {
                CT_STATE => "ct state".into(),
                2 => "ct status".into(),
                3 => "ct mark".into(),
                1 => "ct direction".into(),
                k => format!("ct key {k}"),
            },
            Src::Fib { flags, result } => fib_text(*flags, *result),
            Src::Masked { inner, .. } => format!("{} & mask", inner.describe()),
            Src::Unknown(s) => s.clone(),
        }
    }
}

/// NFT_REG_1..4 (16 bytes each) are NFT_REG32_00..15 (4 bytes each) in groups of four.
pub(super) fn norm_reg(r: u32) -> u32 {
    if (1..=4).contains(&r) {
        8 + (r - 1) * 4
    } else {
        r
    }
}

pub(super) fn data_value(p: &[u8]) -> Vec<u8> {
    attr(p, NFTA_DATA_VALUE)
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

/// The prefix a comparison of an address load with `value` (under `mask`) means, if any:
/// IPv4 (`v6` false, loads of up to 4 bytes) or IPv6 (up to 16).
pub(super) fn prefix_of(v6: bool, load_len: u32, mask: Option<&[u8]>, value: &[u8]) -> Option<Net> {
    let width = if v6 { 16 } else { 4 };
    let mut a = [0u8; 16];
    for (i, b) in value.iter().take(width).enumerate() {
        a[i] = *b;
    }
    let len = match mask {
        None => (load_len.min(width as u32) * 8) as u8,
        Some(m) => {
            let mut mm = [0u8; 16];
            for (i, b) in m.iter().take(width).enumerate() {
                mm[i] = *b;
            }
            // The mask's bits, left-aligned in a u128.
            let m = u128::from_be_bytes(mm);
            let bits = width as u32 * 8;
            let ones = m.leading_ones();
            // Only a contiguous prefix mask is an address prefix.
            if ones < 128 && m << ones != 0 {
                return None;
            }
            ones.min(bits).min(load_len * 8) as u8
        }
    };
    Some(if v6 {
        Net::new(Ipv6Addr::from(a), len)
    } else {
        Net::new(Ipv4Addr::new(a[0], a[1], a[2], a[3]), len)
    })
}

/// `fib saddr . iif oif`: the text of a fib load.
pub(super) fn fib_text(flags: u32, result: u32) -> String {
    let keys: Vec<&str> = [
        (FIB_F_SADDR, "saddr"),
        (FIB_F_DADDR, "daddr"),
        (FIB_F_MARK, "mark"),
        (FIB_F_IIF, "iif"),
        (FIB_F_OIF, "oif"),
    ]
    .iter()
    .filter(|(b, _)| flags & b != 0)
    .map(|(_, n)| *n)
    .collect();
    let r = match result {
        1 => "oif",
        2 => "oifname",
        3 => "type",
        _ => "?",
    };
    format!("fib {} {r}", keys.join(" . "))
}

/// Whether an address load at `offset` is the destination (true) or source (false) address,
/// for the network header's family; None: not an address.
pub(super) fn addr_field(v6: Option<bool>, offset: u32, len: u32) -> Option<bool> {
    match (v6, offset) {
        (Some(true), 8 | 24) if len <= 16 => Some(offset == 24),
        (Some(true), _) => None,
        (_, 12 | 16) if len <= 4 => Some(offset == 16),
        _ => None,
    }
}

pub(super) fn hex(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

/// Turns a comparison into a condition.
pub(super) fn cmp_cond(src: &Src, op: u32, value: &[u8]) -> Cond {
    let eqne = op <= 1;
    let neg = op == 1;
    let other = || Cond::Other(format!("{} {}0x{}", src.describe(), op_str(op), hex(value)));
    match src {
        Src::Payload {
            base: 1,
            offset,
            len,
            v6,
        } if eqne && addr_field(*v6, *offset, *len).is_some() => {
            match prefix_of(*v6 == Some(true), *len, None, value) {
                Some(net) => Cond::Addr {
                    dst: addr_field(*v6, *offset, *len) == Some(true),
                    neg,
                    net,
                },
                None => other(),
            }
        }
        // `fib saddr [. mark] [. iif] oif missing` (== 0) or `exists` (!= 0).
        Src::Fib { flags, result }
            if eqne
                && flags & FIB_F_SADDR != 0
                && (*result == 1 || *result == 2)
                && value.iter().all(|b| *b == 0) =>
        {
            Cond::RpFilter {
                strict: flags & FIB_F_IIF != 0,
                on_fail: !neg,
                text: format!(
                    "{} {}",
                    fib_text(*flags, *result),
                    if neg { "exists" } else { "missing" }
                ),
            }
        }
        Src::Masked { inner, mask, xor } if eqne && xor.iter().all(|b| *b == 0) => {
            match inner.as_ref() {
                Src::Payload {
                    base: 1,
                    offset,
                    len,
                    v6,
                } if addr_field(*v6, *offset, *len).is_some() => {
                    match prefix_of(*v6 == Some(true), *len, Some(mask), value) {
                        Some(net) => Cond::Addr {
                            dst: addr_field(*v6, *offset, *len) == Some(true),
                            neg,
                            net,
                        },
                        None => other(),
                    }
                }
                Src::Ct(CT_STATE) => Cond::CtState {
                    mask: ne32(mask).unwrap_or(u32::MAX),
                    xor: 0,
                    neg,
                    value: ne32(value).unwrap_or(0),
                },
                _ => other(),
            }
        }
        Src::Masked { inner, mask, xor } if eqne && matches!(inner.as_ref(), Src::Ct(CT_STATE)) => {
            Cond::CtState {
                mask: ne32(mask).unwrap_or(u32::MAX),
                xor: ne32(xor).unwrap_or(0),
                neg,
                value: ne32(value).unwrap_or(0),
            }
        }
        Src::Ct(CT_STATE) if eqne => Cond::CtState {
            mask: u32::MAX,
            xor: 0,
            neg,
            value: ne32(value).unwrap_or(0),
        },
        Src::Meta(k @ (META_IIFNAME | META_OIFNAME)) if eqne => {
            // A terminating NUL means an exact name; without one the bytes are a prefix
            // (iptables `-i br+`, nft `iifname "br*"`).
            let exact = value.contains(&0);
            Cond::Ifname {
                out: *k == META_OIFNAME,
                neg,
                name: cstr(value),
                wildcard: !exact,
            }
        }
        Src::Meta(k @ (META_IIF | META_OIF)) if eqne => Cond::Ifindex {
            out: *k == META_OIF,
            neg,
            index: ne32(value).unwrap_or(0),
        },
        Src::Meta(META_NFPROTO) if eqne && !value.is_empty() => Cond::Nfproto {
            neg,
            value: value[0],
        },
        Src::Meta(META_L4PROTO)
        | Src::Payload {
            base: 1,
            offset: 9,
            len: 1,
            v6: None | Some(false),
        }
        | Src::Payload {
            base: 1,
            offset: 6,
            len: 1,
            v6: Some(true),
        } if !value.is_empty() => Cond::Other(format!(
            "{} {}{}",
            src.describe(),
            op_str(op),
            match value[0] {
                1 => "icmp".to_string(),
                6 => "tcp".to_string(),
                17 => "udp".to_string(),
                58 => "icmpv6".to_string(),
                p => p.to_string(),
            }
        )),
        Src::Payload {
            base: 2, len: 2, ..
        } if value.len() >= 2 => Cond::Other(format!(
            "{} {}{}",
            src.describe(),
            op_str(op),
            u16::from_be_bytes([value[0], value[1]])
        )),
        _ => other(),
    }
}

/// iptables-nft's `-m conntrack` (revisions 2 and 3 share the layout up to `state_mask`) and
/// `-m state`.
pub(super) fn xt_match(name: &str, rev: u32, info: &[u8]) -> Vec<Cond> {
    let u16_at = |o: usize| info.get(o..o + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    match name {
        "comment" => Vec::new(),
        // struct xt_rpfilter_info { __u8 flags; }: LOOSE 1, VALID_MARK 2, ACCEPT_LOCAL 4,
        // INVERT 8 (linux/netfilter/xt_rpfilter.h).
        "rpfilter" => {
            let f = info.first().copied().unwrap_or(0);
            vec![Cond::RpFilter {
                strict: f & 1 == 0,
                on_fail: f & 8 != 0,
                text: format!(
                    "-m rpfilter{}{}",
                    if f & 1 != 0 { " --loose" } else { "" },
                    if f & 8 != 0 { " --invert" } else { "" }
                ),
            }]
        }
        "state" => match ne32(info) {
            Some(mask) => vec![Cond::CtState {
                mask,
                xor: 0,
                neg: true,
                value: 0,
            }],
            None => vec![Cond::Other("-m state".into())],
        },
        "conntrack" if rev >= 2 => {
            // struct xt_conntrack_mtinfo2/3: 8 × union nf_inet_addr (128), expires_min/max (8),
            // l4proto (2), 4 ports (8), match_flags @146, invert_flags @148, state_mask @150.
            let (Some(flags), Some(inv), Some(mask)) = (u16_at(146), u16_at(148), u16_at(150))
            else {
                return vec![Cond::Other("-m conntrack".into())];
            };
            let mut v = Vec::new();
            if flags & 1 != 0 {
                v.push(Cond::CtState {
                    mask: u32::from(mask),
                    xor: 0,
                    neg: inv & 1 == 0,
                    value: 0,
                });
            }
            // XT_CONNTRACK_STATE_ALIAS (1 << 13) only marks an `-m state` translated by
            // iptables-nft; every other flag is a test not modelled here.
            if flags & !(1 | 0x2000) != 0 {
                v.push(Cond::Other(format!("-m conntrack (flags 0x{flags:x})")));
            }
            v
        }
        n => vec![Cond::Other(format!("-m {n}"))],
    }
}

/// Decodes one rule's expression list (of an `ip` table: IPv4 headers).
#[cfg(test)]
pub fn decode_rule(handle: u64, exprs: &[u8]) -> Rule {
    decode_rule_in("ip", handle, exprs)
}

/// Decodes one rule's expression list in a table of `family`: its network header is IPv4
/// (`ip`), IPv6 (`ip6`), or told by the rule's own `meta nfproto` / `meta protocol` test
/// (`inet`, `bridge`, `netdev`).
pub fn decode_rule_in(family: &str, handle: u64, exprs: &[u8]) -> Rule {
    let mut regs: HashMap<u32, Src> = HashMap::new();
    let mut l3: Option<bool> = match family {
        "ip" => Some(false),
        "ip6" => Some(true),
        _ => None,
    };
    let mut conds = Vec::new();
    let mut action = Action::Continue;
    for (name, d) in nftables::exprs(exprs) {
        let u = |t: u16| attr(d, t).and_then(be32);
        match name.as_str() {
            "payload" => {
                if let (Some(dreg), Some(base), Some(offset), Some(len)) = (
                    u(NFTA_PAYLOAD_DREG),
                    u(NFTA_PAYLOAD_BASE),
                    u(NFTA_PAYLOAD_OFFSET),
                    u(NFTA_PAYLOAD_LEN),
                ) {
                    regs.insert(
                        norm_reg(dreg),
                        Src::Payload {
                            base,
                            offset,
                            len,
                            v6: l3,
                        },
                    );
                }
                // With NFTA_PAYLOAD_SREG (5) instead: a packet rewrite, not a test.
            }
            "meta" => {
                if let (Some(dreg), Some(key)) = (u(NFTA_META_DREG), u(NFTA_META_KEY)) {
                    regs.insert(norm_reg(dreg), Src::Meta(key));
                }
            }
            "ct" => {
                if let (Some(dreg), Some(key)) = (u(1), u(2)) {
                    regs.insert(norm_reg(dreg), Src::Ct(key));
                }
            }
            "bitwise" => {
                let (Some(sreg), Some(dreg)) = (u(NFTA_BITWISE_SREG), u(NFTA_BITWISE_DREG)) else {
                    continue;
                };
                let src = regs
                    .get(&norm_reg(sreg))
                    .cloned()
                    .unwrap_or(Src::Unknown("?".into()));
                // NFTA_BITWISE_OP (6): 0 = mask-and-xor; shifts and the rest are not decoded.
                let v = if u(NFTA_BITWISE_OP).unwrap_or(0) == 0 {
                    Src::Masked {
                        inner: Box::new(src),
                        mask: attr(d, NFTA_BITWISE_MASK)
                            .map(data_value)
                            .unwrap_or_default(),
                        xor: attr(d, NFTA_BITWISE_XOR)
                            .map(data_value)
                            .unwrap_or_default(),
                    }
                } else {
                    Src::Unknown(format!("{} (shifted)", src.describe()))
                };
                regs.insert(norm_reg(dreg), v);
            }
            "cmp" => {
                let (Some(sreg), Some(op)) = (u(NFTA_CMP_SREG), u(NFTA_CMP_OP)) else {
                    continue;
                };
                let value = attr(d, NFTA_CMP_DATA).map(data_value).unwrap_or_default();
                let src = regs
                    .get(&norm_reg(sreg))
                    .cloned()
                    .unwrap_or(Src::Unknown("?".into()));
                // A family test tells how the following header loads read.
                if op == 0 {
                    match (&src, value.as_slice()) {
                        (Src::Meta(META_NFPROTO), [2, ..]) => l3 = Some(false),
                        (Src::Meta(META_NFPROTO), [10, ..]) => l3 = Some(true),
                        (Src::Meta(META_PROTOCOL), [0x08, 0x00, ..]) => l3 = Some(false),
                        (Src::Meta(META_PROTOCOL), [0x86, 0xdd, ..]) => l3 = Some(true),
                        _ => {}
                    }
                }
                conds.push(cmp_cond(&src, op, &value));
            }
            "lookup" => {
                let set = attr(d, 1).map(cstr).unwrap_or_default();
                let src = u(2)
                    .and_then(|r| regs.get(&norm_reg(r)).cloned())
                    .unwrap_or(Src::Unknown("?".into()));
                let inv = u(5).unwrap_or(0) & 1 != 0;
                match u(3) {
                    // NFT_REG_VERDICT: a verdict map.
                    Some(0) => {
                        conds.push(Cond::Other(src.describe()));
                        action = Action::Vmap(set);
                        continue;
                    }
                    Some(dreg) => {
                        regs.insert(norm_reg(dreg), Src::Unknown(format!("map @{set}")));
                    }
                    None => {}
                }
                conds.push(Cond::Other(format!(
                    "{} {}@{set}",
                    src.describe(),
                    if inv { "!= " } else { "" }
                )));
            }
            "immediate" => {
                let Some(dreg) = u(NFTA_IMMEDIATE_DREG) else {
                    continue;
                };
                let data = attr(d, NFTA_IMMEDIATE_DATA).unwrap_or(&[]);
                if dreg != 0 {
                    regs.insert(norm_reg(dreg), Src::Unknown("immediate".into()));
                    continue;
                }
                let v = attr(data, NFTA_DATA_VERDICT).unwrap_or(&[]);
                let code = attr(v, NFTA_VERDICT_CODE).and_then(be32).map(|c| c as i32);
                let target = attr(v, NFTA_VERDICT_CHAIN).map(cstr).unwrap_or_default();
                action = match code {
                    Some(0) => Action::Drop,
                    Some(1) => Action::Accept,
                    Some(-3) => Action::Jump(target),
                    Some(-4) => Action::Goto(target),
                    Some(-5) => Action::Return,
                    Some(-1) | Some(-2) => Action::Continue,
                    Some(3) => Action::Other("queue".into()),
                    c => Action::Other(format!("verdict {c:?}")),
                };
            }
            "fib" => {
                if let (Some(dreg), Some(result), Some(flags)) = (u(1), u(2), u(3)) {
                    regs.insert(norm_reg(dreg), Src::Fib { flags, result });
                }
            }
            "masq" => action = Action::Masquerade,
            "nat" => {
                action = if u(1) == Some(1) {
                    Action::Dnat
                } else {
                    Action::Snat
                }
            }
            "redir" => action = Action::Dnat,
            "reject" => action = Action::Reject,
            "queue" => action = Action::Other("queue".into()),
            "match" => {
                let n = attr(d, 1).map(cstr).unwrap_or_default();
                let rev = u(2).unwrap_or(0);
                conds.extend(xt_match(&n, rev, attr(d, 3).unwrap_or(&[])));
            }
            "target" => {
                action = match attr(d, 1).map(cstr).unwrap_or_default().as_str() {
                    "MASQUERADE" => Action::Masquerade,
                    "SNAT" => Action::Snat,
                    "DNAT" | "REDIRECT" => Action::Dnat,
                    "REJECT" => Action::Reject,
                    "NFQUEUE" | "QUEUE" => Action::Other("queue".into()),
                    // LOG, MARK, TCPMSS, CHECKSUM, …: the rule goes on to the next.
                    _ => Action::Continue,
                }
            }
            // Statements that neither test nor decide.
            "counter" | "log" | "objref" | "dynset" | "notrack" | "last" | "quota_set" => {}
            // Tests or loads this decoder does not model: the rule then matches "maybe".
            other => {
                if let Some(dreg) = u(1) {
                    regs.insert(norm_reg(dreg), Src::Unknown(other.to_string()));
                }
                if [
                    "limit",
                    "quota",
                    "range",
                    "connlimit",
                    "socket",
                    "osf",
                    "xfrm",
                ]
                .contains(&other)
                {
                    conds.push(Cond::Other(other.to_string()));
                }
            }
        }
    }
    Rule {
        handle,
        conds,
        action,
    }
}

/// Reads every chain and rule of this network namespace (needs CAP_NET_ADMIN) through the
/// nftables reader, and decodes each rule into the model.
pub fn read_ruleset() -> io::Result<Ruleset> {
    let (chains, rules) = nftables::ruleset()?;
    let mut chains: Vec<Chain> = chains
        .into_iter()
        .map(|c| Chain {
            family: c.family,
            table: c.table,
            name: c.name,
            base: c.base,
            rules: Vec::new(),
        })
        .collect();
    for r in rules {
        let rule = decode_rule_in(&r.family, r.handle, &r.exprs);
        if let Some(c) = chains
            .iter_mut()
            .find(|c| c.family == r.family && c.table == r.table && c.name == r.chain)
        {
            c.rules.push(rule);
        }
    }
    Ok(Ruleset { chains })
}
