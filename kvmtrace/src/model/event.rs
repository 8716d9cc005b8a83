//! Decoded events: what the model, the views and recorded traces work on.
//!
//! A [`TraceEvent`] is a kernel [`kvmtrace_common::Event`] plus what only userspace knows at
//! capture time (drop-reason name from BTF, symbols from kallsyms, the device's kind). Once
//! decoded, nothing else about the capturing machine is needed: replay works anywhere.

use kvmtrace_common::{Event, HookKind, DIR_REPLY, EV_FLAG_HAS_IP, EV_FLAG_NEW};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Where an event was observed: the hook kind the kernel programs write, one enum on both sides.
pub use kvmtrace_common::HookKind as Point;

/// Request (VM → destination) or reply (destination → VM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Request,
    Reply,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Request => "request",
            Self::Reply => "reply",
        })
    }
}

/// The IPv4 netfilter hooks (`enum nf_inet_hooks`, include/uapi/linux/netfilter.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NfHook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl NfHook {
    pub fn from_num(n: u8) -> Option<Self> {
        Some(match n {
            0 => Self::Prerouting,
            1 => Self::Input,
            2 => Self::Forward,
            3 => Self::Output,
            4 => Self::Postrouting,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Prerouting => "PREROUTING",
            Self::Input => "INPUT",
            Self::Forward => "FORWARD",
            Self::Output => "OUTPUT",
            Self::Postrouting => "POSTROUTING",
        }
    }
}

impl fmt::Display for NfHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What kind of device an ifindex was at capture time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, Hash)]
#[serde(rename_all = "snake_case")]
pub enum DevKind {
    /// The followed VM's tap.
    Tap,
    /// A Linux bridge.
    Bridge,
    /// Any other device: the host's way out (uplink, veth, …).
    #[default]
    Other,
}

/// Packet headers as seen at one point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
pub struct Tuple {
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TCP/UDP source port; ICMP echo identifier.
    pub sport: u16,
    /// TCP/UDP destination port; ICMP echo sequence.
    pub dport: u16,
}

impl Tuple {
    pub fn proto_name(&self) -> &'static str {
        proto_name(self.proto)
    }
}

pub fn proto_name(p: u8) -> &'static str {
    match p {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        58 => "icmp6",
        _ => "ip",
    }
}

/// ICMP or ICMPv6.
pub fn is_icmp(proto: u8) -> bool {
    proto == 1 || proto == 58
}

/// An ICMP error that quotes the packet it is about: IPv4 unreachable (3), time exceeded
/// (11), parameter problem (12); ICMPv6 unreachable (1), packet too big (2), time exceeded
/// (3), parameter problem (4).
pub fn is_icmp_error(proto: u8, ty: u8) -> bool {
    (proto == 1 && matches!(ty, 3 | 11 | 12)) || (proto == 58 && matches!(ty, 1..=4))
}

/// An address of an event in its family (`FAMILY_V6`: all 16 bytes, else the first 4).
pub fn addr_of(family: u8, a: &[u8; 16]) -> IpAddr {
    if family == kvmtrace_common::FAMILY_V6 {
        IpAddr::V6(Ipv6Addr::from(*a))
    } else {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    }
}

/// One decoded observation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceEvent {
    pub ts_ns: u64,
    pub skb: u64,
    pub point: Point,
    pub dir: Direction,
    /// First sight of this skb (the kernel started following it here).
    pub new: bool,
    pub ifindex: u32,
    pub device: String,
    pub dev_kind: DevKind,
    pub netns: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub nf_hook: Option<NfHook>,
    /// Headers, when the IPv4 header could be read.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tuple: Option<Tuple>,
    pub len: u32,
    pub ttl: u8,
    pub ip_id: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// TCP flags (when proto is TCP).
    pub tcp_flags: u8,
    pub tcp_seq: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub smac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dmac: Option<String>,
    /// Drop events: reason name from the kernel's BTF (`NETFILTER_DROP`, …).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// Drop events: where kfree_skb was called from (`nf_hook_slow+0x8c`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub location: Option<String>,
    /// Drop events: the kernel stack, innermost first (symbols).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub stack: Vec<String>,
    /// Route lookups: the result.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub route: Option<Route>,
    /// ICMP errors: the destination of the packet the error is about.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub icmp_inner_dst: Option<IpAddr>,
    /// ICMP "fragmentation needed" / ICMPv6 "packet too big": the MTU it announces.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub icmp_mtu: Option<u32>,
    /// Seen inside a VXLAN packet on the underlay: the outer packet.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vxlan: Option<Vxlan>,
    /// ARP or DHCP seen on the tap (not part of any flow to the destination).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub l2: Option<L2>,
}

