//! The terminal UI rendered from recorded runs (the model's fixtures: real packets in the lab)
//! into ratatui's `TestBackend`, with scripted keys. Each test asserts the text it is about;
//! the insta snapshots pin the whole screen (review changes with `cargo insta review`, or
//! `INSTA_UPDATE=always cargo test -p kvmtrace --test tui_snapshots` and `git diff`).

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use kvmtrace::model::event::{Direction, NfHook, Point, TraceEvent};
use kvmtrace::model::filter::{PacketFilter, Proto};
use kvmtrace::model::{HostFacts, Model, NfChain};
use kvmtrace::views::tui::{draw, Action, App, Node, TuiMeta, TuiStats, HOP_CAP, PACKET_CAP};
use ratatui::backend::TestBackend;
use ratatui::style::Color;
use ratatui::Terminal;
use std::time::Duration;

const HEALTHY: &str = include_str!("../src/model/fixtures/healthy.jsonl");
const FORWARD_DROP: &str = include_str!("../src/model/fixtures/forward_drop.jsonl");
const NO_MASQ: &str = include_str!("../src/model/fixtures/no_masquerade.jsonl");
const NO_ROUTE: &str = include_str!("../src/model/fixtures/no_route.jsonl");
const FORWARD6_DROP: &str = include_str!("../src/model/fixtures/forward6_drop.jsonl");
const DEST: &str = "203.0.113.1";

/// The recorded events, in order, each with the journey number the run gave it (link-level
/// events, ARP or NDP on the tap, belong to no journey and are left out).
fn load(text: &str) -> Vec<(usize, TraceEvent)> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("fixture line {l}: {e}"));
            let j = v["journey"].as_u64()? as usize;
            let ev: TraceEvent = serde_json::from_value(v).expect("a TraceEvent");
            Some((j, ev))
        })
        .collect()
}

fn meta() -> TuiMeta {
    TuiMeta {
        vm: "lab-guest".into(),
        tap: "vnet0".into(),
        filter: "any".into(),
        dest: DEST.into(),
    }
}

fn forward_drop_facts() -> HostFacts {
    HostFacts {
        ip_forward: Some(true),
        ip6_forward: None,
        nft_chains: vec![NfChain {
            family: "inet".into(),
            table: "labfilter".into(),
            chain: "forward".into(),
            hook: NfHook::Forward,
            priority: 0,
            policy: "drop".into(),
        }],
        legacy_tables: vec![],
        devices: vec![],
        ..Default::default()
    }
}

/// What the follow loop does: each event through the model, then into the UI with the journey
/// the model gave it; verdicts and counters as the loop would hand them over.
fn replay(text: &str, facts: &HostFacts) -> App {
    let mut app = App::new(meta());
    let mut model = Model::new();
    let events = load(text);
    for (recorded, ev) in &events {
        let j = model
            .push(ev.clone())
            .expect("every recorded event has a journey");
        assert_eq!(
            j, *recorded,
            "the model numbers journeys as the recording did"
        );
        app.push(j, ev);
    }
    app.set_verdicts(model.verdicts(facts, DEST, None));
    app.set_stats(TuiStats {
        elapsed: Duration::from_secs(8),
        events_per_sec: events.len() as f64 / 8.0,
        events: events.len() as u64,
        lost: 0,
        sampled_out: 0,
    });
    app
}

fn terminal(app: &App, w: u16, h: u16) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
    t.draw(|f| draw(f, app)).expect("draw");
    t
}

/// The screen as text, one line per row, trailing blanks trimmed.
fn screen_of(t: &Terminal<TestBackend>) -> String {
    let buf = t.backend().buffer();
    (0..buf.area.height)
        .map(|y| {
            (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol())
                .collect::<String>()
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn screen(app: &App) -> String {
    screen_of(&terminal(app, 160, 48))
}

/// The row of the drop-points table with `reason`.
#[track_caller]
fn drop_row<'a>(s: &'a str, reason: &str) -> &'a str {
    s.lines()
        .find(|l| (l.starts_with("│req ") || l.starts_with("│rep ")) && l.contains(reason))
        .unwrap_or_else(|| panic!("no drop row for {reason} on screen:\n{s}"))
}

/// The screen line that contains `needle` (panics with the screen otherwise).
#[track_caller]
fn line_with<'a>(s: &'a str, needle: &str) -> &'a str {
    s.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} on screen:\n{s}"))
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn type_text(app: &mut App, text: &str) -> Vec<Action> {
    text.chars()
        .map(|c| app.on_key(key(KeyCode::Char(c))))
        .collect()
}

