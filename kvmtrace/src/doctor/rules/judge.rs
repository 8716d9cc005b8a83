//! Judging a model packet against a base chain: each rule's conditions are three-valued, a
//! jump or goto is followed, and the answer says which rules it depends on.

use super::model::{Action, Chain, Cond, Net, Rule, Ruleset};

/// Three-valued truth: whether a rule matches the model packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tri {
    Yes,
    No,
    Maybe,
}

impl Tri {
    /// A test's definite answer, turned round by a negating operator (`!=`).
    fn of(test: bool, neg: bool) -> Tri {
        if test != neg {
            Tri::Yes
        } else {
            Tri::No
        }
    }
    /// Turned round when `neg`.
    fn negated_if(self, neg: bool) -> Tri {
        if neg {
            self.not()
        } else {
            self
        }
    }
    fn not(self) -> Tri {
        match self {
            Tri::Yes => Tri::No,
            Tri::No => Tri::Yes,
            Tri::Maybe => Tri::Maybe,
        }
    }
    fn and(self, o: Tri) -> Tri {
        match (self, o) {
            (Tri::No, _) | (_, Tri::No) => Tri::No,
            (Tri::Yes, Tri::Yes) => Tri::Yes,
            _ => Tri::Maybe,
        }
    }
}

/// Where a model packet's address is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// Some address of this network (the VM's subnet).
    In(Net),
    /// Some address on the internet: global unicast, outside `not_in`.
    Internet { not_in: Option<Net> },
}

impl Place {
    pub(super) fn in_net(&self, net: &Net) -> Tri {
        match self {
            Place::In(s) => {
                if net.covers(s) {
                    Tri::Yes
                } else if !net.overlaps(s) {
                    Tri::No
                } else {
                    Tri::Maybe
                }
            }
            Place::Internet { not_in } => {
                if net.len == 0 {
                    Tri::Yes
                } else if net.is_special() || not_in.is_some_and(|n| n.covers(net)) {
                    Tri::No
                } else {
                    Tri::Maybe
                }
            }
        }
    }
}

/// A model packet's interface at a hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Iface {
    Is {
        name: String,
        index: u32,
    },
    /// The hook has none (no input device at POSTROUTING): `iifname` tests fail.
    Absent,
    /// Not known (no default route, say).
    Unknown,
}

/// The packet a chain is judged for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkt {
    pub src: Place,
    pub dst: Place,
    pub iif: Iface,
    pub oif: Iface,
    /// One of the `CT_*` bits.
    pub ct: u32,
    /// An IPv6 packet (else IPv4).
    pub v6: bool,
    /// Whether the route back to its source leaves by its input device (a strict
    /// reverse-path test passes): Maybe when not worked out.
    pub rp: Tri,
}

impl Pkt {
    /// A test of its input (`out`: output) device. A missing device breaks the rule whatever
    /// the operator (nft_meta_get_eval); an unknown one may be anything.
    fn iface(&self, out: bool, test: impl FnOnce(&str, u32) -> Tri) -> Tri {
        match if out { &self.oif } else { &self.iif } {
            Iface::Is { name, index } => test(name, *index),
            Iface::Absent => Tri::No,
            Iface::Unknown => Tri::Maybe,
        }
    }
}

impl Cond {
    pub fn eval(&self, p: &Pkt) -> Tri {
        match self {
            Cond::Addr { dst, neg, net } => {
                // An address of the other family: the kernel's load reads another header
                // (nft tests the family first in `inet` tables), never a match.
                if net.is_v6() != p.v6 {
                    return Tri::No;
                }
                if *dst { &p.dst } else { &p.src }
                    .in_net(net)
                    .negated_if(*neg)
            }
            Cond::Ifname {
                out,
                neg,
                name,
                wildcard,
            } => p.iface(*out, |dev, _| {
                let m = if *wildcard {
                    dev.starts_with(name.as_str())
                } else {
                    dev == name
                };
                Tri::of(m, *neg)
            }),
            Cond::Ifindex { out, neg, index } => p.iface(*out, |_, i| Tri::of(i == *index, *neg)),
            Cond::CtState {
                mask,
                xor,
                neg,
                value,
            } => Tri::of(((p.ct & mask) ^ xor) == *value, *neg),
            Cond::Nfproto { neg, value } => Tri::of(*value == if p.v6 { 10 } else { 2 }, *neg),
            Cond::RpFilter {
                strict, on_fail, ..
            } => {
                // A loose test passes whenever the strict one does; otherwise unknown.
                let passes = match (strict, p.rp) {
                    (true, t) => t,
                    (false, Tri::Yes) => Tri::Yes,
                    (false, _) => Tri::Maybe,
                };
                passes.negated_if(*on_fail)
            }
            Cond::Other(_) => Tri::Maybe,
        }
    }
}

