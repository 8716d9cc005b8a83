//! The devices of a followed VM's path, for the path hook set: its bridge, the bridge's
//! uplink ports (bridged mode), and the devices of every route that covers the destination
//! (any table, so that a policy route is covered too), plus any device a followed packet was
//! actually routed to. The `dev_ingress` / `dev_egress` TC programs are attached to exactly
//! these (TCX links; clsact filters before Linux 6.6), and the set follows route and port
//! changes while kvmtrace runs.
//!
//! A bridge with a VXLAN port takes the VM's frames into an overlay: they leave the host
//! encapsulated through the VXLAN device's underlay device (its `dev`, else the device of the
//! route to its remote), which is attached too; the kernel programs look inside the outer
//! UDP packets there (the object's `VXLAN_PORT` constant).
//!
//! Per-device programs cost nothing to traffic that never crosses those devices, where the
//! global tracepoints and netfilter links cost every packet of the host.

use crate::capture::clsact::Ledger;
use crate::capture::kernel::{attach_tc, KernelCaps, TcWay};
use crate::host::netlink;
use aya::programs::{SchedClassifier, TcAttachType};
use aya::Ebpf;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

/// One device the path needs, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub ifindex: u32,
    pub name: String,
    pub why: String,
}

fn sys(dev: &str, what: &str) -> std::path::PathBuf {
    Path::new("/sys/class/net").join(dev).join(what)
}

fn is_tun(dev: &str) -> bool {
    sys(dev, "tun_flags").exists()
}

use crate::host::sys::ifindex as index_of;
pub use crate::host::sys::ifname as name_of;

/// Whether the prefix `net`/`len` holds `a` (never when of another family).
pub fn contains(net: impl Into<IpAddr>, len: u8, a: impl Into<IpAddr>) -> bool {
    let net = net.into();
    let max = if net.is_ipv4() { 32 } else { 128 };
    ipnet::IpNet::new(net, len.min(max)).is_ok_and(|n| n.trunc().contains(&a.into()))
}

/// The devices the path hook set attaches to, read from the host now: the tap's bridge and
/// its other ports, a macvtap's lower device, the devices of the routes to each destination
/// (IPv4 and IPv6), and those the followed packets were routed to.
pub fn wanted(tap: &str, dests: &[ipnet::IpNet], seen_oifs: &[u32]) -> Vec<Wanted> {
    let mut out: Vec<Wanted> = Vec::new();
    let mut add = |ifindex: u32, name: String, why: String| {
        if name != tap && name != "lo" && !out.iter().any(|w| w.ifindex == ifindex) {
            out.push(Wanted { ifindex, name, why });
        }
    };
    let master = std::fs::read_link(sys(tap, "master"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    if let Some(br) = &master {
        if let Some(i) = index_of(br) {
            add(i, br.clone(), format!("{tap}'s bridge"));
        }
        // Bridged mode: frames leave through the bridge's other ports, never through the
        // bridge device itself. Other VMs' taps are not the way out.
        let vxlans = bridge_vxlans(br);
        if let Ok(ports) = std::fs::read_dir(sys(br, "brif")) {
            for p in ports.flatten() {
                let name = p.file_name().to_string_lossy().into_owned();
                if name != tap && !is_tun(&name) {
                    if let Some(i) = index_of(&name) {
                        let why = match vxlans.iter().find(|v| v.ifindex == i) {
                            Some(v) => format!("VXLAN port of {br} (vni {})", v.vni),
                            None => format!("uplink port of {br}"),
                        };
                        add(i, name, why);
                    }
                }
            }
        }
        for vx in vxlans {
            if let Some(i) = underlay_of(&vx) {
                if let Some(name) = name_of(i) {
                    let remote = match (vx.remote, vx.remote.or_else(|| vx.default_remote())) {
                        (Some(r), _) => r.to_string(),
                        (None, Some(r)) => format!("{r} (fdb 00:00:00:00:00:00)"),
                        (None, None) => "none".to_string(),
                    };
                    let why = format!("underlay of {} (vni {}, remote {remote})", vx.name, vx.vni);
                    add(i, name, why);
                }
            }
        }
    }
    // A macvtap (or macvlan) has no bridge: its frames leave through its lower device
    // (`lower_DEV` in sysfs).
    if let Ok(entries) = std::fs::read_dir(Path::new("/sys/class/net").join(tap)) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(lower) = n.strip_prefix("lower_") {
                if let Some(i) = index_of(lower) {
                    add(i, lower.to_string(), format!("{tap}'s lower device"));
                }
            }
        }
    }
    let table_name = |t: u32| match t {
        254 => "main".to_string(),
        t => t.to_string(),
    };
    for (ipv6, family) in [(true, "IPv6"), (false, "IPv4")] {
        let to: Vec<IpAddr> = dests
            .iter()
            .map(|d| d.addr())
            .filter(|a| a.is_ipv6() == ipv6)
            .collect();
        if to.is_empty() {
            continue;
        }
        let routes = match netlink::ip_routes(ipv6) {
            Ok(routes) => routes,
            Err(e) => {
                log::warn!("reading the {family} routes: {e}");
                continue;
            }
        };
        // Unicast routes only (RTN_UNICAST).
        for r in routes
            .iter()
            .filter(|r| r.kind == 1 && to.iter().any(|d| contains(r.dst, r.dst_len, *d)))
        {
            for (oif, _) in &r.nexthops {
                if let Some(name) = name_of(*oif) {
                    let why = format!(
                        "route {}/{} table {}",
                        r.dst,
                        r.dst_len,
                        table_name(r.table)
                    );
                    add(*oif, name, why);
                }
            }
        }
    }
    for oif in seen_oifs {
        if let Some(name) = name_of(*oif) {
            add(*oif, name, "a followed packet was routed there".into());
        }
    }
    out
}

