//! The Prometheus metrics of `kvmtrace watch`, kept in a `prometheus-client` registry (which
//! also writes the exposition text). Pure: fed deltas by the watch loop, so tests feed known
//! counts and snapshot the text.
//!
//! Cardinality is bounded by design (docs/watch.md):
//! - VMs: at most `WATCH_MAX_VMS` (4 096 NICs) at once; a VM that goes away has its series removed;
//! - tap series: 2 directions per VM (of each tap metric), requests and replies by kind and
//!   class as they appear (9 each at most);
//! - drop series: at most `max_drop_series` distinct label sets; past it a new combination is
//!   counted under `stage="other",hook="other",reason="other",device="other"` of its VM and
//!   direction (3 more series per VM at most), and `kvmtrace_drop_series_capped_total` rises.

use kvmtrace_common::watch::{WATCH_CLASSES, WATCH_CONV, WATCH_KINDS};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};
use std::collections::HashSet;
use std::hash::Hash;

/// Default bound on distinct drop label sets.
pub const DEFAULT_MAX_DROP_SERIES: usize = 2000;

/// The label value of the overflow bucket.
pub const OTHER: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct DropLabels {
    pub vm: String,
    pub tap: String,
    pub stage: String,
    pub hook: String,
    pub reason: String,
    pub device: String,
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct TapLabels {
    pub vm: String,
    pub tap: String,
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ConvLabels {
    pub vm: String,
    pub tap: String,
    pub kind: String,
    pub dest_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct VmLabels {
    pub vm: String,
    pub tap: String,
    pub mac: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct UnwatchedLabels {
    pub vm: String,
    pub tap: String,
    /// Why its programs could not be attached (the kernel's answer).
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ProgramLabels {
    pub program: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RecordingLabels {
    pub vm: String,
    pub tap: String,
}

/// Bounds the number of distinct label sets; past the bound, new ones fall into an `other`
/// bucket of their VM and direction.
#[derive(Debug)]
pub struct LabelCap {
    max: usize,
    seen: HashSet<DropLabels>,
}

impl LabelCap {
    pub fn new(max: usize) -> Self {
        LabelCap {
            max,
            seen: HashSet::new(),
        }
    }

    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// The label set to count under, and whether it was capped.
    pub fn admit(&mut self, l: DropLabels) -> (DropLabels, bool) {
        if self.seen.contains(&l) {
            return (l, false);
        }
        if self.seen.len() < self.max {
            self.seen.insert(l.clone());
            return (l, false);
        }
        (
            DropLabels {
                stage: OTHER.into(),
                hook: OTHER.into(),
                reason: OTHER.into(),
                device: OTHER.into(),
                ..l
            },
            true,
        )
    }

    /// Forgets a VM's label sets (it went away): room for others.
    pub fn forget_vm(&mut self, tap: &str) -> Vec<DropLabels> {
        self.seen.extract_if(|l| l.tap == tap).collect()
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// What a tap counted since the last update, in one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapDelta {
    pub packets: u64,
    pub bytes: u64,
    pub arp_requests: u64,
    pub arp_replies: u64,
    pub dhcp: u64,
    /// NDP neighbour solicitations and advertisements, router solicitations and advertisements.
    pub ndp_ns: u64,
    pub ndp_na: u64,
    pub ndp_rs: u64,
    pub ndp_ra: u64,
    pub dhcp6: u64,
    /// Requests (`from_vm`) or replies (`to_vm`) by kind and remote class
    /// (`kvmtrace_common::watch::WATCH_KIND_*`, `WATCH_CLASS_*`).
    pub conv: [u64; WATCH_CONV],
}

/// The tap counters, in the order of [`TapDelta::counts`] (and of the exposition): name and
/// help of each.
const TAP_COUNTERS: [(&str, &str); 10] = [
    (
        "kvmtrace_tap_packets",
        "Frames seen on a VM's tap (from_vm: sent by the guest; to_vm: handed to it)",
    ),
    (
        "kvmtrace_tap_bytes",
        "Bytes of the frames seen on a VM's tap",
    ),
    (
        "kvmtrace_tap_arp_requests",
        "ARP requests seen on a VM's tap",
    ),
    ("kvmtrace_tap_arp_replies", "ARP replies seen on a VM's tap"),
    (
        "kvmtrace_tap_dhcp",
        "DHCP datagrams on a VM's tap (from_vm: client to server; to_vm: server to client)",
    ),
    (
        "kvmtrace_tap_ndp_neighbor_solicitations",
        "IPv6 neighbor solicitations (NDP, ICMPv6 135) seen on a VM's tap",
    ),
    (
        "kvmtrace_tap_ndp_neighbor_advertisements",
        "IPv6 neighbor advertisements (NDP, ICMPv6 136) seen on a VM's tap",
    ),
    (
        "kvmtrace_tap_ndp_router_solicitations",
        "IPv6 router solicitations (NDP, ICMPv6 133) seen on a VM's tap",
    ),
    (
        "kvmtrace_tap_ndp_router_advertisements",
        "IPv6 router advertisements (NDP, ICMPv6 134) seen on a VM's tap",
    ),
    (
        "kvmtrace_tap_dhcpv6",
        "DHCPv6 datagrams on a VM's tap (from_vm: client to server; to_vm: server to client)",
    ),
];

impl TapDelta {
    /// The counts of the [`TAP_COUNTERS`], in their order.
    fn counts(&self) -> [u64; TAP_COUNTERS.len()] {
        [
            self.packets,
            self.bytes,
            self.arp_requests,
            self.arp_replies,
            self.dhcp,
            self.ndp_ns,
            self.ndp_na,
            self.ndp_rs,
            self.ndp_ra,
            self.dhcp6,
        ]
    }
}

/// Label values of the request kinds and remote address classes.
pub const KINDS: [&str; WATCH_KINDS] = ["tcp_syn", "icmp_echo", "dns"];
pub const CLASSES: [&str; WATCH_CLASSES] = ["private", "link_local", "public"];

pub struct Metrics {
    registry: Registry,
    drops: Family<DropLabels, Counter>,
    /// One family for each of the [`TAP_COUNTERS`].
    tap: [Family<TapLabels, Counter>; TAP_COUNTERS.len()],
    requests: Family<ConvLabels, Counter>,
    replies: Family<ConvLabels, Counter>,
    vm_info: Family<VmLabels, Gauge>,
    recordings: Family<RecordingLabels, Counter>,
    vms: Gauge,
    unwatched: Family<UnwatchedLabels, Gauge>,
    unwatched_series: HashSet<UnwatchedLabels>,
    capped: Counter,
    unkeyed: Counter,
    ips_full: Counter,
    program_runs: Family<ProgramLabels, Counter>,
    program_seconds: Family<ProgramLabels, Counter<f64>>,
    program_missed: Family<ProgramLabels, Counter>,
    cap: LabelCap,
    /// Every drop series created, "other" buckets too (to remove a VM's).
    drop_series: HashSet<DropLabels>,
    tap_series: HashSet<TapLabels>,
    conv_series: HashSet<ConvLabels>,
    vm_series: HashSet<VmLabels>,
}

/// A new metric, registered under `name` with `help`. The exposition lists metrics in the
/// order they were registered.
fn registered<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

/// An info metric (a gauge that is always 1, its labels the information) for `l`, its label
/// set kept in `series` to be removed with its VM.
fn set_info<L: Clone + Eq + Hash>(family: &Family<L, Gauge>, series: &mut HashSet<L>, l: L) {
    family.get_or_create(&l).set(1);
    series.insert(l);
}

impl Metrics {
    pub fn new(max_drop_series: usize) -> Self {
        let mut r = Registry::default();
        // Field expressions are evaluated in the order written: the metrics are registered,
        // and exposed, in this order.
        Metrics {
            drops: registered(
                &mut r,
                "kvmtrace_drops",
                "Packets of a watched VM the kernel dropped, by where and why",
            ),
            tap: TAP_COUNTERS.map(|(name, help)| registered(&mut r, name, help)),
            requests: registered(
                &mut r,
                "kvmtrace_tap_requests",
                "Requests leaving a VM (TCP SYN, ICMP or ICMPv6 echo request, DNS query; IPv4 and IPv6) by remote address class",
            ),
            replies: registered(
                &mut r,
                "kvmtrace_tap_replies",
                "Replies reaching a VM (TCP SYN+ACK or RST, ICMP or ICMPv6 echo reply, DNS answer; IPv4 and IPv6) by remote address class",
            ),
            vm_info: registered(
                &mut r,
                "kvmtrace_vm_info",
                "A watched VM (always 1): its name, tap and MAC",
            ),
            recordings: registered(
                &mut r,
                "kvmtrace_flight_recordings",
                "Flight recordings started for a VM whose drops crossed the threshold",
            ),
            vms: registered(&mut r, "kvmtrace_vms", "VMs watched now"),
            unwatched: registered(
                &mut r,
                "kvmtrace_vm_unwatched",
                "A VM found whose tap kvmtrace cannot attach to (always 1), with the reason: its \
                 packets and drops are not counted",
            ),
            capped: registered(
                &mut r,
                "kvmtrace_drop_series_capped",
                "Drops counted under the `other` bucket because the drop label sets hit their bound",
            ),
            unkeyed: registered(
                &mut r,
                "kvmtrace_drops_unkeyed",
                "Drops of watched VMs the kernel could not count by site (its drop map was full)",
            ),
            ips_full: registered(
                &mut r,
                "kvmtrace_guest_addresses_unlearned",
                "New guest addresses not learned because the kernel's address map was full",
            ),
            program_runs: registered(
                &mut r,
                "kvmtrace_program_runs",
                "Runs of watch's kernel programs (counted while kernel.bpf_stats_enabled=1)",
            ),
            program_seconds: registered(
                &mut r,
                "kvmtrace_program_run_seconds",
                "Time spent in watch's kernel programs (counted while kernel.bpf_stats_enabled=1)",
            ),
            program_missed: registered(
                &mut r,
                "kvmtrace_program_missed_runs",
                "Runs of watch's kernel programs the kernel skipped because another BPF program was running on that CPU (their packets are not counted)",
            ),
            registry: r,
            unwatched_series: HashSet::new(),
            cap: LabelCap::new(max_drop_series),
            drop_series: HashSet::new(),
            tap_series: HashSet::new(),
            conv_series: HashSet::new(),
            vm_series: HashSet::new(),
        }
    }

    pub fn set_max_drop_series(&mut self, max: usize) {
        self.cap.set_max(max);
    }

    pub fn add_drops(&mut self, l: DropLabels, n: u64) {
        if n == 0 {
            return;
        }
        let (l, capped) = self.cap.admit(l);
        if capped {
            self.capped.inc_by(n);
        }
        self.drops.get_or_create(&l).inc_by(n);
        self.drop_series.insert(l);
    }

    pub fn add_tap(&mut self, vm: &str, tap: &str, direction: &str, d: TapDelta) {
        let l = TapLabels {
            vm: vm.into(),
            tap: tap.into(),
            direction: direction.into(),
        };
        for (family, n) in self.tap.iter().zip(d.counts()) {
            family.get_or_create(&l).inc_by(n);
        }
        // Requests leave the VM; replies reach it.
        let fam = if direction == "to_vm" {
            &self.replies
        } else {
            &self.requests
        };
        for (k, kind) in KINDS.iter().enumerate() {
            for (c, class) in CLASSES.iter().enumerate() {
                let n = d.conv[k * WATCH_CLASSES + c];
                let cl = ConvLabels {
                    vm: vm.into(),
                    tap: tap.into(),
                    kind: (*kind).into(),
                    dest_class: (*class).into(),
                };
                // Series appear with their first count (9 per direction at most).
                if n > 0 {
                    fam.get_or_create(&cl).inc_by(n);
                    self.conv_series.insert(cl);
                }
            }
        }
        self.tap_series.insert(l);
    }

    /// Kernel-side counters (cumulative deltas): drops not keyed, addresses not learned.
    pub fn add_kernel(&mut self, unkeyed: u64, ips_full: u64) {
        self.unkeyed.inc_by(unkeyed);
        self.ips_full.inc_by(ips_full);
    }

    /// What one of watch's programs ran since the last update (deltas).
    pub fn add_program(&mut self, program: &str, runs: u64, run_ns: u64, missed: u64) {
        let l = ProgramLabels {
            program: program.into(),
        };
        self.program_runs.get_or_create(&l).inc_by(runs);
        self.program_seconds
            .get_or_create(&l)
            .inc_by(run_ns as f64 / 1e9);
        self.program_missed.get_or_create(&l).inc_by(missed);
    }

    pub fn vm_added(&mut self, vm: &str, tap: &str, mac: &str) {
        let l = VmLabels {
            vm: vm.into(),
            tap: tap.into(),
            mac: mac.into(),
        };
        set_info(&self.vm_info, &mut self.vm_series, l);
        self.vms.set(self.vm_series.len() as i64);
    }

    /// A VM whose tap cannot be attached to (`reason`); replaces an earlier reason.
    pub fn vm_unwatched(&mut self, vm: &str, tap: &str, reason: &str) {
        self.vm_watched_again(tap);
        let l = UnwatchedLabels {
            vm: vm.into(),
            tap: tap.into(),
            reason: reason.into(),
        };
        set_info(&self.unwatched, &mut self.unwatched_series, l);
    }

    /// The `/healthz` text: `ok` (the service runs), then one line per VM found that cannot
    /// be watched, with why.
    pub fn health(&self) -> String {
        let mut out = String::from("ok\n");
        let mut v: Vec<&UnwatchedLabels> = self.unwatched_series.iter().collect();
        v.sort();
        for l in v {
            out.push_str(&format!(
                "not watched: {} (tap {}): {}\n",
                l.vm, l.tap, l.reason
            ));
        }
        out
    }

    /// A tap that could not be attached to is watched now, or gone.
    pub fn vm_watched_again(&mut self, tap: &str) {
        for l in self.unwatched_series.extract_if(|l| l.tap == tap) {
            self.unwatched.remove(&l);
        }
    }

    pub fn recording_started(&mut self, vm: &str, tap: &str) {
        self.recordings
            .get_or_create(&RecordingLabels {
                vm: vm.into(),
                tap: tap.into(),
            })
            .inc();
    }

    /// A VM went away: its series go too (bounded cardinality under churn).
    pub fn vm_removed(&mut self, tap: &str) {
        self.cap.forget_vm(tap);
        for l in self.drop_series.extract_if(|l| l.tap == tap) {
            self.drops.remove(&l);
        }
        for l in self.tap_series.extract_if(|l| l.tap == tap) {
            for family in &self.tap {
                family.remove(&l);
            }
        }
        for l in self.conv_series.extract_if(|l| l.tap == tap) {
            self.requests.remove(&l);
            self.replies.remove(&l);
        }
        for l in self.vm_series.extract_if(|l| l.tap == tap) {
            self.vm_info.remove(&l);
            self.recordings.remove(&RecordingLabels {
                vm: l.vm,
                tap: l.tap,
            });
        }
        self.vms.set(self.vm_series.len() as i64);
    }

    /// Distinct drop label sets now (the bound applies to the non-`other` ones).
    pub fn drop_series(&self) -> usize {
        self.drop_series.len()
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry)
            .expect("writing to a String does not fail");
        s
    }
}

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    fn drop_l(reason: &str, device: &str) -> DropLabels {
        DropLabels {
            vm: "web1".into(),
            tap: "vnet0".into(),
            stage: "netfilter".into(),
            hook: "FORWARD".into(),
            reason: reason.into(),
            device: device.into(),
            direction: "from_vm".into(),
        }
    }

    #[test]
    fn the_cap_admits_up_to_its_bound_then_buckets_as_other() {
        let mut cap = LabelCap::new(2);
        assert_eq!(cap.admit(drop_l("A", "br0")), (drop_l("A", "br0"), false));
        assert_eq!(cap.admit(drop_l("B", "br0")), (drop_l("B", "br0"), false));
        // Known sets keep their labels past the bound.
        assert!(!cap.admit(drop_l("A", "br0")).1);
        let (l, capped) = cap.admit(drop_l("C", "eth0"));
        assert!(capped);
        assert_eq!(
            (
                l.stage.as_str(),
                l.hook.as_str(),
                l.reason.as_str(),
                l.device.as_str()
            ),
            (OTHER, OTHER, OTHER, OTHER)
        );
        assert_eq!((l.vm.as_str(), l.direction.as_str()), ("web1", "from_vm"));
        assert_eq!(cap.len(), 2);
        // A VM going away frees its room.
        assert_eq!(cap.forget_vm("vnet0").len(), 2);
        assert!(cap.is_empty());
        assert!(!cap.admit(drop_l("C", "eth0")).1);
    }

    #[test]
    fn capped_drops_are_counted_and_series_stay_bounded() {
        let mut m = Metrics::new(3);
        for i in 0..50 {
            m.add_drops(drop_l(&format!("R{i}"), "br0"), 1);
        }
        // 3 admitted + 1 other bucket.
        assert_eq!(m.drop_series(), 4);
        let text = m.encode();
        assert!(
            text.contains("kvmtrace_drop_series_capped_total 47"),
            "{text}"
        );
        assert!(
            text.contains("kvmtrace_drops_total{vm=\"web1\",tap=\"vnet0\",stage=\"other\",hook=\"other\",reason=\"other\",device=\"other\",direction=\"from_vm\"} 47"),
            "{text}"
        );
        m.vm_removed("vnet0");
        assert_eq!(m.drop_series(), 0);
        assert!(!m.encode().contains("web1"));
    }

    /// The exposition text of a registry fed known counts (metric names, labels, help, types).
    #[test]
    fn exposition_text() {
        let mut m = Metrics::new(DEFAULT_MAX_DROP_SERIES);
        m.vm_added("web1", "vnet0", "52:54:00:4b:54:02");
        m.add_tap(
            "web1",
            "vnet0",
            "from_vm",
            TapDelta {
                packets: 10,
                bytes: 980,
                arp_requests: 2,
                arp_replies: 0,
                dhcp: 1,
                ndp_ns: 3,
                ndp_na: 1,
                ndp_rs: 1,
                ndp_ra: 0,
                dhcp6: 1,
                // 3 pings to a public address, 1 SYN to a private one.
                conv: [1, 0, 0, 0, 0, 3, 0, 0, 0],
            },
        );
        m.add_tap(
            "web1",
            "vnet0",
            "to_vm",
            TapDelta {
                packets: 4,
                bytes: 392,
                arp_requests: 0,
                arp_replies: 2,
                dhcp: 1,
                ndp_ns: 1,
                ndp_na: 2,
                ndp_rs: 0,
                ndp_ra: 1,
                dhcp6: 0,
                // 1 echo reply.
                conv: [0, 0, 0, 0, 0, 1, 0, 0, 0],
            },
        );
        m.add_drops(drop_l("NETFILTER_DROP", "br0"), 5);
        m.add_drops(drop_l("NETFILTER_DROP", "br0"), 2);
        m.add_drops(
            DropLabels {
                stage: "routing".into(),
                hook: "none".into(),
                reason: "IP_INNOROUTES".into(),
                ..drop_l("", "br0")
            },
            1,
        );
        m.recording_started("web1", "vnet0");
        m.add_kernel(0, 0);
        m.add_program("watch_tap_in", 14, 700, 1);
        insta::assert_snapshot!(samples_sorted(&m.encode()));
    }

    /// prometheus-client writes a family's series in hash order: sorted within each family
    /// (HELP and TYPE lines stay first) for a stable snapshot.
    fn samples_sorted(text: &str) -> String {
        let mut out = Vec::new();
        let mut series: Vec<&str> = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') {
                series.sort_unstable();
                out.append(&mut series);
                out.push(line);
            } else {
                series.push(line);
            }
        }
        series.sort_unstable();
        out.append(&mut series);
        out.join("\n")
    }
}
