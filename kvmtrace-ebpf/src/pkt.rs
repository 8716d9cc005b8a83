//! One packet as the programs see it: its addresses ([`Addr`], two words), its parsed headers
//! ([`Pkt`]), and the per-CPU room it is read into and parsed in ([`Scratch`]). Data and
//! parsing only; whether a packet is the followed flow's is `filter`'s question.

use crate::{follows, SCRATCH};
use kvmtrace_common::{FAMILY_V4, FAMILY_V6, FOLLOW_V4, FOLLOW_V6};

/// Headers of one packet, as parsed at a hook. Addresses are 16 bytes; an IPv4 address fills
/// the first 4 (`family`). Whole words first and a size of 11 words: [`Pkt::clear`] zeroes it
/// word by word.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub struct Pkt {
    pub saddr: Addr,
    pub daddr: Addr,
    /// ICMP error: destination and source of the quoted (inner) packet.
    pub inner_daddr: Addr,
    pub inner_saddr: Addr,
    pub tcp_seq: u32,
    /// ICMP "fragmentation needed" / ICMPv6 "packet too big": the announced MTU.
    pub mtu: u32,
    pub ip_id: u16,
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub proto: u8,
    pub ttl: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub _pad: u8,
}

/// A packet with nothing read: the event of a followed skb whose header cannot be read.
pub static EMPTY_PKT: Pkt = Pkt::empty();

impl Pkt {
    pub const fn empty() -> Self {
        Pkt {
            saddr: [0; 2],
            daddr: [0; 2],
            inner_daddr: [0; 2],
            inner_saddr: [0; 2],
            tcp_seq: 0,
            mtu: 0,
            ip_id: 0,
            sport: 0,
            dport: 0,
            family: 0,
            proto: 0,
            ttl: 0,
            icmp_type: 0,
            icmp_code: 0,
            _pad: 0,
        }
    }

    /// Zeroes every field in place with word stores (an assignment of `Pkt::empty()` becomes
    /// a byte-looping `memset`).
    #[inline(always)]
    pub fn clear(&mut self) {
        zero_words::<11>(self as *mut Pkt as *mut u64);
    }

    /// ICMP for IPv4, ICMPv6 for IPv6.
    #[inline(always)]
    pub fn is_icmp(&self) -> bool {
        self.proto == ICMP || (v6() && self.proto == ICMPV6)
    }

    /// An echo request (ICMP 8, ICMPv6 128).
    #[inline(always)]
    pub fn is_echo_request(&self) -> bool {
        (self.proto == ICMP && self.icmp_type == 8)
            || (v6() && self.proto == ICMPV6 && self.icmp_type == 128)
    }

    /// An ICMP error quoting the packet it is about: IPv4 unreachable, time exceeded,
    /// parameter problem; ICMPv6 unreachable, packet too big, time exceeded, parameter problem.
    #[inline(always)]
    pub fn is_icmp_error(&self) -> bool {
        (self.proto == ICMP
            && (self.icmp_type == 3 || self.icmp_type == 11 || self.icmp_type == 12))
            || (v6() && self.proto == ICMPV6 && self.icmp_type >= 1 && self.icmp_type <= 4)
    }
}

/// Whether IPv6 is followed. Every test of a packet's version or of ICMPv6 asks this first:
/// the verifier knows it (a load-time constant), so an IPv4-only run has one path where a
/// test of the packet's own field would split each check in two.
#[inline(always)]
pub fn v6() -> bool {
    follows(FOLLOW_V6)
}

/// Whether a packet of `family` is to be treated as IPv6: only when IPv6 is followed, and
/// always when IPv4 is not (both are load-time constants: a run following one version has one
/// path here, and the verifier walks only that version's code).
#[inline(always)]
pub fn is_v6(family: u8) -> bool {
    v6() && (!follows(FOLLOW_V4) || family == FAMILY_V6)
}

pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

/// Zeroes `N` words at `p` with volatile stores, written out one by one (no loop for the
/// verifier to walk, and nothing the compiler can merge into a `memset` call, which on BPF is
/// a byte loop).
#[inline(always)]
pub fn zero_words<const N: usize>(p: *mut u64) {
    macro_rules! z {
        ($($i:literal)*) => {$(
            if $i < N {
                // SAFETY: callers pass N writable, 8-aligned words.
                unsafe { core::ptr::write_volatile(p.add($i), 0) };
            }
        )*};
    }
    z!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31);
    const { assert!(N <= 32) };
}

