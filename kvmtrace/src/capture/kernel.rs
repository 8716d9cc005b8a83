//! What the running kernel offers, probed once at start by `follow` and `watch` alike
//! ([`KernelCaps`]), and the one way both attach a TC program to a device ([`attach_tc`]):
//! a TCX link where the kernel has them, else a `clsact` qdisc with a `cls_bpf` filter that
//! [`crate::capture::clsact::Ledger`] records and removes.
//!
//! A capability is read from the kernel's own BTF, not from its version number (a
//! distribution kernel may carry a backport): `enum bpf_attach_type` gains `BPF_TCX_INGRESS`
//! with TCX (Linux 6.6, include/uapi/linux/bpf.h) and `BPF_NETFILTER` with netfilter links
//! (Linux 6.4). Whether a clsact qdisc can be created is only known by trying (the
//! `sch_ingress` module may not be loadable), so that is found out, and reported, at attach.

use crate::capture::btf::KernelBtf;
use crate::capture::clsact::Ledger;
use aya::programs::links::LinkOrder;
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions};
use aya::programs::{SchedClassifier, TcAttachType};

/// `KVMTRACE_SKIP_HOOKS`: hooks left out on purpose (a kernel where one misbehaves, or a test
/// of a degraded path). Values: `tc` (every TC program: tap and path devices), `tcx` (TC only
/// through clsact, as before Linux 6.6), `netif_receive_skb`, `net_dev_start_xmit`,
/// `consume_skb`, `fib`, `netfilter`.
#[derive(Clone, Debug, Default)]
pub struct Skip(Vec<String>);

impl Skip {
    pub fn from_env() -> Skip {
        Skip::parse(&std::env::var("KVMTRACE_SKIP_HOOKS").unwrap_or_default())
    }
    pub fn parse(list: &str) -> Skip {
        Skip(
            list.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        )
    }
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|s| s == name)
    }
    /// The error a hook left out reports.
    pub fn why(name: &str) -> String {
        format!("left out by KVMTRACE_SKIP_HOOKS={name}")
    }
}

/// The kernel's capabilities kvmtrace plans with. `Err` holds why one is missing.
#[derive(Clone, Debug)]
pub struct KernelCaps {
    /// Kernel release (uname).
    pub release: String,
    /// TCX links (6.6+): fd-based TC attachments the kernel removes with the process.
    pub tcx: Result<(), String>,
    /// BPF netfilter links (6.4+): `--hooks all`'s per-hook entry and exit.
    pub netfilter_links: Result<(), String>,
    /// The `kfree_skb` tracepoint passes the drop reason (5.17+); without it the reason is
    /// inferred from the function that freed the skb (model::drop).
    pub kfree_reason: Result<(), String>,
    pub skip: Skip,
}

impl KernelCaps {
    /// `kfree_reason`: whether the `kfree_skb` tracepoint passes the reason, as the offsets
    /// already read it (`Offsets::kfree_reason`): each BTF lookup by name walks the whole of
    /// vmlinux's types with the mmap backend (~15 ms here), so none is made twice.
    pub fn probe(btf: &KernelBtf, skip: Skip, kfree_reason: bool) -> KernelCaps {
        let attach_types = btf.enum_members("bpf_attach_type");
        let has = |m: &str| attach_types.iter().any(|n| n == m);
        let tcx = if skip.has("tcx") || skip.has("tc") {
            Err(Skip::why(if skip.has("tc") { "tc" } else { "tcx" }))
        } else if has("BPF_TCX_INGRESS") {
            Ok(())
        } else {
            Err("this kernel has no TCX links (Linux 6.6+)".into())
        };
        let netfilter_links = if skip.has("netfilter") {
            Err(Skip::why("netfilter"))
        } else if has("BPF_NETFILTER") {
            Ok(())
        } else {
            Err("this kernel has no BPF netfilter links (Linux 6.4+)".into())
        };
        let kfree_reason = if kfree_reason {
            Ok(())
        } else {
            Err("kfree_skb passes no drop reason (Linux 5.17+)".into())
        };
        KernelCaps {
            release: release(),
            tcx,
            netfilter_links,
            kfree_reason,
            skip,
        }
    }

    /// The probe line's capability part: `kernel 6.18.0: TCX yes, netfilter links yes`.
    pub fn summary(&self) -> String {
        let yn = |r: &Result<(), String>| match r {
            Ok(()) => "yes".to_string(),
            Err(e) if e.starts_with("left out") => e.clone(),
            Err(_) => "no".to_string(),
        };
        format!(
            "kernel {}: TCX {}, netfilter links {}, drop reasons {}",
            self.release,
            yn(&self.tcx),
            yn(&self.netfilter_links),
            yn(&self.kfree_reason)
        )
    }

