use super::*;

#[test]
fn sysctl_names_keep_dotted_interfaces_as_paths() {
    assert_eq!(
        rp_filter_loose("br0"),
        "sysctl -w net.ipv4.conf.br0.rp_filter=2"
    );
    assert_eq!(
        rp_filter_loose("eth0.100"),
        "sysctl -w net/ipv4/conf/eth0.100/rp_filter=2"
    );
}

#[test]
fn forward_rules_use_iptables_in_its_own_chains_and_nft_elsewhere() {
    let ipt = ChainRef {
        family: "ip",
        table: "filter",
        chain: "FORWARD",
    };
    let nft = ChainRef {
        family: "inet",
        table: "labfilter",
        chain: "forward",
    };
    let ip6t = ChainRef {
        family: "ip6",
        ..ipt
    };
    assert!(ipt.is_xtables() && ip6t.is_xtables() && !nft.is_xtables());
    assert_eq!(
        forward_accept_out(ipt, "br0", "10.77.0.0/24", false),
        "iptables -I FORWARD -i br0 -s 10.77.0.0/24 -j ACCEPT"
    );
    assert_eq!(
        forward_accept_back(ip6t, "br0", "fd00:77::/64", true),
        "ip6tables -I FORWARD -o br0 -d fd00:77::/64 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    );
    assert_eq!(
        forward_accept_out(nft, "br0", "10.77.0.0/24", false),
        "nft 'insert rule inet labfilter forward iifname \"br0\" ip saddr 10.77.0.0/24 accept'"
    );
    assert_eq!(
        forward_accept_back(nft, "br0", "fd00:77::/64", true),
        "nft 'insert rule inet labfilter forward oifname \"br0\" ip6 daddr fd00:77::/64 ct state established,related accept'"
    );
}

#[test]
fn overlay_accepts_name_the_remote_vtep_in_its_direction() {
    let nft = ChainRef {
        family: "ip",
        table: "vxfw",
        chain: "c",
    };
    assert_eq!(
        overlay_accept(nft, 4789, "198.51.100.1", true),
        "nft 'insert rule ip vxfw c ip daddr 198.51.100.1 udp dport 4789 accept'"
    );
    let ipt = ChainRef {
        family: "ip",
        table: "filter",
        chain: "INPUT",
    };
    assert_eq!(
        overlay_accept(ipt, 4789, "198.51.100.1", false),
        "iptables -I INPUT -p udp --dport 4789 -s 198.51.100.1 -j ACCEPT"
    );
}

#[test]
fn masquerade_goes_into_an_existing_chain_iptables_or_a_new_table() {
    let ch = ChainRef {
        family: "ip",
        table: "nat",
        chain: "post",
    };
    assert_eq!(
        masquerade(NatTarget::Chain(ch), "10.77.0.0/24", false, Some("up0")),
        "nft 'insert rule ip nat post ip saddr 10.77.0.0/24 oifname \"up0\" masquerade'"
    );
    assert_eq!(
        masquerade(NatTarget::Xtables, "10.77.0.0/24", false, Some("up0")),
        "iptables -t nat -A POSTROUTING -s 10.77.0.0/24 -o up0 -j MASQUERADE"
    );
    assert_eq!(
        masquerade(NatTarget::NewTable, "10.77.0.0/24", false, Some("up0")),
        "nft 'add table ip nat' && nft 'add chain ip nat postrouting { type nat hook postrouting priority srcnat; }' && nft 'add rule ip nat postrouting ip saddr 10.77.0.0/24 oifname \"up0\" masquerade'"
    );
}
