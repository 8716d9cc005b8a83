//! One snapshot of everything `doctor` judges, read from procfs, sysfs and netlink of the
//! current network namespace. The checks are pure functions of it, so unit tests build a
//! `Host` by hand.

use super::family::Family;
use super::rules::{self, Ruleset};
use crate::host::netlink::{self, IpIfAddr, IpNeigh, IpRoute, IpRule};
use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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
    /// A macvtap's mode (`bridge`, `vepa`, `private`, `passthru`, `source`; netlink).
    pub macvtap_mode: Option<String>,
    /// `brport/state` of a bridge port: 0 disabled, 1 listening, 2 learning, 3 forwarding,
    /// 4 blocking (`BR_STATE_*`, linux/if_bridge.h).
    pub brport_state: Option<u8>,
    /// A bridge's ports (`brif/`).
    pub ports: Vec<String>,
    /// A bridge's `bridge/nf_call_iptables` option.
    pub nf_call_iptables: Option<bool>,
    /// A bridge's `bridge/nf_call_ip6tables` option.
    pub nf_call_ip6tables: Option<bool>,
    /// A bridge's `bridge/forward_delay` (centiseconds).
    pub forward_delay: Option<u32>,
    /// IPv4 addresses (from netlink).
    pub addrs: Vec<(Ipv4Addr, u8)>,
    /// IPv6 addresses of global scope (global unicast and ULA; from netlink).
    pub addrs6: Vec<(Ipv6Addr, u8)>,
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
    /// IPv4 routes of every table.
    pub routes: Result<Vec<IpRoute>, String>,
    /// IPv4 neighbour (ARP) entries.
    pub neighs: Result<Vec<IpNeigh>, String>,
    pub ruleset: Result<Ruleset, String>,
    /// `/proc/net/ip_tables_names`: iptables-legacy tables in use.
    pub legacy_tables: Vec<String>,
    /// `/proc/sys/net/bridge` exists: br_netfilter is loaded.
    pub br_netfilter: bool,
    pub udp67: Result<Vec<UdpSock>, String>,
    /// IPv6 routes of every table.
    pub routes6: Result<Vec<IpRoute>, String>,
    /// IPv6 neighbour (NDP) entries.
    pub neighs6: Result<Vec<IpNeigh>, String>,
    /// Policy-routing rules with their selectors: IPv4, IPv6.
    pub ip_rules4: Result<Vec<IpRule>, String>,
    pub ip_rules6: Result<Vec<IpRule>, String>,
    /// `/proc/net/ip6_tables_names`: ip6tables-legacy tables in use.
    pub legacy_tables6: Vec<String>,
    /// The VXLAN devices (a bridge's VXLAN port carries the VM's frames into an overlay).
    pub vxlans: Vec<crate::model::VxlanFacts>,
    /// Router-advertisement daemons (radvd, dnsmasq) of this network namespace, or why the
    /// processes could not be read.
    pub ra_daemons: Result<Vec<RaDaemon>, String>,
    /// The kernel's route to the destination given on the command line.
    pub dest_route: Option<DestRoute>,
}

/// A process that may send router advertisements, and what its configuration says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaDaemon {
    /// `pid N (comm)`.
    pub who: String,
    /// `radvd` or `dnsmasq`.
    pub kind: String,
    /// The interfaces it serves (None: every interface).
    pub ifaces: Option<Vec<String>>,
    /// It sends RAs: radvd with an `interface` block, dnsmasq with `enable-ra` or an RA mode
    /// in an IPv6 `dhcp-range`.
    pub sends_ra: bool,
    /// The configuration read (command line, files).
    pub config: String,
}

/// The kernel's answer for the route to a destination: the lookup a forwarded packet from
/// the VM gets (`from`: a VM address and the input device), and, when that is refused, the
/// lookup of a packet the host itself sends (which tells a routing fault from an input one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestRoute {
    /// The destination looked up.
    pub dst: IpAddr,
    /// (source address, input device) of the forwarded lookup.
    pub from: Option<(IpAddr, String)>,
    /// The matched route, or the lookup's errno.
    pub answer: Result<IpRoute, i32>,
    /// The host's own lookup, when the forwarded one failed.
    pub local: Option<Result<IpRoute, i32>>,
}

/// Asks the kernel for the route to `dst` as a packet from `from` (address, device) would
/// get it.
pub fn lookup_dest(h: &Host, dst: IpAddr, from: Option<(IpAddr, String)>) -> DestRoute {
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
    let with_iif = from
        .as_ref()
        .and_then(|(a, d)| h.dev(d).map(|d| (*a, d.ifindex)));
    let answer = netlink::route_lookup(dst, with_iif).map_err(errno);
    let local = (answer.is_err() && with_iif.is_some())
        .then(|| netlink::route_lookup(dst, None).map_err(errno));
    DestRoute {
        dst,
        from,
        answer,
        local,
    }
}

