//! `kvmtrace doctor` against real misconfigurations: each test builds a lab, breaks one thing
//! the way an operator would, runs the binary in the hypervisor namespace and asserts the check
//! that must flag it (status, evidence). Where the fix is a command, the test runs it and checks
//! that doctor is then satisfied, so the advice printed is known to work. Needs root.

mod common;

use common::{Run, BIN};
use kvmtrace_lab::lab::{netns_path, Firewall, Lab, LabOptions};
use kvmtrace_lab::vm::FakeVm;
use serde_json::Value;
use std::os::fd::AsRawFd as _;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `sh -c "<prelude>; exec kvmtrace doctor vnet0 --json"` in the lab's hypervisor
/// namespace.
fn doctor_after(lab: &Lab, prelude: &str, args: &[&str]) -> Run {
    let script = format!("{prelude}\nexec \"$0\" doctor \"$@\"");
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.hv, "sh", "-c", &script, BIN])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run kvmtrace doctor");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .collect();
    Run {
        code: out.status.code().unwrap_or(-1),
        lines,
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The checks of the IPv6 half of the path.
const V6_CHECKS: [&str; 8] = [
    "br_netfilter6",
    "ip6_forward",
    "rpfilter6",
    "forward_filter6",
    "nat6",
    "default_route6",
    "gateway_neighbour6",
    "ra_service",
];

/// The lab's IPv6 half (the lab builds it: fd00:77::1/64 on br0, 2001:db8:2::2/64 on up0, a
/// default route via the outside's 2001:db8:2::1, forwarding on; the outside holds
/// 2001:db8:ffff::1 and a route back to fd00:77::/64), with the gateway's neighbour entry made
/// REACHABLE by one datagram.
fn add_ipv6(lab: &Lab) {
    // One datagram makes the kernel solicit the gateway (the image has no ping).
    lab.hv_run(&["bash", "-c", "echo x > /dev/udp/2001:db8:ffff::1/9"]);
    wait_for(
        lab,
        &["ip", "-6", "neigh", "show", "2001:db8:2::1", "dev", "up0"],
        "REACHABLE",
        Duration::from_secs(5),
    );
}

/// Takes the IPv6 half away from the lab's hypervisor: no global address on br0 or up0, no
/// IPv6 default route (an IPv4-only host).
fn without_ipv6(lab: &Lab) {
    for dev in ["br0", "up0"] {
        lab.hv_run(&["ip", "-6", "addr", "flush", "dev", dev, "scope", "global"]);
    }
    lab.hv_run(&["ip", "-6", "route", "flush", "default"]);
}

/// A stand-in router-advertisement daemon (setup installs no radvd): a process whose name
/// is `radvd`, started with `-C FILE` and a radvd configuration for br0, as doctor finds a
/// real one. Killed with the lab's namespace.
fn radvd_standin(lab: &Lab) -> std::process::Child {
    let dir = std::env::temp_dir().join(format!("kvmtrace-doctor-radvd-{}", lab.id));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let conf = dir.join("radvd.conf");
    std::fs::write(
        &conf,
        "interface br0 {\n    AdvSendAdvert on;\n    prefix fd00:77::/64 { };\n};\n",
    )
    .expect("write radvd.conf");
    // A script's process name is the script's file name (fs/exec.c: comm from the filename).
    let bin = dir.join("radvd");
    std::fs::write(&bin, "#!/bin/sh\nsleep 600\n").expect("write stand-in");
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let child = lab
        .hv_cmd(bin.to_str().expect("utf-8 path"))
        .args(["-C", conf.to_str().expect("utf-8 path")])
        .spawn()
        .expect("start the radvd stand-in");
    // Until the script runs, its name is `ip` (ip netns exec).
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{}/comm", child.id()))
        .map(|c| c.trim() != "radvd")
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "the radvd stand-in did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn doctor(lab: &Lab) -> Run {
    doctor_after(lab, "", &["vnet0", "--json"])
}

/// The check called `name` (panics with the whole output when it is missing).
fn check<'a>(run: &'a Run, name: &str) -> &'a Value {
    run.lines
        .iter()
        .find(|v| v["type"] == "check" && v["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}:\n{}", run.dump()))
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

/// Asserts one check's status and that its evidence contains every fragment.
#[track_caller]
fn assert_check(run: &Run, name: &str, status: &str, evidence: &[&str]) {
    let c = check(run, name);
    assert_eq!(s(c, "status"), status, "{name}:\n{}", run.dump());
    for e in evidence {
        assert!(
            s(c, "evidence").contains(e),
            "{name} evidence lacks {e:?}:\n{}",
            run.dump()
        );
    }
}

/// Runs a check's fix in the hypervisor namespace (it must be a command line).
fn apply_fix(lab: &Lab, run: &Run, name: &str) {
    let fix = s(check(run, name), "fix").to_string();
    assert!(!fix.is_empty(), "{name} has no fix:\n{}", run.dump());
    lab.hv_run(&["sh", "-c", &fix]);
}

/// Keeps a UDP socket bound to 0.0.0.0:67 in the lab's hypervisor namespace (a stand-in DHCP
/// server) for as long as it lives.
fn dhcp_listener(lab: &Lab) -> std::net::UdpSocket {
    let ns = std::fs::File::open(netns_path(&lab.hv)).expect("open netns");
    std::thread::scope(|sc| {
        sc.spawn(|| {
            // SAFETY: setns on an fd we own; only this short-lived thread changes namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            std::net::UdpSocket::bind("0.0.0.0:67").expect("bind UDP 67")
        })
        .join()
        .expect("listener thread")
    })
}