#[test]
fn healthy_run_counts_every_hop_both_ways_and_says_delivered() {
    let app = replay(HEALTHY, &HostFacts::default());
    let s = screen(&app);
    let req = line_with(&s, "request ");
    for hop in [
        "tap vnet0 2",
        "bridge br0 2",
        "PREROUTING 2",
        "routing 2",
        "FORWARD 2",
        "POSTROUTING 2",
        "uplink up0 2",
        "outside",
    ] {
        assert!(req.contains(hop), "request row lacks {hop:?}:\n{s}");
    }
    let rep = line_with(&s, "reply   ");
    assert!(
        rep.contains("tap vnet0 2") && rep.contains("uplink up0 2"),
        "{s}"
    );
    assert!(!s.contains('■'), "nothing stops on a healthy path:\n{s}");
    assert!(line_with(&s, "DELIVERED").contains("icmp 10.77.0.2 > 203.0.113.1"));
    assert!(s.contains("delivered: 2 of 2 requests answered"), "{s}");
    assert!(s.contains("no drop seen"), "{s}");
    // Newest first, with what became of each packet.
    let first_row = line_with(&s, "#3");
    assert!(
        first_row.contains("▶"),
        "the newest packet is selected:\n{s}"
    );
    assert!(first_row.contains("delivered to the VM (vnet0)"), "{s}");
    assert!(
        line_with(&s, "#2").contains("left the host on up0 as 192.0.2.2"),
        "{s}"
    );
    assert!(line_with(&s, " kvmtrace ").contains("VM lab-guest · tap vnet0 → 203.0.113.1"));
    insta::assert_snapshot!("healthy_main", s);
}

#[test]
fn forward_drop_marks_the_hop_in_red_and_names_the_rule() {
    let app = replay(FORWARD_DROP, &forward_drop_facts());
    let t = terminal(&app, 160, 48);
    let s = screen_of(&t);
    let req = line_with(&s, "request ");
    assert!(req.contains("■ FORWARD 1 ✗1"), "{s}");
    assert!(req.contains("POSTROUTING 0"), "{s}");
    assert!(
        s.contains("■ requests stop at FORWARD: 1 of 1 dropped [NETFILTER_DROP]"),
        "{s}"
    );
    // The stop is coloured: red background on the marked cell.
    let buf = t.backend().buffer();
    let (y, row) = s
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains("request "))
        .unwrap();
    let x = row.chars().position(|c| c == '■').unwrap();
    let cell = &buf[(x as u16, y as u16)];
    assert_eq!(cell.bg, Color::Red, "the stop hop is not red: {cell:?}");
    // The drop-points table: stage, hook, device, reason, rule, count, last seen.
    let drop = drop_row(&s, "NETFILTER_DROP");
    for col in [
        "req",
        "netfilter",
        "FORWARD",
        "br0",
        "nftables: inet labfilter forward (policy drop, priority 0)",
        "1",
        "8s ago",
    ] {
        assert!(drop.contains(col), "drop row lacks {col:?}: {drop}");
    }
    assert!(line_with(&s, "DROPPED ").contains("icmp 10.77.0.2 > 203.0.113.1"));
    // The next step (wrapped to the screen's width).
    assert!(line_with(&s, "was dropped by the FORWARD hook").contains("→ check the"));
    assert!(
        s.contains("forward rules for 10.77.0.2 → 203.0.113.1"),
        "{s}"
    );
    assert!(
        line_with(&s, "#0").contains("DROPPED at FORWARD on br0 [NETFILTER_DROP]"),
        "{s}"
    );
    insta::assert_snapshot!("forward_drop_main", s);
}

/// An IPv6 flow (fd00:77::2 → 2001:db8:ffff::1) dropped by an `ip6` FORWARD policy: the
/// same screen as IPv4, with the IPv6 addresses and the ip6 chain.
#[test]
fn an_ipv6_forward_drop_shows_the_ip6_chain_and_the_addresses() {
    let mut facts = forward_drop_facts();
    facts.nft_chains[0].family = "ip6".into();
    facts.nft_chains[0].table = "labfilter6".into();
    let mut app = App::new(TuiMeta {
        dest: "2001:db8:ffff::1".into(),
        ..meta()
    });
    let mut model = Model::new();
    for (_, ev) in load(FORWARD6_DROP) {
        let j = model.push(ev.clone()).expect("a journey");
        app.push(j, &ev);
    }
    app.set_verdicts(model.verdicts(&facts, "2001:db8:ffff::1", None));
    let s = screen(&app);
    assert!(line_with(&s, "request ").contains("■ FORWARD 1 ✗1"), "{s}");
    let drop = drop_row(&s, "NETFILTER_DROP");
    for col in [
        "req",
        "netfilter",
        "FORWARD",
        "br0",
        "ip6 labfilter6 forward",
    ] {
        assert!(drop.contains(col), "drop row lacks {col:?}: {drop}");
    }
    assert!(
        line_with(&s, "DROPPED ").contains("icmp6 fd00:77::2 > 2001:db8:ffff::1"),
        "{s}"
    );
    insta::assert_snapshot!("forward6_drop_main", s);
}

