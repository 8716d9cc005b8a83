//! One snapshot of everything `doctor` judges, read from procfs, sysfs and netlink of the
//! current network namespace. The checks are pure functions of it, so unit tests build a
//! `Host` by hand.

use super::rules::{self, Ruleset};
use crate::host::netlink::{self, IfAddr, Neigh, Route};
use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;

/// A network device as sysfs shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dev {
    pub name: String,
    pub ifindex: u32,
    pub mtu: Option<u32>,
    /// `IFF_UP` in `flags`: administratively up.
    pub admin_up: bool,
    /// `carrier` (unreadable while the device is down).
    pub carrier: Option<bool>,
    pub operstate: String,
    pub flags: u32,
    /// The device it is enslaved to (`master` link).
    pub master: Option<String>,
    /// Has `bridge/` (a Linux bridge).
    pub is_bridge: bool,
    /// Has `tun_flags` (a tun/tap device).
    pub is_tap: bool,
    /// A macvtap (has `macvtap/`): its lower device (`lower_DEV`).
    pub macvtap_lower: Option<String>,
    /// `brport/state` of a bridge port: 0 disabled, 1 listening, 2 learning, 3 forwarding,
    /// 4 blocking (`BR_STATE_*`, linux/if_bridge.h).
    pub brport_state: Option<u8>,
    /// A bridge's ports (`brif/`).
    pub ports: Vec<String>,
    /// A bridge's `bridge/nf_call_iptables` option.
    pub nf_call_iptables: Option<bool>,
    /// A bridge's `bridge/forward_delay` (centiseconds).
    pub forward_delay: Option<u32>,
    /// IPv4 addresses (from netlink).
    pub addrs: Vec<(Ipv4Addr, u8)>,
}

/// A UDP socket bound to port 67 (a DHCP server).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpSock {
    pub local: Ipv4Addr,
    pub inode: u64,
    /// `pid N (comm)` of a process holding it, when found.
    pub owner: Option<String>,
}

/// Everything read, each part with the reason when it could not be.
#[derive(Clone, Debug)]
pub struct Host {
    pub devs: Vec<Dev>,
    /// sysctl values keyed by their path under /proc/sys (`net/ipv4/ip_forward`); a missing
    /// key could not be read.
    pub sysctl: BTreeMap<String, String>,
    pub routes: Result<Vec<Route>, String>,
    pub neighs: Result<Vec<Neigh>, String>,
    /// IPv4 policy-routing rules: (priority, table).
    pub fib_rules: Result<Vec<(u32, u32)>, String>,
    pub ruleset: Result<Ruleset, String>,
    /// `/proc/net/ip_tables_names`: iptables-legacy tables in use.
    pub legacy_tables: Vec<String>,
    /// `/proc/sys/net/bridge` exists: br_netfilter is loaded.
    pub br_netfilter: bool,
    pub udp67: Result<Vec<UdpSock>, String>,
}

impl Host {
    pub fn dev(&self, name: &str) -> Option<&Dev> {
        self.devs.iter().find(|d| d.name == name)
    }
    pub fn dev_by_index(&self, i: u32) -> Option<&Dev> {
        self.devs.iter().find(|d| d.ifindex == i)
    }
    /// A sysctl by its dotted name (`net.ipv4.conf.br0.rp_filter`); interface names may hold
    /// dots, so callers give the path form when they build keys from names.
    pub fn sysctl(&self, path: &str) -> Option<&str> {
        self.sysctl.get(path).map(String::as_str)
    }
}

