//! `follow --explain-rules`: which nftables rule decided about the followed flow, from nftables
//! tracing (docs/explain-rules.md).
//!
//! Tracing needs a rule that sets `meta nftrace`, so this is the one part of kvmtrace that
//! changes the ruleset, and only when asked. [`RuleTracer::start`] adds its own table
//! `inet kvmtrace_nftrace_<pid>_<n>` over nfnetlink (chains at prerouting and output, priority
//! -350, rules matching only the followed flow in both directions), and the same chains in a
//! `bridge` table of the same name for the frames a bridge forwards (which no inet hook sees);
//! a background thread reads the kernel's trace messages (NFNLGRP_NFTRACE) and decodes them
//! into [`RuleDecision`]s. A kernel that refuses the bridge table (nf_tables without bridge
//! support) keeps the inet one, with a warning: bridge-family drops then have no rule.
//!
//! The table is created with NFT_TABLE_F_OWNER (Linux 5.12): it belongs to the netlink socket
//! that created it, and the kernel deletes it when that socket closes, so even `kill -9` leaves
//! nothing behind. [`RuleTracer::stop`] and `Drop` also delete it explicitly. On kernels without
//! owner tables a crash does leave the table; the next start in that network namespace deletes
//! every `inet`/`bridge` `kvmtrace_nftrace_<pid>_*` table whose pid is not running, and says
//! so.
//!
//! A trace message is reported when its packet's headers match the flow, or its conntrack
//! entry (Linux 6.16+ puts the id in traces) was seen with matching headers, which keeps a
//! packet followed after NAT. kvmtrace's own tables are never reported.
//!
//! Everything happens in the network namespace of the thread that calls `start`.

mod decode;
mod filter;
mod ruleset;

use crate::host::nftables::ruletext::{self, RuleText};
use crate::host::nftables::{self, family_name, NFNLGRP_NFTRACE, NFT_MSG_TRACE};
use crate::host::nl::{self, Socket};
use anyhow::{bail, Context as _, Result};
use decode::{parse_ip, parse_trace, verdict_name, IpHdr, TraceMsg, TraceType};

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub use filter::TraceFilter;
use ruleset::Family;
pub use ruleset::TABLE_PREFIX;

pub use crate::model::decision::RuleDecision;

/// What the collector thread and the tracer share.
#[derive(Default)]
struct Shared {
    decisions: Mutex<Vec<RuleDecision>>,
    stop: AtomicBool,
    /// Receive-buffer overruns (ENOBUFS): trace messages the kernel could not deliver.
    overruns: AtomicU64,
}

