//! The names operators use → the VM's tap (and what else is known about it).
//!
//! A VM is found by its name (QEMU `-name guest=NAME`, libvirt's domain name, Proxmox's `name:`,
//! OpenStack's `<nova:name>`), its Proxmox VMID, its UUID (QEMU `-uuid`, libvirt `<uuid>`, which
//! is the Nova instance id), one of its tap devices, or a guest MAC. Each NIC is one [`VmInfo`];
//! a VM with several NICs needs `--nic` to pick one, because the probe follows one tap.
//!
//! Sources: `/proc/PID/fdinfo/FD` of `/dev/net/tun` fds (`iff: vnet0`), the QEMU command line
//! (`-name`, `-uuid`, `-id VMID` and `-pidfile …/qemu-server/VMID.pid` as Proxmox starts it,
//! `-netdev …,id=X,ifname=TAP` + `-device …,netdev=X,mac=M`), libvirt's runtime XML
//! (`/run/libvirt/qemu/*.xml`: `<target dev>`, `<mac address>`, `<uuid>`, nova metadata, the
//! QEMU pid), Proxmox's `/etc/pve/qemu-server/VMID.conf` (`name:`, `netN: model=MAC,…`) and
//! `/sys/class/net` (tap devices have `tun_flags`).
//!
//! Network namespaces: `/proc` shows every process of the host, `/sys/class/net` only this
//! namespace's devices. A VM belongs to the namespace of its QEMU process
//! (`/proc/PID/ns/net`, compared with `/proc/self/ns/net`; named from the bind mounts under
//! `/run/netns`). Only VMs of the current namespace can be followed from here: the probe attaches
//! to the tap by name in this namespace. `list` shows those by default, `list --all` every VM
//! with its namespace. All paths are parameters of [`Roots`], so tests run on fixture trees.
//!
//! Layout: the sources each in a file of their own ([`qemu`] command lines, [`proxmox`]
//! configs, [`libvirt`] runtime XML with nova metadata, [`taps`]: the tun and macvtap fds a
//! process holds); here, a process and its sources → [`VmInfo`]s, and a query → one of them.

use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

mod libvirt;
mod mac;
mod proxmox;
mod qemu;
mod taps;
#[cfg(test)]
mod tests;

pub use libvirt::{libvirt_domain, libvirt_interfaces, LibvirtDomain};
use mac::looks_like_mac;
pub use mac::parse_mac;
pub use proxmox::{pve_conf, pve_tap_nic};
use qemu::arg_after;
pub use qemu::{qemu_macs, qemu_name, qemu_tap_macs, qemu_vmid};
use taps::taps_of_pid;
pub use taps::{macvtaps, Macvtap};

/// Where to look. `Roots::system()` is the live machine.
#[derive(Clone, Debug)]
pub struct Roots {
    pub proc_dir: PathBuf,
    pub sys_class_net: PathBuf,
    pub libvirt_run: PathBuf,
    /// Proxmox VE's VM configs (`VMID.conf`).
    pub pve_qemu_server: PathBuf,
    /// Named network namespaces (`ip netns add` bind-mounts them here).
    pub netns_run: PathBuf,
}

impl Roots {
    pub fn system() -> Self {
        Roots {
            proc_dir: "/proc".into(),
            sys_class_net: "/sys/class/net".into(),
            libvirt_run: "/run/libvirt/qemu".into(),
            pve_qemu_server: "/etc/pve/qemu-server".into(),
            netns_run: "/run/netns".into(),
        }
    }
}

/// The network namespace a VM's QEMU runs in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Netns {
    /// The namespace's inode (`net:[N]`), when known.
    pub inode: Option<u64>,
    /// Its name under `/run/netns`, or `host` for the init process's namespace.
    pub name: Option<String>,
    /// The namespace kvmtrace runs in: the VM can be followed from here.
    pub here: bool,
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.name, self.inode) {
            (Some(n), _) => f.write_str(n),
            (None, Some(i)) => write!(f, "net:[{i}]"),
            (None, None) => f.write_str("unknown"),
        }
    }
}