/// The outer packet of a VXLAN-encapsulated one (the underlay's view).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vxlan {
    pub vni: u32,
    /// Outer source and destination: the two tunnel endpoints (VTEPs).
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

impl Vxlan {
    /// `vxlan vni 42 192.0.2.2 > 198.51.100.1`: the outer packet as the underlay carries it.
    pub fn describe(&self) -> String {
        format!("vxlan vni {} {} > {}", self.vni, self.src, self.dst)
    }
}

/// Link-level conversation of the guest on its tap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum L2 {
    /// ARP: `op` 1 request (who-has `target` tell `sender`), 2 reply (`sender` is-at …).
    Arp {
        op: u8,
        sender: Ipv4Addr,
        target: Ipv4Addr,
    },
    /// DHCP: from the guest (client, UDP 68→67) or to it (server, 67→68).
    Dhcp { from_guest: bool },
    /// NDP (IPv6's ARP and router discovery): ICMPv6 `icmp6_type` 133 router solicitation,
    /// 134 router advertisement, 135 neighbour solicitation (for `target`), 136 neighbour
    /// advertisement (of `target`), 137 redirect; `source` is the sender's address.
    Ndp {
        icmp6_type: u8,
        source: Ipv6Addr,
        target: Ipv6Addr,
    },
    /// DHCPv6: from the guest (client, UDP 546→547) or to it (server, 547→546).
    Dhcp6 { from_guest: bool },
}

/// A `fib_table_lookup` result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub table: u32,
    /// 0 when a route was found; a negative errno otherwise.
    pub err: i32,
    pub oif: u32,
    pub device: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gateway: Option<IpAddr>,
    /// What the output device is: a route out of the VM's own bridge or tap sends the packet
    /// back where it came from.
    #[serde(default)]
    pub dev_kind: DevKind,
}

impl Route {
    /// Name of the routing table (the well-known ids of include/uapi/linux/rtnetlink.h).
    pub fn table_name(&self) -> String {
        match self.table {
            253 => "default".into(),
            254 => "main".into(),
            255 => "local".into(),
            n => n.to_string(),
        }
    }
    /// What the lookup error means for the packet.
    pub fn err_name(&self) -> Option<&'static str> {
        Some(match -self.err {
            0 => return None,
            101 => "no route (ENETUNREACH)",
            113 => "unreachable route (EHOSTUNREACH)",
            22 => "blackhole route (EINVAL)",
            13 => "prohibit route (EACCES)",
            11 => "no match in this table (EAGAIN)",
            _ => "route lookup failed",
        })
    }
}

/// A route the path devices' TC ingress looked up with `bpf_fib_lookup` (path hook set), to
/// be completed from the kernel's FIB: the helper tells neither the table nor, for "not
/// forwarded", whether the destination is local or has no route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RouteAsk {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// The device the packet came in on.
    pub iif: u32,
    /// The skb mark the lookup used.
    pub mark: u32,
    /// `BPF_FIB_LKUP_RET_*`.
    pub rc: u32,
}

/// The FIB's side of a [`RouteAsk`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteDetail {
    pub table: u32,
    /// 0, or the lookup's negative errno.
    pub err: i32,
    /// Output device when the helper gave none (0: keep the helper's).
    pub oif: u32,
}

/// `BPF_FIB_LKUP_RET_NOT_FWDED`: local or broadcast destination, or no route at all.
pub const FIB_RET_NOT_FWDED: u32 = 4;