/// Waits until `cmd` (run in the hypervisor namespace) prints something containing `want`.
fn wait_for(lab: &Lab, cmd: &[&str], want: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let out = lab.hv_run(cmd);
        if out.contains(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{}` never showed {want:?}; last: {out}",
            cmd.join(" ")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A VM that holds the tap open (carrier) and has resolved its gateway.
fn running_vm(lab: &Lab) -> FakeVm {
    let mut vm = FakeVm::attach(lab);
    assert!(
        vm.resolve_gateway(Duration::from_secs(3)),
        "the lab's gateway did not answer ARP"
    );
    wait_for(
        lab,
        &["cat", "/sys/class/net/vnet0/brport/state"],
        "3",
        Duration::from_secs(5),
    );
    vm
}

#[test]
fn healthy_lab_passes_every_check() {
    let lab = Lab::new(LabOptions::default());
    without_ipv6(&lab);
    let mut vm = running_vm(&lab);
    // Traffic through the gateway leaves its neighbour entry REACHABLE.
    assert!(
        vm.ping(lab.dest, 0x4b54, 1, Duration::from_secs(2))
            .is_some(),
        "the healthy lab does not deliver"
    );
    let _dhcp = dhcp_listener(&lab);
    let run = doctor(&lab);
    assert_eq!(run.code, 0, "{}", run.dump());
    let checks: Vec<&Value> = run.lines.iter().filter(|v| v["type"] == "check").collect();
    assert_eq!(checks.len(), 21, "{}", run.dump());
    for c in &checks {
        assert_eq!(c["schema"], 1);
        assert!(c.get("fix").is_none(), "{}", run.dump());
        // The lab has no IPv6: the IPv6 half is skipped, with the reason.
        if V6_CHECKS.contains(&s(c, "name")) {
            assert_eq!(s(c, "status"), "skip", "{}", run.dump());
            assert_eq!(
                s(c, "evidence"),
                "br0 has no global IPv6 address and no IPv6 destination was given: the VM has no IPv6 path through this host"
            );
        } else {
            assert_eq!(s(c, "status"), "pass", "{}", run.dump());
        }
    }
    assert_check(&run, "tap", "pass", &["vnet0 (tap) is up with carrier"]);
    assert_check(
        &run,
        "bridge_port",
        "pass",
        &["vnet0 is a port of br0", "state forwarding"],
    );
    assert_check(
        &run,
        "bridge",
        "pass",
        &["br0 is up with 10.77.0.1/24", "subnet 10.77.0.0/24"],
    );
    assert_check(
        &run,
        "mtu",
        "pass",
        &["vnet0 1500, br0 1500, up0 1500 (uplink)"],
    );
    assert_check(&run, "ip_forward", "pass", &["net.ipv4.ip_forward = 1"]);
    assert_check(
        &run,
        "forward_filter",
        "pass",
        &["no nftables or iptables-nft chain at the forward hook"],
    );
    assert_check(
        &run,
        "nat",
        "pass",
        &["source-NATed by ip labnat post: `ip saddr 10.77.0.0/24 oifname \"up0\" masquerade`"],
    );
    assert_check(
        &run,
        "default_route",
        "pass",
        &["default via 192.0.2.1 dev up0"],
    );
    assert_check(
        &run,
        "gateway_neighbour",
        "pass",
        &["192.0.2.1 on up0 is REACHABLE"],
    );
    assert_check(&run, "dhcp", "pass", &["UDP 0.0.0.0:67 (pid "]);
    let summary = run
        .lines
        .iter()
        .find(|v| v["type"] == "summary")
        .unwrap_or_else(|| panic!("no summary:\n{}", run.dump()));
    assert_eq!(summary["pass"], 13);
    assert_eq!(summary["skip"], 8);
    assert_eq!(summary["tap"], "vnet0");

    // The text view says the same.
    let text = doctor_after(&lab, "", &["vnet0"]);
    assert_eq!(text.code, 0, "{}", text.dump());
    assert!(
        text.stdout
            .contains("21 checks: 13 pass, 0 warn, 0 fail, 8 skip"),
        "{}",
        text.dump()
    );
}

#[test]
fn ip_forward_off_fails_and_the_fix_works() {
    let lab = Lab::new(LabOptions {
        ip_forward: false,
        ..Default::default()
    });
    let run = doctor(&lab);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_check(&run, "ip_forward", "fail", &["net.ipv4.ip_forward = 0"]);
    assert_eq!(
        s(check(&run, "ip_forward"), "fix"),
        "sysctl -w net.ipv4.ip_forward=1"
    );
    // The text view flags it with its fix.
    let text = doctor_after(&lab, "", &["vnet0"]);
    assert_eq!(text.code, 1);
    assert!(
        text.stdout
            .contains("FAIL  ip_forward         net.ipv4.ip_forward = 0"),
        "{}",
        text.dump()
    );
    assert!(
        text.stdout.contains("fix: sysctl -w net.ipv4.ip_forward=1"),
        "{}",
        text.dump()
    );
    apply_fix(&lab, &run, "ip_forward");
    assert_check(
        &doctor(&lab),
        "ip_forward",
        "pass",
        &["net.ipv4.ip_forward = 1"],
    );
}

#[test]
fn forward_policy_drop_nftables_fails_and_the_fix_works() {
    let lab = Lab::new(LabOptions {
        forward_drop: Some(Firewall::Nftables),
        ..Default::default()
    });
    let run = doctor(&lab);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_check(
        &run,
        "forward_filter",
        "fail",
        &[
            "inet labfilter forward (filter, hook forward, priority 0, policy drop, 0 rules)",
            "new connections from 10.77.0.0/24 (br0 → up0) are dropped by its policy",
            "replies to 10.77.0.0/24 (up0 → br0) are dropped by its policy",
        ],
    );
    assert!(s(check(&run, "forward_filter"), "fix")
        .starts_with("nft 'insert rule inet labfilter forward"));
    apply_fix(&lab, &run, "forward_filter");
    assert_check(
        &doctor(&lab),
        "forward_filter",
        "pass",
        &["are accepted by rule `iifname \"br0\""],
    );
}