impl Netns {
    /// How to run kvmtrace in this namespace.
    pub fn enter_hint(&self, pid: Option<u32>) -> String {
        match (&self.name, pid) {
            (Some(n), _) if n != HOST_NS => format!("ip netns exec {n} kvmtrace …"),
            (Some(_), _) => "kvmtrace … from the host's namespace".into(),
            (None, Some(p)) => format!("nsenter --net=/proc/{p}/ns/net kvmtrace …"),
            (None, None) => "kvmtrace … in the namespace that holds the tap".into(),
        }
    }
}

/// The name given to the init process's network namespace.
pub const HOST_NS: &str = "host";

/// One NIC of a VM (or a bare tap) found on the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmInfo {
    /// The name operators use: Nova's instance name, Proxmox's `name:`, else QEMU's `-name`.
    pub name: Option<String>,
    pub pid: Option<u32>,
    pub tap: String,
    pub mac: Option<String>,
    /// Which NIC of the VM: Proxmox's `netN` (tap `tapVMIDiN`), else its position.
    pub nic: u32,
    /// Proxmox VMID.
    pub vmid: Option<String>,
    /// QEMU `-uuid` / libvirt `<uuid>` (the OpenStack instance id), lower case.
    pub uuid: Option<String>,
    /// Other names that find the VM (QEMU `-name`, libvirt's domain name), besides `name`.
    pub aliases: Vec<String>,
    pub netns: Netns,
    /// `tap` is a macvtap (QEMU holds its `/dev/tapN`): no bridge, the guest's frames leave
    /// through the macvtap's lower device.
    pub macvtap: bool,
}

impl fmt::Display for VmInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<20} tap {:<14} nic {}",
            self.name.as_deref().unwrap_or("-"),
            self.tap,
            self.nic
        )?;
        if let Some(m) = &self.mac {
            write!(f, " mac {m}")?;
        }
        if self.macvtap {
            f.write_str(" macvtap")?;
        }
        if let Some(p) = self.pid {
            write!(f, " pid {p}")?;
        }
        if let Some(v) = &self.vmid {
            write!(f, " vmid {v}")?;
        }
        if let Some(u) = &self.uuid {
            write!(f, " uuid {u}")?;
        }
        if !self.netns.here {
            write!(f, " netns {} (not here)", self.netns)?;
        }
        Ok(())
    }
}

impl VmInfo {
    /// How a run names the VM it works on: `web1 (tap vnet0, mac 52:54:00:12:34:56)`.
    pub fn heading(&self) -> String {
        format!(
            "{} (tap {}{})",
            self.name.as_deref().unwrap_or("VM"),
            self.tap,
            self.mac
                .as_deref()
                .map(|m| format!(", mac {m}"))
                .unwrap_or_default()
        )
    }

    /// One JSON object for `list --json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "vm",
            "name": self.name,
            "tap": self.tap,
            "nic": self.nic,
            "mac": self.mac,
            "pid": self.pid,
            "vmid": self.vmid,
            "uuid": self.uuid,
            "aliases": self.aliases,
            "netns": self.netns.to_string(),
            "netns_inode": self.netns.inode,
            "followable": self.netns.here,
            "macvtap": self.macvtap,
        })
    }

    /// Whether `q` names this VM (not a NIC): name, alias, VMID or UUID.
    fn is_named(&self, q: &str) -> bool {
        self.name.as_deref() == Some(q)
            || self.aliases.iter().any(|a| a == q)
            || self.vmid.as_deref() == Some(q)
            || self
                .uuid
                .as_deref()
                .is_some_and(|u| u.eq_ignore_ascii_case(q))
    }
}

fn read(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok()
}

