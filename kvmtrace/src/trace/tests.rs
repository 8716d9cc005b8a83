//! The trace format: round trip, golden file, cut-short and hostile files. The events are the
//! recorded real runs of `model/fixtures`.

use super::*;
use crate::model::{Model, NfChain};
use crate::trace::analysis::Analysis;

const FORWARD_DROP: &str = include_str!("../model/fixtures/forward_drop.jsonl");
const HEALTHY: &str = include_str!("../model/fixtures/healthy.jsonl");
const NO_MASQ: &str = include_str!("../model/fixtures/no_masquerade.jsonl");
const NO_ROUTE: &str = include_str!("../model/fixtures/no_route.jsonl");

/// Fixture hop lines as (journey, event).
fn load(text: &str) -> Vec<(Option<usize>, TraceEvent)> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let j = v["journey"].as_u64().map(|j| j as usize);
            (j, serde_json::from_value(v).unwrap())
        })
        .collect()
}

fn meta() -> Meta {
    Meta {
        tool: "kvmtrace".into(),
        version: "0.1.0".into(),
        host: "lab-hv".into(),
        kernel: "6.1.0-lab".into(),
        vm: Some("guest1".into()),
        tap: "vnet0".into(),
        mac: Some("52:54:00:4b:54:02".into()),
        dest: "203.0.113.1".into(),
        filter: "proto any, budget 2000".into(),
        started_unix_ns: 1_700_000_000_000_000_000,
        started_mono_ns: Some(1_006_000_000_000),
        snaplen: 0,
        facts: None,
        blind: None,
    }
}

fn facts() -> HostFacts {
    HostFacts {
        ip_forward: Some(true),
        ip6_forward: None,
        nft_chains: vec![NfChain {
            family: "inet".into(),
            table: "labfilter".into(),
            chain: "forward".into(),
            hook: crate::model::event::NfHook::Forward,
            priority: 0,
            policy: "drop".into(),
        }],
        legacy_tables: vec![],
        devices: vec![],
        vxlans: vec![],
    }
}

/// A complete trace of a fixture, as `follow --record` writes it (no rule decisions, no
/// budget counts).
fn record(fixture: &str) -> Vec<u8> {
    record_with(fixture, Vec::new(), Vec::new())
}

/// A complete trace of a fixture with these rule decisions and budget counts, as `follow
/// --record` writes it: verdicts computed with [`Inputs::verdicts`], as the live run does.
fn record_with(fixture: &str, decisions: Vec<RuleDecision>, budgets: Vec<BudgetEntry>) -> Vec<u8> {
    let events = load(fixture);
    let mut m = Model::new();
    let mut w = Writer::new(Vec::new(), &meta()).unwrap();
    for (j, e) in &events {
        w.event(*j, e).unwrap();
        m.push(e.clone());
    }
    w.flush().unwrap();
    // Asked to stop after the last request: the same requests are judged on replay.
    let until = events.iter().map(|(_, e)| e.ts_ns).max().unwrap() + 1;
    w.stop(until).unwrap();
    let inputs = Inputs {
        dest: "203.0.113.1".into(),
        facts: facts(),
        until_ns: Some(until),
        decisions: distinct_decisions(decisions),
        budgets,
        budget: 200,
        retained: None,
        vm_gone: None,
        blind: None,
    };
    w.inputs(&inputs).unwrap();
    let verdicts = inputs.verdicts(&m);
    let counters = Counters {
        events: events.len() as u64,
        lost: 0,
        sampled_out: inputs.budgets.iter().map(|b| b.suppressed as u64).sum(),
        missed: 0,
    };
    w.end(&verdicts, counters, &facts(), 1_700_000_002_000_000_000)
        .unwrap()
}

