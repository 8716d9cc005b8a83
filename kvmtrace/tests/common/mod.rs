//! Runs the real `kvmtrace` binary inside a lab's hypervisor namespace while a fake VM (or a
//! real guest) sends traffic, and returns what it printed.
#![allow(dead_code)]

use kvmtrace_lab::lab::Lab;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The binary under test: the one cargo builds for the tests, or the one `KVMTRACE_BIN` names
/// when the tests are compiled, e.g. the static build:
/// `KVMTRACE_BIN=$(cargo xtask static) cargo test -p kvmtrace --test follow`.
pub const BIN: &str = match option_env!("KVMTRACE_BIN") {
    Some(bin) => bin,
    None => env!("CARGO_BIN_EXE_kvmtrace"),
};

/// A running `kvmtrace follow`.
pub struct Running {
    child: Child,
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

/// The outcome of one run.
pub struct Run {
    pub code: i32,
    pub lines: Vec<Value>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn verdicts(&self) -> Vec<&Value> {
        self.lines
            .iter()
            .filter(|v| v["type"] == "verdict")
            .collect()
    }
    pub fn hops(&self) -> Vec<&Value> {
        self.lines.iter().filter(|v| v["type"] == "hop").collect()
    }
    /// The single verdict of the run (panics with the whole output otherwise).
    pub fn verdict(&self) -> &Value {
        let v = self.verdicts();
        assert_eq!(
            v.len(),
            1,
            "expected one verdict:\n{}\n{}",
            self.stdout,
            self.stderr
        );
        v[0]
    }
    pub fn stats(&self) -> &Value {
        self.lines
            .iter()
            .find(|v| v["type"] == "stats")
            .unwrap_or_else(|| panic!("no stats line:\n{}", self.stderr))
    }
    pub fn dump(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Starts `kvmtrace follow <args>` in the lab's hypervisor namespace and waits until it is
/// attached (it says "following" on stderr).
pub fn start(lab: &Lab, args: &[&str]) -> Running {
    start_env(lab, args, &[])
}

/// [`start`] with extra environment variables.
pub fn start_env(lab: &Lab, args: &[&str], env: &[(&str, &str)]) -> Running {
    start_in(&lab.hv, args, env)
}

/// [`start_env`] in any named network namespace.
pub fn start_in(ns: &str, args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, BIN])
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn kvmtrace");
    let err = child.stderr.take().expect("stderr");
    let buf = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let b2 = buf.clone();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            b2.lock().unwrap().push_str(&(line.clone() + "\n"));
            if !sent && line.contains("following") {
                let _ = tx.send(());
                sent = true;
            }
        }
        if !sent {
            let _ = tx.send(());
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("kvmtrace did not get ready within 60 s");
    Running { child, stderr: buf }
}

impl Running {
    /// Waits for the run to end by itself (--duration / --count).
    pub fn wait(mut self) -> Run {
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut out)
            .expect("read stdout");
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(Instant::now() < deadline, "kvmtrace did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        std::thread::sleep(Duration::from_millis(50));
        let stderr = self.stderr.lock().unwrap().clone();
        let lines = out
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
            .collect();
        Run {
            code: status.code().unwrap_or(-1),
            lines,
            stdout: out,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to kvmtrace itself (the child of `ip netns exec` is exec'd in place).
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

/// Runs kvmtrace without a lab (bad input cases).
pub fn run_plain(args: &[&str]) -> Run {
    let out = Command::new(BIN).args(args).output().expect("run kvmtrace");
    Run {
        code: out.status.code().unwrap_or(-1),
        lines: Vec::new(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// Asserts a string field of a JSON object.
#[track_caller]
pub fn field<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

/// Asserts string fields of a verdict (or any JSON object) at once: `"status=dropped
/// stage=netfilter hook=FORWARD"`, each field exactly that value (values have no spaces); a
/// failure names the field and shows the whole run.
#[track_caller]
pub fn assert_fields(run: &Run, v: &Value, expected: &str) {
    for kv in expected.split_whitespace() {
        let (k, want) = kv
            .split_once('=')
            .unwrap_or_else(|| panic!("`{kv}`: expected field=value"));
        assert_eq!(field(v, k), want, "field {k}: {}", run.dump());
    }
}

/// BPF objects (links and programs) by kernel id, to prove what a kvmtrace process attached and
/// that it is gone afterwards.
///
/// Other tests (and other users) load BPF programs on the same machine at the same time, so
/// global counts rise and fall on their own. What belongs to one run is read from the process
/// itself: the `link_id` and `prog_id` lines of its fds in `/proc/<pid>/fdinfo`. Kernel ids are
/// never reused while an object lives, so "none of those ids exists any more" is exact.
pub mod bpf_objects {
    use std::collections::BTreeSet;
    use std::time::{Duration, Instant};

    // enum bpf_cmd (include/uapi/linux/bpf.h).
    const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
    const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;

    /// Links and programs, by id.
    #[derive(Debug, Default, Clone, PartialEq, Eq)]
    pub struct Ids {
        pub links: BTreeSet<u32>,
        pub progs: BTreeSet<u32>,
    }

    /// The ids of every link and program in the kernel now (`BPF_*_GET_NEXT_ID`).
    pub fn system() -> Ids {
        Ids {
            links: all(BPF_LINK_GET_NEXT_ID),
            progs: all(BPF_PROG_GET_NEXT_ID),
        }
    }

    fn all(cmd: libc::c_long) -> BTreeSet<u32> {
        // The GET_NEXT_ID part of union bpf_attr: start_id, next_id, open_flags.
        #[repr(C)]
        struct NextId {
            start_id: u32,
            next_id: u32,
            open_flags: u32,
        }
        let mut ids = BTreeSet::new();
        let mut attr = NextId {
            start_id: 0,
            next_id: 0,
            open_flags: 0,
        };
        loop {
            // SAFETY: bpf(2) reads and writes only `attr`, whose size we pass.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    cmd,
                    &mut attr as *mut NextId,
                    std::mem::size_of::<NextId>() as libc::c_uint,
                )
            };
            if rc != 0 {
                let err = std::io::Error::last_os_error();
                assert_eq!(
                    err.raw_os_error(),
                    Some(libc::ENOENT),
                    "bpf GET_NEXT_ID ({cmd}): {err}"
                );
                return ids;
            }
            ids.insert(attr.next_id);
            attr.start_id = attr.next_id;
        }
    }

    /// The links and programs process `pid` holds open: `link_id:` lines of its link fds,
    /// `prog_id:` lines of its program fds and of its links (the program a link runs).
    pub fn held_by(pid: u32) -> Ids {
        let mut ids = Ids::default();
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
            return ids;
        };
        for entry in dir.flatten() {
            // An fd closed meanwhile is simply not there any more.
            let Ok(info) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            for line in info.lines() {
                let Some((key, value)) = line.split_once(':') else {
                    continue;
                };
                let Ok(id) = value.trim().parse::<u32>() else {
                    continue;
                };
                match key.trim() {
                    "link_id" => ids.links.insert(id),
                    "prog_id" => ids.progs.insert(id),
                    _ => continue,
                };
            }
        }
        ids
    }

    /// Waits (the kernel frees a program after an RCU grace period) until none of `ids` exists
    /// any more; panics naming those that are left.
    pub fn assert_all_gone(ids: &Ids, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = system();
            let links: Vec<_> = ids.links.intersection(&now.links).collect();
            let progs: Vec<_> = ids.progs.intersection(&now.progs).collect();
            if links.is_empty() && progs.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left in the kernel after kvmtrace exited: links {links:?}, programs {progs:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What process `pid` attached while running: its links and programs, each checked to be
    /// new since `before` and listed by the kernel now (the check after exit uses the same
    /// listing). Panics when it holds no link or no program.
    pub fn attached_by(pid: u32, before: &Ids) -> Ids {
        let ours = held_by(pid);
        assert!(
            !ours.links.is_empty() && !ours.progs.is_empty(),
            "kvmtrace (pid {pid}) holds no BPF link or program while following: {ours:?}"
        );
        let now = system();
        assert!(
            ours.links.is_subset(&now.links) && ours.progs.is_subset(&now.progs),
            "the kernel's id lists miss objects kvmtrace holds: ours {ours:?}"
        );
        assert!(
            ours.links.is_disjoint(&before.links) && ours.progs.is_disjoint(&before.progs),
            "kvmtrace holds objects that existed before it started: {ours:?}"
        );
        ours
    }
}

/// The JSON objects of one `type` in JSON Lines output (every line must parse).
pub fn objects(stdout: &str, kind: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .filter(|v: &serde_json::Value| v["type"] == kind)
        .collect()
}

/// `replay --json` and `export --format jsonl` of `file` print exactly `live`'s verdicts (whole
/// objects, every field: rule, suppressed, summary, counts), and `report` says the same.
pub fn assert_offline_equals_live(file: &str, live: &Run) -> serde_json::Value {
    let live_v: Vec<serde_json::Value> = live.verdicts().into_iter().cloned().collect();
    let replay = run_plain(&["replay", file, "--json"]);
    assert_eq!(
        replay.code,
        live.code,
        "the same exit code: {}",
        replay.dump()
    );
    assert_eq!(
        objects(&replay.stdout, "verdict"),
        live_v,
        "replay's verdicts differ from the live ones:\n--- live\n{}\n--- replay\n{}",
        live.dump(),
        replay.dump()
    );
    assert!(
        !replay.stderr.contains("differ from the ones recomputed"),
        "{}",
        replay.dump()
    );
    let export = run_plain(&["export", file, "--format", "jsonl", "-o", "-"]);
    assert_eq!(export.code, 0, "{}", export.dump());
    assert_eq!(
        objects(&export.stdout, "verdict"),
        live_v,
        "export's verdicts differ from the live ones:\n{}",
        export.dump()
    );
    let report = run_plain(&["report", file, "--format", "md", "-o", "-"]);
    assert_eq!(report.code, 0, "{}", report.dump());
    let md = unescape_markdown(&report.stdout);
    for v in &live_v {
        assert!(
            md.contains(field(v, "summary")),
            "the report gives the live summary {:?}:\n{}",
            field(v, "summary"),
            report.stdout
        );
    }
    let stats = objects(&replay.stdout, "stats");
    assert_eq!(stats.len(), 1, "{}", replay.dump());
    stats[0].clone()
}

/// Markdown text with its backslash escapes (`\[`, `\_`, …) undone.
pub fn unescape_markdown(md: &str) -> String {
    let mut out = String::with_capacity(md.len());
    let mut chars = md.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(n)) if n.is_ascii_punctuation() => out.push(chars.next().unwrap()),
            _ => out.push(c),
        }
    }
    out
}

/// Makes the child of `cmd` (a stand-in QEMU) inherit `fds` as descriptors `first`,
/// `first + 1`, … and die with the test. Each source is first copied above every target,
/// so that a source that already has a target's number (the test threads share one fd
/// table) is neither clobbered nor left close-on-exec by a `dup2` onto itself.
pub fn hand_down_fds(cmd: &mut Command, fds: Vec<std::os::fd::RawFd>, first: std::os::fd::RawFd) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: fcntl, dup2 and prctl are async-signal-safe; the fds stay open in the parent.
    unsafe {
        cmd.pre_exec(move || {
            let above = first + fds.len() as std::os::fd::RawFd;
            let mut high = [0; 8];
            for (i, &fd) in fds.iter().enumerate() {
                high[i] = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, &h) in high.iter().take(fds.len()).enumerate() {
                // dup2 clears FD_CLOEXEC on the copy.
                if libc::dup2(h, first + i as std::os::fd::RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// The verdict's next step works: its `fix` is exactly `want`; run as a shell would in the
/// network namespace `ns` (`ip netns exec NS sh -c FIX`) it succeeds, and `recheck` (a new
/// `follow` with the same traffic) then ends in one verdict, `delivered` at the VM's tap, with
/// no fix of its own. Returns that run.
#[track_caller]
pub fn fix_then_delivered(
    ns: &str,
    broken: &Run,
    v: &Value,
    want: &str,
    recheck: impl FnOnce() -> Run,
) -> Run {
    assert_eq!(field(v, "fix"), want, "{}", broken.dump());
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", want])
        .output()
        .expect("run the fix");
    assert!(
        out.status.success(),
        "the fix `{want}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let run = recheck();
    let after = run.verdict();
    assert_eq!(
        field(after, "status"),
        "delivered",
        "after `{want}`: {}",
        run.dump()
    );
    assert_eq!(field(after, "stage"), "tap", "{}", run.dump());
    assert_eq!(field(after, "direction"), "reply", "{}", run.dump());
    assert!(after.get("fix").is_none(), "{}", run.dump());
    assert_eq!(run.code, 0, "{}", run.dump());
    run
}
