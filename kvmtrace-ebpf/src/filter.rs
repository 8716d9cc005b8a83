//! The shared test every program makes: is this packet one of the followed flow's? Cheap
//! address tests first (no map lookup), then the tracked-skb lookup, then the full parse.

use crate::{btf_load, off, rd, BUDGET, GUESTS, NAT_KEYS, ORIGIN, TRACKED};
use kvmtrace_common::{
    Config, FlowBudget, NatKey, NatOrigin, DIR_REPLY, DIR_REQUEST, MAX_GUEST_IPS,
};

/// Headers of one packet, as parsed at a hook.
#[derive(Clone, Copy)]
pub struct Pkt {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub proto: u8,
    pub ttl: u8,
    pub ip_id: u16,
    pub sport: u16,
    pub dport: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub tcp_seq: u32,
    /// ICMP error: destination of the quoted (inner) packet.
    pub inner_daddr: [u8; 4],
    pub inner_saddr: [u8; 4],
}

impl Pkt {
    pub const fn empty() -> Self {
        Pkt {
            saddr: [0; 4],
            daddr: [0; 4],
            proto: 0,
            ttl: 0,
            ip_id: 0,
            sport: 0,
            dport: 0,
            icmp_type: 0,
            icmp_code: 0,
            tcp_seq: 0,
            inner_daddr: [0; 4],
            inner_saddr: [0; 4],
        }
    }
}

