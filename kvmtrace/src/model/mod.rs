//! Events → packet journeys → flows → verdicts. Pure: no eBPF, no I/O, so every rule here is
//! unit-tested from recorded events and `replay` works on any machine.

pub mod decision;
pub mod dest;
mod diagnose;
pub use diagnose::delivered_clause;
pub mod drop;
pub mod event;
pub mod filter;
pub mod fix;

use crate::model::event::{
    is_icmp, is_icmp_error, DevKind, Direction, NfHook, Point, Route, TraceEvent, Tuple,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};

/// Version of the JSON objects written by `--json` (docs/json-schema.md).
pub const SCHEMA: u32 = 1;

/// The coarse place of a hop on the host's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Tap,
    Bridge,
    Netfilter,
    Routing,
    Egress,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tap => "tap",
            Self::Bridge => "bridge",
            Self::Netfilter => "netfilter",
            Self::Routing => "routing",
            Self::Egress => "egress",
        }
    }
}

/// A netfilter base chain registered on the host (from an nftables dump).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NfChain {
    /// `ip`, `inet`, `bridge`, …
    pub family: String,
    pub table: String,
    pub chain: String,
    pub hook: NfHook,
    pub priority: i32,
    /// `accept` or `drop`.
    pub policy: String,
}

impl NfChain {
    /// How a verdict names it: `inet labfw forward (policy drop, priority 0)`.
    pub fn label(&self) -> String {
        format!(
            "{} {} {} (policy {}, priority {})",
            self.family, self.table, self.chain, self.policy, self.priority
        )
    }
}

/// Facts about the host, read when the trace starts (or ends), that verdicts refer to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    /// `net.ipv4.ip_forward` (None when unknown).
    pub ip_forward: Option<bool>,
    /// `net.ipv6.conf.all.forwarding` (None when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6_forward: Option<bool>,
    /// nftables base chains (including iptables-nft's).
    pub nft_chains: Vec<NfChain>,
    /// iptables-legacy tables present (`/proc/net/ip_tables_names`).
    pub legacy_tables: Vec<String>,
    /// Network devices of the namespace.
    #[serde(default)]
    pub devices: Vec<DevFacts>,
    /// The VXLAN devices of the namespace (overlay verdicts name their remote and underlay).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vxlans: Vec<VxlanFacts>,
}

/// A VXLAN device: where its encapsulated packets go (`ip -d link show type vxlan`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanFacts {
    pub name: String,
    pub vni: u32,
    /// The default remote VTEP (`remote`); None: no default remote.
    pub remote: Option<Ipv4Addr>,
    pub local: Option<Ipv4Addr>,
    /// The underlay device it is bound to (`dev`); None: unbound (the route to the remote
    /// decides).
    pub dev: Option<String>,
    /// The device of the route to the remote, when one exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_dev: Option<String>,
    /// Destination UDP port.
    pub port: u16,
    pub mtu: u32,
    /// Without `remote`: the VTEP of its all-zeros forwarding entry (`bridge fdb append
    /// 00:00:00:00:00:00 dev vx0 dst …`), which plays the same part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fdb_remote: Option<Ipv4Addr>,
    /// Forwarding entries for a single MAC with a VTEP (EVPN, static `bridge fdb`).
    #[serde(default, skip_serializing_if = "is_zero_usize")]
    pub fdb_macs: usize,
}

/// Bytes VXLAN adds in front of an IPv4 inner frame on an IPv4 underlay: outer IPv4 (20),
/// UDP (8), VXLAN (8) and the inner Ethernet header (14), RFC 7348.
pub const VXLAN_OVERHEAD: u32 = 50;

/// One network device as `/sys/class/net` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevFacts {
    pub name: String,
    /// The bridge it is a port of.
    pub master: Option<String>,
    pub mtu: Option<u32>,
    pub up: bool,
    /// A Linux bridge itself (`/sys/class/net/NAME/bridge`), whether or not it has ports.
    #[serde(default)]
    pub bridge: bool,
    /// Its addresses: IPv4, and IPv6 but link-local (traces before session 5 hold IPv4 only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addrs: Vec<DevAddr>,
    /// A macvtap's lower device (`lower_DEV` of a device with `macvtap/`): its frames leave
    /// there, without a bridge and without the host's stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macvtap_lower: Option<String>,
    /// A macvtap's mode (`bridge`, `vepa`, `private`, `passthru`, `source`): whether it
    /// passes frames to the other macvtaps of its lower device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macvtap_mode: Option<String>,
    /// A macvtap's MAC address (its guest's), lower case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Set up by its administrator but without carrier (`carrier` 0: the cable, the veth peer
    /// or a macvtap's lower device is down). `up` may still be true (`lowerlayerdown`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_carrier: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// An IPv4 address on a device, with its prefix length (`10.77.0.1/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevAddr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl DevAddr {
    /// Whether `ip` is in this address's subnet.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ipnet::IpNet::new(self.addr, self.prefix).is_ok_and(|n| n.contains(&ip))
    }
}

