//! Where a hop stands on the host's path: its coarse stage ([`Stage`]) and its label.

use crate::model::event::{DevKind, NfHook, Point, TraceEvent};
use serde::{Deserialize, Serialize};

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

/// The stage of a hop: by its point, and at a device by the kind of device.
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
