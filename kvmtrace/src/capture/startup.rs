//! Start-up: checks the environment, loads the object with this kernel's offsets and the
//! filter, attaches every hook of the plan, and only then enables the kernel programs. The
//! plan follows the kernel ([`KernelCaps`]): where TC cannot be attached to the tap or a path
//! device, the receive/transmit tracepoints stand in for it; where those fail too, the tap is
//! blind ([`crate::model::Blind`]).

use crate::capture::btf::{kernel_offsets, KernelBtf, VMLINUX_BTF};
use crate::capture::clsact::Ledger;
use crate::capture::kernel::{attach_tc, KernelCaps, Skip, TcWay};
use crate::capture::nf;
use crate::capture::pathdevs::Attached;
use crate::capture::spec::{HookSet, Spec};
use crate::error::EnvError;
use anyhow::{anyhow, Context as _, Result};
use aya::maps::Array;
use aya::programs::tc::SchedClassifierLink;
use aya::programs::{BtfTracePoint, SchedClassifier, TcAttachType, TracePoint};
use aya::{Btf, Ebpf};
use kvmtrace_common::{Config, Filter, FOLLOW_V4, FOLLOW_V6};
use std::collections::HashMap;
use std::path::Path;

/// The compiled eBPF programs, embedded: one file to copy to a host.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kvmtrace"));

/// What a start-up attached and learnt: the [`crate::capture::probe::Tracer`]'s makings.
pub(crate) struct Started {
    pub ebpf: Ebpf,
    pub nf: Option<nf::NfLinks>,
    /// Path devices with the `dev_*` programs attached (none when `global`).
    pub path: Attached,
    pub attached: Vec<String>,
    pub warnings: Vec<String>,
    pub caps: KernelCaps,
    pub notes: Vec<String>,
    pub blind: Option<crate::model::Blind>,
    /// The device hooks are the global receive/transmit tracepoints.
    pub global: bool,
    pub fib_errs: [Option<String>; 2],
    pub tap_links: Vec<SchedClassifierLink>,
    pub ledger: Ledger,
    /// The kernel's drop reasons by value (`enum skb_drop_reason`).
    pub reasons: HashMap<u32, String>,
    pub tap_ifindex: u32,
}

/// The hooks being attached: what every step reads (the object, BTF, the kernel's
/// capabilities) and adds to (what is attached, warnings, the clsact ledger).
struct Startup<'a> {
    spec: &'a Spec,
    ebpf: &'a mut Ebpf,
    btf: Btf,
    caps: &'a KernelCaps,
    all: bool,
    /// Why the route lookup tracepoints' record layout could not be read (IPv4, IPv6).
    fib_errs: &'a [Option<String>; 2],
    attached: Vec<String>,
    warnings: Vec<String>,
    ledger: &'a mut Ledger,
}

