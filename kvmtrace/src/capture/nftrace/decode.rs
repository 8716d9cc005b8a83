//! Decoding NFT_MSG_TRACE messages (net/netfilter/nf_tables_trace.c, `nft_trace_notify`, Linux
//! 6.x).
//!
//! One message per traced step: a rule that matched (`NFT_TRACETYPE_RULE`, with its handle and
//! verdict: `continue` for a rule without a verdict), the end of a regular chain
//! (`NFT_TRACETYPE_RETURN`), or a base chain's policy (`NFT_TRACETYPE_POLICY`, with the policy).
//! The packet's headers (`NFTA_TRACE_NETWORK_HEADER`, up to 40 bytes; `..._TRANSPORT_HEADER`, up
//! to 20) come only in the first message of each base-chain evaluation (`packet_dumped`), so the
//! caller keeps them per trace id.

use crate::host::nftables::{NFTA_VERDICT_CHAIN, NFTA_VERDICT_CODE};
use crate::host::nl::{attrs, be32, be64, cstr, ne32, NFGENMSG_LEN};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const NFTA_TRACE_TABLE: u16 = 1;
const NFTA_TRACE_CHAIN: u16 = 2;
const NFTA_TRACE_RULE_HANDLE: u16 = 3;
const NFTA_TRACE_TYPE: u16 = 4;
const NFTA_TRACE_VERDICT: u16 = 5;
const NFTA_TRACE_ID: u16 = 6;
const NFTA_TRACE_NETWORK_HEADER: u16 = 8;
const NFTA_TRACE_TRANSPORT_HEADER: u16 = 9;
const NFTA_TRACE_NFPROTO: u16 = 15;
const NFTA_TRACE_POLICY: u16 = 16;
/// Linux 6.16 ("add packets conntrack state to debug trace info"), with the packet dump.
const NFTA_TRACE_CT_ID: u16 = 18;

/// `enum nft_trace_types`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceType {
    Policy,
    Return,
    Rule,
    Other(u32),
}

impl TraceType {
    fn from_num(n: u32) -> Self {
        match n {
            1 => TraceType::Policy,
            2 => TraceType::Return,
            3 => TraceType::Rule,
            n => TraceType::Other(n),
        }
    }
}

/// One decoded trace message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceMsg {
    /// `nfgen_family`: the family of the table (`NFPROTO_INET` = 1, `NFPROTO_IPV4` = 2, …).
    pub family: u8,
    pub table: String,
    pub chain: String,
    pub handle: Option<u64>,
    pub kind: TraceType,
    /// `NFTA_VERDICT_CODE` as the kernel's signed verdict (NF_DROP 0, NF_ACCEPT 1, NFT_JUMP -3…).
    pub verdict: Option<i32>,
    /// The jump or goto target.
    pub target: Option<String>,
    /// The chain policy (`NF_DROP` 0 / `NF_ACCEPT` 1) for policy messages.
    pub policy: Option<u32>,
    /// Opaque, the same for every message about one skb (host order in recent kernels,
    /// big-endian in older ones: only equality matters).
    pub id: u32,
    /// The packet's protocol family (`NFPROTO_IPV4` = 2).
    pub nfproto: Option<u32>,
    pub network: Option<Vec<u8>>,
    pub transport: Option<Vec<u8>>,
    /// The conntrack entry's id (opaque), once conntrack has seen the packet.
    pub ct_id: Option<u32>,
}