/// Userspace facts needed to decode a raw event.
pub trait Decoder {
    fn drop_reason(&self, value: u32) -> Option<String>;
    fn symbol(&self, addr: u64) -> Option<String>;
    fn stack(&self, id: i32) -> Vec<String>;
    fn dev_kind(&self, ifindex: u32, name: &str) -> DevKind;
    /// Name of the followed tap (TC events carry no device name).
    fn tap_name(&self) -> String;
    /// Name of a device by its ifindex (the path devices' TC events carry no name).
    fn dev_name(&self, _ifindex: u32) -> Option<String> {
        None
    }
    /// Table and final error of a route found by `bpf_fib_lookup` (`None`: unknown; the
    /// table is then taken as main).
    fn route_detail(&self, _ask: &RouteAsk) -> Option<RouteDetail> {
        None
    }
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

#[cfg(test)]
impl TraceEvent {
    /// An ICMP echo request of 10.77.0.2 to 203.0.113.1 seen at `point` on `device`, for unit
    /// tests: they change what their case is about.
    pub(crate) fn for_test(point: Point, dir: Direction, dev_kind: DevKind, device: &str) -> Self {
        TraceEvent {
            ts_ns: 1,
            skb: 1,
            point,
            dir,
            new: false,
            ifindex: 1,
            device: device.into(),
            dev_kind,
            netns: 1,
            nf_hook: None,
            tuple: Some(Tuple {
                proto: 1,
                src: "10.77.0.2".parse().unwrap(),
                dst: "203.0.113.1".parse().unwrap(),
                sport: 7,
                dport: 1,
            }),
            len: 84,
            ttl: 64,
            ip_id: 1,
            icmp_type: 8,
            icmp_code: 0,
            tcp_flags: 0,
            tcp_seq: 0,
            smac: None,
            dmac: None,
            reason: None,
            location: None,
            stack: Vec::new(),
            route: None,
            icmp_inner_dst: None,
            icmp_mtu: None,
            vxlan: None,
            l2: None,
        }
    }
}

impl TraceEvent {
    /// Decodes a kernel event. Returns `None` for an unknown hook value.
    pub fn decode(e: &Event, d: &dyn Decoder) -> Option<Self> {
        let hook = HookKind::from_u8(e.hook)?;
        let point = hook;
        let mut device = cstr(&e.ifname);
        let helper = point == Point::Fib && e.flags & kvmtrace_common::EV_FLAG_ROUTE_HELPER != 0;
        let (mut table, mut err, mut oif) = (e.table, e.route_err, e.ifindex);
        if helper {
            let ask = RouteAsk {
                src: addr_of(e.family, &e.saddr),
                dst: addr_of(e.family, &e.daddr),
                proto: e.proto,
                sport: e.sport,
                dport: e.dport,
                iif: e.iif,
                mark: e.mark,
                rc: e.fib_ret,
            };
            table = 254;
            if ask.rc == FIB_RET_NOT_FWDED {
                err = -101;
            }
            if let Some(r) = d.route_detail(&ask) {
                table = r.table;
                err = r.err;
                if oif == 0 {
                    oif = r.oif;
                }
            }
        }
        if device.is_empty()
            && oif != 0
            && (helper || matches!(point, Point::NetifReceive | Point::DevXmit))
        {
            device = d.dev_name(oif).unwrap_or_default();
        }
        let has_ip = e.flags & EV_FLAG_HAS_IP != 0 || point == Point::Fib;
        let tuple = has_ip.then(|| Tuple {
            proto: e.proto,
            src: addr_of(e.family, &e.saddr),
            dst: addr_of(e.family, &e.daddr),
            sport: e.sport,
            dport: e.dport,
        });
        let route = (point == Point::Fib).then(|| Route {
            table,
            err,
            oif,
            device: device.clone(),
            gateway: (e.gw != [0; 16]).then(|| addr_of(e.family, &e.gw)),
            dev_kind: d.dev_kind(0, &device),
        });
        if point == Point::Fib {
            device.clear();
        }
        if matches!(point, Point::TapIngress | Point::TapEgress) {
            device = d.tap_name();
        }
        let (reason, location, stack) = if point == Point::Drop {
            (
                // No reason from the kernel (before 5.17): the drop classifier infers one
                // from the location (model::drop).
                if e.reason == kvmtrace_common::KFREE_NO_REASON {
                    None
                } else {
                    d.drop_reason(e.reason)
                        .or_else(|| Some(format!("reason {}", e.reason)))
                },
                d.symbol(e.location),
                if e.stack_id >= 0 {
                    d.stack(e.stack_id)
                } else {
                    Vec::new()
                },
            )
        } else {
            (None, None, Vec::new())
        };
        let is_icmp_err = is_icmp_error(e.proto, e.icmp_type);
        let dev_kind = if point == Point::Fib {
            DevKind::Other
        } else {
            d.dev_kind(e.ifindex, &device)
        };
        let has_eth = e.flags & kvmtrace_common::EV_FLAG_HAS_ETH != 0;
        let v6 = e.family == kvmtrace_common::FAMILY_V6;
        let from_guest = point == Point::TapIngress;
        let l2 = if e.flags & kvmtrace_common::EV_FLAG_ARP != 0 {
            Some(if v6 {
                L2::Ndp {
                    icmp6_type: e.icmp_type,
                    source: Ipv6Addr::from(e.saddr),
                    target: Ipv6Addr::from(e.daddr),
                }
            } else {
                L2::Arp {
                    op: e.icmp_type,
                    sender: Ipv4Addr::new(e.saddr[0], e.saddr[1], e.saddr[2], e.saddr[3]),
                    target: Ipv4Addr::new(e.daddr[0], e.daddr[1], e.daddr[2], e.daddr[3]),
                }
            })
        } else if e.flags & kvmtrace_common::EV_FLAG_DHCP != 0 {
            Some(if v6 {
                L2::Dhcp6 { from_guest }
            } else {
                L2::Dhcp { from_guest }
            })
        } else {
            None
        };
        let has_ip = has_ip && e.flags & kvmtrace_common::EV_FLAG_ARP == 0;
        let tuple = if has_ip { tuple } else { None };
        Some(TraceEvent {
            ts_ns: e.ts_ns,
            skb: e.skb,
            point,
            dir: if e.dir == DIR_REPLY {
                Direction::Reply
            } else {
                Direction::Request
            },
            new: e.flags & EV_FLAG_NEW != 0,
            ifindex: if point == Point::Fib { 0 } else { e.ifindex },
            device,
            dev_kind,
            netns: e.netns,
            nf_hook: matches!(point, Point::NfEnter | Point::NfExit)
                .then(|| NfHook::from_num(e.nf_hook))
                .flatten(),
            tuple,
            len: e.len,
            ttl: e.ttl,
            ip_id: e.ip_id,
            icmp_type: if is_icmp(e.proto) { e.icmp_type } else { 0 },
            icmp_code: if is_icmp(e.proto) { e.icmp_code } else { 0 },
            tcp_flags: if e.proto == 6 { e.icmp_type } else { 0 },
            tcp_seq: e.tcp_seq,
            smac: has_eth.then(|| mac(&e.smac)),
            dmac: has_eth.then(|| mac(&e.dmac)),
            reason,
            location,
            stack,
            route,
            icmp_inner_dst: (is_icmp_err && point != Point::Fib && l2.is_none())
                .then(|| addr_of(e.family, &e.inner_daddr)),
            icmp_mtu: (e.mtu != 0 && is_icmp_err).then_some(e.mtu),
            vxlan: (e.flags & kvmtrace_common::EV_FLAG_VXLAN != 0).then(|| Vxlan {
                vni: e.vni,
                src: Ipv4Addr::from(e.outer_saddr),
                dst: Ipv4Addr::from(e.outer_daddr),
            }),
            l2,
        })
    }

