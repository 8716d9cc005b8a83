//! The answer for one flow ([`Verdict`], the flow named by its [`FlowKey`]), the exit status
//! a run's verdicts make, and what amends them after the diagnosis: the VM going away
//! ([`VmGone`]), a tap kvmtrace could not observe ([`Blind`]).

use crate::model::event::{is_icmp, proto_name, Direction, NfHook, Route, Tuple};
use crate::model::journey::Rewrite;
use crate::model::stage::Stage;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Version of the JSON objects written by `--json` (docs/json-schema.md).
pub const SCHEMA: u32 = 1;

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
    /// The flow of a request, from its headers as the guest sent them.
    pub(super) fn from_request(t: &Tuple) -> Self {
        FlowKey {
            proto: t.proto,
            guest: t.src,
            guest_port: t.sport,
            remote: t.dst,
            remote_port: if is_icmp(t.proto) { 0 } else { t.dport },
        }
    }
    /// The flow of a reply, from its headers as they reach the guest.
    pub(super) fn from_reply(t: &Tuple) -> Self {
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
                proto_name(self.proto),
                self.guest,
                self.remote,
                self.guest_port
            ),
            p => format!(
                "{} {}:{} > {}:{}",
                proto_name(p),
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

impl Verdict {
    /// A verdict for `flow` with nothing found yet: the diagnosis fills it in.
    pub(super) fn new(flow: String, key: Option<FlowKey>, status: Status) -> Self {
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

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_usize(n: &usize) -> bool {
    *n == 0
}
