//! A fake VM: a process that opens the lab's real tap (`IFF_TAP | IFF_NO_PI`) and reads and writes
//! Ethernet frames itself, the way QEMU's tap backend does. Fast and deterministic: it answers ARP
//! for the guest address, sends ICMP echo / TCP SYN / UDP with valid checksums, and recognises the
//! replies, including ICMP errors that quote one of its packets.
//!
//! IPv6 is the same in its own calls (`*6`, [`Reply6`]): the guest has the lab's `guest_ip6` and
//! the link-local address made from its MAC (EUI-64, RFC 4291 appendix A), answers Neighbour
//! Solicitations for both (RFC 4861 §7.2.4), and resolves its gateway with its own NS. IPv4 and
//! IPv6 replies are kept apart: [`FakeVm::poll_replies`] hands out IPv4 ones only, and
//! [`FakeVm::poll_replies6`] IPv6 ones.
//!
//! Every wait is bounded by a caller-given timeout; the fd is non-blocking and waits use `poll(2)`.
//! Replies that arrive while a call waits for something else are kept (up to [`BACKLOG_MAX`]) and
//! handed out by [`FakeVm::poll_replies`].

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use etherparse::{
    ArpEthIpv4Packet, ArpOperation, ArpPacketSlice, EtherType, Ethernet2Header, IpHeaders,
    IpNumber, Ipv4Header, NetSlice, PacketBuilder, SlicedPacket, TransportSlice,
};

use crate::lab::{in_netns, Lab};

/// Most replies kept for [`FakeVm::poll_replies`] while other calls wait; older ones are dropped.
pub const BACKLOG_MAX: usize = 1024;

/// How long the lazy gateway resolution before the first outbound frame may take.
const LAZY_ARP_TIMEOUT: Duration = Duration::from_secs(3);
/// ARP request retransmit interval while resolving the gateway.
const ARP_RETRY: Duration = Duration::from_millis(200);
/// How long the lazy IPv6 gateway resolution before the first outbound IPv6 frame may take.
const LAZY_NDP_TIMEOUT: Duration = Duration::from_secs(3);
/// Neighbour Solicitation retransmit interval while resolving a neighbour.
const NS_RETRY: Duration = Duration::from_millis(200);
/// Hop limit of Neighbour Discovery messages: receivers drop any other (RFC 4861 §7.1.1).
const NDP_HOP_LIMIT: u8 = 255;

/// ICMPv6 message types used here (RFC 4443, RFC 4861).
pub mod icmp6_type {
    pub const DEST_UNREACHABLE: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const PARAMETER_PROBLEM: u8 = 4;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    pub const ROUTER_SOLICIT: u8 = 133;
    pub const NEIGHBOUR_SOLICIT: u8 = 135;
    pub const NEIGHBOUR_ADVERT: u8 = 136;
}

/// TCP flag bits as in the header's 14th byte (RFC 9293).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// Something addressed to the guest that answers a packet it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    IcmpEchoReply {
        id: u16,
        seq: u16,
        src: Ipv4Addr,
    },
    /// Destination unreachable, source quench, redirect, time exceeded or parameter problem.
    IcmpError {
        icmp_type: u8,
        code: u8,
        src: Ipv4Addr,
    },
    /// Any TCP segment; `flags` is the 14th header byte (see [`tcp_flags`]).
    Tcp {
        flags: u8,
        src: Ipv4Addr,
        sport: u16,
        dport: u16,
    },
    Udp {
        src: Ipv4Addr,
        sport: u16,
        dport: u16,
    },
}

/// Something addressed to one of the guest's IPv6 addresses that answers a packet it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply6 {
    EchoReply {
        id: u16,
        seq: u16,
        src: Ipv6Addr,
    },
    /// An ICMPv6 error (RFC 4443 §3): see [`icmp6_type`] for the types.
    IcmpError {
        icmp_type: u8,
        code: u8,
        src: Ipv6Addr,
        /// The next-hop MTU of a Packet Too Big (type 2); `None` for the other types.
        mtu: Option<u32>,
        /// Destination of the packet the error quotes, when the quote holds its IPv6 header.
        quoted_dst: Option<Ipv6Addr>,
    },
    /// Any TCP segment; `flags` is the 14th header byte (see [`tcp_flags`]).
    Tcp {
        flags: u8,
        src: Ipv6Addr,
        sport: u16,
        dport: u16,
    },
    Udp {
        src: Ipv6Addr,
        sport: u16,
        dport: u16,
    },
}

/// The packet an ICMPv6 error quotes; same idea as [`Quote`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quote6 {
    proto: u8,
    dst: Ipv6Addr,
    a: u16,
    b: u16,
}

#[derive(Debug, Clone)]
struct Received6 {
    reply: Reply6,
    quote: Option<Quote6>,
}

/// The packet an ICMP error quotes: protocol, destination and the first two 16-bit words that
/// identify it (ports for TCP/UDP, echo id and sequence for ICMP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quote {
    proto: u8,
    dst: Ipv4Addr,
    a: u16,
    b: u16,
}

#[derive(Debug, Clone)]
struct Received {
    reply: Reply,
    quote: Option<Quote>,
}

/// A process-side VM on the lab's tap. Dropping it closes the tap fd (the tap loses carrier).
#[derive(Debug)]
pub struct FakeVm {
    fd: OwnedFd,
    tap: String,
    guest_mac: [u8; 6],
    guest_ip: Ipv4Addr,
    gw_ip: Ipv4Addr,
    gw_mac: Option<[u8; 6]>,
    /// Incremented on every ARP packet whose sender is the gateway; resolve_gateway waits for it.
    gw_arp_seen: u64,
    ip_id: u16,
    backlog: VecDeque<Reply>,
    /// Set the IPv4 "don't fragment" bit on packets sent from now on.
    pub dont_fragment: bool,
    /// The guest's global IPv6 address (unspecified: none, see [`FakeVm::with_ip6`]).
    guest_ip6: Ipv6Addr,
    /// fe80::/64 address from the MAC.
    link_local: Ipv6Addr,
    gw_ip6: Ipv6Addr,
    gw6_mac: Option<[u8; 6]>,
    /// MACs learned from Neighbour Advertisements, by target address.
    neighbours6: HashMap<Ipv6Addr, [u8; 6]>,
    backlog6: VecDeque<Reply6>,
    /// Hop limit of the IPv6 packets sent from now on (not of Neighbour Discovery, which is
    /// always 255). 64 by default; 1 makes the gateway answer "time exceeded".
    pub hop_limit: u8,
}

impl FakeVm {
    /// Open `/dev/net/tun` and attach to `lab.tap` inside `lab.hv`. The tun fd must be opened in
    /// the tap's namespace (drivers/net/tun.c: `tun_chr_open` records `current`'s netns and
    /// `tun_set_iff` looks the name up there), so a helper thread joins the namespace, opens it and
    /// hands the fd back; the fd stays bound to that namespace.
    pub fn attach(lab: &Lab) -> FakeVm {
        Self::attach_to(lab, &lab.tap)
    }