    /// Short description of the headers: `10.0.0.2 > 203.0.113.1 icmp echo id=7 seq=1`.
    pub fn headers(&self) -> String {
        match &self.l2 {
            Some(L2::Arp {
                op: 1,
                sender,
                target,
            }) => return format!("arp who-has {target} tell {sender}"),
            Some(L2::Arp { sender, .. }) => {
                return format!(
                    "arp reply {sender} is-at {}",
                    self.smac.as_deref().unwrap_or("?")
                )
            }
            Some(L2::Dhcp { from_guest: true }) => {
                return format!(
                    "dhcp from the guest ({})",
                    self.smac.as_deref().unwrap_or("?")
                )
            }
            Some(L2::Dhcp { from_guest: false }) => return "dhcp answer to the guest".into(),
            Some(L2::Dhcp6 { from_guest: true }) => {
                return format!(
                    "dhcpv6 from the guest ({})",
                    self.smac.as_deref().unwrap_or("?")
                )
            }
            Some(L2::Dhcp6 { from_guest: false }) => return "dhcpv6 answer to the guest".into(),
            Some(L2::Ndp {
                icmp6_type,
                source,
                target,
            }) => {
                return match icmp6_type {
                    133 => format!("ndp router solicitation from {source}"),
                    134 => format!("ndp router advertisement from {source}"),
                    135 => format!("ndp neighbour solicitation who-has {target} tell {source}"),
                    136 => format!(
                        "ndp neighbour advertisement {target} is-at {}",
                        self.smac.as_deref().unwrap_or("?")
                    ),
                    t => format!("ndp type {t} from {source}"),
                }
            }
            None => {}
        }
        let Some(t) = &self.tuple else {
            return "(no IP header)".into();
        };
        let inner = self.inner_headers(t);
        match &self.vxlan {
            Some(x) => format!("{inner} [{}]", x.describe()),
            None => inner,
        }
    }

