//! Loads the watch programs (`kvmtrace-ebpf/src/watch.rs`) from the same embedded object as
//! `follow`, attaches `watch_kfree_skb` once and the tap programs per VM, and reads their
//! maps. Needs root. Everything attached is an fd-based link (dropping [`WatchKernel`], or the
//! process ending however it ends, detaches all of it), except TC through clsact before Linux
//! 6.6, which [`crate::capture::clsact`] records and removes (a killed run's at the next start).

use crate::capture::btf::{kernel_offsets, KernelBtf, VMLINUX_BTF};
use crate::capture::clsact::Ledger;
use crate::capture::kernel::{attach_tc, KernelCaps, Skip};
use crate::error::EnvError;
use anyhow::{anyhow, Context as _, Result};
use aya::maps::{Array, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};
use aya::programs::tc::SchedClassifierLink;
use aya::programs::{BtfTracePoint, SchedClassifier, TcAttachType};
use aya::{Btf, Ebpf, Pod};
use kvmtrace_common::watch::{
    WatchConfig, WatchDropKey, WatchRemote, WatchTapKey, WatchTapStats, WATCH_FROM_VM, WATCH_TO_VM,
    WCNT_DROPS_UNKEYED, WCNT_IPS_FULL,
};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// The address a `WATCH_LAST_REMOTE` value holds (`None`: no drop placed by address yet).
pub fn remote_addr(r: &WatchRemote) -> Option<IpAddr> {
    let b = r.bytes();
    let a = match r.family {
        4 => IpAddr::from([b[0], b[1], b[2], b[3]]),
        6 => IpAddr::from(b),
        _ => return None,
    };
    (!a.is_unspecified()).then_some(a)
}

/// Per-CPU counters of one tap direction, summed.
pub type TapTotals = WatchTapStats;

pub struct WatchKernel {
    ebpf: Ebpf,
    /// Each tap's TC links (dropping them detaches the programs).
    links: BTreeMap<u32, Vec<SchedClassifierLink>>,
    reasons: HashMap<u32, String>,
    syms: Option<Vec<(u64, String)>>,
    nr_cpus: usize,
    pub attached: Vec<String>,
    /// The kernel's capabilities (the probe line).
    pub caps: KernelCaps,
    /// What the start did besides attaching: a dead run's clsact leftovers removed.
    pub notes: Vec<String>,
    /// What was added to TC where TCX is missing; dropped after the links.
    ledger: Ledger,
}

fn netns_inode() -> Result<u32> {
    Ok(crate::host::sys::netns_inode().context("reading /proc/self/ns/net")? as u32)
}

pub use crate::host::sys::ifindex;

