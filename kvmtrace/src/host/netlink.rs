//! Read-only rtnetlink for `doctor` and the route details of `follow`: addresses, routes,
//! neighbours, policy rules, links, and one route query (`route_get`, as `ip route get
//! fibmatch`). Requests are gets only: nothing is ever changed.
//!
//! rtnetlink messages (addresses, routes, neighbours, policy rules) are parsed and built with
//! `netlink-packet-route`; they travel over the one transport, `host/nl.rs` (a dump, one
//! request). nftables is read by `host/nftables/`.

use netlink_packet_core::{Emitable as _, Parseable as _};
use netlink_packet_route::AddressFamily;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::nl::{attrs, cstr, dump, ne32, request, Attrs, NETLINK_ROUTE};

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_GETROUTE: u16 = 26;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_GETADDR: u16 = 22;
pub const RTM_NEWNEIGH: u16 = 28;
pub const RTM_GETNEIGH: u16 = 30;
pub const RTM_NEWRULE: u16 = 32;
pub const RTM_GETRULE: u16 = 34;

const AF_INET: u8 = 2;

/// What a route query asks: a packet's addresses, protocol and ports, and the device it
/// came in on (0: a locally sent packet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RouteQuery {
    /// Both of one family (IPv4 or IPv6).
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub iif: u32,
    /// Firewall mark (fwmark rules).
    pub mark: u32,
}

/// The route the kernel's FIB matches for a packet (`ip route get fibmatch …`): `Err` is
/// the lookup's errno (ENETUNREACH no route, EINVAL blackhole, EHOSTUNREACH unreachable,
/// EACCES prohibit, EXDEV reverse-path filter, …).
pub fn route_get(q: &RouteQuery) -> io::Result<IpRoute> {
    route_query(q)
}

/// The one `RTM_GETROUTE` request behind [`route_get`] and [`route_lookup`]: FIB_MATCH (the
/// route as it stands in its table) and LOOKUP_TABLE (without it the answer's table is main
/// whatever rule chose the route); with an input device, the source too (a forwarded packet).
fn route_query(q: &RouteQuery) -> io::Result<IpRoute> {
    use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage};
    let mut m = RouteMessage::default();
    let (family, full) = if q.dst.is_ipv6() {
        (AddressFamily::Inet6, 128)
    } else {
        (AddressFamily::Inet, 32)
    };
    let ra = |a: IpAddr| match a {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    };
    m.header.address_family = family;
    m.header.destination_prefix_length = full;
    m.header.flags = RouteFlags::from_bits_retain(0x2000 | 0x1000);
    m.attributes.push(RouteAttribute::Destination(ra(q.dst)));
    if q.iif != 0 {
        m.header.source_prefix_length = full;
        m.attributes.push(RouteAttribute::Source(ra(q.src)));
        m.attributes.push(RouteAttribute::Iif(q.iif));
    }
    if q.mark != 0 {
        m.attributes.push(RouteAttribute::Mark(q.mark));
    }
    if q.proto != 0 {
        m.attributes.push(RouteAttribute::IpProto(q.proto));
    }
    if q.proto == 6 || q.proto == 17 {
        m.attributes.push(RouteAttribute::Sport(q.sport));
        m.attributes.push(RouteAttribute::Dport(q.dport));
    }
    let mut b = vec![0u8; m.buffer_len()];
    m.emit(&mut b);
    let (ty, body) = request(NETLINK_ROUTE, RTM_GETROUTE, &b)?;
    if ty != RTM_NEWROUTE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected netlink answer type {ty}"),
        ));
    }
    parse_ip_route(&body).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad route"))
}

pub const NUD_INCOMPLETE: u16 = 0x01;
pub const NUD_REACHABLE: u16 = 0x02;
pub const NUD_STALE: u16 = 0x04;
pub const NUD_DELAY: u16 = 0x08;
pub const NUD_PROBE: u16 = 0x10;
pub const NUD_FAILED: u16 = 0x20;
pub const NUD_NOARP: u16 = 0x40;
pub const NUD_PERMANENT: u16 = 0x80;

