//! The shared test every program makes: is this packet one of the followed flow's? Cheap
//! address tests first (no map lookup), then the tracked-skb lookup, then the full parse.

pub use crate::pkt::{
    a4, addr, bytes, ident6, is_v6, parse, parse6, scratch, v6, zero_words, Addr, Pkt, Scratch,
    EMPTY_PKT, ICMP, ICMPV6,
};
use crate::pkt::{b16, v4_bytes};
use crate::{btf_load, follows, off, rd, BUDGET, GUESTS, GUESTS6, NAT_KEYS, ORIGIN, TRACKED};
use aya_ebpf::helpers::bpf_probe_read_kernel_buf;
use kvmtrace_common::{
    Config, FlowBudget, NatKey, NatOrigin, DIR_REPLY, DIR_REQUEST, FAMILY_V4, FAMILY_V6, FOLLOW_V4,
    FOLLOW_V6, MAX_GUEST_IPS, TRACK_SUPPRESSED,
};

#[inline(always)]
fn in_dest4(c: &Config, a: &Addr) -> bool {
    let f = &c.filter;
    // One masked 32-bit compare: the address's first 4 bytes are the low half of its first
    // word, and the network and mask are in the same (network) byte order.
    follows(FOLLOW_V4)
        && (a[0] as u32 & u32::from_ne_bytes(f.dst_mask)) == u32::from_ne_bytes(f.dst_net)
}

#[inline(always)]
fn in_dest6(c: &Config, a: &Addr) -> bool {
    let f = &c.filter;
    if !follows(FOLLOW_V6) {
        return false;
    }
    let m = addr(&f.dst6_mask);
    let n = addr(&f.dst6_net);
    (a[0] & m[0]) == n[0] && (a[1] & m[1]) == n[1]
}

/// Is `a` (of `family`) in the followed destination?
#[inline(always)]
pub fn in_dest(c: &Config, family: u8, a: &Addr) -> bool {
    if is_v6(family) {
        in_dest6(c, a)
    } else {
        in_dest4(c, a)
    }
}

#[inline(always)]
pub fn proto_ok(c: &Config, proto: u8) -> bool {
    let want = c.filter.proto;
    if want == 0 {
        proto == ICMP || proto == 6 || proto == 17 || (v6() && proto == ICMPV6)
    } else if want == ICMP {
        proto == ICMP || (v6() && proto == ICMPV6)
    } else {
        proto == want
    }
}

/// Slots of `GUESTS` / `GUESTS6`: the guest's own addresses, and the destinations DNAT gave
/// its followed requests.
pub const LIST_GUESTS: u32 = 0;
pub const LIST_DNAT: u32 = 1;

/// Is `a` (of `family`) in the list `list` (`LIST_GUESTS`, `LIST_DNAT`)?
#[inline(always)]
pub fn in_list(list: u32, family: u8, a: &Addr) -> bool {
    if is_v6(family) {
        GUESTS6
            .get(list)
            .is_some_and(|g| listed(g.n, &g.addrs, *a, addr))
    } else {
        // One 32-bit compare per entry: an address's first 4 bytes are its first word's low half.
        GUESTS
            .get(list)
            .is_some_and(|g| listed(g.n, &g.addrs, a[0] as u32, |b| u32::from_ne_bytes(*b)))
    }
}

/// Whether `want` is among the first `n` of `addrs` (a `GuestList`'s or `GuestList6`'s), each
/// compared in the form `as_want` gives it.
#[inline(always)]
fn listed<T, W: PartialEq>(
    n: u32,
    addrs: &[T; MAX_GUEST_IPS],
    want: W,
    as_want: impl Fn(&T) -> W,
) -> bool {
    let mut i = 0;
    while i < MAX_GUEST_IPS {
        if i as u32 >= n {
            return false;
        }
        if as_want(&addrs[i]) == want {
            return true;
        }
        i += 1;
    }
    false
}

/// Appends `a` to the first `n` of `addrs` (a `GuestList`'s or `GuestList6`'s); a full list
/// keeps its first ones.
#[inline(always)]
fn push<T>(n: &mut u32, addrs: &mut [T; MAX_GUEST_IPS], a: T) {
    let i = *n as usize;
    if i < MAX_GUEST_IPS {
        addrs[i] = a;
        *n = i as u32 + 1;
    }
}

/// Is `a` (of `family`) one of the guest's learned addresses?
#[inline(always)]
pub fn is_guest(family: u8, a: &Addr) -> bool {
    in_list(LIST_GUESTS, family, a)
}

