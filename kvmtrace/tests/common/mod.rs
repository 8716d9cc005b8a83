//! Runs the real `kvmtrace` binary inside a lab's hypervisor namespace while a fake VM (or a
//! real guest) sends traffic, and returns what it printed.
#![allow(dead_code)]

use kvmtrace_lab::lab::Lab;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_kvmtrace");

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
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.hv, BIN])
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