/// The inode of a `/proc/PID/ns/net` link (`net:[4026531840]`).
fn ns_inode(link: &Path) -> Option<u64> {
    let t = fs::read_link(link).ok()?;
    t.to_str()?
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Names network namespaces by inode: `/run/netns/*` (bind mounts of nsfs inodes) and the init
/// process's namespace as `host`.
struct NsNames {
    here: Option<u64>,
    named: Vec<(u64, String)>,
}

impl NsNames {
    fn read(r: &Roots) -> Self {
        let mut named = Vec::new();
        if let Ok(entries) = fs::read_dir(&r.netns_run) {
            for e in entries.flatten() {
                // metadata() follows the bind mount to the namespace's own inode.
                if let (Ok(m), Ok(n)) = (fs::metadata(e.path()), e.file_name().into_string()) {
                    named.push((m.ino(), n));
                }
            }
        }
        named.sort();
        if let Some(i) = ns_inode(&r.proc_dir.join("1/ns/net")) {
            if !named.iter().any(|(j, _)| *j == i) {
                named.push((i, HOST_NS.to_string()));
            }
        }
        NsNames {
            here: ns_inode(&r.proc_dir.join("self/ns/net")),
            named,
        }
    }

    fn of_inode(&self, inode: Option<u64>) -> Netns {
        Netns {
            inode,
            name: inode.and_then(|i| {
                self.named
                    .iter()
                    .find(|(j, _)| *j == i)
                    .map(|(_, n)| n.clone())
            }),
            // Unknown on either side (a /proc we cannot read): assume here, as before.
            here: inode.is_none() || self.here.is_none() || inode == self.here,
        }
    }

    fn of_pid(&self, r: &Roots, pid: u32) -> Netns {
        self.of_inode(ns_inode(&r.proc_dir.join(pid.to_string()).join("ns/net")))
    }

    fn current(&self) -> Netns {
        self.of_inode(self.here)
    }
}

/// The network namespace kvmtrace runs in, named.
pub fn current_netns(r: &Roots) -> Netns {
    NsNames::read(r).current()
}

/// One VM process: its NICs from the tun fds it holds and its command line.
fn vm_of_process(r: &Roots, ns: &NsNames, pid: &str, held: &[(String, bool)]) -> Vec<VmInfo> {
    let taps: Vec<String> = held.iter().map(|(t, _)| t.clone()).collect();
    let args: Vec<String> = read(&r.proc_dir.join(pid).join("cmdline"))
        .unwrap_or_default()
        .split('\0')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let qname = qemu_name(&args);
    let uuid = arg_after(&args, "-uuid").map(str::to_ascii_lowercase);
    // A VMID from the command line, else from Proxmox-style tap names (`tap101i0`) when all of
    // the process's taps agree.
    let vmid = qemu_vmid(&args).or_else(|| {
        let ids: Vec<&str> = taps
            .iter()
            .filter_map(|t| {
                let rest = t.strip_prefix("tap")?;
                let (id, n) = rest.split_once('i')?;
                (!id.is_empty()
                    && id.bytes().all(|b| b.is_ascii_digit())
                    && n.parse::<u32>().is_ok())
                .then_some(id)
            })
            .collect();
        (ids.len() == taps.len() && ids.windows(2).all(|w| w[0] == w[1]))
            .then(|| ids.first().map(|s| s.to_string()))
            .flatten()
    });
    let (pve_name, pve_macs) = vmid
        .as_ref()
        .and_then(|id| read(&r.pve_qemu_server.join(format!("{id}.conf"))))
        .map(|t| pve_conf(&t))
        .unwrap_or_default();
    let name = pve_name.clone().or(qname.clone());
    let aliases: Vec<String> = qname
        .into_iter()
        .filter(|q| Some(q) != name.as_ref())
        .collect();
    let tap_macs = qemu_tap_macs(&args);
    let macs = qemu_macs(&args);
    let pid_n: Option<u32> = pid.parse().ok();
    let netns = pid_n.map(|p| ns.of_pid(r, p)).unwrap_or_default();
    taps.iter()
        .enumerate()
        .map(|(i, tap)| {
            let nic = vmid
                .as_deref()
                .and_then(|id| pve_tap_nic(tap, id))
                .unwrap_or(i as u32);
            let mac = tap_macs
                .iter()
                .find(|(t, _)| t == tap)
                .map(|(_, m)| m.clone())
                .or_else(|| {
                    pve_macs
                        .iter()
                        .find(|(n, _)| vmid.is_some() && *n == nic)
                        .map(|(_, m)| m.clone())
                })
                .or_else(|| (macs.len() == taps.len()).then(|| macs[i].clone()));
            let macvtap = held[i].1;
            VmInfo {
                name: name.clone(),
                pid: pid_n,
                tap: tap.clone(),
                // A macvtap's own address is the guest's (libvirt and QEMU scripts set it).
                mac: mac.or_else(|| {
                    macvtap
                        .then(|| read(&r.sys_class_net.join(tap).join("address")))
                        .flatten()
                        .map(|a| a.trim().to_ascii_lowercase())
                }),
                nic,
                vmid: vmid.clone(),
                uuid: uuid.clone(),
                aliases: aliases.clone(),
                // A macvtap found through this namespace's sysfs is in this namespace, whatever
                // the namespace of the process holding it.
                netns: if macvtap { ns.current() } else { netns.clone() },
                macvtap,
            }
        })
        .collect()
}

/// Every VM NIC and tap on the host, in every network namespace (see [`VmInfo::netns`]).
pub fn list_all(r: &Roots) -> Vec<VmInfo> {
    let ns = NsNames::read(r);
    let mut out: Vec<VmInfo> = Vec::new();
    let sys = fs::read_dir(&r.sys_class_net).ok();
    let sys_readable = sys.is_some();
    let here_taps: Vec<String> = sys
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("tun_flags").exists())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    let mv = macvtaps(&r.sys_class_net);
    if let Ok(entries) = fs::read_dir(&r.proc_dir) {
        let mut pids: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            .collect();
        pids.sort_by_key(|p| p.parse::<u32>().unwrap_or(0));
        for pid in pids {
            let taps = taps_of_pid(&r.proc_dir, &pid, &mv);
            if !taps.is_empty() {
                out.extend(vm_of_process(r, &ns, &pid, &taps));
            }
        }
    }
    // A process of this namespace can hold a tap of another one (the tun fd keeps the
    // namespace it was attached in): not followable here, and its namespace is unknown.
    for v in out.iter_mut() {
        if v.netns.here && sys_readable && !v.macvtap && !here_taps.contains(&v.tap) {
            v.netns = Netns::default();
        }
    }
    if let Ok(entries) = fs::read_dir(&r.libvirt_run) {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            if p.extension().and_then(|x| x.to_str()) != Some("xml") {
                continue;
            }
            let Some(stem) = p.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
                continue;
            };
            let d = libvirt_domain(&read(&p).unwrap_or_default());
            let dom_name = d.name.clone().unwrap_or(stem);
            // OpenStack's instance name is what its operators know; the domain name
            // (`instance-0000002a`) still finds it.
            let name = d.nova_name.clone().unwrap_or_else(|| dom_name.clone());
            for (i, (tap, mac)) in d.interfaces.iter().enumerate() {
                let Some(tap) = tap.clone() else { continue };
                let same = |v: &VmInfo| {
                    v.tap == tap
                        && match d.pid {
                            Some(p) => v.pid == Some(p),
                            None => v.netns.here,
                        }
                };
                if let Some(v) = out.iter_mut().find(|v| same(v)) {
                    if d.nova_name.is_some() || v.name.is_none() {
                        if let Some(old) = v.name.replace(name.clone()) {
                            if old != name && !v.aliases.contains(&old) {
                                v.aliases.push(old);
                            }
                        }
                    }
                    if dom_name != name && !v.aliases.contains(&dom_name) {
                        v.aliases.push(dom_name.clone());
                    }
                    if v.mac.is_none() {
                        v.mac = mac.clone();
                    }
                    if v.uuid.is_none() {
                        v.uuid = d.uuid.clone();
                    }
                    v.nic = i as u32;
                } else {
                    let netns = match d.pid {
                        Some(p) => ns.of_pid(r, p),
                        None if here_taps.contains(&tap) => ns.current(),
                        None => Netns::default(),
                    };
                    out.push(VmInfo {
                        name: Some(name.clone()),
                        pid: d.pid,
                        tap,
                        mac: mac.clone(),
                        nic: i as u32,
                        vmid: None,
                        uuid: d.uuid.clone(),
                        aliases: (dom_name != name)
                            .then(|| dom_name.clone())
                            .into_iter()
                            .collect(),
                        netns,
                        macvtap: false,
                    });
                }
            }
        }
    }
    // Taps of this namespace nobody holds open (or held by a process in another namespace,
    // such as a test's fake VM that opened the tap from a thread that joined this one).
    let mut bare: Vec<&String> = here_taps
        .iter()
        .filter(|n| !out.iter().any(|v| &v.tap == *n && v.netns.here))
        .collect();
    bare.sort();
    let current = ns.current();
    for n in bare {
        out.push(VmInfo {
            tap: n.clone(),
            netns: current.clone(),
            ..Default::default()
        });
    }
    // Macvtaps of this namespace whose /dev/tapN nobody holds (or a process we cannot see).
    for m in &mv {
        if !out.iter().any(|v| v.tap == m.netdev && v.netns.here) {
            out.push(VmInfo {
                tap: m.netdev.clone(),
                mac: read(&r.sys_class_net.join(&m.netdev).join("address"))
                    .map(|a| a.trim().to_ascii_lowercase()),
                netns: current.clone(),
                macvtap: true,
                ..Default::default()
            });
        }
    }
    out
}

