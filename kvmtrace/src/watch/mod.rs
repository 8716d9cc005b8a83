//! `kvmtrace watch`: a long-lived service that counts every VM's drops and tap traffic with
//! cheap always-on kernel programs, serves them to Prometheus, and starts a flight recording
//! (`follow --record`) for a VM whose drops cross a threshold. docs/watch.md has the metrics,
//! the cardinality bounds, the configuration and what SIGHUP reloads.
//!
//! - [`kernel`]: load, attach (kfree_skb once, TC per tap), read the maps (root);
//! - [`metrics`]: the prometheus-client registry, fed deltas (pure);
//! - [`recorder`]: threshold logic (pure), rotation, the `follow` child;
//! - [`http`]: `/metrics` and `/healthz`.

pub mod http;
pub mod metrics;
pub mod recorder;

use crate::capture::watch::WatchKernel;
use crate::host::resolve::{self, Roots};
use crate::model::event::NfHook;
use crate::model::Stage;
use anyhow::{anyhow, Context as _, Result};
use kvmtrace_common::watch::{
    WatchDropKey, WatchTapStats, WATCH_FROM_VM, WATCH_MAX_VMS, WATCH_TO_VM,
};
use metrics::{DropLabels, Metrics, TapDelta};
use recorder::{RecorderSettings, Threshold, VmRecState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How `watch` starts (`crate::cmd`'s flags, checked): the listen address, fixed for the
/// process's life, and the settings the flags give, under the config file that SIGHUP
/// re-reads.
#[derive(Clone, Debug)]
pub struct Launch {
    pub listen: SocketAddr,
    pub config: Option<PathBuf>,
    pub flags: Settings,
}

/// Everything SIGHUP can change. The listen address is fixed for the process's life.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub vms: Vec<String>,
    pub rescan_s: f64,
    pub threshold: Threshold,
    pub recorder: RecorderSettings,
    pub max_drop_series: usize,
}

/// The `--config` file: every field optional; present ones override the flags.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub vms: Option<Vec<String>>,
    pub rescan_s: Option<f64>,
    pub threshold_drops: Option<u64>,
    pub window_s: Option<f64>,
    pub cooldown_s: Option<f64>,
    pub record: Option<bool>,
    pub record_s: Option<f64>,
    pub record_dir: Option<PathBuf>,
    pub record_max_mib: Option<u64>,
    pub record_max_files: Option<usize>,
    pub max_drop_series: Option<usize>,
}

impl Settings {
    pub fn apply(mut self, f: &ConfigFile) -> Settings {
        if let Some(v) = &f.vms {
            self.vms = v.clone();
        }
        macro_rules! set {
            ($field:ident => $($dst:tt)+) => {
                if let Some(v) = f.$field.clone() {
                    self.$($dst)+ = v;
                }
            };
        }
        set!(rescan_s => rescan_s);
        set!(threshold_drops => threshold.drops);
        set!(window_s => threshold.window_s);
        set!(cooldown_s => threshold.cooldown_s);
        set!(record => recorder.enabled);
        set!(record_s => recorder.record_s);
        set!(record_dir => recorder.dir);
        set!(record_max_files => recorder.max_files);
        set!(max_drop_series => max_drop_series);
        if let Some(m) = f.record_max_mib {
            self.recorder.max_bytes = m << 20;
        }
        self
    }

    /// Rejects values that cannot work (the old settings stay on a bad reload).
    pub fn validate(&self) -> Result<()> {
        let pos = |v: f64, what: &str| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(anyhow!(
                    "{what} must be a positive number of seconds, not {v}"
                ))
            }
        };
        pos(self.rescan_s, "rescan_s")?;
        pos(self.threshold.window_s, "window_s")?;
        pos(self.recorder.record_s, "record_s")?;
        if !(self.threshold.cooldown_s >= 0.0 && self.threshold.cooldown_s.is_finite()) {
            return Err(anyhow!("cooldown_s must be 0 or more"));
        }
        if self.max_drop_series == 0 {
            return Err(anyhow!("max_drop_series must be at least 1"));
        }
        Ok(())
    }
}

