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

use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

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

/// The value after `flag` on a command line.
fn arg_after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).map(String::as_str)
}

/// The `-name` of a QEMU command line: `guest=NAME,debug-threads=on` or `NAME`.
pub fn qemu_name(args: &[String]) -> Option<String> {
    let v = arg_after(args, "-name")?;
    let first = v.split(',').next()?;
    Some(first.strip_prefix("guest=").unwrap_or(first).to_string())
}

/// The Proxmox VMID of a QEMU command line: `-id 101` (Proxmox's QEMU has that option), or the
/// pid file qemu-server gives it, `-pidfile /var/run/qemu-server/101.pid`.
pub fn qemu_vmid(args: &[String]) -> Option<String> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(id) = arg_after(args, "-id").filter(|s| digits(s)) {
        return Some(id.to_string());
    }
    let pidfile = Path::new(arg_after(args, "-pidfile")?);
    let parent = pidfile.parent()?.file_name()?.to_str()?;
    let stem = pidfile.file_stem()?.to_str()?;
    (parent == "qemu-server" && pidfile.extension()? == "pid" && digits(stem))
        .then(|| stem.to_string())
}

/// The N of a Proxmox tap `tap<VMID>i<N>` (the VM's `netN`).
pub fn pve_tap_nic(tap: &str, vmid: &str) -> Option<u32> {
    tap.strip_prefix("tap")?
        .strip_prefix(vmid)?
        .strip_prefix('i')?
        .parse()
        .ok()
}

/// MAC addresses given to NICs on a QEMU command line, in order.
pub fn qemu_macs(args: &[String]) -> Vec<String> {
    args.iter()
        .flat_map(|a| a.split(','))
        .filter_map(|kv| kv.strip_prefix("mac="))
        .map(|m| m.to_ascii_lowercase())
        .collect()
}

fn kv<'a>(opt: &'a str, key: &str) -> Option<&'a str> {
    opt.split(',').find_map(|p| {
        p.strip_prefix(key)
            .and_then(|r| r.strip_prefix('='))
            .filter(|v| !v.is_empty())
    })
}

/// The MAC of each tap named on a QEMU command line: `-netdev …,id=X,ifname=TAP` and
/// `-device …,netdev=X,mac=M` (how Proxmox and plain scripts start QEMU; libvirt passes fds).
pub fn qemu_tap_macs(args: &[String]) -> Vec<(String, String)> {
    let values = |flag: &str| -> Vec<&str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    };
    let mut out = Vec::new();
    for nd in values("-netdev") {
        let (Some(id), Some(tap)) = (kv(nd, "id"), kv(nd, "ifname")) else {
            continue;
        };
        let mac = values("-device")
            .into_iter()
            .filter(|d| kv(d, "netdev") == Some(id))
            .find_map(|d| kv(d, "mac"));
        if let Some(m) = mac {
            out.push((tap.to_string(), m.to_ascii_lowercase()));
        }
    }
    out
}

/// What a Proxmox `VMID.conf` says: its `name:` and each `netN:`'s MAC (`virtio=MAC,bridge=…`
/// or `model=…,macaddr=MAC`). Only the VM's own section: snapshots follow in `[name]` sections.
pub fn pve_conf(text: &str) -> (Option<String>, Vec<(u32, String)>) {
    let mut name = None;
    let mut nets = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            break;
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k == "name" && !v.is_empty() {
            name = Some(v.to_string());
        } else if let Some(n) = k.strip_prefix("net").and_then(|n| n.parse::<u32>().ok()) {
            let mac = v.split(',').find_map(|p| {
                let (key, val) = p.split_once('=')?;
                let val = val.trim();
                (key == "macaddr" || looks_like_mac(&val.to_ascii_lowercase()))
                    .then(|| val.to_ascii_lowercase())
            });
            if let Some(m) = mac {
                nets.push((n, m));
            }
        }
    }
    (name, nets)
}

/// A macvtap of this namespace: its character device (`major:minor`, from
/// `/sys/class/net/DEV/macvtap/tapN/dev`), that node's name (`tapN`, N = the ifindex in this
/// namespace) and the network device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Macvtap {
    pub dev: String,
    pub node: String,
    pub netdev: String,
}