/// The VM NICs and taps that can be followed from this network namespace.
pub fn list_vms(r: &Roots) -> Vec<VmInfo> {
    list_all(r).into_iter().filter(|v| v.netns.here).collect()
}

/// Why a VM could not be resolved to one tap of this namespace. Every variant is a usage error
/// (exit code 2): the message lists what was found and what to give instead.
#[derive(Debug)]
pub enum ResolveError {
    /// Nothing matches the query here.
    Unknown {
        query: String,
        /// What this namespace shows.
        found: Vec<VmInfo>,
        /// VMs in other namespaces (counted in the message).
        elsewhere: usize,
    },
    /// The VM exists, but its QEMU runs in another network namespace.
    Elsewhere { query: String, matches: Vec<VmInfo> },
    /// The VM has several NICs and `--nic` was not given.
    SeveralNics { query: String, nics: Vec<VmInfo> },
    /// `--nic` names none of the VM's NICs.
    NoSuchNic {
        query: String,
        nic: String,
        nics: Vec<VmInfo>,
    },
}

/// The old name: callers match on it for the exit code.
pub type UnknownVm = ResolveError;

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::Unknown {
                query,
                found,
                elsewhere,
            } => {
                writeln!(
                    f,
                    "no VM, VMID, UUID, tap device or guest MAC matches '{query}' in this network namespace"
                )?;
                if found.is_empty() {
                    write!(
                        f,
                        "no VM or tap device was found here (run kvmtrace in the namespace that \
                         holds the VM's tap, e.g. `ip netns exec NS kvmtrace …`)"
                    )?;
                } else {
                    writeln!(f, "VMs and taps found:")?;
                    for v in found {
                        writeln!(f, "  {v}")?;
                    }
                    write!(f, "give one of these names, VMIDs, taps or MACs")?;
                }
                if *elsewhere > 0 {
                    write!(
                        f,
                        "\n{elsewhere} more NIC(s) in other network namespaces: `kvmtrace list --all`"
                    )?;
                }
                Ok(())
            }
            ResolveError::Elsewhere { query, matches } => {
                // A QEMU in a named namespace says best where to go.
                let v = matches
                    .iter()
                    .find(|m| m.netns.name.is_some())
                    .unwrap_or(&matches[0]);
                writeln!(
                    f,
                    "'{query}' is in network namespace {}, not in this one: its tap cannot be \
                     followed from here",
                    v.netns
                )?;
                for m in matches {
                    writeln!(f, "  {m}")?;
                }
                write!(f, "run it there: {}", v.netns.enter_hint(v.pid))
            }
            ResolveError::SeveralNics { query, nics } => {
                writeln!(
                    f,
                    "'{query}' has {} NICs; kvmtrace follows one tap: choose it with --nic N|TAP|MAC",
                    nics.len()
                )?;
                for v in nics {
                    writeln!(f, "  {v}")?;
                }
                write!(f, "for example: --nic {}", nics[0].nic)
            }
            ResolveError::NoSuchNic { query, nic, nics } => {
                writeln!(
                    f,
                    "--nic {nic}: '{query}' has no NIC numbered {nic}, with that tap or that MAC; its NICs:"
                )?;
                for v in nics {
                    writeln!(f, "  {v}")?;
                }
                write!(f, "give --nic with one of these numbers, taps or MACs")
            }
        }
    }
}