    /// [`FakeVm::attach`] to another tap of the lab's hypervisor (see [`Lab::add_tap`]), with
    /// the lab's guest MAC and address.
    pub fn attach_to(lab: &Lab, tap: &str) -> FakeVm {
        let tap = tap.to_string();
        let fd = in_netns(&lab.hv, || open_tap(&tap))
            .and_then(|r| r)
            .unwrap_or_else(|e| panic!("FakeVm::attach to {tap} in netns {}: {e}", lab.hv));
        // Carrier up puts a bridge port through listening/learning (a timer, even with
        // forward_delay 0): a frame sent at once can be dropped by the bridge. Wait, bounded,
        // until the port forwards (3), when the tap is a bridge port at all.
        let state = format!("/sys/class/net/{tap}/brport/state");
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            // Through `ip netns exec`: /sys shows the namespace of whoever mounted it.
            let st = lab
                .hv_cmd("cat")
                .arg(&state)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            match st.as_deref().map(str::trim) {
                Some("3") | None => break,
                Some(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        FakeVm::on_fd(fd, &tap, lab.guest_mac, lab.guest_ip, lab.gw_ip)
            .with_ip6(lab.guest_ip6, lab.gw_ip6)
    }

    /// A fake VM on an already opened tap fd (a macvtap's `/dev/tapN`: [`open_macvtap`]),
    /// with its own addresses. `tap` names the device in messages only.
    pub fn on_fd(
        fd: OwnedFd,
        tap: &str,
        guest_mac: [u8; 6],
        guest_ip: Ipv4Addr,
        gw_ip: Ipv4Addr,
    ) -> FakeVm {
        FakeVm {
            fd,
            tap: tap.to_string(),
            guest_mac,
            guest_ip,
            gw_ip,
            gw_mac: None,
            gw_arp_seen: 0,
            ip_id: 1,
            dont_fragment: false,
            backlog: VecDeque::new(),
            guest_ip6: Ipv6Addr::UNSPECIFIED,
            link_local: link_local_from_mac(guest_mac),
            gw_ip6: Ipv6Addr::UNSPECIFIED,
            gw6_mac: None,
            neighbours6: HashMap::new(),
            backlog6: VecDeque::new(),
            hop_limit: 64,
        }
    }

    /// Give the guest the global IPv6 address `guest_ip6` and the IPv6 gateway `gw_ip6`
    /// ([`FakeVm::attach`] does this with the lab's).
    pub fn with_ip6(mut self, guest_ip6: Ipv6Addr, gw_ip6: Ipv6Addr) -> FakeVm {
        self.guest_ip6 = guest_ip6;
        self.gw_ip6 = gw_ip6;
        self
    }

    /// The guest's global IPv6 address.
    pub fn guest_ip6(&self) -> Ipv6Addr {
        self.guest_ip6
    }

    /// The guest's link-local address, fe80::/64 with the modified EUI-64 of its MAC.
    pub fn link_local(&self) -> Ipv6Addr {
        self.link_local
    }

    /// The tun fd attached to the tap, for handing to another process (a stand-in QEMU that
    /// holds the tap as a real one does).
    pub fn tap_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// The gateway MAC learned so far.
    pub fn gateway_mac(&self) -> Option<[u8; 6]> {
        self.gw_mac
    }

    /// The IPv6 gateway's MAC learned so far (from a Neighbour Advertisement).
    pub fn gateway6_mac(&self) -> Option<[u8; 6]> {
        self.gw6_mac
    }

    /// The MAC a Neighbour Advertisement for `addr` announced, if one arrived.
    pub fn neighbour6(&self, addr: Ipv6Addr) -> Option<[u8; 6]> {
        self.neighbours6.get(&addr).copied()
    }

    /// Send Neighbour Solicitations for the IPv6 gateway (every 200 ms) until its Neighbour
    /// Advertisement arrives or `timeout` passes; learns its MAC. Returns whether it answered
    /// during this call (an earlier learned MAC is kept if it did not).
    pub fn resolve_gateway6(&mut self, timeout: Duration) -> bool {
        let gw = self.require_ip6("resolve_gateway6").1;
        match self.resolve6(gw, timeout) {
            Some(mac) => {
                self.gw6_mac = Some(mac);
                true
            }
            None => false,
        }
    }

    /// Send Neighbour Solicitations for `target` (every 200 ms) until a Neighbour Advertisement
    /// for it arrives or `timeout` passes; returns the MAC it announced.
    pub fn resolve6(&mut self, target: Ipv6Addr, timeout: Duration) -> Option<[u8; 6]> {
        let deadline = Instant::now() + timeout;
        loop {
            self.neighbour_solicit(target);
            let retry_at = (Instant::now() + NS_RETRY).min(deadline);
            let mut answered = false;
            self.pump(retry_at, |vm, ev| match ev {
                Event::Neighbour6(t) if t == target => {
                    answered = true;
                    true
                }
                other => {
                    vm.keep_event(other);
                    false
                }
            });
            if answered {
                return self.neighbours6.get(&target).copied();
            }
            if Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// Send one Neighbour Solicitation for `target` to its solicited-node multicast group, from
    /// the guest's global address (its link-local one when `target` is link-local), with the
    /// guest's MAC as source link-layer address option. Does not wait; an answer is learned
    /// ([`FakeVm::neighbour6`]) whenever frames are next read.
    pub fn neighbour_solicit(&mut self, target: Ipv6Addr) {
        let src = if is_link_local(target) || self.guest_ip6.is_unspecified() {
            self.link_local
        } else {
            self.guest_ip6
        };
        let group = solicited_node(target);
        // RFC 4861 §4.3: 4 reserved bytes, the target, then options; option 1 is the source
        // link-layer address, length in units of 8 bytes.
        let mut body = target.octets().to_vec();
        body.extend_from_slice(&[1, 1]);
        body.extend_from_slice(&self.guest_mac);
        let frame = self.frame6(src, group, multicast_mac(group), NDP_HOP_LIMIT, |b, w| {
            b.icmpv6_raw(icmp6_type::NEIGHBOUR_SOLICIT, 0, [0; 4])
                .write(w, &body)
        });
        self.write_frame(&frame);
    }

    /// Send a Router Solicitation (ICMPv6 133) from the link-local address to all-routers
    /// (ff02::2), as a booting guest does. Does not wait (the lab runs no router advertiser).
    pub fn router_solicit(&mut self) {
        let all_routers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
        let mut body = vec![1u8, 1];
        body.extend_from_slice(&self.guest_mac);
        let frame = self.frame6(
            self.link_local,
            all_routers,
            multicast_mac(all_routers),
            NDP_HOP_LIMIT,
            |b, w| {
                b.icmpv6_raw(icmp6_type::ROUTER_SOLICIT, 0, [0; 4])
                    .write(w, &body)
            },
        );
        self.write_frame(&frame);
    }

    /// Send a DHCPv6 SOLICIT (UDP [fe80::…]:546 → [ff02::1:2]:547) with transaction id `xid`
    /// (its low 24 bits), as a guest without an address would. Does not wait.
    pub fn dhcpv6_solicit(&mut self, xid: u32) {
        // RFC 8415 §8 and §21: msg-type 1, a 3-byte transaction id, then options as (code, length,
        // data): client identifier (1) holding a DUID-LL (type 3, hardware type 1, the MAC),
        // elapsed time (8) of 0, and an IA_NA (3) with IAID 1 and T1 = T2 = 0.
        let mut msg = vec![1u8];
        msg.extend_from_slice(&xid.to_be_bytes()[1..]);
        msg.extend_from_slice(&[0, 1, 0, 10, 0, 3, 0, 1]);
        msg.extend_from_slice(&self.guest_mac);
        msg.extend_from_slice(&[0, 8, 0, 2, 0, 0]);
        msg.extend_from_slice(&[0, 3, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        let servers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
        let frame = self.frame6(
            self.link_local,
            servers,
            multicast_mac(servers),
            1,
            |b, w| b.udp(546, 547).write(w, &msg),
        );
        self.write_frame(&frame);
    }

    /// Send an ICMPv6 echo request and wait for its echo reply or an ICMPv6 error quoting it.
    pub fn ping6(&mut self, dst: Ipv6Addr, id: u16, seq: u16, timeout: Duration) -> Option<Reply6> {
        self.ping6_sized(dst, id, seq, 56, timeout)
    }

    /// Like [`FakeVm::ping6`] with `payload_len` bytes of payload (`ping -s`): with more than
    /// the path MTU allows, the answer is a Packet Too Big ([`Reply6::IcmpError`] type 2, with
    /// `mtu`). IPv6 routers never fragment, so no "don't fragment" switch is needed.
    pub fn ping6_sized(
        &mut self,
        dst: Ipv6Addr,
        id: u16,
        seq: u16,
        payload_len: usize,
        timeout: Duration,
    ) -> Option<Reply6> {
        let deadline = Instant::now() + timeout;
        self.send_echo6_sized(dst, id, seq, payload_len);
        self.wait6(deadline, |rx| match (&rx.reply, rx.quote) {
            (Reply6::EchoReply { id: i, seq: s, src }, _) => *i == id && *s == seq && *src == dst,
            (Reply6::IcmpError { .. }, Some(q)) => {
                q.proto == 58 && q.dst == dst && q.a == id && q.b == seq
            }
            _ => false,
        })
    }

    /// Send an ICMPv6 echo request (56 bytes of payload, like ping) without waiting.
    pub fn send_echo6(&mut self, dst: Ipv6Addr, id: u16, seq: u16) {
        self.send_echo6_sized(dst, id, seq, 56);
    }

    fn send_echo6_sized(&mut self, dst: Ipv6Addr, id: u16, seq: u16, payload_len: usize) {
        let payload: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
        let frame = self.frame6_via_gateway(dst, |b, w| {
            b.icmpv6_echo_request(id, seq).write(w, &payload)
        });
        self.write_frame(&frame);
    }

    /// Send a TCP SYN over IPv6 (no options, window 64240) and wait for a segment of that
    /// connection (SYN-ACK, RST) or an ICMPv6 error quoting it.
    pub fn tcp_syn6(
        &mut self,
        dst: Ipv6Addr,
        dport: u16,
        sport: u16,
        timeout: Duration,
    ) -> Option<Reply6> {
        let deadline = Instant::now() + timeout;
        let isn = 0x1000_0000u32.wrapping_add(u32::from(sport) << 8);
        let frame = self.frame6_via_gateway(dst, |b, w| {
            b.tcp(sport, dport, isn, 64240).syn().write(w, &[])
        });
        self.write_frame(&frame);
        self.wait6(deadline, |rx| match (&rx.reply, rx.quote) {
            (
                Reply6::Tcp {
                    src,
                    sport: s,
                    dport: d,
                    ..
                },
                _,
            ) => *src == dst && *s == dport && *d == sport,
            (Reply6::IcmpError { .. }, Some(q)) => {
                q.proto == 6 && q.dst == dst && q.a == sport && q.b == dport
            }
            _ => false,
        })
    }

    /// Send a UDP datagram over IPv6 and wait for a datagram back on that port pair or an
    /// ICMPv6 error quoting it (port unreachable from a closed port, say).
    pub fn udp6(
        &mut self,
        dst: Ipv6Addr,
        dport: u16,
        sport: u16,
        payload: &[u8],
        timeout: Duration,
    ) -> Option<Reply6> {
        let deadline = Instant::now() + timeout;
        let frame = self.frame6_via_gateway(dst, |b, w| b.udp(sport, dport).write(w, payload));
        self.write_frame(&frame);
        self.wait6(deadline, |rx| match (&rx.reply, rx.quote) {
            (
                Reply6::Udp {
                    src,
                    sport: s,
                    dport: d,
                },
                _,
            ) => *src == dst && *s == dport && *d == sport,
            (Reply6::IcmpError { .. }, Some(q)) => {
                q.proto == 17 && q.dst == dst && q.a == sport && q.b == dport
            }
            _ => false,
        })
    }

    /// IPv6 twin of [`FakeVm::poll_replies`]: every IPv6 reply that arrives within `timeout`,
    /// after those kept from earlier calls. Answers ARP and Neighbour Solicitations meanwhile.
    pub fn poll_replies6(&mut self, timeout: Duration) -> Vec<Reply6> {
        let deadline = Instant::now() + timeout;
        let mut out: Vec<Reply6> = self.backlog6.drain(..).collect();
        self.pump(deadline, |vm, ev| {
            match ev {
                Event::Reply6(rx) => out.push(rx.reply),
                other => vm.keep_event(other),
            }
            false
        });
        out
    }

    /// ARP for the gateway (retransmitting every 200 ms) until an ARP packet from it arrives or
    /// `timeout` passes; learns its MAC. Answers ARP for the guest meanwhile. Returns whether the
    /// gateway answered during this call (an earlier learned MAC is kept if it did not).
    pub fn resolve_gateway(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let seen_before = self.gw_arp_seen;
        loop {
            self.send_arp(
                ArpOperation::REQUEST,
                [0xff; 6],
                [0; 6],
                self.gw_ip.octets(),
            );
            let retry_at = (Instant::now() + ARP_RETRY).min(deadline);
            self.pump(retry_at, |vm, ev| match ev {
                Event::GatewayArp => true,
                other => {
                    vm.keep_event(other);
                    false
                }
            });
            if self.gw_arp_seen != seen_before {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// Send an ICMP echo request and wait for its echo reply or an ICMP error quoting it.
    pub fn ping(&mut self, dst: Ipv4Addr, id: u16, seq: u16, timeout: Duration) -> Option<Reply> {
        let deadline = Instant::now() + timeout;
        self.send_echo(dst, id, seq);
        self.wait(deadline, |rx| match (&rx.reply, rx.quote) {
            (Reply::IcmpEchoReply { id: i, seq: s, src }, _) => {
                *i == id && *s == seq && *src == dst
            }
            (Reply::IcmpError { .. }, Some(q)) => {
                q.proto == 1 && q.dst == dst && q.a == id && q.b == seq
            }
            _ => false,
        })
    }

    /// Like [`FakeVm::ping`] with `payload_len` bytes of payload (`ping -s`).
    pub fn ping_sized(
        &mut self,
        dst: Ipv4Addr,
        id: u16,
        seq: u16,
        payload_len: usize,
        timeout: Duration,
    ) -> Option<Reply> {
        let deadline = Instant::now() + timeout;
        let payload: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
        let frame = self.frame_ipv4(dst, IpNumber::ICMP, payload.len(), |b, w| {
            b.icmpv4_echo_request(id, seq).write(w, &payload)
        });
        self.write_frame(&frame);
        self.wait(deadline, |rx| match (&rx.reply, rx.quote) {
            (Reply::IcmpEchoReply { id: i, seq: s, .. }, _) => *i == id && *s == seq,
            (Reply::IcmpError { .. }, Some(q)) => q.proto == 1 && q.dst == dst && q.a == id,
            _ => false,
        })
    }

    /// Ask (ARP who-has, broadcast) for `target`, as a guest with that gateway setting would.
    /// Does not wait: answers, if any, are ARP and not returned as replies.
    pub fn arp_request(&mut self, target: Ipv4Addr) {
        self.send_arp(ArpOperation::REQUEST, [0xff; 6], [0; 6], target.octets());
    }

    /// Send a DHCP DISCOVER (0.0.0.0:68 → 255.255.255.255:67, broadcast), as a guest without an
    /// address would. Does not wait.
    pub fn dhcp_discover(&mut self, xid: u32) {
        // BOOTP header (RFC 2131): op, htype, hlen, hops, xid, secs, flags, 4 addresses, chaddr,
        // sname, file, then the magic cookie and option 53 (DHCPDISCOVER) and the end option.
        let mut bootp = vec![1u8, 1, 6, 0];
        bootp.extend_from_slice(&xid.to_be_bytes());
        bootp.extend_from_slice(&[0, 0, 0x80, 0]);
        bootp.extend_from_slice(&[0; 16]);
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(&self.guest_mac);
        bootp.extend_from_slice(&chaddr);
        bootp.extend_from_slice(&[0; 192]);
        bootp.extend_from_slice(&[99, 130, 83, 99, 53, 1, 1, 255]);
        let ip = Ipv4Header::new(0, 64, IpNumber::UDP, [0; 4], [255; 4])
            .expect("zero payload length fits");
        let builder = PacketBuilder::ethernet2(self.guest_mac, [0xff; 6])
            .ip(IpHeaders::Ipv4(ip, Default::default()))
            .udp(68, 67);
        let mut frame = Vec::new();
        builder
            .write(&mut frame, &bootp)
            .expect("FakeVm: building a DHCP discover");
        self.write_frame(&frame);
    }

    /// Send an echo request to the gateway MAC `mac` without resolving it (a guest with a stale
    /// ARP entry).
    pub fn send_echo_to_mac(&mut self, dst: Ipv4Addr, id: u16, seq: u16, mac: [u8; 6]) {
        self.gw_mac = Some(mac);
        self.send_echo(dst, id, seq);
    }

    /// Send an ICMP echo request (56 bytes of payload, like ping) without waiting.
    pub fn send_echo(&mut self, dst: Ipv4Addr, id: u16, seq: u16) {
        let payload: Vec<u8> = (0..56u8).collect();
        let frame = self.frame_ipv4(dst, IpNumber::ICMP, payload.len(), |b, w| {
            b.icmpv4_echo_request(id, seq).write(w, &payload)
        });
        self.write_frame(&frame);
    }

    /// Send a bare TCP ACK for a connection that was never opened (conntrack sees it as
    /// INVALID when `nf_conntrack_tcp_loose` is 0). Does not wait.
    pub fn tcp_stray_ack(&mut self, dst: Ipv4Addr, dport: u16, sport: u16) {
        let frame = self.frame_ipv4(dst, IpNumber::TCP, 0, |b, w| {
            b.tcp(sport, dport, 12345, 64240).ack(1).write(w, &[])
        });
        self.write_frame(&frame);
    }

    /// Send a TCP SYN (no options, window 64240) and wait for a segment of that connection
    /// (SYN-ACK, RST) or an ICMP error quoting it.
    pub fn tcp_syn(
        &mut self,
        dst: Ipv4Addr,
        dport: u16,
        sport: u16,
        timeout: Duration,
    ) -> Option<Reply> {
        let deadline = Instant::now() + timeout;
        // Deterministic initial sequence number; different per source port.
        let isn = 0x1000_0000u32.wrapping_add(u32::from(sport) << 8);
        let frame = self.frame_ipv4(dst, IpNumber::TCP, 0, |b, w| {
            b.tcp(sport, dport, isn, 64240).syn().write(w, &[])
        });
        self.write_frame(&frame);
        self.wait(deadline, |rx| match (&rx.reply, rx.quote) {
            (
                Reply::Tcp {
                    src,
                    sport: s,
                    dport: d,
                    ..
                },
                _,
            ) => *src == dst && *s == dport && *d == sport,
            (Reply::IcmpError { .. }, Some(q)) => {
                q.proto == 6 && q.dst == dst && q.a == sport && q.b == dport
            }
            _ => false,
        })
    }

    /// Send a UDP datagram and wait for a datagram back on that port pair or an ICMP error
    /// quoting it (port unreachable from a closed port, say).
    pub fn udp(
        &mut self,
        dst: Ipv4Addr,
        dport: u16,
        sport: u16,
        payload: &[u8],
        timeout: Duration,
    ) -> Option<Reply> {
        let deadline = Instant::now() + timeout;
        let frame = self.frame_ipv4(dst, IpNumber::UDP, payload.len(), |b, w| {
            b.udp(sport, dport).write(w, payload)
        });
        self.write_frame(&frame);
        self.wait(deadline, |rx| match (&rx.reply, rx.quote) {
            (
                Reply::Udp {
                    src,
                    sport: s,
                    dport: d,
                },
                _,
            ) => *src == dst && *s == dport && *d == sport,
            (Reply::IcmpError { .. }, Some(q)) => {
                q.proto == 17 && q.dst == dst && q.a == sport && q.b == dport
            }
            _ => false,
        })
    }

    /// Everything addressed to the guest that arrives within `timeout` (always waits the whole
    /// `timeout`; `Duration::ZERO` just drains what is queued), after the replies kept from earlier
    /// calls. Answers ARP meanwhile.
    pub fn poll_replies(&mut self, timeout: Duration) -> Vec<Reply> {
        let deadline = Instant::now() + timeout;
        let mut out: Vec<Reply> = self.backlog.drain(..).collect();
        self.pump(deadline, |vm, ev| {
            match ev {
                Event::Reply(rx) => out.push(rx.reply),
                other => vm.keep_event(other),
            }
            false
        });
        out
    }

    // ---- internals ----

    /// Keep a reply that nobody waited for, for poll_replies.
    fn keep(&mut self, reply: Reply) {
        if self.backlog.len() >= BACKLOG_MAX {
            self.backlog.pop_front();
        }
        self.backlog.push_back(reply);
    }

    /// Keep an IPv6 reply that nobody waited for, for poll_replies6.
    fn keep6(&mut self, reply: Reply6) {
        if self.backlog6.len() >= BACKLOG_MAX {
            self.backlog6.pop_front();
        }
        self.backlog6.push_back(reply);
    }

    /// Keep the reply an event carries in its backlog; other events need nothing.
    fn keep_event(&mut self, ev: Event) {
        match ev {
            Event::Reply(rx) => self.keep(rx.reply),
            Event::Reply6(rx) => self.keep6(rx.reply),
            Event::GatewayArp | Event::Neighbour6(_) => {}
        }
    }

    /// Wait until `deadline` for a reply matching `want`; other replies go to the backlog.
    fn wait(&mut self, deadline: Instant, want: impl Fn(&Received) -> bool) -> Option<Reply> {
        let mut found = None;
        self.pump(deadline, |vm, ev| match ev {
            Event::Reply(rx) if want(&rx) => {
                found = Some(rx.reply);
                true
            }
            other => {
                vm.keep_event(other);
                false
            }
        });
        found
    }

    /// [`FakeVm::wait`] for IPv6 replies.
    fn wait6(&mut self, deadline: Instant, want: impl Fn(&Received6) -> bool) -> Option<Reply6> {
        let mut found = None;
        self.pump(deadline, |vm, ev| match ev {
            Event::Reply6(rx) if want(&rx) => {
                found = Some(rx.reply);
                true
            }
            other => {
                vm.keep_event(other);
                false
            }
        });
        found
    }

    /// Read and handle frames (answering ARP) until `on_event` returns true or `deadline` passes.
    /// Frames already queued are always read, even with a deadline in the past.
    fn pump(&mut self, deadline: Instant, mut on_event: impl FnMut(&mut FakeVm, Event) -> bool) {
        let mut buf = vec![0u8; 65536];
        loop {
            while let Some(n) = self.read_frame(&mut buf) {
                if let Some(ev) = self.handle_frame(&buf[..n]) {
                    if on_event(self, ev) {
                        return;
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            self.poll_readable(deadline - now);
        }
    }

    /// Handle one frame: answer ARP and Neighbour Solicitations for the guest, learn the
    /// gateways, decode IPv4 and IPv6 replies to the guest. Everything else (frames for other
    /// hosts, non-IP) is ignored.
    fn handle_frame(&mut self, frame: &[u8]) -> Option<Event> {
        if frame.len() < Ethernet2Header::LEN {
            return None;
        }
        let ether_type = EtherType(u16::from_be_bytes([frame[12], frame[13]]));
        if ether_type == EtherType::ARP {
            return self.handle_arp(&frame[Ethernet2Header::LEN..]);
        }
        if ether_type == EtherType::IPV6 {
            return self.handle_ipv6(frame);
        }
        if ether_type != EtherType::IPV4 {
            return None;
        }
        let dst_mac: [u8; 6] = frame[0..6].try_into().expect("6 bytes");
        if dst_mac != self.guest_mac && dst_mac != [0xff; 6] {
            return None;
        }
        let pkt = SlicedPacket::from_ethernet(frame).ok()?;
        let Some(NetSlice::Ipv4(ip)) = &pkt.net else {
            return None;
        };
        let (src, dst) = (ip.header().source_addr(), ip.header().destination_addr());
        if dst != self.guest_ip {
            return None;
        }
        let received = match pkt.transport.as_ref()? {
            TransportSlice::Icmpv4(icmp) => {
                let (icmp_type, code) = (icmp.type_u8(), icmp.code_u8());
                let header = icmp.slice();
                match icmp_type {
                    // Echo reply: id and sequence are bytes 4..8 (RFC 792).
                    0 if header.len() >= 8 => Received {
                        reply: Reply::IcmpEchoReply {
                            id: u16::from_be_bytes([header[4], header[5]]),
                            seq: u16::from_be_bytes([header[6], header[7]]),
                            src,
                        },
                        quote: None,
                    },
                    // Error messages quote the offending IP header + 8 bytes after an 8-byte
                    // ICMP header (RFC 792).
                    3 | 4 | 5 | 11 | 12 => Received {
                        reply: Reply::IcmpError {
                            icmp_type,
                            code,
                            src,
                        },
                        quote: header.get(8..).and_then(parse_quote),
                    },
                    _ => return None,
                }
            }
            TransportSlice::Tcp(tcp) => Received {
                reply: Reply::Tcp {
                    flags: tcp.slice()[13],
                    src,
                    sport: tcp.source_port(),
                    dport: tcp.destination_port(),
                },
                quote: None,
            },
            TransportSlice::Udp(udp) => Received {
                reply: Reply::Udp {
                    src,
                    sport: udp.source_port(),
                    dport: udp.destination_port(),
                },
                quote: None,
            },
            _ => return None,
        };
        Some(Event::Reply(received))
    }

    /// The IPv6 half of [`FakeVm::handle_frame`].
    fn handle_ipv6(&mut self, frame: &[u8]) -> Option<Event> {
        let dst_mac: [u8; 6] = frame[0..6].try_into().expect("6 bytes");
        let src_mac: [u8; 6] = frame[6..12].try_into().expect("6 bytes");
        // Unicast to the guest or any IPv6 multicast (33:33:…, RFC 2464 §7); the address
        // check below narrows multicast down to the groups the guest is in.
        if dst_mac != self.guest_mac && dst_mac[..2] != [0x33, 0x33] {
            return None;
        }
        let pkt = SlicedPacket::from_ethernet(frame).ok()?;
        let Some(NetSlice::Ipv6(ip)) = &pkt.net else {
            return None;
        };
        let header = ip.header();
        let (src, dst) = (header.source_addr(), header.destination_addr());
        let unicast_to_me = self.is_mine6(dst);
        let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        let my_group = dst == all_nodes
            || dst == solicited_node(self.link_local)
            || (!self.guest_ip6.is_unspecified() && dst == solicited_node(self.guest_ip6));
        if !unicast_to_me && !my_group {
            return None;
        }
        let received = match pkt.transport.as_ref()? {
            TransportSlice::Icmpv6(icmp) => {
                let (icmp_type, code) = (icmp.type_u8(), icmp.code_u8());
                let rest = icmp.slice().get(8..).unwrap_or(&[]);
                match icmp_type {
                    icmp6_type::NEIGHBOUR_SOLICIT if header.hop_limit() == NDP_HOP_LIMIT => {
                        self.answer_neighbour_solicit(src, src_mac, rest);
                        return None;
                    }
                    icmp6_type::NEIGHBOUR_ADVERT if header.hop_limit() == NDP_HOP_LIMIT => {
                        return self.learn_neighbour_advert(src_mac, rest);
                    }
                    _ if !unicast_to_me => return None,
                    icmp6_type::ECHO_REPLY => {
                        let b = icmp.bytes5to8();
                        Received6 {
                            reply: Reply6::EchoReply {
                                id: u16::from_be_bytes([b[0], b[1]]),
                                seq: u16::from_be_bytes([b[2], b[3]]),
                                src,
                            },
                            quote: None,
                        }
                    }
                    // Errors quote as much of the offending packet as fits after an 8-byte
                    // header whose second word is the MTU for Packet Too Big (RFC 4443 §3).
                    icmp6_type::DEST_UNREACHABLE
                    | icmp6_type::PACKET_TOO_BIG
                    | icmp6_type::TIME_EXCEEDED
                    | icmp6_type::PARAMETER_PROBLEM => {
                        let quote = parse_quote6(rest);
                        Received6 {
                            reply: Reply6::IcmpError {
                                icmp_type,
                                code,
                                src,
                                mtu: (icmp_type == icmp6_type::PACKET_TOO_BIG)
                                    .then(|| u32::from_be_bytes(icmp.bytes5to8())),
                                quoted_dst: quote.map(|q| q.dst),
                            },
                            quote,
                        }
                    }
                    _ => return None,
                }
            }
            _ if !unicast_to_me => return None,
            TransportSlice::Tcp(tcp) => Received6 {
                reply: Reply6::Tcp {
                    flags: tcp.slice()[13],
                    src,
                    sport: tcp.source_port(),
                    dport: tcp.destination_port(),
                },
                quote: None,
            },
            TransportSlice::Udp(udp) => Received6 {
                reply: Reply6::Udp {
                    src,
                    sport: udp.source_port(),
                    dport: udp.destination_port(),
                },
                quote: None,
            },
            _ => return None,
        };
        Some(Event::Reply6(received))
    }

    /// Whether `addr` is one of the guest's own unicast IPv6 addresses.
    fn is_mine6(&self, addr: Ipv6Addr) -> bool {
        addr == self.link_local || (!self.guest_ip6.is_unspecified() && addr == self.guest_ip6)
    }

    /// Answer a Neighbour Solicitation (its body after the ICMPv6 header: `ns`) for one of the
    /// guest's addresses with a solicited, overriding Neighbour Advertisement (RFC 4861 §7.2.4).
    fn answer_neighbour_solicit(&mut self, src: Ipv6Addr, src_mac: [u8; 6], ns: &[u8]) {
        let Some(target) = ns.get(..16).map(ipv6_from) else {
            return;
        };
        if !self.is_mine6(target) {
            return;
        }
        // The asker's link-layer address from its option 1, else the frame's source.
        let asker_mac = ndp_option_mac(&ns[16..], 1).unwrap_or(src_mac);
        // From the unspecified address (duplicate address detection) the answer goes to
        // all-nodes and is not "solicited".
        let (dst, dst_mac, flags) = if src.is_unspecified() {
            let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
            (all_nodes, multicast_mac(all_nodes), 0x20)
        } else {
            (src, asker_mac, 0x40 | 0x20)
        };
        // Flags R(outer) S(olicited) O(verride) in the first reserved byte; option 2 is the
        // target link-layer address.
        let mut body = target.octets().to_vec();
        body.extend_from_slice(&[2, 1]);
        body.extend_from_slice(&self.guest_mac);
        let frame = self.frame6(target, dst, dst_mac, NDP_HOP_LIMIT, |b, w| {
            b.icmpv6_raw(icmp6_type::NEIGHBOUR_ADVERT, 0, [flags, 0, 0, 0])
                .write(w, &body)
        });
        self.write_frame(&frame);
    }

    /// Learn the MAC a Neighbour Advertisement (body after the ICMPv6 header: `na`) announces.
    fn learn_neighbour_advert(&mut self, src_mac: [u8; 6], na: &[u8]) -> Option<Event> {
        let target = ipv6_from(na.get(..16)?);
        let mac = ndp_option_mac(&na[16..], 2).unwrap_or(src_mac);
        self.neighbours6.insert(target, mac);
        if target == self.gw_ip6 && !self.gw_ip6.is_unspecified() {
            self.gw6_mac = Some(mac);
        }
        Some(Event::Neighbour6(target))
    }

    fn handle_arp(&mut self, body: &[u8]) -> Option<Event> {
        let arp = ArpPacketSlice::from_slice(body)
            .ok()?
            .to_packet()
            .try_eth_ipv4()
            .ok()?;
        if arp.operation == ArpOperation::REQUEST && arp.target_ipv4 == self.guest_ip.octets() {
            self.send_arp(
                ArpOperation::REPLY,
                arp.sender_mac,
                arp.sender_mac,
                arp.sender_ipv4,
            );
        }
        if arp.sender_ipv4 == self.gw_ip.octets() && arp.sender_mac != [0; 6] {
            self.gw_mac = Some(arp.sender_mac);
            self.gw_arp_seen += 1;
            return Some(Event::GatewayArp);
        }
        None
    }

    /// Send an ARP packet from the guest. `eth_dst` is the frame destination, `target_mac` and
    /// `target_ip` go into the ARP body.
    fn send_arp(
        &mut self,
        operation: ArpOperation,
        eth_dst: [u8; 6],
        target_mac: [u8; 6],
        target_ip: [u8; 4],
    ) {
        let eth = Ethernet2Header {
            source: self.guest_mac,
            destination: eth_dst,
            ether_type: EtherType::ARP,
        };
        let arp = ArpEthIpv4Packet {
            operation,
            sender_mac: self.guest_mac,
            sender_ipv4: self.guest_ip.octets(),
            target_mac,
            target_ipv4: target_ip,
        };
        let mut frame = Vec::with_capacity(Ethernet2Header::LEN + ArpEthIpv4Packet::LEN);
        frame.extend_from_slice(&eth.to_bytes());
        frame.extend_from_slice(&arp.to_bytes());
        self.write_frame(&frame);
    }

    /// Build guest → `dst` Ethernet + IPv4 (TTL 64, DF clear, fresh id) and let `write` add the
    /// transport header and payload; etherparse fills in lengths and all checksums.
    fn frame_ipv4(
        &mut self,
        dst: Ipv4Addr,
        proto: IpNumber,
        payload_len: usize,
        write: impl FnOnce(
            etherparse::PacketBuilderStep<IpHeaders>,
            &mut Vec<u8>,
        ) -> Result<(), etherparse::err::packet::BuildWriteError>,
    ) -> Vec<u8> {
        let gw_mac = self.gateway_mac_or_resolve();
        let mut ip = Ipv4Header::new(0, 64, proto, self.guest_ip.octets(), dst.octets())
            .expect("zero payload length fits");
        ip.dont_fragment = self.dont_fragment;
        ip.identification = self.ip_id;
        self.ip_id = self.ip_id.wrapping_add(1);
        let builder = PacketBuilder::ethernet2(self.guest_mac, gw_mac)
            .ip(IpHeaders::Ipv4(ip, Default::default()));
        let mut frame = Vec::with_capacity(14 + 20 + 20 + payload_len);
        write(builder, &mut frame)
            .unwrap_or_else(|e| panic!("FakeVm: cannot build a packet to {dst}: {e:?}"));
        frame
    }

    /// Build an Ethernet + IPv6 frame `src` → `dst` to `dst_mac`; `write` adds the transport
    /// header and payload, etherparse fills in lengths and the checksum over the IPv6
    /// pseudo-header (RFC 8200 §8.1).
    fn frame6(
        &mut self,
        src: Ipv6Addr,
        dst: Ipv6Addr,
        dst_mac: [u8; 6],
        hop_limit: u8,
        write: impl FnOnce(
            etherparse::PacketBuilderStep<IpHeaders>,
            &mut Vec<u8>,
        ) -> Result<(), etherparse::err::packet::BuildWriteError>,
    ) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2(self.guest_mac, dst_mac).ipv6(
            src.octets(),
            dst.octets(),
            hop_limit,
        );
        let mut frame = Vec::with_capacity(14 + 40 + 64);
        write(builder, &mut frame)
            .unwrap_or_else(|e| panic!("FakeVm: cannot build a packet to {dst}: {e:?}"));
        frame
    }

    /// guest_ip6 → `dst` through the IPv6 gateway (resolved on first use), with `hop_limit`.
    fn frame6_via_gateway(
        &mut self,
        dst: Ipv6Addr,
        write: impl FnOnce(
            etherparse::PacketBuilderStep<IpHeaders>,
            &mut Vec<u8>,
        ) -> Result<(), etherparse::err::packet::BuildWriteError>,
    ) -> Vec<u8> {
        let (src, _) = self.require_ip6("sending IPv6");
        let gw_mac = self.gateway6_mac_or_resolve();
        let hop_limit = self.hop_limit;
        self.frame6(src, dst, gw_mac, hop_limit, write)
    }

    /// The guest's global IPv6 address and gateway; panics naming `what` without them.
    fn require_ip6(&self, what: &str) -> (Ipv6Addr, Ipv6Addr) {
        if self.guest_ip6.is_unspecified() || self.gw_ip6.is_unspecified() {
            panic!(
                "FakeVm on {}: {what} needs an IPv6 address and gateway (FakeVm::with_ip6)",
                self.tap
            );
        }
        (self.guest_ip6, self.gw_ip6)
    }

    fn gateway6_mac_or_resolve(&mut self) -> [u8; 6] {
        if let Some(mac) = self.gw6_mac {
            return mac;
        }
        if !self.resolve_gateway6(LAZY_NDP_TIMEOUT) {
            panic!(
                "FakeVm on {}: gateway {} did not answer Neighbour Solicitation within {:?}",
                self.tap, self.gw_ip6, LAZY_NDP_TIMEOUT
            );
        }
        self.gw6_mac.expect("resolve_gateway6 learned it")
    }

    fn gateway_mac_or_resolve(&mut self) -> [u8; 6] {
        if let Some(mac) = self.gw_mac {
            return mac;
        }
        if !self.resolve_gateway(LAZY_ARP_TIMEOUT) {
            panic!(
                "FakeVm on {}: gateway {} did not answer ARP within {:?}",
                self.tap, self.gw_ip, LAZY_ARP_TIMEOUT
            );
        }
        self.gw_mac.expect("resolve_gateway learned it")
    }

    /// One frame from the tap, or None if none is queued.
    fn read_frame(&self, buf: &mut [u8]) -> Option<usize> {
        loop {
            // SAFETY: buf is valid for buf.len() bytes; the fd is ours.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Some(n as usize);
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return None,
                _ => panic!("FakeVm: read from tap {}: {err}", self.tap),
            }
        }
    }

    fn write_frame(&self, frame: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            // SAFETY: frame is valid for frame.len() bytes; the fd is ours.
            let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
            if n >= 0 {
                assert_eq!(
                    n as usize,
                    frame.len(),
                    "FakeVm: short write to tap {}",
                    self.tap
                );
                return;
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                _ => panic!(
                    "FakeVm: write of a {}-byte frame to tap {}: {err} (is the tap up?)",
                    frame.len(),
                    self.tap
                ),
            }
        }
    }

    /// Block until the fd is readable or `timeout` passes.
    fn poll_readable(&self, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // Round up so a sub-millisecond remainder still sleeps instead of spinning.
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINTR) {
                panic!("FakeVm: poll on tap {}: {err}", self.tap);
            }
        }
    }
}

enum Event {
    Reply(Received),
    Reply6(Received6),
    /// An ARP packet from the gateway was seen (and its MAC learned).
    GatewayArp,
    /// A Neighbour Advertisement for this target was seen (and its MAC learned).
    Neighbour6(Ipv6Addr),
}

/// fe80::/64 with the modified EUI-64 interface id of `mac` (RFC 4291 appendix A: ff:fe in the
/// middle, the universal/local bit flipped).
pub fn link_local_from_mac(mac: [u8; 6]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8] = mac[0] ^ 0x02;
    a[9] = mac[1];
    a[10] = mac[2];
    a[11] = 0xff;
    a[12] = 0xfe;
    a[13] = mac[3];
    a[14] = mac[4];
    a[15] = mac[5];
    Ipv6Addr::from(a)
}

/// The solicited-node multicast group of `addr`: ff02::1:ff00:0/104 plus its low 24 bits
/// (RFC 4291 §2.7.1).
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    let mut a = [0u8; 16];
    a[0] = 0xff;
    a[1] = 0x02;
    a[11] = 0x01;
    a[12] = 0xff;
    a[13..].copy_from_slice(&o[13..]);
    Ipv6Addr::from(a)
}

/// The Ethernet address of an IPv6 multicast group: 33:33 and its low 32 bits (RFC 2464 §7).
fn multicast_mac(group: Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

fn is_link_local(addr: Ipv6Addr) -> bool {
    addr.segments()[0] & 0xffc0 == 0xfe80
}

fn ipv6_from(bytes: &[u8]) -> Ipv6Addr {
    let a: [u8; 16] = bytes.try_into().expect("16 bytes");
    Ipv6Addr::from(a)
}

/// The MAC in the first Neighbour Discovery option of type `kind` (1 source, 2 target
/// link-layer address; RFC 4861 §4.6.1). Options are (type, length in 8-byte units, data).
fn ndp_option_mac(mut options: &[u8], kind: u8) -> Option<[u8; 6]> {
    while options.len() >= 8 {
        let len = usize::from(options[1]) * 8;
        if len == 0 || len > options.len() {
            return None;
        }
        if options[0] == kind {
            return options[2..8].try_into().ok();
        }
        options = &options[len..];
    }
    None
}

/// Parse the quoted IPv6 header + the start of its payload inside an ICMPv6 error. Extension
/// headers are not walked: the lab's packets have none.
fn parse_quote6(q: &[u8]) -> Option<Quote6> {
    if q.len() < 40 || q[0] >> 4 != 6 {
        return None;
    }
    let proto = q[6];
    let dst = ipv6_from(&q[24..40]);
    let (a, b) = match q.get(40..48) {
        Some(l4) => {
            let word = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
            match proto {
                // ICMPv6 echo: identifier and sequence number.
                58 => (word(4), word(6)),
                // TCP / UDP: source and destination port.
                _ => (word(0), word(2)),
            }
        }
        None => (0, 0),
    };
    Some(Quote6 { proto, dst, a, b })
}

/// Parse the quoted IPv4 header + first 8 bytes inside an ICMP error.
fn parse_quote(q: &[u8]) -> Option<Quote> {
    if q.len() < 20 || q[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(q[0] & 0x0f) * 4;
    let l4 = q.get(ihl..ihl + 8)?;
    let proto = q[9];
    let dst = Ipv4Addr::new(q[16], q[17], q[18], q[19]);
    let word = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
    let (a, b) = match proto {
        // ICMP echo: identifier and sequence number.
        1 => (word(4), word(6)),
        // TCP / UDP: source and destination port.
        _ => (word(0), word(2)),
    };
    Some(Quote { proto, dst, a, b })
}

/// Opens a macvtap's character device (`/dev/tapN`, or a node of the same major:minor made
/// elsewhere) non-blocking, as plain Ethernet frames: the driver starts it with
/// `IFF_VNET_HDR`, which `TUNSETIFF` with `IFF_TAP | IFF_NO_PI` turns off
/// (drivers/net/tap.c, `tap_ioctl`).
pub fn open_macvtap(path: &std::path::Path) -> Result<OwnedFd, String> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} holds a NUL byte", path.display()))?;
    // SAFETY: NUL-terminated path.
    let raw = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(format!(
            "open {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: raw is a freshly opened fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which we pass.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
    if rc < 0 {
        return Err(format!(
            "ioctl(TUNSETIFF) on {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(fd)
}

/// Opens the persistent tap `tap` of the network namespace `ns` as a VM's tun fd (the fd
/// must be opened in the tap's namespace, see [`FakeVm::attach`]), for [`FakeVm::on_fd`].
pub fn open_tap_in(ns: &str, tap: &str) -> Result<OwnedFd, String> {
    crate::lab::in_netns(ns, || open_tap(tap)).and_then(|r| r)
}

/// Open /dev/net/tun non-blocking and attach it to the existing tap `name` (in the calling
/// thread's network namespace).
fn open_tap(name: &str) -> Result<OwnedFd, String> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(format!("tap name {name:?} too long"));
    }
    // SAFETY: NUL-terminated path literal.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(format!(
            "open /dev/net/tun: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: raw is a freshly opened fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which we pass.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
    if rc < 0 {
        return Err(format!(
            "ioctl(TUNSETIFF, {name}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake VM on /dev/null: enough to build frames, never to send them.
    fn offline_vm() -> FakeVm {
        let file = std::fs::File::open("/dev/null").expect("/dev/null");
        FakeVm::on_fd(
            OwnedFd::from(file),
            "offline",
            [0x52, 0x54, 0x00, 0x4b, 0x54, 0x02],
            Ipv4Addr::new(10, 77, 0, 2),
            Ipv4Addr::new(10, 77, 0, 1),
        )
        .with_ip6("fd00:77::2".parse().unwrap(), "fd00:77::1".parse().unwrap())
    }

    /// RFC 8200 §8.1 written out independently of etherparse: the one's-complement sum over
    /// source, destination, upper-layer length, next header and the message itself, checksum
    /// field included, is all ones for a correct checksum.
    fn pseudo_header_sum_ok(frame: &[u8]) -> bool {
        let ip = &frame[14..];
        let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        let next_header = ip[6];
        let upper = &ip[40..40 + payload_len];
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&ip[8..40]);
        bytes.extend_from_slice(&(payload_len as u32).to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, next_header]);
        bytes.extend_from_slice(upper);
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum == 0xffff
    }

    #[test]
    fn addresses_from_the_mac_and_groups() {
        let mac = [0x52, 0x54, 0x00, 0x4b, 0x54, 0x02];
        assert_eq!(
            link_local_from_mac(mac),
            "fe80::5054:ff:fe4b:5402".parse::<Ipv6Addr>().unwrap()
        );
        let gw: Ipv6Addr = "fd00:77::1".parse().unwrap();
        assert_eq!(
            solicited_node(gw),
            "ff02::1:ff00:1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            multicast_mac(solicited_node(gw)),
            [0x33, 0x33, 0xff, 0, 0, 1]
        );
        assert!(is_link_local(link_local_from_mac(mac)));
        assert!(!is_link_local(gw));
    }

    #[test]
    fn ipv6_checksums_cover_the_pseudo_header() {
        let mut vm = offline_vm();
        vm.gw6_mac = Some([0x02, 0, 0, 0, 0, 1]);
        let dst: Ipv6Addr = "2001:db8:ffff::1".parse().unwrap();
        let echo =
            vm.frame6_via_gateway(dst, |b, w| b.icmpv6_echo_request(7, 9).write(w, &[1, 2, 3]));
        let syn = vm.frame6_via_gateway(dst, |b, w| b.tcp(40000, 80, 1, 64240).syn().write(w, &[]));
        let udp = vm.frame6_via_gateway(dst, |b, w| b.udp(40000, 9).write(w, b"odd"));
        for (what, frame) in [("echo", &echo), ("syn", &syn), ("udp", &udp)] {
            assert!(pseudo_header_sum_ok(frame), "{what}: {frame:02x?}");
            let mut broken = frame.clone();
            // Flip a bit of the source address: the sum must notice (it covers the header).
            broken[14 + 8 + 15] ^= 1;
            assert!(!pseudo_header_sum_ok(&broken), "{what}: check is blind");
        }
        assert_eq!(echo[14 + 40], icmp6_type::ECHO_REQUEST);
        assert_eq!(echo[14 + 7], 64, "hop limit");
    }

    /// A fake VM on one end of a packet socketpair; the test plays the host on the other.
    fn vm_on_socketpair() -> (FakeVm, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two fds into the array we pass.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
        // SAFETY: both fds are fresh and owned by nobody else.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let vm = FakeVm::on_fd(
            ours,
            "pair",
            [0x52, 0x54, 0x00, 0x4b, 0x54, 0x02],
            Ipv4Addr::new(10, 77, 0, 2),
            Ipv4Addr::new(10, 77, 0, 1),
        )
        .with_ip6("fd00:77::2".parse().unwrap(), "fd00:77::1".parse().unwrap());
        (vm, theirs)
    }

    #[test]
    fn neighbour_solicitations_for_the_guest_get_an_advertisement() {
        let (mut vm, host) = vm_on_socketpair();
        let host_mac = [0x02, 0, 0, 0, 0, 1];
        let host_ip: Ipv6Addr = "fd00:77::1".parse().unwrap();
        let target = vm.guest_ip6();
        let group = solicited_node(target);
        let mut ns = target.octets().to_vec();
        ns.extend_from_slice(&[1, 1]);
        ns.extend_from_slice(&host_mac);
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(host_mac, multicast_mac(group))
            .ipv6(host_ip.octets(), group.octets(), NDP_HOP_LIMIT)
            .icmpv6_raw(icmp6_type::NEIGHBOUR_SOLICIT, 0, [0; 4])
            .write(&mut frame, &ns)
            .unwrap();
        // SAFETY: frame is valid for its length; host is our fd.
        let n = unsafe { libc::write(host.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        assert_eq!(n as usize, frame.len());

        assert!(vm.poll_replies6(Duration::ZERO).is_empty());
        let mut buf = [0u8; 2048];
        // SAFETY: buf is valid for its length; host is our fd.
        let n = unsafe { libc::read(host.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert!(
            n > 0,
            "no advertisement: {}",
            std::io::Error::last_os_error()
        );
        let na = &buf[..n as usize];
        assert_eq!(na[..6], host_mac, "to the asker's link-layer address");
        assert!(pseudo_header_sum_ok(na), "{na:02x?}");
        let ip = &na[14..];
        assert_eq!(ip[7], NDP_HOP_LIMIT);
        assert_eq!(ipv6_from(&ip[8..24]), target, "from the target address");
        assert_eq!(ipv6_from(&ip[24..40]), host_ip, "to the asker");
        let icmp = &ip[40..];
        assert_eq!(icmp[0], icmp6_type::NEIGHBOUR_ADVERT);
        assert_eq!(icmp[4], 0x60, "solicited and override, not router");
        assert_eq!(ipv6_from(&icmp[8..24]), target);
        assert_eq!(ndp_option_mac(&icmp[24..], 2), Some(vm.guest_mac));

        // A solicitation for someone else's address gets nothing.
        let other: Ipv6Addr = "fd00:77::3".parse().unwrap();
        let mut ns = other.octets().to_vec();
        ns.extend_from_slice(&[1, 1]);
        ns.extend_from_slice(&host_mac);
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(host_mac, multicast_mac(solicited_node(other)))
            .ipv6(
                host_ip.octets(),
                solicited_node(other).octets(),
                NDP_HOP_LIMIT,
            )
            .icmpv6_raw(icmp6_type::NEIGHBOUR_SOLICIT, 0, [0; 4])
            .write(&mut frame, &ns)
            .unwrap();
        // SAFETY: as above.
        unsafe { libc::write(host.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        assert!(vm.poll_replies6(Duration::ZERO).is_empty());
        // SAFETY: as above.
        let n = unsafe { libc::read(host.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert!(n < 0, "answered a solicitation for {other}");

        // Learning from an advertisement: the host's NA for its own address.
        let mut body = host_ip.octets().to_vec();
        body.extend_from_slice(&[2, 1]);
        body.extend_from_slice(&host_mac);
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(host_mac, vm.guest_mac)
            .ipv6(host_ip.octets(), target.octets(), NDP_HOP_LIMIT)
            .icmpv6_raw(icmp6_type::NEIGHBOUR_ADVERT, 0, [0xe0, 0, 0, 0])
            .write(&mut frame, &body)
            .unwrap();
        // SAFETY: as above.
        unsafe { libc::write(host.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        vm.poll_replies6(Duration::ZERO);
        assert_eq!(vm.neighbour6(host_ip), Some(host_mac));
        assert_eq!(vm.gateway6_mac(), Some(host_mac));
    }

    #[test]
    fn quotes_of_icmpv6_errors() {
        let mut vm = offline_vm();
        vm.gw6_mac = Some([0x02, 0, 0, 0, 0, 1]);
        let dst: Ipv6Addr = "2001:db8:ffff::1".parse().unwrap();
        let echo = vm.frame6_via_gateway(dst, |b, w| b.icmpv6_echo_request(7, 9).write(w, &[]));
        let q = parse_quote6(&echo[14..]).expect("a quote");
        assert_eq!((q.proto, q.dst, q.a, q.b), (58, dst, 7, 9));
        let udp = vm.frame6_via_gateway(dst, |b, w| b.udp(40000, 9).write(w, &[]));
        let q = parse_quote6(&udp[14..]).expect("a quote");
        assert_eq!((q.proto, q.a, q.b), (17, 40000, 9));
        assert_eq!(parse_quote6(&udp[14..30]), None, "too short");
    }
}
