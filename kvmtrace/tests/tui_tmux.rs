//! Smoke test of the terminal UI: the real binary in a real terminal (a detached tmux session),
//! following a fake VM in a lab whose FORWARD policy drops, read back with `capture-pane`.
//! Needs root (namespaces, eBPF) and tmux.

use kvmtrace_lab::lab::{Firewall, Lab, LabOptions};
use kvmtrace_lab::vm::FakeVm;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The binary under test; `KVMTRACE_BIN` at compile time overrides it (see `common::BIN`).
const BIN: &str = match option_env!("KVMTRACE_BIN") {
    Some(bin) => bin,
    None => env!("CARGO_BIN_EXE_kvmtrace"),
};

/// A detached tmux session, killed on drop (also when an assertion fails).
struct Tmux {
    name: String,
}

impl Tmux {
    fn start(cmd: &str) -> Tmux {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("kvmtrace-tui-{}-{nanos:x}", std::process::id());
        let st = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &name,
                "-x",
                "160",
                "-y",
                "48",
                cmd,
            ])
            .status()
            .expect("tmux is needed for this test (apt-get install tmux)");
        assert!(st.success(), "tmux new-session failed: {st}");
        Tmux { name }
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            let st = Command::new("tmux")
                .args(["send-keys", "-t", &self.name, k])
                .status()
                .expect("tmux send-keys");
            assert!(st.success());
            // One key at a time: an Esc followed at once by a letter reads as Alt+letter.
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    /// Waits until the screen satisfies `ok`; panics with the last screen after `timeout`.
    #[track_caller]
    fn wait_for(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .status();
    }
}

#[test]

fn follow_in_a_terminal_shows_the_path_the_drop_and_the_verdict_live() {
    let lab = Lab::new(LabOptions {
        forward_drop: Some(Firewall::Nftables),
        ..Default::default()
    });
    // The shell stays after kvmtrace exits so the screen it leaves behind can be read.
    let tmux = Tmux::start(&format!(
        "ip netns exec {} {BIN} follow vnet0 203.0.113.1 --duration 8; \
         echo KVMTRACE_EXIT=$?; sleep 60",
        lab.hv
    ));
    let s = tmux.wait_for("the UI", Duration::from_secs(60), |s| {
        s.contains("packet path") || s.contains("KVMTRACE_EXIT=")
    });
    assert!(
        !s.contains("KVMTRACE_EXIT="),
        "kvmtrace ended without showing its UI on a terminal:\n{s}"
    );
    assert!(
        s.lines()
            .next()
            .is_some_and(|l| l.contains(" kvmtrace ") && l.contains("tap vnet0 → 203.0.113.1")),
        "no status line:\n{s}"
    );

    // Ping until the drop is on screen (the tracer may still be attaching at first).
    let mut vm = FakeVm::attach(&lab);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seq = 0;
    while seq < 3 || (!tmux.screen().contains('✗') && Instant::now() < deadline) {
        seq += 1;
        vm.ping(lab.dest, 0x4b54, seq, Duration::from_millis(300));
    }
    // The verdicts are recomputed now and then, not at every event: wait for them.
    let is_verdict =
        |l: &str| l.starts_with("│DROPPED ") && l.contains("icmp 10.77.0.2 > 203.0.113.1");
    let s = tmux.wait_for("the flow's verdict", Duration::from_secs(5), |s| {
        s.lines().any(is_verdict) && s.contains("inet labfilter forward (policy drop")
    });
    let request_row = s
        .lines()
        .find(|l| l.contains("request ") && l.contains("─▶"))
        .unwrap_or_else(|| panic!("no request row:\n{s}"));
    assert!(request_row.contains("■ FORWARD"), "{s}");
    assert!(request_row.contains("POSTROUTING 0"), "{s}");
    assert!(s.contains("■ requests stop at FORWARD"), "{s}");
    assert!(s.contains("NETFILTER_DROP"), "{s}");
    assert!(
        s.lines()
            .any(|l| l.contains("DROPPED at FORWARD on br0 [NETFILTER_DROP]")),
        "no packet row with its drop:\n{s}"
    );

    // Enter: the newest packet's journey, down to its drop.
    tmux.keys(&["Enter"]);
    let s = tmux.wait_for("the journey view", Duration::from_secs(3), |s| {
        s.contains("DROP NETFILTER_DROP at")
    });
    // The drop's hop names the hook it died in (the path hook set has no netfilter links).
    assert!(s.contains("drop in FORWARD"), "{s}");
    tmux.keys(&["Escape"]);
    tmux.wait_for("the overview again", Duration::from_secs(3), |s| {
        s.contains("packet path")
    });

    // q quits before --duration, and the terminal is the shell's again, with the verdict.
    tmux.keys(&["q"]);
    let s = tmux.wait_for("kvmtrace to exit", Duration::from_secs(20), |s| {
        s.contains("KVMTRACE_EXIT=")
    });
    assert!(s.contains("KVMTRACE_EXIT=1"), "a drop exits 1:\n{s}");
    assert!(
        !s.contains("packet path"),
        "the alternate screen was not left:\n{s}"
    );
    assert!(
        s.contains("DROPPED"),
        "no verdict printed after the UI:\n{s}"
    );
}