/// The macvtaps `/sys/class/net` shows (this namespace's).
pub fn macvtaps(sys_class_net: &Path) -> Vec<Macvtap> {
    let mut out = Vec::new();
    let Ok(devs) = fs::read_dir(sys_class_net) else {
        return out;
    };
    for d in devs.flatten() {
        let Ok(nodes) = fs::read_dir(d.path().join("macvtap")) else {
            continue;
        };
        for n in nodes.flatten() {
            if let (Some(dev), Ok(node), Ok(netdev)) = (
                read(&n.path().join("dev")),
                n.file_name().into_string(),
                d.file_name().into_string(),
            ) {
                out.push(Macvtap {
                    dev: dev.trim().to_string(),
                    node,
                    netdev,
                });
            }
        }
    }
    out.sort_by(|a, b| a.netdev.cmp(&b.netdev));
    out
}

/// The macvtap an open fd is: by the character device it opened (major:minor is global,
/// where `tapN` names repeat across namespaces); by the node's name only when the fd cannot
/// be stat'ed (fixture trees).
fn macvtap_of_fd<'a>(fd: &Path, target: &Path, mv: &'a [Macvtap]) -> Option<&'a Macvtap> {
    use std::os::unix::fs::FileTypeExt as _;
    match fs::metadata(fd) {
        Ok(m) if m.file_type().is_char_device() => {
            let rdev = m.rdev();
            let dev = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
            mv.iter().find(|t| t.dev == dev)
        }
        Ok(_) => None,
        Err(_) => {
            let name = target.file_name()?.to_str()?;
            mv.iter().find(|t| t.node == name)
        }
    }
}

/// The taps a process holds: (device, is a macvtap).
fn taps_of_pid(proc_dir: &Path, pid: &str, mv: &[Macvtap]) -> Vec<(String, bool)> {
    let mut taps: Vec<(String, bool)> = Vec::new();
    let Ok(fds) = fs::read_dir(proc_dir.join(pid).join("fd")) else {
        return taps;
    };
    for fd in fds.flatten() {
        let Ok(target) = fs::read_link(fd.path()) else {
            continue;
        };
        if target != Path::new("/dev/net/tun") {
            // A node that is gone: devtmpfs removes /dev/tapN with its macvtap, and the
            // minor is then reused by the next macvtap, so a QEMU still holding the old fd
            // would match a new, unrelated one by major:minor.
            let stale = target.to_str().is_some_and(|t| t.ends_with(" (deleted)"));
            if !mv.is_empty() && !stale {
                if let Some(t) = macvtap_of_fd(&fd.path(), &target, mv) {
                    if !taps.iter().any(|(n, _)| *n == t.netdev) {
                        taps.push((t.netdev.clone(), true));
                    }
                }
            }
            continue;
        }
        let info = proc_dir.join(pid).join("fdinfo").join(fd.file_name());
        if let Some(text) = read(&info) {
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("iff:") {
                    let v = v.trim().to_string();
                    if !v.is_empty() && !taps.iter().any(|(n, _)| *n == v) {
                        taps.push((v, false));
                    }
                }
            }
        }
    }
    taps.sort();
    taps
}

/// The value of `name='…'` or `name="…"` in the first `<tag …>` element of `block`.
fn xml_attr(block: &str, tag: &str, name: &str) -> Option<String> {
    let start = block.find(&format!("<{tag} "))?;
    let rest = &block[start..];
    let end = rest.find('>')?;
    let el = &rest[..end];
    for q in ['\'', '"'] {
        let key = format!(" {name}={q}");
        if let Some(i) = el.find(&key) {
            let v = &el[i + key.len()..];
            return v.find(q).map(|j| xml_unescape(&v[..j]));
        }
    }
    None
}