impl Dev {
    /// The addresses of family `f` (IPv6: of global scope).
    pub fn addrs_of(&self, f: Family) -> Vec<(IpAddr, u8)> {
        match f {
            Family::V4 => self.addrs.iter().map(|&(a, l)| (a.into(), l)).collect(),
            Family::V6 => self.addrs6.iter().map(|&(a, l)| (a.into(), l)).collect(),
        }
    }
}

impl Host {
    /// The routes of family `f`, or why they could not be read.
    pub fn routes_of(&self, f: Family) -> Result<&[IpRoute], &String> {
        match f {
            Family::V4 => self.routes.as_deref(),
            Family::V6 => self.routes6.as_deref(),
        }
    }
    /// The neighbour entries (ARP, NDP) of family `f`, or why they could not be read.
    pub fn neighs_of(&self, f: Family) -> Result<&[IpNeigh], &String> {
        match f {
            Family::V4 => self.neighs.as_deref(),
            Family::V6 => self.neighs6.as_deref(),
        }
    }
    /// The policy-routing rules of family `f` (none when they could not be read).
    pub fn rules_of(&self, f: Family) -> &[IpRule] {
        match f {
            Family::V4 => self.ip_rules4.as_deref().unwrap_or(&[]),
            Family::V6 => self.ip_rules6.as_deref().unwrap_or(&[]),
        }
    }
    /// The xtables-legacy tables of family `f` in use.
    pub fn legacy_of(&self, f: Family) -> &[String] {
        match f {
            Family::V4 => &self.legacy_tables,
            Family::V6 => &self.legacy_tables6,
        }
    }
    pub fn dev(&self, name: &str) -> Option<&Dev> {
        self.devs.iter().find(|d| d.name == name)
    }
    pub fn dev_by_index(&self, i: u32) -> Option<&Dev> {
        self.devs.iter().find(|d| d.ifindex == i)
    }
    /// The name of the device with index `i`, or `ifindex N` when it is not known.
    pub fn dev_name(&self, i: u32) -> String {
        self.dev_by_index(i)
            .map(|d| d.name.clone())
            .unwrap_or_else(|| format!("ifindex {i}"))
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
        nf_call_ip6tables: read(d.join("bridge/nf_call_ip6tables")).map(|v| v == "1"),
        forward_delay: read(d.join("bridge/forward_delay")).and_then(|s| s.parse().ok()),
        addrs: Vec::new(),
        addrs6: Vec::new(),
        macvtap_mode: None,
    }
}

