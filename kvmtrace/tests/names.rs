//! The names operators use, on real processes: a VM started as Proxmox starts QEMU (`-id 101`,
//! taps `tap101i0`/`tap101i1`) found by its VMID, `list` per network namespace, `--nic` for a
//! VM with two NICs, and a real QEMU guest found by the VMID of its pid file. Needs root; the
//! QEMU test also needs qemu-system-x86 and the guest image (`cargo xtask setup`).

mod common;

use common::{assert_fields, hand_down_fds, start, BIN};
use kvmtrace_lab::guest::{build_image, default_cache_dir, Guest, GuestConfig};
use kvmtrace_lab::lab::{Lab, LabOptions};
use kvmtrace_lab::vm::FakeVm;
use serde_json::{json, Value};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// `kvmtrace ARGS` in the lab's hypervisor namespace, to completion.
fn in_hv(lab: &Lab, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &lab.hv, BIN])
        .args(args)
        .output()
        .expect("run kvmtrace")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `list --json` lines of one process.
fn listed(out: &Output, pid: u32) -> Vec<Value> {
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .filter(|v| v["pid"] == pid)
        .collect()
}

/// A stand-in QEMU in the lab's hypervisor: a shell whose command line is Proxmox's for VM 101
/// with two NICs, holding the fake VMs' tun fds as fds 7 and 8 (as QEMU holds its taps). Its
/// `sleep` child gets neither fd, so the shell is the only holder in the namespace.
fn pve_standin(lab: &Lab, nics: [&FakeVm; 2]) -> Child {
    let fds = [nics[0].tap_fd().as_raw_fd(), nics[1].tap_fd().as_raw_fd()];
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &lab.hv,
        "sh",
        "-c",
        "sleep 60 7>&- 8>&-; :",
    ])
    .args([
        "/usr/bin/kvm",
        "-id",
        "101",
        "-name",
        "web1,debug-threads=on",
        "-netdev",
        "type=tap,id=net0,ifname=tap101i0,script=no,downscript=no",
        "-device",
        "virtio-net-pci,mac=52:54:00:4B:54:02,netdev=net0,bus=pci.0,addr=0x12,id=net0",
        "-netdev",
        "type=tap,id=net1,ifname=tap101i1,script=no,downscript=no",
        "-device",
        "virtio-net-pci,mac=52:54:00:4B:54:03,netdev=net1,bus=pci.0,addr=0x13,id=net1",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    hand_down_fds(&mut cmd, fds.to_vec(), 7);
    cmd.spawn().expect("spawn the stand-in QEMU")
}

/// Waits until `pid` holds a tun fd (the shell has started).
fn wait_for_tun(pid: u32) {
    for _ in 0..100 {
        let held = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.flatten().any(|e| {
                    std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == "/dev/net/tun")
                })
            })
            .unwrap_or(false);
        if held {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("pid {pid} never held a tun fd");
}