/// Tables of this process: `<prefix><pid>_<n>`.
static TABLE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running trace. Dropping it stops the collector and deletes the table (best effort, never
/// panics).
pub struct RuleTracer {
    table: String,
    /// The families it was added in: `inet`, and `bridge` unless the kernel refused it.
    families: Vec<Family>,
    /// The socket that created (and, with owner flag, owns) the table.
    ctl: Option<Socket>,
    owner: bool,
    shared: Arc<Shared>,
    collector: Option<JoinHandle<()>>,
}

impl fmt::Debug for RuleTracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleTracer")
            .field("table", &self.table)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl RuleTracer {
    /// Starts tracing the flow in the calling thread's network namespace. Removes tables left
    /// by crashed runs, adds `inet kvmtrace_nftrace_<pid>_<n>`, subscribes to the trace group
    /// (before the table exists, so nothing is missed) and starts the collector thread.
    ///
    /// Returns warnings for the user, one line each: a left-over table removed (or that could
    /// not be), no owner tables in this kernel, no `nft` for rule text.
    pub fn start(f: &TraceFilter) -> Result<(RuleTracer, Vec<String>)> {
        if f.dsts.is_empty() {
            bail!("--explain-rules: no destination to trace");
        }
        let mut warnings = Vec::new();
        let netns = File::open("/proc/thread-self/ns/net")
            .context("--explain-rules: opening this thread's network namespace")?;
        let trace = nftables::open().context("--explain-rules: netlink socket")?;
        trace.set_rcvbuf(8 << 20);
        trace
            .join_group(NFNLGRP_NFTRACE)
            .context("--explain-rules: subscribing to nftables trace events")?;
        let query = nftables::open().context("--explain-rules: netlink socket")?;
        query.set_recv_timeout(Duration::from_secs(2))?;
        let mut ctl = nftables::open().context("--explain-rules: netlink socket")?;
        ctl.set_recv_timeout(Duration::from_secs(5))?;

        remove_leftovers(&mut ctl, &mut warnings);

        let table = ruleset::table_name(
            std::process::id(),
            TABLE_COUNTER.fetch_add(1, Ordering::Relaxed),
        );
        let mut owner = true;
        if let Err(e) = ctl.batch(&ruleset::create_batch(Family::Inet, &table, f, true)) {
            // Before 5.12 the kernel knows no table flag but `dormant`: 5.10's
            // nf_tables_newtable answers EINVAL for the owner flag, later kernels EOPNOTSUPP
            // for a flag they do not know.
            if matches!(
                crate::host::nl::errno_in(&e),
                Some(libc::EOPNOTSUPP | libc::EINVAL)
            ) {
                owner = false;
                warnings.push(format!(
                    "--explain-rules: this kernel has no owner tables (Linux < 5.12): if kvmtrace \
                     is killed, its tables (inet and bridge {table}) stay until the next \
                     --explain-rules run"
                ));
                ctl.batch(&ruleset::create_batch(Family::Inet, &table, f, false))
                    .with_context(|| format!("--explain-rules: adding table inet {table}"))?;
            } else {
                return Err(anyhow::Error::new(e))
                    .with_context(|| format!("--explain-rules: adding table inet {table}"));
            }
        }
        log::debug!(
            "--explain-rules: added\n{}",
            ruleset::ruleset_text(Family::Inet, &table, f)
        );
        let mut families = vec![Family::Inet];
        match ctl.batch(&ruleset::create_batch(Family::Bridge, &table, f, owner)) {
            Ok(()) => {
                families.push(Family::Bridge);
                log::debug!(
                    "--explain-rules: added\n{}",
                    ruleset::ruleset_text(Family::Bridge, &table, f)
                );
            }
            // Its own transaction: the inet table stays useful when this one is refused
            // (a kernel without CONFIG_NF_TABLES_BRIDGE answers EAFNOSUPPORT or EOPNOTSUPP).
            Err(e) => warnings.push(format!(
                "--explain-rules: cannot add table bridge {table} ({e}): a drop by a bridge-family \
                 table is named by its hook and chains but not by its rule"
            )),
        }

        let nft = ruletext::nft_available();
        if !nft {
            warnings.push(
                "--explain-rules: nft not found: decisions will have rule handles but no rule text"
                    .to_string(),
            );
        }
        let shared = Arc::new(Shared::default());
        let collector = Collector {
            sock: trace,
            query,
            filter: f.clone(),
            shared: shared.clone(),
            traces: HashMap::new(),
            conntracks: HashSet::new(),
            hooks: HashMap::new(),
            rules: RuleText::new(netns, nft),
        };
        let handle = std::thread::Builder::new()
            .name("nftrace".into())
            .spawn(move || collector.run());
        let collector = match handle {
            Ok(h) => h,
            Err(e) => {
                for fam in &families {
                    let _ = ctl.batch(&[ruleset::delete_msg(*fam, &table)]);
                }
                return Err(e).context("--explain-rules: starting the collector thread");
            }
        };
        Ok((
            RuleTracer {
                table,
                families,
                ctl: Some(ctl),
                owner,
                shared,
                collector: Some(collector),
            },
            warnings,
        ))
    }

    /// The name of the tables this tracer added (`inet <name>`, and `bridge <name>`).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The families of the tables it added (`inet`, and `bridge` unless the kernel refused it).
    pub fn families(&self) -> Vec<&'static str> {
        self.families.iter().map(|f| f.name()).collect()
    }

    /// Whether the kernel removes the table by itself when kvmtrace ends (owner table).
    pub fn owned_by_kernel_socket(&self) -> bool {
        self.owner
    }

    /// How many times the kernel could not deliver trace messages (receive buffer full):
    /// decisions are then missing.
    pub fn overruns(&self) -> u64 {
        self.shared.overruns.load(Ordering::Relaxed)
    }

    /// Everything collected so far, decoded: one entry per trace verdict, in the kernel's order.
    pub fn decisions(&self) -> Vec<RuleDecision> {
        lock(&self.shared.decisions).clone()
    }

    /// Deletes the table, collects the messages still queued, and returns every decision.
    pub fn stop(mut self) -> Vec<RuleDecision> {
        self.shutdown();
        std::mem::take(&mut *lock(&self.shared.decisions))
    }

    fn shutdown(&mut self) {
        // Table first: no new traces, then the collector drains what is queued and ends.
        if let Some(mut ctl) = self.ctl.take() {
            for fam in &self.families {
                if let Err(e) = ctl.batch(&[ruleset::delete_msg(*fam, &self.table)]) {
                    // With an owner table, closing `ctl` below removes it anyway.
                    log::warn!(
                        "--explain-rules: deleting table {} {}: {e}",
                        fam.name(),
                        self.table
                    );
                }
            }
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.collector.take() {
            let _ = h.join();
        }
    }
}

impl Drop for RuleTracer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a process with this pid exists (in our pid namespace).
fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Deletes `inet` and `bridge` `kvmtrace_nftrace_<pid>_*` tables of processes that are gone. Tables with an
/// owner are never left-overs (the kernel removes them with their socket), whatever their pid.
fn remove_leftovers(ctl: &mut Socket, warnings: &mut Vec<String>) {
    let tables = match nftables::tables_on(ctl) {
        Ok(t) => t,
        Err(e) => {
            warnings.push(format!(
                "--explain-rules: cannot list nftables tables to find left-overs: {e}"
            ));
            return;
        }
    };
    for t in tables {
        let Some(fam) = Family::from_name(&t.family) else {
            continue;
        };
        if t.owner.is_some() {
            continue;
        }
        let Some(pid) = ruleset::pid_of(&t.name) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        match ctl.batch(&[ruleset::delete_msg(fam, &t.name)]) {
            Ok(()) => warnings.push(format!(
                "--explain-rules: removed table {} {} left over by a kvmtrace run that \
                 ended without cleaning up (pid {pid})",
                t.family, t.name
            )),
            Err(e) => warnings.push(format!(
                "--explain-rules: cannot remove left-over table {} {}: {e}",
                t.family, t.name
            )),
        }
    }
}

/// What is known about one traced skb at one hook.
struct TraceState {
    hdr: Option<IpHdr>,
    /// Seen with headers of the followed flow, or with its conntrack entry.
    followed: bool,
    hook: Option<String>,
}

/// Most skbs (and conntrack entries) remembered at once; past it the memory starts over.
const MAX_TRACES: usize = 16_384;

struct Collector {
    sock: Socket,
    /// For base-chain dumps (hook names).
    query: Socket,
    filter: TraceFilter,
    shared: Arc<Shared>,
    traces: HashMap<u32, TraceState>,
    /// Conntrack ids of the followed flow: they link a packet whose headers NAT rewrote.
    conntracks: HashSet<u32>,
    /// (family, table, chain) → hook of that base chain; None: not a base chain.
    hooks: HashMap<(String, String, String), Option<String>>,
    rules: RuleText,
}

impl Collector {
    fn run(mut self) {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let stopping = self.shared.stop.load(Ordering::Relaxed);
            let mut pfd = libc::pollfd {
                fd: self.sock.raw(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, if stopping { 0 } else { 100 }) };
            if n == 0 {
                if stopping {
                    return;
                }
                continue;
            }
            match self.sock.recv(&mut buf, libc::MSG_DONTWAIT) {
                Ok(n) => {
                    let datagram = buf[..n].to_vec();
                    for m in nl::messages(&datagram) {
                        if m.ty == nftables::nft_type(NFT_MSG_TRACE) {
                            if let Some(t) = parse_trace(m.body) {
                                self.handle(t);
                            }
                        }
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.shared.overruns.fetch_add(1, Ordering::Relaxed);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    log::warn!("--explain-rules: reading trace events: {e}");
                    return;
                }
            }
        }
    }

    fn handle(&mut self, m: TraceMsg) {
        if let Some(d) = self.decide(m) {
            lock(&self.shared.decisions).push(d);
        }
    }

    /// Remembers the packet a message carries (the first message of each base-chain evaluation
    /// does) and whether it belongs to the followed flow.
    fn learn(&mut self, m: &TraceMsg) {
        let Some(nh) = &m.network else {
            return;
        };
        let hdr = parse_ip(nh, m.transport.as_deref());
        let by_headers = hdr.is_some_and(|h| self.filter.matches(&h));
        if self.conntracks.len() >= MAX_TRACES {
            self.conntracks.clear();
        }
        if let (true, Some(ct)) = (by_headers, m.ct_id) {
            self.conntracks.insert(ct);
        }
        let by_conntrack = m.ct_id.is_some_and(|ct| self.conntracks.contains(&ct));
        if self.traces.len() >= MAX_TRACES && !self.traces.contains_key(&m.id) {
            self.traces.clear();
        }
        let st = self.traces.entry(m.id).or_insert(TraceState {
            hdr: None,
            followed: false,
            hook: None,
        });
        st.followed |= by_headers || by_conntrack;
        st.hdr = hdr;
    }

    /// The decision a trace message stands for, if it is about the followed flow and not about
    /// kvmtrace's own tables.
    fn decide(&mut self, m: TraceMsg) -> Option<RuleDecision> {
        self.learn(&m);
        let family = family_name(m.family);
        if Family::from_name(family).is_some() && m.table.starts_with(TABLE_PREFIX) {
            return None; // kvmtrace's own (this run's or another's)
        }
        if !self.traces.get(&m.id)?.followed {
            return None;
        }
        let base_hook = self.base_chain_hook(family, &m.table, &m.chain);
        // The end of a chain without a verdict (no rule handle): before a base chain's policy
        // message it says nothing more; at the end of a regular chain it is the implicit return.
        let end_of_chain = m.handle.is_none()
            && matches!(m.kind, TraceType::Rule | TraceType::Return)
            && matches!(m.verdict, None | Some(-1) | Some(-5));
        if end_of_chain && base_hook.is_some() {
            return None;
        }
        let st = self.traces.get_mut(&m.id)?;
        if base_hook.is_some() {
            st.hook = base_hook;
        }
        let (hdr, hook) = (st.hdr, st.hook.clone());
        let rule = m
            .handle
            .and_then(|h| self.rules.get(family, &m.table, &m.chain, h));
        let (verdict, policy) = match m.kind {
            TraceType::Policy => (
                match m.policy {
                    Some(0) => "drop".to_string(),
                    Some(1) => "accept".to_string(),
                    Some(p) => format!("policy {p}"),
                    None => "policy".to_string(),
                },
                true,
            ),
            _ if end_of_chain => ("return".to_string(), false),
            TraceType::Return => ("return".to_string(), false),
            _ => {
                let v = m
                    .verdict
                    .map_or_else(|| "?".to_string(), |c| verdict_name(c, m.target.as_deref()));
                (refine(v, rule.as_deref()), false)
            }
        };
        Some(RuleDecision {
            family: family.to_string(),
            table: m.table,
            chain: m.chain,
            handle: m.handle,
            rule,
            verdict,
            policy,
            hook,
            src: hdr.map(|h| h.src),
            dst: hdr.map(|h| h.dst),
            proto: hdr.map(|h| h.proto),
            trace_id: m.id,
        })
    }

    /// The hook of a base chain (None for a regular chain), from an NFT_MSG_GETCHAIN dump,
    /// dumped again once for a chain not seen before.
    fn base_chain_hook(&mut self, family: &str, table: &str, chain: &str) -> Option<String> {
        let key = (family.to_string(), table.to_string(), chain.to_string());
        if let Some(h) = self.hooks.get(&key) {
            return h.clone();
        }
        match nftables::chains_on(&mut self.query) {
            Ok(chains) => {
                for c in chains.iter().filter_map(nftables::Chain::base_chain) {
                    let hook = if c.family == "netdev" {
                        // NF_NETDEV_INGRESS 0, NF_NETDEV_EGRESS 1.
                        match c.hook {
                            crate::model::event::NfHook::Prerouting => "INGRESS",
                            _ => "EGRESS",
                        }
                        .to_string()
                    } else {
                        c.hook.name().to_string()
                    };
                    self.hooks.insert((c.family, c.table, c.chain), Some(hook));
                }
            }
            Err(e) => log::debug!("--explain-rules: listing chains: {e}"),
        }
        self.hooks.entry(key).or_insert(None).clone()
    }
}

/// The kernel reports a REJECT as the drop it is (the reject expression sends the answer, then
/// drops); the rule text tells them apart.
fn refine(verdict: String, rule: Option<&str>) -> String {
    let rejects = rule.is_some_and(|r| {
        r.split_whitespace()
            .any(|w| w.trim_matches('"').eq_ignore_ascii_case("reject"))
    });
    if verdict == "drop" && rejects {
        "reject".to_string()
    } else {
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::decode::tests::{ipv4, ipv6, policy_msg, rule_msg, with_ct};
    use super::*;
    use crate::model::filter::{PacketFilter, Proto};
    use std::net::Ipv4Addr;

    fn collector(f: TraceFilter) -> Collector {
        Collector {
            sock: nftables::open().expect("netlink socket"),
            query: nftables::open().expect("netlink socket"),
            filter: f,
            shared: Arc::new(Shared::default()),
            traces: HashMap::new(),
            conntracks: HashSet::new(),
            // Pretend these base chains exist (no dump needed).
            hooks: [
                (("inet", "labfilter", "forward"), "FORWARD"),
                (("inet", "labrej", "fwd"), "FORWARD"),
                (("inet", "kvmtrace_nftrace_1_0", "pre"), "PREROUTING"),
            ]
            .into_iter()
            .map(|((f, t, c), h)| ((f.into(), t.into(), c.into()), Some(h.to_string())))
            .chain([(("inet".into(), "labrej".into(), "sub".into()), None)])
            .collect(),
            rules: RuleText::new(File::open("/proc/self/ns/net").expect("netns"), false),
        }
    }

    fn lab_filter() -> TraceFilter {
        TraceFilter {
            guest_ips: vec![Ipv4Addr::new(10, 77, 0, 2).into()],
            dsts: vec!["203.0.113.1/32".parse().unwrap()],
            packets: PacketFilter::default(),
        }
    }

    fn decide(c: &mut Collector, body: Vec<u8>) -> Option<RuleDecision> {
        c.decide(parse_trace(&body).expect("trace message"))
    }

    /// What Linux 6.18 sends for an empty base chain: the end of the chain (a rule message
    /// without handle, verdict continue) carrying the packet, then the policy.
    fn end_of_chain(table: &str, chain: &str, id: u32, nh: Option<&[u8]>) -> Vec<u8> {
        strip_handle(rule_msg(table, chain, 0, -1, id, nh, None))
    }

    /// Removes NFTA_TRACE_RULE_HANDLE (3) from a message body.
    fn strip_handle(body: Vec<u8>) -> Vec<u8> {
        let mut out = body[..4].to_vec();
        let mut rest = &body[4..];
        while rest.len() >= 4 {
            let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
            let ty = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
            let adv = ((len + 3) & !3).min(rest.len());
            if ty != 3 {
                out.extend_from_slice(&rest[..adv]);
            }
            rest = &rest[adv..];
        }
        out
    }

    #[test]
    fn a_policy_drop_after_a_dumped_packet_is_a_decision_with_the_packet() {
        let mut c = collector(lab_filter());
        let nh = ipv4([10, 77, 0, 2], [203, 0, 113, 1], 1);
        assert_eq!(
            decide(&mut c, end_of_chain("labfilter", "forward", 9, Some(&nh))),
            None,
            "the end of a base chain is said by the policy message"
        );
        let d = decide(&mut c, policy_msg("labfilter", "forward", 0, 9)).expect("policy");
        assert!(d.policy && d.is_final());
        assert_eq!(d.verdict, "drop");
        assert_eq!(d.hook.as_deref(), Some("FORWARD"));
        assert_eq!(d.src, Some(Ipv4Addr::new(10, 77, 0, 2).into()));
        assert_eq!(d.proto, Some(1));
        assert_eq!(d.handle, None);
        assert_eq!(
            d.to_string(),
            "inet labfilter forward (FORWARD): policy drop"
        );
    }

    #[test]
    fn a_rule_without_verdict_continues_and_a_regular_chain_ends_with_return() {
        let mut c = collector(lab_filter());
        let nh = ipv4([10, 77, 0, 2], [203, 0, 113, 1], 6);
        let d = decide(&mut c, rule_msg("labrej", "fwd", 3, -1, 4, Some(&nh), None)).unwrap();
        assert_eq!((d.verdict.as_str(), d.handle), ("continue", Some(3)));
        assert!(!d.is_final());
        let d = decide(&mut c, rule_msg("labrej", "fwd", 4, -3, 4, None, None)).unwrap();
        assert_eq!(d.verdict, "jump", "no target in this message");
        let d = decide(&mut c, end_of_chain("labrej", "sub", 4, None)).unwrap();
        assert_eq!((d.verdict.as_str(), d.handle), ("return", None));
        assert_eq!(d.hook.as_deref(), Some("FORWARD"));
    }

    #[test]
    fn other_flows_and_unknown_packets_are_ignored() {
        let mut c = collector(lab_filter());
        let other = ipv4([10, 77, 0, 2], [192, 0, 2, 1], 1);
        assert_eq!(
            decide(
                &mut c,
                rule_msg("labfilter", "forward", 3, 1, 1, Some(&other), None)
            ),
            None
        );
        assert_eq!(
            decide(&mut c, policy_msg("labfilter", "forward", 0, 1)),
            None
        );
        assert_eq!(
            decide(&mut c, policy_msg("labfilter", "forward", 0, 2)),
            None,
            "no packet seen for this id"
        );
    }

    #[test]
    fn replies_match_by_source_and_own_tables_are_hidden() {
        let mut c = collector(lab_filter());
        // The reply before de-NAT: to the host's uplink address.
        let reply = ipv4([203, 0, 113, 1], [192, 0, 2, 2], 1);
        assert_eq!(
            decide(
                &mut c,
                rule_msg("kvmtrace_nftrace_1_0", "pre", 2, -1, 5, Some(&reply), None)
            ),
            None,
            "our own rule is not reported"
        );
        // The packet was dumped in our chain; later chains of the same skb are reported.
        let d = decide(
            &mut c,
            rule_msg("labfilter", "forward", 4, 1, 5, None, None),
        )
        .unwrap();
        assert_eq!(d.verdict, "accept");
        assert_eq!(d.dst, Some(Ipv4Addr::new(192, 0, 2, 2).into()));
    }

    #[test]
    fn a_rewritten_packet_is_followed_through_its_conntrack_entry() {
        let mut c = collector(lab_filter());
        // PREROUTING nat chain: original headers, conntrack 77; its DNAT rule accepts.
        let req = ipv4([10, 77, 0, 2], [203, 0, 113, 1], 6);
        decide(
            &mut c,
            with_ct(rule_msg("labrej", "fwd", 7, 1, 3, Some(&req), None), 77),
        )
        .unwrap();
        // FORWARD, another trace id: the destination rewritten, the same conntrack entry.
        let natted = ipv4([10, 77, 0, 2], [172, 16, 0, 9], 6);
        let d = decide(
            &mut c,
            with_ct(
                rule_msg("labfilter", "forward", 9, 0, 4, Some(&natted), None),
                77,
            ),
        )
        .expect("followed through conntrack");
        assert_eq!(d.dst, Some(Ipv4Addr::new(172, 16, 0, 9).into()));
        // Another connection to that address is not.
        let d = decide(
            &mut c,
            with_ct(
                rule_msg("labfilter", "forward", 9, 0, 5, Some(&natted), None),
                78,
            ),
        );
        assert_eq!(d, None);
    }

    #[test]
    fn ports_and_protocols_narrow_the_flow() {
        let f = TraceFilter {
            packets: PacketFilter {
                proto: Proto::Tcp,
                port: Some(8080),
            },
            ..lab_filter()
        };
        let h = |src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16| IpHdr {
            src: src.into(),
            dst: dst.into(),
            proto,
            sport: Some(sport),
            dport: Some(dport),
        };
        assert!(f.matches(&h([10, 77, 0, 2], [203, 0, 113, 1], 6, 40000, 8080)));
        assert!(f.matches(&h([203, 0, 113, 1], [192, 0, 2, 2], 6, 8080, 40000)));
        assert!(!f.matches(&h([10, 77, 0, 2], [203, 0, 113, 1], 6, 40000, 22)));
        assert!(!f.matches(&h([10, 77, 0, 2], [203, 0, 113, 1], 17, 40000, 8080)));
        assert!(!f.matches(&h([10, 77, 0, 3], [203, 0, 113, 1], 6, 40000, 8080)));
    }

    #[test]
    fn both_versions_are_followed_and_icmp_means_icmpv6_for_ipv6() {
        let f = TraceFilter {
            guest_ips: vec![
                Ipv4Addr::new(10, 77, 0, 2).into(),
                "fd00:77::2".parse().unwrap(),
            ],
            dsts: vec![
                "203.0.113.1/32".parse().unwrap(),
                "2001:db8::/64".parse().unwrap(),
            ],
            packets: PacketFilter {
                proto: Proto::Icmp,
                port: None,
            },
        };
        let mut c = collector(f.clone());
        let request = ipv6("fd00:77::2", "2001:db8::9", 58);
        let d = decide(
            &mut c,
            rule_msg("labfilter", "forward", 5, 0, 21, Some(&request), None),
        )
        .expect("the IPv6 request");
        assert_eq!(d.verdict, "drop");
        assert_eq!(d.src, Some("fd00:77::2".parse().unwrap()));
        assert_eq!(d.proto, Some(58));
        let reply = ipv6("2001:db8::9", "2001:db8:2::2", 58);
        assert!(decide(
            &mut c,
            rule_msg("labfilter", "forward", 5, 1, 22, Some(&reply), None)
        )
        .is_some());
        for other in [
            ipv6("fd00:77::3", "2001:db8::9", 58),   // another guest
            ipv6("fd00:77::2", "2001:db8:1::9", 58), // outside the prefix
            ipv6("fd00:77::2", "2001:db8::9", 1),    // not ICMPv6
        ] {
            let h = parse_ip(&other, None).unwrap();
            assert!(!f.matches(&h), "{h:?}");
        }
        let v4 = parse_ip(&ipv4([10, 77, 0, 2], [203, 0, 113, 1], 1), None).unwrap();
        assert!(f.matches(&v4));
    }

    #[test]
    fn a_drop_by_a_reject_rule_is_a_reject() {
        assert_eq!(
            refine("drop".into(), Some("tcp dport 8080 reject with tcp reset")),
            "reject"
        );
        assert_eq!(
            refine("drop".into(), Some("xt target \"REJECT\"")),
            "reject"
        );
        assert_eq!(refine("drop".into(), Some("ip saddr 1.2.3.4 drop")), "drop");
        assert_eq!(refine("accept".into(), None), "accept");
    }

    #[test]
    fn decisions_serialize_with_the_documented_fields() {
        let d = RuleDecision {
            family: "inet".into(),
            table: "labrej".into(),
            chain: "fwd".into(),
            handle: Some(6),
            rule: Some("tcp dport 8080 reject with tcp reset".into()),
            verdict: "reject".into(),
            policy: false,
            hook: Some("FORWARD".into()),
            src: Some(Ipv4Addr::new(10, 77, 0, 2).into()),
            dst: Some(Ipv4Addr::new(203, 0, 113, 1).into()),
            proto: Some(6),
            trace_id: 3,
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["src"], "10.77.0.2");
        assert_eq!(v["handle"], 6);
        let back: RuleDecision = serde_json::from_value(v).unwrap();
        assert_eq!(back, d);
        assert_eq!(
            d.to_string(),
            "inet labrej fwd handle 6 (FORWARD): tcp dport 8080 reject with tcp reset → reject"
        );
    }
}