/// What `--explain-rules` saw for the FORWARD_DROP run: the policy drop (twice: two packets),
/// and an accept at PREROUTING that decides nothing.
fn forward_drop_decisions() -> Vec<RuleDecision> {
    let d = |chain: &str, hook: &str, verdict: &str, policy: bool, trace_id: u32| RuleDecision {
        family: "inet".into(),
        table: "labfilter".into(),
        chain: chain.into(),
        handle: (!policy).then_some(4),
        rule: (!policy).then(|| "ip saddr 10.77.0.0/24 accept".to_string()),
        verdict: verdict.into(),
        policy,
        hook: Some(hook.into()),
        src: Some("10.77.0.2".parse().unwrap()),
        dst: Some("203.0.113.1".parse().unwrap()),
        proto: Some(1),
        trace_id,
    };
    vec![
        d("pre", "PREROUTING", "accept", false, 0x1001),
        d("forward", "FORWARD", "drop", true, 0x1001),
        d("pre", "PREROUTING", "accept", false, 0x1002),
        d("forward", "FORWARD", "drop", true, 0x1002),
    ]
}

/// The kernel's budget map for the fixture's flow: 3 shown, 5 over the budget each way.
fn budgets_of(fixture: &str) -> Vec<BudgetEntry> {
    let first = load(fixture)[0].1.tuple.expect("a tuple");
    vec![
        BudgetEntry {
            proto: first.proto,
            remote: first.dst,
            local: first.src,
            local_port: first.sport,
            shown: 3,
            suppressed: 5,
        },
        // Another flow: counted nowhere.
        BudgetEntry {
            proto: 6,
            remote: first.dst,
            local: first.src,
            local_port: 40000,
            shown: 1,
            suppressed: 7,
        },
    ]
}

fn read_bytes(b: &[u8]) -> Result<Trace> {
    read_from(b)
}

#[test]
fn a_recorded_trace_reads_back_identically() {
    for fx in [FORWARD_DROP, HEALTHY, NO_MASQ, NO_ROUTE] {
        let bytes = record(fx);
        let t = read_bytes(&bytes).unwrap();
        assert!(t.complete);
        assert!(t.warnings.is_empty(), "{:?}", t.warnings);
        assert_eq!(t.format, FORMAT);
        assert_eq!(t.meta, meta());
        assert_eq!(t.events, load(fx));
        assert_eq!(t.facts, Some(facts()));
        assert_eq!(t.counters.unwrap().events, load(fx).len() as u64);
        assert_eq!(t.ended_unix_ns, Some(1_700_000_002_000_000_000));
        assert!(t.until_ns.is_some());
        // Replay recomputes the same verdicts.
        let a = Analysis::of(&t);
        assert_eq!(a.verdicts, t.verdicts);
        assert!(!a.recorded_differ);
    }
}

#[test]
fn golden_forward_drop_trace() {
    let text = String::from_utf8(record(FORWARD_DROP)).unwrap();
    insta::assert_snapshot!("forward_drop_trace", text);
}

