use super::*;

fn st(frames: &[&str]) -> Vec<String> {
    frames.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_kernel_reason_is_kept_and_never_marked_inferred() {
    let c = classify(Some("IP_INNOROUTES"), Some("ip_error+0x94"), &[]);
    assert_eq!(c.reason, "IP_INNOROUTES");
    assert!(!c.reason_inferred);
    assert_eq!(c.area, DropArea::Routing);
}

/// Kernels before 5.17: the same drops, with no reason, get the names and places a 6.18
/// kernel gives them, marked inferred.
#[test]
fn drops_without_a_reason_are_named_from_their_location() {
    let fwd = st(&[
        "kfree_skb+0x5a",
        "nf_hook_slow+0x8e",
        "ip_forward+0x4a0",
        "ip_rcv+0x1",
    ]);
    let c = classify(None, Some("nf_hook_slow+0x8e"), &fwd);
    assert_eq!(c.reason, "NETFILTER_DROP");
    assert!(c.reason_inferred);
    assert_eq!(
        c.place(Stage::Bridge),
        (Stage::Netfilter, Some(NfHook::Forward))
    );
    // ip_error's reason depends on the route: left to the journey (ip_error_reason).
    let c = classify(None, Some("ip_error+0x30"), &[]);
    assert_eq!(
        (c.reason.as_str(), c.area),
        ("NOT_SPECIFIED", DropArea::Routing)
    );
    assert_eq!(ip_error_reason(0), "IP_INADDRERRORS");
    assert_eq!(ip_error_reason(-101), "IP_INNOROUTES");
    assert_eq!(ip_error_reason(-22), "NOT_SPECIFIED");
    let c = classify(None, Some("kfree_skb_list+0x1c"), &[]);
    assert_eq!(
        (c.reason.as_str(), c.area),
        ("QDISC_DROP", DropArea::Egress)
    );
    let c = classify(None, Some("neigh_invalidate+0x7e"), &[]);
    assert_eq!(
        (c.reason.as_str(), c.area),
        ("NEIGH_FAILED", DropArea::Egress)
    );
    // A site with several causes is not guessed at.
    let c = classify(None, Some("ip_forward+0x1f0"), &[]);
    assert_eq!(c.reason, "NOT_SPECIFIED");
    assert!(c.reason_inferred);
    assert_eq!(c.place(Stage::Bridge), (Stage::Bridge, None));
}

/// Recorded on 6.18: an nftables `bridge` table's forward chain dropping a bridged frame.
#[test]
fn a_bridge_family_hook_is_named_with_its_hook() {
    let stack = st(&[
        "sk_skb_reason_drop+0x90",
        "nft_do_chain+0x46f",
        "nft_do_chain_bridge+0x216",
        "nf_hook_slow+0x43",
        "__br_forward+0xe6",
        "br_handle_frame_finish+0x392",
        "br_nf_hook_thresh+0x137",
        "br_nf_pre_routing_finish+0x173",
        "br_nf_pre_routing+0x219",
        "br_handle_frame+0x2b4",
    ]);
    let c = classify(Some("NETFILTER_DROP"), Some("nft_do_chain+0x46f"), &stack);
    assert!(c.bridge_family);
    assert!(!c.bridged, "not br_netfilter's IP hooks");
    assert_eq!(
        c.place(Stage::Egress),
        (Stage::Netfilter, Some(NfHook::Forward))
    );
    let input = st(&[
        "nft_do_chain+0x1",
        "nf_hook_slow+0x43",
        "br_pass_frame_up+0x1",
    ]);
    let c = classify(Some("NETFILTER_DROP"), Some("nft_do_chain+0x1"), &input);
    assert!(c.bridge_family);
    assert_eq!(
        c.place(Stage::Bridge),
        (Stage::Netfilter, Some(NfHook::Input))
    );
}

#[test]
fn places_of_drops() {
    let fwd = st(&[
        "nft_do_chain+0x1",
        "nf_hook_slow+0x3e",
        "ip_forward+0x4a0",
        "ip_rcv+0x1",
    ]);
    let place = |r: &str, l: &str, s: &[String], k: Stage| classify(Some(r), Some(l), s).place(k);
    assert_eq!(
        place("NETFILTER_DROP", "nf_hook_slow", &fwd, Stage::Bridge),
        (Stage::Netfilter, Some(NfHook::Forward))
    );
    assert_eq!(
        place("IP_INNOROUTES", "ip_error", &[], Stage::Bridge),
        (Stage::Routing, None)
    );
    assert_eq!(
        place("NEIGH_FAILED", "neigh_invalidate", &[], Stage::Egress),
        (Stage::Egress, None)
    );
    assert_eq!(
        place("NOT_SPECIFIED", "tun_get_user", &[], Stage::Tap),
        (Stage::Tap, None)
    );
    // The IPv6 sites watch's old copy did not know.
    assert_eq!(
        place("NOT_SPECIFIED", "ip6_pkt_drop", &[], Stage::Bridge),
        (Stage::Routing, None)
    );
    assert_eq!(
        place("NOT_SPECIFIED", "neigh_invalidate", &[], Stage::Bridge),
        (Stage::Egress, None)
    );
    let bridged = st(&[
        "nft_do_chain+0x1",
        "nf_hook_slow+0x3e",
        "br_nf_forward_ip+0x2b2",
    ]);
    let c = classify(Some("NETFILTER_DROP"), Some("nft_do_chain+0x1"), &bridged);
    assert!(c.bridged);
    assert!(!c.bridge_family);
    assert_eq!(
        c.place(Stage::Bridge),
        (Stage::Netfilter, Some(NfHook::Forward))
    );
}
