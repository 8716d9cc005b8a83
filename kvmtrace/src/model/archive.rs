//! What a bounded model keeps of the journeys it folds away ([`Archived`]): per-flow counts
//! and one sample journey per outcome, so that the verdicts stay right.

use crate::model::event::{DevKind, Direction};
use crate::model::journey::{Journey, Outcome};

/// What is kept of a flow's journeys once they leave a bounded model: counts, and one sample
/// of each outcome that a verdict cites.
#[derive(Default, Debug, Clone)]
pub(super) struct Archived {
    pub(super) requests: usize,
    pub(super) replies: usize,
    /// A request of the flow was seen on the VM's tap.
    pub(super) from_tap: bool,
    /// Replies handed to the VM.
    pub(super) delivered: usize,
    pub(super) samples: Vec<Journey>,
}

impl Archived {
    /// Folds one journey of the flow in.
    pub(super) fn add(&mut self, j: Journey) {
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