impl HostFacts {
    /// The bridge `dev` is a port of (None also when the device is unknown).
    pub fn master_of(&self, dev: &str) -> Option<&str> {
        self.devices
            .iter()
            .find(|d| d.name == dev)
            .and_then(|d| d.master.as_deref())
    }
    /// The device, when the facts know it.
    pub fn device(&self, dev: &str) -> Option<&DevFacts> {
        self.devices.iter().find(|d| d.name == dev)
    }
    /// The other macvtaps on the lower device of the macvtap `dev` (other guests on its wire).
    pub fn macvtap_siblings(&self, dev: &str) -> Vec<&DevFacts> {
        let Some(lower) = self.device(dev).and_then(|d| d.macvtap_lower.as_deref()) else {
            return Vec::new();
        };
        self.devices
            .iter()
            .filter(|d| d.name != dev && d.macvtap_lower.as_deref() == Some(lower))
            .collect()
    }
    /// The bridge a VM with address `guest` belongs to: the one whose subnet holds the address,
    /// else the only bridge of the host (None when neither says).
    pub fn bridge_for(&self, guest: IpAddr) -> Option<&str> {
        let bridges: Vec<&DevFacts> = self.devices.iter().filter(|d| d.bridge).collect();
        bridges
            .iter()
            .find(|b| b.addrs.iter().any(|a| a.contains(guest)))
            .or(match bridges.as_slice() {
                [only] => Some(only),
                _ => None,
            })
            .map(|b| b.name.as_str())
    }
    /// The VXLAN device `dev`, when it is one.
    pub fn vxlan(&self, dev: &str) -> Option<&VxlanFacts> {
        self.vxlans.iter().find(|v| v.name == dev)
    }
    pub fn mtu_of(&self, dev: &str) -> Option<u32> {
        self.devices
            .iter()
            .find(|d| d.name == dev)
            .and_then(|d| d.mtu)
    }
}

/// A header change between two hops of one packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewrite {
    /// `src`, `dst`, `sport`, `dport` (`icmp_id` for ICMP echo identifiers).
    pub field: String,
    pub from: String,
    pub to: String,
    /// Where the change was first seen, e.g. `POSTROUTING`.
    pub at: String,
}

/// One packet's path through the host: all events of one skb from first sight to its end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Journey {
    pub id: usize,
    pub skb: u64,
    pub dir: Direction,
    pub hops: Vec<TraceEvent>,
    pub closed: bool,
}

/// Where a dropped packet died.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropSite {
    pub stage: Stage,
    pub hook: Option<NfHook>,
    pub device: String,
    pub reason: String,
    /// The kernel gave no reason (before 5.17): `reason` was inferred from the location
    /// (model::drop::INFERRED_REASONS).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reason_inferred: bool,
    pub location: Option<String>,
    pub route: Option<Route>,
    /// Dropped inside bridge netfilter (br_netfilter passing bridged frames to the IP hooks).
    #[serde(default)]
    pub bridged: bool,
    /// Dropped by a bridge-family hook (an nftables `bridge` table, ebtables).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bridge_family: bool,
}

/// How a journey ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Outcome {
    Dropped(DropSite),
    /// A request transmitted out of a non-VM device.
    LeftHost {
        device: String,
        tuple: Option<Tuple>,
    },
    /// A request routed back towards the VM side (its own bridge or tap).
    LoopedBack {
        device: String,
        route: Option<Route>,
    },
    /// A reply handed to the VM's tap.
    DeliveredToVm {
        device: String,
    },
    /// Taken by the host itself (INPUT hook).
    DeliveredLocally,
    /// No end seen yet (or the end was not observable).
    InFlight {
        stage: Stage,
        device: String,
    },
}

pub fn stage_of(e: &TraceEvent) -> Stage {
    match e.point {
        Point::TapIngress | Point::TapEgress => Stage::Tap,
        Point::NfEnter | Point::NfExit => Stage::Netfilter,
        Point::Fib => Stage::Routing,
        Point::NetifReceive | Point::DevXmit | Point::Drop | Point::Consume => match e.dev_kind {
            DevKind::Tap => Stage::Tap,
            DevKind::Bridge => Stage::Bridge,
            DevKind::Other => Stage::Egress,
        },
    }
}

impl Journey {
    fn tuples(&self) -> impl Iterator<Item = (&TraceEvent, &Tuple)> {
        self.hops
            .iter()
            .filter(|h| h.point != Point::Fib)
            .filter_map(|h| h.tuple.as_ref().map(|t| (h, t)))
    }

