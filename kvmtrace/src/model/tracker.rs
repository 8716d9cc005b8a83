//! The [`Model`]: events → journeys (all held in full, or the oldest folded into per-flow
//! counts when bounded) → flows → one verdict per flow, by the diagnosis.

use crate::model::archive::Archived;
use crate::model::diagnose;
use crate::model::event::{is_icmp, is_icmp_error, DevKind, Direction, Point, TraceEvent};
use crate::model::facts::HostFacts;
use crate::model::journey::Journey;
use crate::model::verdict::{FlowKey, Status, Verdict};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

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
            return vec![diagnose::no_traffic(&self.l2, facts, dest)];
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
                diagnose::add_guest_arp_evidence(&self.l2, &mut v, k);
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
