//! macvtap ("direct") guests on a real macvtap over a veth lower device: found by the
//! character device their QEMU holds, followed with the tap programs the other way round and
//! the lower device on the path, and the faults of that mode named. Needs root.

mod common;

use common::{assert_fields, field, fix_then_delivered, hand_down_fds, start_in, BIN};
use kvmtrace_lab::macvtap::MacvtapLab;
use kvmtrace_lab::vm::{open_macvtap, FakeVm};
use serde_json::Value;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn in_hv(lab: &MacvtapLab, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &lab.hv, BIN])
        .args(args)
        .output()
        .expect("run kvmtrace")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A stand-in QEMU in the hypervisor holding the macvtap's character device as fd 7, with the
/// command line libvirt gives a `<interface type='direct'>` guest.
fn qemu_standin(lab: &MacvtapLab, fd: &OwnedFd, name: &str) -> Child {
    // Twice at most: a stand-in that died before it was seen holding the fd is started
    // again once, and the second failure says how the first attempt ended.
    let mut why = String::new();
    for _ in 0..2 {
        match try_standin(lab, fd, name) {
            Ok(child) => return child,
            Err(e) => why.push_str(&format!("{e}\n")),
        }
    }
    panic!("the stand-in never held the macvtap:\n{why}");
}

fn try_standin(lab: &MacvtapLab, fd: &OwnedFd, name: &str) -> Result<Child, String> {
    let raw = fd.as_raw_fd();
    let err_file = std::env::temp_dir().join(format!("kvmtrace-standin-{name}.err"));
    let err = std::fs::File::create(&err_file).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.hv, "sh", "-c", "sleep 60 7>&-; :"])
        .args([
            "qemu-system-x86_64",
            "-name",
            &format!("guest={name},debug-threads=on"),
            "-netdev",
            "tap,fd=7,id=hostnet0",
            "-device",
            "virtio-net-pci,netdev=hostnet0,id=net0,mac=52:54:00:4b:54:20",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err);
    hand_down_fds(&mut cmd, vec![raw], 7);
    let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let pid = child.id();
    for _ in 0..250 {
        if std::fs::read_link(format!("/proc/{pid}/fd/7")).is_ok() {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let stderr = std::fs::read_to_string(&err_file).unwrap_or_default();
            return Err(format!("the stand-in ended ({status}): {stderr}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    Err(format!("no fd 7 in 5 s (fds: {fds})"))
}

fn vm(lab: &MacvtapLab, gw: std::net::Ipv4Addr) -> (FakeVm, OwnedFd) {
    let fd = open_macvtap(&lab.node).expect("open the macvtap");
    let held = fd.try_clone().unwrap();
    (
        FakeVm::on_fd(fd, &lab.macvtap, lab.guest_mac, lab.guest_ip, gw),
        held,
    )
}

/// A macvtap whose TC cannot be attached: the receive/transmit tracepoints that stand in for
/// a tap's TC do not follow a macvtap guest's packets (measured: no event), so the run says it
/// is blind there and exits 3; it never tells the healthy guest it sent nothing.
#[test]
fn a_macvtap_without_tc_is_blind_not_silent() {
    let lab = MacvtapLab::new("bridge", false);
    let (mut guest, held) = vm(&lab, lab.gw_ip);
    let name = format!("direct-blind-{}", std::process::id());
    let mut standin = qemu_standin(&lab, &held, &name);
    let running = start_in(
        &lab.hv,
        &[
            "follow",
            &name,
            "203.0.113.1",
            "--json",
            "--proto",
            "icmp",
            "--duration",
            "3",
        ],
        &[("KVMTRACE_SKIP_HOOKS", "tc")],
    );
    let replies = (1..=2)
        .filter(|seq| {
            guest
                .ping(lab.dest, 0x4d57, *seq, Duration::from_millis(500))
                .is_some()
        })
        .count();
    let run = running.wait();
    assert_eq!(replies, 2, "lab itself broken\n{}", run.dump());
    let v = run.verdict();
    assert_fields(&run, v, "status=blind stage=tap device=mvtap0");
    assert_eq!(run.code, 3, "{}", run.dump());
    assert!(
        run.stderr.contains(
            "kvmtrace is blind at the tap mvtap0 from the guest: TC tap_ingress: left out by \
             KVMTRACE_SKIP_HOOKS=tc; tp_btf netif_receive_skb: the tracepoint fallback does not \
             follow a macvtap guest's packets"
        ),
        "{}",
        run.dump()
    );
    let _ = standin.kill();
    let _ = standin.wait();
}

#[test]
fn a_macvtap_guest_is_found_by_its_char_device_and_delivered_through_the_lower_device() {
    let lab = MacvtapLab::new("bridge", false);
    let (mut guest, held) = vm(&lab, lab.gw_ip);
    let name = format!("direct-{}", std::process::id());
    let mut standin = qemu_standin(&lab, &held, &name);

    // Found by the char device (the node is not /dev/tapN), in this namespace, a macvtap.
    let out = in_hv(&lab, &["list", "--json"]);
    let mine: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["pid"] == standin.id())
        .collect();
    assert_eq!(mine.len(), 1, "{}", text(&out.stdout));
    let v = &mine[0];
    assert_eq!(v["name"], name.as_str());
    assert_eq!(v["tap"], "mvtap0");
    assert_eq!(v["mac"], "52:54:00:4b:54:20");
    assert_eq!(v["macvtap"], true);
    assert_eq!(v["followable"], true);
    assert_eq!(v["netns"], lab.hv.as_str());

    let running = start_in(
        &lab.hv,
        &[
            "follow",
            &name,
            "203.0.113.1",
            "--json",
            "--proto",
            "icmp",
            "--duration",
            "3",
        ],
        &[],
    );
    let mut replies = 0;
    for seq in 1..=3 {
        replies += usize::from(
            guest
                .ping(lab.dest, 0x4d56, seq, Duration::from_millis(500))
                .is_some(),
        );
    }
    let run = running.wait();
    assert_eq!(replies, 3, "lab itself broken\n{}", run.dump());
    assert!(
        run.stderr.contains(&format!(
            "following {name} (tap mvtap0, mac 52:54:00:4b:54:20)"
        )),
        "{}",
        run.dump()
    );
    let attached = run.stats()["attached"].to_string();
    for want in [
        "tc tap_ingress on mvtap0 (macvtap: egress)",
        "tc tap_egress on mvtap0 (macvtap: ingress)",
        "tc dev_ingress/dev_egress on low0 (mvtap0's lower device)",
    ] {
        assert!(attached.contains(want), "{want}: {attached}");
    }
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=delivered stage=tap direction=reply device=mvtap0",
    );
    assert_eq!(v["key"]["guest"], "10.78.0.2", "{}", run.dump());
    assert_eq!(v["requests"], 3, "{}", run.dump());
    assert_eq!(v["replies"], 3, "{}", run.dump());
    // The requests came out of the guest through the macvtap and left through low0; the
    // replies came in on low0 and reached the macvtap.
    let hops: Vec<(String, String, String)> = run
        .hops()
        .iter()
        .filter(|h| h["journey"].is_number())
        .map(|h| {
            (
                field(h, "point").to_string(),
                field(h, "device").to_string(),
                field(h, "dir").to_string(),
            )
        })
        .collect();
    for want in [
        ("tap_ingress", "mvtap0", "request"),
        ("dev_xmit", "low0", "request"),
        ("netif_receive", "low0", "reply"),
        ("tap_egress", "mvtap0", "reply"),
    ] {
        let n = hops
            .iter()
            .filter(|(p, d, r)| (p.as_str(), d.as_str(), r.as_str()) == want)
            .count();
        assert_eq!(n, 3, "{want:?} in {hops:?}\n{}", run.dump());
    }
    assert_eq!(run.code, 0, "{}", run.dump());
    let _ = standin.kill();
    let _ = standin.wait();
}

/// `follow` while the guest asks ARP for `target` twice; the JSON run.
fn follow_while_asking(lab: &MacvtapLab, dest: &str, target: std::net::Ipv4Addr) -> common::Run {
    let (mut guest, _held) = vm(lab, target);
    let running = start_in(
        &lab.hv,
        &["follow", "mvtap0", dest, "--json", "--duration", "3"],
        &[],
    );
    for _ in 0..2 {
        guest.arp_request(target);
        std::thread::sleep(Duration::from_millis(300));
    }
    running.wait()
}

#[test]
fn a_macvtap_whose_lower_device_is_down_is_named_with_the_fix() {
    let lab = MacvtapLab::new("bridge", false);
    lab.hv_run(&["ip", "link", "set", "low0", "down"]);
    let run = follow_while_asking(&lab, "203.0.113.1", lab.gw_ip);
    let v = run.verdict();
    assert_eq!(field(v, "status"), "no_traffic", "{}", run.dump());
    assert_eq!(
        field(v, "summary"),
        "no packet from the VM to 203.0.113.1: the guest asked 2 time(s) who has 10.78.0.1 (ARP) \
         and nobody answered: the lower device low0 of its macvtap mvtap0 is down, so its frames \
         leave nowhere → `ip link set low0 up` (and check low0's cable or peer)",
        "{}",
        run.dump()
    );
    // follow adds doctor's failing checks: the lower device, nothing about bridges or routes.
    let failing: Vec<&Value> = run.lines.iter().filter(|l| l["type"] == "check").collect();
    assert_eq!(failing.len(), 1, "{}", run.dump());
    assert_eq!(failing[0]["name"], "lower_device");
    assert_eq!(failing[0]["fix"], "ip link set dev low0 up");
    assert_eq!(run.code, 1, "{}", run.dump());
    // The verdict carries the same command, and it works.
    fix_then_delivered(&lab.hv, &run, v, "ip link set dev low0 up", || {
        let (mut guest, _held) = vm(&lab, lab.gw_ip);
        let running = start_in(
            &lab.hv,
            &[
                "follow",
                "mvtap0",
                "203.0.113.1",
                "--json",
                "--proto",
                "icmp",
                "--duration",
                "4",
            ],
            &[],
        );
        let replies = (1..=4)
            .filter(|seq| {
                guest
                    .ping(lab.dest, 0x4d58, *seq, Duration::from_millis(600))
                    .is_some()
            })
            .count();
        assert!(replies > 0, "no reply after the fix");
        running.wait()
    });
}

#[test]
fn a_macvtap_guest_asking_for_the_hosts_own_address_is_told_macvtap_keeps_them_apart() {
    let lab = MacvtapLab::new("bridge", true);
    let run = follow_while_asking(&lab, "10.78.0.3", lab.host_ip);
    let v = run.verdict();
    assert_eq!(field(v, "status"), "no_traffic", "{}", run.dump());
    assert!(
        field(v, "summary").contains(
            "10.78.0.3 is the host's own address on low0, the lower device of the guest's \
             macvtap mvtap0, and a macvtap never passes frames between its guest and the \
             host's stack on the lower device"
        ),
        "{}",
        run.dump()
    );
    // doctor says the same before any traffic.
    let out = in_hv(&lab, &["doctor", "mvtap0", "--json"]);
    let checks: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["type"] == "check")
        .collect();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["tap", "lower_device", "macvtap_mode", "macvtap_host"],
        "{checks:?}"
    );
    assert_eq!(checks[1]["status"], "pass", "{checks:?}");
    assert_eq!(checks[2]["status"], "pass", "{checks:?}");
    assert_eq!(
        checks[2]["evidence"],
        "mvtap0 is in bridge mode and is the only macvtap on low0: it keeps no guests of this \
         host apart",
        "{checks:?}"
    );
    assert_eq!(checks[3]["status"], "warn", "{checks:?}");
    assert!(
        checks[3]["evidence"]
            .as_str()
            .unwrap()
            .starts_with("the host's 10.78.0.3/24 on low0 cannot reach the guest"),
        "{checks:?}"
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// Whether a frame from `src` carrying IPv4 reaches the macvtap fd `fd` within `timeout`.
fn frame_from(fd: &OwnedFd, src: [u8; 6], timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while std::time::Instant::now() < deadline {
        // SAFETY: buf is writable for its length; the fd is non-blocking.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 14 && buf[6..12] == src && buf[12..14] == [8, 0] {
            return true;
        }
        if n <= 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    false
}

/// Two guests on macvtaps of one lower device in VEPA mode: a frame from one to the other goes
/// out on the wire (no switch there reflects it) and never arrives. doctor warns of the mode,
/// follow names the other guest's macvtap and both modes; in bridge mode the frame arrives
/// and doctor passes.
#[test]
fn two_guests_on_vepa_macvtaps_of_one_lower_device_are_named_kept_apart() {
    let lab = MacvtapLab::new("vepa", false);
    let other_mac = [0x52, 0x54, 0x00, 0x4b, 0x54, 0x21];
    let node = lab.add_macvtap("mvtap1", "52:54:00:4b:54:21", "vepa");
    let other = open_macvtap(&node).expect("open mvtap1");
    let other_ip = std::net::Ipv4Addr::new(10, 78, 0, 4);
    let (mut guest, _held) = vm(&lab, lab.gw_ip);

    let mode_check = || -> Value {
        let out = in_hv(&lab, &["doctor", "mvtap0", "--json"]);
        text(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|v| v["type"] == "check" && v["name"] == "macvtap_mode")
            .unwrap_or_else(|| panic!("no macvtap_mode check:\n{}", text(&out.stdout)))
    };
    let c = mode_check();
    assert_eq!(c["status"], "warn", "{c}");
    assert_eq!(
        c["evidence"],
        "mvtap0 is in vepa mode and low0 also carries mvtap1 (vepa): its guest sends even \
         frames for the other guests on it out on the wire (vepa): they come back only if the \
         switch reflects them (VEPA hairpin), never to a private macvtap",
        "{c}"
    );
    assert!(
        c["fix"].as_str().unwrap().starts_with(
            "if the guests must talk to each other: `ip link set mvtap0 type macvtap mode bridge`"
        ),
        "{c}"
    );

    let running = start_in(
        &lab.hv,
        &[
            "follow",
            "mvtap0",
            "10.78.0.4",
            "--json",
            "--proto",
            "icmp",
            "--duration",
            "3",
        ],
        &[],
    );
    for seq in 1..=2 {
        guest.send_echo_to_mac(other_ip, 0x4d57, seq, other_mac);
        std::thread::sleep(Duration::from_millis(300));
    }
    let arrived = frame_from(&other, lab.guest_mac, Duration::from_millis(300));
    let run = running.wait();
    assert!(
        !arrived,
        "a VEPA macvtap's frame reached its sibling without a hairpin switch"
    );
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=no_reply stage=egress direction=request device=low0",
    );
    assert_eq!(
        field(v, "summary"),
        "no reply: the request to 10.78.0.4 is for the guest on mvtap1 (MAC 52:54:00:4b:54:21), \
         another macvtap on low0, but it left the host through low0: macvtaps of one lower \
         device pass frames to each other only when both are in bridge mode (mvtap0 is vepa, \
         mvtap1 is vepa); otherwise the frames go out on low0's wire and come back only if the \
         switch there reflects them (VEPA hairpin), never to a private macvtap → put both in \
         bridge mode: `ip link set mvtap0 type macvtap mode bridge` and `ip link set mvtap1 \
         type macvtap mode bridge` (libvirt: `<source dev='low0' mode='bridge'/>`)",
        "{}",
        run.dump()
    );

    // The fix, the verdict's own command: both in bridge mode. The frame now goes from one
    // macvtap to the other.
    let fix = "ip link set dev mvtap0 type macvtap mode bridge && ip link set dev mvtap1 type \
               macvtap mode bridge";
    assert_eq!(field(v, "fix"), fix, "{}", run.dump());
    lab.hv_run(&["sh", "-c", fix]);
    let c = mode_check();
    assert_eq!(c["status"], "pass", "{c}");
    assert_eq!(
        c["evidence"],
        "mvtap0 and the other macvtaps on low0 (mvtap1 (bridge)) are in bridge mode: their \
         guests reach each other directly",
        "{c}"
    );
    guest.send_echo_to_mac(other_ip, 0x4d57, 3, other_mac);
    assert!(
        frame_from(&other, lab.guest_mac, Duration::from_secs(2)),
        "in bridge mode the frame should reach mvtap1's guest"
    );
}
