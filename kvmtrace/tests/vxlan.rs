//! VXLAN overlays: a VM whose bridge has a VXLAN port, followed into the overlay and out of
//! the underlay (outer UDP/4789, VNI, outer addresses) and back, and the overlay's faults
//! named. Each test builds its own lab (tests/src/vxlan.rs: the hypervisor and a second
//! namespace as the other VTEP) and creates the fault for real. Needs root.

mod common;

use common::{assert_fields, field, fix_then_delivered, run_plain, start_in, Run};
use kvmtrace_lab::vm::Reply;
use kvmtrace_lab::vxlan::{VxlanLab, VxlanOptions};
use serde_json::{json, Value};
use std::time::Duration;

const DEST: &str = "10.88.0.3";

/// Follows the lab's VM to the remote VM (`extra` flags added) while `drive` sends traffic.
fn follow_with(lab: &VxlanLab, secs: &str, extra: &[&str], drive: impl FnOnce(&VxlanLab)) -> Run {
    let mut args = vec!["follow", "vnet0", DEST, "--json", "--duration", secs];
    args.extend_from_slice(extra);
    let running = start_in(&lab.hv, &args, &[]);
    drive(lab);
    running.wait()
}

fn follow(lab: &VxlanLab, secs: &str, drive: impl FnOnce(&VxlanLab)) -> Run {
    follow_with(lab, secs, &[], drive)
}

/// The hops of `point` in `dir` seen on `dev`.
fn hops_at<'a>(run: &'a Run, point: &str, dev: &str, dir: &str) -> Vec<&'a Value> {
    run.hops()
        .into_iter()
        .filter(|h| h["point"] == point && h["device"] == dev && h["dir"] == dir)
        .collect()
}

/// Pings the remote VM by its MAC, without ARP across the overlay (the faults keep ARP from
/// being answered too); returns what came back.
fn ping_by_mac(lab: &VxlanLab, id: u16, n: u16) -> Vec<Reply> {
    let mut vm = lab.attach_vm();
    for seq in 1..=n {
        vm.send_echo_to_mac(lab.remote_vm, id, seq, lab.remote_vm_mac);
        std::thread::sleep(Duration::from_millis(200));
    }
    vm.poll_replies(Duration::from_millis(300))
}

/// The verdict of the flow with ICMP id `id`.
fn verdict_of(run: &Run, id: u16) -> &Value {
    let v: Vec<&Value> = run
        .verdicts()
        .into_iter()
        .filter(|v| v["key"]["guest_port"] == id)
        .collect();
    assert_eq!(v.len(), 1, "one verdict for id {id}: {}", run.dump());
    v[0]
}

