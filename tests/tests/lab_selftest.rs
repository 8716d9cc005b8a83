//! Self-tests of the lab and the fake VM: the healthy lab forwards IPv4 and IPv6, and each knob
//! that should break forwarding does break it — and stops breaking it when turned back. Run as root; each test
//! builds its own namespaces, so they run in parallel.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use kvmtrace_lab::lab::{netns_path, Firewall, Lab, LabOptions, MASQUERADE_RULESET};
use kvmtrace_lab::vm::{icmp6_type, tcp_flags, FakeVm, Reply, Reply6};

/// Generous: a positive answer inside the lab takes well under a millisecond.
const ANSWER: Duration = Duration::from_secs(3);
/// How long "no reply" is waited for. Replies here come in microseconds, so 1 s is ample.
const SILENCE: Duration = Duration::from_secs(1);

/// The fake VM reaches the gateway (ARP and a local ping): proves the tap, bridge and fake VM
/// work, so a later "no reply" is about forwarding, not a broken lab.
fn attach_and_check_gateway(lab: &Lab) -> FakeVm {
    let mut vm = FakeVm::attach(lab);
    assert!(
        vm.resolve_gateway(ANSWER),
        "gateway {} did not answer ARP",
        lab.gw_ip
    );
    let reply = vm.ping(lab.gw_ip, 0x4b01, 1, ANSWER);
    assert_eq!(
        reply,
        Some(Reply::IcmpEchoReply {
            id: 0x4b01,
            seq: 1,
            src: lab.gw_ip
        }),
        "ping of the gateway"
    );
    vm
}

fn assert_echo_reply(vm: &mut FakeVm, dst: Ipv4Addr, id: u16, what: &str) {
    let reply = vm.ping(dst, id, 1, ANSWER);
    assert_eq!(
        reply,
        Some(Reply::IcmpEchoReply {
            id,
            seq: 1,
            src: dst
        }),
        "{what}"
    );
}

fn assert_no_reply(vm: &mut FakeVm, dst: Ipv4Addr, id: u16, what: &str) {
    let reply = vm.ping(dst, id, 1, SILENCE);
    assert_eq!(reply, None, "{what}");
}

#[test]
fn healthy_lab_forwards_ping_and_tcp() {
    let lab = Lab::new(LabOptions::default());
    let mut vm = attach_and_check_gateway(&lab);

    assert_echo_reply(
        &mut vm,
        lab.dest,
        0x4b10,
        "ping of dest through a healthy lab",
    );

    lab.tcp_listen(8080);
    let reply = vm.tcp_syn(lab.dest, 8080, 40000, ANSWER);
    assert_eq!(
        reply,
        Some(Reply::Tcp {
            flags: tcp_flags::SYN | tcp_flags::ACK,
            src: lab.dest,
            sport: 8080,
            dport: 40000
        }),
        "SYN to a listening port"
    );
}

#[test]
fn closed_ports_answer_rst_and_port_unreachable() {
    let lab = Lab::new(LabOptions::default());
    let mut vm = attach_and_check_gateway(&lab);

    let reply = vm.tcp_syn(lab.dest, 9, 40001, ANSWER);
    assert_eq!(
        reply,
        Some(Reply::Tcp {
            flags: tcp_flags::RST | tcp_flags::ACK,
            src: lab.dest,
            sport: 9,
            dport: 40001
        }),
        "SYN to a closed port"
    );

    // The ICMP error quotes the masqueraded datagram; conntrack translates the quote back, which
    // is how the fake VM can match it to its own port pair.
    let reply = vm.udp(lab.dest, 9, 40002, b"kvmtrace", ANSWER);
    assert_eq!(
        reply,
        Some(Reply::IcmpError {
            icmp_type: 3,
            code: 3,
            src: lab.dest
        }),
        "UDP to a closed port"
    );
}

#[test]
fn without_masquerade_replies_die_outside() {
    let lab = Lab::new(LabOptions {
        masquerade: false,
        ..LabOptions::default()
    });
    let mut vm = attach_and_check_gateway(&lab);
    assert_no_reply(&mut vm, lab.dest, 0x4b20, "ping without MASQUERADE");

    // Same lab with the rule added: a new echo id is a new conntrack entry, so it gets NATed.
    lab.nft(MASQUERADE_RULESET);
    assert_echo_reply(&mut vm, lab.dest, 0x4b21, "ping after adding MASQUERADE");
}