impl std::error::Error for ResolveError {}

/// Whether `--nic` `sel` (a number, a tap or a MAC) names this NIC.
fn nic_matches(v: &VmInfo, sel: &str) -> bool {
    let s = sel.to_ascii_lowercase();
    if looks_like_mac(&s) {
        v.mac.as_deref() == Some(s.as_str())
    } else if let Ok(n) = sel.parse::<u32>() {
        v.nic == n
    } else {
        v.tap == sel
    }
}

/// Resolves a VM (name, VMID, UUID), tap name or guest MAC to one NIC of this network namespace;
/// `nic` chooses among a VM's NICs.
pub fn resolve(query: &str, nic: Option<&str>, r: &Roots) -> Result<VmInfo, ResolveError> {
    let all = list_all(r);
    let q = query.to_ascii_lowercase();
    let matches: Vec<VmInfo> = if looks_like_mac(&q) {
        all.iter()
            .filter(|v| v.mac.as_deref() == Some(q.as_str()))
            .cloned()
            .collect()
    } else {
        let taps: Vec<VmInfo> = all.iter().filter(|v| v.tap == query).cloned().collect();
        if taps.is_empty() {
            all.iter().filter(|v| v.is_named(query)).cloned().collect()
        } else {
            taps
        }
    };
    let here: Vec<VmInfo> = matches.iter().filter(|v| v.netns.here).cloned().collect();
    if here.is_empty() {
        return Err(if matches.is_empty() {
            let (found, other): (Vec<VmInfo>, Vec<VmInfo>) =
                all.into_iter().partition(|v| v.netns.here);
            ResolveError::Unknown {
                query: query.to_string(),
                found,
                elsewhere: other.len(),
            }
        } else {
            ResolveError::Elsewhere {
                query: query.to_string(),
                matches,
            }
        });
    }
    let chosen: Vec<VmInfo> = match nic {
        Some(sel) => here
            .iter()
            .filter(|v| nic_matches(v, sel))
            .cloned()
            .collect(),
        None => here.clone(),
    };
    // Several holders of one device (a QEMU and a helper, or a multiqueue tap opened twice)
    // are one NIC: the one with a name says most.
    let one_device = chosen.windows(2).all(|w| w[0].tap == w[1].tap);
    if one_device && !chosen.is_empty() {
        let best = chosen
            .iter()
            .find(|v| v.name.is_some())
            .unwrap_or(&chosen[0]);
        return Ok(best.clone());
    }
    match chosen.len() {
        1 => Ok(chosen.into_iter().next().expect("one")),
        0 => Err(ResolveError::NoSuchNic {
            query: query.to_string(),
            nic: nic.unwrap_or_default().to_string(),
            nics: here,
        }),
        _ => Err(ResolveError::SeveralNics {
            query: query.to_string(),
            nics: chosen,
        }),
    }
}
