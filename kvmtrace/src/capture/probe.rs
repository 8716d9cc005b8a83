//! The running tracer: started by [`crate::capture::startup`] (load, offsets, filter, every
//! hook attached), it hands out the ring buffer, turns its records into [`TraceEvent`]s,
//! follows path changes and filter changes, and reads the programs' counters. Needs root.
//!
//! Everything attached is an fd-based link (TCX, tp_btf, perf-event tracepoint, netfilter
//! link): the kernel detaches it when the process exits, however it exits. Only TC through
//! clsact (kernels before 6.6) leaves state behind: [`crate::capture::clsact`] records it,
//! removes it on exit, and removes a killed run's at the next start.

use crate::capture::clsact::Ledger;
use crate::capture::kernel::KernelCaps;
use crate::capture::nf;
use crate::model::event::{
    Counters, Decoder, DevKind, ProgStats, RouteAsk, RouteDetail, TraceEvent,
};
use crate::model::filter::PacketFilter;
use anyhow::{anyhow, Result};
use aya::maps::{Array, MapData, PerCpuArray, RingBuf, StackTraceMap};
use aya::Ebpf;
use kvmtrace_common::{Config, Event, Filter, CNT_EVENTS, CNT_LOST, CNT_SAMPLED_OUT};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

pub use crate::capture::spec::{HookSet, Spec};
pub(crate) use crate::capture::startup::OBJECT;

/// The ring buffer the kernel programs' events arrive in (the caller polls it).
pub type Ring = RingBuf<MapData>;

/// `run_cnt`, `run_time_ns` and `recursion_misses` (5.12+; 0 before) from /proc/self/fdinfo
/// of a program fd: the one reader, for follow's programs and watch's.
pub(crate) fn prog_stats(name: &str, fd: std::os::fd::RawFd) -> ProgStats {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    ProgStats {
        name: name.to_string(),
        runs: field("run_cnt:"),
        run_time_ns: field("run_time_ns:"),
        missed: field("recursion_misses:"),
    }
}

/// Attached programs. Dropping it detaches everything.
pub struct Tracer {
    ebpf: Ebpf,
    _nf: Option<nf::NfLinks>,
    /// Path devices with the `dev_*` programs attached (empty with [`HookSet::All`]).
    path: crate::capture::pathdevs::Attached,
    spec: Spec,
    ring: Option<RingBuf<MapData>>,
    pub attached: Vec<String>,
    pub warnings: Vec<String>,
    /// The probe line: the kernel's capabilities, and what each missing one costs.
    pub caps: KernelCaps,
    /// Things the operator should know about the plan: fallbacks taken, leftovers removed.
    pub notes: Vec<String>,
    /// The tap's observation points that could not be attached at all: a flow not seen
    /// there is judged `blind`, never `no_traffic`.
    pub blind: Option<crate::model::Blind>,
    /// The device hooks are the global receive/transmit tracepoints (the full set, or a
    /// fallback for TC): no TC on path devices then.
    global: bool,
    /// Why the route lookup tracepoints' record layout could not be read (IPv4, IPv6).
    fib_errs: [Option<String>; 2],
    decoder: HostDecoder,
    /// The tap's TC links, then what kvmtrace added to TC (removed after the links go).
    _tap_links: Vec<aya::programs::tc::SchedClassifierLink>,
    ledger: Ledger,
}

