//! Every type that crosses the kernel/user boundary, defined once.
//!
//! Rules (see STYLE.md of the design notes): `#[repr(C)]`, `Copy`, no `bool` or
//! `usize`, explicit padding so that the layout is the same for the `bpfel`
//! target and x86_64. Layout tests at the bottom pin the sizes.
#![no_std]

pub mod watch;

/// Maximum kernel stack depth kept per drop event.
pub const MAX_STACK: usize = 16;

/// Where in the host an event was observed: the kernel programs write it as `u8` in
/// [`Event::hook`], userspace decodes and names it (`Point` there is this type; in JSON its
/// variants are snake_case: `tap_ingress`, `netif_receive`, …).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "snake_case")
)]
pub enum HookKind {
    /// TC ingress of the VM's tap: the frame just came out of the guest.
    TapIngress = 1,
    /// TC egress of the VM's tap: the frame is about to be handed to the guest.
    TapEgress = 2,
    /// tp_btf `netif_receive_skb`: a device received the skb.
    NetifReceive = 3,
    /// tp_btf `net_dev_start_xmit`: a device starts to transmit the skb.
    DevXmit = 4,
    /// BPF netfilter link, first priority of a hook (`nf_hook` says which).
    NfEnter = 5,
    /// BPF netfilter link, last priority of a hook: the skb survived the hook.
    NfExit = 6,
    /// Tracepoint `fib:fib_table_lookup` (route lookup; no skb).
    Fib = 7,
    /// tp_btf `kfree_skb`: the kernel dropped the skb (`reason`, `location`, stack).
    Drop = 8,
    /// tp_btf `consume_skb`: the skb was freed normally (end of its life).
    Consume = 9,
}

impl HookKind {
    /// Every hook, in value order.
    pub const ALL: [HookKind; 9] = [
        Self::TapIngress,
        Self::TapEgress,
        Self::NetifReceive,
        Self::DevXmit,
        Self::NfEnter,
        Self::NfExit,
        Self::Fib,
        Self::Drop,
        Self::Consume,
    ];

    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|h| *h as u8 == v)
    }

    /// The name every view uses (the JSON `point`, pcapng's interface names): a new hook does
    /// not compile until it has one.
    pub fn name(self) -> &'static str {
        match self {
            Self::TapIngress => "tap_ingress",
            Self::TapEgress => "tap_egress",
            Self::NetifReceive => "netif_receive",
            Self::DevXmit => "dev_xmit",
            Self::NfEnter => "nf_enter",
            Self::NfExit => "nf_exit",
            Self::Fib => "fib",
            Self::Drop => "drop",
            Self::Consume => "consume",
        }
    }
}

/// The packet was identified as going from the VM towards the destination.
pub const DIR_REQUEST: u8 = 1;
/// The packet was identified as coming back from the destination.
pub const DIR_REPLY: u8 = 2;

/// `Event::flags`: this event started tracking the skb (first sight).
pub const EV_FLAG_NEW: u8 = 1;
/// `Event::flags`: the IP header could be read (the tuple fields are valid; `family` says
/// which IP).
pub const EV_FLAG_HAS_IP: u8 = 2;
/// `Event::flags`: an Ethernet header was read (the MAC fields are valid).
pub const EV_FLAG_HAS_ETH: u8 = 4;
/// `Event::flags`: neighbour discovery on the tap. IPv4: an ARP packet (saddr/daddr =
/// sender/target IP, icmp_type = op). IPv6: an NDP message (icmp_type = ICMPv6 type 133 router
/// solicitation … 136 neighbour advertisement; saddr = its source, daddr = the target address
/// of a neighbour solicitation/advertisement, else its destination).
pub const EV_FLAG_ARP: u8 = 8;
/// `Event::flags`: a DHCP packet on the tap (UDP 68→67 from the guest, 67→68 to it; with
/// `family` 6, DHCPv6: 546→547 and 547→546).
pub const EV_FLAG_DHCP: u8 = 16;
/// `Event::flags` of a `Fib` event: the route came from `bpf_fib_lookup` in a path device's
/// TC ingress (path hook set), not from the `fib_table_lookup` tracepoint. `table` is then
/// unknown (0), `fib_ret` and `iif` say what the helper answered and for which device;
/// userspace asks the kernel for the table (RTM_GETROUTE).
pub const EV_FLAG_ROUTE_HELPER: u8 = 32;
/// `Event::flags`: the packet was seen inside a VXLAN encapsulation on the underlay (the
/// tuple is the inner packet's; `vni`, `outer_saddr`, `outer_daddr` say the outer one).
pub const EV_FLAG_VXLAN: u8 = 64;

/// `Event::family`: the addresses are IPv4 (in the first 4 bytes of each 16).
pub const FAMILY_V4: u8 = 4;
/// `Event::family`: the addresses are IPv6.
pub const FAMILY_V6: u8 = 6;