#[test]
fn forward_policy_drop_iptables_fails_and_the_fix_works() {
    let lab = Lab::new(LabOptions {
        forward_drop: Some(Firewall::Iptables),
        ..Default::default()
    });
    let run = doctor(&lab);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_check(
        &run,
        "forward_filter",
        "fail",
        &[
            "ip filter FORWARD (filter, hook forward, priority 0, policy drop, 0 rules)",
            "are dropped by its policy",
        ],
    );
    assert!(s(check(&run, "forward_filter"), "fix")
        .starts_with("iptables -I FORWARD -i br0 -s 10.77.0.0/24 -j ACCEPT"));
    apply_fix(&lab, &run, "forward_filter");
    let after = doctor(&lab);
    assert_check(
        &after,
        "forward_filter",
        "pass",
        &["ct state established,related accept"],
    );
    assert_eq!(after.code, 0, "{}", after.dump());
}

#[test]
fn missing_masquerade_fails_and_the_fix_works() {
    let lab = Lab::new(LabOptions {
        masquerade: false,
        ..Default::default()
    });
    let run = doctor(&lab);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_check(
        &run,
        "nat",
        "fail",
        &[
            "no nftables or iptables-nft rule source-NATs new connections from 10.77.0.0/24 leaving via up0",
            "10.77.0.0/24 is a private network",
        ],
    );
    apply_fix(&lab, &run, "nat");
    assert_check(&doctor(&lab), "nat", "pass", &["masquerade"]);
}

#[test]
fn tap_not_in_a_bridge_fails_and_the_fix_works() {
    let lab = Lab::new(LabOptions::default());
    let _vm = running_vm(&lab);
    let run = doctor_after(&lab, "ip link set vnet0 nomaster", &["vnet0", "--json"]);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_check(
        &run,
        "bridge_port",
        "fail",
        &["vnet0 has no master", "bridges here: br0"],
    );
    assert_eq!(
        s(check(&run, "bridge_port"), "fix"),
        "ip link set dev vnet0 master br0"
    );
    // Without a bridge the VM's network is unknown: the checks that need it say so.
    assert_check(&run, "nat", "skip", &["vnet0 is in no bridge"]);
    apply_fix(&lab, &run, "bridge_port");
    wait_for(
        &lab,
        &["cat", "/sys/class/net/vnet0/brport/state"],
        "3",
        Duration::from_secs(5),
    );
    assert_check(&doctor(&lab), "bridge_port", "pass", &["state forwarding"]);
}

#[test]
fn tap_down_fails_and_the_fix_works() {
    let lab = Lab::new(LabOptions::default());
    let _vm = running_vm(&lab);
    let run = doctor_after(&lab, "ip link set vnet0 down", &["vnet0", "--json"]);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_check(&run, "tap", "fail", &["vnet0 is administratively down"]);
    assert_check(&run, "bridge_port", "warn", &["state disabled"]);
    assert_eq!(s(check(&run, "tap"), "fix"), "ip link set dev vnet0 up");
    apply_fix(&lab, &run, "tap");
    assert_check(&doctor(&lab), "tap", "pass", &["is up with carrier"]);
}

#[test]
fn tap_without_a_vm_warns_no_carrier() {
    let lab = Lab::new(LabOptions::default());
    let run = doctor(&lab);
    assert_eq!(run.code, 0, "warnings only:\n{}", run.dump());
    assert_check(
        &run,
        "tap",
        "warn",
        &["has no carrier", "nothing holds the tap open"],
    );
}

#[test]
fn strict_rp_filter_warns_and_the_fix_works() {
    let lab = Lab::new(LabOptions::default());
    let run = doctor_after(
        &lab,
        "sysctl -q -w net.ipv4.conf.all.rp_filter=1",
        &["vnet0", "--json"],
    );
    assert_check(
        &run,
        "rp_filter",
        "warn",
        &[
            "net.ipv4.conf.all.rp_filter = 1 (strict)",
            "asymmetric routing",
        ],
    );
    assert_eq!(
        s(check(&run, "rp_filter"), "fix"),
        "sysctl -w net.ipv4.conf.all.rp_filter=2"
    );
    apply_fix(&lab, &run, "rp_filter");
    assert_check(
        &doctor(&lab),
        "rp_filter",
        "pass",
        &["net.ipv4.conf.all.rp_filter = 2 (loose)"],
    );
}

#[test]
fn tap_mtu_below_bridge_mtu_fails_and_the_fix_works() {
    let lab = Lab::new(LabOptions::default());
    let run = doctor_after(
        &lab,
        "ip link set vnet0 mtu 1400 && ip link set br0 mtu 1500",
        &["vnet0", "--json"],
    );
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_check(
        &run,
        "mtu",
        "fail",
        &[
            "vnet0 1400, br0 1500, up0 1500 (uplink)",
            "drops any bigger than 1400",
        ],
    );
    apply_fix(&lab, &run, "mtu");
    assert_check(&doctor(&lab), "mtu", "pass", &["vnet0 1500, br0 1500"]);
}

#[test]
fn uplink_mtu_below_bridge_mtu_warns() {
    let lab = Lab::new(LabOptions::default());
    let run = doctor_after(&lab, "ip link set up0 mtu 1400", &["vnet0", "--json"]);
    assert_check(
        &run,
        "mtu",
        "warn",
        &["up0 1400 (uplink)", "path-MTU black hole"],
    );
}

