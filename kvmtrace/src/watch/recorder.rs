//! The flight recorder: when a VM's drops cross a threshold, `kvmtrace follow --record` runs
//! (a child of this same binary) for that VM towards its last dropped packet's remote address,
//! for a few seconds; the trace lands in a directory with a size cap and rotation, and one
//! JSON line names the file, the VM and the verdict.
//!
//! One recording at a time per VM, then a cooldown. The child is the ordinary `follow`, so
//! `replay`, `export` and `report` read its traces; it flushes the trace after every batch of
//! events and closes it on SIGTERM, so a VM vanishing mid-recording (its tap's links go with
//! it) or `watch` stopping still leaves a readable trace. The child gets SIGTERM if `watch`
//! dies (PR_SET_PDEATHSIG).

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// When a VM's drops call for a recording.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    /// Drops within `window_s` that start a recording.
    pub drops: u64,
    pub window_s: f64,
    /// Seconds after a recording ends before the same VM may start another.
    pub cooldown_s: f64,
}

impl Default for Threshold {
    fn default() -> Self {
        Threshold {
            drops: 5,
            window_s: 10.0,
            cooldown_s: 60.0,
        }
    }
}

/// Per-VM drop rate over a sliding window, from cumulative totals sampled over time.
#[derive(Debug, Default)]
pub struct RateWindow {
    samples: VecDeque<(Duration, u64)>,
}

impl RateWindow {
    /// Adds a sample (monotonic time, cumulative drops) and returns the drops within `window`
    /// (the newest total minus the oldest sample inside the window).
    pub fn observe(&mut self, now: Duration, total: u64, window: Duration) -> u64 {
        self.samples.push_back((now, total));
        // The front stays the newest sample at or before the window's start (or the oldest
        // one there is), so the window is covered whole and memory stays bounded.
        while self.samples.len() >= 2 && now.saturating_sub(self.samples[1].0) >= window {
            self.samples.pop_front();
        }
        let base = self.samples.front().map(|s| s.1).unwrap_or(total);
        total.saturating_sub(base)
    }
}

/// Per-VM recorder state.
#[derive(Debug, Default)]
pub struct VmRecState {
    pub rate: RateWindow,
    pub recording: bool,
    /// When the last recording ended (monotonic).
    pub ended: Option<Duration>,
}

impl VmRecState {
    /// Feeds the VM's cumulative drop total; true when a recording should start now.
    pub fn should_record(&mut self, now: Duration, total: u64, t: &Threshold) -> bool {
        let window = Duration::from_secs_f64(t.window_s.max(0.001));
        let n = self.rate.observe(now, total, window);
        if self.recording || t.drops == 0 || n < t.drops {
            return false;
        }
        if let Some(e) = self.ended {
            if now.saturating_sub(e) < Duration::from_secs_f64(t.cooldown_s.max(0.0)) {
                return false;
            }
        }
        true
    }
}

/// Where and how much is recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecorderSettings {
    pub enabled: bool,
    pub dir: PathBuf,
    /// Seconds each recording lasts.
    pub record_s: f64,
    /// Total size of the directory's traces; the oldest go first.
    pub max_bytes: u64,
    pub max_files: usize,
}

impl Default for RecorderSettings {
    fn default() -> Self {
        RecorderSettings {
            enabled: true,
            dir: PathBuf::from("/var/lib/kvmtrace/recordings"),
            record_s: 5.0,
            max_bytes: 256 << 20,
            max_files: 100,
        }
    }
}

