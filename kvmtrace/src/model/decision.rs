//! One nftables decision about a followed packet, as `--explain-rules` records it (a value:
//! the tracing itself is `capture::nftrace`).

use crate::model::verdict::Verdict;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

/// One trace verdict: a rule that matched (its verdict, `continue` if it has none), the end of a
/// regular chain (`return`), or a base chain's policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct RuleDecision {
    /// The table's family: `inet`, `ip`, `bridge`, …
    pub family: String,
    pub table: String,
    pub chain: String,
    /// The rule's handle (`nft -a list …`); none for a policy or an implicit return.
    pub handle: Option<u64>,
    /// The rule as `nft -a -s list ruleset` prints it; none without nft or for a policy.
    pub rule: Option<String>,
    /// `accept`, `drop`, `reject` (a drop by a rule whose text has `reject`), `queue`,
    /// `continue`, `return`, `jump <chain>`, `goto <chain>`; for a policy, the policy.
    pub verdict: String,
    /// The chain's policy decided (no rule gave a verdict).
    pub policy: bool,
    /// The hook of the base chain being evaluated (`PREROUTING`, `FORWARD`, … `INGRESS` for
    /// netdev), when known.
    pub hook: Option<String>,
    /// The packet's addresses and protocol at that base chain (after any NAT before it).
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub proto: Option<u8>,
    /// The same for every decision about one packet (one skb) at one place.
    pub trace_id: u32,
}

impl RuleDecision {
    /// A verdict that ends the packet's evaluation at this hook (accept, drop, reject, queue,
    /// stolen), by a rule or a policy.
    pub fn is_final(&self) -> bool {
        matches!(
            self.verdict.as_str(),
            "accept" | "drop" | "reject" | "queue" | "stolen"
        )
    }
}

impl fmt::Display for RuleDecision {
    /// `inet labfilter forward (FORWARD): policy drop` or
    /// `inet labrej fwd handle 6 (FORWARD): tcp dport 8080 reject with tcp reset → reject`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.family, self.table, self.chain)?;
        if let Some(h) = self.handle {
            write!(f, " handle {h}")?;
        }
        if let Some(h) = &self.hook {
            write!(f, " ({h})")?;
        }
        if self.policy {
            return write!(f, ": policy {}", self.verdict);
        }
        match &self.rule {
            Some(r) => write!(f, ": {r} → {}", self.verdict),
            None => write!(f, ": {}", self.verdict),
        }
    }
}

/// Puts the deciding rule into each netfilter drop verdict: the final decision (drop, reject,
/// or a drop policy) about a packet of that flow, in that direction, at that hook.
pub fn explain(verdicts: &mut [Verdict], decisions: &[RuleDecision]) {
    use crate::model::event::Direction;
    for v in verdicts.iter_mut() {
        let (Some(k), Some(hook)) = (v.key, v.hook) else {
            continue;
        };
        let reply = v.direction == Some(Direction::Reply);
        // A drop by a bridge-family table is decided by a bridge chain, any other by an
        // ip/ip6/inet one: both families have a FORWARD hook.
        let bridge = v.family.as_deref() == Some("bridge");
        let hit = decisions.iter().find(|d| {
            let to_remote = d.dst == Some(k.remote) && !reply;
            let from_remote = d.src == Some(k.remote) && reply;
            d.is_final()
                && matches!(d.verdict.as_str(), "drop" | "reject")
                && d.hook.as_deref() == Some(hook.name())
                && (d.family == "bridge") == bridge
                && d.proto.is_none_or(|p| p == k.proto)
                && (to_remote || from_remote)
        });
        if let Some(d) = hit {
            v.rule = Some(d.to_string());
            v.summary.push_str(&format!("; decided by {d}"));
        }
    }
}