#[test]
fn missing_masquerade_shows_nothing_came_back() {
    let app = replay(NO_MASQ, &HostFacts::default());
    let s = screen(&app);
    assert!(line_with(&s, "request ").contains("uplink up0 1"), "{s}");
    assert!(line_with(&s, "reply   ").contains("uplink up0 0"), "{s}");
    assert!(
        s.contains("■ requests left the host on up0 and no reply came back from outside"),
        "{s}"
    );
    assert!(line_with(&s, "NO_REPLY").contains("icmp 10.77.0.2 > 203.0.113.1"));
    assert!(s.contains("add a masquerade rule"), "{s}");
    // It left with the guest's own address: no "as …" on its row.
    assert!(line_with(&s, "#0").contains("left the host on up0"), "{s}");
    assert!(!line_with(&s, "#0").contains(" as "), "{s}");
    insta::assert_snapshot!("no_masquerade_main", s);
}

#[test]
fn no_route_stops_at_routing_and_shows_the_failed_lookup() {
    let facts = HostFacts {
        ip_forward: Some(true),
        ..Default::default()
    };
    let app = replay(NO_ROUTE, &facts);
    let s = screen(&app);
    assert!(line_with(&s, "request ").contains("■ routing 1 ✗1"), "{s}");
    assert!(line_with(&s, "request ").contains("FORWARD 0"), "{s}");
    let drop = drop_row(&s, "IP_INNOROUTES");
    assert!(drop.contains("routing"), "{drop}");
    assert!(
        drop.contains("table main: no route (ENETUNREACH)"),
        "{drop}"
    );
    // The host answered in the destination's place: a reply that never came from outside.
    assert!(line_with(&s, "reply   ").contains("POSTROUTING 1"), "{s}");
    assert!(line_with(&s, "reply   ").contains("uplink up0 0") || s.contains("uplink 0"));
    assert!(line_with(&s, "DROPPED ").contains("icmp 10.77.0.2 > 203.0.113.1"));
    insta::assert_snapshot!("no_route_main", s);
}

#[test]
fn down_enter_opens_the_request_journey_with_its_snat_rewrite() {
    let mut app = replay(HEALTHY, &HostFacts::default());
    assert_eq!(app.on_key(key(KeyCode::Down)), Action::None);
    assert_eq!(app.on_key(key(KeyCode::Enter)), Action::None);
    assert_eq!(app.inspected(), Some(2), "row 2 from the top is journey #2");
    let s = screen(&app);
    assert!(line_with(&s, "packet #2").contains("request"), "{s}");
    let rw = line_with(&s, "rewrite ");
    assert!(rw.contains("src 10.77.0.2 → 192.0.2.2"), "{s}");
    assert!(rw.contains("at POSTROUTING exit"), "{s}");
    // Each hop with its headers; the rewrite shown before → after where it happened.
    assert!(
        line_with(&s, "↳ rewritten at POSTROUTING exit").contains("src 10.77.0.2 → 192.0.2.2"),
        "{s}"
    );
    let post = line_with(&s, "POSTROUTING exit   up0");
    assert!(
        post.contains("192.0.2.2 > 203.0.113.1 icmp echo request"),
        "{s}"
    );
    assert!(
        line_with(&s, "route lookup").contains("table main: → up0 via 192.0.2.1"),
        "{s}"
    );
    assert!(line_with(&s, "outcome").contains("left the host on up0 as 192.0.2.2"));
    insta::assert_snapshot!("healthy_journey_2", s);
    // Esc goes back to the overview, with the same packet still selected.
    app.on_key(key(KeyCode::Esc));
    assert_eq!(app.inspected(), None);
    let s = screen(&app);
    assert!(line_with(&s, "#2").contains("▶"), "{s}");
}