/// The config file: JSON, where a line whose first non-blank character is `#` is a comment
/// (blanked, so that an error's line number is still the file's).
pub fn parse_config(text: &str) -> serde_json::Result<ConfigFile> {
    let json: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with('#') {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    serde_json::from_str(&json)
}

/// Flags, then the config file over them.
pub fn load_settings(l: &Launch) -> Result<Settings> {
    let base = l.flags.clone();
    let s = match &l.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the config file {}", p.display()))?;
            let f = parse_config(&text)
                .with_context(|| format!("parsing the config file {}", p.display()))?;
            base.apply(&f)
        }
        None => base,
    };
    s.validate()?;
    Ok(s)
}

/// One watched VM (one tap).
struct Vm {
    slot: u32,
    /// The `vm` label: the VM's name, else its tap.
    name: String,
    tap: String,
    ifindex: u32,
    prev_tap: [WatchTapStats; 2],
    drops_total: u64,
    mac: String,
    rec: VmRecState,
}

/// Does `v` match one of the `--vm` selections (none = every VM)?
fn selected(sel: &[String], v: &resolve::VmInfo) -> bool {
    sel.is_empty()
        || sel.iter().any(|s| {
            v.tap == *s
                || v.name.as_deref() == Some(s.as_str())
                || v.vmid.as_deref() == Some(s.as_str())
                || v.uuid.as_deref().is_some_and(|u| u.eq_ignore_ascii_case(s))
                || v.aliases.iter().any(|a| a == s)
                || v.mac.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(s))
        })
}

fn json_line(v: serde_json::Value) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn sub(a: u64, b: u64) -> u64 {
    // A counter that went down was recreated: count it from zero.
    if a >= b {
        a - b
    } else {
        a
    }
}

struct Watch {
    kernel: WatchKernel,
    metrics: Arc<Mutex<Metrics>>,
    settings: Settings,
    vms: BTreeMap<String, Vm>,
    prev_drops: HashMap<WatchDropKey, u64>,
    /// Labels of each kernel drop key seen (bounded by the kernel map, 4096).
    drop_labels: HashMap<WatchDropKey, DropLabels>,
    prev_overflow: (u64, u64),
    /// Program → (runs, run time ns) at the last update.
    prev_programs: HashMap<String, (u64, u64, u64)>,
    dev_names: HashMap<u32, String>,
    started: Instant,
    done_tx: tokio::sync::mpsc::UnboundedSender<recorder::Finished>,
    seq: u64,
    /// Recordings running: tap → pid of the `follow` child. Kept apart from `vms` so that a
    /// VM that vanishes mid-recording still has its recording waited for at exit.
    recordings: HashMap<String, u32>,
    /// Taps found whose programs could not be attached, with why: said once per tap and
    /// reason (retried at each rescan), and kept as `kvmtrace_vm_unwatched`.
    unwatched: BTreeMap<String, String>,
    /// Most NICs watched at once: `WATCH_MAX_VMS`, or less with `KVMTRACE_WATCH_MAX_VMS` (for
    /// tests of the limit, as `KVMTRACE_SKIP_HOOKS` is for missing hooks).
    max_vms: u32,
    /// VM slots free (below `max_vms`), lowest first.
    free_slots: std::collections::BTreeSet<u32>,
    /// Watched taps by slot and by ifindex: the counters and drops read every second are
    /// matched to their VM without a walk over every VM (thousands on a dense host).
    by_slot: HashMap<u32, String>,
    by_ifindex: HashMap<u32, String>,
    /// Taps the last rescan found that are not attached yet (`attach_pending`).
    pending: std::collections::VecDeque<(String, resolve::VmInfo)>,
}

impl Watch {
    /// Takes the lowest free VM slot.
    fn take_slot(&mut self) -> Option<u32> {
        self.free_slots.pop_first()
    }