#[test]
fn nftables_forward_drop_blocks() {
    let lab = Lab::new(LabOptions {
        forward_drop: Some(Firewall::Nftables),
        ..LabOptions::default()
    });
    let mut vm = attach_and_check_gateway(&lab);
    assert_no_reply(&mut vm, lab.dest, 0x4b30, "ping with nftables forward drop");

    lab.nft("delete table inet labfilter");
    assert_echo_reply(
        &mut vm,
        lab.dest,
        0x4b31,
        "ping after deleting the drop table",
    );
}

#[test]
fn iptables_forward_drop_blocks() {
    let lab = Lab::new(LabOptions {
        forward_drop: Some(Firewall::Iptables),
        ..LabOptions::default()
    });
    let policy = lab.hv_run(&["iptables", "-w", "-S", "FORWARD"]);
    assert!(policy.contains("-P FORWARD DROP"), "policy: {policy}");
    let mut vm = attach_and_check_gateway(&lab);
    assert_no_reply(&mut vm, lab.dest, 0x4b40, "ping with iptables FORWARD DROP");

    lab.hv_run(&["iptables", "-w", "-P", "FORWARD", "ACCEPT"]);
    assert_echo_reply(&mut vm, lab.dest, 0x4b41, "ping after FORWARD ACCEPT");
}

#[test]
fn ip_forward_off_blocks() {
    let lab = Lab::new(LabOptions {
        ip_forward: false,
        ..LabOptions::default()
    });
    let sysctl = lab.hv_run(&["sysctl", "-n", "net.ipv4.ip_forward"]);
    assert_eq!(sysctl.trim(), "0");
    let mut vm = attach_and_check_gateway(&lab);
    assert_no_reply(&mut vm, lab.dest, 0x4b50, "ping with ip_forward=0");

    lab.set_ip_forward(true);
    assert_echo_reply(&mut vm, lab.dest, 0x4b51, "ping after ip_forward=1");
}

