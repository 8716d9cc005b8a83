//! What every diagnosis rule reads: one flow's journeys and outcomes ([`Flow`]), and the
//! wording the rules share. A leaf of `diagnose`: `mod.rs` fills a `Flow` and runs the rules,
//! the rule families read it; none of them imports `mod.rs`.

use crate::model::event::{Direction, TraceEvent};
use crate::model::facts::HostFacts;
use crate::model::journey::{DropSite, Journey, Outcome, Rewrite};
use crate::model::verdict::FlowKey;

/// What the rules look at: one flow's journeys, what became of each, and the facts.
pub struct Flow<'a> {
    pub(super) k: FlowKey,
    pub(super) req: &'a [&'a Journey],
    pub(super) rep: &'a [&'a Journey],
    pub(super) facts: &'a HostFacts,
    /// Reply journeys that reached the VM.
    pub(super) delivered: Vec<&'a &'a Journey>,
    pub(super) req_out: Vec<(&'a &'a Journey, Outcome)>,
    pub(super) rep_out: Vec<(&'a &'a Journey, Outcome)>,
    /// The first drop, requests before replies.
    pub(super) first_drop: Option<(Direction, DropSite)>,
    /// A reply that never entered the host from outside was made by the host itself (REJECT,
    /// ICMP errors from routing): it answered in the destination's place.
    pub(super) host_answered: bool,
    /// A delivered reply that is not an ICMP error.
    pub(super) good_reply: bool,
    /// The first delivered reply's headers.
    pub(super) reply_kind: Option<String>,
    pub(super) n_req: usize,
    pub(super) n_delivered: usize,
}

/// Every hop of these journeys, journey after journey.
pub(super) fn hops<'a>(journeys: &'a [&'a Journey]) -> impl Iterator<Item = &'a TraceEvent> {
    journeys.iter().flat_map(|j| j.hops.iter())
}

pub(super) fn fmt_rewrites(rw: &[Rewrite]) -> String {
    rw.iter()
        .map(|r| format!("{} {} → {} at {}", r.field, r.from, r.to, r.at))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why the guest is not on `bridge` (where the host sends its replies): its tap is in no bridge
/// or in another one. None when the tap is a port of `bridge` or the facts do not know the tap.
pub(super) fn tap_misplaced(facts: &HostFacts, tap: &str, bridge: &str) -> Option<String> {
    match facts.device(tap)?.master.as_deref() {
        None => Some(format!(
            "the replies are routed to {bridge}, but the tap {tap} is not a port of any bridge, \
             so the guest is not on {bridge} and cannot answer the host's ARP there → add the tap \
             to the VM's bridge: `ip link set {tap} master {bridge}`"
        )),
        Some(m) if m != bridge => Some(format!(
            "the replies are routed to {bridge}, but the tap {tap} is a port of {m} — the tap is \
             on the wrong bridge → `ip link set {tap} master {bridge}`"
        )),
        Some(_) => None,
    }
}