    /// The tap watched under VM slot `slot`.
    fn tap_of_slot(&self, slot: u32) -> Option<&Vm> {
        self.by_slot.get(&slot).and_then(|t| self.vms.get(t))
    }

    /// Finds VMs that started or stopped; attaches to and detaches from their taps.
    fn rescan(&mut self) {
        let found: Vec<resolve::VmInfo> = resolve::list_vms(&Roots::system())
            .into_iter()
            .filter(|v| selected(&self.settings.vms, v))
            .collect();
        let mut want: BTreeMap<String, (resolve::VmInfo, u32)> = BTreeMap::new();
        let own_ns = netns_of("self");
        for mut v in found {
            // A process of another namespace holding a tap of the same name (another lab, a
            // container) does not name this namespace's tap.
            if v.pid.is_some_and(|p| netns_of(&p.to_string()) != own_ns) {
                v.name = None;
                v.mac = None;
            }
            // /proc shows taps of every namespace by name: only this namespace's count.
            if let Some(i) = crate::capture::watch::ifindex(&v.tap) {
                want.entry(v.tap.clone()).or_insert((v, i));
            }
        }
        let gone: Vec<String> = self
            .vms
            .iter()
            .filter(|(tap, vm)| want.get(*tap).is_none_or(|(_, i)| *i != vm.ifindex))
            .map(|(t, _)| t.clone())
            .collect();
        for tap in gone {
            if let Some(vm) = self.vms.remove(&tap) {
                self.kernel.remove_tap(vm.ifindex, vm.slot);
                self.by_slot.remove(&vm.slot);
                self.by_ifindex.remove(&vm.ifindex);
                self.free_slots.insert(vm.slot);
                self.prev_drops.retain(|k, _| k.vm != vm.slot);
                self.metrics
                    .lock()
                    .expect("metrics lock")
                    .vm_removed(&vm.tap);
                json_line(
                    serde_json::json!({"type": "vm", "event": "removed", "vm": vm.name, "tap": vm.tap}),
                );
            }
        }
        let mut pending = std::collections::VecDeque::new();
        for (tap, (info, _)) in want {
            if let Some(vm) = self.vms.get_mut(&tap) {
                // Named later than first seen (libvirt's XML, QEMU holding the tap): the
                // series move to the new labels and count on from there.
                let name = info.name.clone().unwrap_or_else(|| tap.clone());
                let mac = info.mac.clone().unwrap_or_default();
                if (info.name.is_some() && name != vm.name) || (!mac.is_empty() && mac != vm.mac) {
                    let mut m = self.metrics.lock().expect("metrics lock");
                    m.vm_removed(&tap);
                    m.vm_added(&name, &tap, &mac);
                    json_line(serde_json::json!({
                        "type": "vm", "event": "renamed", "vm": name, "tap": tap, "mac": mac,
                        "was": vm.name,
                    }));
                    vm.name = name;
                    vm.mac = mac;
                    let slot = vm.slot;
                    self.drop_labels.retain(|k, _| k.vm != slot);
                }
                continue;
            }
            pending.push_back((tap, info));
        }
        self.pending = pending;
        // Taps gone: no longer reported as unwatched.
        let vanished: Vec<String> = self
            .unwatched
            .keys()
            .filter(|t| crate::capture::watch::ifindex(t).is_none())
            .cloned()
            .collect();
        for t in vanished {
            self.unwatched.remove(&t);
            self.metrics
                .lock()
                .expect("metrics lock")
                .vm_watched_again(&t);
        }
    }

