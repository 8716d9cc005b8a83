//! Loads the eBPF object, hands it the BTF offsets and the filter, attaches every hook, and
//! turns ring-buffer records into [`TraceEvent`]s. Needs root.
//!
//! Everything attached is an fd-based link (TCX, tp_btf, perf-event tracepoint, netfilter
//! link): the kernel detaches it when the process exits, however it exits. Only TC through
//! clsact (kernels before 6.6) leaves state behind: [`crate::capture::clsact`] records it,
//! removes it on exit, and removes a killed run's at the next start.
//!
//! The plan follows the kernel ([`crate::capture::kernel::KernelCaps`]): where TC cannot be
//! attached to the tap or a path device, the receive/transmit tracepoints stand in for it;
//! where those fail too, the tap is blind ([`crate::model::Blind`]).

use crate::capture::btf::{kernel_offsets, KernelBtf, VMLINUX_BTF};
use crate::capture::clsact::Ledger;
use crate::capture::kernel::{attach_tc, KernelCaps, Skip, TcWay};
use crate::capture::nf;
use crate::model::event::{
    Counters, Decoder, DevKind, ProgStats, RouteAsk, RouteDetail, TraceEvent,
};
use crate::model::filter::PacketFilter;
use anyhow::{anyhow, Context as _, Result};
use aya::maps::{Array, MapData, PerCpuArray, RingBuf, StackTraceMap};
use aya::programs::{BtfTracePoint, SchedClassifier, TcAttachType, TracePoint};
use aya::{Btf, Ebpf};
use kvmtrace_common::{
    Config, Event, Filter, CNT_EVENTS, CNT_LOST, CNT_SAMPLED_OUT, FOLLOW_V4, FOLLOW_V6,
};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

/// The compiled eBPF programs, embedded: one file to copy to a host.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kvmtrace"));

use crate::error::EnvError;

/// What to follow.
#[derive(Clone, Debug)]
pub struct Spec {
    pub tap: String,
    pub guest_mac: Option<[u8; 6]>,
    /// The destinations: one or two networks, at most one per IP version.
    pub dests: Vec<ipnet::IpNet>,
    /// The protocol and remote port.
    pub packets: PacketFilter,
    /// Events per flow before the kernel only counts (0 = no limit).
    pub budget: u32,
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_bytes: u32,
    /// Which hooks to attach.
    pub hooks: HookSet,
}

/// The ring buffer the kernel programs' events arrive in (the caller polls it).
pub type Ring = RingBuf<MapData>;

/// The hooks a run attaches (docs/architecture.md, "The hook set").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HookSet {
    /// TC on the devices of the VM's path (tap, bridge, the route's devices, bridged uplink
    /// ports), `kfree_skb` and the route lookup: other traffic pays only where it crosses
    /// those devices.
    #[default]
    Path,
    /// Also the global hooks: `netif_receive_skb`, `net_dev_start_xmit` and `consume_skb` on
    /// every device, and netfilter links at every IPv4 hook (entry and exit of each). Every
    /// packet the host handles pays for them.
    All,
}

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