impl Tracer {
    /// Checks the environment, loads and attaches ([`crate::capture::startup`]).
    /// Environment problems come back as [`EnvError`](crate::error::EnvError).
    pub fn start(spec: &Spec) -> Result<Tracer> {
        let s = crate::capture::startup::start(spec)?;
        let mut ebpf = s.ebpf;
        let ring = RingBuf::try_from(
            ebpf.take_map("EVENTS")
                .ok_or_else(|| anyhow!("EVENTS missing"))?,
        )?;
        let stacks = ebpf
            .take_map("STACKS")
            .and_then(|m| StackTraceMap::try_from(m).ok());
        let decoder = HostDecoder {
            reasons: s.reasons,
            syms: RefCell::new(None),
            stacks,
            tap_ifindex: s.tap_ifindex,
            tap_name: spec.tap.clone(),
            kinds: RefCell::new(HashMap::new()),
            names: RefCell::new(HashMap::new()),
            routes: RefCell::new(HashMap::new()),
        };
        Ok(Tracer {
            ebpf,
            _nf: s.nf,
            path: s.path,
            spec: spec.clone(),
            ring: Some(ring),
            attached: s.attached,
            warnings: s.warnings,
            caps: s.caps,
            notes: s.notes,
            blind: s.blind,
            global: s.global,
            fib_errs: s.fib_errs,
            decoder,
            _tap_links: s.tap_links,
            ledger: s.ledger,
        })
    }

    /// Changes the protocol and port followed, live (the `/` key of the terminal UI).
    pub fn set_filter(&mut self, packets: PacketFilter) -> Result<()> {
        self.update_filter(|f| {
            f.proto = packets.proto.number();
            f.port = packets.port_number();
        })
    }

    /// Changes the kernel programs' filter in place (the `CONFIG` map).
    fn update_filter(&mut self, change: impl FnOnce(&mut Filter)) -> Result<()> {
        let mut cfg: Array<_, Config> = Array::try_from(
            self.ebpf
                .map_mut("CONFIG")
                .ok_or_else(|| anyhow!("CONFIG map missing"))?,
        )?;
        let mut c = cfg.get(&0, 0)?;
        change(&mut c.filter);
        cfg.set(0, c, 0)?;
        Ok(())
    }

    /// Follows changes of the path (routes, bridge ports, devices that come and go): attaches
    /// the `dev_*` programs to devices that joined it, detaches them from those that left.
    /// `seen_oifs`: output devices of the followed packets' route lookups so far. Returns a
    /// line per change, for the operator (`at_s`: seconds since start).
    pub fn refresh_path(&mut self, seen_oifs: &[u32], at_s: f64) -> Vec<String> {
        if self.global {
            return Vec::new();
        }
        let want = crate::capture::pathdevs::wanted(&self.spec.tap, &self.spec.dests, seen_oifs);
        let (mut notes, failed) =
            self.path
                .sync(&mut self.ebpf, &want, at_s, &self.caps, &mut self.ledger);
        if !failed.is_empty() {
            // A device that joined the path cannot take TC: from now on every device's hops
            // come from the global tracepoints (said once; no retry every refresh).
            notes.extend(failed);
            self.path = crate::capture::pathdevs::Attached::default();
            let r = crate::capture::startup::attach_global_later(
                &self.spec,
                &mut self.ebpf,
                &self.caps,
                &self.fib_errs,
                &mut self.ledger,
            );
            match r {
                Ok((attached, warnings)) => {
                    notes.push(format!(
                        "from +{at_s:.1} s the path is seen by {} instead of TC",
                        attached.join(", ")
                    ));
                    notes.extend(warnings.into_iter().map(|w| format!("warning: {w}")));
                }
                Err(e) => notes.push(format!("the global tracepoints failed too: {e:#}")),
            }
            self.global = true;
            if let Err(e) = self.update_filter(|f| f.route_helper = 0) {
                log::warn!("switching route lookups to the tracepoint: {e:#}");
            }
        }
        self.attached.extend(notes.iter().cloned());
        notes
    }

    /// The ring buffer, for the caller's event loop.
    pub fn take_ring(&mut self) -> RingBuf<MapData> {
        self.ring.take().expect("ring buffer taken once")
    }

    /// Decodes a raw ring-buffer record.
    pub fn decode(&self, bytes: &[u8]) -> Option<TraceEvent> {
        if bytes.len() < std::mem::size_of::<Event>() {
            return None;
        }
        // SAFETY: the record was written by the eBPF side as an `Event` (same repr(C) type);
        // read_unaligned copes with the ring buffer's 8-byte alignment either way.
        let e: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        TraceEvent::decode(&e, &self.decoder)
    }

