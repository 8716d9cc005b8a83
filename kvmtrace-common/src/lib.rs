//! Every type that crosses the kernel/user boundary, defined once.
//!
//! Rules (see STYLE.md of the design notes): `#[repr(C)]`, `Copy`, no `bool` or
//! `usize`, explicit padding so that the layout is the same for the `bpfel`
//! target and x86_64. Layout tests at the bottom pin the sizes.
#![no_std]

pub mod watch;

/// Maximum kernel stack depth kept per drop event.
pub const MAX_STACK: usize = 16;

/// Where in the host an event was observed. Stored as `u8` in [`Event::hook`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::TapIngress,
            2 => Self::TapEgress,
            3 => Self::NetifReceive,
            4 => Self::DevXmit,
            5 => Self::NfEnter,
            6 => Self::NfExit,
            7 => Self::Fib,
            8 => Self::Drop,
            9 => Self::Consume,
            _ => return None,
        })
    }
}

/// The packet was identified as going from the VM towards the destination.
pub const DIR_REQUEST: u8 = 1;
/// The packet was identified as coming back from the destination.
pub const DIR_REPLY: u8 = 2;

/// `Event::flags`: this event started tracking the skb (first sight).
pub const EV_FLAG_NEW: u8 = 1;
/// `Event::flags`: the IPv4 header could be read (the tuple fields are valid).
pub const EV_FLAG_HAS_IP: u8 = 2;
/// `Event::flags`: an Ethernet header was read (the MAC fields are valid).
pub const EV_FLAG_HAS_ETH: u8 = 4;
/// `Event::flags`: an ARP packet on the tap (saddr/daddr = sender/target IP, icmp_type = op).
pub const EV_FLAG_ARP: u8 = 8;
/// `Event::flags`: a DHCP packet on the tap (UDP 68→67 from the guest, 67→68 to it).
pub const EV_FLAG_DHCP: u8 = 16;

/// One observation of one packet at one hook. 112 bytes, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `bpf_ktime_get_ns()`.
    pub ts_ns: u64,
    /// Kernel `struct sk_buff *` (0 for `Fib`): links one packet across hooks.
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
    /// `Drop`: `enum skb_drop_reason` value. `Fib`: routing table id.
    pub reason: u32,
    /// `Drop`: id in the stack-trace map, or negative error. `Fib`: the lookup error (0 = found).
    pub stack_id: i32,
    /// `skb->len`.
    pub len: u32,
    /// IPv4 source / destination, network byte order as read from the header.
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    /// `Fib`: gateway (network order). ICMP errors: destination of the quoted packet.
    pub gw: [u8; 4],
    /// TCP/UDP ports (host byte order). For ICMP echo: sport = identifier, dport = sequence.
    pub sport: u16,
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    /// ICMP type / code, or TCP flags in `icmp_type`.
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub ttl: u8,
    /// IPv4 identification field (host order).
    pub ip_id: u16,
    pub _pad0: u16,
    /// Ethernet source / destination MAC when `EV_FLAG_HAS_ETH`.
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// Order of this event among all events the programs produced (per-CPU counter x CPUs
    /// is not needed: `ts_ns` orders events; this is the producing CPU).
    pub cpu: u32,
    /// TCP sequence number (host order), 0 otherwise. Second identity key for clones.
    pub tcp_seq: u32,
    pub _pad1: [u8; 4],
}

/// Offsets of kernel struct fields, taken from BTF by userspace at start-up.
/// A value of `u32::MAX` means "not present on this kernel".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Offsets {
    pub skb_head: u32,
    pub skb_data: u32,
    pub skb_len: u32,
    pub skb_dev: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    pub skb_mac_header: u32,
    pub dev_ifindex: u32,
    pub dev_name: u32,
    pub dev_nd_net: u32,
    pub net_ns_inum: u32,
    pub nf_state_hook: u32,
    /// Offsets inside the `fib:fib_table_lookup` tracepoint record (from its format file).
    pub fib_tb_id: u32,
    pub fib_err: u32,
    pub fib_oif: u32,
    pub fib_src: u32,
    pub fib_dst: u32,
    pub fib_gw4: u32,
    pub fib_name: u32,
    pub fib_proto: u32,
    pub fib_sport: u32,
    pub fib_dport: u32,
    pub _pad: u32,
}

/// What to follow. Written once by userspace before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Filter {
    /// Destination network, network byte order, and its mask (network order).
    pub dst_net: [u8; 4],
    pub dst_mask: [u8; 4],
    /// IP protocol to follow, 0 = ICMP, TCP and UDP.
    pub proto: u8,
    pub _pad0: [u8; 1],
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
}

/// Value of the `CONFIG` array map (index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    pub offsets: Offsets,
    pub filter: Filter,
}

/// Key of `GUEST_IPS` (learned guest addresses) and of `NAT_KEYS` (post-NAT tuple of a
/// request, under which its replies arrive before de-NAT).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    /// Remote (the destination side) address, network order.
    pub remote: [u8; 4],
    /// Local address as the outside sees it, network order.
    pub local: [u8; 4],
    /// Local port / ICMP id as the outside sees it (host order).
    pub local_port: u16,
    pub proto: u8,
    pub _pad: u8,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn layouts_are_stable() {
        assert_eq!(core::mem::size_of::<Event>(), 112);
        assert_eq!(core::mem::size_of::<Offsets>(), 23 * 4);
        assert_eq!(core::mem::size_of::<Filter>(), 36);
        assert_eq!(core::mem::size_of::<NatKey>(), 12);
    }
}
