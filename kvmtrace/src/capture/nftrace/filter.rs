//! Which packets the rule tracer traces: the followed flow, tested as the tracing table's
//! rules test it.

use super::decode::IpHdr;
use crate::model::filter::PacketFilter;
use std::net::IpAddr;

/// Which packets to trace: the followed flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceFilter {
    /// The guest's addresses; none of a destination's version: requests to it are matched by
    /// destination only.
    pub guest_ips: Vec<IpAddr>,
    /// The destinations followed (at most one of each IP version).
    pub dsts: Vec<ipnet::IpNet>,
    /// The protocol (ICMP: ICMPv6 towards an IPv6 destination) and the remote TCP/UDP/SCTP
    /// port (ignored for ICMP).
    pub packets: PacketFilter,
}

impl TraceFilter {
    /// The protocol number followed towards a destination of that version (0: any).
    pub(super) fn proto_for(&self, v6: bool) -> u8 {
        self.packets.proto.number_for(v6)
    }

    /// Whether a packet with these headers belongs to the flow (the same test as the table's
    /// rules).
    pub(super) fn matches(&self, h: &IpHdr) -> bool {
        let proto = self.proto_for(h.src.is_ipv6());
        let proto_ok = proto == 0 || h.proto == proto;
        let port_ok = |p: Option<u16>| match self.packets.port {
            Some(port) if self.packets.proto.has_ports() => {
                matches!(h.proto, 6 | 17 | 132) && p == Some(port)
            }
            _ => true,
        };
        let guest_known = self
            .guest_ips
            .iter()
            .any(|g| g.is_ipv6() == h.src.is_ipv6());
        let from_guest = !guest_known || self.guest_ips.contains(&h.src);
        proto_ok
            && self.dsts.iter().any(|d| {
                let d = d.trunc();
                let request = from_guest && d.contains(&h.dst) && port_ok(h.dport);
                let reply = d.contains(&h.src) && port_ok(h.sport);
                request || reply
            })
    }
}