#[test]
fn a_healthy_overlay_ping_is_delivered_and_seen_encapsulated_on_the_underlay() {
    let lab = VxlanLab::new(VxlanOptions::default());
    let mut replies = 0;
    let run = follow(&lab, "3", |lab| {
        let mut vm = lab.attach_vm();
        assert!(
            vm.resolve_gateway(Duration::from_secs(2)),
            "the remote VM answers ARP across the overlay"
        );
        for seq in 1..=2 {
            replies += usize::from(
                vm.ping(lab.remote_vm, 0x7a01, seq, Duration::from_millis(500))
                    .is_some(),
            );
        }
    });
    assert_eq!(replies, 2, "{}", run.dump());
    let v = run.verdict();
    assert_eq!(field(v, "status"), "delivered", "{}", run.dump());
    assert_eq!(v["requests"], 2, "{}", run.dump());
    assert_eq!(v["replies"], 2, "{}", run.dump());
    // The VXLAN port and its underlay device are path devices, named with the overlay.
    assert!(
        run.stderr.contains("vx0 (VXLAN port of br0 (vni 42))"),
        "{}",
        run.dump()
    );
    assert!(
        run.stderr
            .contains("ul0 (underlay of vx0 (vni 42, remote 198.51.100.1))"),
        "{}",
        run.dump()
    );
    // Out: the inner packet on vx0, then the same skb leaving ul0 inside VXLAN.
    let inner =
        json!({"proto": 1, "src": "10.88.0.2", "dst": "10.88.0.3", "sport": 0x7a01, "dport": 1});
    let out_vx = hops_at(&run, "dev_xmit", "vx0", "request");
    let out_ul = hops_at(&run, "dev_xmit", "ul0", "request");
    assert_eq!(out_vx.len(), 2, "{}", run.dump());
    assert_eq!(out_ul.len(), 2, "{}", run.dump());
    assert!(out_vx[0].get("vxlan").is_none(), "{}", run.dump());
    assert_eq!(out_vx[0]["tuple"], inner, "{}", run.dump());
    assert_eq!(out_ul[0]["tuple"], inner, "{}", run.dump());
    assert_eq!(
        out_ul[0]["vxlan"],
        json!({"vni": 42, "src": "192.0.2.2", "dst": "198.51.100.1"}),
        "{}",
        run.dump()
    );
    assert_eq!(out_ul[0]["skb"], out_vx[0]["skb"], "{}", run.dump());
    assert_eq!(out_ul[0]["journey"], out_vx[0]["journey"], "{}", run.dump());
    // 14 inner Ethernet + 20 IP + 8 UDP + 8 VXLAN more than the frame on vx0.
    assert_eq!(
        out_ul[0]["len"].as_u64().unwrap(),
        out_vx[0]["len"].as_u64().unwrap() + 50,
        "{}",
        run.dump()
    );
    // Back: the outer packet from the other VTEP received on ul0, then on vx0, then the tap.
    let in_ul = hops_at(&run, "netif_receive", "ul0", "reply");
    let in_vx = hops_at(&run, "netif_receive", "vx0", "reply");
    assert_eq!(in_ul.len(), 2, "{}", run.dump());
    assert_eq!(in_vx.len(), 2, "{}", run.dump());
    assert_eq!(
        in_ul[0]["vxlan"],
        json!({"vni": 42, "src": "198.51.100.1", "dst": "192.0.2.2"}),
        "{}",
        run.dump()
    );
    assert_eq!(in_ul[0]["tuple"]["src"], "10.88.0.3", "{}", run.dump());
    assert_eq!(in_ul[0]["tuple"]["dst"], "10.88.0.2", "{}", run.dump());
    assert_eq!(in_ul[0]["new"], true, "{}", run.dump());
    assert!(in_vx[0].get("vxlan").is_none(), "{}", run.dump());
    assert_eq!(in_vx[0]["journey"], in_ul[0]["journey"], "{}", run.dump());
    // No route lookup for the inner packet: it is bridged inside the overlay.
    assert!(
        run.hops().iter().all(|h| h["point"] != "fib"),
        "{}",
        run.dump()
    );
}

/// The full hook set reads the same outer headers in its global tracepoints: the underlay's
/// transmit and receive of the followed packets carry the VXLAN header too.
#[test]
fn the_full_hook_set_sees_the_overlay_on_the_underlay_as_well() {
    let lab = VxlanLab::new(VxlanOptions::default());
    let mut replies = 0;
    let run = follow_with(&lab, "3", &["--hooks", "all"], |lab| {
        let mut vm = lab.attach_vm();
        assert!(vm.resolve_gateway(Duration::from_secs(2)));
        replies += usize::from(
            vm.ping(lab.remote_vm, 0x7a0c, 1, Duration::from_millis(500))
                .is_some(),
        );
    });
    assert_eq!(replies, 1, "{}", run.dump());
    assert_eq!(
        field(run.verdict(), "status"),
        "delivered",
        "{}",
        run.dump()
    );
    let out = hops_at(&run, "dev_xmit", "ul0", "request");
    let back = hops_at(&run, "netif_receive", "ul0", "reply");
    assert_eq!(out.len(), 1, "{}", run.dump());
    assert_eq!(back.len(), 1, "{}", run.dump());
    assert_eq!(out[0]["vxlan"]["dst"], "198.51.100.1", "{}", run.dump());
    assert_eq!(back[0]["vxlan"]["src"], "198.51.100.1", "{}", run.dump());
    assert_eq!(back[0]["tuple"]["dst"], "10.88.0.2", "{}", run.dump());
    // The outer packet crosses the host's own OUTPUT and POSTROUTING hooks: seen there as the
    // followed packet.
    let hooks: Vec<&str> = run
        .hops()
        .into_iter()
        .filter(|h| h["dir"] == "request" && h.get("vxlan").is_some())
        .filter_map(|h| h["nf_hook"].as_str())
        .collect();
    assert!(hooks.contains(&"OUTPUT"), "{hooks:?}\n{}", run.dump());
    assert!(hooks.contains(&"POSTROUTING"), "{hooks:?}\n{}", run.dump());
}