/// The tap's two TC programs, attached (a TCX link, else clsact + cls_bpf), and those that
/// could not be.
struct TapAttach {
    macvtap: bool,
    links: Vec<aya::programs::tc::SchedClassifierLink>,
    errs: Vec<(&'static str, String)>,
}

fn attach_tap(
    ebpf: &mut Ebpf,
    spec: &Spec,
    caps: &KernelCaps,
    ledger: &mut Ledger,
    attached: &mut Vec<String>,
) -> Result<TapAttach> {
    // The tap: TC (a TCX link, else clsact + cls_bpf). A macvtap is the other way round:
    // what the guest writes to /dev/tapN is transmitted by the macvtap device (TC egress)
    // and what it will read arrives through its receive path (TC ingress), measured in
    // tests/macvtap.rs; `tap_ingress` stays "from the guest", so it goes to egress there.
    let macvtap = std::path::Path::new("/sys/class/net")
        .join(&spec.tap)
        .join("macvtap")
        .is_dir();
    let (from_guest, to_guest) = if macvtap {
        (TcAttachType::Egress, TcAttachType::Ingress)
    } else {
        (TcAttachType::Ingress, TcAttachType::Egress)
    };
    let mut tap_links = Vec::new();
    let mut tap_errs: Vec<(&'static str, String)> = Vec::new();
    for (prog, at) in [("tap_ingress", from_guest), ("tap_egress", to_guest)] {
        let p: &mut SchedClassifier = ebpf
            .program_mut(prog)
            .ok_or_else(|| anyhow!("{prog} missing"))?
            .try_into()?;
        p.load().with_context(|| format!("loading {prog}"))?;
        match attach_tc(p, prog, &spec.tap, at, caps, ledger) {
            Ok((link, way)) => {
                tap_links.push(link);
                let side = if at == TcAttachType::Egress {
                    "egress"
                } else {
                    "ingress"
                };
                let how = match (macvtap, way) {
                    (true, TcWay::Tcx) => format!(" (macvtap: {side})"),
                    (true, TcWay::Clsact) => format!(" (macvtap: {side}; clsact)"),
                    (false, TcWay::Tcx) => String::new(),
                    (false, TcWay::Clsact) => " (clsact)".into(),
                };
                attached.push(format!("tc {prog} on {}{how}", spec.tap));
            }
            Err(e) => tap_errs.push((prog, e)),
        }
    }
    Ok(TapAttach {
        macvtap,
        links: tap_links,
        errs: tap_errs,
    })
}

/// The netfilter links of the full hook set (`None` for the path set). Err: they are part of
/// the set but unavailable, with the warning that says what is lost.
fn attach_netfilter(
    ebpf: &Ebpf,
    caps: &KernelCaps,
    all: bool,
    v4: bool,
    v6: bool,
    attached: &mut Vec<String>,
) -> std::result::Result<Option<nf::NfLinks>, Vec<String>> {
    let nf_result = if !all {
        Err(anyhow!("not in the path hook set"))
    } else if caps.skip.has("netfilter") {
        Err(anyhow!(Skip::why("netfilter")))
    } else if let Err(e) = &caps.netfilter_links {
        Err(anyhow!("{e}"))
    } else {
        nf::attach(OBJECT, ebpf, v4, v6)
    };
    match nf_result {
        Ok(l) => {
            let fams: Vec<&str> = [(v4, "IPv4"), (v6, "IPv6")]
                .iter()
                .filter(|f| f.0)
                .map(|f| f.1)
                .collect();
            attached.push(format!(
                "netfilter links ({}) at 5 {} hooks",
                l.attached.join(", "),
                fams.join(" and ")
            ));
            Ok(Some(l))
        }
        Err(_) if !all => Ok(None),
        Err(e) => Err(vec![format!(
            "BPF netfilter links unavailable ({e:#}); netfilter drops are still named from the \
             drop's kernel stack, but NAT before/after per hook is not shown"
        )]),
    }
}

/// What the tap's packets are seen by when its TC programs could not be attached: the
/// tracepoint fallback (a warning says what it costs), or nothing (`Blind`, said too).
fn blind_at_tap(
    spec: &Spec,
    tap_errs: &[(&'static str, String)],
    seen: &TapSight,
    macvtap: bool,
    warnings: &mut Vec<String>,
) -> Option<crate::model::Blind> {
    // What the tap's packets are seen by, and what is lost.
    let mut blind = crate::model::Blind {
        tap: spec.tap.clone(),
        ..Default::default()
    };
    for (prog, e) in tap_errs {
        let from_guest = *prog == "tap_ingress";
        let (tp, tp_res, dir) = if from_guest {
            ("netif_receive_skb", &seen.receive, "from the guest")
        } else {
            ("net_dev_start_xmit", &seen.xmit, "to the guest")
        };
        // A macvtap is the other way round (the guest's frames are transmitted by it, not
        // received), and the kernel programs learn the guest only from a receive on the
        // tap: measured, the fallback sees none of a macvtap guest's packets, so it is not
        // counted on.
        let macvtap_gap = Some(Err(
            "the tracepoint fallback does not follow a macvtap guest's packets".to_string(),
        ));
        let tp_res = if macvtap { &macvtap_gap } else { tp_res };
        match tp_res {
            Some(Ok(())) => warnings.push(format!(
                "cannot attach {prog} to {} ({e}); its packets {dir} are seen by tp_btf \
                 {tp} instead: every packet of every device of the host pays for the \
                 receive/transmit tracepoints (~70 ns per hook), and the guest's ARP, DHCP \
                 and NDP are not shown",
                spec.tap
            )),
            other => {
                let tp_err = match other {
                    Some(Err(te)) => format!("; tp_btf {tp}: {te}"),
                    _ => String::new(),
                };
                blind.why.push(format!("{dir}: TC {prog}: {e}{tp_err}"));
                if from_guest {
                    blind.from_guest = true;
                } else {
                    blind.to_guest = true;
                }
            }
        }
    }
    for b in &blind.why {
        warnings.push(format!(
            "kvmtrace is blind at the tap {} {b}: a flow it cannot see there gets the \
             verdict `blind` (exit 3), not `no_traffic`",
            spec.tap
        ));
    }
    (!blind.why.is_empty()).then_some(blind)
}

/// The running kernel's BTF (`KVMTRACE_BTF` or /sys/kernel/btf/vmlinux) and the struct
/// offsets the kernel programs are loaded with.
fn kernel_layout() -> Result<(KernelBtf, crate::capture::btf::Offsets)> {
    let btf_path = std::env::var("KVMTRACE_BTF").unwrap_or_else(|_| VMLINUX_BTF.into());
    let kbtf = KernelBtf::open(Path::new(&btf_path)).map_err(|e| {
        EnvError(format!(
            "{e:#}\nkvmtrace reads kernel struct layouts from BTF; this kernel does not \
             expose it (needs CONFIG_DEBUG_INFO_BTF=y)"
        ))
    })?;
    let offsets = kernel_offsets(&kbtf).map_err(|e| {
        EnvError(format!(
            "this kernel's BTF lacks a field kvmtrace needs: {e:#}"
        ))
    })?;
    Ok((kbtf, offsets))
}

/// What the kernel programs follow: the destinations, protocol and port, this namespace,
/// the tap and the guest's MAC, the budget. Not enabled yet (see `Filter::enabled`).
fn filter_of(spec: &Spec, tap_ifindex: u32, all: bool) -> Result<Filter> {
    let (v4, v6) = (spec.v4(), spec.v6());
    Ok(Filter {
        dst_net: v4.map_or([0; 4], |n| n.network().octets()),
        dst_mask: v4.map_or([0xff; 4], |n| n.netmask().octets()),
        dst6_net: v6.map_or([0; 16], |n| n.network().octets()),
        dst6_mask: v6.map_or([0xff; 16], |n| n.netmask().octets()),
        proto: spec.packets.proto.number(),
        port: spec.packets.port_number(),
        netns: netns_inode()?,
        tap_ifindex,
        guest_mac: spec.guest_mac.unwrap_or([0; 6]),
        budget: spec.budget,
        route_helper: u8::from(!all),
        ..Default::default()
    })
}

fn ifindex(name: &str) -> Result<u32> {
    match crate::host::sys::ifindex(name) {
        None => Err(anyhow!(
            "no network device {name} in this network namespace"
        )),
        Some(i) => Ok(i),
    }
}

fn netns_inode() -> Result<u32> {
    Ok(crate::host::sys::netns_inode().context("reading /proc/self/ns/net")? as u32)
}

/// The fields of a tracepoint record and their offsets, from its tracefs format file.
fn record_offsets(category: &str, name: &str) -> Result<HashMap<String, u32>> {
    let text = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|base| {
            std::fs::read_to_string(format!("{base}/events/{category}/{name}/format")).ok()
        })
        .ok_or_else(|| anyhow!("tracefs has no {category}/{name} format"))?;
    let mut out = HashMap::new();
    for line in text.lines() {
        let Some(field) = line.trim().strip_prefix("field:") else {
            continue;
        };
        let decl = field.split(';').next().unwrap_or("");
        let fname = decl
            .split_whitespace()
            .last()
            .unwrap_or("")
            .split('[')
            .next()
            .unwrap_or("");
        let off = field
            .split(';')
            .find_map(|p| p.trim().strip_prefix("offset:"))
            .and_then(|v| v.parse::<u32>().ok());
        if let Some(off) = off {
            out.insert(fname.to_string(), off);
        }
    }
    Ok(out)
}

/// Offsets of the `fib:fib_table_lookup` and (`v6`) `fib6:fib6_table_lookup` record fields.
fn fib_offsets(o: &mut crate::capture::btf::Offsets, v6: bool) -> Result<()> {
    let (category, name) = if v6 {
        ("fib6", "fib6_table_lookup")
    } else {
        ("fib", "fib_table_lookup")
    };
    let f = record_offsets(category, name)?;
    let get = |n: &str| f.get(n).copied().unwrap_or(u32::MAX);
    let fields = if v6 {
        [
            &mut o.fib6_tb_id,
            &mut o.fib6_err,
            &mut o.fib6_oif,
            &mut o.fib6_src,
            &mut o.fib6_dst,
            &mut o.fib6_gw,
            &mut o.fib6_name,
            &mut o.fib6_proto,
            &mut o.fib6_sport,
            &mut o.fib6_dport,
        ]
    } else {
        [
            &mut o.fib_tb_id,
            &mut o.fib_err,
            &mut o.fib_oif,
            &mut o.fib_src,
            &mut o.fib_dst,
            &mut o.fib_gw4,
            &mut o.fib_name,
            &mut o.fib_proto,
            &mut o.fib_sport,
            &mut o.fib_dport,
        ]
    };
    let gw = if v6 { "gw" } else { "gw4" };
    let names = [
        "tb_id", "err", "oif", "src", "dst", gw, "name", "proto", "sport", "dport",
    ];
    for (slot, n) in fields.into_iter().zip(names) {
        *slot = get(n);
    }
    Ok(())
}

/// tracefs is needed for tracepoint ids; `ip netns exec` gives a fresh /sys without it.
fn ensure_tracefs() {
    if Path::new("/sys/kernel/tracing/events").exists() {
        return;
    }
    let src = c"tracefs";
    let dst = c"/sys/kernel/tracing";
    // SAFETY: plain mount(2) of tracefs; harmless when it fails.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        log::debug!("mounting tracefs: {}", std::io::Error::last_os_error());
    }
}

fn set_config(ebpf: &mut Ebpf, c: Config) -> Result<()> {
    let mut cfg: Array<_, Config> = Array::try_from(
        ebpf.map_mut("CONFIG")
            .ok_or_else(|| anyhow!("CONFIG map missing"))?,
    )?;
    cfg.set(0, c, 0)?;
    Ok(())
}

impl Spec {
    /// The IPv4 destination, when one is followed.
    pub fn v4(&self) -> Option<ipnet::Ipv4Net> {
        self.dests.iter().find_map(|d| match d {
            ipnet::IpNet::V4(n) => Some(n.trunc()),
            _ => None,
        })
    }
    /// The IPv6 destination, when one is followed.
    pub fn v6(&self) -> Option<ipnet::Ipv6Net> {
        self.dests.iter().find_map(|d| match d {
            ipnet::IpNet::V6(n) => Some(n.trunc()),
            _ => None,
        })
    }
}

/// What the global receive/transmit tracepoints gave: `None` when not tried.
#[derive(Default)]
struct TapSight {
    receive: Option<Result<(), String>>,
    xmit: Option<Result<(), String>>,
}

/// Attaches the global device hooks (`--hooks all`'s, and the fallback where TC cannot be
/// attached): tp_btf `netif_receive_skb`, `net_dev_start_xmit`, `consume_skb`, and the route
/// lookup tracepoints. With `all` a missing receive/transmit tracepoint is an environment
/// error, as before; as a fallback it is reported in the result.
#[expect(
    clippy::too_many_arguments,
    reason = "the start-up state, passed once or twice"
)]
fn attach_global(
    ebpf: &mut Ebpf,
    btf: &Btf,
    caps: &KernelCaps,
    spec: &Spec,
    all: bool,
    fib_errs: &[Option<String>; 2],
    attached: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Result<TapSight> {
    let mut sight = TapSight::default();
    for (tp, required) in [
        ("netif_receive_skb", true),
        ("net_dev_start_xmit", true),
        ("consume_skb", false),
    ] {
        let p: &mut BtfTracePoint = ebpf
            .program_mut(tp)
            .ok_or_else(|| anyhow!("{tp} missing"))?
            .try_into()?;
        let r = if caps.skip.has(tp) {
            Err(Skip::why(tp))
        } else {
            p.load(tp, btf)
                .map_err(|e| format!("{e:#}"))
                .and_then(|_| p.attach().map(|_| ()).map_err(|e| format!("{e:#}")))
        };
        match &r {
            Ok(()) if all || tp == "consume_skb" => attached.push(format!("tp_btf {tp}")),
            Ok(()) => attached.push(format!(
                "tp_btf {tp} (instead of TC: every packet of every device pays for it)"
            )),
            Err(e) if required && all => {
                return Err(EnvError(format!(
                    "cannot attach to the tp_btf tracepoint {tp}: {e} (kvmtrace needs \
                     BTF-enabled tracepoints, Linux 5.5+)"
                ))
                .into())
            }
            Err(e) if required => warnings.push(format!("tp_btf {tp} unavailable: {e}")),
            Err(e) => warnings.push(format!(
                "tp_btf {tp} unavailable ({e}): packets that end normally are closed later"
            )),
        }
        match tp {
            "netif_receive_skb" => sight.receive = Some(r),
            "net_dev_start_xmit" => sight.xmit = Some(r),
            _ => {}
        }
    }
    let fams = [
        ("fib", "fib_table_lookup", spec.v4().is_some(), &fib_errs[0]),
        (
            "fib6",
            "fib6_table_lookup",
            spec.v6().is_some(),
            &fib_errs[1],
        ),
    ];
    for (category, tp, wanted, layout) in fams {
        if !wanted {
            continue;
        }
        let p: &mut TracePoint = ebpf
            .program_mut(tp)
            .ok_or_else(|| anyhow!("{tp} missing"))?
            .try_into()?;
        let r = if caps.skip.has("fib") {
            Err(Skip::why("fib"))
        } else if let Some(e) = layout {
            Err(e.clone())
        } else {
            p.load().map_err(|e| format!("{e:#}")).and_then(|_| {
                p.attach(category, tp)
                    .map(|_| ())
                    .map_err(|e| format!("{e:#}"))
            })
        };
        match r {
            Ok(()) => attached.push(format!("tracepoint {category}:{tp}")),
            Err(e) => warnings.push(format!(
                "route lookups will not be shown: {category}:{tp}: {e}"
            )),
        }
    }
    Ok(sight)
}

impl Tracer {
    /// Checks the environment, loads and attaches. Environment problems come back as
    /// [`EnvError`].
    pub fn start(spec: &Spec) -> Result<Tracer> {
        crate::capture::privileges::require("kvmtrace", &crate::capture::privileges::TRACING)?;
        let t0 = std::time::Instant::now();
        let phase = |what: &str| log::debug!("start-up: {what} at {} ms", t0.elapsed().as_millis());
        let (kbtf, mut offsets) = kernel_layout()?;
        let reasons = kbtf.drop_reasons().unwrap_or_default();
        phase("BTF offsets and drop reasons");
        ensure_tracefs();
        let mut warnings = Vec::new();
        let all = spec.hooks == HookSet::All;
        let caps = KernelCaps::probe(&kbtf, Skip::from_env(), offsets.kfree_reason == 1);
        // The route lookup tracepoints' record offsets are constants of the object, so they
        // are read before loading: the full set uses the tracepoints, and so does a run whose
        // TC programs cannot be attached (the path set's `bpf_fib_lookup` runs in TC).
        let fib_errs: [Option<String>; 2] = [
            fib_offsets(&mut offsets, false)
                .err()
                .map(|e| format!("{e:#}")),
            if spec.v6().is_some() {
                fib_offsets(&mut offsets, true)
                    .err()
                    .map(|e| format!("{e:#}"))
            } else {
                None
            },
        ];
        let tap_ifindex = ifindex(&spec.tap).map_err(|e| EnvError(format!("{e:#}")))?;
        let v4 = spec.v4();
        let v6 = spec.v6();
        let mut filter = filter_of(spec, tap_ifindex, all)?;
        phase("filter");
        // Looked up once: a VXLAN port added to the bridge later is not looked into.
        let vxlan_port = u32::from(crate::capture::pathdevs::tap_vxlan_port(&spec.tap));
        let follow = u32::from(if v4.is_some() { FOLLOW_V4 } else { 0 })
            | u32::from(if v6.is_some() { FOLLOW_V6 } else { 0 });
        let mut ebpf = crate::capture::btf::loader(&offsets, spec.ring_bytes)
            .override_global("FOLLOW", &follow, true)
            .override_global("VXLAN_PORT", &vxlan_port, true)
            .load(OBJECT)
            .map_err(|e| EnvError(format!("loading the eBPF object: {e}")))?;
        set_config(&mut ebpf, Config { filter })?;
        phase("object loaded");
        let mut attached = Vec::new();

        // Leftovers of a run that died (kill -9) on a kernel without TCX: its cls_bpf filters
        // and the clsact qdiscs it created, nothing else.
        let notes: Vec<String> = crate::capture::clsact::sweep();
        let mut ledger = Ledger::new();
        let tap = attach_tap(&mut ebpf, spec, &caps, &mut ledger, &mut attached)?;
        let (macvtap, tap_links, tap_errs) = (tap.macvtap, tap.links, tap.errs);
        phase("tap attached");
        let btf = Btf::from_sys_fs().map_err(|e| EnvError(format!("kernel BTF: {e}")))?;
        phase("aya BTF parsed");
        // Without TC on the tap its packets are seen where `--hooks all` sees them: the
        // receive and transmit tracepoints of every device (and then no TC on path devices,
        // whose hops those tracepoints show too).
        let global = all || !tap_errs.is_empty();
        let kfree: &mut BtfTracePoint = ebpf
            .program_mut("kfree_skb")
            .ok_or_else(|| anyhow!("kfree_skb missing"))?
            .try_into()?;
        kfree
            .load("kfree_skb", &btf)
            .and_then(|_| kfree.attach().map(|_| ()))
            .map_err(|e| {
                EnvError(format!(
                    "cannot attach to the tp_btf tracepoint kfree_skb: {e:#} (kvmtrace needs \
                 BTF-enabled tracepoints, Linux 5.5+)"
                ))
            })?;
        attached.push("tp_btf kfree_skb".into());
        phase("tp_btf attached");
        let mut seen = TapSight::default();
        if global {
            seen = attach_global(
                &mut ebpf,
                &btf,
                &caps,
                spec,
                all,
                &fib_errs,
                &mut attached,
                &mut warnings,
            )?;
        }
        phase("fib attached");
        let nf = attach_netfilter(&ebpf, &caps, all, v4.is_some(), v6.is_some(), &mut attached)
            .unwrap_or_else(|w| {
                warnings.extend(w);
                None
            });
        phase("netfilter attached");
        let mut path = crate::capture::pathdevs::Attached::default();
        let mut global = global;
        if !global {
            for p in ["dev_ingress", "dev_egress"] {
                let prog: &mut SchedClassifier = ebpf
                    .program_mut(p)
                    .ok_or_else(|| anyhow!("{p} missing"))?
                    .try_into()?;
                prog.load().with_context(|| format!("loading {p}"))?;
            }
            let want = crate::capture::pathdevs::wanted(&spec.tap, &spec.dests, &[]);
            let (path_notes, failed) = path.sync(&mut ebpf, &want, 0.0, &caps, &mut ledger);
            if failed.is_empty() {
                attached.push(
                    "route lookups: bpf_fib_lookup in dev_ingress, for followed packets only"
                        .into(),
                );
                attached.extend(path_notes);
            } else {
                // A path device without TC: its hops are seen by the global tracepoints
                // instead, and then on every device (TC there too would show them twice).
                path = crate::capture::pathdevs::Attached::default();
                warnings.extend(failed.iter().cloned());
                seen = attach_global(
                    &mut ebpf,
                    &btf,
                    &caps,
                    spec,
                    all,
                    &fib_errs,
                    &mut attached,
                    &mut warnings,
                )?;
                global = true;
            }
            phase("path devices attached");
        }
        let blind = blind_at_tap(spec, &tap_errs, &seen, macvtap, &mut warnings);
        filter.route_helper = u8::from(!global);
        // Every hook is in place: start following (see Filter::enabled).
        set_config(
            &mut ebpf,
            Config {
                filter: Filter {
                    enabled: 1,
                    ..filter
                },
            },
        )?;
        let ring = RingBuf::try_from(
            ebpf.take_map("EVENTS")
                .ok_or_else(|| anyhow!("EVENTS missing"))?,
        )?;
        let decoder = HostDecoder {
            reasons,
            syms: RefCell::new(None),
            stacks: None,
            tap_ifindex,
            tap_name: spec.tap.clone(),
            kinds: RefCell::new(HashMap::new()),
            names: RefCell::new(HashMap::new()),
            routes: RefCell::new(HashMap::new()),
        };
        let mut t = Tracer {
            ebpf,
            _nf: nf,
            path,
            spec: spec.clone(),
            ring: Some(ring),
            attached,
            warnings,
            caps,
            notes,
            blind,
            global,
            fib_errs,
            decoder,
            _tap_links: tap_links,
            ledger,
        };
        t.decoder.stacks = t
            .ebpf
            .take_map("STACKS")
            .and_then(|m| StackTraceMap::try_from(m).ok());
        Ok(t)
    }

    /// Changes the protocol and port followed, live (the `/` key of the terminal UI).
    pub fn set_filter(&mut self, packets: PacketFilter) -> Result<()> {
        let mut cfg: Array<_, Config> = Array::try_from(
            self.ebpf
                .map_mut("CONFIG")
                .ok_or_else(|| anyhow!("CONFIG map missing"))?,
        )?;
        let mut c = cfg.get(&0, 0)?;
        c.filter.proto = packets.proto.number();
        c.filter.port = packets.port_number();
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
            let mut attached = Vec::new();
            let mut warnings = Vec::new();
            let r = Btf::from_sys_fs()
                .map_err(|e| anyhow!("kernel BTF: {e}"))
                .and_then(|btf| {
                    attach_global(
                        &mut self.ebpf,
                        &btf,
                        &self.caps,
                        &self.spec,
                        false,
                        &self.fib_errs,
                        &mut attached,
                        &mut warnings,
                    )
                });
            match r {
                Ok(_) => notes.push(format!(
                    "from +{at_s:.1} s the path is seen by {} instead of TC",
                    attached.join(", ")
                )),
                Err(e) => notes.push(format!("the global tracepoints failed too: {e:#}")),
            }
            notes.extend(warnings.into_iter().map(|w| format!("warning: {w}")));
            self.global = true;
            if let Err(e) = self.set_route_helper(0) {
                log::warn!("switching route lookups to the tracepoint: {e:#}");
            }
        }
        self.attached.extend(notes.iter().cloned());
        notes
    }

    fn set_route_helper(&mut self, v: u8) -> Result<()> {
        let mut cfg: Array<_, Config> = Array::try_from(
            self.ebpf
                .map_mut("CONFIG")
                .ok_or_else(|| anyhow!("CONFIG map missing"))?,
        )?;
        let mut c = cfg.get(&0, 0)?;
        c.filter.route_helper = v;
        cfg.set(0, c, 0)?;
        Ok(())
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
    use crate::host::netlink::{route_get, routes, RouteQuery};
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
    let found = |r: &crate::host::netlink::Route| RouteDetail {
        table: r.table,
        err: 0,
        oif: r.nexthops.first().map(|n| n.0).unwrap_or(0),
    };
    // The table of the blackhole / unreachable / prohibit route covering DST (longest prefix).
    let error_route = |kind: u8, err: i32| {
        let table = match a.dst {
            IpAddr::V4(dst) => routes()
                .unwrap_or_default()
                .into_iter()
                .filter(|r| {
                    r.kind == kind && crate::capture::pathdevs::contains(r.dst, r.dst_len, dst)
                })
                .max_by_key(|r| r.dst_len)
                .map(|r| r.table),
            IpAddr::V6(dst) => crate::host::netlink::routes6_all()
                .unwrap_or_default()
                .into_iter()
                .filter(|r| {
                    r.kind == kind
                        && ipnet::Ipv6Net::new(r.dst, r.dst_len.min(128))
                            .is_ok_and(|n| n.trunc().contains(&dst))
                })
                .max_by_key(|r| r.dst_len)
                .map(|r| r.table),
        }
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
