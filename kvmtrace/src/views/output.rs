//! Text and JSON Lines views of hops and verdicts. They read the model only.

use crate::model::event::Counters;
use crate::model::event::TraceEvent;
use crate::model::{point_label, FlowKey, Model, Stage, Status, Verdict, SCHEMA};
use serde::Serialize;
use std::collections::HashMap;
use std::io::{self, Write};

/// One hop line: `   0.000123 req  #3  tap ingress       vnet0      10.0.0.2 > … `.
pub fn hop_line(t0: u64, journey: impl Into<Option<usize>>, e: &TraceEvent) -> String {
    let journey = match journey.into() {
        Some(j) => j.to_string(),
        None => "-".into(),
    };
    let t = e.ts_ns.saturating_sub(t0) as f64 / 1e9;
    let dir = match e.dir {
        crate::model::event::Direction::Request => "req",
        crate::model::event::Direction::Reply => "rep",
    };
    let mut line = format!(
        "{t:>11.6} {dir} #{journey:<4} {:<18} {:<10} {}",
        point_label(e),
        if e.device.is_empty() { "-" } else { &e.device },
        e.headers()
    );
    if let Some(r) = &e.route {
        line = format!(
            "{t:>11.6} {dir} #{journey:<4} {:<18} {:<10} table {} {}{}",
            "route lookup",
            if r.device.is_empty() { "-" } else { &r.device },
            r.table_name(),
            r.err_name().unwrap_or("found"),
            r.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
        );
    }
    if let Some(reason) = &e.reason {
        line.push_str(&format!(
            "  DROP {reason} at {}",
            e.location.as_deref().unwrap_or("?")
        ));
    }
    line
}

#[derive(Serialize)]
struct JsonHop<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    schema: u32,
    /// None: an event whose packet's earlier events were lost (a route lookup without its packet).
    journey: Option<usize>,
    stage: Stage,
    #[serde(flatten)]
    event: &'a TraceEvent,
}

pub fn hop_json(journey: impl Into<Option<usize>>, e: &TraceEvent, stage: Stage) -> String {
    serde_json::to_string(&JsonHop {
        kind: "hop",
        schema: SCHEMA,
        journey: journey.into(),
        stage,
        event: e,
    })
    .unwrap_or_default()
}

pub fn write_verdict_text(w: &mut dyn Write, v: &Verdict) -> io::Result<()> {
    writeln!(w, "flow {}: {}", v.flow, v.status.name().to_uppercase())?;
    write_place(w, v, v.requests, v.replies)?;
    for r in &v.rewrites {
        writeln!(
            w,
            "  rewrite: {} {} → {} (at {})",
            r.field, r.from, r.to, r.at
        )?;
    }
    writeln!(w, "  summary: {}", v.summary)?;
    write_fix(w, v)
}

/// The `stage=… requests=… replies=…` line, then the verdict's chains and its route.
fn write_place(w: &mut dyn Write, v: &Verdict, requests: usize, replies: usize) -> io::Result<()> {
    let mut kv = place_kv(v);
    kv.push(format!("requests={requests} replies={replies}"));
    writeln!(w, "  {}", kv.join(" "))?;
    for c in &v.chains {
        writeln!(w, "  chain: {c}")?;
    }
    if let Some(r) = &v.route {
        writeln!(
            w,
            "  route: table {} → {}{}",
            r.table_name(),
            r.err_name()
                .unwrap_or(if r.device.is_empty() { "?" } else { &r.device }),
            r.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
        )?;
    }
    Ok(())
}

/// The verdict's one-command next step, on a line of its own that can be copied whole.
fn write_fix(w: &mut dyn Write, v: &Verdict) -> io::Result<()> {
    match &v.fix {
        Some(f) => writeln!(w, "  fix: {f}"),
        None => Ok(()),
    }
}