/// `ip neigh`'s name of a state.
pub fn nud_name(state: u16) -> &'static str {
    match state {
        NUD_INCOMPLETE => "INCOMPLETE",
        NUD_REACHABLE => "REACHABLE",
        NUD_STALE => "STALE",
        NUD_DELAY => "DELAY",
        NUD_PROBE => "PROBE",
        NUD_FAILED => "FAILED",
        NUD_NOARP => "NOARP",
        NUD_PERMANENT => "PERMANENT",
        0 => "NONE",
        _ => "?",
    }
}

/// A VXLAN device (`ip -d link show type vxlan`): what its packets are wrapped in and where
/// they go on the underlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanLink {
    pub ifindex: u32,
    pub name: String,
    pub vni: u32,
    /// The default remote VTEP (`remote`, or a multicast `group`); None: none configured.
    pub remote: Option<Ipv4Addr>,
    pub local: Option<Ipv4Addr>,
    /// The underlay device it is bound to (`dev`); 0: none.
    pub link: u32,
    /// Destination UDP port (host order).
    pub port: u16,
    pub mtu: u32,
    /// The bridge it is a port of (ifindex; 0: none).
    pub master: u32,
}

impl VxlanLink {
    /// The device its outer packets leave through: the one it is bound to (`dev`), else the
    /// device of the route to its remote.
    pub fn underlay(&self) -> Option<u32> {
        if self.link != 0 {
            return Some(self.link);
        }
        self.route_dev()
    }

    /// Its default VTEP: the `remote`, else the first IPv4 destination of its all-zeros
    /// forwarding entries (read only then: one dump of the bridge FDB).
    pub fn default_remote(&self) -> Option<Ipv4Addr> {
        self.remote
            .or_else(|| fdb_default_remote(&fdb_of(self.ifindex).ok()?))
    }

    /// The output device of the route to its default VTEP (None: none, or no route).
    pub fn route_dev(&self) -> Option<u32> {
        let remote = self.default_remote()?;
        let q = RouteQuery {
            src: IpAddr::V4(self.local.unwrap_or(Ipv4Addr::UNSPECIFIED)),
            dst: IpAddr::V4(remote),
            proto: 17,
            sport: 0,
            dport: self.port,
            iif: 0,
            mark: 0,
        };
        route_get(&q).ok()?.nexthops.first().map(|h| h.0)
    }
}

/// One forwarding entry of a VXLAN device (`bridge fdb show dev vx0`): frames for `mac` are
/// sent to the VTEP `dst`. The all-zeros MAC is the default entry (what `remote` creates,
/// or `bridge fdb append 00:00:00:00:00:00 … dst`): every frame without an entry of its own,
/// broadcasts and ARP included, is sent there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub dst: Option<IpAddr>,
}

/// The first IPv4 VTEP of the all-zeros (default) entries of a VXLAN device's forwarding
/// entries `fdb`.
pub fn fdb_default_remote(fdb: &[FdbEntry]) -> Option<Ipv4Addr> {
    fdb.iter()
        .filter(|e| e.mac == [0; 6])
        .find_map(|e| match e.dst {
            Some(IpAddr::V4(a)) => Some(a),
            _ => None,
        })
}

/// Parses one `RTM_NEWNEIGH` body of an `AF_BRIDGE` dump: (ifindex, entry).
pub fn parse_fdb(body: &[u8]) -> Option<(u32, FdbEntry)> {
    const AF_BRIDGE: u8 = 7;
    const NDA_DST: u16 = 1;
    const NDA_LLADDR: u16 = 2;
    // ndmsg: family, pad, pad(2), ifindex(4), state(2), flags, type (12 bytes).
    if body.len() < 12 || body[0] != AF_BRIDGE {
        return None;
    }
    let ifindex = ne32(&body[4..8])?;
    let mut e = FdbEntry {
        mac: [0; 6],
        dst: None,
    };
    let mut has_mac = false;
    for (ty, p) in attrs(&body[12..]) {
        match ty {
            NDA_LLADDR if p.len() == 6 => {
                e.mac.copy_from_slice(p);
                has_mac = true;
            }
            NDA_DST if p.len() == 4 => {
                e.dst = Some(IpAddr::V4(Ipv4Addr::new(p[0], p[1], p[2], p[3])));
            }
            NDA_DST if p.len() == 16 => {
                let b: [u8; 16] = p.try_into().ok()?;
                e.dst = Some(IpAddr::V6(b.into()));
            }
            _ => {}
        }
    }
    has_mac.then_some((ifindex, e))
}

