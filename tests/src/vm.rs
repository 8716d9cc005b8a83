//! A fake VM: a process that opens the lab's real tap (`IFF_TAP | IFF_NO_PI`) and reads and writes
//! Ethernet frames itself, the way QEMU's tap backend does. Fast and deterministic: it answers ARP
//! for the guest address, sends ICMP echo / TCP SYN / UDP with valid checksums, and recognises the
//! replies, including ICMP errors that quote one of its packets.
//!
//! Every wait is bounded by a caller-given timeout; the fd is non-blocking and waits use `poll(2)`.
//! Replies that arrive while a call waits for something else are kept (up to [`BACKLOG_MAX`]) and
//! handed out by [`FakeVm::poll_replies`].

use std::collections::VecDeque;
use std::net::Ipv4Addr;
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
        FakeVm {
            fd,
            tap,
            guest_mac: lab.guest_mac,
            guest_ip: lab.guest_ip,
            gw_ip: lab.gw_ip,
            gw_mac: None,
            gw_arp_seen: 0,
            ip_id: 1,
            dont_fragment: false,
            backlog: VecDeque::new(),
        }
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
        }
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
                Event::Reply(rx) => {
                    vm.keep(rx.reply);
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
        self.pump(deadline, |_, ev| {
            if let Event::Reply(rx) = ev {
                out.push(rx.reply);
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

    /// Wait until `deadline` for a reply matching `want`; other replies go to the backlog.
    fn wait(&mut self, deadline: Instant, want: impl Fn(&Received) -> bool) -> Option<Reply> {
        let mut found = None;
        self.pump(deadline, |vm, ev| match ev {
            Event::Reply(rx) if want(&rx) => {
                found = Some(rx.reply);
                true
            }
            Event::Reply(rx) => {
                vm.keep(rx.reply);
                false
            }
            Event::GatewayArp => false,
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

    /// Handle one frame: answer ARP for the guest, learn the gateway, decode IPv4 replies to the
    /// guest. Everything else (IPv6, frames for other hosts, non-IP) is ignored.
    fn handle_frame(&mut self, frame: &[u8]) -> Option<Event> {
        if frame.len() < Ethernet2Header::LEN {
            return None;
        }
        let ether_type = EtherType(u16::from_be_bytes([frame[12], frame[13]]));
        if ether_type == EtherType::ARP {
            return self.handle_arp(&frame[Ethernet2Header::LEN..]);
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
    /// An ARP packet from the gateway was seen (and its MAC learned).
    GatewayArp,
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