/// The verdicts as `follow` and `replay` print them at the end: flows that ended identically
/// ([`same_as`]) share one entry with their count and the times of their first and last packet
/// (`times` from [`flow_times`], relative to `t0`, the run's first event); a flow alone is
/// printed as [`write_verdict_text`] does.
pub fn write_verdicts_text(
    w: &mut dyn Write,
    verdicts: &[Verdict],
    times: &[Option<(u64, u64)>],
    t0: u64,
) -> io::Result<()> {
    for g in group_verdicts(verdicts, times) {
        if g.count() == 1 {
            write_verdict_text(w, g.first())?;
        } else {
            write_group_text(w, &g, t0)?;
        }
    }
    Ok(())
}

fn write_group_text(w: &mut dyn Write, g: &VerdictGroup, t0: u64) -> io::Result<()> {
    let v = g.first();
    write!(
        w,
        "{} flows {}: {}",
        g.count(),
        g.label(),
        v.status.name().to_uppercase()
    )?;
    match g.span {
        Some((a, b)) => writeln!(
            w,
            ", first +{:.6} s, last +{:.6} s",
            secs(a, t0),
            secs(b, t0)
        )?,
        None => writeln!(w)?,
    }
    write_place(w, v, g.requests(), g.replies())?;
    for r in &v.rewrites {
        let (from, to) = g.rewrite_text(r);
        writeln!(w, "  rewrite: {} {from} → {to} (at {})", r.field, r.at)?;
    }
    writeln!(w, "  flows: {}", g.members_text(GROUP_LIST_MAX))?;
    writeln!(w, "  summary: {}", g.summary())?;
    write_fix(w, v)
}

/// Members a grouped line names before "and N more".
pub const GROUP_LIST_MAX: usize = 10;

fn secs(ts: u64, t0: u64) -> f64 {
    ts.saturating_sub(t0) as f64 / 1e9
}

/// `stage=… hook=… … location=…` of a verdict: where and why, without the counts.
fn place_kv(v: &Verdict) -> Vec<String> {
    [
        ("stage", v.stage.map(|s| s.name().to_string())),
        ("hook", v.hook.map(|h| h.to_string())),
        ("firewall", v.firewall.clone()),
        ("device", v.device.clone()),
        ("direction", v.direction.map(|d| d.to_string())),
        ("reason", v.reason.clone()),
        ("location", v.location.clone()),
    ]
    .into_iter()
    .filter_map(|(key, value)| Some(format!("{key}={}", value?)))
    .collect()
}

/// Flows that ended the same way: one line in the text output, the TUI and the report.
#[derive(Clone, Debug)]
pub struct VerdictGroup<'a> {
    /// Indexes into the verdicts, in their order; the first stands for the group.
    pub members: Vec<usize>,
    verdicts: &'a [Verdict],
    /// Kernel time (ns) of the first and the last packet of any member, when known.
    pub span: Option<(u64, u64)>,
}