    /// One line per missing capability: why, and what the output cannot show because of it.
    /// `all`: the full hook set was asked for (netfilter links matter only there).
    pub fn gaps(&self, all: bool) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = &self.tcx {
            if !self.skip.has("tc") {
                out.push(format!(
                    "no TCX ({e}): TC programs go on a clsact qdisc as cls_bpf filters, which \
                     outlive the process; kvmtrace records them under {} and removes exactly \
                     them on exit, or at its next start after a crash",
                    crate::capture::clsact::STATE_DIR
                ));
            }
        }
        if let Err(e) = &self.kfree_reason {
            out.push(format!(
                "no drop reasons ({e}): a drop's reason is inferred from the kernel function \
                 that freed the packet (nf_hook_slow → NETFILTER_DROP, …), marked \
                 reason_inferred, or NOT_SPECIFIED where that function has several causes; its \
                 place (stage, hook) still comes from the location and the kernel stack"
            ));
        }
        if all {
            if let Err(e) = &self.netfilter_links {
                out.push(format!(
                    "no netfilter links ({e}): no entry/exit hop per netfilter hook and no NAT \
                     before/after at the hook; netfilter drops are still named from the drop's \
                     kernel stack"
                ));
            }
        }
        out
    }
}

fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// How a TC program is attached to one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcWay {
    Tcx,
    Clsact,
}

/// Attaches `prog` (named `name`) to `dev`'s TC hook `at`: a TCX link when the kernel has
/// them, else a cls_bpf filter on the device's clsact qdisc (created if missing, and then
/// recorded as kvmtrace's in `ledger`, as is the filter). The error is the first one met, with
/// what failed (the qdisc's creation, the filter), never a later consequence of it. The link
/// is the caller's: dropping it detaches the program (and for a filter, deletes it).
pub fn attach_tc(
    prog: &mut SchedClassifier,
    name: &'static str,
    dev: &str,
    at: TcAttachType,
    caps: &KernelCaps,
    ledger: &mut Ledger,
) -> Result<(SchedClassifierLink, TcWay), String> {
    if caps.skip.has("tc") {
        return Err(Skip::why("tc"));
    }
    let take = |prog: &mut SchedClassifier, id| {
        prog.take_link(id)
            .map_err(|e| format!("taking the link: {}", chain(&e)))
    };
    if caps.tcx.is_ok() {
        let id = prog
            .attach_with_options(dev, at, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(|e| format!("TCX link: {}", chain(&e)))?;
        return Ok((take(prog, id)?, TcWay::Tcx));
    }
    ledger.ensure_clsact(dev)?;
    let id = prog
        .attach_with_options(dev, at, TcAttachOptions::Netlink(NlOptions::default()))
        .map_err(|e| format!("cls_bpf filter on the clsact qdisc: {}", chain(&e)))?;
    let link = take(prog, id)?;
    // The kernel chose a free priority and handle: recorded, so that exactly this filter is
    // removed, also after a crash.
    if let (Ok(prio), Ok(handle)) = (link.priority(), link.handle()) {
        ledger.record_filter(dev, at, name, prio, u32::from(handle));
    }
    Ok((link, TcWay::Clsact))
}

/// An error with its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let t = x.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = x.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_values_are_read_as_a_comma_separated_list() {
        let s = Skip::parse(" tcx, netif_receive_skb ,,");
        assert!(s.has("tcx"));
        assert!(s.has("netif_receive_skb"));
        assert!(!s.has("tc"));
        assert!(!Skip::parse("").has(""));
    }

    #[test]
    fn the_probe_line_names_what_is_missing_and_what_it_costs() {
        let caps = KernelCaps {
            release: "6.1.0-28-amd64".into(),
            tcx: Err("this kernel has no TCX links (Linux 6.6+)".into()),
            netfilter_links: Err("this kernel has no BPF netfilter links (Linux 6.4+)".into()),
            kfree_reason: Ok(()),
            skip: Skip::default(),
        };
        assert_eq!(
            caps.summary(),
            "kernel 6.1.0-28-amd64: TCX no, netfilter links no, drop reasons yes"
        );
        let gaps = caps.gaps(false);
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert!(gaps[0].starts_with(
            "no TCX (this kernel has no TCX links (Linux 6.6+)): TC programs go on a clsact qdisc"
        ));
        let all = caps.gaps(true);
        assert_eq!(all.len(), 2, "{all:?}");
        assert!(all[1].contains("no entry/exit hop per netfilter hook"));
        let skipped = KernelCaps {
            tcx: Err(Skip::why("tc")),
            skip: Skip::parse("tc"),
            ..caps
        };
        assert_eq!(
            skipped.summary(),
            "kernel 6.1.0-28-amd64: TCX left out by KVMTRACE_SKIP_HOOKS=tc, netfilter links no, \
             drop reasons yes"
        );
        assert!(skipped.gaps(false).is_empty());
        // 5.10: kfree_skb has no reason argument.
        let old = KernelCaps {
            kfree_reason: Err("kfree_skb passes no drop reason (Linux 5.17+)".into()),
            ..skipped
        };
        assert!(old.summary().ends_with("drop reasons no"));
        let gaps = old.gaps(false);
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert!(
            gaps[0].contains("inferred from the kernel function"),
            "{gaps:?}"
        );
    }

    /// The running kernel (6.18) passes the reason.
    #[test]
    fn the_running_kernel_passes_drop_reasons() {
        let btf = KernelBtf::open(std::path::Path::new(crate::capture::btf::VMLINUX_BTF))
            .expect("kernel BTF");
        let o = crate::capture::btf::kernel_offsets(&btf).expect("offsets");
        assert!(
            KernelCaps::probe(&btf, Skip::default(), o.kfree_reason == 1)
                .kfree_reason
                .is_ok()
        );
    }
}