#[test]
fn a_vxlan_port_without_a_remote_drops_with_no_tx_target_and_names_the_fdb_fix() {
    let lab = VxlanLab::new(VxlanOptions {
        remote: false,
        ..Default::default()
    });
    let mut got = Vec::new();
    let run = follow(&lab, "2", |lab| got = ping_by_mac(lab, 0x7a02, 2));
    assert!(got.is_empty(), "{got:?}");
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=dropped direction=request stage=egress device=vx0 reason=NO_TX_TARGET",
    );
    assert!(
        field(v, "location").starts_with("vxlan_xmit+"),
        "{}",
        run.dump()
    );
    assert!(v.get("hook").is_none(), "{}", run.dump());
    assert_eq!(v["requests"], 2, "{}", run.dump());
    let s = field(v, "summary");
    for words in [
        "VXLAN device vx0 (vni 42)",
        "no entry for the destination MAC 52:54:00:4b:58:03",
        "no default remote",
        "`bridge fdb append 00:00:00:00:00:00 dev vx0 dst REMOTE_VTEP`",
    ] {
        assert!(s.contains(words), "{words:?} missing: {}", run.dump());
    }
    // The fix the verdict names, with the remote VTEP filled in, makes the overlay work.
    lab.hv_run(&[
        "bridge",
        "fdb",
        "append",
        "00:00:00:00:00:00",
        "dev",
        "vx0",
        "dst",
        "198.51.100.1",
    ]);
    let fixed = ping_by_mac(&lab, 0x7a02, 1);
    assert!(
        matches!(fixed.as_slice(), [Reply::IcmpEchoReply { .. }]),
        "{fixed:?}"
    );
}

#[test]
fn a_missing_underlay_route_to_the_remote_vtep_is_a_routing_drop_of_the_overlay() {
    // Unbound: a VXLAN device bound to its underlay (`dev`) takes a missing route for an
    // on-link remote and ARPs for it there (measured; the other VTEP answers, the ping works).
    let lab = VxlanLab::new(VxlanOptions {
        underlay_route: false,
        bind_dev: false,
        ..Default::default()
    });
    let mut got = Vec::new();
    let run = follow(&lab, "2", |lab| got = ping_by_mac(lab, 0x7a03, 2));
    assert!(got.is_empty(), "{got:?}");
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=dropped direction=request stage=routing device=vx0 reason=IP_OUTNOROUTES",
    );
    assert!(
        field(v, "location").starts_with("vxlan_xmit_one+"),
        "{}",
        run.dump()
    );
    let s = field(v, "summary");
    for words in [
        "encapsulated by the VXLAN device vx0 (vni 42)",
        "outer packet 192.0.2.2 > 198.51.100.1 udp/4789 has no route on the underlay",
        "vx0 is bound to none and no route covers 198.51.100.1",
        "`ip route get 198.51.100.1`",
    ] {
        assert!(s.contains(words), "{words:?} missing: {}", run.dump());
    }
}

#[test]
fn a_guest_frame_larger_than_the_vxlan_port_mtu_is_dropped_by_the_bridge() {
    // vx0 bound to ul0 (MTU 1500) gets 1450; a guest with MTU 1500 sends 1500 bytes with DF.
    let lab = VxlanLab::new(VxlanOptions::default());
    let (mut small, mut big) = (None, None);
    let run = follow(&lab, "3", |lab| {
        let mut vm = lab.attach_vm();
        assert!(vm.resolve_gateway(Duration::from_secs(2)));
        vm.dont_fragment = true;
        // 1450 bytes of IP fit, 1500 do not.
        small = vm.ping_sized(lab.remote_vm, 0x7a04, 1, 1422, Duration::from_millis(800));
        big = vm.ping_sized(lab.remote_vm, 0x7a05, 1, 1472, Duration::from_millis(800));
    });
    assert!(
        matches!(small, Some(Reply::IcmpEchoReply { .. })),
        "{small:?}"
    );
    assert!(big.is_none(), "no answer, not even an ICMP error: {big:?}");
    assert_eq!(
        field(verdict_of(&run, 0x7a04), "status"),
        "delivered",
        "{}",
        run.dump()
    );
    let v = verdict_of(&run, 0x7a05);
    assert_fields(
        &run,
        v,
        "status=dropped direction=request stage=bridge device=vx0",
    );
    // No drop reason of its own: bridge netfilter's or the bridge's transmit frees it.
    assert_eq!(field(v, "reason"), "NOT_SPECIFIED", "{}", run.dump());
    let loc = field(v, "location");
    assert!(
        loc.starts_with("br_nf_dev_queue_xmit+") || loc.starts_with("br_dev_queue_push_xmit+"),
        "{}",
        run.dump()
    );
    let s = field(v, "summary");
    for words in [
        "(1500 bytes of IP) is larger than the MTU 1450 of the VXLAN port vx0 (vni 42)",
        "its underlay ul0 has MTU 1500, less 50 bytes",
        "br0 dropped it",
        "no ICMP error",
        "set the guest's MTU to 1450",
    ] {
        assert!(s.contains(words), "{words:?} missing: {}", run.dump());
    }
}