/// Checks the environment, loads and attaches. Environment problems come back as
/// [`EnvError`].
pub(crate) fn start(spec: &Spec) -> Result<Started> {
    crate::capture::privileges::require("kvmtrace", &crate::capture::privileges::TRACING)?;
    let t0 = std::time::Instant::now();
    let phase = |what: &str| log::debug!("start-up: {what} at {} ms", t0.elapsed().as_millis());
    let (kbtf, mut offsets) = kernel_layout()?;
    let reasons = kbtf.drop_reasons().unwrap_or_default();
    phase("BTF offsets and drop reasons");
    ensure_tracefs();
    let all = spec.hooks == HookSet::All;
    let caps = KernelCaps::probe(&kbtf, Skip::from_env(), offsets.kfree_reason == 1);
    let fib_errs = fib_layouts(&mut offsets, spec);
    let tap_ifindex = ifindex(&spec.tap).map_err(|e| EnvError(format!("{e:#}")))?;
    let mut filter = filter_of(spec, tap_ifindex, all)?;
    phase("filter");
    let mut ebpf = load(spec, &offsets, filter)?;
    phase("object loaded");
    // Leftovers of a run that died (kill -9) on a kernel without TCX: its cls_bpf filters
    // and the clsact qdiscs it created, nothing else.
    let notes: Vec<String> = crate::capture::clsact::sweep();
    let btf = Btf::from_sys_fs().map_err(|e| EnvError(format!("kernel BTF: {e}")))?;
    phase("aya BTF parsed");
    let mut ledger = Ledger::new();
    let mut s = Startup {
        spec,
        ebpf: &mut ebpf,
        btf,
        caps: &caps,
        all,
        fib_errs: &fib_errs,
        attached: Vec::new(),
        warnings: Vec::new(),
        ledger: &mut ledger,
    };
    let tap = s.attach_tap()?;
    phase("tap attached");
    s.attach_kfree()?;
    phase("tp_btf attached");
    // Without TC on the tap its packets are seen where `--hooks all` sees them: the receive
    // and transmit tracepoints of every device (and then no TC on path devices, whose hops
    // those tracepoints show too).
    let mut global = all || !tap.errs.is_empty();
    let mut seen = if global {
        s.attach_global()?
    } else {
        TapSight::default()
    };
    phase("fib attached");
    let (v4, v6) = (spec.v4().is_some(), spec.v6().is_some());
    let nf = attach_netfilter(s.ebpf, s.caps, all, v4, v6, &mut s.attached).unwrap_or_else(|w| {
        s.warnings.extend(w);
        None
    });
    phase("netfilter attached");
    let mut path = Attached::default();
    if !global {
        match s.attach_path()? {
            Some(p) => path = p,
            None => {
                // A path device without TC: its hops are seen by the global tracepoints
                // instead, and then on every device (TC there too would show them twice).
                seen = s.attach_global()?;
                global = true;
            }
        }
        phase("path devices attached");
    }
    let blind = blind_at_tap(spec, &tap.errs, &seen, tap.macvtap, &mut s.warnings);
    filter.route_helper = u8::from(!global);
    // Every hook is in place: start following (see Filter::enabled).
    let on = Filter {
        enabled: 1,
        ..filter
    };
    set_config(s.ebpf, Config { filter: on })?;
    let (attached, warnings) = (s.attached, s.warnings);
    Ok(Started {
        ebpf,
        nf,
        path,
        attached,
        warnings,
        caps,
        notes,
        blind,
        global,
        fib_errs,
        tap_links: tap.links,
        ledger,
        reasons,
        tap_ifindex,
    })
}

/// The global tracepoints, attached after start-up (a device that joined the path refused
/// TC): what was attached, and the warnings.
pub(crate) fn attach_global_later(
    spec: &Spec,
    ebpf: &mut Ebpf,
    caps: &KernelCaps,
    fib_errs: &[Option<String>; 2],
    ledger: &mut Ledger,
) -> Result<(Vec<String>, Vec<String>)> {
    let btf = Btf::from_sys_fs().map_err(|e| anyhow!("kernel BTF: {e}"))?;
    let mut s = Startup {
        spec,
        ebpf,
        btf,
        caps,
        all: false,
        fib_errs,
        attached: Vec::new(),
        warnings: Vec::new(),
        ledger,
    };
    s.attach_global()?;
    Ok((s.attached, s.warnings))
}

/// The route lookup tracepoints' record offsets (IPv4; IPv6 when followed), with why one
/// could not be read. They are constants of the object, so they are read before loading: the
/// full set uses the tracepoints, and so does a run whose TC programs cannot be attached (the
/// path set's `bpf_fib_lookup` runs in TC).
fn fib_layouts(offsets: &mut crate::capture::btf::Offsets, spec: &Spec) -> [Option<String>; 2] {
    let mut err = |v6: bool| fib_offsets(offsets, v6).err().map(|e| format!("{e:#}"));
    let v4 = err(false);
    let v6 = if spec.v6().is_some() { err(true) } else { None };
    [v4, v6]
}

/// The object loaded with this kernel's offsets and the followed versions, its config set
/// (not enabled yet).
fn load(spec: &Spec, offsets: &crate::capture::btf::Offsets, filter: Filter) -> Result<Ebpf> {
    // Looked up once: a VXLAN port added to the bridge later is not looked into.
    let vxlan_port = u32::from(crate::capture::pathdevs::tap_vxlan_port(&spec.tap));
    let follow = u32::from(if spec.v4().is_some() { FOLLOW_V4 } else { 0 })
        | u32::from(if spec.v6().is_some() { FOLLOW_V6 } else { 0 });
    let mut ebpf = crate::capture::btf::loader(offsets, spec.ring_bytes)
        .override_global("FOLLOW", &follow, true)
        .override_global("VXLAN_PORT", &vxlan_port, true)
        .load(OBJECT)
        .map_err(|e| EnvError(format!("loading the eBPF object: {e}")))?;
    set_config(&mut ebpf, Config { filter })?;
    Ok(ebpf)
}

