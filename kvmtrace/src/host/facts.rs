//! Reads the host facts that verdicts cite: ip_forward, the nftables base chains (from the
//! nftables reader, `host/nftables/`), and the iptables-legacy tables.

use crate::model::HostFacts;

/// Gathers the facts for the current network namespace. Never fails: what cannot be read is
/// left out.
pub fn gather() -> HostFacts {
    let ip_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .ok()
        .map(|s| s.trim() == "1");
    let legacy_tables = std::fs::read_to_string("/proc/net/ip_tables_names")
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default();
    // (ifindex, address, prefix) of both versions; IPv6 link-local ones left out.
    let mut addresses: Vec<(u32, std::net::IpAddr, u8)> = Vec::new();
    for ipv6 in [false, true] {
        let read = crate::host::netlink::ip_addresses(ipv6).unwrap_or_else(|e| {
            log::debug!("reading {}addresses: {e}", if ipv6 { "IPv6 " } else { "" });
            Vec::new()
        });
        addresses.extend(
            read.into_iter()
                .filter(|a| !ipv6 || a.scope == 0)
                .map(|a| (a.ifindex, a.addr, a.prefix)),
        );
    }
    let nft_chains = crate::host::nftables::base_chains().unwrap_or_else(|e| {
        log::debug!("reading nftables chains: {e}");
        Vec::new()
    });
    HostFacts {
        ip_forward,
        ip6_forward: std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding")
            .ok()
            .map(|s| s.trim() == "1"),
        nft_chains,
        legacy_tables,
        devices: with_macvtap_modes(devices(std::path::Path::new("/sys/class/net"), &addresses)),
        vxlans: vxlans(),
    }
}

/// The VXLAN devices, with the device of the route to each remote (an RTM_GETLINK dump and a
/// route query per device).
/// The host's VXLAN devices (empty when they cannot be read: logged).
pub fn vxlans() -> Vec<crate::model::VxlanFacts> {
    let list = crate::host::netlink::vxlans().unwrap_or_else(|e| {
        log::debug!("reading the VXLAN devices: {e}");
        Vec::new()
    });
    let name = crate::host::netlink::ifname;
    list.iter()
        .map(|v| {
            let fdb = crate::host::netlink::fdb_of(v.ifindex).unwrap_or_else(|e| {
                log::debug!("reading the forwarding entries of {}: {e}", v.name);
                Vec::new()
            });
            let fdb_remote = crate::host::netlink::fdb_default_remote(&fdb);
            crate::model::VxlanFacts {
                name: v.name.clone(),
                vni: v.vni,
                remote: v.remote,
                local: v.local,
                dev: (v.link != 0).then(|| name(v.link)).flatten(),
                route_dev: v.route_dev().and_then(name),
                port: v.port,
                mtu: v.mtu,
                fdb_remote: fdb_remote.filter(|_| v.remote.is_none()),
                fdb_macs: fdb
                    .iter()
                    .filter(|e| e.mac != [0; 6] && e.dst.is_some())
                    .count(),
            }
        })
        .collect()
}

/// Fills in the macvtaps' modes (not in sysfs: an `RTM_GETLINK` dump of the macvtaps).
fn with_macvtap_modes(mut devs: Vec<crate::model::DevFacts>) -> Vec<crate::model::DevFacts> {
    if devs.iter().all(|d| d.macvtap_lower.is_none()) {
        return devs;
    }
    let modes = crate::host::netlink::macvtap_modes().unwrap_or_else(|e| {
        log::debug!("reading the macvtaps' modes: {e}");
        Vec::new()
    });
    for d in &mut devs {
        d.macvtap_mode = modes
            .iter()
            .find(|(n, _)| *n == d.name)
            .map(|(_, m)| m.clone());
    }
    devs
}

/// Devices, their bridge, MTU and state, from sysfs; their addresses (IPv4, and IPv6 but
/// link-local) from `addrs` (RTM_GETADDR dumps: ifindex, address, prefix), by ifindex.
pub fn devices(
    sys_class_net: &std::path::Path,
    addrs: &[(u32, std::net::IpAddr, u8)],
) -> Vec<crate::model::DevFacts> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(sys_class_net) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        let read = |f: &str| {
            std::fs::read_to_string(p.join(f))
                .ok()
                .map(|s| s.trim().to_string())
        };
        let ifindex: Option<u32> = read("ifindex").and_then(|i| i.parse().ok());
        // IFF_UP: set up by its administrator.
        let admin_up = read("flags")
            .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
            .is_some_and(|f| f & 1 != 0);
        out.push(crate::model::DevFacts {
            bridge: p.join("bridge").is_dir(),
            addrs: addrs
                .iter()
                .filter(|a| Some(a.0) == ifindex)
                .map(|&(_, addr, prefix)| crate::model::DevAddr { addr, prefix })
                .collect(),
            master: std::fs::read_link(p.join("master"))
                .ok()
                .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned())),
            mtu: read("mtu").and_then(|m| m.parse().ok()),
            macvtap_lower: p.join("macvtap").is_dir().then(|| lower_of(&p)).flatten(),
            mac: p
                .join("macvtap")
                .is_dir()
                .then(|| read("address"))
                .flatten(),
            macvtap_mode: None,
            up: read("operstate").is_some_and(|s| s != "down") && admin_up,
            // `carrier` reads only while the device is up (EINVAL otherwise).
            no_carrier: admin_up && read("carrier").as_deref() == Some("0"),
            name,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The device a stacked device sits on: its `lower_DEV` entry in sysfs.
fn lower_of(dev: &std::path::Path) -> Option<String> {
    std::fs::read_dir(dev).ok()?.flatten().find_map(|e| {
        e.file_name()
            .to_str()?
            .strip_prefix("lower_")
            .map(str::to_string)
    })
}
