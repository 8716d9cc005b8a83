//! `--explain-rules`' `RuleTracer` against real packets: a lab (namespaces, bridge, tap, NAT,
//! nftables rules), a fake VM sending into the tap, and the tracer started in-process on a thread
//! that joined the lab's hypervisor namespace. Needs root.

use kvmtrace::capture::nftrace::{RuleDecision, RuleTracer, TraceFilter, TABLE_PREFIX};
use kvmtrace::model::filter::{PacketFilter, Proto};
use kvmtrace_lab::lab::{netns_path, Firewall, Lab, LabOptions};
use kvmtrace_lab::vm::{tcp_flags, FakeVm, Reply};
use std::io::{BufRead as _, BufReader};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set in the child process of [`a_killed_run_leaves_no_table`].
const CHILD_ENV: &str = "KVMTRACE_NFTRACE_CRASH_CHILD";

/// Runs `f` on a thread that joined the lab's hypervisor namespace (threads it spawns, like the
/// tracer's collector, inherit it).
fn in_hv<T: Send>(lab: &Lab, f: impl FnOnce() -> T + Send) -> T {
    let path = netns_path(&lab.hv);
    let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns(2) on an fd we own; only this thread changes namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn start(lab: &Lab, f: &TraceFilter) -> (RuleTracer, Vec<String>) {
    in_hv(lab, || {
        RuleTracer::start(f).unwrap_or_else(|e| panic!("start: {e:#}"))
    })
}

fn filter(lab: &Lab, proto: Proto, port: Option<u16>) -> TraceFilter {
    TraceFilter {
        guest_ips: vec![lab.guest_ip.into()],
        dsts: vec![std::net::IpAddr::from(lab.dest).into()],
        packets: PacketFilter { proto, port },
    }
}

fn tables(lab: &Lab) -> String {
    lab.hv_run(&["nft", "list", "tables"])
}

/// Waits (up to 5 s) for a decision matching `pred`.
fn wait_for(t: &RuleTracer, what: &str, pred: impl Fn(&RuleDecision) -> bool) -> RuleDecision {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let all = t.decisions();
        if let Some(d) = all.iter().find(|d| pred(d)) {
            return d.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no decision {what} within 5 s; got:\n{}",
            dump(&all)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn dump(ds: &[RuleDecision]) -> String {
    ds.iter()
        .map(|d| format!("  {d}  [{:?} > {:?} proto {:?}]\n", d.src, d.dst, d.proto))
        .collect()
}

/// The handle nft shows for the rule whose text contains `needle`.
fn handle_of(lab: &Lab, family: &str, table: &str, needle: &str) -> u64 {
    let out = lab.hv_run(&["nft", "-a", "list", "table", family, table]);
    out.lines()
        .find(|l| l.contains(needle))
        .and_then(|l| l.rsplit_once("# handle "))
        .and_then(|(_, h)| h.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rule with {needle:?} in:\n{out}"))
}

#[test]
fn forward_policy_drop_is_explained_as_the_chains_policy() {
    let lab = Lab::new(LabOptions {
        forward_drop: Some(Firewall::Nftables),
        ..LabOptions::default()
    });
    let (tracer, warnings) = start(&lab, &filter(&lab, Proto::Icmp, None));
    assert!(warnings.is_empty(), "{warnings:?}");
    let mut vm = FakeVm::attach(&lab);
    for seq in 1..=2 {
        let r = vm.ping(lab.dest, 0x4b54, seq, Duration::from_millis(300));
        assert_eq!(r, None, "the FORWARD policy should drop the ping");
    }
    let d = wait_for(&tracer, "by the forward policy", |d| d.policy);
    let all = tracer.stop();
    eprintln!("decisions:\n{}", dump(&all));
    assert_eq!(
        (d.family.as_str(), d.table.as_str(), d.chain.as_str()),
        ("inet", "labfilter", "forward"),
        "{}",
        dump(&all)
    );
    assert_eq!(d.verdict, "drop");
    assert!(d.is_final());
    assert_eq!(d.handle, None);
    assert_eq!(d.rule, None);
    assert_eq!(d.hook.as_deref(), Some("FORWARD"));
    assert_eq!(d.src, Some(lab.guest_ip.into()));
    assert_eq!(d.dst, Some(lab.dest.into()));
    assert_eq!(d.proto, Some(1));
    assert!(
        all.iter().all(|d| !d.table.starts_with(TABLE_PREFIX)),
        "kvmtrace's own table is not reported:\n{}",
        dump(&all)
    );
}

#[test]
fn a_reject_rule_is_explained_by_handle_and_text() {
    let lab = Lab::new(LabOptions::default());
    lab.nft(
        "table inet labreject {
    chain guard {
        type filter hook forward priority 0; policy accept;
        tcp dport 8080 reject with tcp reset
    }
}
",
    );
    let handle = handle_of(&lab, "inet", "labreject", "reject");
    let (tracer, _) = start(&lab, &filter(&lab, Proto::Tcp, Some(8080)));
    let mut vm = FakeVm::attach(&lab);
    let r = vm.tcp_syn(lab.dest, 8080, 40000, Duration::from_secs(2));
    assert!(
        matches!(r, Some(Reply::Tcp { flags, .. }) if flags & tcp_flags::RST != 0),
        "the host should answer with a reset: {r:?}"
    );
    let d = wait_for(&tracer, "by the reject rule", |d| d.table == "labreject");
    let all = tracer.stop();
    eprintln!("decisions:\n{}", dump(&all));
    assert_eq!(d.chain, "guard");
    assert_eq!(d.handle, Some(handle), "{}", dump(&all));
    let rule = d.rule.as_deref().unwrap_or_default();
    assert!(rule.contains("reject"), "rule text: {rule:?}");
    assert_eq!(rule, "tcp dport 8080 reject with tcp reset");
    assert_eq!(d.verdict, "reject");
    assert!(!d.policy);
    assert_eq!(d.hook.as_deref(), Some("FORWARD"));
    assert_eq!(d.src, Some(lab.guest_ip.into()));
    assert_eq!(d.proto, Some(6));
}

#[test]
fn stop_and_drop_remove_the_table() {
    let lab = Lab::new(LabOptions::default());
    let (tracer, _) = start(&lab, &filter(&lab, Proto::Any, None));
    let name = tracer.table().to_string();
    assert!(name.starts_with(TABLE_PREFIX), "{name}");
    assert!(
        tracer.owned_by_kernel_socket(),
        "Linux 6.x has owner tables"
    );
    let listed = tables(&lab);
    assert!(listed.contains(&format!("table inet {name}")), "{listed}");
    // Its bridge-family sibling, for frames the bridge forwards (issue 18).
    assert!(listed.contains(&format!("table bridge {name}")), "{listed}");
    assert_eq!(tracer.families(), ["inet", "bridge"]);
    // Nobody else can change it: it belongs to the tracer's socket.
    let del = lab
        .hv_cmd("nft")
        .args(["delete", "table", "inet", &name])
        .output()
        .expect("run nft");
    assert!(
        !del.status.success(),
        "an owner table refuses other writers"
    );
    tracer.stop();
    let listed = tables(&lab);
    assert!(
        !listed.contains(&name),
        "still there after stop():\n{listed}"
    );

    let (tracer, _) = start(&lab, &filter(&lab, Proto::Any, None));
    let name = tracer.table().to_string();
    assert!(tables(&lab).contains(&name));
    drop(tracer);
    let listed = tables(&lab);
    assert!(!listed.contains(&name), "still there after drop:\n{listed}");
}

#[test]
fn a_leftover_of_a_dead_run_is_removed_at_the_next_start() {
    let lab = Lab::new(LabOptions::default());
    // A pid that is certainly gone, and a table of that pid as a run on a kernel without owner
    // tables would leave it.
    let mut child = Command::new("true").spawn().expect("spawn true");
    let dead = child.id();
    child.wait().expect("wait");
    let leftover = format!("{TABLE_PREFIX}{dead}_0");
    let alive = format!("{TABLE_PREFIX}{}_999", std::process::id());
    for t in [&leftover, &alive] {
        for family in ["inet", "bridge"] {
            lab.nft(&format!(
                "table {family} {t} {{\n    chain pre {{\n        type filter hook prerouting priority -350; policy accept;\n    }}\n}}\n"
            ));
        }
    }
    assert!(tables(&lab).contains(&leftover));
    let (tracer, warnings) = start(&lab, &filter(&lab, Proto::Any, None));
    let listed = tables(&lab);
    assert!(!listed.contains(&leftover), "left-over kept:\n{listed}");
    assert!(
        listed.contains(&alive),
        "a table of a live process is not a left-over:\n{listed}"
    );
    for family in ["inet", "bridge"] {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(&format!("removed table {family} {leftover} left over"))),
            "{warnings:?}"
        );
    }
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    tracer.stop();
}

/// Not a test by itself: the child process of [`a_killed_run_leaves_no_table`]. Starts a tracer
/// in its namespace, prints the table name, and waits to be killed.
#[test]
#[ignore = "child process of a_killed_run_leaves_no_table"]
fn crash_child_holds_a_tracer() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    // Prefixes of both versions, a protocol and a port: every kind of match the table's rules
    // use.
    let f = TraceFilter {
        guest_ips: vec![Ipv4Addr::new(10, 77, 0, 2).into()],
        dsts: vec![
            "203.0.113.0/24".parse().unwrap(),
            "2001:db8::/64".parse().unwrap(),
        ],
        packets: PacketFilter {
            proto: Proto::Tcp,
            port: Some(8080),
        },
    };
    let (tracer, _) = RuleTracer::start(&f).expect("start in the child");
    println!("TABLE {}", tracer.table());
    std::mem::forget(tracer);
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn a_killed_run_leaves_no_table() {
    let lab = Lab::new(LabOptions::default());
    let exe = std::env::current_exe().expect("test binary");
    let mut child = lab
        .hv_cmd(exe.to_str().expect("utf-8 path"))
        .args([
            "crash_child_holds_a_tracer",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    let table = out
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("TABLE ").map(str::to_string))
        .expect("the child printed its table");
    assert!(tables(&lab).contains(&table));
    // `ip netns exec` execs the test binary in place: this is the tracer's process.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().expect("wait");
    // The kernel removes an owner table when its socket closes with the process.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tables(&lab).contains(&table) {
        assert!(
            Instant::now() < deadline,
            "table {table} survived its process"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (tracer, warnings) = start(&lab, &filter(&lab, Proto::Any, None));
    assert!(warnings.is_empty(), "nothing left to clean: {warnings:?}");
    tracer.stop();
}

#[test]
fn packets_of_other_flows_are_not_traced() {
    let lab = Lab::new(LabOptions::default());
    let (tracer, _) = start(&lab, &filter(&lab, Proto::Icmp, None));
    let mut vm = FakeVm::attach(&lab);
    // Another destination (the outside's gateway address), answered through the same NAT.
    for seq in 1..=3 {
        let r = vm.ping(lab.outside_gw, 0x1111, seq, Duration::from_secs(1));
        assert!(r.is_some(), "lab broken: no reply from {}", lab.outside_gw);
    }
    std::thread::sleep(Duration::from_millis(300));
    let other = tracer.decisions();
    assert!(
        other.is_empty(),
        "decisions for a flow not followed:\n{}",
        dump(&other)
    );
    // The followed flow is traced: its MASQUERADE rule at POSTROUTING, for example.
    let r = vm.ping(lab.dest, 0x2222, 1, Duration::from_secs(1));
    assert!(r.is_some(), "lab broken: no reply from {}", lab.dest);
    let masq = handle_of(&lab, "ip", "labnat", "masquerade");
    let d = wait_for(&tracer, "by the masquerade rule", |d| d.table == "labnat");
    assert_eq!((d.family.as_str(), d.chain.as_str()), ("ip", "post"));
    assert_eq!(d.handle, Some(masq));
    assert_eq!(d.verdict, "accept");
    assert_eq!(d.hook.as_deref(), Some("POSTROUTING"));
    assert!(d.rule.as_deref().unwrap_or_default().contains("masquerade"));
    let all = tracer.stop();
    eprintln!("decisions:\n{}", dump(&all));
    for d in &all {
        let ok = (d.src == Some(lab.guest_ip.into()) && d.dst == Some(lab.dest.into()))
            || d.src == Some(lab.dest.into());
        assert!(ok, "not the followed flow: {d}\n{}", dump(&all));
    }
}

#[test]
fn a_drop_in_a_jumped_to_chain_names_that_chain_and_the_jump() {
    let lab = Lab::new(LabOptions::default());
    lab.nft(
        "table inet labjump {
    chain filter_fwd {
        type filter hook forward priority 0; policy accept;
        ip daddr 203.0.113.1 jump guest_out
    }
    chain guest_out {
        icmp type echo-request counter drop
    }
}
",
    );
    let jump = handle_of(&lab, "inet", "labjump", "jump guest_out");
    let drop = handle_of(&lab, "inet", "labjump", "echo-request");
    let (tracer, _) = start(&lab, &filter(&lab, Proto::Icmp, None));
    let mut vm = FakeVm::attach(&lab);
    assert_eq!(vm.ping(lab.dest, 7, 1, Duration::from_millis(300)), None);
    let d = wait_for(&tracer, "by the drop rule", |d| d.chain == "guest_out");
    let all = tracer.stop();
    eprintln!("decisions:\n{}", dump(&all));
    assert_eq!(d.handle, Some(drop));
    assert_eq!(
        d.rule.as_deref(),
        Some("icmp type echo-request counter drop")
    );
    assert_eq!(d.verdict, "drop");
    assert_eq!(
        d.hook.as_deref(),
        Some("FORWARD"),
        "inherited from the base chain"
    );
    let j = all
        .iter()
        .find(|d| d.handle == Some(jump))
        .unwrap_or_else(|| panic!("no jump decision:\n{}", dump(&all)));
    assert_eq!(j.verdict, "jump guest_out");
    assert_eq!(j.chain, "filter_fwd");
    assert!(
        all.iter().all(|d| !d.policy),
        "the drop ended the evaluation:\n{}",
        dump(&all)
    );
}

#[test]
fn a_destination_rewritten_by_dnat_stays_followed_through_conntrack() {
    let lab = Lab::new(LabOptions::default());
    lab.nft(
        "table ip labdnat {
    chain pre {
        type nat hook prerouting priority dstnat;
        ip daddr 203.0.113.1 dnat to 192.0.2.1
    }
    chain after_dnat {
        type filter hook forward priority 0; policy accept;
        ip daddr 192.0.2.1 counter
    }
}
",
    );
    let (tracer, _) = start(&lab, &filter(&lab, Proto::Icmp, None));
    let mut vm = FakeVm::attach(&lab);
    vm.ping(lab.dest, 9, 1, Duration::from_millis(500));
    let dnat = wait_for(&tracer, "by the DNAT rule", |d| d.chain == "pre");
    assert_eq!(dnat.hook.as_deref(), Some("PREROUTING"));
    assert_eq!(dnat.dst, Some(lab.dest.into()), "before the rewrite");
    // At FORWARD the packet has another destination; its conntrack entry links it (Linux 6.16+
    // reports conntrack ids in traces).
    let fwd = wait_for(&tracer, "at FORWARD after DNAT", |d| {
        d.chain == "after_dnat"
    });
    let all = tracer.stop();
    eprintln!("decisions:\n{}", dump(&all));
    assert_eq!(fwd.dst, Some(lab.outside_gw.into()));
    assert_eq!(fwd.verdict, "continue");
    assert_eq!(fwd.rule.as_deref(), Some("ip daddr 192.0.2.1 counter"));
}