impl<'a> VerdictGroup<'a> {
    pub fn first(&self) -> &'a Verdict {
        &self.verdicts[self.members[0]]
    }
    pub fn count(&self) -> usize {
        self.members.len()
    }
    pub fn iter(&self) -> impl Iterator<Item = &'a Verdict> + '_ {
        self.members.iter().map(|&i| &self.verdicts[i])
    }
    pub fn requests(&self) -> usize {
        self.iter().map(|v| v.requests).sum()
    }
    pub fn replies(&self) -> usize {
        self.iter().map(|v| v.replies).sum()
    }
    /// The flow, or for a group the flows' common name with their own id/port as `*`
    /// (`icmp 10.77.0.2 > 203.0.113.1 id=*`).
    pub fn label(&self) -> String {
        let v = self.first();
        match (self.count(), v.key) {
            (1, _) | (_, None) => v.flow.clone(),
            (_, Some(k)) => group_label(&k),
        }
    }
    /// The first member's summary; for a group with its own id/port masked (`*`), since it
    /// speaks for every member.
    pub fn summary(&self) -> String {
        let v = self.first();
        if self.count() == 1 {
            return v.summary.clone();
        }
        let own = own_numbers(v);
        // A delivered group states its own totals, not its first member's counts.
        let clause = crate::model::delivered_clause(v.answered, v.requests);
        match v.summary.strip_prefix(&clause) {
            Some(rest) if v.status == Status::Delivered => format!(
                "{} in {} flows{}",
                crate::model::delivered_clause(
                    self.iter().map(|m| m.answered).sum(),
                    self.requests()
                ),
                self.count(),
                mask_own(rest, &own)
            ),
            _ => mask_own(&v.summary, &own),
        }
    }
    /// A rewrite of the first member as the group shows it (own id/port masked).
    pub fn rewrite_text(&self, r: &crate::model::Rewrite) -> (String, String) {
        if self.count() == 1 {
            (r.from.clone(), r.to.clone())
        } else {
            let own = own_numbers(self.first());
            (mask_own(&r.from, &own), mask_own(&r.to, &own))
        }
    }
    /// What tells the members apart: `id=19284 id=19285 … and 22 more` (ports for TCP/UDP).
    pub fn members_text(&self, max: usize) -> String {
        let mut names: Vec<String> = self
            .iter()
            .take(max)
            .map(|v| match v.key {
                Some(k) if k.proto == 1 => format!("id={}", k.guest_port),
                Some(k) => format!("port {}", k.guest_port),
                None => v.flow.clone(),
            })
            .collect();
        if self.count() > max {
            names.push(format!("and {} more", self.count() - max));
        }
        names.join(" ")
    }
}

fn group_label(k: &FlowKey) -> String {
    match k.proto {
        1 => format!("icmp {} > {} id=*", k.guest, k.remote),
        p => format!(
            "{} {}:* > {}:{}",
            crate::model::event::proto_name(p),
            k.guest,
            k.remote,
            k.remote_port
        ),
    }
}

/// The numbers that belong to one flow and not to what became of it: its ICMP id or source
/// port, and what NAT made of them (the `icmp_id`/`sport` rewrites).
fn own_numbers(v: &Verdict) -> Vec<String> {
    let mut own: Vec<String> = v.key.iter().map(|k| k.guest_port.to_string()).collect();
    for r in v
        .rewrites
        .iter()
        .filter(|r| matches!(r.field.as_str(), "icmp_id" | "sport"))
    {
        own.push(r.from.clone());
        own.push(r.to.clone());
    }
    own
}

/// `s` with every number in `own` replaced by `*`. A number is a whole run of digits and dots,
/// so an id `1` is masked in `id=1` and `:1`, never inside the address `203.0.113.1`.
fn mask_own(s: &str, own: &[String]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if !run.is_empty() {
            if own.iter().any(|o| o == run) {
                out.push('*');
            } else {
                out.push_str(run);
            }
            run.clear();
        }
    };
    for ch in s.chars() {
        if ch.is_ascii_digit() || ch == '.' {
            run.push(ch);
        } else {
            flush(&mut run, &mut out);
            out.push(ch);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// The one definition of "these flows ended identically": same status, stage, hook, firewall
/// and chains, device, direction, reason and kernel location, route, explaining rule, rewrites
/// and summary once each flow's own id/port is masked. Counts and times may differ.
pub fn same_as(a: &Verdict, b: &Verdict) -> bool {
    signature(a) == signature(b)
}

fn signature(v: &Verdict) -> String {
    let own = own_numbers(v);
    let rewrites: Vec<(&str, String, String, &str)> = v
        .rewrites
        .iter()
        .map(|r| {
            (
                r.field.as_str(),
                mask_own(&r.from, &own),
                mask_own(&r.to, &own),
                r.at.as_str(),
            )
        })
        .collect();
    format!(
        "{:?}",
        (
            (v.status, v.stage, v.hook, v.direction),
            (&v.firewall, &v.chains, &v.device),
            (&v.reason, &v.location, &v.route, &v.rule),
            rewrites,
            v.key.map(|k| (k.proto, k.guest, k.remote, k.remote_port)),
            mask_own(&v.summary, &own),
        )
    )
}

/// Groups identical verdicts ([`same_as`]), each group where its first member was; `times`
/// (parallel to `verdicts`, may be shorter) gives each flow's first and last packet.
pub fn group_verdicts<'a>(
    verdicts: &'a [Verdict],
    times: &[Option<(u64, u64)>],
) -> Vec<VerdictGroup<'a>> {
    let mut groups: Vec<VerdictGroup<'a>> = Vec::new();
    let mut by_sig: HashMap<String, usize> = HashMap::new();
    for (i, v) in verdicts.iter().enumerate() {
        let gi = *by_sig.entry(signature(v)).or_insert_with(|| {
            groups.push(VerdictGroup {
                members: Vec::new(),
                verdicts,
                span: None,
            });
            groups.len() - 1
        });
        let g = &mut groups[gi];
        g.members.push(i);
        if let Some(Some((a, b))) = times.get(i) {
            g.span = Some(match g.span {
                Some((x, y)) => (x.min(*a), y.max(*b)),
                None => (*a, *b),
            });
        }
    }
    groups
}