    /// Per-program run statistics (all zero unless `kernel.bpf_stats_enabled=1`).
    pub fn program_stats(&self) -> Vec<ProgStats> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let mut out: Vec<ProgStats> = self
            .ebpf
            .programs()
            .filter_map(|(name, p)| {
                let fd = p.fd().ok()?.as_fd().as_raw_fd();
                Some(prog_stats(name, fd))
            })
            .collect();
        if let Some(nf) = &self._nf {
            for (name, fd) in &nf.progs {
                out.push(prog_stats(name, fd.as_raw_fd()));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The kernel's per-flow budget map: packets shown and counted past the budget.
    pub fn flow_budgets(&self) -> Vec<crate::model::BudgetEntry> {
        // aya's HashMap also opens LRU hash maps.
        use aya::maps::HashMap;
        let Some(m) = self.ebpf.map("BUDGET") else {
            return Vec::new();
        };
        let Ok(map) =
            HashMap::<_, kvmtrace_common::NatKey, kvmtrace_common::FlowBudget>::try_from(m)
        else {
            return Vec::new();
        };
        map.iter()
            .filter_map(|r| r.ok())
            .map(|(k, b)| crate::model::BudgetEntry {
                proto: k.proto,
                remote: crate::model::event::addr_of(k.family, &k.remote),
                local: crate::model::event::addr_of(k.family, &k.local),
                local_port: k.local_port,
                shown: b.shown,
                suppressed: b.suppressed,
            })
            .collect()
    }

    /// Entries in the kernel's bounded maps (TRACKED, NAT_KEYS, ORIGIN, BUDGET, and the
    /// learned guest addresses): flat under a long run, or the LRU bounds are doing their job.
    pub fn map_entries(&self) -> Vec<(String, usize)> {
        let guests = self
            .ebpf
            .map("GUESTS")
            .and_then(|m| Array::<_, kvmtrace_common::GuestList>::try_from(m).ok())
            .and_then(|a| a.get(&0, 0).ok())
            .map(|g| g.n as usize)
            .unwrap_or(0);
        ["TRACKED", "NAT_KEYS", "ORIGIN", "BUDGET"]
            .iter()
            .map(|name| {
                let n = self
                    .ebpf
                    .map(name)
                    .and_then(|m| match m {
                        aya::maps::Map::HashMap(d) | aya::maps::Map::LruHashMap(d) => {
                            let info = d.info().ok()?;
                            let max = info.max_entries() as usize;
                            let mut key = vec![0u8; info.key_size() as usize];
                            let mut n = 0usize;
                            let fd = std::os::fd::AsFd::as_fd(d.fd());
                            // Walking a map the kernel keeps changing can restart and count
                            // twice: the count is approximate under churn, never above the bound.
                            while n < max && next_key(fd, &mut key).is_some() {
                                n += 1;
                            }
                            Some(n)
                        }
                        _ => None,
                    })
                    .unwrap_or(0);
                (name.to_string(), n)
            })
            .chain(std::iter::once(("GUESTS".to_string(), guests)))
            .collect()
    }

    /// Sums the per-CPU counters.
    pub fn counters(&self) -> Counters {
        let Some(m) = self.ebpf.map("COUNTERS") else {
            return Counters::default();
        };
        let Ok(arr) = PerCpuArray::<_, u64>::try_from(m) else {
            return Counters::default();
        };
        let sum = |i: u32| arr.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0);
        Counters {
            events: sum(CNT_EVENTS),
            lost: sum(CNT_LOST),
            sampled_out: sum(CNT_SAMPLED_OUT),
            missed: self.program_stats().iter().map(|p| p.missed).sum(),
        }
    }
}

/// BPF_MAP_GET_NEXT_KEY: advances `key` (all zero bytes on the first call is fine: any key not
/// in the map starts from the first one). Returns None at the end.
fn next_key(fd: std::os::fd::BorrowedFd<'_>, key: &mut [u8]) -> Option<()> {
    use std::os::fd::AsRawFd as _;
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
        _rest: [u64; 4],
    }
    let mut next = vec![0u8; key.len()];
    let mut attr = Attr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: key.as_ptr() as u64,
        next_key: next.as_mut_ptr() as u64,
        _rest: [0; 4],
    };
    // SAFETY: BPF_MAP_GET_NEXT_KEY (cmd 4) with valid key buffers of the map's key size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            4,
            &mut attr as *mut Attr as *mut libc::c_void,
            std::mem::size_of::<Attr>() as u32,
        )
    };
    if r != 0 {
        return None;
    }
    key.copy_from_slice(&next);
    Some(())
}

