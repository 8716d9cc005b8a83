//! `export --format pcapng`: a recorded trace as a capture Wireshark and tshark open.
//!
//! - Each observation point (hook + device: `tap_ingress vnet0`, `nf_exit POSTROUTING up0`,
//!   `drop br0`) is an interface of its own, so `frame.interface_name` filters one place on the
//!   path and one packet appears once per point it was seen at.
//! - Packets are synthesised from the recorded headers: an IPv4 header (addresses, TTL, IP id,
//!   protocol) and the ICMP (type, code, echo id/sequence), TCP (ports, flags, sequence) or UDP
//!   (ports) header, with valid checksums and no payload (none is recorded; the length the
//!   kernel saw is in the comment). Window and acknowledgment number are not recorded: 65535
//!   and 0 are written.
//! - Link type raw IP (LINKTYPE_RAW, 101: IPv4 or IPv6 by the header's version) everywhere:
//!   IPv6 packets are written with an IPv6 header and ICMPv6 in place of ICMP. The MACs the
//!   kernel programs read at a
//!   netfilter hook after routing are still those of the received frame, so an Ethernet header
//!   built from them would mislead; the recorded MACs are in the comment instead.
//! - Each packet has a comment: stage, hook, device, the packet's fate, its flow's verdict
//!   (with the drop reason), the rewrites and the route lookup (`frame.comment` in tshark).
//!   Route lookups have no packet of their own: their result is in the comments.
//! - Timestamps are wall-clock, ns resolution (if_tsresol 9), from the header's clocks.

use crate::model::event::{Point, TraceEvent, Tuple};
use crate::model::{point_label, stage_of, Outcome, Rewrite, Status, Verdict};
use crate::trace::analysis::Analysis;
use crate::trace::Trace;
use anyhow::{anyhow, Result};
use etherparse::{
    Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpNumber, Ipv4Header, Ipv6Header,
    TcpHeader, UdpHeader,
};
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::time::Duration;

/// What was written.
#[derive(Debug, Default)]
pub struct Exported {
    pub packets: usize,
    /// Interface names, in interface id order.
    pub interfaces: Vec<String>,
    /// Events with no packet: route lookups, hops without an IPv4 header.
    pub skipped: usize,
}

/// The hook part of an observation point: `tap_ingress`, `nf_exit POSTROUTING`.
pub fn hook_name(e: &TraceEvent) -> String {
    match e.nf_hook {
        Some(h) if matches!(e.point, Point::NfEnter | Point::NfExit) => {
            format!("{} {}", e.point.name(), h.name())
        }
        _ => e.point.name().to_string(),
    }
}

/// The observation point an event was seen at: hook + device (`nf_exit POSTROUTING up0`).
pub fn interface_name(e: &TraceEvent) -> String {
    if e.device.is_empty() {
        hook_name(e)
    } else {
        format!("{} {}", hook_name(e), e.device)
    }
}

/// A raw IP packet (headers only) built from an event's recorded headers; None without an IP
/// header.
pub fn packet(e: &TraceEvent) -> Option<Vec<u8>> {
    let t = e.tuple?;
    let (src, dst) = match (t.src, t.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (s, d),
        (IpAddr::V6(s), IpAddr::V6(d)) => return packet6(e, &t, s.octets(), d.octets()),
        _ => return None,
    };
    let mut l4: Vec<u8> = Vec::new();
    let mut ip = Ipv4Header::new(0, e.ttl, IpNumber(t.proto), src.octets(), dst.octets()).ok()?;
    ip.identification = e.ip_id;
    // Not recorded: written as a plain, unfragmented datagram.
    ip.dont_fragment = false;
    match t.proto {
        1 => {
            // Echo-like messages carry identifier and sequence in bytes 5-8 (RFC 792).
            let rest = if matches!(e.icmp_type, 0 | 8 | 13 | 14 | 15 | 16 | 17 | 18) {
                let mut b = [0u8; 4];
                b[..2].copy_from_slice(&t.sport.to_be_bytes());
                b[2..].copy_from_slice(&t.dport.to_be_bytes());
                b
            } else {
                [0; 4]
            };
            let h = Icmpv4Header::with_checksum(
                Icmpv4Type::Unknown {
                    type_u8: e.icmp_type,
                    code_u8: e.icmp_code,
                    bytes5to8: rest,
                },
                &[],
            );
            l4.extend_from_slice(&h.to_bytes());
        }
        6 => {
            let mut h = tcp_header(e, &t);
            ip.set_payload_len(h.header_len()).ok()?;
            h.checksum = h.calc_checksum_ipv4(&ip, &[]).ok()?;
            l4.extend_from_slice(&h.to_bytes());
        }
        17 => {
            ip.set_payload_len(UdpHeader::LEN).ok()?;
            let h = UdpHeader::with_ipv4_checksum(t.sport, t.dport, &ip, &[]).ok()?;
            l4.extend_from_slice(&h.to_bytes());
        }
        _ => {}
    }
    ip.set_payload_len(l4.len()).ok()?;
    ip.header_checksum = ip.calc_header_checksum();
    let mut out = Vec::with_capacity(20 + l4.len());
    ip.write(&mut out).ok()?;
    out.extend_from_slice(&l4);
    Some(out)
}