#[test]
fn an_unbound_vxlan_port_above_the_underlay_mtu_answers_fragmentation_needed() {
    // Unbound, vx0 keeps MTU 1500 on a 1500 underlay: 1500 bytes with DF would need 1550.
    let lab = VxlanLab::new(VxlanOptions {
        bind_dev: false,
        ..Default::default()
    });
    let mut got = None;
    let run = follow(&lab, "3", |lab| {
        let mut vm = lab.attach_vm();
        assert!(vm.resolve_gateway(Duration::from_secs(2)));
        vm.dont_fragment = true;
        got = vm.ping_sized(lab.remote_vm, 0x7a06, 1, 1472, Duration::from_millis(800));
    });
    // The kernel answers in the remote VM's name.
    assert_eq!(
        got,
        Some(Reply::IcmpError {
            icmp_type: 3,
            code: 4,
            src: lab.remote_vm
        }),
        "{}",
        run.dump()
    );
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=dropped direction=request stage=egress device=vx0",
    );
    assert!(v.get("reason").is_none(), "no drop: {}", run.dump());
    // The error was first seen coming out of vx0, never on the underlay.
    let err_hops: Vec<&Value> = run
        .hops()
        .into_iter()
        .filter(|h| h["icmp_type"] == 3 && h["dir"] == "reply")
        .collect();
    assert_eq!(field(err_hops[0], "device"), "vx0", "{}", run.dump());
    assert_eq!(err_hops[0]["icmp_mtu"], 1450, "{}", run.dump());
    assert!(hops_at(&run, "dev_xmit", "ul0", "request").is_empty());
    let s = field(v, "summary");
    for words in [
        "(1500 bytes of IP, don't fragment)",
        "VXLAN device vx0 (vni 42, MTU 1500)",
        "underlay ul0 (MTU 1500: room for 1450 bytes",
        "\"fragmentation needed, MTU 1450\" in 10.88.0.3's name",
        "`ip link set vx0 mtu 1450`",
    ] {
        assert!(s.contains(words), "{words:?} missing: {}", run.dump());
    }
}

#[test]
fn the_outer_packet_dropped_by_the_firewall_is_a_netfilter_drop_of_the_followed_packet() {
    for (hook, hook_name, device) in [
        ("output", "OUTPUT", "vx0"),
        ("postrouting", "POSTROUTING", "ul0"),
    ] {
        let lab = VxlanLab::new(VxlanOptions {
            drop_outer_at: Some(hook),
            ..Default::default()
        });
        let mut got = Vec::new();
        let run = follow(&lab, "2", |lab| got = ping_by_mac(lab, 0x7a07, 2));
        assert!(got.is_empty(), "{got:?}");
        let v = run.verdict();
        assert_eq!(field(v, "status"), "dropped", "{hook}: {}", run.dump());
        assert_eq!(field(v, "direction"), "request", "{hook}: {}", run.dump());
        assert_eq!(field(v, "stage"), "netfilter", "{hook}: {}", run.dump());
        assert_eq!(field(v, "hook"), hook_name, "{hook}: {}", run.dump());
        assert_eq!(field(v, "device"), device, "{hook}: {}", run.dump());
        assert_eq!(
            field(v, "reason"),
            "NETFILTER_DROP",
            "{hook}: {}",
            run.dump()
        );
        assert_eq!(field(v, "firewall"), "nftables", "{hook}: {}", run.dump());
        assert_eq!(v["requests"], 2, "{hook}: {}", run.dump());
        // The drop is the followed (inner) packet's, seen in its outer header.
        let drop = run
            .hops()
            .into_iter()
            .find(|h| h["point"] == "drop")
            .expect("a drop hop");
        assert_eq!(drop["tuple"]["dst"], "10.88.0.3", "{}", run.dump());
        assert_eq!(
            drop["vxlan"],
            json!({"vni": 42, "src": "192.0.2.2", "dst": "198.51.100.1"}),
            "{hook}: {}",
            run.dump()
        );
        let s = field(v, "summary");
        for words in [
            "left through the VXLAN device vx0 (vni 42)",
            "its encapsulated (outer) packet 192.0.2.2 > 198.51.100.1 udp/4789 was dropped",
            &format!("by the {hook_name} hook (nftables: ip vxfw c"),
            &format!("accept udp dport 4789 to 198.51.100.1 in the {hook} rules"),
        ] {
            assert!(
                s.contains(words),
                "{hook}: {words:?} missing: {}",
                run.dump()
            );
        }
        fix_then_delivered(
            &lab.hv,
            &run,
            v,
            "nft 'insert rule ip vxfw c ip daddr 198.51.100.1 udp dport 4789 accept'",
            || follow(&lab, "2", |lab| got = ping_by_mac(lab, 0x7a08, 2)),
        );
    }
}

