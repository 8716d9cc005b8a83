//! What kvmtrace adds to TC where the kernel has no TCX links (before Linux 6.6): a `clsact`
//! qdisc (only when the device had none) and `cls_bpf` filters (aya names each after its
//! program: `tap_ingress`, `dev_egress`, `watch_tap_in`, …). Unlike a link these outlive the
//! process, so each run writes what it added to a state file,
//! `/run/kvmtrace/clsact-PID.json` (device, direction, priority, handle, name; the network
//! namespace and the process's start time), removes exactly that on exit, and a later run
//! in the same network namespace removes what a dead run left ([`sweep`]). A filter is removed
//! only when the device still has a cls_bpf filter at that priority and handle with that name;
//! a qdisc only when kvmtrace created it and no filter is left on it. A clsact qdisc or filter
//! of another tool is never touched.

use crate::host::nl::{attr, attrs, change, cstr, dump, NETLINK_ROUTE};
use aya::programs::TcAttachType;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};

/// Where runs record what they added.
pub const STATE_DIR: &str = "/run/kvmtrace";

// include/uapi/linux/rtnetlink.h, pkt_sched.h, pkt_cls.h (Linux 6.18).
const RTM_DELQDISC: u16 = 37;
const RTM_GETQDISC: u16 = 38;
const RTM_DELTFILTER: u16 = 45;
const RTM_GETTFILTER: u16 = 46;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_NAME: u16 = 7;
/// `TC_H_CLSACT` (= `TC_H_INGRESS`): the clsact qdisc's parent; its handle is `ffff:`.
const CLSACT_PARENT: u32 = 0xFFFF_FFF1;
const CLSACT_HANDLE: u32 = 0xFFFF_0000;
const PARENT_INGRESS: u32 = 0xFFFF_FFF2;
const PARENT_EGRESS: u32 = 0xFFFF_FFF3;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct QdiscRec {
    ifindex: u32,
    dev: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct FilterRec {
    ifindex: u32,
    dev: String,
    egress: bool,
    prio: u16,
    handle: u32,
    name: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    pid: u32,
    /// Field 22 of /proc/PID/stat: a pid used again later is not this run.
    start_time: u64,
    /// Inode of the network namespace: ifindexes mean something only there.
    netns: u64,
    qdiscs: Vec<QdiscRec>,
    filters: Vec<FilterRec>,
}

/// This run's record of what it added to TC (empty, and no file, where TCX is used).
/// Dropping it removes what it recorded.
pub struct Ledger {
    path: PathBuf,
    state: State,
}

use crate::host::sys::start_time;

fn netns() -> u64 {
    crate::host::sys::netns_inode().unwrap_or(0)
}

use crate::host::sys::ifindex;

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

impl Ledger {
    pub fn new() -> Ledger {
        let pid = std::process::id();
        Ledger {
            path: Path::new(STATE_DIR).join(format!("clsact-{pid}.json")),
            state: State {
                pid,
                start_time: start_time(pid).unwrap_or(0),
                netns: netns(),
                ..State::default()
            },
        }
    }

    /// Makes sure `dev` has a clsact qdisc: one already there (another tool's, or one this
    /// run created) is used as it is; one created here is recorded.
    pub fn ensure_clsact(&mut self, dev: &str) -> Result<(), String> {
        let Some(i) = ifindex(dev) else {
            return Err(format!("no device {dev}"));
        };
        if self.state.qdiscs.iter().any(|q| q.ifindex == i) {
            return Ok(());
        }
        match aya::programs::tc::qdisc_add_clsact(dev) {
            Ok(()) => {
                self.state.qdiscs.push(QdiscRec {
                    ifindex: i,
                    dev: dev.to_string(),
                });
                self.save();
                Ok(())
            }
            Err(aya::programs::tc::TcError::NetlinkError(e))
                if e.raw_os_error() == Some(libc::EEXIST) =>
            {
                // Something holds the ingress handle: a clsact qdisc takes the filters; an
                // `ingress` qdisc (another tool's) has no egress side, and a filter meant for
                // egress would land on its ingress.
                match qdisc_kind(i, CLSACT_HANDLE) {
                    Some(k) if k == "clsact" => Ok(()),
                    Some(k) => Err(format!(
                        "{dev} has an {k} qdisc (another tool's) where kvmtrace needs clsact; \
                         it is left as it is"
                    )),
                    None => Err(format!("creating a clsact qdisc on {dev}: {e}")),
                }
            }
            Err(e) => Err(format!("creating a clsact qdisc on {dev}: {e}")),
        }
    }

    pub fn record_filter(
        &mut self,
        dev: &str,
        at: TcAttachType,
        name: &str,
        prio: u16,
        handle: u32,
    ) {
        let Some(i) = ifindex(dev) else { return };
        self.state.filters.push(FilterRec {
            ifindex: i,
            dev: dev.to_string(),
            egress: at == TcAttachType::Egress,
            prio,
            handle,
            name: name.to_string(),
        });
        self.save();
    }

    /// Whether this run has added anything to TC.
    pub fn is_empty(&self) -> bool {
        self.state.qdiscs.is_empty() && self.state.filters.is_empty()
    }

    fn save(&self) {
        let write = || -> io::Result<()> {
            std::fs::create_dir_all(STATE_DIR)?;
            let tmp = self.path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(&self.state)?)?;
            std::fs::rename(&tmp, &self.path)
        };
        if let Err(e) = write() {
            log::warn!(
                "recording kvmtrace's clsact filters in {}: {e} (they are still removed on \
                 exit, but not after a crash)",
                self.path.display()
            );
        }
    }

    /// Removes what this run added; returns a line per thing removed.
    pub fn cleanup(&mut self) -> Vec<String> {
        if self.is_empty() {
            return Vec::new();
        }
        let notes = remove(&self.state);
        self.state.qdiscs.clear();
        self.state.filters.clear();
        let _ = std::fs::remove_file(&self.path);
        notes
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        for n in self.cleanup() {
            log::debug!("{n}");
        }
    }
}