/// Adds a guest address seen leaving the tap (once; a full list keeps its first ones). IPv6
/// link-local and unspecified sources are not learned: they never leave the link.
#[inline(always)]
pub fn learn_guest(family: u8, a: &Addr) {
    learn(LIST_GUESTS, family, a)
}

/// Adds `a` to the list `list` (once; a full list keeps its first ones).
#[inline(always)]
pub fn learn(list: u32, family: u8, a: &Addr) {
    if in_list(list, family, a) {
        return;
    }
    if is_v6(family) {
        // fe80::/10 (bytes 0xfe, 0x80..0xbf first: the low bytes of the first word) or ::.
        if a[0] & 0xc0ff == 0x80fe || *a == [0, 0] {
            return;
        }
        if let Some(g) = GUESTS6.get_ptr_mut(list) {
            // SAFETY: the map's one value; two CPUs learning at once may both write slot n
            // (one address is then learned at its next packet).
            let g = unsafe { &mut *g };
            push(&mut g.n, &mut g.addrs, bytes(*a));
        }
    } else if let Some(g) = GUESTS.get_ptr_mut(list) {
        // SAFETY: as above.
        let g = unsafe { &mut *g };
        push(&mut g.n, &mut g.addrs, v4_bytes(a));
    }
}

/// Classifies a packet not yet tracked. `on_tap`: seen on the VM's tap, going out of the VM.
///
/// Each field is read once into a local: the packet lives in a map (`Scratch`), and the
/// verifier knows nothing of a value read from a map, so every re-read would split its walk
/// again; a tested local keeps what the test proved.
#[inline(always)]
pub fn classify(c: &Config, p: &Pkt, on_tap: bool) -> u8 {
    let proto = p.proto;
    if !proto_ok(c, proto) {
        return 0;
    }
    let fam = p.family;
    let icmp = proto == ICMP || (v6() && proto == ICMPV6);
    let port = c.filter.port;
    let any_port = icmp || port == 0;
    let to_dest = in_dest(c, fam, &p.daddr);
    if to_dest && (on_tap || is_guest(fam, &p.saddr)) {
        if icmp && !on_tap && !p.is_echo_request() {
            return 0;
        }
        if any_port || p.dport == port {
            return DIR_REQUEST;
        }
        return 0;
    }
    if on_tap {
        return 0;
    }
    // A reply comes from DEST, or from the address a DNAT rule sent the request to.
    let from_dest = in_dest(c, fam, &p.saddr) || in_list(LIST_DNAT, fam, &p.saddr);
    if from_dest && is_guest(fam, &p.daddr) && (any_port || p.sport == port) {
        return DIR_REPLY;
    }
    if !from_dest {
        // Neither to nor from the destination: only an ICMP error about our packet remains.
        return if icmp && error_about_ours(c, fam, p) {
            DIR_REPLY
        } else {
            0
        };
    }
    // Before de-NAT: the reply carries the post-NAT local address and port.
    let key = reply_key(p, icmp);
    // SAFETY: read-only lookup.
    if unsafe { NAT_KEYS.get(&key).is_some() } {
        return DIR_REPLY;
    }
    if icmp && error_about_ours(c, fam, p) {
        return DIR_REPLY;
    }
    0
}

/// An ICMP error (unreachable, too big, time exceeded, parameter problem) about a packet to
/// the destination, sent to a guest address (or quoting one).
#[inline(always)]
fn error_about_ours(c: &Config, fam: u8, p: &Pkt) -> bool {
    p.is_icmp_error()
        && in_dest(c, fam, &p.inner_daddr)
        && (is_guest(fam, &p.daddr) || is_guest(fam, &p.inner_saddr))
}

/// A request's flow as a `NatKey`: the remote is its destination, the local side its source
/// address and port. Seen after NAT, the key its replies arrive under (`learn_nat`).
#[inline(always)]
fn request_key(p: &Pkt) -> NatKey {
    NatKey {
        remote: bytes(p.daddr),
        local: bytes(p.saddr),
        local_port: p.sport,
        proto: p.proto,
        family: p.family,
    }
}