#[test]
fn the_outer_packet_of_a_reply_dropped_at_input_is_a_netfilter_drop_of_the_reply() {
    let lab = VxlanLab::new(VxlanOptions {
        drop_outer_at: Some("input"),
        ..Default::default()
    });
    // The other VTEP knows the guest's MAC: its echo replies need no ARP (which the same rule
    // would drop on its way in).
    lab.vtep_run(&[
        "ip",
        "neigh",
        "replace",
        "10.88.0.2",
        "lladdr",
        "52:54:00:4b:58:02",
        "dev",
        "vx0",
    ]);
    let mut got = Vec::new();
    let run = follow(&lab, "2", |lab| got = ping_by_mac(lab, 0x7a0a, 2));
    assert!(got.is_empty(), "{got:?}");
    let v = run.verdict();
    assert_fields(&run, v, "status=dropped direction=reply stage=netfilter hook=INPUT device=ul0 reason=NETFILTER_DROP");
    assert_eq!(v["requests"], 2, "{}", run.dump());
    assert_eq!(v["replies"], 2, "{}", run.dump());
    // The requests left inside VXLAN; the replies were followed from their outer header on.
    assert_eq!(hops_at(&run, "dev_xmit", "ul0", "request").len(), 2);
    let back = hops_at(&run, "netif_receive", "ul0", "reply");
    assert_eq!(back.len(), 2, "{}", run.dump());
    assert_eq!(
        back[0]["vxlan"],
        json!({"vni": 42, "src": "198.51.100.1", "dst": "192.0.2.2"}),
        "{}",
        run.dump()
    );
    let s = field(v, "summary");
    for words in [
        "the reply came back for the VXLAN device vx0 (vni 42)",
        "its encapsulated (outer) packet 198.51.100.1 > 192.0.2.2 udp/4789 was dropped by the \
         INPUT hook",
        "accept udp dport 4789 from 198.51.100.1 in the input rules",
    ] {
        assert!(s.contains(words), "{words:?} missing: {}", run.dump());
    }
    fix_then_delivered(
        &lab.hv,
        &run,
        v,
        "nft 'insert rule ip vxfw c ip saddr 198.51.100.1 udp dport 4789 accept'",
        || follow(&lab, "2", |lab| got = ping_by_mac(lab, 0x7a0c, 2)),
    );
}

#[test]
fn a_vni_mismatch_at_the_other_vtep_is_no_reply_past_this_host_not_a_missing_masquerade() {
    let lab = VxlanLab::new(VxlanOptions {
        remote_vni: 43,
        ..Default::default()
    });
    let mut got = Vec::new();
    let run = follow(&lab, "2", |lab| got = ping_by_mac(lab, 0x7a0b, 2));
    assert!(got.is_empty(), "{got:?}");
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=no_reply direction=request stage=egress device=ul0",
    );
    assert!(v.get("reason").is_none(), "{}", run.dump());
    assert_eq!(v["requests"], 2, "{}", run.dump());
    assert_eq!(v["replies"], 0, "{}", run.dump());
    let s = field(v, "summary");
    for words in [
        "left the host inside VXLAN from vx0 on ul0 (vxlan vni 42 192.0.2.2 > 198.51.100.1)",
        "nothing came back through the overlay",
        "the other VTEP 198.51.100.1 (a VXLAN device with vni 42",
    ] {
        assert!(s.contains(words), "{words:?} missing: {}", run.dump());
    }
    assert!(!s.contains("masquerade"), "{}", run.dump());
}