/// An IP address as two words in memory order (the 16 bytes of an IPv6 address; an IPv4
/// address in the first 4). Words, not bytes: zeroing or copying a byte array here becomes a
/// call to a byte-looping `memset`/`memcpy`, which the verifier walks byte by byte.
pub type Addr = [u64; 2];

/// An IPv4 address in the 16-byte form (first 4 bytes).
#[inline(always)]
pub fn a4(a: [u8; 4]) -> Addr {
    [u32::from_ne_bytes(a) as u64, 0]
}

/// The wire form of an address (the event's and the maps' `[u8; 16]`).
#[inline(always)]
pub fn bytes(a: Addr) -> [u8; 16] {
    // SAFETY: same size, every bit pattern valid.
    unsafe { core::mem::transmute::<Addr, [u8; 16]>(a) }
}

/// An address from its wire form.
#[inline(always)]
pub fn addr(b: &[u8; 16]) -> Addr {
    // SAFETY: 16 readable bytes; unaligned read.
    unsafe { core::ptr::read_unaligned(b.as_ptr() as *const Addr) }
}

/// The address at byte `at` of `b` (16 bytes, bounds from the constant callers).
#[inline(always)]
pub(crate) fn b16(b: &[u8], at: usize) -> Addr {
    let w0 = u64::from_ne_bytes([
        b[at],
        b[at + 1],
        b[at + 2],
        b[at + 3],
        b[at + 4],
        b[at + 5],
        b[at + 6],
        b[at + 7],
    ]);
    let w1 = u64::from_ne_bytes([
        b[at + 8],
        b[at + 9],
        b[at + 10],
        b[at + 11],
        b[at + 12],
        b[at + 13],
        b[at + 14],
        b[at + 15],
    ]);
    [w0, w1]
}

/// The address at byte `at` (a multiple of 8) of a scratch buffer (8-aligned: `Scratch`'s
/// `ip` and `l4` are): two word loads instead of sixteen byte loads.
#[inline(always)]
fn w16(b: &[u8], at: usize) -> Addr {
    let p = b[at..at + 16].as_ptr() as *const u64;
    // SAFETY: 16 readable bytes at an 8-aligned address (checked by the slice above).
    unsafe { [*p, *p.add(1)] }
}

/// The first 4 bytes of an address (IPv4).
#[inline(always)]
pub(crate) fn v4_bytes(a: &Addr) -> [u8; 4] {
    (a[0] as u32).to_ne_bytes()
}

/// Per-CPU room for one packet: its raw IP header and the start of its payload, and the
/// fields parsed from them. In a map, not on the stack: with 16-byte addresses a packet and
/// its raw bytes do not fit the 512-byte BPF stack next to the rest of a program. (A program
/// interrupted on its CPU by another of ours, a softirq receive inside a process-context
/// transmit, could see its packet overwritten: at worst one event describes another packet.)
#[repr(C, align(8))]
pub struct Scratch {
    /// IPv4: the first 20 bytes; IPv6: the 40-byte fixed header.
    pub ip: [u8; 40],
    /// The transport header's start (IPv4 parses the first 28 bytes, IPv6 all 48).
    pub l4: [u8; 48],
    pub pkt: Pkt,
    /// The outer packet of a VXLAN-encapsulated one (written by `vxlan::*_inner`, read by
    /// `emit` for an event flagged `EV_FLAG_VXLAN` in the same program run): VNI and outer
    /// IPv4 addresses.
    pub vx_vni: u32,
    pub vx_saddr: [u8; 4],
    pub vx_daddr: [u8; 4],
}

impl Scratch {
    /// Zeroes `l4` (a packet shorter than it leaves the rest as zeros, not another packet's
    /// bytes) with six word stores: an array assignment would become a byte loop.
    #[inline(always)]
    pub fn clear_l4(&mut self) {
        let w = self.l4.as_mut_ptr() as *mut u64;
        // SAFETY: `l4` is 48 bytes at offset 40 of an 8-aligned struct: six aligned words.
        unsafe {
            core::ptr::write_volatile(w, 0);
            core::ptr::write_volatile(w.add(1), 0);
            core::ptr::write_volatile(w.add(2), 0);
            core::ptr::write_volatile(w.add(3), 0);
            core::ptr::write_volatile(w.add(4), 0);
            core::ptr::write_volatile(w.add(5), 0);
        }
    }
}

