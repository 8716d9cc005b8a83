//! Wire types of `kvmtrace watch` (the always-on counters): kernel programs in
//! `kvmtrace-ebpf/src/watch.rs`, reader in `kvmtrace/src/capture/watch.rs`.

/// `WatchTapKey::dir`: frames leaving the VM (TC ingress of its tap).
pub const WATCH_FROM_VM: u32 = 0;
/// `WatchTapKey::dir`: frames handed to the VM (TC egress of its tap).
pub const WATCH_TO_VM: u32 = 1;
/// `WatchDropKey::dir`: a drop placed by its tap only (neither its IPv4 nor its IPv6 source or
/// destination is a learned guest address).
pub const WATCH_DIR_UNKNOWN: u32 = 2;

/// Most VM NICs (taps) watched at once: `WatchTapStats::vm` and `WatchDropKey::vm` are below
/// this. Sizes the per-VM kernel maps; a tap found beyond it is not watched and is said so
/// (`kvmtrace_vm_unwatched`). 4 096: twice the densest hosts measured for (2 000 NICs over
/// several bridges: a bridge takes at most 1 024 ports, `BR_MAX_PORTS` in
/// net/bridge/br_private.h).
pub const WATCH_MAX_VMS: u32 = 4096;

/// Guest addresses learned per IP version (`WATCH_VM_IPS`, `WATCH_VM_IPS6`): 4 per watched VM
/// on average.
pub const WATCH_MAX_ADDRS: u32 = 4 * WATCH_MAX_VMS;

/// Key of `WATCH_TAP_STATS`: a watched tap and a direction. Userspace creates the entries
/// when it attaches to the tap (the TC programs only look up and bump: no per-packet update).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WatchTapKey {
    pub ifindex: u32,
    pub dir: u32,
}

/// Per-CPU value of `WATCH_TAP_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchTapStats {
    pub packets: u64,
    pub bytes: u64,
    /// ARP requests (op 1) and replies (op 2) seen in this direction.
    pub arp_requests: u64,
    pub arp_replies: u64,
    /// DHCP client→server (from the VM) or server→client (to the VM) datagrams.
    pub dhcp: u64,
    /// Index of the VM (userspace's slot, below `WATCH_MAX_VMS`).
    pub vm: u32,
    /// Last IPv4 source learned on this CPU (network order): a new address is looked up in
    /// `WATCH_VM_IPS` only when it differs, so steady traffic costs no map lookup for it.
    pub last_src: [u8; 4],
    /// Requests (from the VM) or replies (to the VM) by kind and class of the remote address,
    /// IPv4 and IPv6 together: index `kind * WATCH_CLASSES + class` (`WATCH_KIND_*`,
    /// `WATCH_CLASS_*`).
    pub conv: [u64; WATCH_CONV],
    /// NDP (ICMPv6, RFC 4861) seen in this direction: neighbour solicitations (type 135) and
    /// advertisements (136), router solicitations (133) and advertisements (134).
    pub ndp_ns: u64,
    pub ndp_na: u64,
    pub ndp_rs: u64,
    pub ndp_ra: u64,
    /// DHCPv6 client→server (UDP 546 → 547, from the VM) or server→client (547 → 546, to the
    /// VM) datagrams.
    pub dhcp6: u64,
    /// Last IPv6 source learned on this CPU: its 16 bytes as two words in memory order (words,
    /// not bytes: compared and stored without byte loops). Looked up in `WATCH_VM_IPS6` only
    /// when it differs, like `last_src`.
    pub last_src6: [u64; 2],
}

/// Request kinds counted at the tap: TCP SYN (reply: SYN+ACK or RST), ICMP echo request
/// (reply: echo reply), DNS query to UDP port 53 (reply: from UDP port 53).
pub const WATCH_KIND_TCP_SYN: usize = 0;
pub const WATCH_KIND_ICMP_ECHO: usize = 1;
pub const WATCH_KIND_DNS: usize = 2;
pub const WATCH_KINDS: usize = 3;
/// Classes of the remote address: RFC 1918 and RFC 6598 (private), 169.254/16 (link-local,
/// e.g. a metadata service), any other unicast (public). Loopback, multicast and broadcast
/// are not counted.
pub const WATCH_CLASS_PRIVATE: usize = 0;
pub const WATCH_CLASS_LINK_LOCAL: usize = 1;
pub const WATCH_CLASS_PUBLIC: usize = 2;
pub const WATCH_CLASSES: usize = 3;
pub const WATCH_CONV: usize = WATCH_KINDS * WATCH_CLASSES;