/// The VXLAN devices that are ports of `bridge` (empty when none, or unreadable).
pub fn bridge_vxlans(bridge: &str) -> Vec<netlink::VxlanLink> {
    let Some(bi) = index_of(bridge) else {
        return Vec::new();
    };
    match netlink::vxlans_of(bi) {
        Ok(v) => v,
        Err(e) => {
            log::warn!("reading the VXLAN devices: {e}");
            Vec::new()
        }
    }
}

/// The device a VXLAN device's outer packets leave through (see `VxlanLink::underlay`).
pub fn underlay_of(vx: &netlink::VxlanLink) -> Option<u32> {
    vx.underlay()
}

/// The UDP port of the VXLAN overlay on `tap`'s bridge (the first VXLAN port's), for
/// the object's `VXLAN_PORT` constant; 0: the bridge has none.
pub fn tap_vxlan_port(tap: &str) -> u16 {
    std::fs::read_link(sys(tap, "master"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .and_then(|br| bridge_vxlans(&br).first().map(|v| v.port))
        .unwrap_or(0)
}

/// One program's link on a device (dropping it detaches the program).
type DevLink = (&'static str, aya::programs::tc::SchedClassifierLink);

/// The path devices with programs attached, by ifindex.
#[derive(Default)]
pub struct Attached {
    links: BTreeMap<u32, (String, Vec<DevLink>)>,
}

impl Attached {
    /// Attaches to what is wanted and not attached, detaches what is no longer wanted.
    /// Returns (what changed, devices that could not take the programs and why), one line
    /// each. A device that failed is left without programs (none half-attached).
    pub fn sync(
        &mut self,
        ebpf: &mut Ebpf,
        want: &[Wanted],
        at_s: f64,
        caps: &KernelCaps,
        ledger: &mut Ledger,
    ) -> (Vec<String>, Vec<String>) {
        let (mut notes, mut failed) = (Vec::new(), Vec::new());
        let when = if at_s > 0.0 {
            format!(" from +{at_s:.1} s")
        } else {
            String::new()
        };
        let gone: Vec<u32> = self
            .links
            .keys()
            .copied()
            .filter(|i| !want.iter().any(|w| w.ifindex == *i))
            .collect();
        for i in gone {
            // Dropping the links detaches them (a device that vanished took them with it).
            let Some((name, _links)) = self.links.remove(&i) else {
                continue;
            };
            notes.push(format!(
                "tc dev_ingress/dev_egress detached from {name}{when}"
            ));
        }
        for w in want {
            if self.links.contains_key(&w.ifindex) {
                continue;
            }
            let mut links = Vec::new();
            let mut way = TcWay::Tcx;
            let mut err = None;
            for (prog, at) in [
                ("dev_ingress", TcAttachType::Ingress),
                ("dev_egress", TcAttachType::Egress),
            ] {
                let Some(p) = ebpf
                    .program_mut(prog)
                    .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
                else {
                    continue;
                };
                match attach_tc(p, prog, &w.name, at, caps, ledger) {
                    Ok((link, how)) => {
                        links.push((prog, link));
                        way = how;
                    }
                    Err(e) => {
                        err = Some(format!(
                            "cannot attach {prog} to {} ({}): {e}",
                            w.name, w.why
                        ));
                        break;
                    }
                }
            }
            if let Some(e) = err {
                failed.push(e);
                continue;
            }
            if !links.is_empty() {
                notes.push(format!(
                    "tc dev_ingress/dev_egress on {} ({}){}{when}",
                    w.name,
                    w.why,
                    if way == TcWay::Clsact { "; clsact" } else { "" }
                ));
                self.links.insert(w.ifindex, (w.name.clone(), links));
            }
        }
        (notes, failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_contain_their_addresses() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let a = ip("203.0.113.7");
        assert!(contains(ip("0.0.0.0"), 0, a));
        assert!(contains(ip("203.0.113.0"), 24, a));
        assert!(contains(a, 32, a));
        assert!(!contains(ip("203.0.113.8"), 32, a));
        assert!(!contains(ip("198.51.100.0"), 24, a));
        let v6 = ip("2001:db8::7");
        assert!(contains(ip("::"), 0, v6));
        assert!(contains(ip("2001:db8::"), 64, v6));
        assert!(!contains(ip("2001:db8::8"), 128, v6));
        // Never across families: not even a default route of the other.
        assert!(!contains(ip("::"), 0, a));
        assert!(!contains(ip("0.0.0.0"), 0, v6));
    }
}