/// Removes what dead runs in this network namespace left behind (a `kill -9`, a crash):
/// their recorded filters and the qdiscs they created. Returns a line per thing removed.
pub fn sweep() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(STATE_DIR) else {
        return Vec::new();
    };
    let here = netns();
    let mut notes = Vec::new();
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("clsact-") && name.ends_with(".json")) {
            continue;
        }
        let Ok(text) = std::fs::read(e.path()) else {
            continue;
        };
        let Ok(st) = serde_json::from_slice::<State>(&text) else {
            continue;
        };
        let alive =
            st.pid == std::process::id() || start_time(st.pid).is_some_and(|t| t == st.start_time);
        if alive || st.netns != here {
            continue;
        }
        for n in remove(&st) {
            notes.push(format!(
                "{n} (left by kvmtrace pid {}, which is gone)",
                st.pid
            ));
        }
        let _ = std::fs::remove_file(e.path());
    }
    notes
}

/// Removes the recorded filters that are still there as recorded, then the recorded qdiscs
/// that hold no filter any more.
fn remove(st: &State) -> Vec<String> {
    let mut notes = Vec::new();
    for f in &st.filters {
        // The device may be gone (and its filters with it), or renamed: its ifindex decides.
        let parent = if f.egress {
            PARENT_EGRESS
        } else {
            PARENT_INGRESS
        };
        let present = filters(f.ifindex, parent)
            .unwrap_or_default()
            .into_iter()
            .find(|x| x.prio == f.prio && x.handle == f.handle);
        let Some(x) = present else { continue };
        if x.kind != "bpf" || x.name != f.name {
            // Not the filter recorded: another tool's, at a priority freed since.
            continue;
        }
        match del_filter(f.ifindex, parent, f.prio, x.proto, f.handle) {
            Ok(()) => notes.push(format!(
                "removed cls_bpf filter {} from {} {} (pref {} handle {:#x})",
                f.name,
                f.dev,
                if f.egress { "egress" } else { "ingress" },
                f.prio,
                f.handle
            )),
            Err(e) => log::warn!("removing filter {} from {}: {e}", f.name, f.dev),
        }
    }
    for q in &st.qdiscs {
        let left = [PARENT_INGRESS, PARENT_EGRESS]
            .iter()
            .map(|p| filters(q.ifindex, *p).map(|v| v.len()))
            .collect::<io::Result<Vec<usize>>>();
        match left {
            Ok(n) if n.iter().sum::<usize>() == 0 => match del_clsact(q.ifindex) {
                Ok(()) => notes.push(format!(
                    "removed the clsact qdisc kvmtrace added to {}",
                    q.dev
                )),
                Err(e) => log::debug!("removing the clsact qdisc of {}: {e}", q.dev),
            },
            // Someone added a filter since: the qdisc is theirs now too.
            Ok(_) => notes.push(format!(
                "kept the clsact qdisc kvmtrace added to {}: it holds another tool's filters",
                q.dev
            )),
            // No qdisc any more (or no device).
            Err(_) => {}
        }
    }
    notes
}