    /// Whether `ev`, seen on this journey's skb address and not marked new by the kernel, can
    /// be the same packet. The kernel reuses an freed skb's memory at once, and its per-skb
    /// entry may outlive the packet (the path set has no `consume_skb`; IPv6 has no IP id to
    /// tell two packets apart, and an echo reply carries its request's sequence): so the
    /// address alone never continues a journey. A hop that contradicts it — another
    /// direction, IP version or protocol, another ICMP type or TCP flags (no NAT changes
    /// those), the journey's own endpoints swapped (its answer, not itself), or a packet
    /// received on a device of the host's outside after this one was sent out of one or
    /// handed to the VM (tap egress: a delivered IPv6 echo reply's memory is reused by the
    /// next reply, and `ping -c1`'s echo sequence, IPv6's stand-in for the IP id, is 0 for
    /// both) — is a new packet.
    pub fn continues_with(&self, ev: &TraceEvent) -> bool {
        if ev.dir != self.dir {
            return false;
        }
        let Some(t) = ev.tuple.as_ref() else {
            return true;
        };
        let mut left_host = false;
        for h in &self.hops {
            if (h.point == Point::DevXmit && h.dev_kind == DevKind::Other)
                || h.point == Point::TapEgress
            {
                left_host = true;
            }
            if h.point == Point::Fib {
                continue;
            }
            let Some(p) = h.tuple.as_ref() else { continue };
            if p.src.is_ipv4() != t.src.is_ipv4() || p.proto != t.proto {
                return false;
            }
            if is_icmp(t.proto) && h.icmp_type != ev.icmp_type {
                return false;
            }
            if t.proto == 6 && h.tcp_flags != ev.tcp_flags {
                return false;
            }
            if t.src == p.dst && t.dst == p.src && t.src != t.dst {
                return false;
            }
        }
        !(left_host && ev.point == Point::NetifReceive && ev.dev_kind == DevKind::Other)
    }

    pub fn first_tuple(&self) -> Option<Tuple> {
        self.tuples().next().map(|(_, t)| *t)
    }

    pub fn last_tuple(&self) -> Option<Tuple> {
        self.tuples().last().map(|(_, t)| *t)
    }

    /// The result of the route lookup for this packet. The kernel traces each table it tries
    /// (net/ipv4/fib_trie.c): a miss is -EAGAIN and the next table is tried; when every table
    /// missed, the lookup as a whole failed with -ENETUNREACH, which is what this returns.
    pub fn route(&self) -> Option<Route> {
        // Lookups the other way round are reverse-path checks (fib_validate_source), not the
        // packet's route.
        let dir = self.dir;
        let mut lookups = self
            .hops
            .iter()
            .filter(|h| h.dir == dir)
            .filter_map(|h| h.route.as_ref());
        let last = lookups.clone().next_back()?;
        if lookups.all(|r| r.err == -11) {
            return Some(Route {
                err: -101,
                ..last.clone()
            });
        }
        self.hops
            .iter()
            .rev()
            .filter(|h| h.dir == dir)
            .filter_map(|h| h.route.as_ref())
            .find(|r| r.err != -11)
            .cloned()
    }

    /// Header changes along the path, each reported once where it first appeared.
    pub fn rewrites(&self) -> Vec<Rewrite> {
        let mut out: Vec<Rewrite> = Vec::new();
        let mut prev: Option<Tuple> = None;
        for (hop, t) in self.tuples() {
            if let Some(p) = prev {
                let seen_at_hook = matches!(hop.point, Point::NfEnter | Point::NfExit);
                let id_name = if is_icmp(t.proto) { "icmp_id" } else { "sport" };
                let changes = [
                    ("src", p.src.to_string(), t.src.to_string()),
                    ("dst", p.dst.to_string(), t.dst.to_string()),
                    (id_name, p.sport.to_string(), t.sport.to_string()),
                    (
                        if is_icmp(t.proto) {
                            "icmp_seq"
                        } else {
                            "dport"
                        },
                        p.dport.to_string(),
                        t.dport.to_string(),
                    ),
                ];
                for (i, (field, from, to)) in changes.into_iter().enumerate() {
                    if from != to {
                        // Seen first on a device (the path hook set has no netfilter links):
                        // the kernel rewrites a forwarded packet's destination only at
                        // PREROUTING (DNAT, or conntrack undoing SNAT for a reply) and its
                        // source only at POSTROUTING (net/netfilter/nf_nat_proto.c).
                        let at = if seen_at_hook {
                            point_label(hop)
                        } else if i % 2 == 1 {
                            "PREROUTING exit".to_string()
                        } else {
                            "POSTROUTING exit".to_string()
                        };
                        out.push(Rewrite {
                            field: field.into(),
                            from,
                            to,
                            at,
                        });
                    }
                }
            }
            prev = Some(*t);
        }
        out
    }

    /// How this journey ended.
    pub fn outcome(&self) -> Outcome {
        if let Some(drop) = self.hops.iter().find(|h| h.point == Point::Drop) {
            return Outcome::Dropped(self.drop_site(drop));
        }
        let xmit = |h: &&TraceEvent| matches!(h.point, Point::DevXmit | Point::TapEgress);
        match self.dir {
            Direction::Request => {
                if let Some(h) = self
                    .hops
                    .iter()
                    .filter(xmit)
                    .find(|h| h.dev_kind == DevKind::Other)
                {
                    return Outcome::LeftHost {
                        device: h.device.clone(),
                        tuple: h.tuple,
                    };
                }
                // Routed again out of the VM side: the route lookup sent it back.
                let routed = self.hops.iter().any(|h| h.point == Point::Fib);
                if routed {
                    if let Some(h) = self.hops.iter().rev().find(|h| xmit(h)) {
                        return Outcome::LoopedBack {
                            device: h.device.clone(),
                            route: self.route(),
                        };
                    }
                }
            }
            Direction::Reply => {
                if let Some(h) = self.hops.iter().find(|h| {
                    h.point == Point::TapEgress
                        || (h.point == Point::DevXmit && h.dev_kind == DevKind::Tap)
                }) {
                    return Outcome::DeliveredToVm {
                        device: h.device.clone(),
                    };
                }
            }
        }
        if self
            .hops
            .iter()
            .any(|h| h.point == Point::NfExit && h.nf_hook == Some(NfHook::Input))
        {
            return Outcome::DeliveredLocally;
        }
        let last = self
            .hops
            .iter()
            .rev()
            .find(|h| h.point != Point::Consume)
            .or(self.hops.last());
        match last {
            Some(h) => Outcome::InFlight {
                stage: stage_of(h),
                // A route lookup is seen on no device: the one its route chose is where the
                // packet was headed.
                device: match &h.route {
                    Some(r) if h.device.is_empty() => r.device.clone(),
                    _ => h.device.clone(),
                },
            },
            None => Outcome::InFlight {
                stage: Stage::Tap,
                device: String::new(),
            },
        }
    }