#[test]
fn the_journey_of_a_dropped_packet_shows_the_drop_and_its_stack() {
    let mut app = replay(FORWARD_DROP, &forward_drop_facts());
    app.on_key(key(KeyCode::Enter));
    let s = screen(&app);
    let drop = line_with(&s, "DROP NETFILTER_DROP at ");
    assert!(drop.contains("br0"), "{s}");
    assert!(line_with(&s, "stack:").contains("nf_hook_slow"), "{s}");
    assert!(
        line_with(&s, "outcome").contains("DROPPED at FORWARD on br0 [NETFILTER_DROP]"),
        "{s}"
    );
    assert!(line_with(&s, "rewrites").contains("none"), "{s}");
    insta::assert_snapshot!("forward_drop_journey_0", s);
}

#[test]
fn p_freezes_the_display_while_counting_on() {
    let events = load(HEALTHY);
    let mut app = App::new(meta());
    let (first, second): (Vec<_>, Vec<_>) = events.iter().partition(|(j, _)| *j < 2);
    for (j, ev) in &first {
        app.push(*j, ev);
    }
    assert_eq!(app.on_key(key(KeyCode::Char('p'))), Action::None);
    assert!(app.is_paused());
    for (j, ev) in &second {
        app.push(*j, ev);
    }
    let s = screen(&app);
    assert!(
        line_with(&s, " kvmtrace ").contains(&format!("PAUSED +{} events", second.len())),
        "{s}"
    );
    assert!(
        !s.contains("#2 "),
        "a paused display shows no new packet:\n{s}"
    );
    assert!(line_with(&s, "request ").contains("tap vnet0 1"), "{s}");
    // Collection went on underneath.
    assert_eq!(app.hop_count(Direction::Request, Node::Tap), 2);
    app.on_key(key(KeyCode::Char('p')));
    assert!(!app.is_paused());
    let s = screen(&app);
    assert!(!s.contains("PAUSED"), "{s}");
    assert!(s.contains("#3 "), "{s}");
    assert!(line_with(&s, "request ").contains("tap vnet0 2"), "{s}");
}

#[test]
fn slash_sets_the_filter_and_q_quits() {
    let mut app = replay(HEALTHY, &HostFacts::default());
    assert_eq!(app.on_key(key(KeyCode::Char('/'))), Action::None);
    assert!(screen(&app).contains("filter> █"));
    let typed = type_text(&mut app, "tcp 443");
    assert!(typed.iter().all(|a| *a == Action::None), "{typed:?}");
    assert!(line_with(&screen(&app), "filter>").contains("tcp 443█"));
    assert_eq!(
        app.on_key(key(KeyCode::Enter)),
        Action::SetFilter(PacketFilter {
            proto: Proto::Tcp,
            port: Some(443)
        })
    );
    let s = screen(&app);
    assert!(
        line_with(&s, " kvmtrace ").contains("filter tcp port 443"),
        "{s}"
    );
    assert!(!s.contains("filter>"), "{s}");
    // A bad filter says why and stays open; 'q' typed into it is text, not quit.
    app.on_key(key(KeyCode::Char('/')));
    type_text(&mut app, "icmp 7");
    assert_eq!(app.on_key(key(KeyCode::Enter)), Action::None);
    assert!(screen(&app).contains("a port applies to tcp and udp, not icmp"));
    assert_eq!(app.on_key(key(KeyCode::Char('q'))), Action::None);
    app.on_key(key(KeyCode::Esc));
    assert_eq!(app.meta().filter, "tcp port 443");
    assert_eq!(app.on_key(key(KeyCode::Char('q'))), Action::Quit);
    assert_eq!(
        app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
        Action::Quit
    );
}

#[test]
fn question_mark_shows_the_keys() {
    let mut app = replay(HEALTHY, &HostFacts::default());
    app.on_key(key(KeyCode::Char('?')));
    let s = screen(&app);
    assert!(s.contains("keys (any key closes)"), "{s}");
    assert!(line_with(&s, "pause / resume").contains("p, space"), "{s}");
    app.on_key(key(KeyCode::Esc));
    assert!(!screen(&app).contains("keys (any key closes)"));
}

#[test]
fn a_narrow_terminal_gets_short_hop_names() {
    let app = replay(FORWARD_DROP, &forward_drop_facts());
    let s = screen_of(&terminal(&app, 80, 24));
    let req = line_with(&s, "request ");
    assert!(req.contains("■ FWD 1 ✗1"), "{s}");
    assert!(req.contains("PRE 1"), "{s}");
    // Tiny terminals must not panic either.
    for (w, h) in [(20, 5), (1, 1), (0, 0)] {
        terminal(&app, w, h);
    }
}