    /// Attaches to at most `n` of the taps the last rescan found new. Each tap costs two TCX
    /// links, and the kernel waits for an RCU grace period under the RTNL lock for each
    /// (`tcx_entry_sync()` in `tcx_link_prog_attach`, kernel/bpf/tcx.c, Linux 6.6-6.18): ~12 ms
    /// a link on the build machine, whoever attaches, so thousands of taps take tens of
    /// seconds. The
    /// loop attaches a few at a time and serves `/metrics`, signals and the counters between.
    fn attach_pending(&mut self, n: usize) {
        for _ in 0..n {
            let Some((tap, info)) = self.pending.pop_front() else {
                return;
            };
            // Gone since the rescan (the next one would drop it anyway): nothing to say.
            if crate::capture::watch::ifindex(&tap).is_none() {
                continue;
            }
            // Beyond the kernel maps' size the tap is refused like one that cannot be
            // attached to: said once, kept in `kvmtrace_vm_unwatched` with the reason, and
            // watched at a later rescan once a VM went away.
            let added = match self.take_slot() {
                Some(slot) => self
                    .kernel
                    .add_tap(slot, &tap)
                    .map(|i| (slot, i))
                    .inspect_err(|_| {
                        self.free_slots.insert(slot);
                    }),
                None => Err(anyhow!(
                    "{} VM NICs are watched already, the most watch can ({})",
                    self.max_vms,
                    if self.max_vms == WATCH_MAX_VMS {
                        "its kernel maps' size"
                    } else {
                        "KVMTRACE_WATCH_MAX_VMS"
                    }
                )),
            };
            match added {
                Ok((slot, ifindex)) => {
                    self.by_slot.insert(slot, tap.clone());
                    self.by_ifindex.insert(ifindex, tap.clone());
                    let name = info.name.clone().unwrap_or_else(|| tap.clone());
                    let mac = info.mac.clone().unwrap_or_default();
                    self.metrics
                        .lock()
                        .expect("metrics lock")
                        .vm_added(&name, &tap, &mac);
                    json_line(
                        serde_json::json!({"type": "vm", "event": "added", "vm": name, "tap": tap, "mac": mac}),
                    );
                    let recording = self.recordings.contains_key(&tap);
                    self.vms.insert(
                        tap.clone(),
                        Vm {
                            slot,
                            name,
                            tap: tap.clone(),
                            ifindex,
                            prev_tap: Default::default(),
                            drops_total: 0,
                            mac,
                            rec: VmRecState {
                                // A recording of a tap of the same name may still run.
                                recording,
                                ..Default::default()
                            },
                        },
                    );
                }
                Err(e) => {
                    let reason = format!("{e:#}");
                    if self.unwatched.get(&tap) != Some(&reason) {
                        let name = info.name.clone().unwrap_or_else(|| tap.clone());
                        eprintln!(
                            "kvmtrace watch: cannot watch {name} (tap {tap}): {reason}; its \
                             packets and drops are not counted (kvmtrace_vm_unwatched)"
                        );
                        json_line(serde_json::json!({
                            "type": "vm", "event": "unwatched", "vm": name, "tap": tap,
                            "reason": reason,
                        }));
                        self.metrics
                            .lock()
                            .expect("metrics lock")
                            .vm_unwatched(&name, &tap, &reason);
                        self.unwatched.insert(tap.clone(), reason);
                    }
                    continue;
                }
            }
            if self.unwatched.remove(&tap).is_some() {
                self.metrics
                    .lock()
                    .expect("metrics lock")
                    .vm_watched_again(&tap);
            }
        }
    }

    /// The labels of a drop site, worked out once per kernel key (its stack and location are
    /// in the key, so they never change).
    fn drop_labels_of(&mut self, k: &WatchDropKey) -> DropLabels {
        let (vm, tap) = self
            .tap_of_slot(k.vm)
            .map(|v| (v.name.clone(), v.tap.clone()))
            .unwrap_or_default();
        let reason = self.kernel.reason_name(k.reason);
        let loc_fn = self.kernel.location_fn(k.location);
        let stack = self.kernel.stack(&k.stack);
        let device = self.dev_name(k.ifindex);
        let kind = if self.by_ifindex.contains_key(&k.ifindex) {
            Stage::Tap
        } else if std::path::Path::new(&format!("/sys/class/net/{device}/bridge")).exists() {
            Stage::Bridge
        } else {
            Stage::Egress
        };
        let class = crate::model::drop::classify(reason.as_deref(), Some(&loc_fn), &stack);
        let (stage, hook) = class.place(kind);
        DropLabels {
            vm,
            tap,
            stage: stage.name().into(),
            hook: hook.map(NfHook::name).unwrap_or("none").into(),
            reason: class.reason,
            device,
            direction: direction(k.dir).into(),
        }
    }

