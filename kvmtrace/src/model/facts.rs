//! Facts about the host, read when the trace starts (or ends), that verdicts refer to: its
//! forwarding switches, netfilter base chains, devices and VXLANs. Recorded in the trace, so
//! that replay judges the same.

use crate::model::event::NfHook;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};

/// A netfilter base chain registered on the host (from an nftables dump).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NfChain {
    /// `ip`, `inet`, `bridge`, …
    pub family: String,
    pub table: String,
    pub chain: String,
    pub hook: NfHook,
    pub priority: i32,
    /// `accept` or `drop`.
    pub policy: String,
}

impl NfChain {
    /// How a verdict names it: `inet labfw forward (policy drop, priority 0)`.
    pub fn label(&self) -> String {
        format!(
            "{} {} {} (policy {}, priority {})",
            self.family, self.table, self.chain, self.policy, self.priority
        )
    }
}

/// Facts about the host, read when the trace starts (or ends), that verdicts refer to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    /// `net.ipv4.ip_forward` (None when unknown).
    pub ip_forward: Option<bool>,
    /// `net.ipv6.conf.all.forwarding` (None when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6_forward: Option<bool>,
    /// nftables base chains (including iptables-nft's).
    pub nft_chains: Vec<NfChain>,
    /// iptables-legacy tables present (`/proc/net/ip_tables_names`).
    pub legacy_tables: Vec<String>,
    /// Network devices of the namespace.
    #[serde(default)]
    pub devices: Vec<DevFacts>,
    /// The VXLAN devices of the namespace (overlay verdicts name their remote and underlay).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vxlans: Vec<VxlanFacts>,
}

/// A VXLAN device: where its encapsulated packets go (`ip -d link show type vxlan`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanFacts {
    pub name: String,
    pub vni: u32,
    /// The default remote VTEP (`remote`); None: no default remote.
    pub remote: Option<Ipv4Addr>,
    pub local: Option<Ipv4Addr>,
    /// The underlay device it is bound to (`dev`); None: unbound (the route to the remote
    /// decides).
    pub dev: Option<String>,
    /// The device of the route to the remote, when one exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_dev: Option<String>,
    /// Destination UDP port.
    pub port: u16,
    pub mtu: u32,
    /// Without `remote`: the VTEP of its all-zeros forwarding entry (`bridge fdb append
    /// 00:00:00:00:00:00 dev vx0 dst …`), which plays the same part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fdb_remote: Option<Ipv4Addr>,
    /// Forwarding entries for a single MAC with a VTEP (EVPN, static `bridge fdb`).
    #[serde(default, skip_serializing_if = "is_zero_usize")]
    pub fdb_macs: usize,
}

/// Bytes VXLAN adds in front of an IPv4 inner frame on an IPv4 underlay: outer IPv4 (20),
/// UDP (8), VXLAN (8) and the inner Ethernet header (14), RFC 7348.
pub const VXLAN_OVERHEAD: u32 = 50;

/// One network device as `/sys/class/net` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevFacts {
    pub name: String,
    /// The bridge it is a port of.
    pub master: Option<String>,
    pub mtu: Option<u32>,
    pub up: bool,
    /// A Linux bridge itself (`/sys/class/net/NAME/bridge`), whether or not it has ports.
    #[serde(default)]
    pub bridge: bool,
    /// Its addresses: IPv4, and IPv6 but link-local (traces before session 5 hold IPv4 only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addrs: Vec<DevAddr>,
    /// A macvtap's lower device (`lower_DEV` of a device with `macvtap/`): its frames leave
    /// there, without a bridge and without the host's stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macvtap_lower: Option<String>,
    /// A macvtap's mode (`bridge`, `vepa`, `private`, `passthru`, `source`): whether it
    /// passes frames to the other macvtaps of its lower device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macvtap_mode: Option<String>,
    /// A macvtap's MAC address (its guest's), lower case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Set up by its administrator but without carrier (`carrier` 0: the cable, the veth peer
    /// or a macvtap's lower device is down). `up` may still be true (`lowerlayerdown`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_carrier: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero_usize(n: &usize) -> bool {
    *n == 0
}

/// An IPv4 address on a device, with its prefix length (`10.77.0.1/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevAddr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl DevAddr {
    /// Whether `ip` is in this address's subnet.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ipnet::IpNet::new(self.addr, self.prefix).is_ok_and(|n| n.contains(&ip))
    }
}

impl HostFacts {
    /// The bridge `dev` is a port of (None also when the device is unknown).
    pub fn master_of(&self, dev: &str) -> Option<&str> {
        self.devices
            .iter()
            .find(|d| d.name == dev)
            .and_then(|d| d.master.as_deref())
    }
    /// The device, when the facts know it.
    pub fn device(&self, dev: &str) -> Option<&DevFacts> {
        self.devices.iter().find(|d| d.name == dev)
    }
    /// The other macvtaps on the lower device of the macvtap `dev` (other guests on its wire).
    pub fn macvtap_siblings(&self, dev: &str) -> Vec<&DevFacts> {
        let Some(lower) = self.device(dev).and_then(|d| d.macvtap_lower.as_deref()) else {
            return Vec::new();
        };
        self.devices
            .iter()
            .filter(|d| d.name != dev && d.macvtap_lower.as_deref() == Some(lower))
            .collect()
    }
    /// The bridge a VM with address `guest` belongs to: the one whose subnet holds the address,
    /// else the only bridge of the host (None when neither says).
    pub fn bridge_for(&self, guest: IpAddr) -> Option<&str> {
        let bridges: Vec<&DevFacts> = self.devices.iter().filter(|d| d.bridge).collect();
        bridges
            .iter()
            .find(|b| b.addrs.iter().any(|a| a.contains(guest)))
            .or(match bridges.as_slice() {
                [only] => Some(only),
                _ => None,
            })
            .map(|b| b.name.as_str())
    }
    /// The VXLAN device `dev`, when it is one.
    pub fn vxlan(&self, dev: &str) -> Option<&VxlanFacts> {
        self.vxlans.iter().find(|v| v.name == dev)
    }
    pub fn mtu_of(&self, dev: &str) -> Option<u32> {
        self.devices
            .iter()
            .find(|d| d.name == dev)
            .and_then(|d| d.mtu)
    }
}