/// Decodes with the live host's BTF, kallsyms and devices.
/// Completes a `bpf_fib_lookup` result from the kernel's FIB (`ip route get fibmatch`): the
/// table of the matched route, and for "not forwarded" whether the destination is local
/// (a route of the local table) or has no route; for "forwarding disabled" the route the
/// lookup itself found (the kernel drops the packet after it, for the disabled forwarding).
fn route_detail(a: &RouteAsk) -> RouteDetail {
    use crate::host::netlink::{ip_routes, route_get, IpRoute, RouteQuery};
    const RET_SUCCESS: u32 = 0;
    const RET_BLACKHOLE: u32 = 1;
    const RET_UNREACHABLE: u32 = 2;
    const RET_PROHIBIT: u32 = 3;
    const RET_FWD_DISABLED: u32 = 5;
    const RET_UNSUPP_LWT: u32 = 6;
    const RET_FRAG_NEEDED: u32 = 8;
    let q = RouteQuery {
        src: a.src,
        dst: a.dst,
        proto: a.proto,
        sport: a.sport,
        dport: a.dport,
        iif: a.iif,
        mark: a.mark,
    };
    // Without the input device: the route an output lookup finds (forwarding or reverse-path
    // checks aside).
    let output = RouteQuery { iif: 0, ..q };
    let main = |err: i32| RouteDetail {
        table: 254,
        err,
        oif: 0,
    };
    let found = |r: &IpRoute| RouteDetail {
        table: r.table,
        err: 0,
        oif: r.nexthops.first().map(|n| n.0).unwrap_or(0),
    };
    // The table of the blackhole / unreachable / prohibit route covering DST (longest prefix).
    let error_route = |kind: u8, err: i32| {
        let table = ip_routes(a.dst.is_ipv6())
            .unwrap_or_default()
            .into_iter()
            .filter(|r| {
                r.kind == kind && crate::capture::pathdevs::contains(r.dst, r.dst_len, a.dst)
            })
            .max_by_key(|r| r.dst_len)
            .map(|r| r.table)
            .unwrap_or(254);
        RouteDetail { table, err, oif: 0 }
    };
    let by_errno = |errno: i32| match errno {
        22 => error_route(6, -22),
        113 => error_route(7, -113),
        13 => error_route(8, -13),
        e => main(-e),
    };
    match a.rc {
        RET_SUCCESS | RET_UNSUPP_LWT | RET_FRAG_NEEDED => route_get(&q)
            .or_else(|_| route_get(&output))
            .map(|r| RouteDetail {
                oif: 0,
                ..found(&r)
            })
            .unwrap_or(main(0)),
        RET_BLACKHOLE => error_route(6, -22),
        RET_UNREACHABLE => error_route(7, -113),
        RET_PROHIBIT => error_route(8, -13),
        RET_FWD_DISABLED => route_get(&output).map(|r| found(&r)).unwrap_or(main(0)),
        _ => match route_get(&q) {
            Ok(r) => found(&r),
            Err(e) => by_errno(e.raw_os_error().unwrap_or(101)),
        },
    }
}