/// `ip netns exec` joins the namespace only after it starts: wait (bounded) until `pid` is in `ns`,
/// compared by namespace inode.
fn wait_until_in_netns(pid: u32, ns: &str) {
    use std::os::unix::fs::MetadataExt;
    let want = std::fs::metadata(netns_path(ns)).expect("stat netns").ino();
    let deadline = std::time::Instant::now() + ANSWER;
    loop {
        let now = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino());
        if now.ok() == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pid {pid} never entered netns {ns}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn drop_removes_both_namespaces() {
    let lab = Lab::new(LabOptions::default());
    let (hv, outside) = (netns_path(&lab.hv), netns_path(&lab.outside));
    assert!(hv.exists(), "{} missing after Lab::new", hv.display());
    assert!(
        outside.exists(),
        "{} missing after Lab::new",
        outside.display()
    );

    // Drop with everything in use: an attached fake VM, a listener and a process in hv.
    let vm = FakeVm::attach(&lab);
    lab.tcp_listen(8081);
    let mut sleeper = lab
        .hv_cmd("sleep")
        .arg("600")
        .spawn()
        .expect("spawn sleep in hv");
    wait_until_in_netns(sleeper.id(), &lab.hv);
    drop(lab);

    assert!(!hv.exists(), "{} still exists after drop", hv.display());
    assert!(
        !outside.exists(),
        "{} still exists after drop",
        outside.display()
    );
    let status = sleeper.wait().expect("wait for sleep");
    assert!(!status.success(), "sleep in hv was not killed: {status}");
    drop(vm);
}

#[test]
fn labs_get_distinct_names() {
    let a = Lab::new(LabOptions::default());
    let b = Lab::new(LabOptions::default());
    assert_ne!(a.id, b.id);
    assert_ne!(a.hv, b.hv);
    assert!(a.id.starts_with(&format!("kt{}-", std::process::id())));
}

// ---- IPv6 ----

/// The fake VM reaches the IPv6 gateway (Neighbour Solicitation answered, local ping6): a later
/// "no reply" is about forwarding, not a broken lab.
fn attach_and_check_gateway6(lab: &Lab) -> FakeVm {
    let mut vm = FakeVm::attach(lab);
    assert!(
        vm.resolve_gateway6(ANSWER),
        "gateway {} did not answer Neighbour Solicitation",
        lab.gw_ip6
    );
    assert!(vm.gateway6_mac().is_some());
    let reply = vm.ping6(lab.gw_ip6, 0x6b01, 1, ANSWER);
    assert_eq!(
        reply,
        Some(Reply6::EchoReply {
            id: 0x6b01,
            seq: 1,
            src: lab.gw_ip6
        }),
        "ping6 of the gateway"
    );
    vm
}

fn assert_echo_reply6(vm: &mut FakeVm, dst: Ipv6Addr, id: u16, what: &str) {
    let reply = vm.ping6(dst, id, 1, ANSWER);
    assert_eq!(
        reply,
        Some(Reply6::EchoReply {
            id,
            seq: 1,
            src: dst
        }),
        "{what}"
    );
}

fn assert_no_reply6(vm: &mut FakeVm, dst: Ipv6Addr, id: u16, what: &str) {
    let reply = vm.ping6(dst, id, 1, SILENCE);
    assert_eq!(reply, None, "{what}");
}

#[test]
fn ipv6_is_configured_without_dad() {
    let lab = Lab::new(LabOptions::default());
    let sysctl = |name: &str| lab.hv_run(&["sysctl", "-n", name]).trim().to_string();
    assert_eq!(sysctl("net.ipv6.conf.all.forwarding"), "1");
    assert_eq!(sysctl("net.ipv6.conf.all.accept_ra"), "0");
    for dev in [&lab.bridge, &lab.tap, &lab.uplink] {
        assert_eq!(
            sysctl(&format!("net.ipv6.conf.{dev}.accept_dad")),
            "0",
            "{dev}"
        );
        assert_eq!(
            sysctl(&format!("net.ipv6.conf.{dev}.accept_ra")),
            "0",
            "{dev}"
        );
    }
    let br = lab.hv_run(&["ip", "-6", "addr", "show", "dev", &lab.bridge]);
    assert!(br.contains(&format!("{}/64", lab.gw_ip6)), "{br}");
    let all = lab.hv_run(&["ip", "-6", "addr", "show"]) + &lab.outside_run(&["ip", "-6", "addr"]);
    assert!(
        !all.contains("tentative"),
        "an address waits for DAD:\n{all}"
    );
    let routes = lab.hv_run(&["ip", "-6", "route", "show", "default"]);
    assert!(
        routes.contains(&format!("via {} dev {}", lab.outside_gw6, lab.uplink)),
        "{routes}"
    );
    let back = lab.outside_run(&["ip", "-6", "route", "show", "fd00:77::/64"]);
    assert!(back.contains(&format!("via {}", lab.uplink_ip6)), "{back}");
    let lo = lab.outside_run(&["ip", "-6", "addr", "show", "dev", "lo"]);
    assert!(lo.contains(&format!("{}/128", lab.dest6)), "{lo}");
}

#[test]
fn healthy_lab_forwards_ping6_tcp6_and_udp6() {
    let lab = Lab::new(LabOptions::default());
    let mut vm = attach_and_check_gateway6(&lab);
    assert_echo_reply6(
        &mut vm,
        lab.dest6,
        0x6b10,
        "ping6 of dest6 through a healthy lab",
    );

    lab.tcp_listen6(8080);
    let reply = vm.tcp_syn6(lab.dest6, 8080, 40000, ANSWER);
    assert_eq!(
        reply,
        Some(Reply6::Tcp {
            flags: tcp_flags::SYN | tcp_flags::ACK,
            src: lab.dest6,
            sport: 8080,
            dport: 40000
        }),
        "SYN to a listening port over IPv6"
    );
    let reply = vm.tcp_syn6(lab.dest6, 9, 40001, ANSWER);
    assert_eq!(
        reply,
        Some(Reply6::Tcp {
            flags: tcp_flags::RST | tcp_flags::ACK,
            src: lab.dest6,
            sport: 9,
            dport: 40001
        }),
        "SYN to a closed port over IPv6"
    );
    // Port unreachable (type 1 code 4) from dest6, quoting the datagram sent to it.
    let reply = vm.udp6(lab.dest6, 9, 40002, b"kvmtrace", ANSWER);
    assert_eq!(
        reply,
        Some(Reply6::IcmpError {
            icmp_type: icmp6_type::DEST_UNREACHABLE,
            code: 4,
            src: lab.dest6,
            mtu: None,
            quoted_dst: Some(lab.dest6)
        }),
        "UDP to a closed port over IPv6"
    );

    // IPv4 keeps working beside it.
    assert_echo_reply(&mut vm, lab.dest, 0x6b11, "ping of dest in the same lab");
}

#[test]
fn replies_reach_the_guest_after_the_host_forgets_its_mac() {
    // The gateway learned the guest's MAC from the option in its solicitation; forget it, so
    // the echo reply waits for the fake VM to answer the host's own Neighbour Solicitation.
    let lab = Lab::new(LabOptions::default());
    let mut vm = attach_and_check_gateway6(&lab);
    lab.hv_run(&["ip", "-6", "neigh", "flush", "dev", &lab.bridge]);
    let guest = lab.guest_ip6.to_string();
    let before = lab.hv_run(&["ip", "-6", "neigh", "show", &guest, "dev", &lab.bridge]);
    assert!(
        before.trim().is_empty() || before.contains("FAILED"),
        "{before}"
    );
    let na0 = snmp6(&lab, "Icmp6InNeighborAdvertisements");
    assert_echo_reply6(&mut vm, lab.dest6, 0x6b20, "ping6 after a neighbour flush");
    assert!(
        snmp6(&lab, "Icmp6InNeighborAdvertisements") > na0,
        "the host got the reply's next hop without the fake VM's advertisement"
    );
    let after = lab.hv_run(&["ip", "-6", "neigh", "show", &guest, "dev", &lab.bridge]);
    assert!(after.contains("lladdr 52:54:00:4b:54:02"), "{after}");
}

#[test]
fn hop_limit_1_gets_time_exceeded_and_a_small_mtu_packet_too_big() {
    let lab = Lab::new(LabOptions::default());
    let mut vm = attach_and_check_gateway6(&lab);

    vm.hop_limit = 1;
    let reply = vm.ping6(lab.dest6, 0x6b30, 1, ANSWER);
    assert_eq!(
        reply,
        Some(Reply6::IcmpError {
            icmp_type: icmp6_type::TIME_EXCEEDED,
            code: 0,
            src: lab.gw_ip6,
            mtu: None,
            quoted_dst: Some(lab.dest6)
        }),
        "ping6 with hop limit 1"
    );
    vm.hop_limit = 64;

    lab.hv_run(&["ip", "link", "set", &lab.uplink, "mtu", "1280"]);
    let reply = vm.ping6_sized(lab.dest6, 0x6b31, 1, 1400, ANSWER);
    assert_eq!(
        reply,
        Some(Reply6::IcmpError {
            icmp_type: icmp6_type::PACKET_TOO_BIG,
            code: 0,
            src: lab.gw_ip6,
            mtu: Some(1280),
            quoted_dst: Some(lab.dest6)
        }),
        "1400-byte ping6 over a 1280-byte uplink"
    );
    let reply = vm.ping6_sized(lab.dest6, 0x6b32, 1, 1200, ANSWER);
    assert!(
        matches!(reply, Some(Reply6::EchoReply { id: 0x6b32, .. })),
        "1200-byte ping6 fits: {reply:?}"
    );
}

#[test]
fn nftables_forward6_drop_blocks_ipv6_only() {
    let lab = Lab::new(LabOptions {
        forward6_drop: Some(Firewall::Nftables),
        ..LabOptions::default()
    });
    let mut vm = attach_and_check_gateway6(&lab);
    assert_no_reply6(&mut vm, lab.dest6, 0x6b40, "ping6 with ip6 labfilter6 drop");
    assert_echo_reply(&mut vm, lab.dest, 0x6b41, "IPv4 ping beside an ip6 drop");

    lab.nft("delete table ip6 labfilter6");
    assert_echo_reply6(
        &mut vm,
        lab.dest6,
        0x6b42,
        "ping6 after deleting the drop table",
    );
}

#[test]
fn ip6tables_forward6_drop_blocks_ipv6_only() {
    let lab = Lab::new(LabOptions {
        forward6_drop: Some(Firewall::Iptables),
        ..LabOptions::default()
    });
    let policy = lab.hv_run(&["ip6tables", "-w", "-S", "FORWARD"]);
    assert!(policy.contains("-P FORWARD DROP"), "policy: {policy}");
    let v4 = lab.hv_run(&["iptables", "-w", "-S", "FORWARD"]);
    assert!(v4.contains("-P FORWARD ACCEPT"), "IPv4 policy: {v4}");
    let mut vm = attach_and_check_gateway6(&lab);
    assert_no_reply6(
        &mut vm,
        lab.dest6,
        0x6b50,
        "ping6 with ip6tables FORWARD DROP",
    );
    assert_echo_reply(&mut vm, lab.dest, 0x6b51, "IPv4 ping beside ip6tables DROP");

    lab.hv_run(&["ip6tables", "-w", "-P", "FORWARD", "ACCEPT"]);
    assert_echo_reply6(&mut vm, lab.dest6, 0x6b52, "ping6 after FORWARD ACCEPT");
}

#[test]
fn ip6_forward_off_blocks() {
    let lab = Lab::new(LabOptions {
        ip6_forward: false,
        ..LabOptions::default()
    });
    let sysctl = lab.hv_run(&["sysctl", "-n", "net.ipv6.conf.all.forwarding"]);
    assert_eq!(sysctl.trim(), "0");
    let mut vm = attach_and_check_gateway6(&lab);
    assert_no_reply6(&mut vm, lab.dest6, 0x6b60, "ping6 with forwarding=0");
    assert_echo_reply(
        &mut vm,
        lab.dest,
        0x6b61,
        "IPv4 ping with only v6 forwarding off",
    );

    lab.set_ip6_forward(true);
    assert_echo_reply6(&mut vm, lab.dest6, 0x6b62, "ping6 after forwarding=1");
}

/// A counter of the hypervisor's /proc/net/snmp6 (per namespace).
fn snmp6(lab: &Lab, name: &str) -> u64 {
    let text = lab.hv_run(&["cat", "/proc/net/snmp6"]);
    text.lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(name)).then(|| it.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("{name} not in /proc/net/snmp6:\n{text}"))
}

