//! Self-tests of the lab and the fake VM: the healthy lab forwards, and each knob that should
//! break forwarding does break it — and stops breaking it when turned back. Run as root; each test
//! builds its own namespaces, so they run in parallel.

use std::net::Ipv4Addr;
use std::time::Duration;

use kvmtrace_lab::lab::{netns_path, Firewall, Lab, LabOptions, MASQUERADE_RULESET};
use kvmtrace_lab::vm::{tcp_flags, FakeVm, Reply};

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