struct HostDecoder {
    reasons: HashMap<u32, String>,
    syms: RefCell<Option<Vec<(u64, String)>>>,
    stacks: Option<StackTraceMap<MapData>>,
    tap_ifindex: u32,
    tap_name: String,
    kinds: RefCell<HashMap<(u32, String), DevKind>>,
    names: RefCell<HashMap<u32, String>>,
    /// Recent answers of the FIB for the path set's route lookups (a flow asks the same).
    routes: RefCell<HashMap<RouteAsk, (std::time::Instant, RouteDetail)>>,
}

pub(crate) fn load_kallsyms() -> Vec<(u64, String)> {
    let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let mut v: Vec<(u64, String)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let addr = u64::from_str_radix(it.next()?, 16).ok()?;
            let ty = it.next()?;
            if !matches!(ty, "t" | "T" | "w" | "W") || addr == 0 {
                return None;
            }
            Some((addr, it.next()?.to_string()))
        })
        .collect();
    v.sort_unstable_by_key(|(a, _)| *a);
    v
}

impl Decoder for HostDecoder {
    fn drop_reason(&self, value: u32) -> Option<String> {
        self.reasons.get(&value).cloned()
    }
    fn symbol(&self, addr: u64) -> Option<String> {
        if addr == 0 {
            return None;
        }
        let mut syms = self.syms.borrow_mut();
        let syms = syms.get_or_insert_with(load_kallsyms);
        let i = syms.partition_point(|(a, _)| *a <= addr);
        let (base, name) = syms.get(i.checked_sub(1)?)?;
        Some(format!("{name}+{:#x}", addr - base))
    }
    fn stack(&self, id: i32) -> Vec<String> {
        let Some(m) = &self.stacks else {
            return Vec::new();
        };
        let Ok(st) = m.get(&(id as u32), 0) else {
            return Vec::new();
        };
        st.frames()
            .iter()
            .filter_map(|f| self.symbol(f.ip))
            .collect()
    }
    fn tap_name(&self) -> String {
        self.tap_name.clone()
    }
    fn dev_name(&self, ifindex: u32) -> Option<String> {
        let mut names = self.names.borrow_mut();
        if let Some(n) = names.get(&ifindex) {
            return Some(n.clone());
        }
        let n = crate::capture::pathdevs::name_of(ifindex)?;
        names.insert(ifindex, n.clone());
        Some(n)
    }
    fn route_detail(&self, ask: &RouteAsk) -> Option<RouteDetail> {
        // Answers stay good for a moment, for every port of an address pair: the kernel chose
        // the device (the helper's answer, kept per packet); what is asked here is the table
        // and the kind of failure, which policy rules on ports alone would make differ. A
        // flood of flows would otherwise cost a netlink round trip per flow.
        const FRESH: std::time::Duration = std::time::Duration::from_millis(500);
        let key = RouteAsk {
            sport: 0,
            dport: 0,
            ..*ask
        };
        let mut routes = self.routes.borrow_mut();
        let now = std::time::Instant::now();
        if let Some((t, r)) = routes.get(&key) {
            if now.duration_since(*t) < FRESH {
                return Some(*r);
            }
        }
        let r = route_detail(ask);
        if routes.len() > 4096 {
            routes.retain(|_, (t, _)| now.duration_since(*t) < FRESH);
        }
        routes.insert(key, (now, r));
        Some(r)
    }
    fn dev_kind(&self, ifindex: u32, name: &str) -> DevKind {
        if (ifindex != 0 && ifindex == self.tap_ifindex)
            || (!name.is_empty() && name == self.tap_name)
        {
            return DevKind::Tap;
        }
        *self
            .kinds
            .borrow_mut()
            .entry((ifindex, name.to_string()))
            .or_insert_with(|| {
                if !name.is_empty() && Path::new(&format!("/sys/class/net/{name}/bridge")).exists()
                {
                    DevKind::Bridge
                } else {
                    DevKind::Other
                }
            })
    }
}