#[test]
fn no_default_route_fails() {
    let lab = Lab::new(LabOptions::default());
    let run = doctor_after(&lab, "ip route del default", &["vnet0", "--json"]);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_check(
        &run,
        "default_route",
        "fail",
        &["no default route in the main table"],
    );
    assert_check(&run, "gateway_neighbour", "skip", &["no default route"]);
}

#[test]
fn unanswered_gateway_fails_gateway_neighbour() {
    let lab = Lab::new(LabOptions::default());
    // A default route via an address nobody has; one packet makes the kernel try ARP, which
    // fails after its probes (about 3 s).
    lab.hv_run(&[
        "ip",
        "route",
        "replace",
        "default",
        "via",
        "192.0.2.99",
        "dev",
        "up0",
    ]);
    lab.hv_run(&["bash", "-c", "echo x > /dev/udp/203.0.113.1/9"]);
    wait_for(
        &lab,
        &["ip", "neigh", "show", "192.0.2.99", "dev", "up0"],
        "FAILED",
        Duration::from_secs(10),
    );
    let run = doctor(&lab);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_check(
        &run,
        "default_route",
        "pass",
        &["default via 192.0.2.99 dev up0"],
    );
    assert_check(
        &run,
        "gateway_neighbour",
        "fail",
        &["192.0.2.99 on up0 is FAILED", "did not answer ARP"],
    );
}

#[test]
fn conntrack_table_near_its_maximum_fails() {
    let lab = Lab::new(LabOptions::default());
    // nf_conntrack_max is global and read-only outside the initial namespace
    // (net/netfilter/nf_conntrack_standalone.c), and lowering it there would touch the whole
    // host. So: real entries in the lab (UDP sent from the hypervisor namespace), and a private
    // mount namespace (the one `ip netns exec` makes) where a file holding the current count is
    // bind-mounted over nf_conntrack_max, for doctor's eyes only.
    let fake = std::env::temp_dir().join(format!("kvmtrace-doctor-ctmax-{}", lab.id));
    let prelude = format!(
        "bash -c 'for p in 1 2 3 4; do echo x > /dev/udp/203.0.113.1/$p; done' || exit 97\n\
         c=$(cat /proc/sys/net/netfilter/nf_conntrack_count) || exit 97\n\
         [ \"$c\" -gt 0 ] || exit 96\n\
         echo \"$c\" > {f} && mount --bind {f} /proc/sys/net/netfilter/nf_conntrack_max || exit 98",
        f = fake.display()
    );
    let run = doctor_after(&lab, &prelude, &["vnet0", "--json"]);
    let faked = std::fs::read_to_string(&fake).unwrap_or_default();
    let _ = std::fs::remove_file(&fake);
    // `ip netns exec` gives the script its own mount namespace, so the bind mount works for
    // root; when it does not, the check was not exercised and the test must say so by failing.
    assert_ne!(
        run.code,
        98,
        "cannot bind-mount over nf_conntrack_max, the check was not exercised:\n{}",
        run.dump()
    );
    assert_ne!(
        run.code,
        97,
        "could not send UDP or read nf_conntrack_count in the lab:\n{}",
        run.dump()
    );
    assert_ne!(
        run.code,
        96,
        "the lab made no conntrack entries:\n{}",
        run.dump()
    );
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_check(&run, "conntrack", "fail", &["table full, dropping packet"]);
    // The limit doctor read is the one faked; the count may have grown by an entry or two
    // (the lab's own traffic) between the script's read and doctor's, so the table is at or
    // over its maximum, and the percentage printed is the one those two numbers give.
    let ev = s(check(&run, "conntrack"), "evidence");
    let number = |after: &str| -> u64 {
        ev.split(after)
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {after:?} in {ev}"))
    };
    let (count, max) = (
        number("nf_conntrack_count = "),
        number("nf_conntrack_max = "),
    );
    assert_eq!(max.to_string(), faked.trim(), "{ev}");
    assert!(count >= max, "{ev}");
    assert!(
        ev.contains(&format!("({}% used)", count * 100 / max)),
        "{ev}"
    );
}

#[test]
fn unknown_vm_exits_2() {
    let lab = Lab::new(LabOptions::default());
    let run = doctor_after(&lab, "", &["nosuchvm"]);
    assert_eq!(run.code, 2, "{}", run.dump());
    assert!(
        run.stderr.contains("nosuchvm") && run.stderr.contains("vnet0"),
        "{}",
        run.dump()
    );
}