    fn dev_name(&mut self, ifindex: u32) -> String {
        if let Some(n) = self.dev_names.get(&ifindex) {
            return n.clone();
        }
        let n =
            crate::capture::pathdevs::name_of(ifindex).unwrap_or_else(|| format!("if{ifindex}"));
        if self.dev_names.len() < 1024 {
            self.dev_names.insert(ifindex, n.clone());
        }
        n
    }

    /// Reads the kernel counters into the metrics; feeds the recorder.
    fn update(&mut self) {
        let taps = self.kernel.tap_totals();
        let drops = self.kernel.drops();
        let overflow = self.kernel.overflow_counters();
        let mut m = self.metrics.lock().expect("metrics lock");
        for (k, t) in taps {
            let Some(vm) = self
                .by_ifindex
                .get(&k.ifindex)
                .and_then(|t| self.vms.get_mut(t))
            else {
                continue;
            };
            let d = (k.dir == WATCH_TO_VM) as usize;
            let p = vm.prev_tap[d];
            let mut delta = TapDelta {
                packets: sub(t.packets, p.packets),
                bytes: sub(t.bytes, p.bytes),
                arp_requests: sub(t.arp_requests, p.arp_requests),
                arp_replies: sub(t.arp_replies, p.arp_replies),
                dhcp: sub(t.dhcp, p.dhcp),
                ndp_ns: sub(t.ndp_ns, p.ndp_ns),
                ndp_na: sub(t.ndp_na, p.ndp_na),
                ndp_rs: sub(t.ndp_rs, p.ndp_rs),
                ndp_ra: sub(t.ndp_ra, p.ndp_ra),
                dhcp6: sub(t.dhcp6, p.dhcp6),
                conv: Default::default(),
            };
            for (i, d) in delta.conv.iter_mut().enumerate() {
                *d = sub(t.conv[i], p.conv[i]);
            }
            vm.prev_tap[d] = t;
            m.add_tap(&vm.name, &vm.tap, direction(k.dir), delta);
        }
        m.add_kernel(
            sub(overflow.0, self.prev_overflow.0),
            sub(overflow.1, self.prev_overflow.1),
        );
        self.prev_overflow = overflow;
        for p in self.kernel.program_stats() {
            let prev = self
                .prev_programs
                .insert(p.name.clone(), (p.runs, p.run_time_ns, p.missed));
            let (r0, t0, x0) = prev.unwrap_or((0, 0, 0));
            m.add_program(
                &p.name,
                sub(p.runs, r0),
                sub(p.run_time_ns, t0),
                sub(p.missed, x0),
            );
        }
        drop(m);
        let mut seen = HashMap::with_capacity(drops.len());
        for (k, total) in drops {
            let prev = self.prev_drops.get(&k).copied().unwrap_or(0);
            seen.insert(k, total);
            let n = sub(total, prev);
            if n == 0 {
                continue;
            }
            let Some(tap) = self.by_slot.get(&k.vm).cloned() else {
                continue;
            };
            let labels = match self.drop_labels.get(&k) {
                Some(l) => l.clone(),
                None => {
                    let l = self.drop_labels_of(&k);
                    self.drop_labels.insert(k, l.clone());
                    l
                }
            };
            self.metrics
                .lock()
                .expect("metrics lock")
                .add_drops(labels, n);
            if let Some(vm) = self.vms.get_mut(&tap) {
                vm.drops_total += n;
            }
        }
        // Keys leave the kernel map only with their VM: so do their labels.
        self.drop_labels.retain(|k, _| seen.contains_key(k));
        self.prev_drops = seen;
        self.maybe_record();
    }