/// The TCP header of an event (ports, sequence, flags; the window is not recorded: 65535).
fn tcp_header(e: &TraceEvent, t: &Tuple) -> TcpHeader {
    let mut h = TcpHeader::new(t.sport, t.dport, e.tcp_seq, 65535);
    let f = e.tcp_flags;
    h.fin = f & 0x01 != 0;
    h.syn = f & 0x02 != 0;
    h.rst = f & 0x04 != 0;
    h.psh = f & 0x08 != 0;
    h.ack = f & 0x10 != 0;
    h.urg = f & 0x20 != 0;
    h.ece = f & 0x40 != 0;
    h.cwr = f & 0x80 != 0;
    h
}

/// The IPv6 form of [`packet`]: an IPv6 header and the ICMPv6, TCP or UDP header.
fn packet6(e: &TraceEvent, t: &Tuple, src: [u8; 16], dst: [u8; 16]) -> Option<Vec<u8>> {
    let mut l4: Vec<u8> = Vec::new();
    let mut ip = Ipv6Header {
        traffic_class: 0,
        flow_label: Default::default(),
        payload_length: 0,
        next_header: IpNumber(t.proto),
        hop_limit: e.ttl,
        source: src,
        destination: dst,
    };
    match t.proto {
        58 => {
            let rest = match e.icmp_type {
                // Echo request / reply: identifier and sequence (RFC 4443).
                128 | 129 => {
                    let mut b = [0u8; 4];
                    b[..2].copy_from_slice(&t.sport.to_be_bytes());
                    b[2..].copy_from_slice(&t.dport.to_be_bytes());
                    b
                }
                2 => e.icmp_mtu.unwrap_or(0).to_be_bytes(),
                _ => [0; 4],
            };
            let ty = Icmpv6Type::Unknown {
                type_u8: e.icmp_type,
                code_u8: e.icmp_code,
                bytes5to8: rest,
            };
            let h = Icmpv6Header::with_checksum(ty, src, dst, &[]).ok()?;
            l4.extend_from_slice(&h.to_bytes());
        }
        6 => {
            let mut h = tcp_header(e, t);
            ip.payload_length = h.header_len() as u16;
            h.checksum = h.calc_checksum_ipv6(&ip, &[]).ok()?;
            l4.extend_from_slice(&h.to_bytes());
        }
        17 => {
            ip.payload_length = UdpHeader::LEN as u16;
            let h = UdpHeader::with_ipv6_checksum(t.sport, t.dport, &ip, &[]).ok()?;
            l4.extend_from_slice(&h.to_bytes());
        }
        _ => {}
    }
    ip.payload_length = l4.len() as u16;
    let mut out = Vec::with_capacity(40 + l4.len());
    ip.write(&mut out).ok()?;
    out.extend_from_slice(&l4);
    Some(out)
}

fn fmt_rewrite(r: &Rewrite) -> String {
    format!("{} {} → {} at {}", r.field, r.from, r.to, r.at)
}

/// `dropped at netfilter FORWARD on br0, reason NETFILTER_DROP`.
pub fn verdict_words(v: &Verdict) -> String {
    let mut s = v.status.name().to_string();
    let mut at = Vec::new();
    if let Some(st) = v.stage {
        at.push(st.name().to_string());
    }
    if let Some(h) = v.hook {
        at.push(h.name().to_string());
    }
    if v.status != Status::Delivered && !at.is_empty() {
        s.push_str(&format!(" at {}", at.join(" ")));
    }
    if let Some(d) = &v.device {
        s.push_str(&format!(" on {d}"));
    }
    if let Some(r) = &v.reason {
        s.push_str(&format!(", reason {r}"));
    }
    s
}

fn fate(o: &Outcome) -> String {
    match o {
        Outcome::Dropped(d) => format!(
            "dropped at {}{} on {} ({})",
            d.stage.name(),
            d.hook.map(|h| format!(" {h}")).unwrap_or_default(),
            d.device,
            d.reason
        ),
        Outcome::LeftHost { device, .. } => format!("left the host on {device}"),
        Outcome::LoopedBack { device, .. } => format!("routed back out of {device}"),
        Outcome::DeliveredToVm { device } => format!("delivered to the VM on {device}"),
        Outcome::DeliveredLocally => "delivered to the host itself (INPUT)".into(),
        Outcome::InFlight { stage, device } => {
            format!("last seen at the {} stage on {device}", stage.name())
        }
    }
}