impl WatchKernel {
    /// Loads the object and attaches the drop program. Environment problems come back as
    /// [`EnvError`].
    pub fn start() -> Result<WatchKernel> {
        crate::capture::privileges::require(
            "kvmtrace watch",
            &crate::capture::privileges::TRACING,
        )?;
        let btf_path = std::env::var("KVMTRACE_BTF").unwrap_or_else(|_| VMLINUX_BTF.into());
        let kbtf = KernelBtf::open(Path::new(&btf_path)).map_err(|e| {
            EnvError(format!(
                "{e:#}\nkvmtrace reads kernel struct layouts from BTF"
            ))
        })?;
        let offsets = kernel_offsets(&kbtf)
            .map_err(|e| EnvError(format!("this kernel's BTF lacks a field: {e:#}")))?;
        let reasons = kbtf.drop_reasons().unwrap_or_default();
        let caps = KernelCaps::probe(&kbtf, Skip::from_env(), offsets.kfree_reason == 1);
        let notes = crate::capture::clsact::sweep();
        // follow's ring buffer is not used here: the smallest one.
        let mut ebpf = crate::capture::btf::loader(&offsets, 4096)
            .load(crate::capture::probe::OBJECT)
            .map_err(|e| EnvError(format!("loading the eBPF object: {e}")))?;
        for p in ["watch_tap_in", "watch_tap_out"] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(p)
                .ok_or_else(|| anyhow!("{p} missing"))?
                .try_into()?;
            prog.load().with_context(|| format!("loading {p}"))?;
        }
        let btf = Btf::from_sys_fs().map_err(|e| EnvError(format!("kernel BTF: {e}")))?;
        {
            let p: &mut BtfTracePoint = ebpf
                .program_mut("watch_kfree_skb")
                .ok_or_else(|| anyhow!("watch_kfree_skb missing"))?
                .try_into()?;
            p.load("kfree_skb", &btf)
                .and_then(|_| p.attach().map(|_| ()))
                .map_err(|e| {
                    EnvError(format!(
                        "cannot attach to the tp_btf tracepoint kfree_skb: {e} (needs Linux 5.5+ with BTF)"
                    ))
                })?;
        }
        let netns = netns_inode()?;
        {
            let mut cfg: Array<_, WatchConfig> = Array::try_from(
                ebpf.map_mut("WATCH_CONFIG")
                    .ok_or_else(|| anyhow!("WATCH_CONFIG missing"))?,
            )?;
            cfg.set(0, WatchConfig { netns, _pad: 0 }, 0)?;
        }
        let nr_cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        Ok(WatchKernel {
            ebpf,
            links: BTreeMap::new(),
            reasons,
            syms: None,
            nr_cpus,
            attached: vec!["tp_btf kfree_skb".into()],
            caps,
            notes,
            ledger: Ledger::new(),
        })
    }

    fn tap_map(&mut self) -> Result<PerCpuHashMap<&mut MapData, WatchTapKey, WatchTapStats>> {
        Ok(PerCpuHashMap::try_from(
            self.ebpf
                .map_mut("WATCH_TAP_STATS")
                .ok_or_else(|| anyhow!("WATCH_TAP_STATS missing"))?,
        )?)
    }

    /// Starts counting a tap for VM slot `vm`: its counter entries, then its TC links.
    pub fn add_tap(&mut self, vm: u32, tap: &str) -> Result<u32> {
        let ifindex = ifindex(tap).ok_or_else(|| anyhow!("no device {tap}"))?;
        let zero = WatchTapStats {
            vm,
            ..Default::default()
        };
        let n = self.nr_cpus;
        {
            let mut m = self.tap_map()?;
            for dir in [WATCH_FROM_VM, WATCH_TO_VM] {
                m.insert(
                    WatchTapKey { ifindex, dir },
                    PerCpuValues::try_from(vec![zero; n])?,
                    0,
                )?;
            }
        }
        let mut links = Vec::new();
        let mut err = None;
        for (prog, at) in [
            ("watch_tap_in", TcAttachType::Ingress),
            ("watch_tap_out", TcAttachType::Egress),
        ] {
            let p: &mut SchedClassifier = self
                .ebpf
                .program_mut(prog)
                .ok_or_else(|| anyhow!("{prog} missing"))?
                .try_into()?;
            match attach_tc(p, prog, tap, at, &self.caps, &mut self.ledger) {
                Ok((link, _)) => links.push(link),
                Err(e) => {
                    err = Some(anyhow!("attaching {prog} to {tap}: {e}"));
                    break;
                }
            }
        }
        self.links.insert(ifindex, links);
        if let Some(e) = err {
            self.remove_tap(ifindex, vm);
            return Err(e);
        }
        Ok(ifindex)
    }

    /// Stops counting a tap: its links, counters, learned addresses and drop entries go.
    pub fn remove_tap(&mut self, ifindex: u32, vm: u32) {
        // Dropping the links detaches them (a device that vanished took them with it).
        drop(self.links.remove(&ifindex));
        if let Ok(mut m) = self.tap_map() {
            for dir in [WATCH_FROM_VM, WATCH_TO_VM] {
                let _ = m.remove(&WatchTapKey { ifindex, dir });
            }
        }
        self.forget_addresses::<4>("WATCH_VM_IPS", vm);
        self.forget_addresses::<16>("WATCH_VM_IPS6", vm);
        if let Some(p) = self.ebpf.map_mut("WATCH_LAST_REMOTE") {
            if let Ok(mut a) = Array::<_, WatchRemote>::try_from(p) {
                let _ = a.set(vm, WatchRemote::default(), 0);
            }
        }
        if let Some(m) = self.ebpf.map_mut("WATCH_DROPS") {
            if let Ok(mut d) = PerCpuHashMap::<_, WatchDropKey, u64>::try_from(m) {
                let mine: Vec<WatchDropKey> = d
                    .keys()
                    .filter_map(|r| r.ok())
                    .filter(|k| k.vm == vm)
                    .collect();
                for k in mine {
                    let _ = d.remove(&k);
                }
            }
        }
    }

    /// Removes the guest addresses learned for VM slot `vm` from the address map `map`
    /// (`WATCH_VM_IPS`: 4-byte keys, `WATCH_VM_IPS6`: 16-byte keys).
    fn forget_addresses<const N: usize>(&mut self, map: &str, vm: u32) {
        let Some(m) = self.ebpf.map_mut(map) else {
            return;
        };
        let Ok(mut ips) = aya::maps::HashMap::<_, [u8; N], u32>::try_from(m) else {
            return;
        };
        let mine: Vec<[u8; N]> = ips
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(_, v)| *v == vm)
            .map(|(k, _)| k)
            .collect();
        for k in mine {
            let _ = ips.remove(&k);
        }
    }

    /// Summed counters of every watched tap direction.
    pub fn tap_totals(&self) -> Vec<(WatchTapKey, TapTotals)> {
        self.per_cpu_entries::<WatchTapKey, WatchTapStats>("WATCH_TAP_STATS")
            .into_iter()
            .map(|(k, v)| {
                let mut t = WatchTapStats::default();
                for s in v.iter() {
                    t.packets += s.packets;
                    t.bytes += s.bytes;
                    t.arp_requests += s.arp_requests;
                    t.arp_replies += s.arp_replies;
                    t.dhcp += s.dhcp;
                    t.ndp_ns += s.ndp_ns;
                    t.ndp_na += s.ndp_na;
                    t.ndp_rs += s.ndp_rs;
                    t.ndp_ra += s.ndp_ra;
                    t.dhcp6 += s.dhcp6;
                    for (a, b) in t.conv.iter_mut().zip(s.conv.iter()) {
                        *a += b;
                    }
                    t.vm = s.vm;
                }
                (k, t)
            })
            .collect()
    }

    /// Cumulative drops per drop site.
    pub fn drops(&self) -> Vec<(WatchDropKey, u64)> {
        self.per_cpu_entries::<WatchDropKey, u64>("WATCH_DROPS")
            .into_iter()
            .map(|(k, v)| (k, v.iter().sum()))
            .collect()
    }

    /// The entries of the per-CPU hash map `map`, each with its values of every CPU (none
    /// when the object has no such map).
    fn per_cpu_entries<K: Pod, V: Pod>(&self, map: &str) -> Vec<(K, PerCpuValues<V>)> {
        let Some(m) = self.ebpf.map(map) else {
            return Vec::new();
        };
        let Ok(m) = PerCpuHashMap::<_, K, V>::try_from(m) else {
            return Vec::new();
        };
        m.iter().filter_map(|r| r.ok()).collect()
    }

    /// The remote address (IPv4 or IPv6) of VM slot `vm`'s last dropped packet.
    pub fn last_remote(&self, vm: u32) -> Option<IpAddr> {
        let m = self.ebpf.map("WATCH_LAST_REMOTE")?;
        let a = Array::<_, WatchRemote>::try_from(m).ok()?;
        remote_addr(&a.get(&vm, 0).ok()?)
    }

    /// Learned guest addresses (IPv4, then IPv6) → VM slot.
    pub fn guest_addresses(&self) -> Vec<(IpAddr, u32)> {
        let mut out: Vec<(IpAddr, u32)> = self
            .learned::<4>("WATCH_VM_IPS")
            .into_iter()
            .map(|(k, v)| (Ipv4Addr::from(k).into(), v))
            .collect();
        out.extend(
            self.learned::<16>("WATCH_VM_IPS6")
                .into_iter()
                .map(|(k, v)| (Ipv6Addr::from(k).into(), v)),
        );
        out
    }

    fn learned<const N: usize>(&self, map: &str) -> Vec<([u8; N], u32)> {
        let Some(m) = self.ebpf.map(map) else {
            return Vec::new();
        };
        let Ok(m) = aya::maps::HashMap::<_, [u8; N], u32>::try_from(m) else {
            return Vec::new();
        };
        m.iter().filter_map(|r| r.ok()).collect()
    }

    /// Kernel-side counters: (drops not keyed, addresses not learned).
    pub fn overflow_counters(&self) -> (u64, u64) {
        let Some(m) = self.ebpf.map("WATCH_COUNTERS") else {
            return (0, 0);
        };
        let Ok(a) = PerCpuArray::<_, u64>::try_from(m) else {
            return (0, 0);
        };
        let sum = |i: u32| a.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
        (sum(WCNT_DROPS_UNKEYED), sum(WCNT_IPS_FULL))
    }

    /// The kernel's name of a drop reason value (`None`: a kernel that passes no reason to
    /// `kfree_skb`, before 5.17, or a value its BTF does not name).
    pub fn reason_name(&self, v: u32) -> Option<String> {
        self.reasons.get(&v).cloned()
    }

    fn symbol(&mut self, addr: u64) -> Option<String> {
        if addr == 0 {
            return None;
        }
        let syms = self
            .syms
            .get_or_insert_with(crate::capture::probe::load_kallsyms);
        let i = syms.partition_point(|(a, _)| *a <= addr);
        let (base, name) = syms.get(i.checked_sub(1)?)?;
        Some(format!("{name}+{:#x}", addr - base))
    }

    /// Symbolised frames of a drop's stack (zero frames are past its end).
    pub fn stack(&mut self, frames: &[u64]) -> Vec<String> {
        frames
            .iter()
            .take_while(|ip| **ip != 0)
            .filter_map(|ip| self.symbol(*ip))
            .collect()
    }

    /// The function a drop happened in (`location` symbolised, without the offset).
    pub fn location_fn(&mut self, location: u64) -> String {
        self.symbol(location)
            .map(|s| {
                let f = s.split('+').next().unwrap_or("");
                f.split('.').next().unwrap_or("").to_string()
            })
            .unwrap_or_default()
    }

    /// Runs a tap program on `frame` `repeat` times with `BPF_PROG_TEST_RUN`, as if the frame
    /// crossed device `ifindex` (`from_vm`: `watch_tap_in`, else `watch_tap_out`). Returns the
    /// program's return value and the kernel's mean time per run in ns. For the cost test: it
    /// measures without `kernel.bpf_stats_enabled`, which would slow every program of the host.
    pub fn test_run_tap(
        &self,
        from_vm: bool,
        ifindex: u32,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, u32)> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let name = if from_vm {
            "watch_tap_in"
        } else {
            "watch_tap_out"
        };
        let fd = self
            .ebpf
            .program(name)
            .ok_or_else(|| anyhow!("{name} missing"))?
            .fd()?
            .as_fd()
            .as_raw_fd();
        // struct __sk_buff (include/uapi/linux/bpf.h, Linux 6.18): 192 bytes; test runs accept
        // a few fields, `ifindex` (offset 40) among them: the skb then belongs to that device.
        let mut ctx = [0u8; 192];
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        // The `test` member of union bpf_attr.
        #[repr(C)]
        #[derive(Default)]
        struct TestRun {
            prog_fd: u32,
            retval: u32,
            data_size_in: u32,
            data_size_out: u32,
            data_in: u64,
            data_out: u64,
            repeat: u32,
            duration: u32,
            ctx_size_in: u32,
            ctx_size_out: u32,
            ctx_in: u64,
            ctx_out: u64,
            flags: u32,
            cpu: u32,
            batch_size: u32,
            _pad: u32,
        }
        let mut attr = TestRun {
            prog_fd: fd as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat,
            ctx_size_in: ctx.len() as u32,
            ctx_in: ctx.as_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: BPF_PROG_TEST_RUN (cmd 10) reads the buffers we pass with their sizes and
        // writes only `attr`.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                10,
                &mut attr as *mut TestRun as *mut libc::c_void,
                std::mem::size_of::<TestRun>() as u32,
            )
        };
        if r != 0 {
            return Err(anyhow!(
                "BPF_PROG_TEST_RUN of {name}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok((attr.retval, attr.duration))
    }

    /// Run counts of the watch programs (`kernel.bpf_stats_enabled=1`), for measurements.
    pub fn program_stats(&self) -> Vec<crate::model::event::ProgStats> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        self.ebpf
            .programs()
            .filter(|(n, _)| n.starts_with("watch_"))
            .filter_map(|(name, p)| {
                let fd = p.fd().ok()?.as_fd().as_raw_fd();
                Some(crate::capture::probe::prog_stats(name, fd))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_of_either_family_read_back() {
        let words = |b: [u8; 16]| {
            [
                u64::from_ne_bytes(b[..8].try_into().unwrap()),
                u64::from_ne_bytes(b[8..].try_into().unwrap()),
            ]
        };
        let v6: Ipv6Addr = "2001:db8:ffff::1".parse().unwrap();
        let r6 = WatchRemote {
            addr: words(v6.octets()),
            family: 6,
            _pad: 0,
        };
        assert_eq!(remote_addr(&r6), Some(IpAddr::V6(v6)));
        let mut b4 = [0u8; 16];
        b4[..4].copy_from_slice(&[203, 0, 113, 1]);
        let r4 = WatchRemote {
            addr: words(b4),
            family: 4,
            _pad: 0,
        };
        assert_eq!(
            remote_addr(&r4),
            Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)))
        );
        assert_eq!(remote_addr(&WatchRemote::default()), None);
    }
}