/// The forwarding entries of the device `ifindex` (an `AF_BRIDGE` `RTM_GETNEIGH` dump).
/// The request is an `ifinfomsg` naming the device, which the kernel takes as a filter
/// (net/core/rtnetlink.c `valid_fdb_dump_legacy`: `brport_idx`), so a host with a large
/// FDB is not read whole.
pub fn fdb_of(ifindex: u32) -> io::Result<Vec<FdbEntry>> {
    let mut body = vec![0u8; 16];
    body[0] = 7; // AF_BRIDGE
    body[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    Ok(dump(NETLINK_ROUTE, RTM_GETNEIGH, &body)?
        .into_iter()
        .filter(|(t, _)| *t == RTM_NEWNEIGH)
        .filter_map(|(_, b)| parse_fdb(&b))
        .filter(|(i, _)| *i == ifindex)
        .map(|(_, e)| e)
        .collect())
}

/// The name of the device `ifindex` of this namespace.
pub fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    Some(cstr(&buf))
}

/// Parses one `RTM_NEWLINK` body; None unless it is a VXLAN device.
pub fn parse_vxlan(body: &[u8]) -> Option<VxlanLink> {
    use netlink_packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
    let m = LinkMessage::parse(body).ok()?;
    let mut v = VxlanLink {
        ifindex: m.header.index,
        name: String::new(),
        vni: 0,
        remote: None,
        local: None,
        link: 0,
        port: 0,
        mtu: 0,
        master: 0,
    };
    let mut vxlan = false;
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => v.name = n.clone(),
            LinkAttribute::Mtu(n) => v.mtu = *n,
            LinkAttribute::Controller(n) => v.master = *n,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Data(InfoData::Vxlan(attrs)) = i {
                        vxlan = true;
                        for x in attrs {
                            match x {
                                InfoVxlan::Id(id) => v.vni = *id,
                                InfoVxlan::Group(g) if !g.is_unspecified() => v.remote = Some(*g),
                                InfoVxlan::Local(l) if !l.is_unspecified() => v.local = Some(*l),
                                InfoVxlan::Link(l) => v.link = *l,
                                InfoVxlan::Port(p) => v.port = *p,
                                _ => {}
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    vxlan.then_some(v)
}

/// The VXLAN devices of this namespace.
pub fn vxlans() -> io::Result<Vec<VxlanLink>> {
    vxlan_dump(0)
}

/// The VXLAN devices that are ports of the bridge `master` (ifindex).
pub fn vxlans_of(master: u32) -> io::Result<Vec<VxlanLink>> {
    Ok(vxlan_dump(master)?
        .into_iter()
        .filter(|v| v.master == master)
        .collect())
}

/// An `RTM_GETLINK` dump the kernel filters itself (net/core/rtnetlink.c `rtnl_dump_ifinfo`):
/// VXLAN devices only, and of the bridge `master` when not 0, so that the path refresh (every
/// 500 ms) does not read every device of a host with many.
fn vxlan_dump(master: u32) -> io::Result<Vec<VxlanLink>> {
    Ok(link_dump("vxlan", master)?
        .iter()
        .filter_map(|b| parse_vxlan(b))
        .collect())
}

/// The `RTM_NEWLINK` bodies of the devices of `kind` ("vxlan", "macvtap"), of the bridge
/// `master` when not 0: the kernel filters on `IFLA_LINKINFO { IFLA_INFO_KIND }` and
/// `IFLA_MASTER`.
fn link_dump(kind: &str, master: u32) -> io::Result<Vec<Vec<u8>>> {
    const IFLA_MASTER: u16 = 10;
    const IFLA_LINKINFO: u16 = 18;
    const IFLA_INFO_KIND: u16 = 1;
    let mut a = Attrs::new();
    if master != 0 {
        a = a.bytes(IFLA_MASTER, &master.to_ne_bytes());
    }
    // IFLA_LINKINFO { IFLA_INFO_KIND "<kind>\0" }.
    a = a.nested(IFLA_LINKINFO, Attrs::new().str(IFLA_INFO_KIND, kind));
    // ifinfomsg: family, pad, type, index, flags, change (16 bytes).
    let mut b = vec![0u8; 16];
    b.extend_from_slice(a.as_bytes());
    Ok(dump(NETLINK_ROUTE, RTM_GETLINK, &b)?
        .into_iter()
        .filter(|(t, _)| *t == RTM_NEWLINK)
        .map(|(_, b)| b)
        .collect())
}

/// Parses one `RTM_NEWLINK` body: (name, mode) of a macvtap (`private`, `vepa`, `bridge`,
/// `passthru`, `source`), None for any other device.
pub fn parse_macvtap_mode(body: &[u8]) -> Option<(String, String)> {
    use netlink_packet_route::link::{
        InfoData, InfoMacVtap, LinkAttribute, LinkInfo, LinkMessage, MacVtapMode,
    };
    let m = LinkMessage::parse(body).ok()?;
    let mut name = None;
    let mut mode = None;
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Data(InfoData::MacVtap(attrs)) = i {
                        for x in attrs {
                            if let InfoMacVtap::Mode(md) = x {
                                mode = Some(match md {
                                    MacVtapMode::Private => "private".to_string(),
                                    MacVtapMode::Vepa => "vepa".into(),
                                    MacVtapMode::Bridge => "bridge".into(),
                                    MacVtapMode::Passthrough => "passthru".into(),
                                    MacVtapMode::Source => "source".into(),
                                    other => format!("{other:?}").to_ascii_lowercase(),
                                });
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Some((name?, mode?))
}

/// The macvtaps of this namespace and their modes.
pub fn macvtap_modes() -> io::Result<Vec<(String, String)>> {
    Ok(link_dump("macvtap", 0)?
        .iter()
        .filter_map(|b| parse_macvtap_mode(b))
        .collect())
}

// The addresses, routes, neighbours and policy rules of either family: one type each, one
// dump ([`family_dump`]).

const AF_INET6: u8 = 10;

/// An address of either family on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpIfAddr {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub prefix: u8,
    /// `RT_SCOPE_*`: 0 universe (global, ULA), 253 link, 254 host.
    pub scope: u8,
}

/// `Some` for the families the parsers below read, IPv4 and IPv6: `ip_family(family)?`.
fn ip_family(f: AddressFamily) -> Option<()> {
    matches!(f, AddressFamily::Inet | AddressFamily::Inet6).then_some(())
}

/// Parses one `RTM_NEWADDR` body of either family.
pub fn parse_ip_addr(body: &[u8]) -> Option<IpIfAddr> {
    use netlink_packet_route::address::{AddressAttribute, AddressMessage};
    let m = AddressMessage::parse(body).ok()?;
    ip_family(m.header.family)?;
    // IFA_LOCAL is the interface's own address (IPv4 point-to-point: IFA_ADDRESS is the peer);
    // IPv6 sends IFA_ADDRESS only, unless point-to-point.
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(a) => Some(*a),
        _ => None,
    });
    let address = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(a) => Some(*a),
        _ => None,
    });
    Some(IpIfAddr {
        ifindex: m.header.index,
        addr: local.or(address)?,
        prefix: m.header.prefix_len,
        scope: u8::from(m.header.scope),
    })
}

/// A route of either family (of any table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpRoute {
    pub table: u32,
    pub dst: IpAddr,
    pub dst_len: u8,
    /// `RTN_UNICAST` = 1, `RTN_BLACKHOLE` = 6, `RTN_UNREACHABLE` = 7, `RTN_PROHIBIT` = 8, …
    pub kind: u8,
    /// `RTPROT_*`: 2 kernel, 3 boot, 4 static, 9 ra (router advertisement), …
    pub protocol: u8,
    pub priority: u32,
    /// (output ifindex, gateway) of each next hop (one unless multipath).
    pub nexthops: Vec<(u32, Option<IpAddr>)>,
}