#[test]
fn the_header_is_first_and_flushed_at_once() {
    // A recording killed right after it started still opens: the header is on disk.
    let dir = std::env::temp_dir().join(format!("kvmtrace-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("header-only.trace");
    let mut w = Writer::create(&path, &meta()).unwrap();
    let t = read(&path).unwrap();
    assert!(!t.complete);
    assert!(t.events.is_empty());
    assert_eq!(t.meta.tap, "vnet0");
    let ev = &load(FORWARD_DROP)[0].1;
    w.event(0, ev).unwrap();
    w.flush().unwrap();
    assert_eq!(read(&path).unwrap().events.len(), 1);
    std::mem::forget(w); // as if killed: no drop-time flush either
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn trace_files_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("kvmtrace-mode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.trace");
    Writer::create(&path, &meta())
        .unwrap()
        .finish(&[], Counters::default(), &HostFacts::default())
        .unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    // An existing file with a wider mode is made private too.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    Writer::create(&path, &meta()).unwrap();
    assert_eq!(mode(&path), 0o600);
    // A symlink is not followed.
    let link = dir.join("link.trace");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let err = Writer::create(&link, &meta())
        .err()
        .expect("symlink refused");
    assert!(format!("{err:#}").contains("link.trace"), "{err:#}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn snaplen_other_than_zero_is_refused() {
    assert!(check_snaplen(0).is_ok());
    let e = check_snaplen(96).unwrap_err().to_string();
    assert!(e.contains("headers only"), "{e}");
    let mut m = meta();
    m.snaplen = 64;
    let dir = std::env::temp_dir().join(format!("kvmtrace-snap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    assert!(Writer::create(&dir.join("x.trace"), &m).is_err());
    assert!(!dir.join("x.trace").exists(), "nothing is created");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_trace_cut_at_any_byte_after_its_header_still_opens() {
    // Every byte of the smallest run (each cut re-reads the prefix: quadratic).
    let bytes = record(FORWARD_DROP);
    let header_len = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    let full_events = load(FORWARD_DROP).len();
    for cut in header_len..bytes.len() {
        let t = read_bytes(&bytes[..cut]).unwrap_or_else(|e| panic!("cut at byte {cut}: {e:#}"));
        assert!(!t.complete || cut == bytes.len() - 1, "cut at {cut}");
        assert!(t.events.len() <= full_events);
        // A cut inside a line drops that line with a warning.
        let mid_line = bytes[cut - 1] != b'\n';
        let last = bytes[..cut].rsplit(|&b| b == b'\n').next().unwrap();
        let cut_json = mid_line && serde_json::from_slice::<Value>(last).is_err();
        assert_eq!(
            t.warnings.iter().any(|w| w.contains("cut short")),
            cut_json,
            "cut at {cut}: {:?}",
            t.warnings
        );
    }
    // Cut inside the header: not a trace yet.
    for cut in 1..header_len - 1 {
        assert!(read_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn an_incomplete_trace_keeps_its_events_and_the_start_facts() {
    let mut m = meta();
    m.facts = Some(facts());
    let mut w = Writer::new(Vec::new(), &m).unwrap();
    for (j, e) in load(FORWARD_DROP) {
        w.event(j, &e).unwrap();
    }
    w.flush().unwrap();
    let bytes = w.out.into_inner().unwrap();
    let t = read_bytes(&bytes).unwrap();
    assert!(!t.complete);
    assert_eq!(t.counters, None);
    assert_eq!(t.events.len(), 8);
    // The verdict still names the chain, from the facts read at start.
    let a = Analysis::of(&t);
    assert_eq!(a.verdicts[0].chains.len(), 1, "{:?}", a.verdicts[0]);
}

#[test]
fn a_newer_format_is_refused_with_a_clear_error() {
    let line = r#"{"type":"kvmtrace-trace","format":3,"version":"9.0.0","new_field":{"x":1}}"#;
    let e = read_bytes(format!("{line}\n").as_bytes()).unwrap_err();
    let nf = e
        .downcast_ref::<NewerFormat>()
        .expect("a NewerFormat error");
    assert_eq!(nf.found, 3);
    let msg = e.to_string();
    assert!(msg.contains("format 3") && msg.contains("up to 2"), "{msg}");
    assert!(msg.contains("kvmtrace 9.0.0"), "{msg}");
    assert!(msg.contains("newer kvmtrace"), "{msg}");
}

#[test]
fn unknown_fields_of_the_same_format_are_ignored() {
    let bytes = String::from_utf8(record(FORWARD_DROP)).unwrap();
    let added = bytes.replacen(
        r#""type":"event","#,
        r#""type":"event","added_later":[1,2,3],"#,
        1,
    );
    assert_eq!(read_bytes(added.as_bytes()).unwrap().events.len(), 8);
}

fn err_of(text: &str) -> String {
    format!("{:#}", read_bytes(text.as_bytes()).unwrap_err())
}

#[test]
fn files_that_are_not_traces_say_what_they_are() {
    assert!(err_of("").contains("empty file"));
    // `follow --json` output is not a trace.
    let e = err_of(FORWARD_DROP);
    assert!(
        e.contains("not a kvmtrace trace") && e.contains("--record"),
        "{e}"
    );
    let e = format!(
        "{:#}",
        read_bytes(&[0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0]).unwrap_err()
    );
    assert!(e.contains("pcapng"), "{e}");
    let e = format!("{:#}", read_bytes(&[0x1f, 0x8b, 8, 0]).unwrap_err());
    assert!(e.contains("gunzip"), "{e}");
    let e = format!("{:#}", read_bytes(&[0xff, 0xfe, b'\n']).unwrap_err());
    assert!(e.contains("line 1") && e.contains("UTF-8"), "{e}");
    assert!(err_of("[1,2]\n").contains("not a JSON object"));
    assert!(err_of("{\"type\":\"kvmtrace-trace\"}\n").contains("format"));
    let long = format!(
        "{{\"type\":\"kvmtrace-trace\",\"x\":\"{}\"}}\n",
        "a".repeat(MAX_LINE)
    );
    assert!(err_of(&long).contains("longer than"));
}

#[test]
fn misplaced_and_malformed_lines_are_errors_with_their_line_number() {
    let good = String::from_utf8(record(FORWARD_DROP)).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    let join = |v: Vec<&str>| v.join("\n") + "\n";
    // Data after the end line.
    let mut v = lines.clone();
    v.push(lines[1]);
    assert!(err_of(&join(v)).contains("line 13: data after the end"));
    // An event after the verdicts.
    let mut v = lines.clone();
    v.insert(11, lines[1]);
    assert!(err_of(&join(v)).contains("line 12: an event after the verdicts"));
    // A missing event: the end line's counts disagree.
    let mut v = lines.clone();
    v.remove(3);
    assert!(err_of(&join(v)).contains("lines are missing"));
    // Two traces concatenated.
    let mut v = lines[..5].to_vec();
    v.push(lines[0]);
    assert!(err_of(&join(v)).contains("line 6: a second trace header"));
    // A malformed event in the middle (not the last line: not a cut-short write).
    let mut v = lines.clone();
    let broken = lines[2].replace("\"ts_ns\"", "\"ts\"");
    v[2] = &broken;
    let e = err_of(&join(v));
    assert!(
        e.contains("line 3: a malformed event") && e.contains("ts_ns"),
        "{e}"
    );
    // Garbage in the middle.
    let mut v = lines.clone();
    v[4] = "{\"type\":\"event\",";
    assert!(err_of(&join(v)).contains("line 5: not valid JSON"));
    let mut v = lines.clone();
    v[4] = "{\"type\":\"mystery\"}";
    assert!(err_of(&join(v)).contains("unknown line type \"mystery\""));
}

#[test]
fn control_characters_never_reach_the_views() {
    let good = String::from_utf8(record(FORWARD_DROP)).unwrap();
    let hostile = good.replace("\"vnet0\"", "\"vnet0\\u001b[2J\"");
    let t = read_bytes(hostile.as_bytes()).unwrap();
    assert!(t.warnings.iter().any(|w| w.contains("control characters")));
    assert!(t.events.iter().all(|(_, e)| !e.device.contains('\u{1b}')));
    assert_eq!(t.meta.tap, "vnet0\u{fffd}[2J");
}

/// Every view of a trace that opened, into memory. None of them may panic.
fn render_everything(t: &Trace) {
    let a = Analysis::of(t);
    let mut sink = Vec::new();
    crate::views::replay::write_replay(&mut sink, t, &a, false).unwrap();
    crate::views::replay::write_replay(&mut sink, t, &a, true).unwrap();
    crate::views::replay::write_jsonl(&mut sink, t, &a).unwrap();
    let _ = crate::views::pcapng::write(t, &a, &mut sink);
    let d = crate::views::report::build(t, &a, "fuzz");
    let _ = (d.markdown(), d.html());
}

/// xorshift64*: a deterministic generator, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn mutated_truncated_and_hostile_traces_never_panic() {
    let mut rng = Rng(0x6b76_6d74_7261_6365);
    let interesting: &[&[u8]] = &[
        b"0",
        b"-1",
        b"18446744073709551615",
        b"1e999",
        b"null",
        b"\"\"",
        b"[]",
        b"{}",
        b"\"x\"",
        b"4294967296",
        b"true",
        b"\\u0000",
        b"\n",
        b"\"nf_enter\"",
        b"\"drop\"",
        b"\"reply\"",
        b"\"fib\"",
    ];
    let mut opened = 0;
    for fx in [FORWARD_DROP, HEALTHY, NO_MASQ, NO_ROUTE] {
        let good = record(fx);
        render_everything(&read_bytes(&good).unwrap());
        for _ in 0..600 {
            let mut b = good.clone();
            for _ in 0..1 + rng.below(4) {
                let len = b.len();
                match rng.below(6) {
                    0 => b.truncate(rng.below(len)),
                    1 => {
                        let i = rng.below(len);
                        if i < b.len() {
                            b[i] = rng.next() as u8;
                        }
                    }
                    2 => {
                        // Replace a JSON value (after a colon) with an odd one.
                        let colons: Vec<usize> = b
                            .iter()
                            .enumerate()
                            .filter(|(_, &c)| c == b':')
                            .map(|(i, _)| i)
                            .collect();
                        if let Some(&at) = colons.get(rng.below(colons.len())) {
                            let end = b[at + 1..]
                                .iter()
                                .position(|&c| c == b',' || c == b'}')
                                .map(|p| at + 1 + p)
                                .unwrap_or(b.len());
                            let with = interesting[rng.below(interesting.len())];
                            b.splice(at + 1..end, with.iter().copied());
                        }
                    }
                    3 => {
                        // Swap, duplicate or drop whole lines.
                        let mut lines: Vec<Vec<u8>> =
                            b.split(|&c| c == b'\n').map(<[u8]>::to_vec).collect();
                        let n = lines.len();
                        let (i, j) = (rng.below(n), rng.below(n));
                        match rng.below(3) {
                            0 => lines.swap(i, j),
                            1 => {
                                let l = lines[i].clone();
                                lines.insert(j, l);
                            }
                            _ => {
                                lines.remove(i);
                            }
                        }
                        b = lines.join(&b'\n');
                    }
                    4 => {
                        let i = rng.below(len);
                        b.insert(i.min(b.len()), rng.next() as u8);
                    }
                    _ => {
                        let i = rng.below(len);
                        if i < b.len() {
                            b.remove(i);
                        }
                    }
                }
            }
            if let Ok(t) = read_bytes(&b) {
                opened += 1;
                render_everything(&t);
            }
        }
    }
    // The loop must exercise the views, not only the parser's errors.
    assert!(opened > 300, "only {opened} mutated traces opened");
}

#[test]
fn events_in_no_journey_are_kept_and_shown_like_follow_shows_them() {
    // A route lookup whose packet was never seen: the model places it nowhere.
    let mut events = load(FORWARD_DROP);
    let mut orphan = events
        .iter()
        .find(|(_, e)| e.point == crate::model::event::Point::Fib)
        .unwrap()
        .1
        .clone();
    orphan.skb = 42;
    orphan.ts_ns = events[0].1.ts_ns - 1000;
    events.insert(0, (None, orphan));
    let mut w = Writer::new(Vec::new(), &meta()).unwrap();
    for (j, e) in &events {
        w.event(*j, e).unwrap();
    }
    let bytes = w.end(&[], Counters::default(), &facts(), 0).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(!text.lines().nth(1).unwrap().contains("\"journey\""));
    let t = read_bytes(&bytes).unwrap();
    assert_eq!(t.events[0].0, None);
    assert_eq!(t.events[1].0, Some(0));
    let a = Analysis::of(&t);
    assert_eq!(a.placed[0], None);
    assert_eq!(a.placed[1], Some((0, 0)));
    let mut out = Vec::new();
    crate::views::replay::write_replay(&mut out, &t, &a, false).unwrap();
    let out = String::from_utf8(out).unwrap();
    let first = out.lines().next().unwrap();
    assert!(
        first.contains("#-") && first.contains("route lookup"),
        "{first}"
    );
    assert_eq!(a.verdicts[0].status, crate::model::Status::Dropped);
}

/// `follow` keeps a bounded model (old journeys folded into per-flow counts), replay an
/// unbounded one for its views. Folding changes some verdicts (ICMP errors folded away stop
/// counting as replies), so replay judges with a model folded like the live one: a long run
/// replays to the live verdicts.
#[test]
fn a_long_run_replays_to_the_verdicts_of_the_bounded_live_model() {
    for fx in [HEALTHY, FORWARD_DROP, NO_MASQ, NO_ROUTE] {
        let events = load(fx);
        let span = events.iter().map(|(_, e)| e.ts_ns).max().unwrap()
            - events.iter().map(|(_, e)| e.ts_ns).min().unwrap()
            + 1;
        let mut live = Model::bounded(crate::model::DEFAULT_RETAINED);
        let mut w = Writer::new(Vec::new(), &meta()).unwrap();
        // The same packets again and again (new skbs, later times): one flow, thousands of
        // journeys, far past the live model's bound.
        let mut one = Model::new();
        for (_, e) in &events {
            let _ = one.push(e.clone());
        }
        let rounds = 1400 / one.journeys.len() as u64 + 1;
        for round in 0..rounds {
            for (_, e) in &events {
                let mut e = e.clone();
                e.skb = e.skb.wrapping_add(round << 20);
                e.ts_ns += round * span;
                e.ip_id = e.ip_id.wrapping_add(round as u16);
                let j = live.try_push(e.clone()).ok();
                w.event(j, &e).unwrap();
            }
        }
        assert!(live.base > 0, "the live model folded journeys away");
        let inputs = Inputs {
            dest: "203.0.113.1".into(),
            facts: facts(),
            until_ns: Some(u64::MAX),
            retained: Some(crate::model::DEFAULT_RETAINED),
            vm_gone: None,
            ..Inputs::default()
        };
        w.stop(u64::MAX).unwrap();
        w.inputs(&inputs).unwrap();
        let verdicts = inputs.verdicts(&live);
        let bytes = w.end(&verdicts, Counters::default(), &facts(), 0).unwrap();
        let t = read_bytes(&bytes).unwrap();
        assert_eq!(t.retained, Some(crate::model::DEFAULT_RETAINED));
        let a = Analysis::of(&t);
        assert_eq!(a.verdicts, verdicts);
        assert!(!a.recorded_differ);
    }
}

/// The `--explain-rules` decisions and the budget counts are recorded, read back, and replay's
/// verdicts carry the same rule and the same suppressed counts as the live ones.
#[test]
fn rule_decisions_and_budget_counts_replay_into_the_same_verdicts() {
    for fx in [FORWARD_DROP, HEALTHY, NO_MASQ, NO_ROUTE] {
        let bytes = record_with(fx, forward_drop_decisions(), budgets_of(fx));
        let t = read_bytes(&bytes).unwrap();
        assert!(t.complete, "{:?}", t.warnings);
        assert_eq!(t.format, FORMAT);
        // The repeats (another packet, another trace id) are not written.
        assert_eq!(t.decisions, forward_drop_decisions()[..2].to_vec());
        assert_eq!(t.budgets, budgets_of(fx));
        assert_eq!(t.budget, Some(200));
        assert_eq!(t.retained, None);
        let a = Analysis::of(&t);
        assert_eq!(a.verdicts, t.verdicts, "replay equals the live verdicts");
        assert!(!a.recorded_differ);
        // The inputs did change the verdicts (or the test above proves nothing).
        let v = &t.verdicts[0];
        assert_eq!(v.suppressed, 5, "{v:?}");
        assert!(
            v.summary
                .contains("the first 200 packets of each direction are shown, 5 more"),
            "{v:?}"
        );
    }
    let t = read_bytes(&record_with(
        FORWARD_DROP,
        forward_drop_decisions(),
        budgets_of(FORWARD_DROP),
    ))
    .unwrap();
    assert_eq!(
        t.verdicts[0].rule.as_deref(),
        Some("inet labfilter forward (FORWARD): policy drop")
    );
    assert_eq!(Analysis::of(&t).verdicts[0].rule, t.verdicts[0].rule);
}

#[test]
fn golden_forward_drop_trace_with_rules_and_budgets() {
    let bytes = record_with(
        FORWARD_DROP,
        forward_drop_decisions(),
        budgets_of(FORWARD_DROP),
    );
    insta::assert_snapshot!(
        "forward_drop_explained_trace",
        String::from_utf8(bytes).unwrap()
    );
}

/// A format-2 trace as format 1 wrote it: no `rule` or `budget` lines, no end fields for them.
fn as_format_1(v2: &str) -> String {
    v2.lines()
        .filter(|l| !l.starts_with(r#"{"type":"rule""#) && !l.starts_with(r#"{"type":"budget""#))
        .map(|l| {
            let mut o: Map<String, Value> = serde_json::from_str(l).unwrap();
            if o["type"] == MAGIC {
                o.insert("format".into(), 1.into());
            }
            if o["type"] == "end" {
                for k in ["rules", "budgets", "budget", "retained"] {
                    o.remove(k);
                }
            }
            serde_json::to_string(&o).unwrap() + "\n"
        })
        .collect()
}

/// A trace written by a format-1 kvmtrace (no rule or budget lines, no counts for them in the
/// end line) still opens, and replays as it always did.
#[test]
fn a_format_1_trace_still_opens() {
    let v2 = String::from_utf8(record(FORWARD_DROP)).unwrap();
    let with_rules = String::from_utf8(record_with(
        FORWARD_DROP,
        forward_drop_decisions(),
        Vec::new(),
    ))
    .unwrap();
    let v1 = as_format_1(&v2);
    assert!(!v1.contains("\"rules\"") && v1.contains("\"format\":1,"));
    let t = read_bytes(v1.as_bytes()).unwrap();
    assert!(t.complete);
    assert_eq!(t.format, 1);
    assert_eq!((t.decisions.len(), t.budgets.len(), t.budget), (0, 0, None));
    let a = Analysis::of(&t);
    assert_eq!(a.verdicts, t.verdicts);
    assert_eq!(a.verdicts[0].status, crate::model::Status::Dropped);
    assert!(crate::trace::analysis::warnings(&t, &a).is_empty());
    // A format-1 recording of an --explain-rules run: the rule is in its recorded verdict
    // only, and replay says why its own lacks it.
    let v1 = as_format_1(&with_rules);
    let t = read_bytes(v1.as_bytes()).unwrap();
    assert!(t.verdicts[0].rule.is_some());
    let a = Analysis::of(&t);
    assert_eq!(a.verdicts[0].rule, None);
    let w = crate::trace::analysis::warnings(&t, &a);
    assert!(
        w.iter()
            .any(|w| w.contains("format-1 trace holds no --explain-rules")),
        "{w:?}"
    );
}

#[test]
fn rule_and_budget_lines_out_of_place_or_missing_are_errors() {
    let good = String::from_utf8(record_with(
        FORWARD_DROP,
        forward_drop_decisions(),
        budgets_of(FORWARD_DROP),
    ))
    .unwrap();
    let lines: Vec<&str> = good.lines().collect();
    // header, 8 events, stop, 2 rules, 2 budgets, verdict, end.
    assert_eq!(lines.len(), 16, "{good}");
    assert!(lines[10].starts_with(r#"{"type":"rule","#), "{}", lines[10]);
    assert!(
        lines[12].starts_with(r#"{"type":"budget","#),
        "{}",
        lines[12]
    );
    let join = |v: Vec<&str>| v.join("\n") + "\n";
    // An event after the rule decisions.
    let mut v = lines.clone();
    v.insert(12, lines[1]);
    assert!(
        err_of(&join(v)).contains("line 13: an event after the rule decisions"),
        "{}",
        good
    );
    // A stop line after them.
    let mut v = lines.clone();
    v.insert(13, lines[9]);
    assert!(err_of(&join(v)).contains("line 14: a second stop line, or one after"));
    // A rule after the verdicts.
    let mut v = lines.clone();
    v.insert(15, lines[10]);
    assert!(err_of(&join(v)).contains("line 16: a \"rule\" line after the verdicts"));
    // A missing rule or budget line: the end line's counts disagree.
    for gone in [10, 13] {
        let mut v = lines.clone();
        v.remove(gone);
        let e = err_of(&join(v));
        assert!(
            e.contains("rule decisions and") && e.contains("missing"),
            "{e}"
        );
    }
    // A malformed budget line.
    let mut v = lines.clone();
    let broken = lines[12].replace("\"suppressed\"", "\"supressed\"");
    v[12] = &broken;
    let e = err_of(&join(v));
    assert!(e.contains("line 13: a malformed budget count"), "{e}");
}

#[test]
fn repeated_decisions_are_recorded_once_in_order() {
    let all = forward_drop_decisions();
    let kept = distinct_decisions(all.clone());
    assert_eq!(kept, vec![all[0].clone(), all[1].clone()]);
    // The first matching decision is the same in both lists, so the verdicts are.
    let t = read_bytes(&record(FORWARD_DROP)).unwrap();
    let (mut full, mut short) = (t.verdicts.clone(), t.verdicts.clone());
    crate::model::decision::explain(&mut full, &all);
    crate::model::decision::explain(&mut short, &kept);
    assert_eq!(full, short);
    assert!(full[0].rule.is_some());
}

/// Issue 18: a FORWARD drop by an ip/inet chain is never explained by a bridge chain's drop
/// at the bridge's FORWARD hook (a hook of the same name), and a bridge-family drop only by
/// one.
#[test]
fn a_drop_is_explained_only_by_a_decision_of_its_family() {
    let t = read_bytes(&record(FORWARD_DROP)).unwrap();
    let bridge_drop = RuleDecision {
        family: "bridge".into(),
        table: "labbr".into(),
        chain: "forward".into(),
        handle: Some(2),
        rule: Some("ether type ip drop".into()),
        verdict: "drop".into(),
        policy: false,
        hook: Some("FORWARD".into()),
        src: Some("10.77.0.2".parse().unwrap()),
        dst: Some("203.0.113.1".parse().unwrap()),
        proto: Some(1),
        trace_id: 0x2001,
    };
    let mut inet_verdicts = t.verdicts.clone();
    crate::model::decision::explain(&mut inet_verdicts, std::slice::from_ref(&bridge_drop));
    assert_eq!(inet_verdicts[0].rule, None);
    let mut both = vec![bridge_drop.clone()];
    both.extend(forward_drop_decisions());
    crate::model::decision::explain(&mut inet_verdicts, &both);
    assert_eq!(
        inet_verdicts[0].rule.as_deref(),
        Some("inet labfilter forward (FORWARD): policy drop")
    );
    let mut bridged = t.verdicts.clone();
    bridged[0].family = Some("bridge".into());
    crate::model::decision::explain(&mut bridged, &both);
    assert_eq!(
        bridged[0].rule.as_deref(),
        Some("bridge labbr forward handle 2 (FORWARD): ether type ip drop → drop")
    );
}
