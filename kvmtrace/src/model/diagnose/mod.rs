//! Flows + host facts → verdicts, as an ordered list of small named rules ([`RULES`]): the
//! first rule that recognises the flow decides its verdict, in the order of the path (a
//! delivered flow first, then a misroute, the first drop, a loop back, no reply, and what is
//! left). A new fault is one new rule in the file of its family, at its place in the list, plus
//! its test. Child of the model: pure, like it.

mod delivered;
pub use delivered::delivered_clause;
mod dropped;
mod flow;
mod misrouted;
mod no_reply;
mod no_traffic;
pub(super) use no_traffic::{add_guest_arp_evidence, no_traffic};
mod overlay;

use crate::model::archive::Archived;
use crate::model::event::{is_icmp_error, DevKind, Direction, Point};
use crate::model::facts::HostFacts;
use crate::model::journey::{Journey, Outcome};
use crate::model::verdict::{FlowKey, Status, Verdict};
use flow::Flow;

/// One rule: true when it decided the verdict (filled in `v`).
type Rule = fn(&Flow, &mut Verdict) -> bool;

/// The rules, in order; the last always decides.
pub const RULES: &[(&str, Rule)] = &[
    (
        "too big for a VXLAN underlay, answered by the host",
        overlay::pmtu_answer,
    ),
    ("delivered", delivered::delivered),
    (
        "misrouted into the VM's own side",
        misrouted::route_to_vm_side,
    ),
    ("dropped by a VXLAN overlay", overlay::overlay_drop),
    ("dropped", dropped::dropped),
    ("looped back to the VM's side", misrouted::looped_back),
    (
        "left the host through a VXLAN overlay, no reply",
        overlay::left_through_overlay,
    ),
    (
        "left a macvtap's lower device for another guest's macvtap",
        no_reply::macvtap_sibling,
    ),
    ("left the host, no reply", no_reply::left_host),
    ("no observed end", no_reply::unfinished),
];

/// `arch`: what a bounded model folded away of this flow; its samples are already in `req` and
/// `rep`, its counts replace theirs.
pub(super) fn classify(
    k: FlowKey,
    req: &[&Journey],
    rep: &[&Journey],
    facts: &HostFacts,
    arch: Option<&Archived>,
) -> Verdict {
    let mut v = Verdict::new(k.describe(), Some(k), Status::NoReply);

    let delivered: Vec<&&Journey> = rep
        .iter()
        .filter(|j| matches!(j.outcome(), Outcome::DeliveredToVm { .. }))
        .collect();
    let (mut n_req, mut n_rep, mut n_delivered) = (req.len(), rep.len(), delivered.len());
    if let Some(a) = arch {
        let sampled = |d: Direction| a.samples.iter().filter(|j| j.dir == d).count();
        let sampled_delivered = a
            .samples
            .iter()
            .filter(|j| matches!(j.outcome(), Outcome::DeliveredToVm { .. }))
            .count();
        n_req = n_req - sampled(Direction::Request) + a.requests;
        n_rep = n_rep - sampled(Direction::Reply) + a.replies;
        n_delivered = n_delivered - sampled_delivered + a.delivered;
    }
    let req_out: Vec<(&&Journey, Outcome)> = req.iter().map(|j| (j, j.outcome())).collect();
    let rep_out: Vec<(&&Journey, Outcome)> = rep.iter().map(|j| (j, j.outcome())).collect();
    let first_drop = req_out
        .iter()
        .map(|(j, o)| (j.dir, o))
        .chain(rep_out.iter().map(|(j, o)| (j.dir, o)))
        .find_map(|(d, o)| match o {
            Outcome::Dropped(site) => Some((d, site.clone())),
            _ => None,
        });
    // A reply that never entered the host from outside was made by the host itself (REJECT,
    // ICMP errors from routing): it answered in the destination's place.
    let host_answered = !rep.is_empty()
        && !rep.iter().any(|j| {
            j.hops
                .iter()
                .any(|h| h.point == Point::NetifReceive && h.dev_kind == DevKind::Other)
        });
    let good_reply = delivered.iter().any(|j| {
        j.hops.iter().any(|h| {
            let icmp_err = h.tuple.is_some_and(|t| is_icmp_error(t.proto, h.icmp_type));
            !icmp_err
        })
    });
    let reply_kind = delivered
        .iter()
        .flat_map(|j| j.hops.iter())
        .find(|h| h.tuple.is_some())
        .map(|h| h.headers());
    v.requests = n_req;
    v.replies = n_rep;
    // The request's rewrites (SNAT) are the ones an operator looks for first.
    if let Some((j, _)) = req_out
        .iter()
        .find(|(_, o)| matches!(o, Outcome::LeftHost { .. }))
        .or(req_out.last())
    {
        v.rewrites = j.rewrites();
    }
    let f = Flow {
        k,
        req,
        rep,
        facts,
        delivered,
        req_out,
        rep_out,
        first_drop,
        host_answered,
        good_reply,
        reply_kind,
        n_req,
        n_delivered,
    };
    for (_, rule) in RULES {
        if rule(&f, &mut v) {
            break;
        }
    }
    dropped::rewritten_destination(&f, &mut v);
    v
}