/// Parses one `RTM_NEWROUTE` body of either family.
pub fn parse_ip_route(body: &[u8]) -> Option<IpRoute> {
    use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteVia};
    let m = RouteMessage::parse(body).ok()?;
    let unspec = match m.header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let ip = |a: &RouteAddress| match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    };
    // RTA_VIA: an IPv4 route with an IPv6 next hop (RFC 5549).
    let gateway = |attrs: &[RouteAttribute]| {
        attrs.iter().find_map(|a| match a {
            RouteAttribute::Gateway(g) => ip(g),
            RouteAttribute::Via(RouteVia::Inet6(g)) => Some(IpAddr::V6(*g)),
            RouteAttribute::Via(RouteVia::Inet(g)) => Some(IpAddr::V4(*g)),
            _ => None,
        })
    };
    let mut r = IpRoute {
        table: u32::from(m.header.table),
        dst: unspec,
        dst_len: m.header.destination_prefix_length,
        kind: u8::from(m.header.kind),
        protocol: u8::from(m.header.protocol),
        priority: 0,
        nexthops: Vec::new(),
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => r.table = *t,
            RouteAttribute::Destination(d) => r.dst = ip(d).unwrap_or(r.dst),
            RouteAttribute::Priority(p) => r.priority = *p,
            RouteAttribute::Oif(oif) => r.nexthops.push((*oif, gateway(&m.attributes))),
            RouteAttribute::MultiPath(hops) => r.nexthops.extend(
                hops.iter()
                    .map(|h| (h.interface_index, gateway(&h.attributes))),
            ),
            _ => {}
        }
    }
    Some(r)
}