#[test]
fn a_recorded_overlay_run_replays_to_the_same_verdicts_and_exports_the_outer_headers() {
    let lab = VxlanLab::new(VxlanOptions {
        drop_outer_at: Some("postrouting"),
        ..Default::default()
    });
    let dir = std::env::temp_dir().join(format!("{}-rec", lab.id));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("overlay.kvmtrace");
    let f = file.to_str().unwrap();
    let live = follow_with(&lab, "2", &["--record", f], |lab| {
        ping_by_mac(lab, 0x7a08, 2);
    });
    let live_v: Vec<Value> = live.verdicts().into_iter().cloned().collect();
    assert_eq!(live_v.len(), 1, "{}", live.dump());
    assert_eq!(field(&live_v[0], "hook"), "POSTROUTING", "{}", live.dump());

    let replay = run_plain(&["replay", f, "--json"]);
    assert_eq!(replay.code, live.code, "{}", replay.dump());
    let rv: Vec<Value> = replay
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &Value| v["type"] == "verdict")
        .collect();
    assert_eq!(rv, live_v, "{}\n{}", live.dump(), replay.dump());
    // Replay's hops keep the outer headers.
    assert!(
        replay
            .stdout
            .contains("\"vxlan\":{\"vni\":42,\"src\":\"192.0.2.2\""),
        "{}",
        replay.dump()
    );
    let text = run_plain(&["replay", f, "--no-tui"]);
    assert!(
        text.stdout
            .contains("[vxlan vni 42 192.0.2.2 > 198.51.100.1]"),
        "{}",
        text.dump()
    );

    let pcap = dir.join("overlay.pcapng");
    let exp = run_plain(&[
        "export",
        f,
        "--format",
        "pcapng",
        "-o",
        pcap.to_str().unwrap(),
    ]);
    assert_eq!(exp.code, 0, "{}", exp.dump());
    let ts = std::process::Command::new("tshark")
        .args([
            "-r",
            pcap.to_str().unwrap(),
            "-T",
            "fields",
            "-e",
            "frame.comment",
        ])
        .output()
        .expect("tshark");
    let comments = String::from_utf8_lossy(&ts.stdout);
    assert!(
        comments.contains("outer vxlan vni 42 192.0.2.2 > 198.51.100.1"),
        "{comments}"
    );
    assert!(comments.contains("NETFILTER_DROP"), "{comments}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The vxlan check of `kvmtrace doctor` in the overlay lab, with a VM on the tap.
fn doctor_vxlan_check(lab: &VxlanLab) -> Value {
    let _vm = lab.attach_vm();
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.hv,
            common::BIN,
            "doctor",
            "vnet0",
            "--json",
        ])
        .output()
        .expect("run kvmtrace doctor");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "check" && v["name"] == "vxlan")
        .unwrap_or_else(|| panic!("no vxlan check:\n{text}"))
}