/// The text of the first `<tag>…</tag>` of `block`.
fn xml_text(block: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let i = block.find(&open)? + open.len();
    let j = block[i..].find(&format!("</{tag}>"))?;
    let t = xml_unescape(block[i..i + j].trim());
    (!t.is_empty()).then_some(t)
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// `<interface>` blocks of a libvirt domain XML: (tap, mac).
pub fn libvirt_interfaces(xml: &str) -> Vec<(Option<String>, Option<String>)> {
    xml.split("<interface ")
        .skip(1)
        .map(|b| {
            let block = b.split("</interface>").next().unwrap_or(b);
            (
                xml_attr(block, "target", "dev"),
                xml_attr(block, "mac", "address").map(|m| m.to_ascii_lowercase()),
            )
        })
        .collect()
}

/// What a libvirt runtime XML (`/run/libvirt/qemu/NAME.xml`, a `<domstatus>`) says of a domain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LibvirtDomain {
    pub name: Option<String>,
    pub uuid: Option<String>,
    /// OpenStack's instance name (`<nova:name>` in the domain's metadata).
    pub nova_name: Option<String>,
    /// QEMU's pid (`<domstatus pid='…'>`).
    pub pid: Option<u32>,
    pub interfaces: Vec<(Option<String>, Option<String>)>,
}

pub fn libvirt_domain(xml: &str) -> LibvirtDomain {
    let dom = xml.find("<domain").map_or(xml, |i| &xml[i..]);
    LibvirtDomain {
        name: xml_text(dom, "name"),
        uuid: xml_text(dom, "uuid").map(|u| u.to_ascii_lowercase()),
        nova_name: xml_text(dom, "nova:name"),
        pid: xml_attr(xml, "domstatus", "pid").and_then(|p| p.parse().ok()),
        interfaces: libvirt_interfaces(dom),
    }
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

fn looks_like_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
}

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