/// A neighbour entry of either family (ARP or NDP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpNeigh {
    pub ifindex: u32,
    pub dst: IpAddr,
    /// `NUD_*` bits (`linux/neighbour.h`).
    pub state: u16,
    pub lladdr: Option<String>,
    /// `NTF_ROUTER`: the neighbour said it is a router (IPv6).
    pub router: bool,
}

/// Parses one `RTM_NEWNEIGH` body of either family.
pub fn parse_ip_neigh(body: &[u8]) -> Option<IpNeigh> {
    use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
    let m = NeighbourMessage::parse(body).ok()?;
    ip_family(m.header.family)?;
    let dst = m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => Some(IpAddr::V4(*d)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(d)) => Some(IpAddr::V6(*d)),
        _ => None,
    })?;
    let lladdr = m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(m) if m.len() == 6 => Some(
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
        ),
        _ => None,
    });
    Some(IpNeigh {
        ifindex: m.header.ifindex,
        dst,
        state: u16::from(m.header.state),
        lladdr,
        router: m.header.flags.bits() & 0x80 != 0,
    })
}

/// A policy-routing rule of either family, with the selectors a route lookup can judge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpRule {
    pub priority: u32,
    pub table: u32,
    /// `FR_ACT_*`: 1 to table, 2 goto, 3 nop, 6 blackhole, 7 unreachable, 8 prohibit.
    pub action: u8,
    /// `to PREFIX`, `from PREFIX`, `iif NAME`.
    pub dst: Option<(IpAddr, u8)>,
    pub src: Option<(IpAddr, u8)>,
    pub iif: Option<String>,
    /// `not`: the rule applies when its selectors do not match.
    pub invert: bool,
    /// Selectors not modelled (fwmark, oif, uid, ports, ip proto, tos, suppressors): the rule
    /// may or may not apply.
    pub other: Vec<String>,
}