/// One TC filter as the kernel dumps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcFilter {
    pub prio: u16,
    pub proto: u16,
    pub handle: u32,
    pub kind: String,
    /// cls_bpf's `TCA_BPF_NAME` (empty for other kinds).
    pub name: String,
}

/// `struct tcmsg` (include/uapi/linux/rtnetlink.h): 20 bytes.
fn tcmsg(ifindex: u32, handle: u32, parent: u32, info: u32) -> Vec<u8> {
    let mut b = vec![0u8; 4];
    b.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    b.extend_from_slice(&handle.to_ne_bytes());
    b.extend_from_slice(&parent.to_ne_bytes());
    b.extend_from_slice(&info.to_ne_bytes());
    b
}

fn push_attr(b: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    b.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(payload);
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
}

/// The filters on a clsact direction (`parent`: ingress or egress) of a device. An error when
/// the device or its clsact qdisc is missing.
pub fn filters(ifindex: u32, parent: u32) -> io::Result<Vec<TcFilter>> {
    let msgs = dump(NETLINK_ROUTE, RTM_GETTFILTER, &tcmsg(ifindex, 0, parent, 0))?;
    Ok(msgs
        .into_iter()
        .filter_map(|(_, body)| {
            if body.len() < 20 {
                return None;
            }
            let word = |i: usize| u32::from_ne_bytes(body[i..i + 4].try_into().unwrap_or([0; 4]));
            let (handle, info) = (word(8), word(16));
            // The first message per priority describes the priority itself (handle 0).
            if handle == 0 {
                return None;
            }
            let a = &body[20..];
            let kind = attr(a, TCA_KIND).map(cstr).unwrap_or_default();
            let name = attr(a, TCA_OPTIONS)
                .and_then(|o| {
                    attrs(o)
                        .find(|(t, _)| *t == TCA_BPF_NAME)
                        .map(|(_, v)| cstr(v))
                })
                .unwrap_or_default();
            Some(TcFilter {
                prio: (info >> 16) as u16,
                proto: info as u16,
                handle,
                kind,
                name,
            })
        })
        .collect())
}

/// The kind (`clsact`, `ingress`, …) of the qdisc with `handle` on a device.
fn qdisc_kind(ifindex: u32, handle: u32) -> Option<String> {
    let msgs = dump(NETLINK_ROUTE, RTM_GETQDISC, &tcmsg(ifindex, 0, 0, 0)).ok()?;
    msgs.into_iter().find_map(|(_, body)| {
        if body.len() < 20 {
            return None;
        }
        let word = |i: usize| u32::from_ne_bytes(body[i..i + 4].try_into().unwrap_or([0; 4]));
        (word(4) == ifindex && word(8) == handle)
            .then(|| attr(&body[20..], TCA_KIND).map(cstr))
            .flatten()
    })
}

fn del_filter(ifindex: u32, parent: u32, prio: u16, proto: u16, handle: u32) -> io::Result<()> {
    let mut b = tcmsg(
        ifindex,
        handle,
        parent,
        (u32::from(prio) << 16) | u32::from(proto),
    );
    push_attr(&mut b, TCA_KIND, b"bpf\0");
    change(NETLINK_ROUTE, RTM_DELTFILTER, &b)
}

fn del_clsact(ifindex: u32) -> io::Result<()> {
    let mut b = tcmsg(ifindex, CLSACT_HANDLE, CLSACT_PARENT, 0);
    push_attr(&mut b, TCA_KIND, b"clsact\0");
    change(NETLINK_ROUTE, RTM_DELQDISC, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcmsg_is_twenty_bytes_in_kernel_order() {
        let b = tcmsg(7, CLSACT_HANDLE, CLSACT_PARENT, (49152 << 16) | 3);
        assert_eq!(b.len(), 20);
        assert_eq!(&b[4..8], &7i32.to_ne_bytes());
        assert_eq!(&b[8..12], &0xFFFF_0000u32.to_ne_bytes());
        assert_eq!(&b[12..16], &0xFFFF_FFF1u32.to_ne_bytes());
        assert_eq!(&b[16..20], &((49152u32 << 16) | 3).to_ne_bytes());
    }

    #[test]
    fn attributes_are_padded_to_four_bytes() {
        let mut b = Vec::new();
        push_attr(&mut b, TCA_KIND, b"bpf\0");
        push_attr(&mut b, TCA_KIND, b"clsact\0");
        assert_eq!(b.len(), 8 + 12);
        assert_eq!(u16::from_ne_bytes([b[8], b[9]]), 11);
    }

    #[test]
    fn the_start_time_of_this_process_is_read() {
        let t = start_time(std::process::id());
        assert!(t.is_some_and(|t| t > 0), "{t:?}");
    }
}