/// Decodes the body (after the nlmsghdr) of an NFT_MSG_TRACE message.
pub fn parse_trace(body: &[u8]) -> Option<TraceMsg> {
    let family = *body.first()?;
    let mut m = TraceMsg {
        family,
        table: String::new(),
        chain: String::new(),
        handle: None,
        kind: TraceType::Other(0),
        verdict: None,
        target: None,
        policy: None,
        id: 0,
        nfproto: None,
        network: None,
        transport: None,
        ct_id: None,
    };
    let mut have_id = false;
    for (ty, p) in attrs(body.get(NFGENMSG_LEN..)?) {
        match ty {
            NFTA_TRACE_TABLE => m.table = cstr(p),
            NFTA_TRACE_CHAIN => m.chain = cstr(p),
            NFTA_TRACE_RULE_HANDLE => m.handle = be64(p),
            NFTA_TRACE_TYPE => m.kind = TraceType::from_num(be32(p)?),
            NFTA_TRACE_ID => {
                m.id = ne32(p)?;
                have_id = true;
            }
            NFTA_TRACE_VERDICT => {
                for (vty, vp) in attrs(p) {
                    match vty {
                        NFTA_VERDICT_CODE => m.verdict = be32(vp).map(|v| v as i32),
                        NFTA_VERDICT_CHAIN => m.target = Some(cstr(vp)),
                        _ => {}
                    }
                }
            }
            NFTA_TRACE_POLICY => {
                // Older kernels put the policy in host order; a policy is 0 or 1.
                let v = be32(p)?;
                m.policy = Some(if v > 0xff { v.swap_bytes() } else { v });
            }
            NFTA_TRACE_NFPROTO => m.nfproto = be32(p),
            NFTA_TRACE_NETWORK_HEADER => m.network = Some(p.to_vec()),
            NFTA_TRACE_TRANSPORT_HEADER => m.transport = Some(p.to_vec()),
            NFTA_TRACE_CT_ID => m.ct_id = be32(p),
            _ => {}
        }
    }
    have_id.then_some(m)
}

/// The IP facts of a traced packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpHdr {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The transport protocol; for IPv6 the fixed header's next header (a packet with
    /// extension headers has theirs, and then no ports: the kernel's 40-byte dump of the
    /// network header holds only the fixed header).
    pub proto: u8,
    /// TCP, UDP, SCTP (the first two 16-bit words of the transport header).
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

/// Protocols whose first two transport-header words are ports (what `th sport/dport` reads).
pub fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 132 | 33 | 136)
}

/// Parses the network header (and the transport header, for ports) of an IPv4 or IPv6 packet.
pub fn parse_ip(nh: &[u8], th: Option<&[u8]>) -> Option<IpHdr> {
    let (src, dst, proto): (IpAddr, IpAddr, u8) = match nh.first()? >> 4 {
        4 if nh.len() >= 20 => (
            Ipv4Addr::new(nh[12], nh[13], nh[14], nh[15]).into(),
            Ipv4Addr::new(nh[16], nh[17], nh[18], nh[19]).into(),
            nh[9],
        ),
        6 if nh.len() >= 40 => {
            let addr = |o: usize| {
                let b: [u8; 16] = nh[o..o + 16].try_into().expect("16 bytes");
                IpAddr::from(Ipv6Addr::from(b))
            };
            (addr(8), addr(24), nh[6])
        }
        _ => return None,
    };
    let ports = th.filter(|t| t.len() >= 4 && has_ports(proto)).map(|t| {
        (
            u16::from_be_bytes([t[0], t[1]]),
            u16::from_be_bytes([t[2], t[3]]),
        )
    });
    Some(IpHdr {
        src,
        dst,
        proto,
        sport: ports.map(|p| p.0),
        dport: ports.map(|p| p.1),
    })
}