/// Parses one `RTM_NEWRULE` body of either family.
pub fn parse_ip_rule(body: &[u8]) -> Option<IpRule> {
    use netlink_packet_route::rule::{RuleAttribute, RuleMessage};
    let m = RuleMessage::parse(body).ok()?;
    ip_family(m.header.family)?;
    let mut r = IpRule {
        priority: 0,
        table: u32::from(m.header.table),
        action: u8::from(m.header.action),
        dst: None,
        src: None,
        iif: None,
        invert: m.header.flags.bits() & 2 != 0,
        other: Vec::new(),
    };
    for a in &m.attributes {
        match a {
            RuleAttribute::Priority(p) => r.priority = *p,
            RuleAttribute::Table(t) => r.table = *t,
            RuleAttribute::Destination(d) => r.dst = Some((*d, m.header.dst_len)),
            RuleAttribute::Source(s) => r.src = Some((*s, m.header.src_len)),
            RuleAttribute::Iifname(n) => r.iif = Some(n.clone()),
            RuleAttribute::Oifname(n) => r.other.push(format!("oif {n}")),
            RuleAttribute::FwMark(v) if *v != 0 => r.other.push(format!("fwmark 0x{v:x}")),
            RuleAttribute::SuppressPrefixLen(v) if *v != u32::MAX => {
                r.other.push(format!("suppress_prefixlength {v}"))
            }
            RuleAttribute::UidRange(_) => r.other.push("uidrange".into()),
            RuleAttribute::IpProtocol(_) => r.other.push("ipproto".into()),
            RuleAttribute::SourcePortRange(_) | RuleAttribute::DestinationPortRange(_) => {
                r.other.push("port range".into())
            }
            _ => {}
        }
    }
    if m.header.tos != 0 {
        r.other.push(format!("tos 0x{:x}", m.header.tos));
    }
    Some(r)
}

/// One dump of the family's objects (`ipv6`: IPv6, else IPv4): the request `get` with a
/// header of `len` zero bytes but its family, each answer of type `new` parsed.
fn family_dump<T>(
    ipv6: bool,
    get: u16,
    new: u16,
    len: usize,
    parse: fn(&[u8]) -> Option<T>,
) -> io::Result<Vec<T>> {
    let mut b = vec![0u8; len];
    b[0] = if ipv6 { AF_INET6 } else { AF_INET };
    Ok(dump(NETLINK_ROUTE, get, &b)?
        .into_iter()
        .filter(|(t, _)| *t == new)
        .filter_map(|(_, b)| parse(&b))
        .collect())
}

/// The addresses of every interface, of one family (`ifaddrmsg`: 8 bytes).
pub fn ip_addresses(ipv6: bool) -> io::Result<Vec<IpIfAddr>> {
    family_dump(ipv6, RTM_GETADDR, RTM_NEWADDR, 8, parse_ip_addr)
}

/// The routes of every table, of one family (`rtmsg`: 12 bytes).
pub fn ip_routes(ipv6: bool) -> io::Result<Vec<IpRoute>> {
    family_dump(ipv6, RTM_GETROUTE, RTM_NEWROUTE, 12, parse_ip_route)
}

/// The neighbour entries (ARP, NDP) of one family (`ndmsg`: 12 bytes).
pub fn ip_neighbours(ipv6: bool) -> io::Result<Vec<IpNeigh>> {
    family_dump(ipv6, RTM_GETNEIGH, RTM_NEWNEIGH, 12, parse_ip_neigh)
}

/// Policy-routing rules of one family, with their selectors (`fib_rule_hdr`: 12 bytes).
pub fn ip_rules(ipv6: bool) -> io::Result<Vec<IpRule>> {
    family_dump(ipv6, RTM_GETRULE, RTM_NEWRULE, 12, parse_ip_rule)
}