/// The words of a dnsmasq or radvd command line: `--key=value`, `--key value`, `-k value`.
fn cmdline(pid: &str) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|w| !w.is_empty())
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// dnsmasq options as (key, value) from its command line (`--key[=value]`, `-i IF`, `-C F`,
/// `-z`) and the configuration files it names (`key[=value]` lines), read through the
/// process's root.
fn dnsmasq_options(pid: &str, args: &[String]) -> (Vec<(String, String)>, Vec<String>) {
    let mut opts = Vec::new();
    let mut files = Vec::new();
    let mut it = args.iter().skip(1).peekable();
    while let Some(a) = it.next() {
        if let Some(kv) = a.strip_prefix("--") {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            opts.push((k.to_string(), v.to_string()));
        } else if let Some(short) = a.strip_prefix('-') {
            let (k, inline) = short.split_at(short.len().min(1));
            let long = match k {
                "i" => "interface",
                "C" => "conf-file",
                "F" => "dhcp-range",
                _ => continue,
            };
            let v = if inline.is_empty() {
                it.next().cloned().unwrap_or_default()
            } else {
                inline.to_string()
            };
            opts.push((long.to_string(), v));
        }
    }
    let mut confs: Vec<String> = opts
        .iter()
        .filter(|(k, _)| k == "conf-file")
        .map(|(_, v)| v.clone())
        .collect();
    if confs.is_empty() {
        confs.push("/etc/dnsmasq.conf".into());
    }
    for c in confs.iter().filter(|c| !c.is_empty()) {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/root{c}")) else {
            continue;
        };
        files.push(c.clone());
        for l in text.lines().map(str::trim) {
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            opts.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    (opts, files)
}

/// What a dnsmasq's options say about RAs: (sends RAs, the interfaces it serves).
pub fn dnsmasq_ra(opts: &[(String, String)]) -> (bool, Option<Vec<String>>) {
    // RA modes of an IPv6 dhcp-range (dnsmasq(8): ra-only, slaac, ra-names, ra-stateless,
    // ra-advrouter); `enable-ra` sends RAs for every IPv6 range.
    let ra_mode = |v: &str| {
        v.split(',').any(|p| {
            matches!(
                p.trim(),
                "ra-only" | "slaac" | "ra-names" | "ra-stateless" | "ra-advrouter"
            )
        })
    };
    let v6_range = |v: &str| {
        v.split(',').any(|p| {
            let p = p.trim();
            p.parse::<Ipv6Addr>().is_ok() || p.starts_with("constructor:")
        })
    };
    let sends = opts
        .iter()
        .any(|(k, v)| k == "enable-ra" || (k == "dhcp-range" && v6_range(v) && ra_mode(v)))
        && opts.iter().any(|(k, v)| k == "dhcp-range" && v6_range(v));
    let mut ifaces: Vec<String> = opts
        .iter()
        .filter(|(k, _)| k == "interface")
        .flat_map(|(_, v)| v.split(',').map(|s| s.trim().to_string()))
        .collect();
    // `constructor:IF` ranges take their prefix from IF's addresses and serve it.
    for (k, v) in opts {
        if k == "dhcp-range" {
            for p in v.split(',') {
                if let Some(i) = p.trim().strip_prefix("constructor:") {
                    ifaces.push(i.to_string());
                }
            }
        }
    }
    (sends, (!ifaces.is_empty()).then_some(ifaces))
}

/// The interfaces a radvd configuration advertises on (`interface NAME {`).
pub fn radvd_ifaces(conf: &str) -> Vec<String> {
    let mut v = Vec::new();
    let mut words = conf
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(str::split_whitespace);
    while let Some(w) = words.next() {
        if w == "interface" {
            if let Some(n) = words.next() {
                v.push(n.trim_end_matches('{').to_string());
            }
        }
    }
    v
}

/// radvd and dnsmasq processes of this network namespace.
fn ra_daemons() -> Result<Vec<RaDaemon>, String> {
    let me = fs::read_link("/proc/self/ns/net")
        .map_err(|e| format!("reading /proc/self/ns/net: {e}"))?;
    let mut out = Vec::new();
    let dir = fs::read_dir("/proc").map_err(|e| format!("reading /proc: {e}"))?;
    for e in dir.flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let comm = read(e.path().join("comm")).unwrap_or_default();
        if comm != "radvd" && comm != "dnsmasq" {
            continue;
        }
        if fs::read_link(e.path().join("ns/net")).ok().as_ref() != Some(&me) {
            continue;
        }
        let args = cmdline(&pid);
        let who = format!("pid {pid} ({comm})");
        if comm == "radvd" {
            let mut conf = "/etc/radvd.conf".to_string();
            let mut it = args.iter();
            while let Some(a) = it.next() {
                if a == "-C" || a == "--config" {
                    conf = it.next().cloned().unwrap_or(conf);
                } else if let Some(c) = a.strip_prefix("--config=") {
                    conf = c.to_string();
                } else if let Some(c) = a.strip_prefix("-C").filter(|c| !c.is_empty()) {
                    conf = c.to_string();
                }
            }
            let text = fs::read_to_string(format!("/proc/{pid}/root{conf}"));
            let ifaces = text.as_deref().map(radvd_ifaces).unwrap_or_default();
            out.push(RaDaemon {
                who,
                kind: comm,
                sends_ra: !ifaces.is_empty(),
                ifaces: Some(ifaces),
                config: match text {
                    Ok(_) => conf,
                    Err(e) => format!("{conf} (unreadable: {e})"),
                },
            });
        } else {
            let (opts, files) = dnsmasq_options(&pid, &args);
            let (sends_ra, ifaces) = dnsmasq_ra(&opts);
            out.push(RaDaemon {
                who,
                kind: comm,
                ifaces,
                sends_ra,
                config: if files.is_empty() {
                    "its command line".into()
                } else {
                    format!("its command line and {}", files.join(", "))
                },
            });
        }
    }
    Ok(out)
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
    if devs.iter().any(|d| d.macvtap_lower.is_some()) {
        match netlink::macvtap_modes() {
            Ok(modes) => {
                for (n, m) in modes {
                    if let Some(d) = devs.iter_mut().find(|d| d.name == n) {
                        d.macvtap_mode = Some(m);
                    }
                }
            }
            Err(e) => log::warn!("reading the macvtaps' modes: {e}"),
        }
    }
    for f in [Family::V4, Family::V6] {
        let addrs = match netlink::ip_addresses(f.is_v6()) {
            Ok(a) => a,
            Err(e) => {
                let ver = if f.is_v6() { "IPv6 " } else { "" };
                log::warn!("reading {ver}interface addresses: {e}");
                continue;
            }
        };
        for IpIfAddr {
            ifindex,
            addr,
            prefix,
            scope,
        } in addrs
        {
            let Some(d) = devs.iter_mut().find(|d| d.ifindex == ifindex) else {
                continue;
            };
            match addr {
                IpAddr::V4(a) => d.addrs.push((a, prefix)),
                // Global and unique-local only: every interface has a link-local one.
                IpAddr::V6(a) if scope == 0 => d.addrs6.push((a, prefix)),
                IpAddr::V6(_) => {}
            }
        }
    }

    let mut sysctl = BTreeMap::new();
    let mut keys: Vec<String> = vec![
        "net/ipv4/ip_forward".into(),
        "net/bridge/bridge-nf-call-iptables".into(),
        "net/bridge/bridge-nf-call-ip6tables".into(),
        "net/netfilter/nf_conntrack_count".into(),
        "net/netfilter/nf_conntrack_max".into(),
    ];
    for dev in std::iter::once("all").chain(names.iter().map(String::as_str)) {
        for k in ["forwarding", "rp_filter"] {
            keys.push(format!("net/ipv4/conf/{dev}/{k}"));
        }
        for k in [
            "forwarding",
            "force_forwarding",
            "accept_ra",
            "disable_ipv6",
        ] {
            keys.push(format!("net/ipv6/conf/{dev}/{k}"));
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
        routes: netlink::ip_routes(false).map_err(|e| format!("reading routes over netlink: {e}")),
        neighs: netlink::ip_neighbours(false)
            .map_err(|e| format!("reading neighbours over netlink: {e}")),
        ruleset: rules::read_ruleset().map_err(|e| format!("reading nftables over netlink: {e}")),
        legacy_tables: read("/proc/net/ip_tables_names")
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default(),
        br_netfilter: Path::new("/proc/sys/net/bridge").is_dir(),
        udp67,
        routes6: netlink::ip_routes(true)
            .map_err(|e| format!("reading IPv6 routes over netlink: {e}")),
        neighs6: netlink::ip_neighbours(true)
            .map_err(|e| format!("reading IPv6 neighbours over netlink: {e}")),
        ip_rules4: netlink::ip_rules(false)
            .map_err(|e| format!("reading policy-routing rules over netlink: {e}")),
        ip_rules6: netlink::ip_rules(true)
            .map_err(|e| format!("reading IPv6 policy-routing rules over netlink: {e}")),
        legacy_tables6: read("/proc/net/ip6_tables_names")
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default(),
        ra_daemons: ra_daemons(),
        dest_route: None,
        vxlans: crate::host::facts::vxlans(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn dnsmasq_sends_ras_only_with_an_ipv6_range_in_an_ra_mode_or_enable_ra() {
        // libvirt's network: interface=, enable-ra, an IPv6 range.
        let (ra, ifs) = dnsmasq_ra(&kv(&[
            ("interface", "virbr0"),
            ("enable-ra", ""),
            ("dhcp-range", "fd00:77::100,fd00:77::1ff,64"),
        ]));
        assert!(ra);
        assert_eq!(ifs, Some(vec!["virbr0".to_string()]));
        let (ra, ifs) = dnsmasq_ra(&kv(&[("dhcp-range", "::,constructor:br0,ra-only")]));
        assert!(ra);
        assert_eq!(ifs, Some(vec!["br0".to_string()]));
        // IPv4 DHCP only, with or without enable-ra: no RAs.
        let (ra, ifs) = dnsmasq_ra(&kv(&[("dhcp-range", "10.77.0.128,10.77.0.254,12h")]));
        assert!(!ra);
        assert_eq!(ifs, None);
        let (ra, _) = dnsmasq_ra(&kv(&[
            ("enable-ra", ""),
            ("dhcp-range", "set:x,10.77.0.128,10.77.0.254"),
        ]));
        assert!(!ra);
    }

    #[test]
    fn radvd_interfaces_from_its_configuration() {
        let conf = "# comment interface nope {\ninterface br0 {\n  AdvSendAdvert on;\n  prefix fd00:77::/64 { };\n};\ninterface virbr1{ AdvSendAdvert on; };\n";
        assert_eq!(radvd_ifaces(conf), vec!["br0", "virbr1"]);
        assert!(radvd_ifaces("").is_empty());
    }

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