#[test]
fn a_proxmox_vm_is_listed_in_its_namespace_and_followed_by_vmid_with_nic() {
    let lab = Lab::new(LabOptions::default());
    lab.add_tap("tap101i0");
    lab.add_tap("tap101i1");
    let mut vm = FakeVm::attach_to(&lab, "tap101i0");
    let second = FakeVm::attach_to(&lab, "tap101i1");
    let mut standin = pve_standin(&lab, [&vm, &second]);
    let pid = standin.id();
    wait_for_tun(pid);

    // `list` in the hypervisor: the VM's two NICs, each with its VMID, MAC and namespace.
    let out = in_hv(&lab, &["list", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let nic = |n: u32, tap: &str, mac: &str| {
        json!({
            "type": "vm", "name": "web1", "tap": tap, "nic": n, "mac": mac, "pid": pid,
            "vmid": "101", "uuid": null, "aliases": [], "netns": lab.hv,
            "followable": true, "macvtap": false,
        })
    };
    let mut got = listed(&out, pid);
    for v in &mut got {
        assert!(v["netns_inode"].as_u64().is_some(), "{v}");
        v.as_object_mut().unwrap().remove("netns_inode");
    }
    assert_eq!(
        got,
        vec![
            nic(0, "tap101i0", "52:54:00:4b:54:02"),
            nic(1, "tap101i1", "52:54:00:4b:54:03")
        ],
        "{}",
        text(&out.stdout)
    );
    // The test process holds the same taps from the host's namespace: not followable from
    // the lab, so not listed there by default.
    let me = listed(&out, std::process::id());
    assert!(me.is_empty(), "{me:?}");
    let all = in_hv(&lab, &["list", "--all", "--json"]);
    let me = listed(&all, std::process::id());
    assert_eq!(me.len(), 2, "{}", text(&all.stdout));
    assert!(me.iter().all(|v| v["followable"] == false), "{me:?}");
    // The text form names the namespace.
    let txt = in_hv(&lab, &["list"]);
    assert!(
        text(&txt.stderr).contains(&format!("network namespace {}", lab.hv)),
        "{}",
        text(&txt.stderr)
    );
    assert!(
        text(&txt.stdout)
            .contains("web1                 tap tap101i1       nic 1 mac 52:54:00:4b:54:03"),
        "{}",
        text(&txt.stdout)
    );

    // Two NICs and no --nic: exit 2, both listed, the way out named.
    let dest = lab.dest.to_string();
    let out = in_hv(&lab, &["follow", "101", &dest, "--json", "--duration", "1"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("'101' has 2 NICs; kvmtrace follows one tap: choose it with --nic N|TAP|MAC"),
        "{err}"
    );
    assert!(
        err.contains("tap101i0") && err.contains("tap101i1"),
        "{err}"
    );
    let out = in_hv(&lab, &["doctor", "101", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = in_hv(&lab, &["follow", "101", &dest, "--nic", "5"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--nic 5: '101' has no NIC numbered 5"),
        "{}",
        text(&out.stderr)
    );

    // From the host's namespace: the VM is named, with where to run kvmtrace.
    let out = Command::new(BIN)
        .args(["follow", "101", &dest])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "'101' is in network namespace {}, not in this one",
            lab.hv
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("run it there: ip netns exec {} kvmtrace", lab.hv)),
        "{err}"
    );

    // doctor and follow with --nic: NIC 0, its MAC from the command line.
    let out = in_hv(&lab, &["doctor", "101", "--nic", "tap101i0", "--json"]);
    let summary: Value = text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "summary")
        .unwrap_or_else(|| panic!("{}", text(&out.stdout)));
    assert_eq!(summary["vm"], "web1");
    assert_eq!(summary["tap"], "tap101i0");
    assert_eq!(summary["mac"], "52:54:00:4b:54:02");

    let running = start(
        &lab,
        &[
            "follow",
            "101",
            &dest,
            "--nic",
            "0",
            "--json",
            "--proto",
            "icmp",
            "--duration",
            "3",
        ],
    );
    let mut replies = 0;
    for seq in 1..=3 {
        replies += usize::from(
            vm.ping(lab.dest, 0x101, seq, Duration::from_millis(500))
                .is_some(),
        );
    }
    let run = running.wait();
    assert_eq!(replies, 3, "lab itself broken");
    assert!(
        run.stderr
            .contains("following web1 (tap tap101i0, mac 52:54:00:4b:54:02)"),
        "{}",
        run.dump()
    );
    let v = run.verdict();
    assert_fields(
        &run,
        v,
        "status=delivered stage=tap direction=reply device=tap101i0",
    );
    assert_eq!(v["key"]["guest"], "10.77.0.2", "{}", run.dump());
    assert_eq!(v["requests"], 3, "{}", run.dump());
    assert_eq!(run.code, 0, "{}", run.dump());

    let _ = standin.kill();
    let _ = standin.wait();
    drop(second);
}

#[test]
fn a_real_qemu_is_found_by_the_vmid_of_its_pidfile_and_followed_on_nic_0() {
    let lab = Lab::new(LabOptions::default());
    lab.tcp_listen(80);
    lab.add_tap("tap102i0");
    lab.add_tap("tap102i1");
    let image = build_image(&default_cache_dir()).expect("guest image");
    // Upstream QEMU has no `-id` (Proxmox's has): the VMID comes from the pid file
    // qemu-server gives it, `…/qemu-server/102.pid`.
    let run_dir = std::env::temp_dir().join(format!("kvmtrace-names-{}", std::process::id()));
    let pidfile = run_dir.join("qemu-server/102.pid");
    std::fs::create_dir_all(pidfile.parent().unwrap()).unwrap();
    let name = format!("ktpve-{}", std::process::id());
    let mut cfg = GuestConfig::for_lab(&lab, &name, 80);
    cfg.tap = "tap102i0".into();
    cfg.extra_args = [
        "-pidfile",
        pidfile.to_str().unwrap(),
        "-netdev",
        "tap,id=n1,ifname=tap102i1,script=no,downscript=no",
        "-device",
        "virtio-net-pci,netdev=n1,mac=52:54:00:4b:54:03,romfile=",
    ]
    .map(str::to_string)
    .to_vec();
    let guest = Guest::boot(&image, &cfg).expect("boot guest");
    assert!(
        guest.wait_for_serial("KT ping ok", Duration::from_secs(90)),
        "guest never reached the outside:\n{}\n{}",
        guest.serial_log(),
        guest.qemu_stderr()
    );

    let out = in_hv(&lab, &["list", "--json"]);
    let mut got = listed(&out, guest.pid());
    for v in &mut got {
        v.as_object_mut().unwrap().remove("netns_inode");
    }
    let nic = |n: u32, tap: &str, mac: &str| {
        json!({
            "type": "vm", "name": name, "tap": tap, "nic": n, "mac": mac, "pid": guest.pid(),
            "vmid": "102", "uuid": null, "aliases": [], "netns": lab.hv, "followable": true,
            "macvtap": false,
        })
    };
    assert_eq!(
        got,
        vec![
            nic(0, "tap102i0", "52:54:00:4b:54:02"),
            nic(1, "tap102i1", "52:54:00:4b:54:03")
        ],
        "{}",
        text(&out.stdout)
    );

    let dest = lab.dest.to_string();
    let out = in_hv(&lab, &["follow", "102", &dest, "--json", "--duration", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("'102' has 2 NICs"),
        "{}",
        text(&out.stderr)
    );

    let run = start(
        &lab,
        &[
            "follow",
            "102",
            &dest,
            "--nic",
            "0",
            "--json",
            "--proto",
            "icmp",
            "--count",
            "2",
            "--duration",
            "20",
        ],
    )
    .wait();
    assert!(
        run.stderr.contains(&format!(
            "following {name} (tap tap102i0, mac 52:54:00:4b:54:02)"
        )),
        "{}",
        run.dump()
    );
    assert!(!run.verdicts().is_empty(), "{}", run.dump());
    for v in run.verdicts() {
        assert_fields(
            &run,
            v,
            "status=delivered stage=tap direction=reply device=tap102i0",
        );
        assert_eq!(v["key"]["guest"], "10.77.0.2", "{}", run.dump());
    }
    assert_eq!(run.code, 0, "{}", run.dump());
    drop(guest);
    let _ = std::fs::remove_dir_all(&run_dir);
}