/// A reply's flow as a `NatKey`, the same flow's key as its request's: the remote is its
/// source, the local side its destination address and port (`icmp`, whether `p` is ICMP: the
/// echo identifier, which a reply carries in `sport`). Seen before de-NAT, the key a followed
/// request's post-NAT tuple was learned under.
#[inline(always)]
fn reply_key(p: &Pkt, icmp: bool) -> NatKey {
    NatKey {
        remote: bytes(p.saddr),
        local: bytes(p.daddr),
        local_port: if icmp { p.sport } else { p.dport },
        proto: p.proto,
        family: p.family,
    }
}

/// Guest-side flow key used for the per-flow budget.
#[inline(always)]
fn flow_key(p: &Pkt, dir: u8) -> NatKey {
    if dir == DIR_REQUEST {
        request_key(p)
    } else {
        reply_key(p, p.is_icmp())
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
    let _ = ORIGIN.insert(&skb, &guest_side(p, 1), 0);
}

/// The guest side of request `p` (its source address and port) as a `NatOrigin` marked
/// `known` (1) or not (0).
#[inline(always)]
fn guest_side(p: &Pkt, known: u16) -> NatOrigin {
    NatOrigin {
        guest: p.saddr,
        guest_port: p.sport,
        ip_id: p.ip_id,
        known,
        family: p.family as u16,
    }
}

/// Learns the post-NAT tuple of a followed request whose source is no longer a guest address,
/// with the guest side it had before NAT (when the request was seen leaving the tap).
#[inline(always)]
pub fn learn_nat(skb: u64, p: &Pkt, dir: u8) {
    if dir != DIR_REQUEST || is_guest(p.family, &p.saddr) {
        return;
    }
    // Unknown (the request was not seen leaving the tap): the entry still marks the tuple
    // as a reply's, with `known` 0 (its other fields then mean nothing).
    let origin = origin_of(skb, p.ip_id, p.family).unwrap_or(guest_side(p, 0));
    let _ = NAT_KEYS.insert(&request_key(p), &origin, 0);
}

/// The guest side of the followed request in `skb` (`ip_id`, `family`: the packet it must be
/// about).
#[inline(always)]
pub fn origin_of(skb: u64, ip_id: u16, family: u8) -> Option<NatOrigin> {
    // SAFETY: read-only lookup.
    let o = unsafe { ORIGIN.get(&skb) }?;
    (o.ip_id == ip_id && o.family == family as u16).then(|| copy_origin(o))
}

/// A map value's copy, field by field with volatile reads: a plain `*o` of these 24 bytes
/// becomes a call to a byte-looping `memmove` on BPF.
#[inline(always)]
fn copy_origin(o: &NatOrigin) -> NatOrigin {
    // SAFETY: `o` is a valid reference; volatile only keeps LLVM from merging the reads.
    unsafe {
        NatOrigin {
            guest: [
                core::ptr::read_volatile(&o.guest[0]),
                core::ptr::read_volatile(&o.guest[1]),
            ],
            guest_port: core::ptr::read_volatile(&o.guest_port),
            ip_id: core::ptr::read_volatile(&o.ip_id),
            known: core::ptr::read_volatile(&o.known),
            family: core::ptr::read_volatile(&o.family),
        }
    }
}

/// The guest side of a reply seen before de-NAT (`None`: not a NATed reply, or not known).
#[inline(always)]
pub fn nat_origin(p: &Pkt) -> Option<NatOrigin> {
    // SAFETY: read-only lookup.
    let o = unsafe { NAT_KEYS.get(&reply_key(p, p.is_icmp())) }?;
    (o.known != 0).then(|| copy_origin(o))
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

/// Protocol, IP id and addresses of an IP header, read cheaply.
#[derive(Clone, Copy)]
pub struct Addrs {
    pub family: u8,
    pub proto: u8,
    pub ip_id: u16,
    pub src: Addr,
    pub dst: Addr,
    /// The header is the inner one of a VXLAN packet: its offset from the outer (network)
    /// header; 0 for a plain packet.
    pub vx_off: u16,
}

impl Addrs {
    /// From IPv4 header bytes 4..20 (id, fragment, ttl, protocol, checksum, addresses).
    #[inline(always)]
    pub fn from_bytes(a: &[u8; 16]) -> Addrs {
        Addrs {
            family: FAMILY_V4,
            proto: a[5],
            ip_id: u16::from_be_bytes([a[0], a[1]]),
            src: a4([a[8], a[9], a[10], a[11]]),
            dst: a4([a[12], a[13], a[14], a[15]]),
            vx_off: 0,
        }
    }

    /// From an IPv6 header (40 bytes: next header, addresses) and bytes 6–7 of the transport
    /// header (`ident6`).
    #[inline(always)]
    pub fn from_v6(h: &[u8; 40], ident: u16) -> Addrs {
        Addrs {
            family: FAMILY_V6,
            proto: h[6],
            ip_id: ident,
            src: b16(h, 8),
            dst: b16(h, 24),
            vx_off: 0,
        }
    }

    /// Could this packet be one of ours (protocol followed, to or from the destination, or to
    /// a guest address)? No map lookup for most foreign packets.
    #[inline(always)]
    pub fn might_match(&self, c: &Config) -> bool {
        if !proto_ok(c, self.proto) && self.proto != ICMP && !(v6() && self.proto == ICMPV6) {
            return false;
        }
        let f = self.family;
        in_dest(c, f, &self.dst)
            || in_dest(c, f, &self.src)
            || is_guest(f, &self.dst)
            || in_list(LIST_DNAT, f, &self.dst)
            || in_list(LIST_DNAT, f, &self.src)
    }

    /// Whether a TRACKED entry in direction `state` cannot be this packet's, which was just
    /// received: a followed request never comes from the destination, nor a reply goes to
    /// it. The entry then belongs to an earlier packet in the same skb memory (the path set
    /// does not see every free, and an IPv6 echo reply carries its request's ident), and the
    /// packet is a new one.
    #[inline(always)]
    pub fn contradicts(&self, c: &Config, state: u8) -> bool {
        let f = self.family;
        match state & !TRACK_SUPPRESSED {
            DIR_REQUEST => in_dest(c, f, &self.src) && !is_guest(f, &self.src),
            DIR_REPLY => in_dest(c, f, &self.dst) && !is_guest(f, &self.dst),
            _ => false,
        }
    }

    /// Second cheap test, for a packet not followed yet, on addresses only: a request must
    /// come from a guest address (or be received on the tap itself: `on_tap`, asked only when
    /// it matters), a reply from the destination, an ICMP error to a guest. Keeps another VM's
    /// traffic to the same destination from costing a full parse at every hook.
    #[inline(always)]
    pub fn could_start(&self, c: &Config, on_tap: impl FnOnce() -> bool) -> bool {
        let f = self.family;
        if in_dest(c, f, &self.src)
            || in_list(LIST_DNAT, f, &self.src)
            || ((self.proto == ICMP || (v6() && self.proto == ICMPV6)) && is_guest(f, &self.dst))
        {
            return true;
        }
        if !in_dest(c, f, &self.dst) {
            return false;
        }
        is_guest(f, &self.src) || on_tap()
    }
}

/// The cheap first test on a kernel skb (tp_btf and netfilter programs): reads `head` and
/// `network_header` with BTF loads and the header's addresses with one helper call (IPv4) or
/// two (IPv6, when followed).
#[inline(always)]
pub fn skb_addrs(c: &Config, skb: u64) -> Option<Addrs> {
    let head: u64 = btf_load(skb, off!(OFF_SKB_HEAD));
    let nh: u16 = btf_load(skb, off!(OFF_SKB_NH));
    if nh == u16::MAX || head == 0 {
        return None;
    }
    let mut ip = head + nh as u64;
    let mut h = rd::<[u8; 20]>(ip)?;
    // An outer VXLAN packet on the underlay: the inner packet is the one that may be ours.
    // (`vx_off` is set only here, so without an overlay the verifier knows it is 0.)
    let mut vx_off = 0u16;
    if crate::vxlan_port() != 0 && h[0] >> 4 == 4 && h[9] == 17 {
        if let Some(off) = crate::vxlan::skb_inner(ip, &h) {
            ip += off;
            vx_off = off as u16;
            h = rd::<[u8; 20]>(ip)?;
        }
    }
    let mut a = match h[0] >> 4 {
        4 if follows(FOLLOW_V4) => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&h[4..20]);
            Addrs::from_bytes(&b)
        }
        6 if follows(FOLLOW_V6) => {
            let s = scratch()?;
            s.clear_l4();
            // SAFETY: bpf_probe_read_kernel faults safely on bad addresses.
            unsafe {
                bpf_probe_read_kernel_buf(ip as *const u8, &mut s.ip).ok()?;
                let _ = bpf_probe_read_kernel_buf((ip + 40) as *const u8, &mut s.l4[..8]);
            }
            Addrs::from_v6(&s.ip, ident6(&s.l4))
        }
        _ => return None,
    };
    a.vx_off = vx_off;
    a.might_match(c).then_some(a)
}