    fn maybe_record(&mut self) {
        let now = self.started.elapsed();
        let s = self.settings.clone();
        let taps: Vec<String> = self.vms.keys().cloned().collect();
        for tap in taps {
            let Some(vm) = self.vms.get_mut(&tap) else {
                continue;
            };
            if !vm.rec.should_record(now, vm.drops_total, &s.threshold) || !s.recorder.enabled {
                continue;
            }
            let (slot, name) = (vm.slot, vm.name.clone());
            let dest = self
                .kernel
                .last_remote(slot)
                .map(|a| a.to_string())
                // No remote known (e.g. only drops on the tap): everything, either version.
                .unwrap_or_else(|| "0.0.0.0/0 ::/0".into());
            if let Err(e) = ensure_dir(&s.recorder.dir) {
                log::warn!("flight recorder for {tap}: {e:#}");
                // Not again every second: the cooldown applies to a failed start too.
                vm.rec.ended = Some(now);
                continue;
            }
            for p in recorder::rotate(
                &s.recorder.dir,
                s.recorder.max_bytes,
                s.recorder.max_files,
                1,
            ) {
                log::info!("flight recorder: rotated out {}", p.display());
            }
            self.seq += 1;
            let unix_s = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let file = s
                .recorder
                .dir
                .join(recorder::trace_name(&name, unix_s, self.seq));
            let job = recorder::Job {
                vm: name.clone(),
                tap: tap.clone(),
                dest: dest.clone(),
                file: file.clone(),
                record_s: s.recorder.record_s,
                trigger_drops: s.threshold.drops,
                window_s: s.threshold.window_s,
            };
            match recorder::spawn(job, self.done_tx.clone()) {
                Ok(pid) => {
                    let vm = self.vms.get_mut(&tap).expect("present");
                    vm.rec.recording = true;
                    self.recordings.insert(tap.clone(), pid);
                    self.metrics
                        .lock()
                        .expect("metrics lock")
                        .recording_started(&name, &tap);
                    json_line(serde_json::json!({
                        "type": "flight_recording_started", "vm": name, "tap": tap,
                        "dest": dest, "file": file.display().to_string(),
                    }));
                }
                Err(e) => {
                    log::warn!("flight recorder for {tap}: {e:#}");
                    if let Some(vm) = self.vms.get_mut(&tap) {
                        vm.rec.ended = Some(now);
                    }
                }
            }
        }
    }

    fn finished(&mut self, f: recorder::Finished) {
        let now = self.started.elapsed();
        self.recordings.remove(&f.tap);
        if let Some(vm) = self.vms.get_mut(&f.tap) {
            vm.rec.recording = false;
            vm.rec.ended = Some(now);
        }
        // The caps hold after the write too (a trace can outgrow the room made before it).
        let r = &self.settings.recorder;
        recorder::rotate(&r.dir, r.max_bytes, r.max_files, 0);
        json_line(serde_json::to_value(&f).unwrap_or_default());
    }
}

/// The limit on NICs watched: `WATCH_MAX_VMS`, or a lower one from `KVMTRACE_WATCH_MAX_VMS`
/// (a number; anything else, or more, leaves the maps' size).
fn max_vms(env: Option<&str>) -> u32 {
    env.and_then(|v| v.trim().parse::<u32>().ok())
        .map_or(WATCH_MAX_VMS, |n| n.min(WATCH_MAX_VMS))
}

/// Taps attached between two turns of the event loop: ~0.4 s at ~25 ms a tap.
const ATTACH_CHUNK: usize = 16;

/// Most taps named in the start line: a dense host's thousands are counted, not listed
/// (`kvmtrace list`, `/metrics` and the `vm` lines name each).
const NAMES_SHOWN: usize = 32;