/// Each verdict's first and last packet (kernel ns) among the journeys the model still holds.
pub fn flow_times(model: &Model, verdicts: &[Verdict]) -> Vec<Option<(u64, u64)>> {
    let index: HashMap<FlowKey, usize> = verdicts
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.key.map(|k| (k, i)))
        .collect();
    let mut times = vec![None; verdicts.len()];
    for (jr, k) in model.journeys.iter().zip(model.flow_keys()) {
        let Some(&i) = k.as_ref().and_then(|k| index.get(k)) else {
            continue;
        };
        for h in &jr.hops {
            let t: &mut Option<(u64, u64)> = &mut times[i];
            *t = Some(match *t {
                Some((a, b)) => (a.min(h.ts_ns), b.max(h.ts_ns)),
                None => (h.ts_ns, h.ts_ns),
            });
        }
    }
    times
}

#[derive(Serialize)]
pub struct JsonStats<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub schema: u32,
    #[serde(flatten)]
    pub counters: Counters,
    /// Records userspace read from the ring buffer: equals `events` (every event submitted
    /// by the kernel is read); `lost` counts those that found the buffer full.
    pub delivered: u64,
    pub attached: &'a [String],
    pub warnings: &'a [String],
}

/// The stats line of a recorded trace (delivered = events: what was recorded was read).
pub fn stats_json(c: Counters, attached: &[String], warnings: &[String]) -> String {
    stats_json_live(c, c.events, attached, warnings)
}