/// Bits of the object's `FOLLOW` constant (set by the loader before verification, so that the
/// verifier drops the code of a version not followed): which IP versions are followed.
pub const FOLLOW_V4: u8 = 1;
pub const FOLLOW_V6: u8 = 2;

/// The `reason` of a `Drop` event (and of watch's drop key) on a kernel whose `kfree_skb`
/// tracepoint passes none (before 5.17): no `enum skb_drop_reason` value is this large, so it
/// never has a name, and userspace infers one from the drop's location.
pub const KFREE_NO_REASON: u32 = u32::MAX;

/// One observation of one packet at one hook. 200 bytes, no implicit padding. Every field has
/// one meaning; the ones of one kind of hook are zero elsewhere. Addresses are 16 bytes: an
/// IPv4 address fills the first 4 (`family` says which).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `bpf_ktime_get_ns()`.
    pub ts_ns: u64,
    /// Kernel `struct sk_buff *`: links one packet across hooks (a `Fib` event: the packet
    /// whose route it is).
    pub skb: u64,
    /// `Drop`: the `location` argument (return address inside the caller of kfree_skb).
    pub location: u64,
    /// `HookKind` as u8.
    pub hook: u8,
    /// `DIR_REQUEST` / `DIR_REPLY`.
    pub dir: u8,
    /// `EV_FLAG_*`.
    pub flags: u8,
    /// Netfilter hook number (NF_INET_*) for `NfEnter`/`NfExit`.
    pub nf_hook: u8,
    /// Device the skb is on (`skb->dev->ifindex`), or the route's output interface for `Fib`.
    pub ifindex: u32,
    /// `skb->dev->name`, or the `fib_table_lookup` device name.
    pub ifname: [u8; 16],
    /// Inode number of the device's network namespace.
    pub netns: u32,
    /// `Drop`: `enum skb_drop_reason` value (`KFREE_NO_REASON`: the kernel passes none).
    pub reason: u32,
    /// `Drop`: id in the stack-trace map, or negative error.
    pub stack_id: i32,
    /// `skb->len`.
    pub len: u32,
    /// Source / destination address, network byte order as read from the header.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// `Fib`: the route's gateway (all zero: none).
    pub gw: [u8; 16],
    /// ICMP / ICMPv6 errors: destination of the quoted packet.
    pub inner_daddr: [u8; 16],
    /// TCP/UDP ports (host byte order). For ICMP echo: sport = identifier, dport = sequence.
    pub sport: u16,
    pub dport: u16,
    /// IP protocol number (IPv6: the first next header; 58 = ICMPv6).
    pub proto: u8,
    /// ICMP type / code, or TCP flags in `icmp_type`.
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// TTL (IPv6: hop limit).
    pub ttl: u8,
    /// IPv4 identification field (host order). IPv6 has none: bytes 6–7 of the transport
    /// header (the ICMPv6 echo sequence, the low half of the TCP sequence, the UDP checksum),
    /// which tell one packet of a flow from the next as the IPv4 id does.
    pub ip_id: u16,
    /// `FAMILY_V4` / `FAMILY_V6` (0: no IP header read).
    pub family: u8,
    pub _pad0: u8,
    /// Ethernet source / destination MAC when `EV_FLAG_HAS_ETH`.
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// The producing CPU (`ts_ns` orders events).
    pub cpu: u32,
    /// TCP sequence number (host order), 0 otherwise. Second identity key for clones.
    pub tcp_seq: u32,
    /// `Fib` with `EV_FLAG_ROUTE_HELPER`: the skb mark the lookup used (fwmark rules).
    pub mark: u32,
    /// `Fib`: the routing table id (0 with `EV_FLAG_ROUTE_HELPER`: userspace asks the FIB).
    pub table: u32,
    /// `Fib`: the lookup's error (0 = found, else a negative errno).
    pub route_err: i32,
    /// `Fib` with `EV_FLAG_ROUTE_HELPER`: the `BPF_FIB_LKUP_RET_*` code.
    pub fib_ret: u32,
    /// `Fib` with `EV_FLAG_ROUTE_HELPER`: the device the packet came in on.
    pub iif: u32,
    /// `EV_FLAG_VXLAN`: the VXLAN network identifier.
    pub vni: u32,
    /// `EV_FLAG_VXLAN`: the outer (underlay) IPv4 source / destination, network order.
    pub outer_saddr: [u8; 4],
    pub outer_daddr: [u8; 4],
    /// ICMP "fragmentation needed" / ICMPv6 "packet too big": the MTU it announces (0 else).
    pub mtu: u32,
    pub _pad1: u32,
}