#[test]
fn healthy_ipv6_lab_passes_every_check() {
    let lab = Lab::new(LabOptions::default());
    let mut vm = running_vm(&lab);
    assert!(
        vm.ping(lab.dest, 0x4b54, 1, Duration::from_secs(2))
            .is_some(),
        "the healthy lab does not deliver"
    );
    add_ipv6(&lab);
    let _dhcp = dhcp_listener(&lab);
    let mut radvd = radvd_standin(&lab);
    let run = doctor(&lab);
    let _ = radvd.kill();
    let _ = radvd.wait();
    assert_eq!(run.code, 0, "{}", run.dump());
    let checks: Vec<&Value> = run.lines.iter().filter(|v| v["type"] == "check").collect();
    assert_eq!(checks.len(), 21, "{}", run.dump());
    for c in &checks {
        // The lab routes its unique-local fd00:77::/64 without NAT66 (the outside has a route
        // back), which the host cannot see: nat6 warns, as it must for a real host. Every
        // other check passes.
        let want = if s(c, "name") == "nat6" {
            "warn"
        } else {
            "pass"
        };
        assert_eq!(s(c, "status"), want, "{}", run.dump());
    }
    assert_check(
        &run,
        "br_netfilter6",
        "pass",
        &["net.bridge.bridge-nf-call-ip6tables = 1, br0 nf_call_ip6tables = 0, but br0 has no other port than vnet0: no frame is bridged between ports"],
    );
    assert_check(
        &run,
        "nat6",
        "warn",
        &["fd00:77::/64 is a unique-local (ULA, fc00::/7) prefix: replies come back only if the upstream network routes fd00:77::/64 to this host"],
    );
    assert_check(
        &run,
        "ip6_forward",
        "pass",
        &["net.ipv6.conf.all.forwarding = 1 (br0 forwarding = 1, up0 forwarding = 1)"],
    );
    assert_check(
        &run,
        "rpfilter6",
        "pass",
        &["no IPv6 reverse-path filter rule"],
    );
    assert_check(
        &run,
        "forward_filter6",
        "pass",
        &["no nftables or ip6tables-nft chain at the IPv6 forward hook"],
    );
    assert_check(
        &run,
        "default_route6",
        "pass",
        &["default via 2001:db8:2::1 dev up0 table main metric 1024"],
    );
    assert_check(
        &run,
        "gateway_neighbour6",
        "pass",
        &["2001:db8:2::1 on up0 is REACHABLE"],
    );
    assert_check(
        &run,
        "ra_service",
        "pass",
        &["(radvd) advertises on br0 (", "radvd.conf)"],
    );
    // The IPv4 half is judged as before.
    assert_check(&run, "ip_forward", "pass", &["net.ipv4.ip_forward = 1"]);
    assert_check(
        &run,
        "default_route",
        "pass",
        &["default via 192.0.2.1 dev up0"],
    );

    // Without the daemon nothing advertises the prefix to the guest.
    let run = doctor(&lab);
    assert_check(
        &run,
        "ra_service",
        "warn",
        &["no radvd or dnsmasq runs in this namespace: nothing sends router advertisements on br0"],
    );
    assert!(
        s(check(&run, "ra_service"), "fix")
            .contains("interface br0 { AdvSendAdvert on; prefix fd00:77::/64 { }; };"),
        "{}",
        run.dump()
    );
}