/// The class of a remote IPv4 address (`WATCH_CLASS_*`), or `None` when not counted.
#[inline(always)]
pub fn watch_class(a: [u8; 4]) -> Option<usize> {
    if a[0] == 0 || a[0] == 127 || a[0] >= 224 {
        None
    } else if a[0] == 10
        || (a[0] == 172 && a[1] & 0xf0 == 16)
        || (a[0] == 192 && a[1] == 168)
        || (a[0] == 100 && a[1] & 0xc0 == 64)
    {
        Some(WATCH_CLASS_PRIVATE)
    } else if a[0] == 169 && a[1] == 254 {
        Some(WATCH_CLASS_LINK_LOCAL)
    } else {
        Some(WATCH_CLASS_PUBLIC)
    }
}

/// The class of a remote IPv6 address (`WATCH_CLASS_*`), or `None` when not counted: fc00::/7
/// (unique local) is private, fe80::/10 link-local, 2000::/3 (global unicast) public; anything
/// else (loopback, unspecified, multicast, IPv4-mapped, the unassigned ranges) is not counted.
/// Only the first two bytes decide.
#[inline(always)]
pub fn watch_class6(a: &[u8; 16]) -> Option<usize> {
    if a[0] & 0xfe == 0xfc {
        Some(WATCH_CLASS_PRIVATE)
    } else if a[0] == 0xfe && a[1] & 0xc0 == 0x80 {
        Some(WATCH_CLASS_LINK_LOCAL)
    } else if a[0] & 0xe0 == 0x20 {
        Some(WATCH_CLASS_PUBLIC)
    } else {
        None
    }
}

/// Value of `WATCH_LAST_REMOTE`: the remote address of a VM's last dropped packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchRemote {
    /// The address's bytes (network order) as two words in memory order: an IPv6 address's
    /// 16, an IPv4 address's 4 then zeros.
    pub addr: [u64; 2],
    /// 4 or 6; 0: no drop placed by address yet.
    pub family: u32,
    pub _pad: u32,
}

impl WatchRemote {
    /// The address's 16 bytes in network order.
    pub fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.addr[0].to_ne_bytes());
        b[8..].copy_from_slice(&self.addr[1].to_ne_bytes());
        b
    }
}

/// Kernel stack frames kept in a drop's key: enough to reach the caller of `nf_hook_slow`
/// (7 frames for a FORWARD drop on Linux 6.18: the program, `bpf_trace_run4`,
/// `sk_skb_reason_drop`, `nft_do_chain`, `nft_do_chain_inet`, `nf_hook_slow`, `ip_forward`) and
/// bridge netfilter's deeper paths.
pub const WATCH_STACK_DEPTH: usize = 12;

/// Key of `WATCH_DROPS`: one drop site of one VM's packets. The stack is in the key itself
/// (`bpf_get_stack`), not in a stack-trace map, whose hash buckets collide and would then lose
/// the hook.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WatchDropKey {
    pub vm: u32,
    /// `enum skb_drop_reason` value (names from the kernel's BTF).
    pub reason: u32,
    /// `skb->dev->ifindex` at the drop.
    pub ifindex: u32,
    /// `WATCH_FROM_VM`, `WATCH_TO_VM` or `WATCH_DIR_UNKNOWN`.
    pub dir: u32,
    /// The `location` argument of `kfree_skb` (return address in the dropping function).
    pub location: u64,
    /// Innermost kernel frames (return addresses; 0 past the stack's end). Userspace names
    /// the netfilter hook from them.
    pub stack: [u64; WATCH_STACK_DEPTH],
}

/// Value of the `WATCH_CONFIG` array (index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchConfig {
    /// Network namespace inode watched; 0 = not started (every program returns at once).
    pub netns: u32,
    pub _pad: u32,
}