/// A verdict as nft prints it (`enum nft_verdicts`, include/uapi/linux/netfilter/nf_tables.h, and
/// the NF_* codes of include/uapi/linux/netfilter.h, which carry extra bits above
/// NF_VERDICT_MASK, e.g. a queue number or NF_DROP_ERR's errno).
pub fn verdict_name(code: i32, target: Option<&str>) -> String {
    let with_target = |v: &str| match target {
        Some(t) => format!("{v} {t}"),
        None => v.to_string(),
    };
    match code {
        -1 => "continue".into(),
        -2 => "break".into(),
        -3 => with_target("jump"),
        -4 => with_target("goto"),
        -5 => "return".into(),
        c if c < 0 => format!("verdict {c}"),
        c => match c & 0xff {
            0 => "drop".into(),
            1 => "accept".into(),
            2 => "stolen".into(),
            3 => "queue".into(),
            4 => "repeat".into(),
            5 => "stop".into(),
            v => format!("verdict {v}"),
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::host::nl::Attrs;

    /// An IPv6 header (40 bytes) from `src` to `dst` with next header `proto`.
    pub(crate) fn ipv6(src: &str, dst: &str, proto: u8) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0, 0, 20, proto, 64];
        h.extend_from_slice(&src.parse::<Ipv6Addr>().unwrap().octets());
        h.extend_from_slice(&dst.parse::<Ipv6Addr>().unwrap().octets());
        h
    }

    /// An IPv4 header (20 bytes) from `src` to `dst` with protocol `proto`.
    pub(crate) fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 60, 0, 1, 0x40, 0, 64, proto, 0, 0];
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h
    }

    /// What the kernel sends for a rule's verdict in a base chain, the packet dumped.
    pub(crate) fn rule_msg(
        table: &str,
        chain: &str,
        handle: u64,
        verdict: i32,
        id: u32,
        nh: Option<&[u8]>,
        th: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut a = Attrs::new()
            .be32(NFTA_TRACE_NFPROTO, 2)
            .be32(NFTA_TRACE_TYPE, 3)
            .bytes(NFTA_TRACE_ID, &id.to_ne_bytes())
            .str(NFTA_TRACE_CHAIN, chain)
            .str(NFTA_TRACE_TABLE, table)
            .bytes(NFTA_TRACE_RULE_HANDLE, &handle.to_be_bytes())
            .nested(
                NFTA_TRACE_VERDICT,
                Attrs::new().be32(NFTA_VERDICT_CODE, verdict as u32),
            );
        if let Some(nh) = nh {
            a = a.bytes(NFTA_TRACE_NETWORK_HEADER, nh);
        }
        if let Some(th) = th {
            a = a.bytes(NFTA_TRACE_TRANSPORT_HEADER, th);
        }
        let mut body = vec![1u8, 0, 0, 0]; // inet
        body.extend_from_slice(a.as_bytes());
        body
    }

    /// `body` with a conntrack id, as Linux 6.16+ adds to a packet dump.
    pub(crate) fn with_ct(mut body: Vec<u8>, ct: u32) -> Vec<u8> {
        body.extend_from_slice(Attrs::new().be32(NFTA_TRACE_CT_ID, ct).as_bytes());
        body
    }

    /// A policy message (no packet dump).
    pub(crate) fn policy_msg(table: &str, chain: &str, policy: u32, id: u32) -> Vec<u8> {
        let a = Attrs::new()
            .be32(NFTA_TRACE_NFPROTO, 2)
            .be32(NFTA_TRACE_TYPE, 1)
            .bytes(NFTA_TRACE_ID, &id.to_ne_bytes())
            .str(NFTA_TRACE_CHAIN, chain)
            .str(NFTA_TRACE_TABLE, table)
            .be32(NFTA_TRACE_POLICY, policy);
        let mut body = vec![1u8, 0, 0, 0];
        body.extend_from_slice(a.as_bytes());
        body
    }

    #[test]
    fn decodes_a_rule_verdict_with_the_packet() {
        let nh = ipv4([10, 77, 0, 2], [203, 0, 113, 1], 6);
        let th = [0x9c, 0x40, 0x1f, 0x90, 0, 0, 0, 0];
        let m = parse_trace(&rule_msg(
            "labrej",
            "fwd",
            6,
            0,
            0xabcd,
            Some(&nh),
            Some(&th),
        ))
        .expect("message");
        assert_eq!(m.family, 1);
        assert_eq!((m.table.as_str(), m.chain.as_str()), ("labrej", "fwd"));
        assert_eq!(m.handle, Some(6));
        assert_eq!(m.kind, TraceType::Rule);
        assert_eq!(m.verdict, Some(0));
        assert_eq!(m.id, 0xabcd);
        assert_eq!(m.nfproto, Some(2));
        assert_eq!(m.ct_id, None);
        let h = parse_ip(m.network.as_deref().unwrap(), m.transport.as_deref()).unwrap();
        assert_eq!(h.src, Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(h.dst, Ipv4Addr::new(203, 0, 113, 1));
        assert_eq!(h.proto, 6);
        assert_eq!((h.sport, h.dport), (Some(40000), Some(8080)));
    }

    #[test]
    fn decodes_the_conntrack_id() {
        let nh = ipv4([10, 77, 0, 2], [203, 0, 113, 1], 1);
        let body = with_ct(rule_msg("t", "c", 1, 1, 1, Some(&nh), None), 0x1234);
        assert_eq!(parse_trace(&body).unwrap().ct_id, Some(0x1234));
    }

    #[test]
    fn decodes_a_policy_message_without_packet() {
        let m = parse_trace(&policy_msg("labfilter", "forward", 0, 7)).expect("message");
        assert_eq!(m.kind, TraceType::Policy);
        assert_eq!(m.policy, Some(0));
        assert_eq!(m.handle, None);
        assert_eq!(m.network, None);
    }

    #[test]
    fn a_host_order_policy_from_an_old_kernel_is_understood() {
        let a = Attrs::new()
            .be32(NFTA_TRACE_TYPE, 1)
            .bytes(NFTA_TRACE_ID, &1u32.to_ne_bytes())
            .bytes(NFTA_TRACE_POLICY, &1u32.to_le_bytes());
        let mut body = vec![2u8, 0, 0, 0];
        body.extend_from_slice(a.as_bytes());
        assert_eq!(parse_trace(&body).unwrap().policy, Some(1));
    }

    #[test]
    fn a_jump_carries_its_target() {
        let a = Attrs::new()
            .be32(NFTA_TRACE_TYPE, 3)
            .bytes(NFTA_TRACE_ID, &1u32.to_ne_bytes())
            .nested(
                NFTA_TRACE_VERDICT,
                Attrs::new()
                    .be32(NFTA_VERDICT_CODE, (-3i32) as u32)
                    .str(NFTA_VERDICT_CHAIN, "sub"),
            );
        let mut body = vec![1u8, 0, 0, 0];
        body.extend_from_slice(a.as_bytes());
        let m = parse_trace(&body).unwrap();
        assert_eq!(
            verdict_name(m.verdict.unwrap(), m.target.as_deref()),
            "jump sub"
        );
    }

    #[test]
    fn a_message_without_id_or_body_is_rejected() {
        assert_eq!(parse_trace(&[]), None);
        let a = Attrs::new().be32(NFTA_TRACE_TYPE, 3);
        let mut body = vec![1u8, 0, 0, 0];
        body.extend_from_slice(a.as_bytes());
        assert_eq!(parse_trace(&body), None);
    }

    #[test]
    fn verdict_names_follow_nft() {
        assert_eq!(verdict_name(0, None), "drop");
        assert_eq!(verdict_name(1, None), "accept");
        assert_eq!(verdict_name(-1, None), "continue");
        assert_eq!(verdict_name(-5, None), "return");
        assert_eq!(verdict_name(-4, Some("x")), "goto x");
        // NF_DROP_ERR(-EHOSTUNREACH) and NF_QUEUE_NR(3).
        assert_eq!(verdict_name(113 << 16, None), "drop");
        assert_eq!(verdict_name((3 << 16) | 3, None), "queue");
    }

    #[test]
    fn ipv6_headers_are_parsed_and_short_or_other_ones_are_not() {
        let h = parse_ip(
            &ipv6("fd00:77::2", "2001:db8::1", 6),
            Some(&[0x9c, 0x40, 0x1f, 0x90]),
        )
        .unwrap();
        assert_eq!(h.src, "fd00:77::2".parse::<IpAddr>().unwrap());
        assert_eq!(h.dst, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!((h.proto, h.sport, h.dport), (6, Some(40000), Some(8080)));
        let echo = parse_ip(
            &ipv6("fd00:77::2", "2001:db8::1", 58),
            Some(&[128, 0, 0, 0]),
        );
        assert_eq!(echo.map(|h| (h.proto, h.sport)), Some((58, None)));
        assert_eq!(parse_ip(&ipv6("::1", "::2", 6)[..39], None), None);
        let mut other = ipv4([1, 1, 1, 1], [2, 2, 2, 2], 6);
        other[0] = 0x55;
        assert_eq!(parse_ip(&other, None), None);
        assert_eq!(parse_ip(&[0x45; 12], None), None);
        assert_eq!(parse_ip(&[], None), None);
        let icmp = parse_ip(&ipv4([1, 1, 1, 1], [2, 2, 2, 2], 1), Some(&[8, 0, 0, 0])).unwrap();
        assert_eq!(icmp.sport, None, "ICMP has no ports");
    }
}