/// Parses `52:54:00:12:34:56`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    for (o, p) in out.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Fixture {
        dir: PathBuf,
    }
    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    /// A fixture tree; kvmtrace "runs" in the named namespace `labhere`, the host's namespace
    /// is PID 1's.
    fn fixture(tag: &str) -> (Fixture, Roots) {
        let dir =
            std::env::temp_dir().join(format!("kvmtrace-resolve-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let roots = Roots {
            proc_dir: dir.join("proc"),
            sys_class_net: dir.join("sys"),
            libvirt_run: dir.join("libvirt"),
            pve_qemu_server: dir.join("pve"),
            netns_run: dir.join("netns"),
        };
        for d in [
            &roots.proc_dir,
            &roots.sys_class_net,
            &roots.libvirt_run,
            &roots.pve_qemu_server,
            &roots.netns_run,
        ] {
            fs::create_dir_all(d).unwrap();
        }
        let here = netns(&roots, "labhere");
        for pid in ["self", "1"] {
            fs::create_dir_all(roots.proc_dir.join(pid).join("ns")).unwrap();
        }
        symlink(format!("net:[{here}]"), roots.proc_dir.join("self/ns/net")).unwrap();
        symlink("net:[4026531840]", roots.proc_dir.join("1/ns/net")).unwrap();
        (Fixture { dir }, roots)
    }

    /// A named namespace (a plain file stands for the bind mount); returns its inode.
    fn netns(r: &Roots, name: &str) -> u64 {
        let p = r.netns_run.join(name);
        if !p.exists() {
            fs::write(&p, "").unwrap();
        }
        fs::metadata(&p).unwrap().ino()
    }

    /// A QEMU in kvmtrace's namespace: its taps show in this namespace's sysfs.
    fn qemu(r: &Roots, pid: u32, cmdline: &[&str], taps: &[&str]) {
        qemu_in(r, pid, cmdline, taps, "labhere");
        for t in taps {
            fs::create_dir_all(r.sys_class_net.join(t)).unwrap();
            fs::write(r.sys_class_net.join(t).join("tun_flags"), "0x1002\n").unwrap();
        }
    }

    /// A QEMU in the named namespace `ns`.
    fn qemu_in(r: &Roots, pid: u32, cmdline: &[&str], taps: &[&str], ns: &str) {
        let p = r.proc_dir.join(pid.to_string());
        fs::create_dir_all(p.join("fd")).unwrap();
        fs::create_dir_all(p.join("fdinfo")).unwrap();
        fs::create_dir_all(p.join("ns")).unwrap();
        symlink(format!("net:[{}]", netns(r, ns)), p.join("ns/net")).unwrap();
        fs::write(p.join("cmdline"), cmdline.join("\0") + "\0").unwrap();
        symlink("/dev/null", p.join("fd/0")).unwrap();
        fs::write(p.join("fdinfo/0"), "pos:\t0\nflags:\t02\n").unwrap();
        for (i, t) in taps.iter().enumerate() {
            let fd = (20 + i).to_string();
            symlink("/dev/net/tun", p.join("fd").join(&fd)).unwrap();
            fs::write(
                p.join("fdinfo").join(&fd),
                format!("pos:\t0\nflags:\t0104002\nmnt_id:\t26\niff:\t{t}\n"),
            )
            .unwrap();
        }
    }

    #[test]
    fn resolves_a_qemu_guest_by_name_tap_and_mac() {
        let (_f, r) = fixture("qemu");
        qemu(
            &r,
            4242,
            &[
                "qemu-system-x86_64",
                "-name",
                "guest=web1,debug-threads=on",
                "-netdev",
                "tap,fd=20,id=hostnet0",
                "-device",
                "virtio-net-pci,netdev=hostnet0,id=net0,mac=52:54:00:AB:CD:01",
            ],
            &["vnet7"],
        );
        let by_name = resolve("web1", None, &r).expect("by name");
        assert_eq!(by_name.tap, "vnet7");
        assert_eq!(by_name.pid, Some(4242));
        assert_eq!(by_name.mac.as_deref(), Some("52:54:00:ab:cd:01"));
        assert_eq!(by_name.netns.name.as_deref(), Some("labhere"));
        assert!(by_name.netns.here);
        assert_eq!(
            resolve("vnet7", None, &r).unwrap().name.as_deref(),
            Some("web1")
        );
        assert_eq!(resolve("52:54:00:ab:cd:01", None, &r).unwrap().tap, "vnet7");
        // One NIC: --nic 0 is accepted, anything else names no NIC.
        assert_eq!(resolve("web1", Some("0"), &r).unwrap().tap, "vnet7");
        assert!(matches!(
            resolve("web1", Some("1"), &r),
            Err(ResolveError::NoSuchNic { .. })
        ));
    }

    #[test]
    fn libvirt_xml_names_taps_and_macs() {
        let (_f, r) = fixture("libvirt");
        fs::write(
            r.libvirt_run.join("db2.xml"),
            "<domstatus><domain type='kvm'><name>db2</name><devices>\
             <interface type='network'><mac address='52:54:00:00:00:09'/>\
             <source network='default' bridge='virbr0'/><target dev='vnet3'/>\
             <model type='virtio'/></interface></devices></domain></domstatus>",
        )
        .unwrap();
        fs::create_dir_all(r.sys_class_net.join("vnet3")).unwrap();
        fs::write(r.sys_class_net.join("vnet3/tun_flags"), "0x1002\n").unwrap();
        let v = resolve("db2", None, &r).expect("by libvirt name");
        assert_eq!(v.tap, "vnet3");
        assert_eq!(v.mac.as_deref(), Some("52:54:00:00:00:09"));
        assert!(v.netns.here);
    }

    #[test]
    fn unknown_vm_lists_what_was_found() {
        let (_f, r) = fixture("unknown");
        qemu(&r, 7, &["qemu", "-name", "alpha"], &["tap-a"]);
        qemu_in(&r, 8, &["qemu", "-name", "beta"], &["tap-b"], "otherns");
        fs::create_dir_all(r.sys_class_net.join("lonelytap")).unwrap();
        fs::write(r.sys_class_net.join("lonelytap/tun_flags"), "0x1002\n").unwrap();
        let e = resolve("nosuchvm", None, &r).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("nosuchvm"), "{msg}");
        assert!(msg.contains("alpha") && msg.contains("tap-a"), "{msg}");
        assert!(msg.contains("lonelytap"), "{msg}");
        // The VM of another namespace is counted, not listed as if it could be followed.
        assert!(!msg.contains("beta"), "{msg}");
        assert!(
            msg.contains("1 more NIC(s) in other network namespaces: `kvmtrace list --all`"),
            "{msg}"
        );
        // A bare tap resolves by its name.
        assert_eq!(resolve("lonelytap", None, &r).unwrap().tap, "lonelytap");
    }

    /// How Proxmox VE's qemu-server starts VM 101 with two NICs.
    const PVE_CMDLINE: &[&str] = &[
        "/usr/bin/kvm",
        "-id",
        "101",
        "-name",
        "web1,debug-threads=on",
        "-chardev",
        "socket,id=qmp,path=/var/run/qemu-server/101.qmp,server=on,wait=off",
        "-pidfile",
        "/var/run/qemu-server/101.pid",
        "-netdev",
        "type=tap,id=net0,ifname=tap101i0,script=/var/lib/qemu-server/pve-bridge,downscript=/var/lib/qemu-server/pve-bridgedown,vhost=on",
        "-device",
        "virtio-net-pci,mac=BC:24:11:00:01:00,netdev=net0,bus=pci.0,addr=0x12,id=net0,rx_queue_size=1024",
        "-netdev",
        "type=tap,id=net1,ifname=tap101i1,script=/var/lib/qemu-server/pve-bridge,downscript=/var/lib/qemu-server/pve-bridgedown,vhost=on",
        "-device",
        "virtio-net-pci,mac=BC:24:11:00:01:01,netdev=net1,bus=pci.0,addr=0x13,id=net1",
    ];

    const PVE_CONF: &str = "\
boot: order=scsi0;net0
cores: 2
memory: 2048
name: webfront
net0: virtio=BC:24:11:00:01:00,bridge=vmbr0,firewall=1
net1: e1000=BC:24:11:00:01:01,bridge=vmbr1,tag=20
ostype: l26