/// Indexes of `WATCH_COUNTERS` (per CPU).
/// Drops of watched VMs counted in `WATCH_DROPS`.
pub const WCNT_DROPS: u32 = 0;
/// Drops of watched VMs not counted by site because `WATCH_DROPS` was full.
pub const WCNT_DROPS_UNKEYED: u32 = 1;
/// New guest addresses not learned because `WATCH_VM_IPS` or `WATCH_VM_IPS6` was full.
pub const WCNT_IPS_FULL: u32 = 2;
pub const WCNT_MAX: u32 = 3;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::WatchTapKey {}
    unsafe impl aya::Pod for super::WatchTapStats {}
    unsafe impl aya::Pod for super::WatchDropKey {}
    unsafe impl aya::Pod for super::WatchConfig {}
    unsafe impl aya::Pod for super::WatchRemote {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    #[test]
    fn layouts_are_stable() {
        assert_eq!(core::mem::size_of::<WatchTapKey>(), 8);
        assert_eq!(
            core::mem::size_of::<WatchTapStats>(),
            48 + 8 * WATCH_CONV + 5 * 8 + 16
        );
        assert_eq!(core::mem::size_of::<WatchRemote>(), 24);
        assert_eq!(
            core::mem::size_of::<WatchDropKey>(),
            24 + 8 * WATCH_STACK_DEPTH
        );
        assert_eq!(core::mem::size_of::<WatchConfig>(), 8);
    }

    #[test]
    fn address_classes() {
        assert_eq!(watch_class([10, 1, 2, 3]), Some(WATCH_CLASS_PRIVATE));
        assert_eq!(watch_class([172, 31, 0, 1]), Some(WATCH_CLASS_PRIVATE));
        assert_eq!(watch_class([172, 32, 0, 1]), Some(WATCH_CLASS_PUBLIC));
        assert_eq!(watch_class([192, 168, 0, 1]), Some(WATCH_CLASS_PRIVATE));
        assert_eq!(watch_class([100, 64, 0, 1]), Some(WATCH_CLASS_PRIVATE));
        assert_eq!(watch_class([100, 128, 0, 1]), Some(WATCH_CLASS_PUBLIC));
        assert_eq!(
            watch_class([169, 254, 169, 254]),
            Some(WATCH_CLASS_LINK_LOCAL)
        );
        assert_eq!(watch_class([203, 0, 113, 1]), Some(WATCH_CLASS_PUBLIC));
        assert_eq!(watch_class([127, 0, 0, 1]), None);
        assert_eq!(watch_class([224, 0, 0, 251]), None);
        assert_eq!(watch_class([255, 255, 255, 255]), None);
        assert_eq!(watch_class([0, 0, 0, 0]), None);
    }

    fn v6(s: &str) -> [u8; 16] {
        s.parse::<std::net::Ipv6Addr>().unwrap().octets()
    }

    #[test]
    fn ipv6_address_classes() {
        for (a, class) in [
            ("fd00:77::1", Some(WATCH_CLASS_PRIVATE)),
            ("fc00::1", Some(WATCH_CLASS_PRIVATE)),
            ("fdff:ffff::1", Some(WATCH_CLASS_PRIVATE)),
            ("fe80::1", Some(WATCH_CLASS_LINK_LOCAL)),
            ("febf:ffff::1", Some(WATCH_CLASS_LINK_LOCAL)),
            // fec0::/10 (deprecated site-local) is not fe80::/10.
            ("fec0::1", None),
            ("2001:db8:ffff::1", Some(WATCH_CLASS_PUBLIC)),
            ("2a00:1450::1", Some(WATCH_CLASS_PUBLIC)),
            ("3fff:ffff::1", Some(WATCH_CLASS_PUBLIC)),
            ("4000::1", None),
            ("1fff::1", None),
            ("::1", None),
            ("::", None),
            ("::ffff:203.0.113.1", None),
            ("ff02::1", None),
            ("ff0e::1", None),
        ] {
            assert_eq!(watch_class6(&v6(a)), class, "{}", a);
        }
    }

    #[test]
    fn a_remote_reads_back_as_its_bytes() {
        let a = v6("2001:db8:ffff::1");
        let r = WatchRemote {
            addr: [
                u64::from_ne_bytes(a[..8].try_into().unwrap()),
                u64::from_ne_bytes(a[8..].try_into().unwrap()),
            ],
            family: 6,
            _pad: 0,
        };
        assert_eq!(r.bytes(), a);
    }
}
