use super::decode::*;
use super::*;
use crate::host::netlink::tests::nla;
use crate::host::nftables::{
    NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_EXPR_DATA, NFTA_EXPR_NAME, NFTA_LIST_ELEM,
    NFTA_VERDICT_CHAIN, NFTA_VERDICT_CODE,
};
use crate::model::event::NfHook;
use std::net::{Ipv4Addr, Ipv6Addr};

fn nested(ty: u16, inner: &[u8]) -> Vec<u8> {
    nla(ty | 0x8000, inner)
}
fn expr(name: &str, data: &[u8]) -> Vec<u8> {
    let mut e = nla(NFTA_EXPR_NAME, format!("{name}\0").as_bytes());
    e.extend(nested(NFTA_EXPR_DATA, data));
    nested(NFTA_LIST_ELEM, &e)
}
fn u32a(ty: u16, v: u32) -> Vec<u8> {
    nla(ty, &v.to_be_bytes())
}
fn payload(off: u32, len: u32) -> Vec<u8> {
    [u32a(1, 1), u32a(2, 1), u32a(3, off), u32a(4, len)].concat()
}
fn meta(key: u32) -> Vec<u8> {
    [u32a(1, 1), u32a(2, key)].concat()
}
fn cmp(op: u32, v: &[u8]) -> Vec<u8> {
    [u32a(1, 1), u32a(2, op), nested(3, &nla(NFTA_DATA_VALUE, v))].concat()
}
fn verdict(code: i32, chain: Option<&str>) -> Vec<u8> {
    let mut v = nla(NFTA_VERDICT_CODE, &code.to_be_bytes());
    if let Some(c) = chain {
        v.extend(nla(NFTA_VERDICT_CHAIN, format!("{c}\0").as_bytes()));
    }
    [u32a(1, 0), nested(2, &nested(NFTA_DATA_VERDICT, &v))].concat()
}

/// iptables-nft: `-A FORWARD -i br0 -s 10.77.0.0/24 -j ACCEPT` (3-byte payload load).
fn iptables_accept_subnet() -> Vec<u8> {
    [
        expr("meta", &meta(META_IIFNAME)),
        expr("cmp", &cmp(0, b"br0\0")),
        expr("payload", &payload(12, 3)),
        expr("cmp", &cmp(0, &[10, 77, 0])),
        expr("counter", &[]),
        expr("immediate", &verdict(1, None)),
    ]
    .concat()
}

fn subnet() -> Net {
    Net::new(Ipv4Addr::new(10, 77, 0, 0), 24)
}

fn out_pkt() -> Pkt {
    Pkt {
        src: Place::In(subnet()),
        dst: Place::Internet {
            not_in: Some(subnet()),
        },
        iif: Iface::Is {
            name: "br0".into(),
            index: 3,
        },
        oif: Iface::Is {
            name: "up0".into(),
            index: 4,
        },
        ct: CT_NEW,
        v6: false,
        rp: Tri::Maybe,
    }
}

fn chain(family: &str, table: &str, name: &str, policy: Option<&str>, rules: Vec<Rule>) -> Chain {
    Chain {
        family: family.into(),
        table: table.into(),
        name: name.into(),
        base: policy.map(|p| Base {
            hook: NfHook::Forward,
            priority: 0,
            policy: p.into(),
            kind: "filter".into(),
        }),
        rules,
    }
}

#[test]
fn decodes_an_iptables_nft_subnet_accept() {
    let r = decode_rule(2, &iptables_accept_subnet());
    assert_eq!(
        r.conds,
        vec![
            Cond::Ifname {
                out: false,
                neg: false,
                name: "br0".into(),
                wildcard: false
            },
            Cond::Addr {
                dst: false,
                neg: false,
                net: subnet()
            }
        ]
    );
    assert_eq!(r.action, Action::Accept);
    assert_eq!(
        r.to_string(),
        "`iifname \"br0\" ip saddr 10.77.0.0/24 accept` (handle 2)"
    );
    assert_eq!(r.matches(&out_pkt()), Tri::Yes);
}