/// `a, b, c` of the first [`NAMES_SHOWN`] names, then how many more.
fn names<'a>(all: impl ExactSizeIterator<Item = &'a String>) -> String {
    let n = all.len();
    let mut s = all
        .take(NAMES_SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if n > NAMES_SHOWN {
        s.push_str(&format!(", … {} more", n - NAMES_SHOWN));
    }
    s
}

/// Inode of a process's network namespace (`self` or a pid).
fn netns_of(pid: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

fn direction(dir: u32) -> &'static str {
    match dir {
        WATCH_FROM_VM => "from_vm",
        WATCH_TO_VM => "to_vm",
        _ => "unknown",
    }
}

fn ensure_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Raises the open-files soft limit to the hard one (issue 19: each metrics connection is a
/// descriptor, and a shell's usual soft limit of 1024 would run out before the server's cap of
/// 4096 connections; the unit sets `LimitNOFILE=65536`, both limits). Said only when it fails.
/// Returns the soft limit in force.
fn raise_open_files_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kvmtrace watch: cannot read the open-files limit: {e}");
            return 1024;
        }
    };
    if soft >= hard {
        return soft;
    }
    if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        eprintln!(
            "kvmtrace watch: cannot raise the open-files limit from {soft} to {hard}: {e}; \
             serving at most {} metrics connections at once",
            http::connection_cap(soft)
        );
        return soft;
    }
    hard
}

pub fn run(args: Launch) -> Result<ExitCode> {
    let settings = load_settings(&args).map_err(|e| crate::error::usage(format!("{e:#}")))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    rt.block_on(run_async(args, settings))
}

