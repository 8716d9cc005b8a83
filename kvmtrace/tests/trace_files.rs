//! `replay`, `export` and `report` on recorded traces, through the binary, without root: the
//! traces are built from the recorded real runs in `src/model/fixtures` with the same
//! `trace::Writer` the live `follow --record` uses.

use kvmtrace::model::event::Counters;
use kvmtrace::model::event::{NfHook, TraceEvent};
use kvmtrace::model::{HostFacts, Model, NfChain};
use kvmtrace::trace::{Meta, Writer};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The binary under test; `KVMTRACE_BIN` at compile time overrides it (see `common::BIN`).
const BIN: &str = match option_env!("KVMTRACE_BIN") {
    Some(bin) => bin,
    None => env!("CARGO_BIN_EXE_kvmtrace"),
};
const FORWARD_DROP: &str = include_str!("../src/model/fixtures/forward_drop.jsonl");
const HEALTHY: &str = include_str!("../src/model/fixtures/healthy.jsonl");
const NO_MASQ: &str = include_str!("../src/model/fixtures/no_masquerade.jsonl");
const NO_ROUTE: &str = include_str!("../src/model/fixtures/no_route.jsonl");

/// A scratch directory removed on drop.
struct Scratch(PathBuf);
impl Scratch {
    fn new(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!(
            "kvmtrace-trace-files-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load(text: &str) -> Vec<(Option<usize>, TraceEvent)> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["journey"].as_u64().map(|j| j as usize),
                serde_json::from_value(v).unwrap(),
            )
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
            hook: NfHook::Forward,
            priority: 0,
            policy: "drop".into(),
        }],
        legacy_tables: vec![],
        devices: vec![],
        ..Default::default()
    }
}

/// Records `events` as `follow --record` does; `finish: false` leaves it cut short.
fn record_events(path: &Path, events: &[(Option<usize>, TraceEvent)], finish: bool) {
    let mut w = Writer::create(path, &meta()).unwrap();
    let mut m = Model::new();
    for (j, e) in events {
        w.event(*j, e).unwrap();
        m.push(e.clone());
    }
    w.flush().unwrap();
    if finish {
        let v = m.verdicts(&facts(), "203.0.113.1", None);
        let c = Counters {
            events: events.len() as u64,
            lost: 0,
            sampled_out: 0,
            missed: 0,
        };
        w.end(&v, c, &facts(), 1_700_000_002_000_000_000).unwrap();
    }
}

