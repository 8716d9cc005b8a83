//! Rules: misrouted.

use super::flow::Flow;
use crate::model::event::{DevKind, Direction};
use crate::model::journey::Outcome;
use crate::model::stage::Stage;
use crate::model::verdict::{Status, Verdict};

/// A route that sends the request out of the VM's own side (its bridge or tap) is the cause,
/// whatever happened to the packet after it (usually a neighbour failure on the bridge).
pub(super) fn route_to_vm_side(f: &Flow, v: &mut Verdict) -> bool {
    let &Flow { k, req, .. } = f;
    // A route that sends the request out of the VM's own side is the cause, whatever happened
    // to the packet after it (usually a neighbour failure on the bridge).
    if let Some(r) = req
        .iter()
        .filter_map(|j| j.route())
        .find(|r| r.err == 0 && matches!(r.dev_kind, DevKind::Bridge | DevKind::Tap))
    {
        v.status = Status::Misrouted;
        v.direction = Some(Direction::Request);
        v.stage = Some(Stage::Routing);
        v.device = Some(r.device.clone());
        let policy = if r.table == 254 {
            String::new()
        } else {
            " (a policy routing rule chose this table: `ip rule list`)".to_string()
        };
        v.summary = format!(
            "misrouted: table {} sends {} out of {}, the VM's own side{policy}, instead of \
             towards the outside → check `ip route get {} from {} iif {}` and the routes of table {}",
            r.table_name(),
            k.remote,
            r.device,
            k.remote,
            k.guest,
            r.device,
            r.table_name()
        );
        v.route = Some(r);
        return true;
    }
    false
}

/// The request was routed back out of the VM's side (seen leaving there, no route hop).
pub(super) fn looped_back(f: &Flow, v: &mut Verdict) -> bool {
    let &Flow { k, ref req_out, .. } = f;
    if let Some((_, Outcome::LoopedBack { device, route })) = req_out
        .iter()
        .find(|(_, o)| matches!(o, Outcome::LoopedBack { .. }))
    {
        v.status = Status::Misrouted;
        v.direction = Some(Direction::Request);
        v.stage = Some(Stage::Routing);
        v.device = Some(device.clone());
        v.route = route.clone();
        v.summary = format!(
            "misrouted: the route to {} sends the request back out of {device}, the VM's side \
             → check `ip route get {}`",
            k.remote, k.remote
        );
        return true;
    }
    false
}