/// The comment of one packet: where it is, what became of it and of its flow.
pub fn comment(an: &Analysis, journey: usize, hop: usize, e: &TraceEvent) -> String {
    let Some(j) = an.model.journey(journey) else {
        return String::new();
    };
    let outcome = j.outcome();
    // A drop's stage is where the packet died (netfilter, routing), not the device's kind.
    let stage = match (&outcome, e.point) {
        (Outcome::Dropped(site), Point::Drop) => site.stage,
        _ => stage_of(e),
    };
    let mut parts = vec![format!(
        "stage={} hook={} device={}",
        stage.name(),
        hook_name(e),
        if e.device.is_empty() { "-" } else { &e.device }
    )];
    parts.push(format!(
        "{} #{journey} hop {}/{}",
        e.dir,
        hop + 1,
        j.hops.len()
    ));
    if e.point == Point::Drop {
        parts.push(format!(
            "DROPPED HERE reason={} location={}",
            e.reason.as_deref().unwrap_or("?"),
            e.location.as_deref().unwrap_or("?")
        ));
    }
    parts.push(format!("packet: {}", fate(&outcome)));
    match an.flow_of(journey) {
        Some(v) => parts.push(format!("verdict: {} (flow {})", verdict_words(v), v.flow)),
        None => parts.push("verdict: none (the packet is in no judged flow)".into()),
    }
    let rw = j.rewrites();
    let here = point_label(e);
    if rw.is_empty() {
        parts.push("rewrite: none".into());
    } else {
        let list: Vec<String> = rw.iter().map(fmt_rewrite).collect();
        let mark = if matches!(e.point, Point::NfExit) && rw.iter().any(|r| r.at == here) {
            " (here)"
        } else {
            ""
        };
        parts.push(format!("rewrite{mark}: {}", list.join(", ")));
    }
    if let Some(r) = j.route() {
        parts.push(format!(
            "route: table {} → {}{}",
            r.table_name(),
            r.err_name()
                .unwrap_or(if r.device.is_empty() { "?" } else { &r.device }),
            r.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
        ));
    }
    let mut hdr = format!("len={} ttl={} id={}", e.len, e.ttl, e.ip_id);
    if let (Some(s), Some(d)) = (&e.smac, &e.dmac) {
        hdr.push_str(&format!(" mac {s} > {d}"));
    }
    if let Some(inner) = e.icmp_inner_dst {
        hdr.push_str(&format!(" icmp-about {inner}"));
    }
    if let Some(x) = &e.vxlan {
        hdr.push_str(&format!(" outer {}", x.describe()));
    }
    parts.push(hdr);
    parts.join(" | ")
}