impl Rule {
    pub fn matches(&self, p: &Pkt) -> Tri {
        self.conds.iter().fold(Tri::Yes, |t, c| t.and(c.eval(p)))
    }
}

/// A decisive outcome for the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Accept,
    /// Drop or reject.
    Drop,
    /// Masquerade or SNAT.
    SourceNat,
    Dnat,
    /// Queued and the like: unknown.
    Other,
}

/// A rule that decides (or may decide), with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decider {
    pub fate: Fate,
    /// `inet t c: `ip saddr … accept` (handle 3)`, or `inet t c: policy drop`.
    pub what: String,
    /// The rule's handle, when a rule decided (None: the policy).
    pub handle: Option<u64>,
}

/// How one base chain treats the packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainVerdict {
    pub chain: String,
    pub iptables: bool,
    pub decided: Decider,
    /// Rules before the decision that might match and decide otherwise.
    pub doubts: Vec<Decider>,
}

pub(super) enum Flow {
    Final(Decider),
    /// The end of the chain (or `return`): the caller goes on.
    Return,
}

pub(super) fn fate_of(a: &Action) -> Option<Fate> {
    Some(match a {
        Action::Accept => Fate::Accept,
        Action::Drop | Action::Reject => Fate::Drop,
        Action::Masquerade | Action::Snat => Fate::SourceNat,
        Action::Dnat => Fate::Dnat,
        Action::Other(_) => Fate::Other,
        _ => return None,
    })
}

pub(super) struct Walker<'a> {
    rs: &'a Ruleset,
    pkt: &'a Pkt,
    doubts: Vec<Decider>,
}

impl Walker<'_> {
    fn walk(&mut self, c: &Chain, depth: u32) -> Flow {
        if depth > 16 {
            return Flow::Return;
        }
        for r in &c.rules {
            let m = r.matches(self.pkt);
            if m == Tri::No {
                continue;
            }
            let here = |fate| Decider {
                fate,
                what: format!("{}: {r}", c.id()),
                handle: Some(r.handle),
            };
            if let Some(fate) = fate_of(&r.action) {
                if m == Tri::Yes {
                    return Flow::Final(here(fate));
                }
                self.doubts.push(here(fate));
                continue;
            }
            match &r.action {
                Action::Jump(t) | Action::Goto(t) => {
                    let goto = matches!(r.action, Action::Goto(_));
                    let Some(target) = self.rs.chain(&c.family, &c.table, t) else {
                        continue;
                    };
                    let sub = self.walk(target, depth + 1);
                    match (m, sub) {
                        (Tri::Yes, Flow::Final(d)) => return Flow::Final(d),
                        (Tri::Yes, Flow::Return) if goto => return Flow::Return,
                        (Tri::Maybe, Flow::Final(d)) => self.doubts.push(d),
                        _ => {}
                    }
                }
                Action::Return if m == Tri::Yes => return Flow::Return,
                // Whatever the map's elements say: it may accept or drop.
                Action::Vmap(_) => {
                    self.doubts.push(here(Fate::Accept));
                    self.doubts.push(here(Fate::Drop));
                }
                _ => {}
            }
        }
        Flow::Return
    }
}

/// Judges `pkt` in one base chain: the first rule certain to decide, or the policy, and the
/// rules before it that might decide instead.
pub fn judge(rs: &Ruleset, base: &Chain, pkt: &Pkt) -> ChainVerdict {
    let mut w = Walker {
        rs,
        pkt,
        doubts: Vec::new(),
    };
    let decided = match w.walk(base, 0) {
        Flow::Final(d) => d,
        Flow::Return => {
            let policy = base
                .base
                .as_ref()
                .map(|b| b.policy.clone())
                .unwrap_or_else(|| "accept".into());
            Decider {
                fate: if policy == "drop" {
                    Fate::Drop
                } else {
                    Fate::Accept
                },
                what: format!("{}: policy {policy}", base.id()),
                handle: None,
            }
        }
    };
    ChainVerdict {
        chain: base.describe(),
        iptables: base.is_iptables(),
        decided,
        doubts: w.doubts,
    }
}
