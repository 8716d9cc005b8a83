//! Robustness: exact event accounting under a flood, observe-only, two instances at once.

mod common;

use common::{field, start};
use kvmtrace_lab::lab::{Firewall, Lab, LabOptions};
use kvmtrace_lab::vm::FakeVm;
use std::time::Duration;

/// Sends `n` echo requests into a FORWARD drop while kvmtrace follows with the given ring size;
/// returns the stats line and the number of hops the run printed.
fn flood(n: u16, ring_kib: &str) -> (serde_json::Value, usize) {
    let lab = Lab::new(LabOptions {
        forward_drop: Some(Firewall::Nftables),
        ..Default::default()
    });
    let running = start(
        &lab,
        &[
            "follow",
            "vnet0",
            "203.0.113.1",
            "--json",
            "--budget",
            "0",
            "--ring-kib",
            ring_kib,
            "--proto",
            "icmp",
            "--duration",
            "6",
        ],
    );
    let mut vm = FakeVm::attach(&lab);
    assert!(vm.resolve_gateway(Duration::from_secs(3)));
    for seq in 0..n {
        vm.send_echo(lab.dest, 0x7777, seq);
    }
    let run = running.wait();
    (run.stats().clone(), run.hops().len())
}

#[test]
fn a_flooded_ring_buffer_loses_events_but_counts_every_one() {
    // Per packet on this path the kernel produces a fixed number of events: measure it on a
    // run that cannot overflow, then flood a 4 KiB ring with many times that.
    let (calm, calm_hops) = flood(20, "4096");
    assert_eq!(calm["lost"], 0, "{calm}");
    let per_packet = calm["events"].as_u64().unwrap();
    assert_eq!(per_packet % 20, 0, "events per packet not constant: {calm}");
    let per_packet = per_packet / 20;
    assert!(per_packet >= 6, "{calm}");
    assert_eq!(calm_hops as u64, calm["events"].as_u64().unwrap());

    let n = 20_000u16;
    let (st, hops) = flood(n, "4");
    let (events, lost, delivered) = (
        st["events"].as_u64().unwrap(),
        st["lost"].as_u64().unwrap(),
        st["delivered"].as_u64().unwrap(),
    );
    assert!(lost > 0, "the flood did not overflow a 4 KiB ring: {st}");
    assert_eq!(delivered, events, "every submitted event is read: {st}");
    assert_eq!(hops as u64, delivered, "every read event is printed");
    assert_eq!(
        events + lost,
        n as u64 * per_packet,
        "produced = delivered + lost: {st}"
    );
}