/// What to follow. Written once by userspace before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Filter {
    /// IPv4 destination network, network byte order, and its mask (network order).
    pub dst_net: [u8; 4],
    pub dst_mask: [u8; 4],
    /// IP protocol to follow, 0 = ICMP, TCP and UDP.
    pub proto: u8,
    /// 1: the path hook set (route lookups come from `bpf_fib_lookup` in the path devices' TC
    /// ingress, the tap's ingress is a frame's first hook); 0: the full set (the
    /// `fib_table_lookup` tracepoint, `netif_receive_skb` before the tap's ingress).
    pub route_helper: u8,
    /// Remote port (host order), 0 = any.
    pub port: u16,
    /// Network namespace inode where the tap lives: events from other namespaces are ignored.
    pub netns: u32,
    /// ifindex of the VM's tap.
    pub tap_ifindex: u32,
    /// Guest MAC (all zero = any source MAC on the tap).
    pub guest_mac: [u8; 6],
    pub _pad1: [u8; 2],
    /// Packets per flow shown in full; past it packets are only counted. 0 = unlimited.
    pub budget: u32,
    /// 0 until every hook is attached: packets half-way through the host when tracing starts
    /// would otherwise show up with hops missing.
    pub enabled: u32,
    /// IPv6 destination network and its mask (network order).
    pub dst6_net: [u8; 16],
    pub dst6_mask: [u8; 16],
    pub _pad2: [u8; 4],
}

/// Value of the `CONFIG` array map (index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    pub filter: Filter,
}

/// Most guest addresses `GUESTS` keeps (a VM with more: the rest are not learned).
pub const MAX_GUEST_IPS: usize = 8;

/// Value of the `GUESTS` array (one entry): the guest's IPv4 addresses learned from frames
/// leaving the tap. A list, not a hash map: every path-device program asks "is this a guest
/// address" of foreign packets, and eight compares cost less than a hash lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestList {
    /// Addresses in use (the first `n` of `addrs`).
    pub n: u32,
    /// Network order.
    pub addrs: [[u8; 4]; MAX_GUEST_IPS],
}

/// Value of the `GUESTS6` array: the guest's IPv6 addresses (link-local ones are not learned:
/// they never leave the link), as `GuestList`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestList6 {
    pub n: u32,
    pub addrs: [[u8; 16]; MAX_GUEST_IPS],
}

/// Key of `NAT_KEYS` (post-NAT tuple of a
/// request, under which its replies arrive before de-NAT).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    /// Remote (the destination side) address, network order (IPv4: the first 4 bytes).
    pub remote: [u8; 16],
    /// Local address as the outside sees it, network order.
    pub local: [u8; 16],
    /// Local port / ICMP id as the outside sees it (host order).
    pub local_port: u16,
    pub proto: u8,
    /// `FAMILY_V4` / `FAMILY_V6`.
    pub family: u8,
}

/// Value of `NAT_KEYS`, and of `ORIGIN` (per skb): the guest-side address and port (ICMP id)
/// of a request before NAT, so that a reply seen before de-NAT can be routed as the kernel
/// will route it after.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatOrigin {
    /// Guest address: its 16 bytes as two words in memory order (IPv4: the first 4 bytes).
    /// Words, so that the kernel programs copy it without a `memset`/`memmove` call.
    pub guest: [u64; 2],
    /// Guest port or ICMP id (host order).
    pub guest_port: u16,
    /// `ORIGIN`: the IP id of the packet the entry is about.
    pub ip_id: u16,
    /// 1: `guest` and `guest_port` are known (the request was seen leaving the tap).
    pub known: u16,
    /// `FAMILY_V4` / `FAMILY_V6` of `guest`: an entry is about a packet of its own version
    /// only (a stale IPv6 entry's first word is not an IPv4 guest).
    pub family: u16,
}

/// Value of the per-flow `BUDGET` map: packets of the flow shown in full, and packets past the
/// budget that were only counted (every hook of such a packet returns after one lookup).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowBudget {
    pub shown: u32,
    pub suppressed: u32,
}

/// Bit in a `TRACKED` value: the packet is past its flow's budget (counted, not shown).
pub const TRACK_SUPPRESSED: u8 = 0x80;

/// Indexes of the `COUNTERS` per-CPU array.
pub const CNT_EVENTS: u32 = 0;
/// Events that could not be written because the ring buffer was full.
pub const CNT_LOST: u32 = 1;
/// Packets matched but not emitted because the flow was past its budget.
pub const CNT_SAMPLED_OUT: u32 = 2;
pub const CNT_MAX: u32 = 3;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::NatKey {}
    unsafe impl aya::Pod for super::FlowBudget {}
    unsafe impl aya::Pod for super::NatOrigin {}
    unsafe impl aya::Pod for super::GuestList {}
    unsafe impl aya::Pod for super::GuestList6 {}
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn layouts_are_stable() {
        assert_eq!(core::mem::size_of::<Event>(), 200);
        assert_eq!(core::mem::size_of::<Filter>(), 72);
        assert_eq!(core::mem::size_of::<NatKey>(), 36);
        assert_eq!(core::mem::size_of::<NatOrigin>(), 24);
        assert_eq!(core::mem::size_of::<GuestList>(), 36);
        assert_eq!(core::mem::size_of::<GuestList6>(), 132);
    }
}