#[test]
fn memory_stays_bounded_at_200_000_events() {
    let template = load(HEALTHY);
    let per_round = template.iter().map(|(j, _)| j + 1).max().unwrap();
    let drop = load(FORWARD_DROP)
        .into_iter()
        .map(|(_, e)| e)
        .find(|e| e.point == Point::Drop)
        .unwrap();
    let mut app = App::new(meta());
    let (mut pushed, mut drops, mut base) = (0u64, 0u64, 0usize);
    let mut journey;
    'outer: loop {
        for (j, ev) in &template {
            journey = base + j;
            let mut ev = ev.clone();
            ev.ts_ns += pushed * 1000;
            app.push(journey, &ev);
            pushed += 1;
            if pushed % 997 == 0 {
                let mut d = drop.clone();
                d.ts_ns = ev.ts_ns;
                app.push(journey, &d);
                pushed += 1;
                drops += 1;
            }
            if pushed >= 200_000 {
                break 'outer;
            }
        }
        base += per_round;
    }
    assert!(
        journey > PACKET_CAP * 10,
        "the test made too few packets: {journey}"
    );
    assert!(
        app.retained_packets() <= PACKET_CAP,
        "{}",
        app.retained_packets()
    );
    assert_eq!(app.retained_packets(), PACKET_CAP);
    assert!(app.retained_hops() <= PACKET_CAP * (HOP_CAP + 1));
    assert!(app.drop_points().len() <= kvmtrace::views::tui::DROP_POINT_CAP);
    assert_eq!(
        app.drop_points().iter().map(|d| d.count).sum::<u64>(),
        drops
    );
    // Counters keep counting past what the list keeps.
    assert!(app.hop_count(Direction::Request, Node::Tap) > PACKET_CAP as u64);
    // And it still renders.
    let s = screen(&app);
    assert!(
        s.contains(&format!("recent packets ({PACKET_CAP} kept")),
        "{s}"
    );
}

/// A recorded run played `n` times, one second apart, each time with the next ICMP id, new skb
/// addresses and journey numbers: a guest whose ping picks a new id per run.
fn flood(text: &str, n: u16) -> Vec<(usize, TraceEvent)> {
    let events = load(text);
    let journeys = events.iter().map(|(j, _)| *j).max().map_or(0, |j| j + 1);
    let mut out = Vec::new();
    for k in 0..n {
        for (j, e) in &events {
            let mut e = e.clone();
            e.ts_ns += u64::from(k) * 1_000_000_000;
            e.skb += u64::from(k) << 20;
            if let Some(t) = e.tuple.as_mut() {
                t.sport += k;
            }
            out.push((j + usize::from(k) * journeys, e));
        }
    }
    out
}

#[test]
fn flows_that_ended_identically_are_one_verdict_line_with_count_and_times() {
    let mut app = App::new(meta());
    let mut model = Model::new();
    let events = flood(FORWARD_DROP, 6);
    for (recorded, ev) in &events {
        let j = model.push(ev.clone()).expect("a journey");
        assert_eq!(j, *recorded);
        app.push(j, ev);
    }
    let verdicts = model.verdicts(&forward_drop_facts(), DEST, None);
    assert_eq!(verdicts.len(), 6, "one verdict per ping id");
    app.set_judged(&model, verdicts);
    app.set_stats(TuiStats {
        elapsed: Duration::from_secs(8),
        events_per_sec: events.len() as f64 / 8.0,
        events: events.len() as u64,
        lost: 0,
        sampled_out: 0,
    });
    let s = screen(&app);
    let line = line_with(&s, "DROPPED");
    assert!(
        line.contains(
            "DROPPED   6 flows icmp 10.77.0.2 > 203.0.113.1 id=*  requests 6 replies 0  \
             netfilter FORWARD br0 NETFILTER_DROP"
        ),
        "{s}"
    );
    assert_eq!(
        s.lines().filter(|l| l.starts_with("│DROPPED ")).count(),
        1,
        "one verdict line for the six flows:\n{s}"
    );
    assert!(
        s.contains(
            "first +0.000000s, last +5.000099s; id=19284 id=19285 id=19286 id=19287 \
             id=19288 and 1 more"
        ),
        "{s}"
    );
    assert_eq!(
        s.matches("the request was dropped by the FORWARD hook")
            .count(),
        1,
        "{s}"
    );
    insta::assert_snapshot!("flood_grouped_main", s);
}