    fn drop_site(&self, drop: &TraceEvent) -> DropSite {
        let before: Vec<&TraceEvent> = self
            .hops
            .iter()
            .take_while(|h| !std::ptr::eq(*h, drop))
            .collect();
        // Which hook was the packet inside when it died: entered but not left.
        let mut open_hook: Option<NfHook> = None;
        for h in &before {
            match h.point {
                Point::NfEnter => open_hook = h.nf_hook,
                Point::NfExit => open_hook = None,
                _ => {}
            }
        }
        let class = drop::classify(
            drop.reason.as_deref(),
            drop.location.as_deref(),
            &drop.stack,
        );
        let route = self.route();
        // A failed lookup of the packet's own route places it too (blackhole, prohibit).
        let route_failed = route.as_ref().is_some_and(|r| r.err != 0 && r.err != -11);
        let (stage, hook) = match class.area {
            _ if route_failed => (Stage::Routing, None),
            // The hook the packet entered and never left is surer than the stack.
            drop::DropArea::Netfilter(from_stack) => match (open_hook, from_stack) {
                (Some(h), _) => (Stage::Netfilter, Some(h)),
                (None, Some((st, h))) => (st, h),
                (None, None) => (Stage::Netfilter, None),
            },
            drop::DropArea::Elsewhere => {
                let prev = before.iter().rev().find(|h| h.point != Point::Fib);
                let st = match prev {
                    // After POSTROUTING the packet is on its way out of that device.
                    Some(h)
                        if h.point == Point::NfExit && h.nf_hook == Some(NfHook::Postrouting) =>
                    {
                        Stage::Egress
                    }
                    Some(h) => stage_of(h),
                    None => Stage::Tap,
                };
                (st, None)
            }
            _ => class.place(Stage::Egress),
        };
        let mut reason = class.reason.clone();
        // No reason from the kernel, freed by ip_error: the route lookup tells which.
        if class.reason_inferred
            && drop.location.as_deref().map(drop::symbol_fn) == Some("ip_error")
        {
            if let Some(r) = &route {
                reason = drop::ip_error_reason(r.err).to_string();
            }
        }
        // Too big for the next hop: the device that matters is the route's.
        let route_dev = route
            .as_ref()
            .map(|r| r.device.clone())
            .filter(|d| !d.is_empty());
        if reason == "PKT_TOO_BIG" {
            if let Some(d) = &route_dev {
                return DropSite {
                    stage,
                    hook,
                    device: d.clone(),
                    reason,
                    reason_inferred: class.reason_inferred,
                    location: drop.location.clone(),
                    route,
                    bridged: false,
                    bridge_family: false,
                };
            }
        }
        let device = if drop.device.is_empty() {
            before.last().map(|h| h.device.clone()).unwrap_or_default()
        } else {
            drop.device.clone()
        };
        DropSite {
            stage,
            hook,
            device,
            reason,
            reason_inferred: class.reason_inferred,
            location: drop.location.clone(),
            bridged: class.bridged,
            bridge_family: class.bridge_family,
            route: if matches!(stage, Stage::Routing | Stage::Egress) {
                route
            } else {
                None
            },
        }
    }
}

/// `netif_receive_skb br0`, `POSTROUTING exit`, …
pub fn point_label(h: &TraceEvent) -> String {
    match h.point {
        Point::TapIngress => "tap ingress".into(),
        Point::TapEgress => "tap egress".into(),
        Point::NetifReceive => "receive".into(),
        Point::DevXmit => "transmit".into(),
        Point::NfEnter => format!("{} enter", h.nf_hook.map(NfHook::name).unwrap_or("hook?")),
        Point::NfExit => format!("{} exit", h.nf_hook.map(NfHook::name).unwrap_or("hook?")),
        Point::Fib => "route lookup".into(),
        Point::Drop => "drop".into(),
        Point::Consume => "freed".into(),
    }
}

/// A flow seen from the guest: protocol, guest address and port (ICMP: echo id), remote
/// address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FlowKey {
    pub proto: u8,
    pub guest: IpAddr,
    pub guest_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
}