fn read(p: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn read_dev(sys: &Path, name: &str) -> Dev {
    let d = sys.join(name);
    let flags = read(d.join("flags"))
        .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0);
    let master = fs::read_link(d.join("master"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let mut ports: Vec<String> = fs::read_dir(d.join("brif"))
        .map(|it| {
            it.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ports.sort();
    Dev {
        name: name.to_string(),
        ifindex: read(d.join("ifindex"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        mtu: read(d.join("mtu")).and_then(|s| s.parse().ok()),
        admin_up: flags & 1 != 0,
        carrier: read(d.join("carrier")).map(|c| c == "1"),
        operstate: read(d.join("operstate")).unwrap_or_default(),
        flags,
        master,
        is_bridge: d.join("bridge").is_dir(),
        is_tap: d.join("tun_flags").exists(),
        macvtap_lower: d
            .join("macvtap")
            .is_dir()
            .then(|| {
                fs::read_dir(&d).ok()?.flatten().find_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix("lower_")
                        .map(str::to_string)
                })
            })
            .flatten(),
        brport_state: read(d.join("brport/state")).and_then(|s| s.parse().ok()),
        ports,
        nf_call_iptables: read(d.join("bridge/nf_call_iptables")).map(|v| v == "1"),
        forward_delay: read(d.join("bridge/forward_delay")).and_then(|s| s.parse().ok()),
        addrs: Vec::new(),
    }
}

/// Parses `/proc/net/udp`: sockets bound to local `port` as (address, inode).
pub fn parse_proc_net_udp(text: &str, port: u16) -> Vec<(Ipv4Addr, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (addr, p) = f.get(1)?.split_once(':')?;
            if u16::from_str_radix(p, 16).ok()? != port {
                return None;
            }
            // The address is the kernel's u32 printed in hex: host byte order.
            let a = u32::from_str_radix(addr, 16).ok()?;
            let ip = Ipv4Addr::from(a.to_ne_bytes());
            Some((ip, f.get(9)?.parse().ok()?))
        })
        .collect()
}

/// `pid N (comm)` of a process with `socket:[inode]` open.
fn socket_owner(inode: u64) -> Option<String> {
    let want = format!("socket:[{inode}]");
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == want.as_str()) {
                let comm = read(e.path().join("comm")).unwrap_or_default();
                return Some(format!("pid {pid} ({comm})"));
            }
        }
    }
    None
}

/// Reads the snapshot for the current network namespace. Never fails: what cannot be read is
/// recorded as such.
pub fn gather() -> Host {
    let sys = Path::new("/sys/class/net");
    let mut names: Vec<String> = fs::read_dir(sys)
        .map(|it| {
            it.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut devs: Vec<Dev> = names.iter().map(|n| read_dev(sys, n)).collect();
    match netlink::addresses() {
        Ok(addrs) => {
            for IfAddr {
                ifindex,
                addr,
                prefix,
            } in addrs
            {
                if let Some(d) = devs.iter_mut().find(|d| d.ifindex == ifindex) {
                    d.addrs.push((addr, prefix));
                }
            }
        }
        Err(e) => log::warn!("reading interface addresses: {e}"),
    }

    let mut sysctl = BTreeMap::new();
    let mut keys: Vec<String> = vec![
        "net/ipv4/ip_forward".into(),
        "net/bridge/bridge-nf-call-iptables".into(),
        "net/netfilter/nf_conntrack_count".into(),
        "net/netfilter/nf_conntrack_max".into(),
    ];
    for dev in std::iter::once("all").chain(names.iter().map(String::as_str)) {
        for k in ["forwarding", "rp_filter"] {
            keys.push(format!("net/ipv4/conf/{dev}/{k}"));
        }
    }
    for k in keys {
        if let Some(v) = read(Path::new("/proc/sys").join(&k)) {
            sysctl.insert(k, v);
        }
    }

    let udp67 = fs::read_to_string("/proc/net/udp")
        .map_err(|e| format!("reading /proc/net/udp: {e}"))
        .map(|t| {
            parse_proc_net_udp(&t, 67)
                .into_iter()
                .map(|(local, inode)| UdpSock {
                    local,
                    inode,
                    owner: socket_owner(inode),
                })
                .collect()
        });

    Host {
        devs,
        sysctl,
        routes: netlink::routes().map_err(|e| format!("reading routes over netlink: {e}")),
        neighs: netlink::neighbours().map_err(|e| format!("reading neighbours over netlink: {e}")),
        fib_rules: netlink::fib_rules()
            .map_err(|e| format!("reading policy-routing rules over netlink: {e}")),
        ruleset: rules::read_ruleset().map_err(|e| format!("reading nftables over netlink: {e}")),
        legacy_tables: read("/proc/net/ip_tables_names")
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default(),
        br_netfilter: Path::new("/proc/sys/net/bridge").is_dir(),
        udp67,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_dhcp_listeners_in_proc_net_udp() {
        let text = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  331: 00000000:0043 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 123456 2 0000000000000000 0\n\
  332: 01004D0A:0043 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 123457 2 0000000000000000 0\n\
  333: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 999 2 0000000000000000 0\n";
        let v = parse_proc_net_udp(text, 67);
        assert_eq!(
            v,
            vec![
                (Ipv4Addr::UNSPECIFIED, 123456),
                (Ipv4Addr::new(10, 77, 0, 1), 123457)
            ]
        );
        assert_eq!(
            parse_proc_net_udp(text, 53),
            vec![(Ipv4Addr::LOCALHOST, 999)]
        );
    }
}