#[test]
fn decodes_nft_masked_prefix_ct_state_and_masquerade() {
    // ip saddr 10.77.0.0/24 (4-byte load + bitwise) oifname "up0" masquerade
    let bitwise = [
        u32a(1, 1),
        u32a(2, 1),
        u32a(3, 4),
        nested(4, &nla(NFTA_DATA_VALUE, &[255, 255, 255, 0])),
        nested(5, &nla(NFTA_DATA_VALUE, &[0, 0, 0, 0])),
    ]
    .concat();
    let mut ifname = [0u8; 16];
    ifname[..3].copy_from_slice(b"up0");
    let e = [
        expr("payload", &payload(12, 4)),
        expr("bitwise", &bitwise),
        expr("cmp", &cmp(0, &[10, 77, 0, 0])),
        expr("meta", &meta(META_OIFNAME)),
        expr("cmp", &cmp(0, &ifname)),
        expr("masq", &[]),
    ]
    .concat();
    let r = decode_rule(5, &e);
    assert_eq!(r.action, Action::Masquerade);
    assert_eq!(
        r.to_string(),
        "`ip saddr 10.77.0.0/24 oifname \"up0\" masquerade` (handle 5)"
    );
    let mut p = out_pkt();
    assert_eq!(r.matches(&p), Tri::Yes);
    p.oif = Iface::Unknown;
    assert_eq!(r.matches(&p), Tri::Maybe);
    p.src = Place::In(Net::new(Ipv4Addr::new(10, 78, 0, 0), 24));
    assert_eq!(r.matches(&p), Tri::No);

    // ct state established,related accept
    let ctb = [
        u32a(1, 1),
        u32a(2, 1),
        u32a(3, 4),
        nested(4, &nla(NFTA_DATA_VALUE, &6u32.to_ne_bytes())),
        nested(5, &nla(NFTA_DATA_VALUE, &0u32.to_ne_bytes())),
    ]
    .concat();
    let e = [
        expr("ct", &[u32a(1, 1), u32a(2, CT_STATE)].concat()),
        expr("bitwise", &ctb),
        expr("cmp", &cmp(1, &0u32.to_ne_bytes())),
        expr("immediate", &verdict(1, None)),
    ]
    .concat();
    let r = decode_rule(6, &e);
    assert_eq!(
        r.to_string(),
        "`ct state established,related accept` (handle 6)"
    );
    let mut p = out_pkt();
    assert_eq!(r.matches(&p), Tri::No);
    p.ct = CT_ESTABLISHED;
    assert_eq!(r.matches(&p), Tri::Yes);
}

#[test]
fn decodes_xt_conntrack_wildcard_names_and_targets() {
    let mut info = vec![0u8; 160];
    info[146..148].copy_from_slice(&1u16.to_ne_bytes()); // XT_CONNTRACK_STATE
    info[150..152].copy_from_slice(&6u16.to_ne_bytes()); // RELATED,ESTABLISHED
    let m = [nla(1, b"conntrack\0"), u32a(2, 3), nla(3, &info)].concat();
    let e = [
        expr("meta", &meta(META_OIFNAME)),
        expr("cmp", &cmp(0, b"br")),
        expr("match", &m),
        expr("target", &nla(1, b"REJECT\0")),
    ]
    .concat();
    let r = decode_rule(9, &e);
    assert_eq!(
        r.to_string(),
        "`oifname \"br*\" ct state established,related reject` (handle 9)"
    );
    let mut p = out_pkt();
    p.oif = Iface::Is {
        name: "br0".into(),
        index: 3,
    };
    p.ct = CT_ESTABLISHED;
    assert_eq!(r.matches(&p), Tri::Yes);
    let t = decode_rule(1, &expr("target", &nla(1, b"MASQUERADE\0")));
    assert_eq!(t.action, Action::Masquerade);
}

#[test]
fn state_alias_flag_and_verdict_maps() {
    // iptables-nft's `-m state --state RELATED,ESTABLISHED`: conntrack rev 3 with
    // XT_CONNTRACK_STATE | XT_CONNTRACK_STATE_ALIAS.
    let mut info = vec![0u8; 160];
    info[146..148].copy_from_slice(&0x2001u16.to_ne_bytes());
    info[150..152].copy_from_slice(&6u16.to_ne_bytes());
    let m = [nla(1, b"conntrack\0"), u32a(2, 3), nla(3, &info)].concat();
    let r = decode_rule(8, &expr("match", &m));
    assert_eq!(r.to_string(), "`ct state established,related` (handle 8)");

    // ct state vmap { established : accept, … }: the map decides, both ways possible.
    let e = [
        expr("ct", &[u32a(1, 1), u32a(2, CT_STATE)].concat()),
        expr(
            "lookup",
            &[nla(1, b"__map0\0"), u32a(2, 1), u32a(3, 0)].concat(),
        ),
    ]
    .concat();
    let r = decode_rule(5, &e);
    assert_eq!(r.action, Action::Vmap("__map0".into()));
    assert_eq!(r.to_string(), "`ct state vmap @__map0` (handle 5)");
    let rs = Ruleset {
        chains: vec![chain("inet", "t", "fw", Some("drop"), vec![r])],
    };
    let v = judge(&rs, &rs.chains[0], &out_pkt());
    assert_eq!(v.decided.fate, Fate::Drop);
    let fates: Vec<Fate> = v.doubts.iter().map(|d| d.fate).collect();
    assert_eq!(fates, vec![Fate::Accept, Fate::Drop]);
}