impl FlowKey {
    fn from_request(t: &Tuple) -> Self {
        FlowKey {
            proto: t.proto,
            guest: t.src,
            guest_port: t.sport,
            remote: t.dst,
            remote_port: if is_icmp(t.proto) { 0 } else { t.dport },
        }
    }
    fn from_reply(t: &Tuple) -> Self {
        FlowKey {
            proto: t.proto,
            guest: t.dst,
            guest_port: if is_icmp(t.proto) { t.sport } else { t.dport },
            remote: t.src,
            remote_port: if is_icmp(t.proto) { 0 } else { t.sport },
        }
    }
    pub fn describe(&self) -> String {
        match self.proto {
            1 | 58 => format!(
                "{} {} > {} id={}",
                crate::model::event::proto_name(self.proto),
                self.guest,
                self.remote,
                self.guest_port
            ),
            p => format!(
                "{} {}:{} > {}:{}",
                crate::model::event::proto_name(p),
                self.guest,
                self.guest_port,
                self.remote,
                self.remote_port
            ),
        }
    }
}

/// Status of a flow (docs/json-schema.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Delivered,
    Dropped,
    NoReply,
    Misrouted,
    NoTraffic,
    /// kvmtrace could not observe the VM's tap on this kernel (neither TC nor the tp_btf
    /// fallback attached): it cannot say what the guest sent. An environment limit (exit 3),
    /// never read as "the guest sent nothing".
    Blind,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Dropped => "dropped",
            Self::NoReply => "no_reply",
            Self::Misrouted => "misrouted",
            Self::NoTraffic => "no_traffic",
            Self::Blind => "blind",
        }
    }
}

/// The answer for one flow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    #[serde(rename = "type")]
    pub kind: String,
    pub schema: u32,
    pub flow: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<FlowKey>,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<NfHook>,
    /// `nftables` or `iptables-legacy`, for netfilter drops.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firewall: Option<String>,
    /// `bridge` for a drop by a bridge-family hook (an nftables `bridge` table, ebtables);
    /// absent for the IP families.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// The base chains on that hook that could have dropped it (`inet filter forward (policy drop)`).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub chains: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `reason` was inferred from `location`: the kernel's `kfree_skb` tracepoint gives no
    /// reason before 5.17 (model::drop).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reason_inferred: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<Route>,
    pub rewrites: Vec<Rewrite>,
    pub requests: usize,
    pub replies: usize,
    /// Delivered flows: the replies that reached the VM (a group of flows sums them).
    #[serde(default, skip_serializing_if = "is_zero_usize")]
    pub answered: usize,
    /// `--explain-rules`: the nftables rule (or chain policy) that decided, from nftables
    /// tracing: `inet filter forward handle 7 (FORWARD): tcp dport 8080 reject → reject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Packets of this flow past the per-flow budget: counted by the kernel, not shown.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub suppressed: u64,
    /// The VM went away while it was followed (its tap removed, its QEMU gone): what was seen,
    /// with the time from the start of the run. The verdict then is not the path's alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_gone: Option<String>,
    /// The next step, when it is one command an operator can run as it stands on this host
    /// (`sysctl -w net.ipv4.ip_forward=1`), as doctor's checks carry theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    pub summary: String,
}

/// The exit code of a run with these verdicts, for `follow` and `replay` alike: 3 when
/// kvmtrace was blind at the tap (an environment limit, never the guest's fault), 0 when every
/// flow was delivered and the VM was still there at the end, else 1 (a problem found).
pub fn exit_status(verdicts: &[Verdict]) -> u8 {
    if verdicts.iter().any(|v| v.status == Status::Blind) {
        3
    } else if verdicts
        .iter()
        .all(|v| v.status == Status::Delivered && v.vm_gone.is_none())
    {
        0
    } else {
        1
    }
}

/// The VM going away during a run: when (kernel monotonic ns) and what was seen (`tap vnet0
/// was removed`, `QEMU (pid 4242) exited`). An input of the verdicts, recorded in the trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmGone {
    pub at_ns: u64,
    /// Seconds from the start of the run, as shown live.
    pub after_s: f64,
    pub what: String,
}