async fn run_async(args: Launch, settings: Settings) -> Result<ExitCode> {
    use tokio::signal::unix::{signal, SignalKind};
    let started = Instant::now();
    let open_files = raise_open_files_limit();
    // The address first: a port in use fails before anything is loaded into the kernel.
    let listener =
        http::bind(args.listen).with_context(|| format!("listening on {}", args.listen))?;
    let kernel = WatchKernel::start()?;
    let metrics = Arc::new(Mutex::new(Metrics::new(settings.max_drop_series)));
    let local = listener.local_addr()?;
    let m2 = metrics.clone();
    let render: http::Render = Arc::new(move || m2.lock().expect("metrics lock").encode());
    let m3 = metrics.clone();
    let health: http::Render = Arc::new(move || m3.lock().expect("metrics lock").health());
    let server = tokio::spawn(http::serve(
        listener,
        render,
        health,
        http::Limits::new(open_files),
    ));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let max_vms = max_vms(std::env::var("KVMTRACE_WATCH_MAX_VMS").ok().as_deref());
    let mut w = Watch {
        kernel,
        metrics,
        settings,
        vms: BTreeMap::new(),
        prev_drops: HashMap::new(),
        drop_labels: HashMap::new(),
        prev_overflow: (0, 0),
        prev_programs: HashMap::new(),
        dev_names: HashMap::new(),
        started,
        done_tx,
        seq: 0,
        recordings: HashMap::new(),
        unwatched: BTreeMap::new(),
        max_vms,
        free_slots: (0..max_vms).collect(),
        by_slot: HashMap::new(),
        by_ifindex: HashMap::new(),
        pending: Default::default(),
    };
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    eprintln!("kvmtrace watch: {}", w.kernel.caps.summary());
    for g in w.kernel.caps.gaps(false) {
        eprintln!("kvmtrace watch: {g}");
    }
    for n in &w.kernel.notes {
        eprintln!("kvmtrace watch: {n}");
    }
    w.rescan();
    // The start line once every tap found at start is attached (`attach_pending`: a few at a
    // time, `/metrics` and signals served between).
    let mut ready_said = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rescan = tokio::time::interval(Duration::from_secs_f64(w.settings.rescan_s));
    rescan.tick().await;
    loop {
        if !ready_said && w.pending.is_empty() {
            ready_said = true;
            eprintln!(
                "kvmtrace watch: listening on http://{local}/metrics, watching {} VM(s) [{}]{}, ready in {} ms",
                w.vms.len(),
                names(w.vms.keys()),
                if w.unwatched.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; {} VM(s) found but not watchable [{}]",
                        w.unwatched.len(),
                        names(w.unwatched.keys())
                    )
                },
                started.elapsed().as_millis()
            );
        }
        tokio::select! {
            biased;
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => {
                match load_settings(&args) {
                    Ok(s) => {
                        if s.rescan_s != w.settings.rescan_s {
                            rescan = tokio::time::interval(Duration::from_secs_f64(s.rescan_s));
                        }
                        w.metrics.lock().expect("metrics lock").set_max_drop_series(s.max_drop_series);
                        w.settings = s;
                        w.rescan();
                        // A reload says what it watches: attached now, not in chunks.
                        w.attach_pending(usize::MAX);
                        eprintln!("kvmtrace watch: SIGHUP: settings reloaded, {} VM(s) watched", w.vms.len());
                    }
                    Err(e) => eprintln!("kvmtrace watch: SIGHUP: keeping the old settings: {e:#}"),
                }
            }
            // Pending first poll, so the HTTP server runs before each chunk.
            _ = tokio::task::yield_now(), if !w.pending.is_empty() => w.attach_pending(ATTACH_CHUNK),
            _ = rescan.tick() => w.rescan(),
            _ = tick.tick() => w.update(),
            Some(f) = done_rx.recv() => w.finished(f),
        }
    }
    // Stop: recordings in progress close their traces on SIGTERM; then every link goes.
    server.abort();
    let running: Vec<u32> = w.recordings.values().copied().collect();
    for pid in &running {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut left = running.len();
    while left > 0 {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            f = done_rx.recv() => match f {
                Some(f) => { w.finished(f); left -= 1; }
                None => break,
            },
        }
    }
    let vms = w.vms.len();
    // Program runs and run time (non-zero with kernel.bpf_stats_enabled=1): what watching cost.
    json_line(serde_json::json!({
        "type": "stats",
        "vms": vms,
        "programs": w.kernel.program_stats(),
        "uptime_s": started.elapsed().as_secs_f64(),
    }));
    drop(w);
    eprintln!("kvmtrace watch: stopped ({vms} VM(s) watched at the end); all hooks detached");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn the_limit_is_the_maps_size_unless_lowered() {
        assert_eq!(max_vms(None), 4096);
        assert_eq!(max_vms(Some("2")), 2);
        assert_eq!(max_vms(Some("100000")), 4096);
        assert_eq!(max_vms(Some("x")), 4096);
    }

    #[test]
    fn the_start_line_names_32_taps_and_counts_the_rest() {
        let few: Vec<String> = (0..2).map(|i| format!("vnet{i}")).collect();
        assert_eq!(names(few.iter()), "vnet0, vnet1");
        assert_eq!(names(Vec::<String>::new().iter()), "");
        let many: Vec<String> = (0..2000).map(|i| format!("t{i}")).collect();
        let s = names(many.iter());
        assert!(s.starts_with("t0, t1, "), "{s}");
        assert!(s.ends_with("t30, t31, … 1968 more"), "{s}");
    }

    #[test]
    fn vm_selection() {
        let v = resolve::VmInfo {
            name: Some("web1".into()),
            pid: None,
            tap: "vnet3".into(),
            mac: Some("52:54:00:AA:00:01".into()),
            ..Default::default()
        };
        assert!(selected(&[], &v));
        assert!(selected(&["web1".into()], &v));
        assert!(selected(&["vnet3".into()], &v));
        assert!(selected(&["52:54:00:aa:00:01".into()], &v));
        assert!(!selected(&["web2".into()], &v));
        let pve = resolve::VmInfo {
            tap: "tap101i0".into(),
            vmid: Some("101".into()),
            ..Default::default()
        };
        assert!(selected(&["101".into()], &pve));
        assert!(!selected(&["102".into()], &pve));
    }
}