#[test]
fn ipv6_forwarding_off_fails_and_the_fix_works() {
    let lab = Lab::new(LabOptions::default());
    add_ipv6(&lab);
    lab.hv_run(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=0"]);
    let run = doctor(&lab);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_check(
        &run,
        "ip6_forward",
        "fail",
        &[
            "net.ipv6.conf.all.forwarding = 0 (br0 forwarding = 0, up0 forwarding = 0)",
            "the VM's IPv6 packets go no further than the host",
        ],
    );
    assert_eq!(
        s(check(&run, "ip6_forward"), "fix"),
        "sysctl -w net.ipv6.conf.all.forwarding=1"
    );
    // IPv4 forwarding is another switch, still on.
    assert_check(&run, "ip_forward", "pass", &["net.ipv4.ip_forward = 1"]);
    apply_fix(&lab, &run, "ip6_forward");
    assert_check(
        &doctor(&lab),
        "ip6_forward",
        "pass",
        &["net.ipv6.conf.all.forwarding = 1"],
    );
}

#[test]
fn ip6tables_forward_policy_drop_fails_and_the_fix_works() {
    let lab = Lab::new(LabOptions::default());
    add_ipv6(&lab);
    lab.hv_run(&["ip6tables", "-w", "-P", "FORWARD", "DROP"]);
    let run = doctor(&lab);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_check(
        &run,
        "forward_filter6",
        "fail",
        &[
            "ip6 filter FORWARD (filter, hook forward, priority 0, policy drop, 0 rules)",
            "new connections from fd00:77::/64 (br0 → up0) are dropped by its policy",
            "replies to fd00:77::/64 (up0 → br0) are dropped by its policy",
        ],
    );
    assert_eq!(
        s(check(&run, "forward_filter6"), "fix"),
        "ip6tables -I FORWARD -i br0 -s fd00:77::/64 -j ACCEPT && ip6tables -I FORWARD -o br0 -d fd00:77::/64 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    );
    // ip6tables is not on the IPv4 path.
    assert_check(&run, "forward_filter", "pass", &[]);
    apply_fix(&lab, &run, "forward_filter6");
    assert_check(
        &doctor(&lab),
        "forward_filter6",
        "pass",
        &[
            "are accepted by rule `iifname \"br0\" ip6 saddr fd00:77::/64 accept`",
            "are accepted by rule `oifname \"br0\" ip6 daddr fd00:77::/64 ct state established,related accept`",
        ],
    );
}

#[test]
fn nft_ip6_forward_drop_fails_and_the_fix_works() {
    let lab = Lab::new(LabOptions::default());
    add_ipv6(&lab);
    lab.nft("table ip6 lab6 {\n    chain fw6 {\n        type filter hook forward priority 0; policy drop;\n        ip6 saddr fd00:99::/64 accept\n    }\n}\n");
    let run = doctor(&lab);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_check(
        &run,
        "forward_filter6",
        "fail",
        &[
            "ip6 lab6 fw6 (filter, hook forward, priority 0, policy drop, 1 rule)",
            "new connections from fd00:77::/64 (br0 → up0) are dropped by its policy",
        ],
    );
    let fix = s(check(&run, "forward_filter6"), "fix");
    assert!(
        fix.starts_with(
            "nft 'insert rule ip6 lab6 fw6 iifname \"br0\" ip6 saddr fd00:77::/64 accept'"
        ),
        "{}",
        run.dump()
    );
    assert_check(&run, "forward_filter", "pass", &[]);
    assert_check(
        &run,
        "forward_filter6",
        "fail",
        &["replies to fd00:77::/64 (up0 → br0) are dropped by its policy"],
    );
    apply_fix(&lab, &run, "forward_filter6");
    assert_check(
        &doctor(&lab),
        "forward_filter6",
        "pass",
        &["new connections from fd00:77::/64 (br0 → up0) are accepted by rule `iifname \"br0\" ip6 saddr fd00:77::/64 accept`"],
    );
}

#[test]
fn br_netfilter6_warns_when_ip6tables_drops_guest_to_guest_frames_and_the_fix_works() {
    let lab = Lab::new(LabOptions::default());
    lab.hv_run(&["ip6tables", "-w", "-P", "FORWARD", "DROP"]);
    // One port: nothing is bridged between ports, whatever the hook does.
    let run = doctor(&lab);
    assert_check(
        &run,
        "br_netfilter6",
        "pass",
        &["net.bridge.bridge-nf-call-ip6tables = 1, br0 nf_call_ip6tables = 0, but br0 has no other port than vnet0"],
    );
    // A second guest on the bridge: frames between the two pass the IPv6 FORWARD hook.
    lab.add_tap("vnet1");
    let run = doctor(&lab);
    assert_check(
        &run,
        "br_netfilter6",
        "warn",
        &[
            "net.bridge.bridge-nf-call-ip6tables = 1, br0 nf_call_ip6tables = 0: frames between ports of the bridge (guest to guest) also pass the IPv6 FORWARD hook",
            "ip6 filter FORWARD (filter, hook forward, priority 0, policy drop, 0 rules): frames between ports of the bridge (guest to guest) are dropped by its policy",
        ],
    );
    assert_eq!(
        s(check(&run, "br_netfilter6"), "fix"),
        "sysctl -w net.bridge.bridge-nf-call-ip6tables=0"
    );
    // ip6tables is not on the IPv4 path.
    assert_check(
        &run,
        "br_netfilter",
        "pass",
        &["also pass the IPv4 FORWARD hook (no chain there: accepted)"],
    );
    apply_fix(&lab, &run, "br_netfilter6");
    assert_check(
        &doctor(&lab),
        "br_netfilter6",
        "pass",
        &["net.bridge.bridge-nf-call-ip6tables = 0, br0 nf_call_ip6tables = 0: frames bridged on br0 skip the IPv6 hooks"],
    );
    // The bridge's own option does the same with the global switch off.
    lab.hv_run(&[
        "ip",
        "link",
        "set",
        "dev",
        "br0",
        "type",
        "bridge",
        "nf_call_ip6tables",
        "1",
    ]);
    let run = doctor(&lab);
    assert_check(
        &run,
        "br_netfilter6",
        "warn",
        &["net.bridge.bridge-nf-call-ip6tables = 0, br0 nf_call_ip6tables = 1: frames between ports"],
    );
    assert_eq!(
        s(check(&run, "br_netfilter6"), "fix"),
        "ip link set dev br0 type bridge nf_call_ip6tables 0"
    );
    apply_fix(&lab, &run, "br_netfilter6");
    assert_check(
        &doctor(&lab),
        "br_netfilter6",
        "pass",
        &["skip the IPv6 hooks"],
    );
}

#[test]
fn nat6_warns_for_the_ula_prefix_and_the_nat66_fix_works() {
    let lab = Lab::new(LabOptions::default());
    let run = doctor(&lab);
    // A warning, not a failure: a routed prefix needs no NAT.
    assert_eq!(run.code, 0, "{}", run.dump());
    assert_check(
        &run,
        "nat6",
        "warn",
        &[
            "no nftables or ip6tables-nft rule source-NATs new connections from fd00:77::/64 leaving via up0 (0 nat chain(s) at IPv6 postrouting)",
            "fd00:77::/64 is a unique-local (ULA, fc00::/7) prefix: replies come back only if the upstream network routes fd00:77::/64 to this host; otherwise it needs NAT66",
        ],
    );
    assert_eq!(
        s(check(&run, "nat6"), "fix"),
        "nft 'add table ip6 nat' && nft 'add chain ip6 nat postrouting { type nat hook postrouting priority srcnat; }' && nft 'add rule ip6 nat postrouting ip6 saddr fd00:77::/64 oifname \"up0\" masquerade'"
    );
    // The IPv4 masquerade is not for IPv6.
    assert_check(&run, "nat", "pass", &["ip labnat post"]);
    apply_fix(&lab, &run, "nat6");
    let run = doctor(&lab);
    assert_check(
        &run,
        "nat6",
        "pass",
        &["new connections from fd00:77::/64 leaving via up0 are source-NATed by ip6 nat postrouting: `ip6 saddr fd00:77::/64 oifname \"up0\" masquerade` (handle "],
    );
    assert!(check(&run, "nat6").get("fix").is_none(), "{}", run.dump());
}

#[test]
fn nat6_passes_naming_an_existing_masquerade_rule() {
    let lab = Lab::new(LabOptions::default());
    lab.nft("table inet labnat6 {\n    chain post {\n        type nat hook postrouting priority srcnat;\n        ip6 saddr fd00:77::/64 oifname \"up0\" masquerade\n    }\n}\n");
    let run = doctor(&lab);
    assert_check(
        &run,
        "nat6",
        "pass",
        &["new connections from fd00:77::/64 leaving via up0 are source-NATed by inet labnat6 post: `meta nfproto ipv6 ip6 saddr fd00:77::/64 oifname \"up0\" masquerade` (handle "],
    );
    // ip6tables-nft's MASQUERADE, to a destination.
    lab.hv_run(&["nft", "delete", "table", "inet", "labnat6"]);
    lab.hv_run(&[
        "ip6tables",
        "-w",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "fd00:77::/64",
        "-o",
        "up0",
        "-j",
        "MASQUERADE",
    ]);
    let run = doctor_after(&lab, "", &["vnet0", "2001:db8:ffff::1", "--json"]);
    assert_check(
        &run,
        "nat6",
        "pass",
        &["new connections from fd00:77::/64 to 2001:db8:ffff::1 leaving via up0 are source-NATed by ip6 nat POSTROUTING: `oifname \"up0\" ip6 saddr fd00:77::/64 masquerade` (handle "],
    );
    // A global prefix on the bridge instead: routed, no NAT needed, no rule looked for.
    lab.hv_run(&["ip", "-6", "addr", "flush", "dev", "br0", "scope", "global"]);
    lab.hv_run(&[
        "ip",
        "-6",
        "addr",
        "add",
        "2001:db8:77::1/64",
        "dev",
        "br0",
        "nodad",
    ]);
    assert_check(
        &doctor(&lab),
        "nat6",
        "pass",
        &["2001:db8:77::/64 is a global prefix: no NAT is needed for a routed global prefix"],
    );
}

#[test]
fn ipv6_rpfilter_rule_fails_when_the_prefix_is_routed_elsewhere() {
    let lab = Lab::new(LabOptions::default());
    add_ipv6(&lab);
    lab.nft("table inet labrp {\n    chain pre {\n        type filter hook prerouting priority raw;\n        meta nfproto ipv6 fib saddr . iif oif missing drop\n    }\n}\n");
    let run = doctor(&lab);
    assert_check(
        &run,
        "rpfilter6",
        "pass",
        &["inet labrp pre: `meta nfproto ipv6 fib saddr . iif oif missing drop`"],
    );
    // A more preferred route sends the VM's prefix out of the uplink.
    lab.hv_run(&[
        "ip",
        "-6",
        "route",
        "add",
        "fd00:77::/64",
        "dev",
        "up0",
        "metric",
        "10",
    ]);
    let run = doctor(&lab);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_check(
        &run,
        "rpfilter6",
        "fail",
        &[
            "new connections from fd00:77::/64 (br0 → up0) are dropped by inet labrp pre: `meta nfproto ipv6 fib saddr . iif oif missing drop`",
            "(fd00:77::/64 is routed via up0)",
        ],
    );
    assert_eq!(
        s(check(&run, "rpfilter6"), "fix"),
        "ip -6 route replace fd00:77::/64 dev br0 metric 10"
    );
    apply_fix(&lab, &run, "rpfilter6");
    assert_check(&doctor(&lab), "rpfilter6", "pass", &[]);
}

#[test]
fn blackholed_ipv6_destination_fails_the_route_check_and_the_fix_works() {
    let lab = Lab::new(LabOptions::default());
    add_ipv6(&lab);
    let args = ["vnet0", "2001:db8:ffff::1", "--json"];
    let run = doctor_after(&lab, "", &args);
    assert_eq!(run.code, 0, "{}", run.dump());
    assert!(run.lines.iter().all(|v| v["name"] != "default_route6"));
    assert_check(
        &run,
        "route6",
        "pass",
        &[
            "`ip -6 route get 2001:db8:ffff::1 from fd00:77::2 iif br0`: default via 2001:db8:2::1 dev up0 table main metric 1024",
            "the gateway 2001:db8:2::1 on up0 is REACHABLE",
        ],
    );
    assert_check(
        &run,
        "forward_filter6",
        "pass",
        &["no nftables or ip6tables-nft chain at the IPv6 forward hook"],
    );

    lab.hv_run(&[
        "ip",
        "-6",
        "route",
        "add",
        "blackhole",
        "2001:db8:ffff::/48",
    ]);
    let run = doctor_after(&lab, "", &args);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_check(
        &run,
        "route6",
        "fail",
        &[
            "is refused (EINVAL: a blackhole route): blackhole 2001:db8:ffff::/48 table main metric 1024",
            "every packet to 2001:db8:ffff::1 is dropped silently",
        ],
    );
    assert_eq!(
        s(check(&run, "route6"), "fix"),
        "ip -6 route del blackhole 2001:db8:ffff::/48 table main"
    );
    assert_check(
        &run,
        "gateway_neighbour6",
        "skip",
        &["no route to the destination"],
    );
    apply_fix(&lab, &run, "route6");
    assert_check(&doctor_after(&lab, "", &args), "route6", "pass", &[]);

    // In a table of its own, chosen by a policy rule for the VM's prefix.
    lab.hv_run(&[
        "ip",
        "-6",
        "route",
        "add",
        "unreachable",
        "2001:db8:ffff::/48",
        "table",
        "100",
    ]);
    lab.hv_run(&[
        "ip",
        "-6",
        "rule",
        "add",
        "from",
        "fd00:77::/64",
        "table",
        "100",
        "pref",
        "100",
    ]);
    let run = doctor_after(&lab, "", &args);
    assert_check(
        &run,
        "route6",
        "fail",
        &[
            "(EHOSTUNREACH: an unreachable route): unreachable 2001:db8:ffff::/48 table 100 metric 1024 (chosen by policy rule 100: lookup 100)",
        ],
    );
    assert_eq!(
        s(check(&run, "route6"), "fix"),
        "ip -6 route del unreachable 2001:db8:ffff::/48 table 100"
    );
}

#[test]
fn ipv4_destination_route_check() {
    let lab = Lab::new(LabOptions::default());
    without_ipv6(&lab);
    let args = ["vnet0", "203.0.113.1", "--json"];
    let run = doctor_after(&lab, "", &args);
    assert_eq!(run.code, 0, "{}", run.dump());
    assert!(run.lines.iter().all(|v| v["name"] != "default_route"));
    assert_check(
        &run,
        "route",
        "pass",
        &["`ip route get 203.0.113.1 from 10.77.0.2 iif br0`: default via 192.0.2.1 dev up0 table main metric 0"],
    );
    assert_check(
        &run,
        "nat",
        "pass",
        &["new connections from 10.77.0.0/24 to 203.0.113.1 leaving via up0 are source-NATed"],
    );
    // With DEST of one family, the other family's half is judged as without it.
    assert_check(
        &run,
        "default_route6",
        "skip",
        &["br0 has no global IPv6 address"],
    );

    lab.hv_run(&["ip", "route", "add", "prohibit", "203.0.113.0/24"]);
    let run = doctor_after(&lab, "", &args);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_check(
        &run,
        "route",
        "fail",
        &["is refused (EACCES: a prohibit route): prohibit 203.0.113.0/24 table main metric 0"],
    );
    assert_eq!(
        s(check(&run, "route"), "fix"),
        "ip route del prohibit 203.0.113.0/24 table main"
    );
    apply_fix(&lab, &run, "route");

    // Forwarding off: the host's own packets are routed, the VM's are refused.
    lab.set_ip_forward(false);
    let run = doctor_after(&lab, "", &args);
    assert_check(
        &run,
        "route",
        "fail",
        &[
            "`ip route get 203.0.113.1 from 10.77.0.2 iif br0` is refused (EHOSTUNREACH), but the host's own packets to 203.0.113.1 are routed (default via 192.0.2.1 dev up0 table main metric 0)",
            "see ip_forward",
        ],
    );
    assert_check(&run, "ip_forward", "fail", &["net.ipv4.ip_forward = 0"]);
}

#[test]
fn bad_destination_exits_2() {
    let lab = Lab::new(LabOptions::default());
    for (dest, says) in [
        (
            "not-an-address",
            "'not-an-address' is not an IPv4 or IPv6 address or prefix",
        ),
        (
            "2001:db8::/129",
            "bad prefix length in '2001:db8::/129': expected 0-128 for an IPv6 address",
        ),
        (
            "203.0.113.0/33",
            "bad prefix length in '203.0.113.0/33': expected 0-32 for an IPv4 address",
        ),
        ("ff02::1", "'ff02::1' is not a unicast destination"),
    ] {
        let run = doctor_after(&lab, "", &["vnet0", dest, "--json"]);
        assert_eq!(run.code, 2, "{dest}: {}", run.dump());
        assert!(run.stderr.contains(says), "{dest}: {}", run.dump());
        assert!(run.lines.is_empty(), "{dest}: {}", run.dump());
    }
}

#[test]
fn ipv6_destination_turns_the_ipv6_checks_on_without_ipv6_on_the_bridge() {
    let lab = Lab::new(LabOptions::default());
    without_ipv6(&lab);
    // IPv6 on the uplink only (the outside keeps its half); forwarding as a new namespace
    // has it (0).
    lab.hv_run(&[
        "ip",
        "-6",
        "addr",
        "add",
        "2001:db8:2::2/64",
        "dev",
        "up0",
        "nodad",
    ]);
    lab.hv_run(&[
        "ip",
        "-6",
        "route",
        "add",
        "default",
        "via",
        "2001:db8:2::1",
        "dev",
        "up0",
    ]);
    lab.hv_run(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=0"]);
    let run = doctor_after(&lab, "", &["vnet0", "2001:db8:ffff::1", "--json"]);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_check(
        &run,
        "ip6_forward",
        "fail",
        &["net.ipv6.conf.all.forwarding = 0"],
    );
    // No VM address to look up from: the host's own route is asked.
    assert_check(
        &run,
        "route6",
        "pass",
        &["`ip -6 route get 2001:db8:ffff::1`: default via 2001:db8:2::1 dev up0 table main metric 1024"],
    );
    assert_check(
        &run,
        "forward_filter6",
        "skip",
        &["the VM's IPv6 prefix is unknown: br0 has no global IPv6 address"],
    );
    assert_check(
        &run,
        "ra_service",
        "skip",
        &["br0 has no global IPv6 address: there is no prefix to advertise to the VM"],
    );
    // The IPv4 half keeps its default-route checks.
    assert_check(
        &run,
        "default_route",
        "pass",
        &["default via 192.0.2.1 dev up0"],
    );
}

#[test]
fn unanswered_ipv6_gateway_fails_gateway_neighbour6() {
    let lab = Lab::new(LabOptions::default());
    add_ipv6(&lab);
    // A default route via an address nobody has; one datagram makes the kernel solicit it,
    // which fails after its probes (about 3 s).
    lab.hv_run(&[
        "ip",
        "-6",
        "route",
        "replace",
        "default",
        "via",
        "2001:db8:2::99",
        "dev",
        "up0",
    ]);
    lab.hv_run(&["bash", "-c", "echo x > /dev/udp/2001:db8:ffff::1/9"]);
    wait_for(
        &lab,
        &["ip", "-6", "neigh", "show", "2001:db8:2::99", "dev", "up0"],
        "FAILED",
        Duration::from_secs(10),
    );
    let run = doctor(&lab);
    assert_eq!(run.code, 1, "{}", run.dump());
    assert_check(
        &run,
        "default_route6",
        "pass",
        &["default via 2001:db8:2::99 dev up0 table main"],
    );
    assert_check(
        &run,
        "gateway_neighbour6",
        "fail",
        &[
            "2001:db8:2::99 on up0 is FAILED",
            "the gateway did not answer neighbour solicitations",
        ],
    );
    // With the destination, the route check says the same of its next hop.
    let run = doctor_after(&lab, "", &["vnet0", "2001:db8:ffff::1", "--json"]);
    assert_check(
        &run,
        "route6",
        "fail",
        &[
            "the gateway 2001:db8:2::99 on up0 is FAILED",
            "every packet to 2001:db8:ffff::1 is dropped",
        ],
    );
    assert_check(
        &run,
        "gateway_neighbour6",
        "fail",
        &["2001:db8:2::99 on up0 is FAILED"],
    );
}