impl VmGone {
    /// Says in every verdict that the VM went away: a flow that was delivered so far stops
    /// there, an unanswered or silent one may be the VM's going, not the path's fault.
    pub fn mark(&self, verdicts: &mut [Verdict]) {
        let said = format!(
            "the VM went away {:.1} s into the run: {}",
            self.after_s, self.what
        );
        for v in verdicts {
            v.summary.push_str(&format!(
                "; {said} (packets after that were never sent or received by it: start the VM \
                 again and follow it anew)"
            ));
            v.vm_gone = Some(said.clone());
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_usize(n: &usize) -> bool {
    *n == 0
}

/// One entry of the kernel's per-flow budget map, as the model needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetEntry {
    pub proto: u8,
    pub remote: IpAddr,
    /// The guest's address and port (ICMP: echo id), or their post-NAT form for replies
    /// first seen before de-NAT.
    pub local: IpAddr,
    pub local_port: u16,
    pub shown: u32,
    pub suppressed: u32,
}

impl Verdict {
    fn new(flow: String, key: Option<FlowKey>, status: Status) -> Self {
        Verdict {
            kind: "verdict".into(),
            schema: SCHEMA,
            flow,
            key,
            status,
            stage: None,
            hook: None,
            firewall: None,
            family: None,
            chains: Vec::new(),
            device: None,
            direction: None,
            reason: None,
            reason_inferred: false,
            location: None,
            route: None,
            rewrites: Vec::new(),
            requests: 0,
            answered: 0,
            replies: 0,
            rule: None,
            vm_gone: None,
            fix: None,
            suppressed: 0,
            summary: String::new(),
        }
    }
}

/// What is kept of a flow's journeys once they leave a bounded model: counts, and one sample
/// of each outcome that a verdict cites.
#[derive(Default, Debug, Clone)]
struct Archived {
    requests: usize,
    replies: usize,
    from_tap: bool,
    delivered: usize,
    samples: Vec<Journey>,
}

impl Archived {
    fn add(&mut self, j: Journey) {
        match j.dir {
            Direction::Request => self.requests += 1,
            Direction::Reply => self.replies += 1,
        }
        self.from_tap |=
            j.dir == Direction::Request && j.hops.iter().any(|h| h.dev_kind == DevKind::Tap);
        let o = j.outcome();
        if matches!(o, Outcome::DeliveredToVm { .. }) {
            self.delivered += 1;
        }
        let kind = std::mem::discriminant(&o);
        let have = self
            .samples
            .iter()
            .any(|s| s.dir == j.dir && std::mem::discriminant(&s.outcome()) == kind);
        if !have {
            self.samples.push(j);
        }
    }
}

/// Journeys kept in a bounded model before the oldest are folded into per-flow counts.
pub const DEFAULT_RETAINED: usize = 1024;
/// Flows a bounded model keeps counts for; past it, journeys only add to `flows_over_limit`.
pub const MAX_ARCHIVED_FLOWS: usize = 2048;

/// Builds journeys from a stream of events.
///
/// Unbounded by default (a recorded trace is finite). [`Model::bounded`] keeps at most about
/// `max` journeys in full: older ones are folded into per-flow counts plus one sample journey per
/// outcome, so verdicts stay right and memory stays flat however long a live run lasts. In a
/// bounded model `journeys[0]` is journey `base`: use [`Model::journey`] to look one up by id.
#[derive(Default, Debug)]
pub struct Model {
    pub journeys: Vec<Journey>,
    /// Id of `journeys[0]`.
    pub base: usize,
    open: HashMap<u64, usize>,
    max: Option<usize>,
    archive: BTreeMap<FlowKey, Archived>,
    /// Post-NAT (proto, address, port) → flow, learned from evicted requests.
    archive_nat: HashMap<(u8, IpAddr, u16), FlowKey>,
    /// Journeys folded away without a flow (ICMP errors, …) or past [`MAX_ARCHIVED_FLOWS`].
    pub flows_over_limit: usize,
    /// The guest's ARP and DHCP on its tap (the last [`L2_KEPT`]), and how many there were.
    pub l2: std::collections::VecDeque<TraceEvent>,
    pub l2_seen: usize,
}

/// ARP/DHCP events a model keeps.
pub const L2_KEPT: usize = 512;

impl Model {
    pub fn new() -> Self {
        Self::default()
    }

    /// A model that keeps about `max` journeys in full (see the type's docs).
    pub fn bounded(max: usize) -> Self {
        Model {
            max: Some(max.max(16)),
            ..Self::default()
        }
    }

    /// The journey with this id, if still held in full.
    pub fn journey(&self, id: usize) -> Option<&Journey> {
        self.journeys.get(id.checked_sub(self.base)?)
    }

    /// Folds the oldest journeys into the archive when over the bound.
    fn evict(&mut self) {
        let Some(max) = self.max else { return };
        if self.journeys.len() <= max + max / 4 {
            return;
        }
        let n = self.journeys.len() - max;
        let old: Vec<Journey> = self.journeys.drain(..n).collect();
        self.base += n;
        let base = self.base;
        self.open.retain(|_, id| *id >= base);
        learn_nat(&mut self.archive_nat, &old);
        let nat = std::mem::take(&mut self.archive_nat);
        for j in old {
            match self.flow_of(&j, &nat) {
                Some(k)
                    if self.archive.len() < MAX_ARCHIVED_FLOWS || self.archive.contains_key(&k) =>
                {
                    self.archive.entry(k).or_default().add(j)
                }
                _ => self.flows_over_limit += 1,
            }
        }
        self.archive_nat = nat;
        if self.archive_nat.len() > 4 * MAX_ARCHIVED_FLOWS {
            self.archive_nat.clear();
        }
    }

    /// Adds one event; returns the index of the journey it joined.
    pub fn push(&mut self, ev: TraceEvent) -> Option<usize> {
        self.try_push(ev).ok()
    }

    /// Adds one event; gives it back when it belongs to no journey (a route lookup whose
    /// packet's earlier events were lost), so that the caller can still show it.
    pub fn try_push(&mut self, ev: TraceEvent) -> Result<usize, Box<TraceEvent>> {
        if ev.l2.is_some() {
            self.l2_seen += 1;
            if self.l2.len() == L2_KEPT {
                self.l2.pop_front();
            }
            self.l2.push_back(ev.clone());
            return Err(Box::new(ev));
        }
        let skb = ev.skb;
        if ev.point == Point::Fib {
            // A route lookup belongs to the packet being processed on that CPU.
            let Some(&idx) = self.open.get(&skb) else {
                return Err(Box::new(ev));
            };
            self.journeys[idx - self.base].hops.push(ev);
            return Ok(idx);
        }
        let ends = matches!(ev.point, Point::Drop | Point::Consume);
        let idx = match self.open.get(&skb) {
            Some(&i) if !ev.new && self.journeys[i - self.base].continues_with(&ev) => i,
            _ => {
                if let Some(old) = self.open.remove(&skb) {
                    self.journeys[old - self.base].closed = true;
                }
                let id = self.base + self.journeys.len();
                self.journeys.push(Journey {
                    id,
                    skb,
                    dir: ev.dir,
                    hops: Vec::new(),
                    closed: false,
                });
                self.open.insert(skb, id);
                id
            }
        };
        let local = idx - self.base;
        self.journeys[local].hops.push(ev);
        if ends {
            self.open.remove(&skb);
            self.journeys[local].closed = true;
        }
        self.evict();
        Ok(idx)
    }

    /// The flow a journey belongs to. Replies seen only before de-NAT are mapped back through
    /// the rewrites of the requests.
    fn flow_of(&self, j: &Journey, nat: &HashMap<(u8, IpAddr, u16), FlowKey>) -> Option<FlowKey> {
        match j.dir {
            Direction::Request => j.first_tuple().map(|t| FlowKey::from_request(&t)),
            Direction::Reply => {
                let last = j.last_tuple()?;
                let icmp_err = is_icmp(last.proto)
                    && j.hops.iter().any(|h| {
                        h.icmp_inner_dst.is_some() && is_icmp_error(last.proto, h.icmp_type)
                    });
                if icmp_err {
                    return None; // attached by the caller to the flow of the quoted packet
                }
                let k = FlowKey::from_reply(&last);
                if let Some(k2) = nat.get(&(k.proto, k.guest, k.guest_port)) {
                    if k.guest != k2.guest || k.guest_port != k2.guest_port {
                        return Some(*k2);
                    }
                }
                Some(k)
            }
        }
    }

    /// Adds the kernel's per-flow counts of packets past the budget to the verdicts, so that
    /// their counts are exact and their summaries say the flow was sampled.
    pub fn apply_budgets(&self, verdicts: &mut [Verdict], budgets: &[BudgetEntry], budget: u32) {
        let nat = self.nat_map();
        for v in verdicts.iter_mut() {
            let Some(k) = v.key else { continue };
            let mut n = 0u64;
            for b in budgets {
                if b.proto != k.proto || b.remote != k.remote {
                    continue;
                }
                let direct = b.local == k.guest && b.local_port == k.guest_port;
                let natted = nat
                    .get(&(b.proto, b.local, b.local_port))
                    .is_some_and(|f| *f == k);
                if direct || natted {
                    n += b.suppressed as u64;
                }
            }
            if n > 0 {
                v.suppressed = n;
                v.summary.push_str(&format!(
                    "; sampled: the first {budget} packets of each direction are shown, {n} more \
                     were counted in the kernel, not shown (--budget)"
                ));
            }
        }
    }

    /// Post-NAT (proto, address, port) → flow: what the archive learned plus the retained
    /// requests' rewrites.
    fn nat_map(&self) -> HashMap<(u8, IpAddr, u16), FlowKey> {
        let mut nat = self.archive_nat.clone();
        learn_nat(&mut nat, &self.journeys);
        nat
    }

    /// The flow of every retained journey (`None`: an ICMP error quoting no known flow, or a
    /// journey without headers). Replies seen only before de-NAT are mapped back through the
    /// requests' rewrites; ICMP errors go to the newest flow towards the address they quote.
    /// Every view groups journeys with this, so they all agree with the verdicts.
    pub fn flow_keys(&self) -> Vec<Option<FlowKey>> {
        let nat = self.nat_map();
        let mut keys: Vec<Option<FlowKey>> = self
            .journeys
            .iter()
            .map(|j| self.flow_of(j, &nat))
            .collect();
        // Newest request journey id per flow (archived flows count as oldest).
        let mut newest: HashMap<FlowKey, usize> = self.archive.keys().map(|k| (*k, 0)).collect();
        for (j, k) in self.journeys.iter().zip(&keys) {
            if let (Direction::Request, Some(k)) = (j.dir, k) {
                newest.insert(*k, j.id + 1);
            }
        }
        for (j, key) in self.journeys.iter().zip(keys.iter_mut()) {
            if key.is_some() {
                continue;
            }
            let Some(inner) = j.hops.iter().find_map(|h| h.icmp_inner_dst) else {
                continue;
            };
            *key = newest
                .iter()
                .filter(|(k, _)| k.remote == inner)
                .max_by_key(|(_, id)| **id)
                .map(|(k, _)| *k);
        }
        keys
    }

    /// One verdict per flow (or one `no_traffic` verdict when nothing was seen). Flows whose
    /// first request came after `until` (kernel monotonic ns; the moment the trace was asked
    /// to stop, after which it only waits for replies) are left out, and so are flows only
    /// seen half-way (no request seen on the tap: in flight when tracing started).
    pub fn verdicts(&self, facts: &HostFacts, dest: &str, until: Option<u64>) -> Vec<Verdict> {
        let keys = self.flow_keys();
        let mut flows: BTreeMap<FlowKey, (Vec<&Journey>, Vec<&Journey>)> = BTreeMap::new();
        for (j, k) in self.journeys.iter().zip(&keys) {
            let Some(k) = k else { continue };
            let e = flows.entry(*k).or_default();
            match j.dir {
                Direction::Request => e.0.push(j),
                Direction::Reply => e.1.push(j),
            }
        }
        // Flows (partly) folded away: their samples stand in for the journeys.
        for (k, a) in &self.archive {
            let e = flows.entry(*k).or_default();
            for j in &a.samples {
                match j.dir {
                    Direction::Request => e.0.insert(0, j),
                    Direction::Reply => e.1.insert(0, j),
                }
            }
        }
        if flows.is_empty() {
            let mut v = Verdict::new(format!("any > {dest}"), None, Status::NoTraffic);
            v.summary = self.no_traffic_summary(dest, facts);
            v.fix = self.no_traffic_fix(facts);
            // The guest's DHCP / RS dropped by the host's INPUT: that hook is where it stopped.
            self.place_host_input_drop(facts, &mut v);
            // The guest's ARP went unanswered because its tap is in no bridge: name the tap.
            if let Some(tap) = self.unbridged_asking_tap(facts) {
                v.stage = Some(Stage::Tap);
                v.device = Some(tap);
            }
            return vec![v];
        }
        let from_tap = |j: &&Journey| j.hops.iter().any(|h| h.dev_kind == DevKind::Tap);
        let started =
            |j: &&Journey| until.is_none_or(|u| j.hops.first().is_some_and(|h| h.ts_ns <= u));
        let out: Vec<Verdict> = flows
            .into_iter()
            .filter(|(k, (req, _))| {
                let a = self.archive.get(k);
                (req.iter().any(from_tap) || a.is_some_and(|a| a.from_tap))
                    && (req.iter().any(started) || a.is_some())
            })
            .map(|(k, (req, rep))| {
                let mut v = diagnose::classify(k, &req, &rep, facts, self.archive.get(&k));
                self.add_guest_arp_evidence(&mut v, k);
                v
            })
            .collect();
        if out.is_empty() {
            let mut v = Verdict::new(format!("any > {dest}"), None, Status::NoTraffic);
            v.summary = format!(
                "no complete request from the VM to {dest} was seen (only packets already \
                 half-way through the host when tracing started)"
            );
            return vec![v];
        }
        out
    }
}

/// The tap's observation points that could not be attached at all (TC refused, and the
/// global receive/transmit tracepoints too): recorded in the trace, so that replay judges
/// the same.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blind {
    pub tap: String,
    /// Nothing the guest sends is seen.
    pub from_guest: bool,
    /// Nothing handed to the guest is seen.
    pub to_guest: bool,
    /// What failed, one line per point.
    pub why: Vec<String>,
}

impl Blind {
    /// Verdicts that rest on what the blind side did not see become `blind`: with the guest's
    /// side unseen, "no traffic"; with the side towards the guest unseen, "no reply" too. A
    /// drop or misroute that was seen stands.
    pub fn apply(&self, verdicts: &mut [Verdict], dest: &str) {
        for v in verdicts.iter_mut() {
            let unseen = match v.status {
                Status::NoTraffic => self.from_guest || self.to_guest,
                Status::NoReply => self.to_guest,
                _ => false,
            };
            if !unseen {
                continue;
            }
            let side = match (self.from_guest, self.to_guest) {
                (true, true) => "in either direction",
                (true, false) => "from the guest",
                _ => "towards the guest",
            };
            v.status = Status::Blind;
            v.stage = Some(Stage::Tap);
            v.device = Some(self.tap.clone());
            v.direction = Some(if self.from_guest {
                Direction::Request
            } else {
                Direction::Reply
            });
            v.summary = format!(
                "kvmtrace could not observe the tap {} {side} on this kernel, so it cannot tell \
                 what the guest sent to {dest} or what reached it: not a finding about the \
                 guest ({}) → run kvmtrace on a kernel with TCX (6.6+) or with the clsact \
                 qdisc available (module sch_ingress, cls_bpf), or with BTF tracepoints",
                self.tap,
                self.why.join("; ")
            );
        }
    }
}

/// Learns from requests' first and last tuples under which post-NAT (proto, address, port)
/// their replies come back.
fn learn_nat(nat: &mut HashMap<(u8, IpAddr, u16), FlowKey>, journeys: &[Journey]) {
    for j in journeys.iter().filter(|j| j.dir == Direction::Request) {
        if let (Some(first), Some(last)) = (j.first_tuple(), j.last_tuple()) {
            nat.insert(
                (last.proto, last.src, last.sport),
                FlowKey::from_request(&first),
            );
        }
    }
}

#[cfg(test)]
mod tests;