/// Writes the pcapng capture of a trace.
pub fn write(t: &Trace, an: &Analysis, out: impl Write) -> Result<Exported> {
    let m = &t.meta;
    let mut shb_comment = format!(
        "kvmtrace trace of {} (tap {}) → {} on host {} (kernel {}), recorded by kvmtrace {} at \
         {}. Packets are synthesised from the recorded headers (no payload is captured): one \
         interface per observation point, a comment per packet.",
        m.vm.as_deref().unwrap_or("a VM"),
        m.tap,
        m.dest,
        m.host,
        m.kernel,
        m.version,
        crate::trace::analysis::iso_utc(m.started_unix_ns)
    );
    for v in &an.verdicts {
        shb_comment.push_str(&format!(
            "\nflow {}: {}: {}",
            v.flow,
            v.status.name().to_uppercase(),
            v.summary
        ));
    }
    let shb = SectionHeaderBlock {
        options: vec![
            SectionHeaderOption::Comment(Cow::Owned(shb_comment)),
            SectionHeaderOption::UserApplication(Cow::Owned(format!(
                "kvmtrace {}",
                env!("CARGO_PKG_VERSION")
            ))),
            SectionHeaderOption::OS(Cow::Owned(format!("Linux {}", m.kernel))),
        ],
        ..Default::default()
    };
    let mut w = PcapNgWriter::with_section_header(out, shb)
        .map_err(|e| anyhow!("writing the pcapng header: {e}"))?;
    let mut ifaces: HashMap<String, u32> = HashMap::new();
    let mut res = Exported::default();
    for ((_, e), at) in t.events.iter().zip(&an.placed) {
        let (Some((j, hop)), Some(data)) = (at, packet(e)) else {
            res.skipped += 1;
            continue;
        };
        if e.point == Point::Fib {
            res.skipped += 1;
            continue;
        }
        let name = interface_name(e);
        let id = match ifaces.get(&name) {
            Some(&id) => id,
            None => {
                let id = res.interfaces.len() as u32;
                let idb = InterfaceDescriptionBlock {
                    linktype: DataLink::RAW,
                    snaplen: 0,
                    options: vec![
                        InterfaceDescriptionOption::IfName(Cow::Owned(name.clone())),
                        InterfaceDescriptionOption::IfDescription(Cow::Owned(format!(
                            "kvmtrace observation point: {} on {} (stage {})",
                            point_label(e),
                            if e.device.is_empty() { "-" } else { &e.device },
                            stage_of(e).name()
                        ))),
                        InterfaceDescriptionOption::IfTsResol(9),
                    ],
                };
                w.write_pcapng_block(idb)
                    .map_err(|e| anyhow!("writing an interface block: {e}"))?;
                ifaces.insert(name.clone(), id);
                res.interfaces.push(name);
                id
            }
        };
        // (The block's write resolution is private: set by the writer from the interface.)
        let mut epb = EnhancedPacketBlock::default();
        epb.interface_id = id;
        epb.timestamp = Duration::from_nanos(m.wall_ns(e.ts_ns, an.t0));
        epb.original_len = data.len() as u32;
        epb.data = Cow::Owned(data);
        epb.options = vec![EnhancedPacketOption::Comment(Cow::Owned(comment(
            an, *j, *hop, e,
        )))];
        w.write_pcapng_block(epb)
            .map_err(|e| anyhow!("writing a packet block: {e}"))?;
        res.packets += 1;
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::{DevKind, Direction, Tuple};
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn ev(proto: u8) -> TraceEvent {
        let base = TraceEvent::for_test(Point::NfExit, Direction::Request, DevKind::Other, "up0");
        TraceEvent {
            ifindex: 2,
            nf_hook: Some(crate::model::event::NfHook::Postrouting),
            tuple: Some(Tuple {
                proto,
                sport: 40000,
                dport: 443,
                ..base.tuple.unwrap()
            }),
            len: 60,
            ttl: 63,
            ip_id: 4242,
            icmp_type: if proto == 1 { 8 } else { 0 },
            tcp_flags: if proto == 6 { 0x12 } else { 0 },
            tcp_seq: 123456,
            ..base
        }
    }

    #[test]
    fn names_of_observation_points() {
        let e = ev(6);
        assert_eq!(interface_name(&e), "nf_exit POSTROUTING up0");
        let mut d = ev(6);
        d.point = Point::Drop;
        d.nf_hook = None;
        d.device = "br0".into();
        assert_eq!(interface_name(&d), "drop br0");
    }

    #[test]
    fn tcp_packet_has_the_recorded_headers_and_valid_checksums() {
        let e = ev(6);
        let p = packet(&e).unwrap();
        let s = SlicedPacket::from_ip(&p).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &s.net else {
            panic!("not IPv4")
        };
        let h = ip.header().to_header();
        assert_eq!(h.time_to_live, 63);
        assert_eq!(h.identification, 4242);
        assert_eq!(h.header_checksum, h.calc_header_checksum());
        assert_eq!(usize::from(h.total_len), p.len());
        let Some(TransportSlice::Tcp(tcp)) = &s.transport else {
            panic!("not TCP")
        };
        assert!(tcp.syn() && tcp.ack() && !tcp.rst());
        assert_eq!(tcp.sequence_number(), 123456);
        assert_eq!((tcp.source_port(), tcp.destination_port()), (40000, 443));
        let th = tcp.to_header();
        assert_eq!(th.checksum, th.calc_checksum_ipv4(&h, &[]).unwrap());
    }

    #[test]
    fn udp_and_icmp_packets() {
        let p = packet(&ev(17)).unwrap();
        assert_eq!(p.len(), 28);
        let s = SlicedPacket::from_ip(&p).unwrap();
        let Some(TransportSlice::Udp(u)) = &s.transport else {
            panic!("not UDP")
        };
        assert_eq!(u.destination_port(), 443);
        let h = u.to_header();
        let Some(NetSlice::Ipv4(ip)) = &s.net else {
            panic!()
        };
        assert_eq!(
            h.checksum,
            h.calc_checksum_ipv4(&ip.header().to_header(), &[]).unwrap()
        );

        let p = packet(&ev(1)).unwrap();
        assert_eq!(p.len(), 28);
        // Echo request: type 8, identifier then sequence, checksum over the header.
        assert_eq!(p[20], 8);
        assert_eq!(&p[24..28], &[0x9c, 0x40, 0x01, 0xbb]);
        let sum = p[20..]
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum::<u32>();
        let folded = (sum & 0xffff) + (sum >> 16);
        assert_eq!(folded, 0xffff, "ICMP checksum must verify");
    }

    #[test]
    fn no_ipv4_header_no_packet() {
        let mut e = ev(6);
        e.tuple = None;
        assert!(packet(&e).is_none());
    }
}