/// The route the kernel's FIB matches for a packet to `dst` of either family (`ip route get
/// fibmatch DST [from SRC iif DEV]`): with `from` (source, input ifindex) the lookup is the
/// one a forwarded packet gets, policy rules on `from`/`iif` included. `Err` is the lookup's
/// errno: ENETUNREACH no route, EINVAL blackhole, EHOSTUNREACH unreachable (IPv4 also: a
/// forwarded packet while forwarding is off), EACCES prohibit, EXDEV reverse-path filter.
pub fn route_lookup(dst: IpAddr, from: Option<(IpAddr, u32)>) -> io::Result<IpRoute> {
    let (src, iif) = from
        .filter(|(s, _)| s.is_ipv6() == dst.is_ipv6())
        .unwrap_or((dst, 0));
    route_query(&RouteQuery {
        src,
        dst,
        proto: 0,
        sport: 0,
        dport: 0,
        iif,
        mark: 0,
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;

    #[test]
    fn fdb_entries_of_a_vxlan_carry_their_mac_and_vtep() {
        // ndmsg: AF_BRIDGE, ifindex 9; NDA_LLADDR all zeros, NDA_DST 198.51.100.1.
        let mut b = vec![7u8, 0, 0, 0];
        b.extend_from_slice(&9u32.to_ne_bytes());
        b.extend_from_slice(&[0x80, 0, 0x02, 0]);
        b.extend(nla(2, &[0; 6]));
        b.extend(nla(1, &[198, 51, 100, 1]));
        let (i, e) = parse_fdb(&b).expect("entry");
        assert_eq!(i, 9);
        assert_eq!(e.mac, [0; 6]);
        assert_eq!(e.dst, Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1))));
        // An IPv6 VTEP, and a bridge port's own entry without one.
        let mut b6 = b[..12].to_vec();
        b6.extend(nla(2, &[0x52, 0x54, 0, 0x4b, 0x58, 3]));
        b6.extend(nla(
            1,
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        ));
        assert_eq!(
            parse_fdb(&b6).unwrap().1.dst,
            Some("2001:db8::1".parse().unwrap())
        );
        let mut own = b[..12].to_vec();
        own.extend(nla(2, &[0x52, 0x54, 0, 0x4b, 0x58, 3]));
        assert_eq!(parse_fdb(&own).unwrap().1.dst, None);
        // Not AF_BRIDGE, or no MAC: not an entry.
        let mut inet = b.clone();
        inet[0] = 2;
        assert_eq!(parse_fdb(&inet), None);
        assert_eq!(parse_fdb(&b[..12]), None);
    }

    /// One netlink attribute, padded to 4 bytes.
    pub fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
        crate::host::nl::Attrs::new()
            .bytes(ty, payload)
            .as_bytes()
            .to_vec()
    }

    #[test]
    fn parses_an_address() {
        let mut b = vec![2u8, 24, 0x80, 0];
        b.extend_from_slice(&7u32.to_ne_bytes());
        b.extend(nla(1, &[10, 77, 0, 1]));
        b.extend(nla(2, &[10, 77, 0, 1]));
        b.extend(nla(3, b"br0\0"));
        assert_eq!(
            parse_ip_addr(&b),
            Some(IpIfAddr {
                ifindex: 7,
                addr: IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1)),
                prefix: 24,
                scope: 0
            })
        );
        // Neither IPv4 nor IPv6: not an address of ours.
        let mut other = b.clone();
        other[0] = 7;
        assert_eq!(parse_ip_addr(&other), None);
    }

    #[test]
    fn parses_a_default_route_and_a_multipath_one() {
        // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32)
        let mut b = vec![2u8, 0, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0];
        b.extend(nla(15, &254u32.to_ne_bytes()));
        b.extend(nla(5, &[192, 0, 2, 1]));
        b.extend(nla(4, &3u32.to_ne_bytes()));
        let r = parse_ip_route(&b).expect("route");
        assert_eq!(r.table, 254);
        assert_eq!(r.dst_len, 0);
        assert_eq!(r.kind, 1);
        assert_eq!(
            r.nexthops,
            vec![(3, Some(Ipv4Addr::new(192, 0, 2, 1).into()))]
        );

        let mut m = vec![2u8, 0, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0];
        let mut nh = Vec::new();
        for (ifi, gw) in [(3u32, [192, 0, 2, 1]), (4, [198, 51, 100, 1])] {
            let g = nla(5, &gw);
            nh.extend_from_slice(&((8 + g.len()) as u16).to_ne_bytes());
            nh.extend_from_slice(&[0, 0]);
            nh.extend_from_slice(&ifi.to_ne_bytes());
            nh.extend(g);
        }
        m.extend(nla(9, &nh));
        let r = parse_ip_route(&m).expect("multipath route");
        assert_eq!(r.nexthops.len(), 2);
        assert_eq!(
            r.nexthops[1],
            (4, Some(Ipv4Addr::new(198, 51, 100, 1).into()))
        );
    }

    #[test]
    fn parses_a_failed_neighbour() {
        let mut b = vec![2u8, 0, 0, 0];
        b.extend_from_slice(&5u32.to_ne_bytes());
        b.extend_from_slice(&NUD_FAILED.to_ne_bytes());
        b.extend_from_slice(&[0, 1]);
        b.extend(nla(1, &[192, 0, 2, 99]));
        let n = parse_ip_neigh(&b).expect("neigh");
        assert_eq!(n.ifindex, 5);
        assert_eq!(n.dst, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99)));
        assert_eq!(nud_name(n.state), "FAILED");
        assert_eq!(n.lladdr, None);
        b.extend(nla(2, &[0x52, 0x54, 0, 0x4b, 0x54, 2]));
        assert_eq!(
            parse_ip_neigh(&b).unwrap().lladdr.as_deref(),
            Some("52:54:00:4b:54:02")
        );
    }

    #[test]
    fn parses_a_policy_rule() {
        let mut b = vec![2u8, 0, 0, 0, 100, 0, 0, 1];
        b.extend_from_slice(&[0; 4]);
        b.extend(nla(6, &1000u32.to_ne_bytes()));
        let r = parse_ip_rule(&b).expect("rule");
        assert_eq!((r.priority, r.table, r.action), (1000, 100, 1));
    }

    #[test]
    fn parses_ipv6_address_route_neighbour_and_rule() {
        let a: std::net::Ipv6Addr = "fd00:77::1".parse().unwrap();
        let mut b = vec![10u8, 64, 0x80, 0];
        b.extend_from_slice(&7u32.to_ne_bytes());
        b.extend(nla(1, &a.octets()));
        assert_eq!(
            parse_ip_addr(&b),
            Some(IpIfAddr {
                ifindex: 7,
                addr: IpAddr::V6(a),
                prefix: 64,
                scope: 0
            })
        );

        let gw: std::net::Ipv6Addr = "2001:db8:2::1".parse().unwrap();
        let mut r = vec![10u8, 0, 0, 0, 254, 9, 0, 1, 0, 0, 0, 0];
        r.extend(nla(15, &254u32.to_ne_bytes()));
        r.extend(nla(5, &gw.octets()));
        r.extend(nla(4, &4u32.to_ne_bytes()));
        r.extend(nla(6, &1024u32.to_ne_bytes()));
        let route = parse_ip_route(&r).expect("route");
        assert_eq!(route.dst, IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        assert_eq!(route.protocol, 9);
        assert_eq!(route.priority, 1024);
        assert_eq!(route.nexthops, vec![(4, Some(IpAddr::V6(gw)))]);

        let mut n = vec![10u8, 0, 0, 0];
        n.extend_from_slice(&4u32.to_ne_bytes());
        n.extend_from_slice(&NUD_REACHABLE.to_ne_bytes());
        n.extend_from_slice(&[0x80, 1]);
        n.extend(nla(1, &gw.octets()));
        let ne = parse_ip_neigh(&n).expect("neigh");
        assert_eq!(ne.dst, IpAddr::V6(gw));
        assert!(ne.router);
        assert_eq!(nud_name(ne.state), "REACHABLE");

        // from fd00:77::/64 lookup 100, priority 100
        let mut ru = vec![10u8, 0, 64, 0, 100, 0, 0, 1];
        ru.extend_from_slice(&[0; 4]);
        ru.extend(nla(2, &a.octets()));
        ru.extend(nla(6, &100u32.to_ne_bytes()));
        let rule = parse_ip_rule(&ru).expect("rule");
        assert_eq!(rule.priority, 100);
        assert_eq!(rule.table, 100);
        assert_eq!(rule.action, 1);
        assert_eq!(rule.src, Some((IpAddr::V6(a), 64)));
        assert!(rule.other.is_empty());
    }
}