fn record(dir: &Scratch, name: &str, fixture: &str) -> PathBuf {
    let p = dir.path(&format!("{name}.trace"));
    record_events(&p, &load(fixture), true);
    p
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Out {
    let o = Command::new(BIN).args(args).output().unwrap();
    let out = Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    assert!(
        !out.stderr.contains("panicked"),
        "kvmtrace {args:?} panicked: {}",
        out.stderr
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn replay_prints_the_same_hops_and_verdicts_as_the_live_run() {
    let d = Scratch::new("replay");
    for (name, fx, code) in [
        ("forward_drop", FORWARD_DROP, 1),
        ("healthy", HEALTHY, 0),
        ("no_masquerade", NO_MASQ, 1),
        ("no_route", NO_ROUTE, 1),
    ] {
        let p = record(&d, name, fx);
        let r = run(&["replay", s(&p)]);
        assert_eq!(r.code, code, "{name}: {}", r.stderr);
        assert!(r.stderr.contains("guest1 (tap vnet0"), "{}", r.stderr);
        assert!(!r.stderr.contains("incomplete"), "{}", r.stderr);
        insta::assert_snapshot!(format!("replay_{name}"), r.stdout);
    }
}

#[test]
fn replay_json_is_the_follow_json_schema() {
    let d = Scratch::new("replay-json");
    let p = record(&d, "forward_drop", FORWARD_DROP);
    let r = run(&["replay", "--json", s(&p)]);
    assert_eq!(r.code, 1);
    let lines: Vec<Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let hops: Vec<&Value> = lines.iter().filter(|v| v["type"] == "hop").collect();
    assert_eq!(hops.len(), 8);
    assert!(hops.iter().all(|h| h["schema"] == 1 && h["journey"] == 0));
    let v: Vec<&Value> = lines.iter().filter(|v| v["type"] == "verdict").collect();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["status"], "dropped");
    assert_eq!(v[0]["hook"], "FORWARD");
    assert_eq!(v[0]["reason"], "NETFILTER_DROP");
    assert_eq!(v[0]["firewall"], "nftables");
    assert_eq!(
        v[0]["chains"][0],
        "inet labfilter forward (policy drop, priority 0)"
    );
    let stats = lines.last().unwrap();
    assert_eq!(stats["type"], "stats");
    assert_eq!(stats["events"], 8);
    assert_eq!(stats["lost"], 0);
}

#[test]
fn a_trace_cut_short_replays_with_a_warning() {
    let d = Scratch::new("cut");
    let p = d.path("cut.trace");
    record_events(&p, &load(HEALTHY), false);
    // And a half-written last line, as a crash mid-write leaves it.
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.extend_from_slice(br#"{"type":"event","journey":3,"ts_ns":10"#);
    std::fs::write(&p, bytes).unwrap();
    let r = run(&["replay", s(&p)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("incomplete"), "{}", r.stderr);
    assert!(r.stderr.contains("cut short"), "{}", r.stderr);
    assert!(r.stdout.contains("DELIVERED"), "{}", r.stdout);
}

#[test]
fn unreadable_traces_are_a_clear_usage_error() {
    let d = Scratch::new("bad");
    let newer = d.path("newer.trace");
    std::fs::write(
        &newer,
        "{\"type\":\"kvmtrace-trace\",\"format\":7,\"version\":\"3.0.0\"}\n",
    )
    .unwrap();
    let r = run(&["replay", s(&newer)]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("format 7") && r.stderr.contains("newer kvmtrace"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty());

    let json = d.path("follow.json");
    std::fs::write(&json, FORWARD_DROP).unwrap();
    let r = run(&["report", s(&json)]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not a kvmtrace trace"), "{}", r.stderr);

    let r = run(&["export", s(&d.path("missing.trace"))]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("missing.trace"), "{}", r.stderr);

    // A corrupted line in the middle names its line.
    let good = record(&d, "good", FORWARD_DROP);
    let text = std::fs::read_to_string(&good).unwrap();
    let broken = text.replacen("\"point\":\"nf_enter\"", "\"point\":\"warp\"", 1);
    std::fs::write(&good, broken).unwrap();
    let r = run(&["replay", s(&good)]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("line 4: a malformed event"),
        "{}",
        r.stderr
    );
}

#[test]
fn mutated_traces_never_crash_the_binary() {
    let d = Scratch::new("mutated");
    let good = std::fs::read(record(&d, "src", NO_ROUTE)).unwrap();
    let p = d.path("m.trace");
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for i in 0..24 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut b = good.clone();
        let at = (x as usize) % b.len();
        match i % 3 {
            0 => b.truncate(at),
            1 => b[at] = (x >> 32) as u8,
            _ => {
                b.splice(at..at, b"\"\\u0000\":[[[[".iter().copied());
            }
        }
        std::fs::write(&p, &b).unwrap();
        for cmd in [
            vec!["replay", s(&p)],
            vec!["report", s(&p), "-o", "-", "--format", "html"],
            vec!["export", s(&p), "--format", "jsonl", "-o", "-"],
        ] {
            let r = run(&cmd);
            assert!(matches!(r.code, 0..=2), "{cmd:?}: {} {}", r.code, r.stderr);
        }
    }
}

/// `tshark -r FILE -T fields -e …`, one Vec per packet.
fn tshark_fields(file: &Path, fields: &[&str], extra: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.args(["-r", s(file)]).args(extra).args(["-T", "fields"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let o = cmd
        .output()
        .expect("tshark is needed for this test (cargo xtask setup installs it)");
    assert!(
        o.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.split('\t').map(String::from).collect())
        .collect()
}

#[test]
fn tshark_reads_the_pcapng_with_an_interface_per_point_and_a_comment_per_packet() {
    let d = Scratch::new("pcapng");
    let p = record(&d, "forward_drop", FORWARD_DROP);
    let r = run(&["export", s(&p), "--format", "pcapng"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let pcap = d.path("forward_drop.pcapng");
    assert!(
        r.stderr.contains("wrote 7 packets on 7 interfaces"),
        "{}",
        r.stderr
    );
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&pcap).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let rows = tshark_fields(
        &pcap,
        &[
            "frame.interface_name",
            "ip.src",
            "ip.dst",
            "ip.ttl",
            "icmp.type",
            "frame.comment",
        ],
        &[],
    );
    // 8 events, the route lookup has no packet of its own.
    assert_eq!(rows.len(), 7, "{rows:?}");
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        names,
        [
            "netif_receive vnet0",
            "tap_ingress vnet0",
            "nf_enter PREROUTING br0",
            "nf_exit PREROUTING br0",
            "netif_receive br0",
            "nf_enter FORWARD br0",
            "drop br0",
        ]
    );
    for r in &rows {
        assert_eq!((r[1].as_str(), r[2].as_str()), ("10.77.0.2", "203.0.113.1"));
        assert_eq!(r[4], "8", "an echo request");
        let c = &r[5];
        assert!(
            c.contains("verdict: dropped at netfilter FORWARD on br0, reason NETFILTER_DROP"),
            "{c}"
        );
        assert!(c.contains("rewrite: none"), "{c}");
        assert!(c.contains("route: table main → up0 via 192.0.2.1"), "{c}");
    }
    assert_eq!(rows[5][3], "63", "TTL after the forward decrement");
    let drop = &rows[6][5];
    assert!(
        drop.starts_with(
            "stage=netfilter hook=drop device=br0 | request #0 hop 8/8 | DROPPED HERE reason=NETFILTER_DROP"
        ),
        "{drop}"
    );
    // Checksums verify, and nothing is malformed.
    let ck = tshark_fields(
        &pcap,
        &[
            "ip.checksum.status",
            "icmp.checksum.status",
            "_ws.malformed",
        ],
        &["-o", "ip.check_checksum:TRUE"],
    );
    assert!(
        ck.iter()
            .all(|r| r[0] == "1" && r[1] == "1" && r[2].is_empty()),
        "{ck:?}"
    );
}

#[test]
fn the_pcapng_names_nat_rewrites_and_tcp_udp_checksums_verify() {
    let d = Scratch::new("pcapng-nat");
    let p = record(&d, "healthy", HEALTHY);
    let out = d.path("h.pcapng");
    let r = run(&["export", s(&p), "-o", s(&out)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = tshark_fields(
        &out,
        &["frame.interface_name", "ip.src", "frame.comment"],
        &[],
    );
    assert_eq!(rows.len(), 42);
    let post = rows
        .iter()
        .find(|r| r[0] == "nf_exit POSTROUTING up0")
        .unwrap();
    assert_eq!(post[1], "192.0.2.2", "the SNAT'ed source");
    assert!(
        post[2].contains("rewrite (here): src 10.77.0.2 → 192.0.2.2 at POSTROUTING exit"),
        "{}",
        post[2]
    );
    assert!(
        post[2].contains("packet: left the host on up0"),
        "{}",
        post[2]
    );
    let back = rows.iter().find(|r| r[0] == "tap_egress vnet0").unwrap();
    assert!(
        back[2].contains("packet: delivered to the VM on vnet0"),
        "{}",
        back[2]
    );
    assert!(back[2].contains("verdict: delivered"), "{}", back[2]);

    // The same run as TCP and as UDP: the synthesised headers verify in tshark.
    for (proto, field) in [(6u8, "tcp"), (17u8, "udp")] {
        let events: Vec<(Option<usize>, TraceEvent)> = load(HEALTHY)
            .into_iter()
            .map(|(j, mut e)| {
                if let Some(t) = e.tuple.as_mut().filter(|t| t.proto == 1) {
                    t.proto = proto;
                    (t.sport, t.dport) = match e.dir {
                        kvmtrace::model::event::Direction::Request => (40000, 443),
                        kvmtrace::model::event::Direction::Reply => (443, 40000),
                    };
                    e.icmp_type = 0;
                    if proto == 6 {
                        let j = j.unwrap_or(0);
                        e.tcp_flags = if j % 2 == 0 { 0x02 } else { 0x12 };
                        e.tcp_seq = 1000 + j as u32;
                    }
                }
                (j, e)
            })
            .collect();
        let p = d.path(&format!("{field}.trace"));
        record_events(&p, &events, true);
        let out = d.path(&format!("{field}.pcapng"));
        assert_eq!(run(&["export", s(&p), "-o", s(&out)]).code, 0);
        let status = format!("{field}.checksum.status");
        let rows = tshark_fields(
            &out,
            &[
                "ip.checksum.status",
                &status,
                "tcp.flags.syn",
                "tcp.seq_raw",
                "_ws.malformed",
                "frame.comment",
            ],
            &[
                "-o",
                "ip.check_checksum:TRUE",
                "-o",
                &format!("{field}.check_checksum:TRUE"),
            ],
        );
        assert_eq!(rows.len(), 42);
        for r in &rows {
            assert_eq!((r[0].as_str(), r[1].as_str()), ("1", "1"), "{field}: {r:?}");
            assert!(r[4].is_empty(), "malformed: {r:?}");
            assert!(
                r[5].contains(&format!("(flow {field} 10.77.0.2:40000 > 203.0.113.1:443)")),
                "{r:?}"
            );
        }
        if proto == 6 {
            assert_eq!(rows[0][2], "1", "SYN");
            assert_eq!(rows[0][3], "1000");
        }
    }
}

#[test]
fn export_jsonl_annotates_each_hop_with_its_flow() {
    let d = Scratch::new("jsonl");
    let p = record(&d, "no_route", NO_ROUTE);
    let r = run(&["export", s(&p), "--format", "jsonl"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(d.path("no_route.jsonl")).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let hops: Vec<&Value> = lines.iter().filter(|v| v["type"] == "hop").collect();
    assert_eq!(hops.len(), 15);
    // The host's ICMP error belongs to the flow it answers.
    assert!(hops
        .iter()
        .all(|h| h["flow"] == "icmp 10.77.0.2 > 203.0.113.1 id=19284"));
    assert!(hops.iter().all(|h| h["status"] == "dropped"));
    let v = lines.iter().find(|v| v["type"] == "verdict").unwrap();
    assert_eq!(v["stage"], "routing");
    assert_eq!(v["route"]["err"], -101);
    assert_eq!(lines.last().unwrap()["type"], "stats");
    // The trace itself is never overwritten.
    let r = run(&["export", s(&p), "--format", "jsonl", "-o", s(&p)]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("is the trace itself"), "{}", r.stderr);
}

#[test]
fn report_writes_markdown_and_self_contained_html() {
    let d = Scratch::new("report");
    let p = record(&d, "forward_drop", FORWARD_DROP);
    let r = run(&["report", s(&p)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let md = std::fs::read_to_string(d.path("forward_drop.report.md")).unwrap();
    let html = std::fs::read_to_string(d.path("forward_drop.report.html")).unwrap();
    for needle in [
        "**Verdict:** **DROPPED**",
        "`NETFILTER_DROP` at `nft_do_chain+0x637`",
        "`inet labfilter forward (policy drop, priority 0)`",
        "| 7 | FORWARD enter | `br0` | 1 |",
        "| 8 | drop | `br0` | 1 | dropped: NETFILTER_DROP at nft_do_chain+0x637 |",
        "| **host** | lab-hv |",
        "| **events lost (ring buffer full)** | 0 |",
    ] {
        assert!(md.contains(needle), "{needle} missing from\n{md}");
    }
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<span class=\"status dropped\">DROPPED</span>"));
    assert!(html.contains("<code>NETFILTER_DROP</code>"));
    // Self-contained: nothing fetched, nothing run.
    for bad in ["<script", "src=", "href=", "http://", "https://", "@import"] {
        assert!(!html.contains(bad), "{bad} in the HTML report");
    }
    insta::assert_snapshot!("report_forward_drop_md", md);
}

#[test]
fn report_of_a_nat_run_and_a_routing_drop() {
    let d = Scratch::new("report2");
    let p = record(&d, "healthy", HEALTHY);
    let r = run(&["report", s(&p), "-o", "-", "--format", "md"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let md = r.stdout;
    assert!(md.contains("**Verdict:** **DELIVERED**"), "{md}");
    assert!(
        md.contains("| 10 | POSTROUTING exit | `up0` | 2 | src 10.77.0.2 → 192.0.2.2 |"),
        "{md}"
    );
    assert!(
        md.contains("- **rewrite:** `src 10.77.0.2 → 192.0.2.2` at POSTROUTING exit"),
        "{md}"
    );
    assert!(
        !d.path("healthy.report.md").exists(),
        "-o - writes to stdout only"
    );

    let p = record(&d, "no_route", NO_ROUTE);
    let r = run(&["report", s(&p), "-o", s(&d.path("nr")), "--format", "md"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let md = std::fs::read_to_string(d.path("nr.md")).unwrap();
    assert!(
        md.contains("- **route:** table main → no route (ENETUNREACH)"),
        "{md}"
    );
    assert!(md.contains("ip_error+0x94"), "{md}");
    assert!(!d.path("nr.html").exists());
    insta::assert_snapshot!("report_no_route_md", md);
}

/// A recorded run played `n` times, one second apart, each time with the next ICMP id and new
/// skb addresses and journey numbers: a guest whose ping picks a new id per run, so `n` flows
/// that end the same way.
fn flood(text: &str, n: u16) -> Vec<(Option<usize>, TraceEvent)> {
    let events = load(text);
    let journeys = events
        .iter()
        .filter_map(|(j, _)| *j)
        .max()
        .map_or(0, |j| j + 1);
    let mut out = Vec::new();
    for k in 0..n {
        for (j, e) in &events {
            let mut e = e.clone();
            e.ts_ns += u64::from(k) * 1_000_000_000;
            e.skb += u64::from(k) << 20;
            if let Some(t) = e.tuple.as_mut() {
                t.sport += k;
            }
            out.push((j.map(|j| j + usize::from(k) * journeys), e));
        }
    }
    out
}

#[test]
fn replay_groups_flows_that_ended_identically_and_json_keeps_one_per_flow() {
    let d = Scratch::new("flood");
    let p = d.path("flood.trace");
    record_events(&p, &flood(FORWARD_DROP, 5), true);

    let r = run(&["replay", s(&p), "--no-tui"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let verdicts = &r.stdout[r.stdout.find("\n\n").expect("a blank line before verdicts")..];
    assert_eq!(
        verdicts.trim_start(),
        "5 flows icmp 10.77.0.2 > 203.0.113.1 id=*: DROPPED, first +0.000000 s, last +4.000099 s\n  \
         stage=netfilter hook=FORWARD firewall=nftables device=br0 direction=request \
         reason=NETFILTER_DROP location=nft_do_chain+0x637 requests=5 replies=0\n  \
         chain: inet labfilter forward (policy drop, priority 0)\n  \
         flows: id=19284 id=19285 id=19286 id=19287 id=19288\n  \
         summary: the request was dropped by the FORWARD hook (nftables: chain inet labfilter \
         forward (policy drop, priority 0)) on br0 [NETFILTER_DROP] → check the forward rules \
         for 10.77.0.2 → 203.0.113.1\n"
    );

    let r = run(&["replay", s(&p), "--json"]);
    let flows: Vec<String> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["type"] == "verdict")
        .map(|v| v["flow"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        flows,
        (19284..19289)
            .map(|id| format!("icmp 10.77.0.2 > 203.0.113.1 id={id}"))
            .collect::<Vec<_>>(),
        "JSON stays one verdict per flow"
    );

    let r = run(&[
        "report",
        s(&p),
        "-o",
        s(&d.path("flood")),
        "--format",
        "both",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let md = std::fs::read_to_string(d.path("flood.md")).unwrap();
    assert!(
        md.contains(
            "| `icmp 10.77.0.2 > 203.0.113.1 id=*` (5 flows) | **DROPPED** | netfilter FORWARD \
             on br0 (request) | `NETFILTER_DROP` | 5 | 0 | +0.000000 … +4.000099 s |"
        ),
        "{md}"
    );
    assert_eq!(md.matches("| **DROPPED** |").count(), 1, "one row: {md}");
    assert!(
        md.contains(
            "### DROPPED: 5 flows icmp 10.77.0.2 > 203.0.113.1 id=\\* — netfilter FORWARD on \
             br0 (request)"
        ),
        "{md}"
    );
    assert!(md.contains("| 8 | drop | `br0` | 5 |"), "{md}");
    let html = std::fs::read_to_string(d.path("flood.html")).unwrap();
    assert!(
        html.contains("<td><code>icmp 10.77.0.2 &#62; 203.0.113.1 id=*</code> (5 flows)</td>"),
        "{html}"
    );
    // The timeline: five requests, no reply, five drops, the last 4.000099 s in.
    let tl = svg_of(&html, "timeline");
    assert!(tl.contains(">requests (5)</text>"), "{tl}");
    assert!(tl.contains(">replies (0)</text>"), "{tl}");
    assert!(tl.contains(">drops (5)</text>"), "{tl}");
    assert_eq!(tl.matches("<g class=\"drop\"").count(), 5, "{tl}");
    assert!(tl.contains(">+4.00 s</text>"), "{tl}");
}

/// The first `<svg class="{class}" …>…</svg>` of a page.
fn svg_of<'a>(html: &'a str, class: &str) -> &'a str {
    let start = html
        .find(&format!("<svg class=\"{class}\""))
        .unwrap_or_else(|| panic!("no {class} picture in\n{html}"));
    let end = start + html[start..].find("</svg>").expect("a closed svg") + "</svg>".len();
    &html[start..end]
}

/// The hop boxes of a path picture, in order: (class, texts inside).
fn svg_hops(svg: &str) -> Vec<(String, Vec<String>)> {
    svg.split("<g class=\"")
        .skip(1)
        .map(|g| {
            let class = g[..g.find('"').unwrap()].to_string();
            let texts = g
                .split("<text")
                .skip(1)
                .map(|t| t[t.find('>').unwrap() + 1..t.find("</text>").unwrap()].to_string())
                .collect();
            (class, texts)
        })
        .collect()
}

#[test]
fn html_report_draws_the_path_with_counts_the_stop_and_the_rewrites() {
    let d = Scratch::new("svg");
    let p = record(&d, "forward_drop", FORWARD_DROP);
    let r = run(&["report", s(&p), "-o", "-", "--format", "html"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let path = svg_of(&r.stdout, "path");
    let hops = svg_hops(path);
    let names: Vec<&str> = hops.iter().map(|(_, t)| t[0].as_str()).collect();
    assert_eq!(
        names,
        [
            "receive",
            "tap ingress",
            "PREROUTING enter",
            "PREROUTING exit",
            "receive",
            "route lookup",
            "FORWARD enter",
            "drop"
        ],
        "{path}"
    );
    assert_eq!(hops[6].1[1..3], ["br0", "1 packet"], "{path}");
    // The stop: the drop hop, marked, with its reason and place under it; only there.
    let stops: Vec<&(String, Vec<String>)> = hops.iter().filter(|(c, _)| c == "hop stop").collect();
    assert_eq!(stops.len(), 1, "{path}");
    assert_eq!(
        stops[0].1,
        [
            "drop",
            "br0",
            "1 packet",
            "✕",
            "✕ dropped: NETFILTER_DROP",
            "at nft_do_chain+0x637"
        ],
        "{path}"
    );

    // A NAT run: the rewrite is written on the hop that did it, counts are per hop.
    let p = record(&d, "healthy", HEALTHY);
    let r = run(&["report", s(&p), "-o", "-", "--format", "html"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let html = &r.stdout;
    let path = svg_of(html, "path");
    let hops = svg_hops(path);
    let post = hops
        .iter()
        .find(|(_, t)| t[0] == "POSTROUTING exit")
        .unwrap_or_else(|| panic!("no POSTROUTING exit in {path}"));
    assert_eq!(
        post.1,
        [
            "POSTROUTING exit",
            "up0",
            "2 packets",
            "✎ src 10.77.0.2 → 192.0.2.2"
        ],
        "{path}"
    );
    assert!(
        hops.iter().all(|(c, _)| c == "hop"),
        "delivered: no stop: {path}"
    );
    assert_eq!(
        html.matches("<svg class=\"path\"").count(),
        2,
        "requests and replies"
    );
    for bad in [
        "<script", "src=", "href=", "http://", "https://", "@import", "xmlns",
    ] {
        assert!(!html.contains(bad), "{bad} in the HTML report");
    }

    // No reply and no drop: the request's last hop is where it was seen last.
    let p = record(&d, "no_masq", NO_MASQ);
    let r = run(&["report", s(&p), "-o", "-", "--format", "html"]);
    let hops = svg_hops(svg_of(&r.stdout, "path"));
    let last = hops.last().expect("hops");
    assert_eq!(last.0, "hop last-seen");
    assert_eq!(last.1[..3], ["transmit", "up0", "1 packet"]);
    assert!(last.1.contains(&"last seen here".to_string()), "{last:?}");
}