/// `kvmtrace doctor` on the overlay lab: the VXLAN port is checked for a remote, a route to it
/// and room for the encapsulation, each fault with its evidence and fix.
#[test]
fn doctor_checks_the_vxlan_port_remote_route_and_mtu() {
    let vxlan_check = doctor_vxlan_check;
    let healthy = VxlanLab::new(VxlanOptions::default());
    let c = vxlan_check(&healthy);
    assert_eq!(c["status"], "pass", "{c}");
    let ev = c["evidence"].as_str().unwrap();
    assert!(
        ev.contains("vx0") && ev.contains("vni 42") && ev.contains("remote 198.51.100.1"),
        "{ev}"
    );
    // The underlay's MTU lowered below vx0's plus the encapsulation.
    healthy.hv_run(&["ip", "link", "set", &healthy.underlay, "mtu", "1400"]);
    healthy.hv_run(&["ip", "link", "set", "vx0", "mtu", "1450"]);
    let c = vxlan_check(&healthy);
    assert_eq!(c["status"], "fail", "{c}");
    assert!(c["evidence"].as_str().unwrap().contains("MTU 1450"), "{c}");
    assert!(c["fix"].as_str().unwrap().contains("mtu 1350"), "{c}");
    drop(healthy);

    let no_route = VxlanLab::new(VxlanOptions {
        underlay_route: false,
        bind_dev: false,
        ..VxlanOptions::default()
    });
    let c = vxlan_check(&no_route);
    assert_eq!(c["status"], "fail", "{c}");
    assert!(
        c["evidence"]
            .as_str()
            .unwrap()
            .contains("no route to the remote VTEP 198.51.100.1"),
        "{c}"
    );
    assert!(
        c["fix"]
            .as_str()
            .unwrap()
            .contains("ip route get 198.51.100.1"),
        "{c}"
    );
    drop(no_route);

    let no_remote = VxlanLab::new(VxlanOptions {
        remote: false,
        ..VxlanOptions::default()
    });
    let c = vxlan_check(&no_remote);
    assert_eq!(c["status"], "fail", "{c}");
    assert!(
        c["evidence"]
            .as_str()
            .unwrap()
            .contains("no default remote VTEP and no forwarding entry"),
        "{c}"
    );
    assert!(
        c["fix"]
            .as_str()
            .unwrap()
            .contains("bridge fdb append 00:00:00:00:00:00 dev vx0"),
        "{c}"
    );
}

/// Without `remote`, forwarding entries decide: none is a fail, entries for single MACs a
/// warn, and an all-zeros entry stands for the remote, in doctor (route and MTU checked
/// through it) and in follow (its underlay found through the route to that VTEP).
#[test]
fn forwarding_entries_stand_for_a_missing_remote_in_doctor_and_follow() {
    let lab = VxlanLab::new(VxlanOptions {
        remote: false,
        bind_dev: false,
        ..Default::default()
    });
    let c = doctor_vxlan_check(&lab);
    assert_eq!(c["status"], "fail", "{c}");
    let fdb = |mac: &str| {
        lab.hv_run(&[
            "bridge",
            "fdb",
            "append",
            mac,
            "dev",
            "vx0",
            "dst",
            "198.51.100.1",
        ]);
    };
    fdb("52:54:00:4b:58:03");
    let c = doctor_vxlan_check(&lab);
    assert_eq!(c["status"], "warn", "{c}");
    let ev = c["evidence"].as_str().unwrap();
    assert!(
        ev.contains("remote none") && ev.contains("1 MAC has a forwarding entry to a VTEP"),
        "{c}"
    );
    fdb("00:00:00:00:00:00");
    // Unbound, vx0 came up with MTU 1500, 50 bytes too many for ul0 (the check says so once
    // it knows the underlay through the entry's VTEP): lowered as that check's fix says.
    let c = doctor_vxlan_check(&lab);
    assert_eq!(c["status"], "fail", "{c}");
    assert!(
        c["fix"]
            .as_str()
            .unwrap()
            .contains("ip link set vx0 mtu 1450"),
        "{c}"
    );
    lab.hv_run(&["ip", "link", "set", "vx0", "mtu", "1450"]);
    let c = doctor_vxlan_check(&lab);
    assert_eq!(c["status"], "pass", "{c}");
    let ev = c["evidence"].as_str().unwrap();
    assert!(
        ev.contains("remote 198.51.100.1 (fdb 00:00:00:00:00:00)")
            && ev.contains("underlay ul0")
            && ev.contains("reached through ul0"),
        "{c}"
    );

    let mut replies = 0;
    let run = follow(&lab, "3", |lab| {
        let mut vm = lab.attach_vm();
        assert!(vm.resolve_gateway(Duration::from_secs(2)));
        replies += usize::from(
            vm.ping(lab.remote_vm, 0x7a0d, 1, Duration::from_millis(500))
                .is_some(),
        );
    });
    assert_eq!(replies, 1, "{}", run.dump());
    assert_eq!(
        field(run.verdict(), "status"),
        "delivered",
        "{}",
        run.dump()
    );
    assert!(
        run.stderr.contains(
            "ul0 (underlay of vx0 (vni 42, remote 198.51.100.1 (fdb 00:00:00:00:00:00)))"
        ),
        "{}",
        run.dump()
    );
    let out = hops_at(&run, "dev_xmit", "ul0", "request");
    assert_eq!(out.len(), 1, "{}", run.dump());
    assert_eq!(out[0]["vxlan"]["dst"], "198.51.100.1", "{}", run.dump());
}
