//! Rule: delivered.

use super::flow::{fmt_rewrites, Flow};
use crate::model::event::Direction;
use crate::model::journey::{DropSite, Outcome};
use crate::model::stage::Stage;
use crate::model::verdict::{Status, Verdict};

/// How a delivered flow (or a group of them, with their totals) opens its summary. A TCP
/// flow can have more replies than requests (the answer's data and ACKs): it is never "5 of 4
/// requests answered".
pub fn delivered_clause(answered: usize, requests: usize) -> String {
    if answered <= requests {
        format!(
            "delivered: {answered} of {requests} requests answered and the replies reached the VM"
        )
    } else {
        format!("delivered: {requests} requests, {answered} replies reached the VM")
    }
}

/// The replies reached the VM (a TCP reset from the destination counts: the path works);
/// drops on the way are added as intermittent loss.
pub(super) fn delivered(f: &Flow, v: &mut Verdict) -> bool {
    let &Flow {
        k,
        ref delivered,
        ref req_out,
        ref rep_out,
        ref first_drop,
        host_answered,
        good_reply,
        n_req,
        n_delivered,
        ..
    } = f;
    if good_reply && !host_answered {
        v.status = Status::Delivered;
        v.answered = n_delivered;
        v.direction = Some(Direction::Reply);
        v.stage = Some(Stage::Tap);
        v.device = delivered.first().and_then(|j| match j.outcome() {
            Outcome::DeliveredToVm { device } => Some(device),
            _ => None,
        });
        let rst = delivered
            .iter()
            .flat_map(|j| j.hops.iter())
            .any(|h| h.tcp_flags & 0x04 != 0);
        let nat = if v.rewrites.is_empty() {
            String::new()
        } else {
            format!(" (rewritten: {})", fmt_rewrites(&v.rewrites))
        };
        let drops = req_out
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Dropped(_)))
            .count();
        v.summary = if rst {
            format!(
                "the path works: {} answered with a TCP reset (nothing listens on port {} there, \
                 or a firewall past this host refused it){nat}",
                k.remote, k.remote_port
            )
        } else {
            format!("{}{nat}", delivered_clause(n_delivered, n_req))
        };
        let reply_drops: Vec<&DropSite> = rep_out
            .iter()
            .filter_map(|(_, o)| match o {
                Outcome::Dropped(d) => Some(d),
                _ => None,
            })
            .collect();
        let why = |d: &DropSite| {
            if d.reason == "FULL_RING" {
                format!(
                    "{} on {}: the guest is not reading its queue fast enough (virtio-net driver \
                     or QEMU stuck or too slow)",
                    d.reason, d.device
                )
            } else {
                format!(
                    "{} on {} at the {} stage",
                    d.reason,
                    d.device,
                    d.stage.name()
                )
            }
        };
        if drops > 0 {
            let site = first_drop
                .as_ref()
                .filter(|(d, _)| *d == Direction::Request)
                .map(|(_, d)| format!(" ({})", why(d)))
                .unwrap_or_default();
            v.summary.push_str(&format!(
                "; but {drops} of {n_req} requests were dropped{site}: intermittent loss"
            ));
        }
        if let Some(d) = reply_drops.first() {
            v.summary.push_str(&format!(
                "; but {} replies were dropped before the guest got them ({})",
                reply_drops.len(),
                why(d)
            ));
        }
        return true;
    }
    false
}