#[test]
fn ports_and_sets_are_maybe() {
    let e = [
        expr("meta", &[u32a(1, 1), u32a(2, META_L4PROTO)].concat()),
        expr("cmp", &cmp(0, &[6])),
        expr(
            "payload",
            &[u32a(1, 1), u32a(2, 2), u32a(3, 2), u32a(4, 2)].concat(),
        ),
        expr("cmp", &cmp(0, &22u16.to_be_bytes())),
        expr("immediate", &verdict(0, None)),
    ]
    .concat();
    let r = decode_rule(3, &e);
    assert_eq!(
        r.to_string(),
        "`meta l4proto tcp th dport 22 drop` (handle 3)"
    );
    assert_eq!(r.matches(&out_pkt()), Tri::Maybe);
}

#[test]
fn internet_destinations_exclude_private_and_the_subnet() {
    let i = Place::Internet {
        not_in: Some(subnet()),
    };
    assert_eq!(i.in_net(&Net::new(Ipv4Addr::UNSPECIFIED, 0)), Tri::Yes);
    assert_eq!(
        i.in_net(&Net::new(Ipv4Addr::new(224, 0, 0, 0), 24)),
        Tri::No
    );
    assert_eq!(
        i.in_net(&Net::new(Ipv4Addr::new(255, 255, 255, 255), 32)),
        Tri::No
    );
    assert_eq!(i.in_net(&subnet()), Tri::No);
    assert_eq!(
        i.in_net(&Net::new(Ipv4Addr::new(8, 8, 8, 0), 24)),
        Tri::Maybe
    );
    assert!(subnet().is_private());
    assert!(!Net::new(Ipv4Addr::new(203, 0, 113, 0), 24).is_private());
}

#[test]
fn judge_follows_jumps_and_reports_doubts() {
    let accept = decode_rule(2, &iptables_accept_subnet());
    let tcp_drop = Rule {
        handle: 7,
        conds: vec![Cond::Other("th dport 22".into())],
        action: Action::Drop,
    };
    let jump = Rule {
        handle: 4,
        conds: vec![],
        action: Action::Jump("LIBVIRT_FWO".into()),
    };
    let rs = Ruleset {
        chains: vec![
            chain("ip", "filter", "FORWARD", Some("drop"), vec![jump]),
            chain("ip", "filter", "LIBVIRT_FWO", None, vec![tcp_drop, accept]),
        ],
    };
    let v = judge(&rs, &rs.chains[0], &out_pkt());
    assert_eq!(v.decided.fate, Fate::Accept);
    assert!(
        v.decided
            .what
            .starts_with("ip filter LIBVIRT_FWO: `iifname"),
        "{v:?}"
    );
    assert_eq!(v.doubts.len(), 1);
    assert_eq!(v.doubts[0].fate, Fate::Drop);
    assert!(v.iptables);

    // The reply direction: nothing accepts it, the policy drops it.
    let mut back = out_pkt();
    back.src = Place::Internet { not_in: None };
    back.dst = Place::In(subnet());
    back.iif = Iface::Is {
        name: "up0".into(),
        index: 4,
    };
    back.ct = CT_ESTABLISHED;
    let v = judge(&rs, &rs.chains[0], &back);
    assert_eq!(v.decided.fate, Fate::Drop);
    assert_eq!(v.decided.what, "ip filter FORWARD: policy drop");
    assert_eq!(v.decided.handle, None);
}

#[test]
fn goto_that_falls_through_returns_from_the_caller() {
    let rs = Ruleset {
        chains: vec![
            chain(
                "inet",
                "t",
                "fw",
                Some("drop"),
                vec![
                    Rule {
                        handle: 1,
                        conds: vec![],
                        action: Action::Goto("empty".into()),
                    },
                    Rule {
                        handle: 2,
                        conds: vec![],
                        action: Action::Accept,
                    },
                ],
            ),
            chain("inet", "t", "empty", None, vec![]),
        ],
    };
    let v = judge(&rs, &rs.chains[0], &out_pkt());
    assert_eq!(v.decided.what, "inet t fw: policy drop");
}

fn v6net(a: &str, l: u8) -> Net {
    Net::new(a.parse::<Ipv6Addr>().unwrap(), l)
}