/// Parses an IPv4 header (20 bytes at `ip`) and the start of its payload (`l4`, 28 bytes:
/// enough for TCP flags and the quoted header of an ICMP error).
#[inline(always)]
pub fn parse(ip: &[u8; 20], l4: &[u8; 28]) -> Option<Pkt> {
    if ip[0] >> 4 != 4 {
        return None;
    }
    let mut p = Pkt::empty();
    p.proto = ip[9];
    p.ttl = ip[8];
    p.ip_id = u16::from_be_bytes([ip[4], ip[5]]);
    p.saddr = [ip[12], ip[13], ip[14], ip[15]];
    p.daddr = [ip[16], ip[17], ip[18], ip[19]];
    match p.proto {
        1 => {
            p.icmp_type = l4[0];
            p.icmp_code = l4[1];
            // Echo: identifier and sequence stand where ports would.
            p.sport = u16::from_be_bytes([l4[4], l4[5]]);
            p.dport = u16::from_be_bytes([l4[6], l4[7]]);
            // Errors quote the offending IPv4 header right after the 8-byte ICMP header.
            p.inner_saddr = [l4[20], l4[21], l4[22], l4[23]];
            p.inner_daddr = [l4[24], l4[25], l4[26], l4[27]];
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
    Some(p)
}

#[inline(always)]
pub fn in_dest(c: &Config, a: &[u8; 4]) -> bool {
    let f = &c.filter;
    (a[0] & f.dst_mask[0]) == f.dst_net[0]
        && (a[1] & f.dst_mask[1]) == f.dst_net[1]
        && (a[2] & f.dst_mask[2]) == f.dst_net[2]
        && (a[3] & f.dst_mask[3]) == f.dst_net[3]
}

#[inline(always)]
pub fn proto_ok(c: &Config, proto: u8) -> bool {
    let want = c.filter.proto;
    if want == 0 {
        proto == 1 || proto == 6 || proto == 17
    } else {
        proto == want
    }
}

#[inline(always)]
pub fn is_guest(a: &[u8; 4]) -> bool {
    let Some(g) = GUESTS.get(0) else {
        return false;
    };
    let want = u32::from_ne_bytes(*a);
    let mut i = 0;
    while i < MAX_GUEST_IPS {
        if i as u32 >= g.n {
            return false;
        }
        if u32::from_ne_bytes(g.addrs[i]) == want {
            return true;
        }
        i += 1;
    }
    false
}

/// Adds a guest address seen leaving the tap (once; a full list keeps its first ones).
#[inline(always)]
pub fn learn_guest(a: &[u8; 4]) {
    if is_guest(a) {
        return;
    }
    let Some(g) = GUESTS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the map's one value; two CPUs learning at once may both write slot n (one
    // address is then learned at its next packet).
    unsafe {
        let n = (*g).n as usize;
        if n < MAX_GUEST_IPS {
            (*g).addrs[n] = *a;
            (*g).n = n as u32 + 1;
        }
    }
}

#[inline(always)]
fn icmp_error_about_ours(c: &Config, p: &Pkt) -> bool {
    p.proto == 1
        && (p.icmp_type == 3 || p.icmp_type == 11 || p.icmp_type == 12)
        && in_dest(c, &p.inner_daddr)
        && (is_guest(&p.daddr) || is_guest(&p.inner_saddr))
}

/// Classifies a packet not yet tracked. `on_tap`: seen on the VM's tap, going out of the VM.
#[inline(always)]
pub fn classify(c: &Config, p: &Pkt, on_tap: bool) -> u8 {
    if !proto_ok(c, p.proto) {
        return 0;
    }
    let port = c.filter.port;
    let echo_or_port = |remote_port: u16| p.proto == 1 || port == 0 || remote_port == port;
    if in_dest(c, &p.daddr) && (on_tap || is_guest(&p.saddr)) {
        if p.proto == 1 && p.icmp_type != 8 && !on_tap {
            return 0;
        }
        if echo_or_port(p.dport) {
            return DIR_REQUEST;
        }
        return 0;
    }
    if on_tap {
        return 0;
    }
    if in_dest(c, &p.saddr) && is_guest(&p.daddr) && echo_or_port(p.sport) {
        return DIR_REPLY;
    }
    if !in_dest(c, &p.saddr) {
        // Neither to nor from the destination: only an ICMP error about our packet remains.
        return if icmp_error_about_ours(c, p) {
            DIR_REPLY
        } else {
            0
        };
    }
    // Before de-NAT: the reply carries the post-NAT local address and port.
    let local_port = if p.proto == 1 { p.sport } else { p.dport };
    let key = NatKey {
        remote: p.saddr,
        local: p.daddr,
        local_port,
        proto: p.proto,
        _pad: 0,
    };
    // SAFETY: read-only lookup.
    if unsafe { NAT_KEYS.get(&key).is_some() } {
        return DIR_REPLY;
    }
    // ICMP errors (unreachable, time exceeded, parameter problem) about our requests.
    if icmp_error_about_ours(c, p) {
        return DIR_REPLY;
    }
    0
}

/// Guest-side flow key used for the per-flow budget.
#[inline(always)]
fn flow_key(p: &Pkt, dir: u8) -> NatKey {
    let (remote, local, local_port) = if dir == DIR_REQUEST {
        (p.daddr, p.saddr, p.sport)
    } else {
        (
            p.saddr,
            p.daddr,
            if p.proto == 1 { p.sport } else { p.dport },
        )
    };
    NatKey {
        remote,
        local,
        local_port,
        proto: p.proto,
        _pad: 0,
    }
}

/// Admits a new packet within its flow's budget. Returns false when it must only be counted
/// (then all its hooks return after the TRACKED lookup).
#[inline(always)]
pub fn admit(c: &Config, p: &Pkt, dir: u8) -> bool {
    let budget = c.filter.budget;
    if budget == 0 {
        return true;
    }
    let key = flow_key(p, dir);
    match BUDGET.get_ptr_mut(&key) {
        Some(b) => {
            // SAFETY: value pointer from the map. Two CPUs racing may let one packet more in;
            // the counts stay exact per packet.
            unsafe {
                if (*b).shown >= budget {
                    (*b).suppressed += 1;
                    return false;
                }
                (*b).shown += 1;
            }
            true
        }
        None => {
            let _ = BUDGET.insert(
                &key,
                &FlowBudget {
                    shown: 1,
                    suppressed: 0,
                },
                0,
            );
            true
        }
    }
}

/// Remembers the guest side of a followed request leaving the tap (`skb`), for `learn_nat`.
#[inline(always)]
pub fn note_origin(skb: u64, p: &Pkt, dir: u8) {
    if dir != DIR_REQUEST {
        return;
    }
    let o = NatOrigin {
        guest: p.saddr,
        guest_port: p.sport,
        ip_id: p.ip_id,
    };
    let _ = ORIGIN.insert(&skb, &o, 0);
}

/// Learns the post-NAT tuple of a followed request whose source is no longer a guest address,
/// with the guest side it had before NAT (when the request was seen leaving the tap).
#[inline(always)]
pub fn learn_nat(skb: u64, p: &Pkt, dir: u8) {
    if dir != DIR_REQUEST || is_guest(&p.saddr) {
        return;
    }
    let key = NatKey {
        remote: p.daddr,
        local: p.saddr,
        local_port: p.sport,
        proto: p.proto,
        _pad: 0,
    };
    let origin = origin_of(skb, p.ip_id).unwrap_or_default();
    let _ = NAT_KEYS.insert(&key, &origin, 0);
}

/// The guest side of the followed request in `skb` (`ip_id`: the packet it must be about).
#[inline(always)]
pub fn origin_of(skb: u64, ip_id: u16) -> Option<NatOrigin> {
    // SAFETY: read-only lookup.
    let o = unsafe { ORIGIN.get(&skb) }?;
    (o.ip_id == ip_id).then_some(*o)
}

/// The guest side of a reply seen before de-NAT (`None`: not a NATed reply, or not known).
#[inline(always)]
pub fn nat_origin(p: &Pkt) -> Option<NatOrigin> {
    let local_port = if p.proto == 1 { p.sport } else { p.dport };
    let key = NatKey {
        remote: p.saddr,
        local: p.daddr,
        local_port,
        proto: p.proto,
        _pad: 0,
    };
    // SAFETY: read-only lookup.
    let o = unsafe { NAT_KEYS.get(&key) }?;
    (o.guest != [0; 4]).then_some(*o)
}

/// The followed state of an skb (`DIR_*` | `TRACK_*`), when its entry is for this packet:
/// an entry left by an earlier packet in the same skb memory has another IP id.
#[inline(always)]
pub fn track_get(skb: u64, ip_id: u16) -> Option<u8> {
    // SAFETY: read-only lookup.
    let v = unsafe { TRACKED.get(&skb).copied() }?;
    ((v >> 16) as u16 == ip_id).then_some(v as u8)
}

#[inline(always)]
pub fn track_put(skb: u64, state: u8, ip_id: u16) {
    let _ = TRACKED.insert(&skb, &(((ip_id as u32) << 16) | state as u32), 0);
}

#[inline(always)]
pub fn track_forget(skb: u64) {
    let _ = TRACKED.remove(&skb);
}

/// Protocol, IP id and addresses of an IPv4 header, read cheaply.
#[derive(Clone, Copy)]
pub struct Addrs {
    pub proto: u8,
    pub ip_id: u16,
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

impl Addrs {
    /// From IPv4 header bytes 4..20 (id, fragment, ttl, protocol, checksum, addresses).
    #[inline(always)]
    pub fn from_bytes(a: &[u8; 16]) -> Addrs {
        Addrs {
            proto: a[5],
            ip_id: u16::from_be_bytes([a[0], a[1]]),
            src: [a[8], a[9], a[10], a[11]],
            dst: [a[12], a[13], a[14], a[15]],
        }
    }

    /// Could this packet be one of ours (protocol followed, to or from the destination, or to
    /// a guest address)? No map lookup for most foreign packets.
    #[inline(always)]
    pub fn might_match(&self, c: &Config) -> bool {
        if !proto_ok(c, self.proto) && self.proto != 1 {
            return false;
        }
        in_dest(c, &self.dst) || in_dest(c, &self.src) || is_guest(&self.dst)
    }

    /// Second cheap test, for a packet not followed yet, on addresses only: a request must
    /// come from a guest address (or be received on the tap itself: `on_tap`, asked only when
    /// it matters), a reply from the destination, an ICMP error to a guest. Keeps another VM's
    /// traffic to the same destination from costing a full parse at every hook.
    #[inline(always)]
    pub fn could_start(&self, c: &Config, on_tap: impl FnOnce() -> bool) -> bool {
        if in_dest(c, &self.src) || (self.proto == 1 && is_guest(&self.dst)) {
            return true;
        }
        if !in_dest(c, &self.dst) {
            return false;
        }
        is_guest(&self.src) || on_tap()
    }
}

/// The cheap first test on a kernel skb (tp_btf and netfilter programs): reads `head` and
/// `network_header` with BTF loads and 16 header bytes with one helper call.
#[inline(always)]
pub fn skb_addrs(c: &Config, skb: u64) -> Option<Addrs> {
    let head: u64 = btf_load(skb, off!(OFF_SKB_HEAD));
    let nh: u16 = btf_load(skb, off!(OFF_SKB_NH));
    if nh == u16::MAX || head == 0 {
        return None;
    }
    let a = Addrs::from_bytes(&rd::<[u8; 16]>(head + nh as u64 + 4)?);
    a.might_match(c).then_some(a)
}