/// The tap's two TC programs, attached (a TCX link, else clsact + cls_bpf), and those that
/// could not be.
struct TapAttach {
    macvtap: bool,
    links: Vec<aya::programs::tc::SchedClassifierLink>,
    errs: Vec<(&'static str, String)>,
}

/// What the global receive/transmit tracepoints gave: `None` when not tried.
#[derive(Default)]
struct TapSight {
    receive: Option<Result<(), String>>,
    xmit: Option<Result<(), String>>,
}

impl Startup<'_> {
    /// The tap's two TC programs (TCX, else clsact).
    fn attach_tap(&mut self) -> Result<TapAttach> {
        let spec = self.spec;
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
            let p = load_tc(self.ebpf, prog)?;
            match attach_tc(p, prog, &spec.tap, at, self.caps, self.ledger) {
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
                    self.attached
                        .push(format!("tc {prog} on {}{how}", spec.tap));
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

    /// Attaches the global device hooks (`--hooks all`'s, and the fallback where TC cannot be
    /// attached): tp_btf `netif_receive_skb`, `net_dev_start_xmit`, `consume_skb`, and the route
    /// lookup tracepoints. With `all` a missing receive/transmit tracepoint is an environment
    /// error, as before; as a fallback it is reported in the result.
    fn attach_global(&mut self) -> Result<TapSight> {
        let (spec, all, caps) = (self.spec, self.all, self.caps);
        let (attached, warnings) = (&mut self.attached, &mut self.warnings);
        let mut sight = TapSight::default();
        for (tp, required) in [
            ("netif_receive_skb", true),
            ("net_dev_start_xmit", true),
            ("consume_skb", false),
        ] {
            let p: &mut BtfTracePoint = self
                .ebpf
                .program_mut(tp)
                .ok_or_else(|| anyhow!("{tp} missing"))?
                .try_into()?;
            let r = if caps.skip.has(tp) {
                Err(Skip::why(tp))
            } else {
                p.load(tp, &self.btf)
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
            (
                "fib",
                "fib_table_lookup",
                spec.v4().is_some(),
                &self.fib_errs[0],
            ),
            (
                "fib6",
                "fib6_table_lookup",
                spec.v6().is_some(),
                &self.fib_errs[1],
            ),
        ];
        for (category, tp, wanted, layout) in fams {
            if !wanted {
                continue;
            }
            let p: &mut TracePoint = self
                .ebpf
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

    /// `kfree_skb`: every drop. Without it nothing can be said.
    fn attach_kfree(&mut self) -> Result<()> {
        let kfree: &mut BtfTracePoint = self
            .ebpf
            .program_mut("kfree_skb")
            .ok_or_else(|| anyhow!("kfree_skb missing"))?
            .try_into()?;
        kfree
            .load("kfree_skb", &self.btf)
            .and_then(|_| kfree.attach().map(|_| ()))
            .map_err(|e| {
                EnvError(format!(
                    "cannot attach to the tp_btf tracepoint kfree_skb: {e:#} (kvmtrace needs \
                     BTF-enabled tracepoints, Linux 5.5+)"
                ))
            })?;
        self.attached.push("tp_btf kfree_skb".into());
        Ok(())
    }

    /// TC on the path's devices, whose `dev_ingress` asks `bpf_fib_lookup` for the followed
    /// packets' routes. None: a device refused TC (its warning added; what was attached
    /// goes), and the global tracepoints must stand in.
    fn attach_path(&mut self) -> Result<Option<Attached>> {
        for p in ["dev_ingress", "dev_egress"] {
            load_tc(self.ebpf, p)?;
        }
        let want = crate::capture::pathdevs::wanted(&self.spec.tap, &self.spec.dests, &[]);
        let mut path = Attached::default();
        let (notes, failed) = path.sync(self.ebpf, &want, 0.0, self.caps, self.ledger);
        if !failed.is_empty() {
            self.warnings.extend(failed);
            return Ok(None);
        }
        self.attached
            .push("route lookups: bpf_fib_lookup in dev_ingress, for followed packets only".into());
        self.attached.extend(notes);
        Ok(Some(path))
    }
}

/// A TC program of the object, loaded (not attached).
fn load_tc<'e>(ebpf: &'e mut Ebpf, prog: &str) -> Result<&'e mut SchedClassifier> {
    let p: &mut SchedClassifier = ebpf
        .program_mut(prog)
        .ok_or_else(|| anyhow!("{prog} missing"))?
        .try_into()?;
    p.load().with_context(|| format!("loading {prog}"))?;
    Ok(p)
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