/// The tap's receive counter: frames the fake VM wrote.
fn tap_rx_packets(lab: &Lab) -> u64 {
    let path = format!("/sys/class/net/{}/statistics/rx_packets", lab.tap);
    lab.hv_run(&["cat", &path])
        .trim()
        .parse()
        .expect("a number")
}

#[test]
fn router_and_neighbour_solicitations_and_dhcpv6_reach_the_host() {
    let lab = Lab::new(LabOptions::default());
    let mut vm = FakeVm::attach(&lab);
    assert_eq!(
        vm.link_local(),
        "fe80::5054:ff:fe4b:5402".parse::<Ipv6Addr>().unwrap()
    );
    let (rx0, rs0) = (tap_rx_packets(&lab), snmp6(&lab, "Icmp6InRouterSolicits"));

    vm.router_solicit();
    vm.dhcpv6_solicit(0x00ab_cdef);
    vm.neighbour_solicit(lab.gw_ip6);
    // The answer to the NS is learned while replies are read.
    let deadline = std::time::Instant::now() + ANSWER;
    while vm.neighbour6(lab.gw_ip6).is_none() && std::time::Instant::now() < deadline {
        vm.poll_replies6(Duration::from_millis(50));
    }
    assert!(
        vm.neighbour6(lab.gw_ip6).is_some(),
        "no Neighbour Advertisement for {}",
        lab.gw_ip6
    );
    assert_eq!(vm.gateway6_mac(), vm.neighbour6(lab.gw_ip6));

    assert!(
        tap_rx_packets(&lab) >= rx0 + 3,
        "the tap did not receive RS, DHCPv6 solicit and NS"
    );
    // Counted after the checksum check (net/ipv6/icmp.c icmpv6_rcv): the RS is well-formed.
    assert_eq!(snmp6(&lab, "Icmp6InRouterSolicits"), rs0 + 1);
    assert_eq!(snmp6(&lab, "Icmp6InCsumErrors"), 0);

    // A solicitation for an address nobody has stays unanswered.
    let nobody: Ipv6Addr = "fd00:77::99".parse().unwrap();
    assert_eq!(vm.resolve6(nobody, SILENCE), None);
}
