//! Bad input and the tracer's own lifecycle: clear errors with the documented exit codes, and
//! nothing left attached after SIGTERM or kill -9.

mod common;

use common::{bpf_objects, field, run_plain, start, BIN};
use kvmtrace_lab::lab::{Lab, LabOptions};
use kvmtrace_lab::vm::FakeVm;
use std::process::Command;
use std::time::Duration;

#[test]
fn a_bad_address_is_a_usage_error() {
    let r = run_plain(&["follow", "vnet0", "203.0.113"]);
    assert_eq!(r.code, 2, "{}", r.dump());
    // The one destination parser (model/dest.rs), as doctor's --dest says it.
    assert!(
        r.stderr
            .contains("'203.0.113' is not an IPv4 or IPv6 address or prefix"),
        "{}",
        r.dump()
    );
    let r = run_plain(&["follow", "vnet0", "203.0.113.0/40"]);
    assert_eq!(r.code, 2, "{}", r.dump());
    assert!(r.stderr.contains("prefix"), "{}", r.dump());
    let r = run_plain(&["follow", "vnet0", "2001:db8::/129"]);
    assert_eq!(r.code, 2, "{}", r.dump());
    assert!(r.stderr.contains("0-128"), "{}", r.dump());
    // Two destinations of one version, or three: refused before anything is attached.
    let r = run_plain(&["follow", "vnet0", "203.0.113.1", "198.51.100.1"]);
    assert_eq!(r.code, 2, "{}", r.dump());
    assert!(r.stderr.contains("both IPv4"), "{}", r.dump());
    let r = run_plain(&[
        "follow",
        "vnet0",
        "203.0.113.1",
        "2001:db8::1",
        "2001:db8::2",
    ]);
    assert_eq!(r.code, 2, "{}", r.dump());
}

#[test]
fn an_unknown_vm_lists_what_was_found_and_exits_2() {
    let lab = Lab::new(LabOptions::default());
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.hv,
            BIN,
            "follow",
            "no-such-vm",
            "203.0.113.1",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no-such-vm"), "{err}");
    assert!(
        err.contains("vnet0"),
        "the lab's tap should be listed: {err}"
    );
}

#[test]
fn not_root_is_an_environment_error() {
    let lab = Lab::new(LabOptions::default());
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.hv,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .args([BIN, "follow", "vnet0", "203.0.113.1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(
            "kvmtrace lacks the capabilities CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYSLOG, \
             CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH: run it as root"
        ),
        "{err}"
    );
}

/// `doctor` as `nobody`: without capabilities it names the three it needs (exit 3); with
/// exactly those three it prints what root prints.
#[test]
fn doctor_names_the_capabilities_it_lacks_and_runs_with_them() {
    let lab = Lab::new(LabOptions::default());
    let doctor = |caps: &str| {
        Command::new("ip")
            .args(["netns", "exec", &lab.hv, "setpriv"])
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args([
                format!("--inh-caps={caps}"),
                format!("--ambient-caps={caps}"),
                format!("--bounding-set={caps}"),
            ])
            .args([BIN, "doctor", "vnet0"])
            .output()
            .unwrap()
    };
    let out = doctor("-all");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(
            "kvmtrace doctor lacks the capabilities CAP_NET_ADMIN, CAP_SYS_PTRACE, \
             CAP_DAC_READ_SEARCH: run it as root"
        ),
        "{err}"
    );
    let out = doctor("-all,+net_admin,+sys_ptrace,+dac_read_search");
    let root = Command::new("ip")
        .args(["netns", "exec", &lab.hv, BIN, "doctor", "vnet0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.starts_with("doctor: VM (tap vnet0)\n"),
        "{text}\n{err}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("PASS  bridge ")),
        "{text}\n{err}"
    );
    assert_eq!(text, String::from_utf8_lossy(&root.stdout), "{err}");
    assert_eq!(out.status.code(), root.status.code(), "{err}");
}

#[test]
fn sigterm_detaches_and_still_prints_the_verdicts() {
    let lab = Lab::new(LabOptions::default());
    let before = bpf_objects::system();
    let running = start(&lab, &["follow", "vnet0", "203.0.113.1", "--json"]);
    let ours = bpf_objects::attached_by(running.pid(), &before);
    let mut vm = FakeVm::attach(&lab);
    assert!(vm
        .ping(lab.dest, 9, 1, Duration::from_millis(500))
        .is_some());
    std::thread::sleep(Duration::from_millis(200));
    running.signal(libc::SIGTERM);
    let run = running.wait();
    assert_eq!(
        field(run.verdict(), "status"),
        "delivered",
        "{}",
        run.dump()
    );
    assert!(run.stderr.contains("all hooks detached"), "{}", run.dump());
    bpf_objects::assert_all_gone(&ours, Duration::from_secs(5));
    assert_no_tc_state(&lab);
}

#[test]
fn kill_9_leaves_nothing_attached() {
    let lab = Lab::new(LabOptions::default());
    let before = bpf_objects::system();
    let running = start(&lab, &["follow", "vnet0", "203.0.113.1", "--json"]);
    let pid = running.pid();
    let ours = bpf_objects::attached_by(pid, &before);
    running.signal(libc::SIGKILL);
    let _ = running.wait();
    // TCX, tp_btf, tracepoint and netfilter links are fds: the kernel released them, and the
    // programs, with the process. No clsact qdisc or filter was ever added to the tap.
    bpf_objects::assert_all_gone(&ours, Duration::from_secs(5));
    assert_no_tc_state(&lab);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    // A new run attaches and works at once.
    let running = start(
        &lab,
        &[
            "follow",
            "vnet0",
            "203.0.113.1",
            "--json",
            "--duration",
            "2",
        ],
    );
    let mut vm = FakeVm::attach(&lab);
    assert!(vm
        .ping(lab.dest, 10, 1, Duration::from_millis(500))
        .is_some());
    let run = running.wait();
    assert_eq!(
        field(run.verdict(), "status"),
        "delivered",
        "{}",
        run.dump()
    );
}

/// The tap has no clsact qdisc and no TC filter left.
fn assert_no_tc_state(lab: &Lab) {
    let q = lab.hv_run(&["tc", "qdisc", "show", "dev", &lab.tap]);
    assert!(!q.contains("clsact"), "qdisc left behind: {q}");
    for dir in ["ingress", "egress"] {
        let f = lab.hv_run(&["tc", "filter", "show", "dev", &lab.tap, dir]);
        assert!(f.trim().is_empty(), "filter left behind: {f}");
    }
}

#[test]
fn missing_kernel_btf_is_an_environment_error() {
    let lab = Lab::new(LabOptions::default());
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.hv,
            BIN,
            "follow",
            "vnet0",
            "203.0.113.1",
            "--duration",
            "1",
        ])
        .env("KVMTRACE_BTF", "/nonexistent/vmlinux")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("BTF") && err.contains("CONFIG_DEBUG_INFO_BTF"),
        "{err}"
    );
}