#[test]
fn decodes_ipv6_addresses_by_the_tables_family_or_the_rules_nfproto() {
    // ip6 table: `ip6 saddr fd00:77::/64 accept` (an 8-byte load at offset 8).
    let mut pfx = [0u8; 8];
    pfx[..4].copy_from_slice(&[0xfd, 0x00, 0x00, 0x77]);
    let e = [
        expr("payload", &payload(8, 8)),
        expr("cmp", &cmp(0, &pfx)),
        expr("immediate", &verdict(1, None)),
    ]
    .concat();
    let r = decode_rule_in("ip6", 4, &e);
    assert_eq!(
        r.conds,
        vec![Cond::Addr {
            dst: false,
            neg: false,
            net: v6net("fd00:77::", 64)
        }]
    );
    assert_eq!(r.to_string(), "`ip6 saddr fd00:77::/64 accept` (handle 4)");
    // The same load in an `ip` table reads the IPv4 header's TTL onwards: not an address.
    assert!(matches!(
        decode_rule_in("ip", 4, &e).conds[0],
        Cond::Other(_)
    ));

    // inet table: `meta nfproto ipv6 ip6 daddr 2001:db8:ffff::1 drop` (16 bytes at 24).
    let a: Ipv6Addr = "2001:db8:ffff::1".parse().unwrap();
    let e = [
        expr("meta", &meta(META_NFPROTO)),
        expr("cmp", &cmp(0, &[10])),
        expr("payload", &payload(24, 16)),
        expr("cmp", &cmp(0, &a.octets())),
        expr("immediate", &verdict(0, None)),
    ]
    .concat();
    let r = decode_rule_in("inet", 5, &e);
    assert_eq!(
        r.to_string(),
        "`meta nfproto ipv6 ip6 daddr 2001:db8:ffff::1 drop` (handle 5)"
    );
    let mut p = out_pkt();
    assert_eq!(r.matches(&p), Tri::No, "an IPv4 packet");
    p.v6 = true;
    p.src = Place::In(v6net("fd00:77::", 64));
    p.dst = Place::In(v6net("2001:db8:ffff::1", 128));
    assert_eq!(r.matches(&p), Tri::Yes);
    p.dst = Place::Internet {
        not_in: Some(v6net("fd00:77::", 64)),
    };
    assert_eq!(r.matches(&p), Tri::Maybe);
    // An IPv4 address test never matches an IPv6 packet.
    let r4 = decode_rule(2, &iptables_accept_subnet());
    assert_eq!(r4.matches(&p), Tri::No);
}

#[test]
fn decodes_reverse_path_tests() {
    // fib saddr . iif oif missing drop
    let fib = [u32a(1, 1), u32a(2, 1), u32a(3, FIB_F_SADDR | FIB_F_IIF)].concat();
    let e = [
        expr("fib", &fib),
        expr("cmp", &cmp(0, &0u32.to_ne_bytes())),
        expr("immediate", &verdict(0, None)),
    ]
    .concat();
    let r = decode_rule_in("inet", 3, &e);
    assert_eq!(
        r.to_string(),
        "`fib saddr . iif oif missing drop` (handle 3)"
    );
    let mut p = out_pkt();
    assert_eq!(r.matches(&p), Tri::Maybe, "the route back is not known");
    p.rp = Tri::No;
    assert_eq!(r.matches(&p), Tri::Yes);
    p.rp = Tri::Yes;
    assert_eq!(r.matches(&p), Tri::No);

    // ip6tables -m rpfilter --invert -j DROP; --loose without --invert.
    let m = [nla(1, b"rpfilter\0"), u32a(2, 0), nla(3, &[8, 0, 0, 0])].concat();
    let r = decode_rule_in("ip6", 2, &expr("match", &m));
    assert_eq!(r.to_string(), "`-m rpfilter --invert` (handle 2)");
    assert_eq!(r.matches(&p), Tri::No);
    let m = [nla(1, b"rpfilter\0"), u32a(2, 0), nla(3, &[1, 0, 0, 0])].concat();
    let r = decode_rule_in("ip6", 2, &expr("match", &m));
    assert_eq!(r.to_string(), "`-m rpfilter --loose` (handle 2)");
    p.rp = Tri::No;
    assert_eq!(
        r.matches(&p),
        Tri::Maybe,
        "loose may pass where strict fails"
    );
}

#[test]
fn ipv6_internet_excludes_ula_link_local_and_multicast() {
    let i = Place::Internet {
        not_in: Some(v6net("fd00:77::", 64)),
    };
    assert_eq!(i.in_net(&v6net("::", 0)), Tri::Yes);
    assert_eq!(i.in_net(&v6net("fd12::", 16)), Tri::No);
    assert_eq!(i.in_net(&v6net("fe80::", 64)), Tri::No);
    assert_eq!(i.in_net(&v6net("ff02::1", 128)), Tri::No);
    assert_eq!(i.in_net(&v6net("2001:db8:ffff::", 48)), Tri::Maybe);
    assert!(v6net("fd00:77::", 64).is_private());
    assert!(!v6net("2001:db8::", 32).is_private());
    assert_eq!(v6net("fd00:77::1", 64).to_string(), "fd00:77::/64");
    assert_eq!(v6net("fd00:77::", 64).size(), 1 << 63);
}
