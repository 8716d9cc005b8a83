//! The one nftables reader: nf_tables message numbers and attribute layouts, tables, chains and
//! rules as the kernel lists them (NFT_MSG_GET* dumps over nfnetlink), read-only.
//!
//! Host facts (the base chains a verdict cites), `doctor`'s firewall rules and `follow
//! --explain-rules` (left-over tables, base-chain hooks, and the text of the rule that decided:
//! [`ruletext`], as `nft` prints it) read nftables here; what each makes of a rule's expressions
//! is its own (`doctor/rules/decode.rs` judges them).
//!
//! Constants are from include/uapi/linux/netfilter/nf_tables.h (Linux 6.x); the numbering of
//! `enum nf_tables_msg_types` counts from NFT_MSG_NEWTABLE = 0, so NFT_MSG_TRACE is 17.

pub mod ruletext;

use super::nl::{attr, attrs, be32, be64, cstr, Socket, NETLINK_NETFILTER, NFGENMSG_LEN};
pub use super::nl::{NFNLGRP_NFTRACE, NFNL_SUBSYS_NFTABLES};
use crate::model::event::NfHook;
use crate::model::NfChain;
use std::io;
use std::time::Duration;

pub const NFT_MSG_NEWTABLE: u16 = 0;
pub const NFT_MSG_GETTABLE: u16 = 1;
pub const NFT_MSG_DELTABLE: u16 = 2;
pub const NFT_MSG_NEWCHAIN: u16 = 3;
pub const NFT_MSG_GETCHAIN: u16 = 4;
pub const NFT_MSG_NEWRULE: u16 = 6;
pub const NFT_MSG_GETRULE: u16 = 7;
pub const NFT_MSG_TRACE: u16 = 17;

pub const NFTA_TABLE_NAME: u16 = 1;
pub const NFTA_TABLE_FLAGS: u16 = 2;
pub const NFTA_TABLE_USERDATA: u16 = 6;
pub const NFTA_TABLE_OWNER: u16 = 7;
/// NFT_TABLE_F_OWNER (Linux 5.12): the table belongs to the netlink socket that created it and
/// is removed when that socket is closed, however the process ends.
pub const NFT_TABLE_F_OWNER: u32 = 2;

pub const NFTA_CHAIN_TABLE: u16 = 1;
pub const NFTA_CHAIN_NAME: u16 = 3;
pub const NFTA_CHAIN_HOOK: u16 = 4;
pub const NFTA_CHAIN_POLICY: u16 = 5;
pub const NFTA_CHAIN_TYPE: u16 = 7;
pub const NFTA_HOOK_HOOKNUM: u16 = 1;
pub const NFTA_HOOK_PRIORITY: u16 = 2;

pub const NFTA_RULE_TABLE: u16 = 1;
pub const NFTA_RULE_CHAIN: u16 = 2;
pub const NFTA_RULE_HANDLE: u16 = 3;
pub const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub const NFTA_LIST_ELEM: u16 = 1;
pub const NFTA_EXPR_NAME: u16 = 1;
pub const NFTA_EXPR_DATA: u16 = 2;
pub const NFTA_DATA_VALUE: u16 = 1;
pub const NFTA_DATA_VERDICT: u16 = 2;
pub const NFTA_VERDICT_CODE: u16 = 1;
pub const NFTA_VERDICT_CHAIN: u16 = 2;