#[test]
fn replay_in_a_terminal_shows_the_recorded_outage() {
    // A trace of a real FORWARD-drop run (the model's recorded fixture).
    let dir = std::env::temp_dir().join(format!("kvmtrace-tui-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("outage.trace");
    let meta =
        kvmtrace::trace::Meta::new(Some("guest1".into()), "vnet0", None, "203.0.113.1", "any");
    let mut w = kvmtrace::trace::Writer::create(&file, &meta).unwrap();
    for line in include_str!("../src/model/fixtures/forward_drop.jsonl").lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let ev: kvmtrace::model::event::TraceEvent = serde_json::from_value(v.clone()).unwrap();
        w.event(v["journey"].as_u64().map(|j| j as usize), &ev)
            .unwrap();
    }
    w.finish(&[], Default::default(), &Default::default())
        .unwrap();

    let tmux = Tmux::start(&format!(
        "{BIN} replay {}; echo KVMTRACE_EXIT=$?; sleep 60",
        file.display()
    ));
    // Only the UI draws panels, a status line and a key-help line: line output (what replay
    // prints without a terminal, and after the UI closes) has none of them.
    let screen = tmux.wait_for("the replay's UI", Duration::from_secs(20), |s| {
        s.contains("┌ packet path") || s.contains("KVMTRACE_EXIT=")
    });
    assert!(
        !screen.contains("KVMTRACE_EXIT="),
        "replay ended without drawing its UI on a terminal:\n{screen}"
    );
    let screen = tmux.wait_for("the replayed verdict", Duration::from_secs(10), |s| {
        s.lines()
            .any(|l| l.starts_with("│DROPPED ") && l.contains("NETFILTER_DROP"))
    });
    let first = screen.lines().next().unwrap_or("");
    assert!(
        first.contains(" kvmtrace ")
            && first.contains("VM guest1 · tap vnet0 → 203.0.113.1")
            && first.contains("(replay)"),
        "no status line:\n{screen}"
    );
    for title in ["┌ packet path", "┌ verdict per flow", "┌ drop points (1)"] {
        assert!(screen.contains(title), "no panel {title:?}:\n{screen}");
    }
    assert!(
        screen
            .lines()
            .any(|l| l.contains("─▶ ■ FORWARD 1 ✗1 ─▶ POSTROUTING 0")),
        "no request row stopping at FORWARD:\n{screen}"
    );
    let help = screen.lines().rev().find(|l| !l.trim().is_empty());
    assert!(
        help.is_some_and(|l| l.contains("Enter inspect") && l.contains("q quit")),
        "no key-help line:\n{screen}"
    );
    tmux.keys(&["q"]);
    let s = tmux.wait_for("kvmtrace to exit", Duration::from_secs(10), |s| {
        s.contains("KVMTRACE_EXIT=")
    });
    assert!(s.contains("KVMTRACE_EXIT=1"), "a drop exits 1:\n{s}");
    assert!(
        !s.contains("┌ packet path"),
        "the alternate screen was not left:\n{s}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