    /// The IP headers of [`TraceEvent::headers`] (the inner packet's on the underlay).
    fn inner_headers(&self, t: &Tuple) -> String {
        match t.proto {
            1 => {
                let what = match (self.icmp_type, self.icmp_code) {
                    (8, _) => format!("echo request id={} seq={}", t.sport, t.dport),
                    (0, _) => format!("echo reply id={} seq={}", t.sport, t.dport),
                    (3, c) => format!("dest-unreachable code={c}"),
                    (11, _) => "time-exceeded".into(),
                    (ty, c) => format!("type={ty} code={c}"),
                };
                format!("{} > {} icmp {what}", t.src, t.dst)
            }
            58 => {
                let what = match (self.icmp_type, self.icmp_code) {
                    (128, _) => format!("echo request id={} seq={}", t.sport, t.dport),
                    (129, _) => format!("echo reply id={} seq={}", t.sport, t.dport),
                    (1, c) => format!("dest-unreachable code={c}"),
                    (2, _) => format!("packet-too-big mtu={}", self.icmp_mtu.unwrap_or(0)),
                    (3, _) => "time-exceeded".into(),
                    (ty, c) => format!("type={ty} code={c}"),
                };
                format!("{} > {} icmp6 {what}", t.src, t.dst)
            }
            6 => format!(
                "{}:{} > {}:{} tcp [{}] seq={}",
                t.src,
                t.sport,
                t.dst,
                t.dport,
                tcp_flags(self.tcp_flags),
                self.tcp_seq
            ),
            17 => format!("{}:{} > {}:{} udp", t.src, t.sport, t.dst, t.dport),
            p => format!("{} > {} proto {p}", t.src, t.dst),
        }
    }
}

/// `S`, `S.`, `R.`, … as tcpdump writes them.
pub fn tcp_flags(f: u8) -> String {
    let mut s = String::new();
    for (bit, c) in [
        (0x02, 'S'),
        (0x01, 'F'),
        (0x04, 'R'),
        (0x08, 'P'),
        (0x10, '.'),
    ] {
        if f & bit != 0 {
            s.push(c);
        }
    }
    if s.is_empty() {
        s.push('-');
    }
    s
}
/// Exact counters kept by the programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub events: u64,
    pub lost: u64,
    pub sampled_out: u64,
    /// Program runs the kernel skipped because another BPF program was already running on
    /// that CPU (its `recursion_misses`, 5.12+): a followed packet's hop may be among them.
    /// Absent from traces written before it was kept.
    #[serde(default)]
    pub missed: u64,
}

/// Run count and total run time of one program (`kernel.bpf_stats_enabled=1` makes the
/// kernel keep them; they stay 0 otherwise), and the runs the kernel skipped (always kept).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProgStats {
    pub name: String,
    pub runs: u64,
    pub run_time_ns: u64,
    /// Runs skipped because a BPF program was already running on that CPU.
    #[serde(default)]
    pub missed: u64,
}