/// Traces of the recorder in `dir` (oldest first), with sizes.
fn traces_in(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.starts_with("kvmtrace-") && n.ends_with(".trace")
                })
                .filter_map(|e| {
                    let m = e.metadata().ok()?;
                    Some((e.path(), m.len(), m.modified().ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|(p, _, t)| (*t, p.clone()));
    v
}

/// Deletes the oldest traces until `room_files` more files fit under the caps (rotation).
/// After a recording (`room_files` 0) the newest trace is kept even when it alone is over the
/// size cap: a flood's recording is the one the operator needs. Returns the files removed.
pub fn rotate(dir: &Path, max_bytes: u64, max_files: usize, room_files: usize) -> Vec<PathBuf> {
    let mut traces = traces_in(dir);
    let mut total: u64 = traces.iter().map(|(_, s, _)| s).sum();
    let mut removed = Vec::new();
    let keep = usize::from(room_files == 0);
    while traces.len() > keep
        && (traces.len() + room_files > max_files.max(room_files) || total > max_bytes)
    {
        let (p, s, _) = traces.remove(0);
        if std::fs::remove_file(&p).is_ok() {
            removed.push(p);
        }
        total = total.saturating_sub(s);
    }
    removed
}

/// A file name safe for any VM name.
pub fn trace_name(vm: &str, unix_s: u64, seq: u64) -> String {
    let safe: String = vm
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    format!("kvmtrace-{safe}-{unix_s}-{seq}.trace")
}

/// A finished recording, as the JSON line says it.
#[derive(Clone, Debug, Serialize)]
pub struct Finished {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub vm: String,
    pub tap: String,
    pub file: String,
    pub dest: String,
    pub trigger_drops: u64,
    pub window_s: f64,
    pub exit_code: Option<i32>,
    /// The first verdict that is not `delivered` (else the first), as `follow --json` wrote it.
    pub verdict: Option<serde_json::Value>,
    pub verdicts: usize,
}

/// What starts a recording.
#[derive(Clone, Debug)]
pub struct Job {
    pub vm: String,
    pub tap: String,
    /// `follow`'s DEST: one address, or one prefix of each version separated by a space.
    pub dest: String,
    pub file: PathBuf,
    pub record_s: f64,
    pub trigger_drops: u64,
    pub window_s: f64,
}

/// Spawns `follow` for the job; when it ends, `done` gets what the JSON line says. Returns
/// the child's pid.
pub fn spawn(job: Job, done: tokio::sync::mpsc::UnboundedSender<Finished>) -> Result<u32> {
    use tokio::io::AsyncBufReadExt as _;
    let exe = std::env::current_exe().context("finding this binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("follow")
        .arg(&job.tap)
        .args(job.dest.split_whitespace())
        .arg("--record")
        .arg(&job.file)
        .arg("--duration")
        .arg(format!("{}", job.record_s))
        .arg("--json")
        .arg("--no-tui")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting `kvmtrace follow`")?;
    let pid = child.id().unwrap_or(0);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    tokio::spawn(async move {
        let err_task = tokio::spawn(async move {
            let mut lines = Vec::new();
            if let Some(e) = stderr {
                let mut r = tokio::io::BufReader::new(e).lines();
                while let Ok(Some(l)) = r.next_line().await {
                    if lines.len() < 20 {
                        lines.push(l);
                    }
                }
            }
            lines
        });
        let mut verdicts: Vec<serde_json::Value> = Vec::new();
        if let Some(o) = stdout {
            let mut r = tokio::io::BufReader::new(o).lines();
            while let Ok(Some(l)) = r.next_line().await {
                if !l.contains("\"verdict\"") {
                    continue;
                }
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) {
                    if v["type"] == "verdict" && verdicts.len() < 64 {
                        verdicts.push(v);
                    }
                }
            }
        }
        let status = child.wait().await.ok();
        let errs = err_task.await.unwrap_or_default();
        for l in errs.iter().filter(|l| !l.contains("following")) {
            log::debug!("recorder for {}: {l}", job.tap);
        }
        let verdict = verdicts
            .iter()
            .find(|v| v["status"] != "delivered")
            .or(verdicts.first())
            .cloned();
        let _ = done.send(Finished {
            kind: "flight_recording",
            vm: job.vm,
            tap: job.tap,
            file: job.file.display().to_string(),
            dest: job.dest,
            trigger_drops: job.trigger_drops,
            window_s: job.window_s,
            exit_code: status.and_then(|s| s.code()),
            verdict,
            verdicts: verdicts.len(),
        });
    });
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: u64) -> Duration {
        Duration::from_secs(x)
    }

    #[test]
    fn rate_counts_drops_within_the_window_only() {
        let mut r = RateWindow::default();
        let w = s(10);
        assert_eq!(r.observe(s(0), 0, w), 0);
        assert_eq!(r.observe(s(1), 3, w), 3);
        assert_eq!(r.observe(s(2), 4, w), 4);
        // 10 s later the first drops have left the window.
        assert_eq!(r.observe(s(11), 4, w), 1);
        assert_eq!(r.observe(s(12), 4, w), 0);
        assert_eq!(r.observe(s(13), 9, w), 5);
        // Bounded memory: old samples go.
        for t in 14..1000 {
            r.observe(s(t), 9, w);
        }
        assert!(r.samples.len() <= 12, "{}", r.samples.len());
    }

    #[test]
    fn threshold_starts_one_recording_then_cools_down() {
        let t = Threshold {
            drops: 5,
            window_s: 10.0,
            cooldown_s: 60.0,
        };
        let mut st = VmRecState::default();
        assert!(!st.should_record(s(0), 0, &t));
        assert!(!st.should_record(s(1), 4, &t), "4 drops are below 5");
        assert!(st.should_record(s(2), 5, &t), "5 drops in 10 s");
        st.recording = true;
        assert!(!st.should_record(s(3), 50, &t), "one recording at a time");
        st.recording = false;
        st.ended = Some(s(8));
        assert!(!st.should_record(s(9), 100, &t), "cooldown");
        assert!(!st.should_record(s(67), 150, &t), "still cooling down");
        assert!(
            st.should_record(s(68), 200, &t),
            "cooldown over, still dropping"
        );
        // A slow trickle never triggers.
        let mut slow = VmRecState::default();
        for i in 0..100u64 {
            assert!(!slow.should_record(s(i * 3), i, &t), "1 drop per 3 s");
        }
        // Threshold 0 disables.
        let off = Threshold { drops: 0, ..t };
        assert!(!VmRecState::default().should_record(s(0), 1000, &off));
    }

    #[test]
    fn rotation_keeps_the_newest_within_the_caps() {
        let dir = std::env::temp_dir().join(format!("kvmtrace-rot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..5 {
            let p = dir.join(trace_name("vm", 1000 + i, 0));
            std::fs::write(&p, vec![0u8; 100]).unwrap();
            let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1000 + i);
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        std::fs::write(dir.join("unrelated.txt"), b"x").unwrap();
        // Room for one more under 3 files: the 3 oldest go.
        let removed = rotate(&dir, 1 << 20, 3, 1);
        assert_eq!(removed.len(), 3, "{removed:?}");
        let left: Vec<_> = traces_in(&dir).into_iter().map(|(p, _, _)| p).collect();
        assert_eq!(
            left,
            vec![
                dir.join(trace_name("vm", 1003, 0)),
                dir.join(trace_name("vm", 1004, 0))
            ]
        );
        // Byte cap.
        assert_eq!(rotate(&dir, 150, 100, 0).len(), 1);
        assert!(dir.join("unrelated.txt").exists());
        // After a recording, the newest trace stays even alone over the cap.
        assert!(rotate(&dir, 10, 100, 0).is_empty());
        assert!(dir.join(trace_name("vm", 1004, 0)).exists());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(trace_name("a b/c", 1, 2), "kvmtrace-a_b_c-1-2.trace");
    }
}
