//! One packet's path through the host ([`Journey`]: the events of one skb) and what it
//! tells: the header changes along it, how it ended ([`Outcome`]), where it was dropped
//! ([`DropSite`], placed by the drop classifier).

use crate::model::drop;
use crate::model::event::{is_icmp, DevKind, Direction, NfHook, Point, Route, TraceEvent, Tuple};
use crate::model::stage::{point_label, stage_of, Stage};
use serde::{Deserialize, Serialize};

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