/// This CPU's [`Scratch`].
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: per-CPU map value, valid for the program's run; one user at a time on a CPU.
    SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Parses the IPv4 header in `s.ip` (20 bytes) and the start of its payload in `s.l4` (28
/// bytes: enough for TCP flags and the quoted header of an ICMP error) into `s.pkt`.
#[inline(always)]
pub fn parse(s: &mut Scratch) -> bool {
    parse_ip(s, false)
}

/// What stands in for the IPv4 id in an IPv6 packet: bytes 6–7 of the transport header (the
/// ICMPv6 echo sequence, the low half of the TCP sequence, the UDP checksum).
#[inline(always)]
pub fn ident6(l4: &[u8]) -> u16 {
    u16::from_be_bytes([l4[6], l4[7]])
}

/// Parses the IPv6 header in `s.ip` (40 bytes) and the start of its payload in `s.l4` (48
/// bytes: enough for an ICMPv6 error's quoted header) into `s.pkt`. Extension headers are not
/// walked: a packet with one has that as its protocol and is not followed.
#[inline(always)]
pub fn parse6(s: &mut Scratch) -> bool {
    parse_ip(s, true)
}

/// [`parse`] (`v6` false) and [`parse6`]: one parser, since the versions differ only in where
/// a field stands and in their ICMP. `v6` is a constant at both calls, so each inlined copy
/// holds one version's code. False when `s.ip` holds the other version.
#[inline(always)]
fn parse_ip(s: &mut Scratch, v6: bool) -> bool {
    let ip = &s.ip;
    let l4 = &s.l4;
    if ip[0] >> 4 != if v6 { 6 } else { 4 } {
        return false;
    }
    let p = &mut s.pkt;
    p.clear();
    // The protocol (IPv6: the first next header) and the TTL (hop limit).
    let (family, proto, ttl, icmp) = if v6 {
        (FAMILY_V6, ip[6], ip[7], ICMPV6)
    } else {
        (FAMILY_V4, ip[9], ip[8], ICMP)
    };
    p.family = family;
    p.proto = proto;
    p.ttl = ttl;
    if v6 {
        p.saddr = w16(ip, 8);
        p.daddr = w16(ip, 24);
        p.ip_id = ident6(l4);
    } else {
        p.ip_id = u16::from_be_bytes([ip[4], ip[5]]);
        p.saddr = a4([ip[12], ip[13], ip[14], ip[15]]);
        p.daddr = a4([ip[16], ip[17], ip[18], ip[19]]);
    }
    match proto {
        x if x == icmp => {
            p.icmp_type = l4[0];
            p.icmp_code = l4[1];
            // Echo: identifier and sequence stand where ports would.
            p.sport = u16::from_be_bytes([l4[4], l4[5]]);
            p.dport = u16::from_be_bytes([l4[6], l4[7]]);
            // Errors quote the offending header right after the 8-byte ICMP header; "packet
            // too big" (ICMPv6 2) and "fragmentation needed" (ICMP 3/4) announce an MTU.
            if v6 {
                if p.icmp_type == 2 {
                    p.mtu = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
                }
                p.inner_saddr = w16(l4, 16);
                p.inner_daddr = w16(l4, 32);
            } else {
                if p.icmp_type == 3 && p.icmp_code == 4 {
                    p.mtu = u16::from_be_bytes([l4[6], l4[7]]) as u32;
                }
                p.inner_saddr = a4([l4[20], l4[21], l4[22], l4[23]]);
                p.inner_daddr = a4([l4[24], l4[25], l4[26], l4[27]]);
            }
        }
        6 => {
            p.sport = u16::from_be_bytes([l4[0], l4[1]]);
            p.dport = u16::from_be_bytes([l4[2], l4[3]]);
            p.tcp_seq = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
            p.icmp_type = l4[13];
        }
        17 => {
            p.sport = u16::from_be_bytes([l4[0], l4[1]]);
            p.dport = u16::from_be_bytes([l4[2], l4[3]]);
        }
        _ => {}
    }
    true
}