[before-upgrade]
name: oldname
net0: virtio=BC:24:11:99:99:99,bridge=vmbr0
";

    #[test]
    fn a_proxmox_vm_is_found_by_vmid_with_two_nics_and_its_conf_name() {
        let (_f, r) = fixture("pve");
        qemu(&r, 3101, PVE_CMDLINE, &["tap101i0", "tap101i1"]);
        fs::write(r.pve_qemu_server.join("101.conf"), PVE_CONF).unwrap();

        // Two NICs and no --nic: an error that lists both and says how to choose.
        let e = resolve("101", None, &r).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ResolveError::SeveralNics { .. }), "{msg}");
        assert!(
            msg.starts_with(
                "'101' has 2 NICs; kvmtrace follows one tap: choose it with --nic N|TAP|MAC"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("tap101i0") && msg.contains("tap101i1"),
            "{msg}"
        );
        assert!(msg.contains("mac bc:24:11:00:01:01"), "{msg}");
        assert!(msg.ends_with("for example: --nic 0"), "{msg}");

        let v = resolve("101", Some("1"), &r).expect("--nic 1");
        assert_eq!(
            v,
            VmInfo {
                name: Some("webfront".into()),
                pid: Some(3101),
                tap: "tap101i1".into(),
                mac: Some("bc:24:11:00:01:01".into()),
                nic: 1,
                vmid: Some("101".into()),
                uuid: None,
                aliases: vec!["web1".into()],
                netns: Netns {
                    inode: Some(netns(&r, "labhere")),
                    name: Some("labhere".into()),
                    here: true,
                },
                macvtap: false,
            }
        );
        // The conf's name, QEMU's -name, a tap or a MAC as --nic: the same NICs.
        assert_eq!(
            resolve("webfront", Some("tap101i0"), &r)
                .unwrap()
                .mac
                .as_deref(),
            Some("bc:24:11:00:01:00")
        );
        assert_eq!(
            resolve("web1", Some("BC:24:11:00:01:01"), &r).unwrap().tap,
            "tap101i1"
        );
        assert_eq!(resolve("tap101i0", None, &r).unwrap().nic, 0);
        let e = resolve("101", Some("7"), &r).unwrap_err();
        assert!(matches!(e, ResolveError::NoSuchNic { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("--nic 7: '101' has no NIC numbered 7"),
            "{e}"
        );
    }

    #[test]
    fn proxmox_vmid_from_pidfile_or_tap_names_and_conf_forms() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(qemu_vmid(&a(PVE_CMDLINE)).as_deref(), Some("101"));
        assert_eq!(
            qemu_vmid(&a(&["kvm", "-pidfile", "/run/qemu-server/2042.pid"])).as_deref(),
            Some("2042")
        );
        assert_eq!(
            qemu_vmid(&a(&["kvm", "-pidfile", "/run/qemu/2042.pid"])),
            None
        );
        assert_eq!(qemu_vmid(&a(&["kvm", "-id", "net0"])), None);
        assert_eq!(pve_tap_nic("tap101i3", "101"), Some(3));
        assert_eq!(pve_tap_nic("tap1010i3", "101"), None);
        let (name, nets) = pve_conf(PVE_CONF);
        assert_eq!(name.as_deref(), Some("webfront"));
        assert_eq!(
            nets,
            vec![
                (0, "bc:24:11:00:01:00".to_string()),
                (1, "bc:24:11:00:01:01".to_string())
            ]
        );
        let (_, nets) = pve_conf("net2: model=virtio,macaddr=BC:24:11:AA:BB:CC,bridge=vmbr0\n");
        assert_eq!(nets, vec![(2, "bc:24:11:aa:bb:cc".to_string())]);

        // No -id and no -pidfile: the taps' names give the VMID, the conf its name and MACs.
        let (_f, r) = fixture("pve-taps");
        qemu(&r, 55, &["kvm", "-name", "x"], &["tap205i0"]);
        fs::write(
            r.pve_qemu_server.join("205.conf"),
            "name: db\nnet0: virtio=BC:24:11:00:02:05,bridge=vmbr0\n",
        )
        .unwrap();
        let v = resolve("205", None, &r).expect("VMID from the tap's name");
        assert_eq!(v.name.as_deref(), Some("db"));
        assert_eq!(v.mac.as_deref(), Some("bc:24:11:00:02:05"));
        assert_eq!(v.nic, 0);
    }

    /// The runtime XML libvirt keeps for an OpenStack (Nova) instance.
    const NOVA_XML: &str = r#"<domstatus state='running' reason='booted' pid='4300'>
  <taint flag='high-privileges'/>
  <domain type='kvm' id='3'>
  <name>instance-0000002a</name>
  <uuid>6f1c2e0a-8d4b-4c55-9a3e-2b7d10e4f001</uuid>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:package version="27.1.0"/>
      <nova:name>web-prod-1</nova:name>
      <nova:flavor name="m1.small"><nova:memory>2048</nova:memory></nova:flavor>
      <nova:owner><nova:user uuid="u1">admin</nova:user></nova:owner>
    </nova:instance>
  </metadata>
  <devices>
    <interface type='bridge'>
      <mac address='fa:16:3e:5a:7b:01'/>
      <source bridge='qbr3f2a1b4c-5d'/>
      <target dev='tap3f2a1b4c-5d'/>
      <model type='virtio'/>
    </interface>
  </devices>
  </domain>
</domstatus>
"#;

    #[test]
    fn an_openstack_instance_is_found_by_nova_name_domain_name_and_uuid() {
        let (_f, r) = fixture("nova");
        qemu(
            &r,
            4300,
            &[
                "/usr/bin/qemu-system-x86_64",
                "-name",
                "guest=instance-0000002a,debug-threads=on",
                "-uuid",
                "6F1C2E0A-8D4B-4C55-9A3E-2B7D10E4F001",
                "-netdev",
                "tap,fd=31,vhost=on,vhostfd=33,id=hostnet0",
                "-device",
                "virtio-net-pci,netdev=hostnet0,id=net0,mac=fa:16:3e:5a:7b:01",
            ],
            &["tap3f2a1b4c-5d"],
        );
        fs::write(r.libvirt_run.join("instance-0000002a.xml"), NOVA_XML).unwrap();
        let d = libvirt_domain(NOVA_XML);
        assert_eq!(d.nova_name.as_deref(), Some("web-prod-1"));
        assert_eq!(d.pid, Some(4300));
        for q in [
            "web-prod-1",
            "instance-0000002a",
            "6f1c2e0a-8d4b-4c55-9a3e-2b7d10e4f001",
            "6F1C2E0A-8D4B-4C55-9A3E-2B7D10E4F001",
            "tap3f2a1b4c-5d",
            "fa:16:3e:5a:7b:01",
        ] {
            let v = resolve(q, None, &r).unwrap_or_else(|e| panic!("{q}: {e}"));
            assert_eq!(v.tap, "tap3f2a1b4c-5d", "{q}");
            assert_eq!(v.name.as_deref(), Some("web-prod-1"), "{q}");
            assert_eq!(v.aliases, vec!["instance-0000002a".to_string()], "{q}");
            assert_eq!(
                v.uuid.as_deref(),
                Some("6f1c2e0a-8d4b-4c55-9a3e-2b7d10e4f001"),
                "{q}"
            );
            assert_eq!(v.mac.as_deref(), Some("fa:16:3e:5a:7b:01"), "{q}");
            assert_eq!(v.pid, Some(4300), "{q}");
        }
        // Listed once: the XML's interface is the process's NIC.
        assert_eq!(list_vms(&r).len(), 1, "{:?}", list_vms(&r));
    }

    #[test]
    fn vms_of_other_namespaces_are_named_and_not_followed_from_here() {
        let (_f, r) = fixture("netns");
        qemu(&r, 10, &["qemu", "-name", "guest=here1"], &["vnet0"]);
        qemu_in(
            &r,
            11,
            &["qemu", "-name", "guest=far1"],
            &["vnet0"],
            "kt-far",
        );
        qemu_in(
            &r,
            12,
            &["qemu", "-name", "guest=hostvm"],
            &["vnet9"],
            "host",
        );
        // A process of this namespace holding a tap that is not in this namespace's sysfs
        // (it attached the tap from a thread in another namespace).
        qemu_in(&r, 13, &["fakevm"], &["vnet5"], "labhere");
        // The host's namespace is PID 1's: name it `host`, not by a /run/netns entry.
        fs::remove_file(r.netns_run.join("host")).unwrap();
        fs::create_dir_all(r.proc_dir.join("12/ns")).unwrap();
        fs::remove_file(r.proc_dir.join("12/ns/net")).unwrap();
        symlink("net:[4026531840]", r.proc_dir.join("12/ns/net")).unwrap();

        let here: Vec<String> = list_vms(&r).into_iter().map(|v| v.tap).collect();
        assert_eq!(here, vec!["vnet0"]);
        let all = list_all(&r);
        let far = all
            .iter()
            .find(|v| v.pid == Some(11))
            .expect("listed with --all");
        assert!(!far.netns.here);
        assert_eq!(far.netns.to_string(), "kt-far");
        assert_eq!(far.netns.inode, Some(netns(&r, "kt-far")));
        assert!(
            far.to_string().ends_with("netns kt-far (not here)"),
            "{far}"
        );
        let host = all.iter().find(|v| v.pid == Some(12)).unwrap();
        assert_eq!(host.netns.to_string(), "host");
        assert!(!host.netns.here);
        let fake = all.iter().find(|v| v.pid == Some(13)).unwrap();
        assert_eq!(fake.netns, Netns::default());
        assert_eq!(fake.netns.to_string(), "unknown");
        let j = far.to_json();
        assert_eq!(j["netns"], "kt-far");
        assert_eq!(j["followable"], false);

        // The same tap name in two namespaces: this namespace's.
        assert_eq!(resolve("vnet0", None, &r).unwrap().pid, Some(10));
        // A VM that exists only elsewhere: say where, and how to get there.
        let e = resolve("far1", None, &r).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ResolveError::Elsewhere { .. }), "{msg}");
        assert!(
            msg.starts_with("'far1' is in network namespace kt-far, not in this one"),
            "{msg}"
        );
        assert!(
            msg.ends_with("run it there: ip netns exec kt-far kvmtrace …"),
            "{msg}"
        );
        let e = resolve("hostvm", None, &r).unwrap_err().to_string();
        assert!(
            e.ends_with("run it there: kvmtrace … from the host's namespace"),
            "{e}"
        );
    }

    #[test]
    fn a_macvtap_guest_is_found_by_the_char_device_it_holds() {
        let (_f, r) = fixture("macvtap");
        let mv = r.sys_class_net.join("mvtap0");
        fs::create_dir_all(mv.join("macvtap/tap9")).unwrap();
        fs::write(mv.join("macvtap/tap9/dev"), "246:3\n").unwrap();
        fs::write(mv.join("address"), "52:54:00:AA:00:01\n").unwrap();
        fs::create_dir_all(r.sys_class_net.join("mvtap1/macvtap/tap10")).unwrap();
        fs::write(r.sys_class_net.join("mvtap1/macvtap/tap10/dev"), "246:4\n").unwrap();
        // QEMU as libvirt starts it for `<interface type='direct'>`: `-netdev tap,fd=N` on an
        // fd opened from /dev/tapN. A path that cannot be stat'ed here: matched by node name.
        qemu_in(
            &r,
            900,
            &[
                "qemu",
                "-name",
                "guest=direct1",
                "-netdev",
                "tap,fd=25,id=hostnet0",
            ],
            &[],
            "labhere",
        );
        symlink("/dev/kvmtrace-fixture/tap9", r.proc_dir.join("900/fd/25")).unwrap();
        // A process still holding the fd of a deleted macvtap whose minor was reused: not
        // this macvtap.
        qemu_in(&r, 901, &["qemu", "-name", "guest=gone"], &[], "labhere");
        symlink(
            "/dev/kvmtrace-fixture/tap9 (deleted)",
            r.proc_dir.join("901/fd/25"),
        )
        .unwrap();
        // Another holder of the same macvtap (a helper of the VM's): still one NIC.
        qemu_in(&r, 902, &["helper"], &[], "labhere");
        symlink("/dev/kvmtrace-fixture/tap9", r.proc_dir.join("902/fd/30")).unwrap();
        assert!(resolve("gone", None, &r).is_err());
        let v = resolve("mvtap0", None, &r).expect("one NIC, two holders");
        assert_eq!(v.name.as_deref(), Some("direct1"));
        let v = resolve("direct1", None, &r).expect("by name");
        assert_eq!(v.tap, "mvtap0");
        assert!(v.macvtap);
        assert!(v.netns.here);
        // No MAC on the command line: the macvtap's own address.
        assert_eq!(v.mac.as_deref(), Some("52:54:00:aa:00:01"));
        assert!(v.to_string().contains(" macvtap"), "{v}");
        assert_eq!(v.to_json()["macvtap"], true);
        // The macvtap nobody holds is listed as a bare one, and resolves by its name.
        let bare = resolve("mvtap1", None, &r).expect("bare macvtap");
        assert!(bare.macvtap && bare.pid.is_none());
        assert_eq!(list_vms(&r).len(), 3);
        assert_eq!(
            macvtaps(&r.sys_class_net),
            vec![
                Macvtap {
                    dev: "246:3".into(),
                    node: "tap9".into(),
                    netdev: "mvtap0".into()
                },
                Macvtap {
                    dev: "246:4".into(),
                    node: "tap10".into(),
                    netdev: "mvtap1".into()
                }
            ]
        );
    }

    #[test]
    fn qemu_name_forms() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            qemu_name(&a(&["-name", "guest=x,debug-threads=on"])).as_deref(),
            Some("x")
        );
        assert_eq!(qemu_name(&a(&["-name", "plain"])).as_deref(), Some("plain"));
        assert_eq!(qemu_name(&a(&["-m", "256"])), None);
        assert_eq!(
            parse_mac("52:54:00:0a:0b:0c"),
            Some([0x52, 0x54, 0, 10, 11, 12])
        );
        assert_eq!(parse_mac("nope"), None);
    }
}