// The attributes of the expressions both kvmtrace's own trace rules and doctor's decoding use.
pub const NFTA_META_DREG: u16 = 1;
pub const NFTA_META_KEY: u16 = 2;
pub const NFTA_META_SREG: u16 = 3;
pub const NFTA_CMP_SREG: u16 = 1;
pub const NFTA_CMP_OP: u16 = 2;
pub const NFTA_CMP_DATA: u16 = 3;
pub const NFT_CMP_EQ: u32 = 0;
pub const NFTA_PAYLOAD_DREG: u16 = 1;
pub const NFTA_PAYLOAD_BASE: u16 = 2;
pub const NFTA_PAYLOAD_OFFSET: u16 = 3;
pub const NFTA_PAYLOAD_LEN: u16 = 4;
/// `enum nft_payload_bases`.
pub const NFT_PAYLOAD_LL_HEADER: u32 = 0;
pub const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
pub const NFTA_BITWISE_SREG: u16 = 1;
pub const NFTA_BITWISE_DREG: u16 = 2;
pub const NFTA_BITWISE_LEN: u16 = 3;
pub const NFTA_BITWISE_MASK: u16 = 4;
pub const NFTA_BITWISE_XOR: u16 = 5;
pub const NFTA_BITWISE_OP: u16 = 6;
pub const NFTA_IMMEDIATE_DREG: u16 = 1;
pub const NFTA_IMMEDIATE_DATA: u16 = 2;
/// `enum nft_meta_keys`.
pub const NFT_META_PROTOCOL: u32 = 1;
pub const NFT_META_IIF: u32 = 4;
pub const NFT_META_OIF: u32 = 5;
pub const NFT_META_IIFNAME: u32 = 6;
pub const NFT_META_OIFNAME: u32 = 7;
pub const NFT_META_NFTRACE: u32 = 12;
pub const NFT_META_NFPROTO: u32 = 15;
pub const NFT_META_L4PROTO: u32 = 16;

/// The full nlmsg type of an nf_tables message.
pub fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// `nfgen_family` names, as nft spells them.
pub fn family_name(f: u8) -> &'static str {
    match f {
        0 => "unspec",
        1 => "inet",
        2 => "ip",
        3 => "arp",
        5 => "netdev",
        7 => "bridge",
        10 => "ip6",
        _ => "?",
    }
}

/// A table, from an NFT_MSG_GETTABLE dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub family: String,
    pub name: String,
    /// The owning netlink port id: the table lives exactly as long as that socket.
    pub owner: Option<u32>,
}

/// An nf_tables message body: the family's name (from `nfgenmsg`) and the attributes after it.
fn split(body: &[u8]) -> Option<(String, &[u8])> {
    Some((
        family_name(*body.first()?).to_string(),
        body.get(NFGENMSG_LEN..)?,
    ))
}

/// A string attribute.
fn text(a: &[u8], ty: u16) -> Option<String> {
    attr(a, ty).map(cstr)
}

/// A chain's or rule's place: (family, table, its own or its chain's name, attributes); None
/// without table or name.
fn placed(body: &[u8], table: u16, name: u16) -> Option<(String, String, String, &[u8])> {
    let (family, a) = split(body)?;
    Some((family, text(a, table)?, text(a, name)?, a))
}

/// Parses one NFT_MSG_NEWTABLE body (nfgenmsg + attributes).
pub fn parse_table(body: &[u8]) -> Option<Table> {
    let (family, a) = split(body)?;
    let (mut name, mut owner, mut flags) = (None, None, 0);
    for (ty, p) in attrs(a) {
        match ty {
            NFTA_TABLE_NAME => name = Some(cstr(p)),
            NFTA_TABLE_FLAGS => flags = be32(p)?,
            NFTA_TABLE_OWNER => owner = be32(p),
            _ => {}
        }
    }
    Some(Table {
        family,
        name: name?,
        owner: owner.filter(|_| flags & NFT_TABLE_F_OWNER != 0),
    })
}

/// What makes a chain a base chain: its hook, priority, policy and type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    pub hook: NfHook,
    pub priority: i32,
    /// `accept` or `drop`.
    pub policy: String,
    /// `filter`, `nat`, `route`.
    pub kind: String,
}

/// A chain, from an NFT_MSG_GETCHAIN dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// `ip`, `inet`, `bridge`, …
    pub family: String,
    pub table: String,
    pub name: String,
    /// None: a regular chain (or a hook number outside the five of `NfHook`).
    pub base: Option<Hook>,
}

impl Chain {
    /// The base chain as host facts carry it.
    pub fn base_chain(&self) -> Option<NfChain> {
        let b = self.base.as_ref()?;
        Some(NfChain {
            family: self.family.clone(),
            table: self.table.clone(),
            chain: self.name.clone(),
            hook: b.hook,
            priority: b.priority,
            policy: b.policy.clone(),
        })
    }
}

