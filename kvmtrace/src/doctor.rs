//! `kvmtrace doctor <VM> [DEST]`: a static check of everything along the VM's path, IPv4 and
//! IPv6, without waiting for traffic; with DEST, of the way to that destination. Each check is pass / warn / fail / skip with the evidence it read and the command
//! that fixes it.
//!
//! Why static: `follow` says where packets stop, but only when there are packets. A VM that
//! sends nothing (no address, a tap that is down) or a host that never routes (ip_forward = 0)
//! is diagnosed faster by reading the configuration the packets would meet. `follow` runs these
//! checks itself when it sees `no_traffic` ([`checks_for`]).
//!
//! Read-only: procfs / sysfs reads and netlink dumps (rtnetlink for addresses, routes,
//! neighbours and policy rules; nfnetlink for the nftables chains and rules, iptables-nft's
//! included). It never shells out and never changes anything. Run it in the network namespace
//! that holds the tap.
//!
//! Layout: `host` reads one snapshot, `checks` judges it (pure functions, unit-tested on
//! hand-built snapshots), `rules` decodes nftables rules and judges a model packet against
//! them, `crate::host::netlink` does the dumps; `check` (what a check answers) and `family`
//! (IPv4 or IPv6) are the leaves they share.

mod check;
mod checks;
mod family;
mod host;
mod rules;

pub use check::{Check, CheckStatus};

use crate::host::resolve::VmInfo;
use crate::model::SCHEMA;
use serde::Serialize;
use std::io::{self, Write};

/// Runs every check for the VM, in the current network namespace. Never fails: what cannot be
/// read becomes a `skip` (or a `fail` when its absence is the problem).
pub fn checks_for(info: &VmInfo) -> Vec<Check> {
    checks_for_dest(info, None)
}

/// [`checks_for`] with a destination (address or prefix, either family): the route to it is
/// looked up (`route` / `route6` instead of `default_route` / `default_route6`) and the
/// firewall is judged for packets to it.
pub fn checks_for_dest(info: &VmInfo, dest: Option<Dest>) -> Vec<Check> {
    let mut h = host::gather();
    let mac = info.mac.as_deref();
    if let Some(d) = dest {
        let from = checks::vm_source(&h, &info.tap, mac, d.addr.is_ipv6());
        h.dest_route = Some(host::lookup_dest(&h, d.addr, from));
    }
    checks::run_checks_to(
        &h,
        &info.tap,
        mac,
        dest.map(|d| rules::Net::new(d.addr, d.net.prefix_len())),
    )
}

pub use crate::model::dest::{parse_dest, Dest};

#[derive(Serialize)]
struct JsonCheck<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    schema: u32,
    #[serde(flatten)]
    check: &'a Check,
}

/// One JSON Lines object: `{"type":"check","schema":1,"name":…,"status":…,"evidence":…,"fix":…}`.
pub fn check_json(c: &Check) -> String {
    serde_json::to_string(&JsonCheck {
        kind: "check",
        schema: SCHEMA,
        check: c,
    })
    .unwrap_or_default()
}

/// The last JSON line: `{"type":"summary","schema":1,"vm":…,"tap":…,"mac":…,"pass":N,…}`.
#[derive(Serialize)]
struct JsonSummary<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    schema: u32,
    vm: Option<&'a str>,
    tap: &'a str,
    mac: Option<&'a str>,
    #[serde(flatten)]
    tally: Tally,
}

/// Counts per status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub pass: usize,
    pub warn: usize,
    pub fail: usize,
    pub skip: usize,
}

pub fn tally(checks: &[Check]) -> Tally {
    let mut t = Tally::default();
    for c in checks {
        match c.status {
            CheckStatus::Pass => t.pass += 1,
            CheckStatus::Warn => t.warn += 1,
            CheckStatus::Fail => t.fail += 1,
            CheckStatus::Skip => t.skip += 1,
        }
    }
    t
}

/// One check as text: `FAIL  ip_forward         net.ipv4.ip_forward = 0: …` (names padded to
/// the longest, `gateway_neighbour6`) and, when there is one, an indented `fix:` line.
pub fn write_check_text(w: &mut dyn Write, c: &Check) -> io::Result<()> {
    writeln!(
        w,
        "{:<4}  {:<18} {}",
        c.status.name().to_uppercase(),
        c.name,
        c.evidence
    )?;
    if let Some(f) = &c.fix {
        writeln!(w, "{:<24} fix: {f}", "")?;
    }
    Ok(())
}

/// The text report: every check, then a count line.
pub fn write_text(w: &mut dyn Write, checks: &[Check]) -> io::Result<()> {
    for c in checks {
        write_check_text(w, c)?;
    }
    let t = tally(checks);
    writeln!(
        w,
        "{} checks: {} pass, {} warn, {} fail, {} skip",
        checks.len(),
        t.pass,
        t.warn,
        t.fail,
        t.skip
    )
}

/// The JSON form of a run: one `check` line per check, then the `summary` line.
pub fn write_json(w: &mut dyn Write, info: &VmInfo, checks: &[Check]) -> io::Result<()> {
    for c in checks {
        writeln!(w, "{}", check_json(c))?;
    }
    let summary = JsonSummary {
        kind: "summary",
        schema: SCHEMA,
        vm: info.name.as_deref(),
        tap: &info.tap,
        mac: info.mac.as_deref(),
        tally: tally(checks),
    };
    writeln!(w, "{}", serde_json::to_string(&summary)?)
}

/// The text form of a run: a heading naming the VM, then the checks.
pub fn write_report(w: &mut dyn Write, info: &VmInfo, checks: &[Check]) -> io::Result<()> {
    writeln!(w, "doctor: {}", info.heading())?;
    write_text(w, checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_and_text_shapes() {
        let c = Check {
            name: "ip_forward".into(),
            status: CheckStatus::Fail,
            evidence: "net.ipv4.ip_forward = 0".into(),
            fix: Some("sysctl -w net.ipv4.ip_forward=1".into()),
        };
        let v: serde_json::Value = serde_json::from_str(&check_json(&c)).unwrap();
        assert_eq!(v["type"], "check");
        assert_eq!(v["schema"], 1);
        assert_eq!(v["name"], "ip_forward");
        assert_eq!(v["status"], "fail");
        assert_eq!(v["fix"], "sysctl -w net.ipv4.ip_forward=1");
        let ok = Check {
            fix: None,
            status: CheckStatus::Pass,
            ..c.clone()
        };
        let v: serde_json::Value = serde_json::from_str(&check_json(&ok)).unwrap();
        assert!(v.get("fix").is_none());

        let mut buf = Vec::new();
        write_text(&mut buf, &[c, ok]).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(
            text,
            "FAIL  ip_forward         net.ipv4.ip_forward = 0\n\
             \x20                        fix: sysctl -w net.ipv4.ip_forward=1\n\
             PASS  ip_forward         net.ipv4.ip_forward = 0\n\
             2 checks: 1 pass, 0 warn, 1 fail, 0 skip\n"
        );
    }
}