/// The stats line of a live run.
pub fn stats_json_live(
    c: Counters,
    delivered: u64,
    attached: &[String],
    warnings: &[String],
) -> String {
    serde_json::to_string(&JsonStats {
        kind: "stats",
        schema: SCHEMA,
        counters: c,
        delivered,
        attached,
        warnings,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HostFacts, Rewrite, Status};

    const FORWARD_DROP: &str = include_str!("../model/fixtures/forward_drop.jsonl");
    const HEALTHY: &str = include_str!("../model/fixtures/healthy.jsonl");

    /// A recorded run played `n` times, one second apart, each time with the next ICMP id (a
    /// guest whose ping picks a new id per run): `n` flows that end the same way.
    fn flood(text: &str, n: u16) -> Model {
        let events: Vec<TraceEvent> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("a fixture event"))
            .collect();
        let mut m = Model::new();
        for k in 0..n {
            for e in &events {
                let mut e = e.clone();
                e.ts_ns += u64::from(k) * 1_000_000_000;
                e.skb += u64::from(k) << 20;
                if let Some(t) = e.tuple.as_mut() {
                    t.sport += k;
                }
                m.push(e);
            }
        }
        m
    }

    fn verdicts_of(m: &Model) -> Vec<Verdict> {
        m.verdicts(&HostFacts::default(), "203.0.113.1", None)
    }

    #[test]
    fn flows_that_differ_only_in_their_icmp_id_are_one_group() {
        let m = flood(FORWARD_DROP, 4);
        let v = verdicts_of(&m);
        assert_eq!(v.len(), 4, "{v:#?}");
        assert!(same_as(&v[0], &v[3]));
        let times = flow_times(&m, &v);
        let g = group_verdicts(&v, &times);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].count(), 4);
        assert_eq!((g[0].requests(), g[0].replies()), (4, 0));
        assert_eq!(g[0].label(), "icmp 10.77.0.2 > 203.0.113.1 id=*");
        assert_eq!(
            g[0].members_text(2),
            "id=19284 id=19285 and 2 more",
            "members in verdict order"
        );
        let (a, b) = g[0].span.expect("times of the flows");
        let t0 = times[0].expect("first flow's times").0;
        assert_eq!(a, t0);
        // The fixture's drop comes 98 878 ns after its first event; the 4th run starts at 3 s.
        assert_eq!(b - t0, 3_000_098_878, "the last drop of the 4th run");
    }

    /// Issue 18: four delivered flows of 4 requests and 5 replies each (a TCP answer's data
    /// and ACKs) read "delivered: 5 of 4 requests answered" as a group. The group states its
    /// own totals, and no member claims more answers than requests.
    #[test]
    fn a_delivered_group_states_its_own_totals() {
        let m = flood(HEALTHY, 4);
        let mut v = verdicts_of(&m);
        for x in v.iter_mut() {
            assert_eq!(x.status, Status::Delivered, "{}", x.summary);
            assert!(
                x.summary.starts_with("delivered: 2 of 2 requests answered"),
                "{}",
                x.summary
            );
            // As a TCP flow would be: more replies than requests.
            let rest = x.summary
                ["delivered: 2 of 2 requests answered and the replies reached the VM".len()..]
                .to_string();
            (x.requests, x.replies, x.answered) = (4, 5, 5);
            x.summary = format!("{}{rest}", crate::model::delivered_clause(5, 4));
            assert!(x
                .summary
                .starts_with("delivered: 4 requests, 5 replies reached the VM"));
        }
        let g = group_verdicts(&v, &flow_times(&m, &v));
        assert_eq!(g.len(), 1);
        assert_eq!((g[0].requests(), g[0].replies()), (16, 20));
        let s = g[0].summary();
        assert!(
            s.starts_with("delivered: 16 requests, 20 replies reached the VM in 4 flows"),
            "{s}"
        );
        // ICMP: one answer per request, summed.
        let v = verdicts_of(&flood(HEALTHY, 3));
        let g = group_verdicts(&v, &[]);
        assert!(
            g[0].summary().starts_with(
                "delivered: 6 of 6 requests answered and the replies reached the VM in 3 flows"
            ),
            "{}",
            g[0].summary()
        );
        assert_eq!(g[0].first().answered, 2);
    }

    #[test]
    fn any_difference_in_what_became_of_a_flow_splits_the_group() {
        let m = flood(FORWARD_DROP, 2);
        let v = verdicts_of(&m);
        let base = v[1].clone();
        assert!(same_as(&v[0], &base));
        type Change = fn(&mut Verdict);
        let changes: [(&str, Change); 10] = [
            ("status", |v| v.status = Status::NoReply),
            ("stage", |v| v.stage = None),
            ("hook", |v| v.hook = None),
            ("firewall", |v| v.firewall = Some("iptables-legacy".into())),
            ("chains", |v| v.chains.push("ip filter FORWARD".into())),
            ("device", |v| v.device = Some("br1".into())),
            ("direction", |v| v.direction = None),
            ("reason", |v| v.reason = Some("OTHERHOST".into())),
            ("summary", |v| v.summary.push_str(" (again)")),
            ("rewrites", |v| {
                v.rewrites.push(Rewrite {
                    field: "src".into(),
                    from: "10.77.0.2".into(),
                    to: "192.0.2.2".into(),
                    at: "POSTROUTING exit".into(),
                })
            }),
        ];
        for (what, change) in changes {
            let mut other = base.clone();
            change(&mut other);
            assert!(
                !same_as(&v[0], &other),
                "a different {what} is another verdict"
            );
        }
    }

    #[test]
    fn own_ports_are_masked_in_rewrites_and_summaries_but_addresses_are_not() {
        let own = vec!["1".to_string(), "40000".to_string()];
        assert_eq!(
            mask_own("10.77.0.1:40000 > 203.0.113.1 id=1 seq=12", &own),
            "10.77.0.1:* > 203.0.113.1 id=* seq=12"
        );
        let m = flood(FORWARD_DROP, 2);
        let mut v = verdicts_of(&m);
        // NAT gives each flow its own port: the pattern (sport rewritten at POSTROUTING) is
        // the same, the numbers are each flow's own.
        for (i, port) in [(0, "61000"), (1, "61001")] {
            let from = v[i].key.expect("a key").guest_port.to_string();
            v[i].rewrites.push(Rewrite {
                field: "icmp_id".into(),
                from,
                to: port.into(),
                at: "POSTROUTING exit".into(),
            });
            let summary = format!("sent as id {port}");
            v[i].summary = summary;
        }
        assert!(same_as(&v[0], &v[1]));
        v[1].rewrites[0].at = "PREROUTING exit".into();
        assert!(!same_as(&v[0], &v[1]));
    }

    #[test]
    fn text_output_prints_a_group_once_with_its_count_and_times() {
        let m = flood(FORWARD_DROP, 3);
        let v = verdicts_of(&m);
        let times = flow_times(&m, &v);
        let t0 = times[0].expect("times").0;
        let mut out = Vec::new();
        write_verdicts_text(&mut out, &v, &times, t0).expect("written");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(
            text.starts_with(
                "3 flows icmp 10.77.0.2 > 203.0.113.1 id=*: DROPPED, first +0.000000 s, \
                 last +2.000099 s\n"
            ),
            "{text}"
        );
        assert!(text.contains(" requests=3 replies=0\n"), "{text}");
        assert!(
            text.contains("  flows: id=19284 id=19285 id=19286\n"),
            "{text}"
        );
        assert_eq!(text.matches("summary:").count(), 1, "{text}");

        // A flow alone prints as before.
        let m = flood(HEALTHY, 1);
        let v = verdicts_of(&m);
        let mut grouped = Vec::new();
        write_verdicts_text(&mut grouped, &v, &flow_times(&m, &v), 0).expect("written");
        let mut single = Vec::new();
        write_verdict_text(&mut single, &v[0]).expect("written");
        assert_eq!(grouped, single);
    }

    #[test]
    fn a_verdict_with_a_fix_prints_it_on_a_line_of_its_own_after_the_summary() {
        let mut v = flood(FORWARD_DROP, 1)
            .verdicts(&HostFacts::default(), "203.0.113.1", None)
            .remove(0);
        v.summary = "the request was dropped at routing".into();
        let text = |v: &Verdict| {
            let mut out = Vec::new();
            write_verdict_text(&mut out, v).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert!(!text(&v).contains("fix:"), "{}", text(&v));
        v.fix = Some("sysctl -w net.ipv4.ip_forward=1".into());
        assert!(
            text(&v).ends_with(
                "  summary: the request was dropped at routing\n  fix: sysctl -w net.ipv4.ip_forward=1\n"
            ),
            "{}",
            text(&v)
        );
    }
}