/// The hook of a chain's attributes; None for a regular chain or an attribute too short.
fn hook_of(a: &[u8]) -> Option<Hook> {
    let (mut hook, mut priority, mut policy) = (None, 0i32, "accept".to_string());
    for (ty, p) in attrs(a) {
        match ty {
            NFTA_CHAIN_POLICY => {
                policy = if be32(p)? == 0 { "drop" } else { "accept" }.into();
            }
            NFTA_CHAIN_HOOK => {
                for (hty, hp) in attrs(p) {
                    match hty {
                        NFTA_HOOK_HOOKNUM => hook = NfHook::from_num(be32(hp)? as u8),
                        NFTA_HOOK_PRIORITY => priority = be32(hp)? as i32,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Hook {
        hook: hook?,
        priority,
        policy,
        kind: text(a, NFTA_CHAIN_TYPE).unwrap_or_else(|| "filter".into()),
    })
}

/// Parses one NFT_MSG_NEWCHAIN body (nfgenmsg + attributes), base or regular chain.
pub fn parse_chain(body: &[u8]) -> Option<Chain> {
    let (family, table, name, a) = placed(body, NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME)?;
    let base = hook_of(a);
    Some(Chain {
        family,
        table,
        name,
        base,
    })
}

/// A rule, from an NFT_MSG_GETRULE dump: where it is, its handle and its expression list
/// (`NFTA_RULE_EXPRESSIONS`, walked with [`exprs`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub family: String,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub exprs: Vec<u8>,
}

/// Parses one NFT_MSG_NEWRULE body (nfgenmsg + attributes).
pub fn parse_rule(body: &[u8]) -> Option<Rule> {
    let (family, table, chain, a) = placed(body, NFTA_RULE_TABLE, NFTA_RULE_CHAIN)?;
    Some(Rule {
        family,
        table,
        chain,
        handle: attr(a, NFTA_RULE_HANDLE).and_then(be64).unwrap_or(0),
        exprs: attr(a, NFTA_RULE_EXPRESSIONS).unwrap_or(&[]).to_vec(),
    })
}

/// The expressions of a rule's list, in order: (name, `NFTA_EXPR_DATA` attributes).
pub fn exprs(list: &[u8]) -> impl Iterator<Item = (String, &[u8])> {
    attrs(list)
        .filter(|(ty, _)| *ty == NFTA_LIST_ELEM)
        .map(|(_, elem)| {
            (
                attr(elem, NFTA_EXPR_NAME).map(cstr).unwrap_or_default(),
                attr(elem, NFTA_EXPR_DATA).unwrap_or(&[]),
            )
        })
}

/// A NETLINK_NETFILTER socket, in the network namespace of the calling thread.
pub fn open() -> io::Result<Socket> {
    Socket::open(NETLINK_NETFILTER)
}

/// The bodies of every `new` answer to a `get` dump (every family).
fn dump(sock: &mut Socket, get: u16, new: u16) -> io::Result<Vec<Vec<u8>>> {
    // nfgenmsg: AF_UNSPEC (every family), version 0, res_id 0.
    Ok(sock
        .dump(nft_type(get), &[0, 0, 0, 0])?
        .into_iter()
        .filter(|(t, _)| t & 0xff == new)
        .map(|(_, b)| b)
        .collect())
}

/// Every table, read on `sock`.
pub fn tables_on(sock: &mut Socket) -> io::Result<Vec<Table>> {
    Ok(dump(sock, NFT_MSG_GETTABLE, NFT_MSG_NEWTABLE)?
        .iter()
        .filter_map(|b| parse_table(b))
        .collect())
}

/// Every chain, read on `sock`.
pub fn chains_on(sock: &mut Socket) -> io::Result<Vec<Chain>> {
    Ok(dump(sock, NFT_MSG_GETCHAIN, NFT_MSG_NEWCHAIN)?
        .iter()
        .filter_map(|b| parse_chain(b))
        .collect())
}

/// A socket of its own for one reading, its answers bounded by 5 s.
fn reading() -> io::Result<Socket> {
    let s = open()?;
    s.set_recv_timeout(Duration::from_secs(5))?;
    Ok(s)
}

/// The base chains of this network namespace (needs CAP_NET_ADMIN).
pub fn base_chains() -> io::Result<Vec<NfChain>> {
    Ok(chains_on(&mut reading()?)?
        .iter()
        .filter_map(Chain::base_chain)
        .collect())
}

/// Every chain and every rule of this network namespace (needs CAP_NET_ADMIN).
pub fn ruleset() -> io::Result<(Vec<Chain>, Vec<Rule>)> {
    let mut s = reading()?;
    let chains = chains_on(&mut s)?;
    let rules = dump(&mut s, NFT_MSG_GETRULE, NFT_MSG_NEWRULE)?
        .iter()
        .filter_map(|b| parse_rule(b))
        .collect();
    Ok((chains, rules))
}

#[cfg(test)]
mod tests {
    use super::super::nl::Attrs;
    use super::*;

    fn body(family: u8, a: Attrs) -> Vec<u8> {
        let mut b = vec![family, 0, 0, 0];
        b.extend_from_slice(a.as_bytes());
        b
    }

    #[test]
    fn parses_a_forward_chain_with_policy_drop() {
        let hook = Attrs::new()
            .be32(NFTA_HOOK_HOOKNUM, 2)
            .be32(NFTA_HOOK_PRIORITY, 0);
        let b = body(
            1, // inet
            Attrs::new()
                .str(NFTA_CHAIN_TABLE, "filter")
                .str(NFTA_CHAIN_NAME, "forward")
                .nested(NFTA_CHAIN_HOOK, hook)
                .be32(NFTA_CHAIN_POLICY, 0),
        );
        let c = parse_chain(&b).expect("chain");
        let nf = c.base_chain().expect("a base chain");
        assert_eq!(
            (nf.family.as_str(), nf.table.as_str(), nf.chain.as_str()),
            ("inet", "filter", "forward")
        );
        assert_eq!((nf.hook, nf.priority), (NfHook::Forward, 0));
        assert_eq!(nf.policy, "drop");
        assert_eq!(
            c.base.as_ref().expect("hook").kind,
            "filter",
            "no type: filter"
        );
    }

    #[test]
    fn a_regular_chain_without_hook_is_not_a_base_chain() {
        let b = body(
            2,
            Attrs::new()
                .str(NFTA_CHAIN_TABLE, "t")
                .str(NFTA_CHAIN_NAME, "c"),
        );
        let c = parse_chain(&b).expect("chain");
        assert_eq!((c.family.as_str(), &c.base), ("ip", &None));
        assert_eq!(c.base_chain(), None);
    }

    #[test]
    fn a_nat_chain_keeps_its_type_and_negative_priority() {
        let hook = Attrs::new()
            .be32(NFTA_HOOK_HOOKNUM, 0)
            .be32(NFTA_HOOK_PRIORITY, (-100i32) as u32);
        let b = body(
            10,
            Attrs::new()
                .str(NFTA_CHAIN_TABLE, "nat")
                .str(NFTA_CHAIN_NAME, "PREROUTING")
                .nested(NFTA_CHAIN_HOOK, hook)
                .be32(NFTA_CHAIN_POLICY, 1)
                .str(NFTA_CHAIN_TYPE, "nat"),
        );
        let h = parse_chain(&b).and_then(|c| c.base).expect("base chain");
        assert_eq!(
            h,
            Hook {
                hook: NfHook::Prerouting,
                priority: -100,
                policy: "accept".into(),
                kind: "nat".into()
            }
        );
    }

    #[test]
    fn a_rule_carries_its_place_handle_and_expressions() {
        let e = Attrs::new()
            .nested(NFTA_LIST_ELEM, Attrs::new().str(NFTA_EXPR_NAME, "counter"))
            .nested(
                NFTA_LIST_ELEM,
                Attrs::new()
                    .str(NFTA_EXPR_NAME, "meta")
                    .nested(NFTA_EXPR_DATA, Attrs::new().be32(2, 16)),
            );
        let b = body(
            7,
            Attrs::new()
                .str(NFTA_RULE_TABLE, "br")
                .str(NFTA_RULE_CHAIN, "fwd")
                .bytes(NFTA_RULE_HANDLE, &42u64.to_be_bytes())
                .nested(NFTA_RULE_EXPRESSIONS, e),
        );
        let r = parse_rule(&b).expect("rule");
        assert_eq!(
            (
                r.family.as_str(),
                r.table.as_str(),
                r.chain.as_str(),
                r.handle
            ),
            ("bridge", "br", "fwd", 42)
        );
        let got: Vec<(String, Vec<u8>)> = exprs(&r.exprs).map(|(n, d)| (n, d.to_vec())).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], ("counter".to_string(), Vec::new()));
        assert_eq!(got[1].0, "meta");
        assert_eq!(attr(&got[1].1, 2).and_then(be32), Some(16));
        // Without table or chain it is no rule.
        assert_eq!(
            parse_rule(&body(2, Attrs::new().str(NFTA_RULE_TABLE, "t"))),
            None
        );
    }

    /// The reader against the kernel: a ruleset loaded with `nft` into a network namespace of
    /// this test's own (a thread that unshared its namespace; `nft` inherits it), read back.
    #[test]
    fn reads_tables_chains_and_rules_of_a_real_ruleset() {
        let got = std::thread::spawn(|| {
            // SAFETY: unshare(2) on this thread only; it ends with the thread.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
            let mut nft = std::process::Command::new("nft")
                .args(["-f", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("nft");
            use std::io::Write as _;
            nft.stdin
                .take()
                .expect("stdin")
                .write_all(
                    b"table inet nftreader_t {\n\
                      chain fw_guests { type filter hook forward priority 10; policy drop;\n\
                        ip saddr 10.61.0.0/24 counter jump vm\n }\n\
                      chain vm { accept\n }\n\
                      chain nat6 { type nat hook postrouting priority 100; }\n}\n",
                )
                .expect("ruleset");
            assert!(nft.wait().expect("nft").success(), "nft -f");
            let tables = tables_on(&mut open().expect("socket")).expect("tables");
            (
                tables,
                base_chains().expect("base chains"),
                ruleset().expect("ruleset"),
            )
        })
        .join()
        .expect("reader thread");
        let (tables, bases, (chains, rules)) = got;
        assert_eq!(
            tables,
            [Table {
                family: "inet".into(),
                name: "nftreader_t".into(),
                owner: None
            }]
        );
        let mut names: Vec<(&str, Option<&Hook>)> = chains
            .iter()
            .map(|c| (c.name.as_str(), c.base.as_ref()))
            .collect();
        names.sort_by_key(|n| n.0);
        assert_eq!(
            names,
            [
                (
                    "fw_guests",
                    Some(&Hook {
                        hook: NfHook::Forward,
                        priority: 10,
                        policy: "drop".into(),
                        kind: "filter".into()
                    })
                ),
                (
                    "nat6",
                    Some(&Hook {
                        hook: NfHook::Postrouting,
                        priority: 100,
                        policy: "accept".into(),
                        kind: "nat".into()
                    })
                ),
                ("vm", None),
            ]
        );
        assert_eq!(bases.len(), 2, "the two base chains: {bases:?}");
        assert!(bases
            .iter()
            .any(|b| b.chain == "fw_guests" && b.table == "nftreader_t" && b.policy == "drop"));
        let placed: Vec<(&str, Vec<String>)> = rules
            .iter()
            .map(|r| (r.chain.as_str(), exprs(&r.exprs).map(|(n, _)| n).collect()))
            .collect();
        assert_eq!(
            placed,
            [
                (
                    "fw_guests",
                    [
                        "meta",
                        "cmp",
                        "payload", // a /24 is a 3-byte load: no bitwise
                        "cmp",
                        "counter",
                        "immediate"
                    ]
                    .map(String::from)
                    .to_vec()
                ),
                ("vm", vec!["immediate".to_string()]),
            ]
        );
        assert!(rules.iter().all(|r| r.family == "inet" && r.handle > 0));
    }

    #[test]
    fn a_dumped_table_reports_its_owner_only_with_the_owner_flag() {
        let b = |flags: u32| {
            body(
                1,
                Attrs::new()
                    .str(NFTA_TABLE_NAME, "kvmtrace_nftrace_1_0")
                    .be32(NFTA_TABLE_FLAGS, flags)
                    .be32(NFTA_TABLE_OWNER, 77),
            )
        };
        let t = parse_table(&b(NFT_TABLE_F_OWNER)).unwrap();
        assert_eq!(
            (t.family.as_str(), t.name.as_str(), t.owner),
            ("inet", "kvmtrace_nftrace_1_0", Some(77))
        );
        assert_eq!(parse_table(&b(0)).unwrap().owner, None);
    }
}
