//! What `follow` asks the capture layer for: the tap, the destinations, the protocol and
//! port, the budget, the ring's size and the hook set.

use crate::model::filter::PacketFilter;

/// What to follow.
#[derive(Clone, Debug)]
pub struct Spec {
    pub tap: String,
    pub guest_mac: Option<[u8; 6]>,
    /// The destinations: one or two networks, at most one per IP version.
    pub dests: Vec<ipnet::IpNet>,
    /// The protocol and remote port.
    pub packets: PacketFilter,
    /// Events per flow before the kernel only counts (0 = no limit).
    pub budget: u32,
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_bytes: u32,
    /// Which hooks to attach.
    pub hooks: HookSet,
}

/// The hooks a run attaches (docs/architecture.md, "The hook set").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HookSet {
    /// TC on the devices of the VM's path (tap, bridge, the route's devices, bridged uplink
    /// ports), `kfree_skb` and the route lookup: other traffic pays only where it crosses
    /// those devices.
    #[default]
    Path,
    /// Also the global hooks: `netif_receive_skb`, `net_dev_start_xmit` and `consume_skb` on
    /// every device, and netfilter links at every IPv4 hook (entry and exit of each). Every
    /// packet the host handles pays for them.
    All,
}

impl Spec {
    /// The IPv4 destination, when one is followed.
    pub fn v4(&self) -> Option<ipnet::Ipv4Net> {
        self.dests.iter().find_map(|d| match d {
            ipnet::IpNet::V4(n) => Some(n.trunc()),
            _ => None,
        })
    }
    /// The IPv6 destination, when one is followed.
    pub fn v6(&self) -> Option<ipnet::Ipv6Net> {
        self.dests.iter().find_map(|d| match d {
            ipnet::IpNet::V6(n) => Some(n.trunc()),
            _ => None,
        })
    }
}
