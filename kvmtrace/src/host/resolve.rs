//! VM name, tap device or guest MAC → the VM's tap (and what else is known about it).
//!
//! Sources: `/proc/PID/fdinfo/FD` of `/dev/net/tun` fds (`iff: vnet0`), the QEMU command line
//! (`-name guest=NAME,…`, `mac=…`), libvirt's runtime XML (`/run/libvirt/qemu/NAME.xml`) and
//! `/sys/class/net` (tap devices have `tun_flags`). All paths are parameters, so tests run on
//! fixture trees.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// Where to look. `Roots::system()` is the live machine.
#[derive(Clone, Debug)]
pub struct Roots {
    pub proc_dir: PathBuf,
    pub sys_class_net: PathBuf,
    pub libvirt_run: PathBuf,
}

impl Roots {
    pub fn system() -> Self {
        Roots {
            proc_dir: "/proc".into(),
            sys_class_net: "/sys/class/net".into(),
            libvirt_run: "/run/libvirt/qemu".into(),
        }
    }
}

/// A VM (or a bare tap) found on the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmInfo {
    pub name: Option<String>,
    pub pid: Option<u32>,
    pub tap: String,
    pub mac: Option<String>,
}

impl fmt::Display for VmInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<20} tap {:<12}",
            self.name.as_deref().unwrap_or("-"),
            self.tap
        )?;
        if let Some(m) = &self.mac {
            write!(f, " mac {m}")?;
        }
        if let Some(p) = self.pid {
            write!(f, " pid {p}")?;
        }
        Ok(())
    }
}

fn read(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok()
}

/// The `-name` of a QEMU command line: `guest=NAME,debug-threads=on` or `NAME`.
pub fn qemu_name(args: &[String]) -> Option<String> {
    let i = args.iter().position(|a| a == "-name")?;
    let v = args.get(i + 1)?;
    let first = v.split(',').next()?;
    Some(first.strip_prefix("guest=").unwrap_or(first).to_string())
}

/// MAC addresses given to NICs on a QEMU command line, in order.
pub fn qemu_macs(args: &[String]) -> Vec<String> {
    args.iter()
        .flat_map(|a| a.split(','))
        .filter_map(|kv| kv.strip_prefix("mac="))
        .map(|m| m.to_ascii_lowercase())
        .collect()
}

fn taps_of_pid(proc_dir: &Path, pid: &str) -> Vec<String> {
    let mut taps = Vec::new();
    let Ok(fds) = fs::read_dir(proc_dir.join(pid).join("fd")) else {
        return taps;
    };
    for fd in fds.flatten() {
        let Ok(target) = fs::read_link(fd.path()) else {
            continue;
        };
        if target != Path::new("/dev/net/tun") {
            continue;
        }
        let info = proc_dir.join(pid).join("fdinfo").join(fd.file_name());
        if let Some(text) = read(&info) {
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("iff:") {
                    let v = v.trim().to_string();
                    if !v.is_empty() && !taps.contains(&v) {
                        taps.push(v);
                    }
                }
            }
        }
    }
    taps.sort();
    taps
}

/// `<interface>` blocks of a libvirt domain XML: (tap, mac).
pub fn libvirt_interfaces(xml: &str) -> Vec<(Option<String>, Option<String>)> {
    let attr = |block: &str, tag: &str, name: &str| -> Option<String> {
        let start = block.find(&format!("<{tag} "))?;
        let rest = &block[start..];
        let end = rest.find('>')?;
        let el = &rest[..end];
        for q in ['\'', '"'] {
            let key = format!("{name}={q}");
            if let Some(i) = el.find(&key) {
                let v = &el[i + key.len()..];
                return v.find(q).map(|j| v[..j].to_string());
            }
        }
        None
    };
    xml.split("<interface ")
        .skip(1)
        .map(|b| {
            let block = b.split("</interface>").next().unwrap_or(b);
            (
                attr(block, "target", "dev"),
                attr(block, "mac", "address").map(|m| m.to_ascii_lowercase()),
            )
        })
        .collect()
}

/// Every VM and tap the host shows.
pub fn list_vms(r: &Roots) -> Vec<VmInfo> {
    let mut out: Vec<VmInfo> = Vec::new();
    if let Ok(entries) = fs::read_dir(&r.proc_dir) {
        let mut pids: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            .collect();
        pids.sort_by_key(|p| p.parse::<u32>().unwrap_or(0));
        for pid in pids {
            let taps = taps_of_pid(&r.proc_dir, &pid);
            if taps.is_empty() {
                continue;
            }
            let args: Vec<String> = read(&r.proc_dir.join(&pid).join("cmdline"))
                .unwrap_or_default()
                .split('\0')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            let name = qemu_name(&args);
            let macs = qemu_macs(&args);
            for (i, tap) in taps.iter().enumerate() {
                out.push(VmInfo {
                    name: name.clone(),
                    pid: pid.parse().ok(),
                    tap: tap.clone(),
                    mac: if macs.len() == taps.len() {
                        macs.get(i).cloned()
                    } else {
                        None
                    },
                });
            }
        }
    }
    if let Ok(entries) = fs::read_dir(&r.libvirt_run) {
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("xml") {
                continue;
            }
            let Some(name) = p.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
                continue;
            };
            for (tap, mac) in libvirt_interfaces(&read(&p).unwrap_or_default()) {
                let Some(tap) = tap else { continue };
                if let Some(v) = out.iter_mut().find(|v| v.tap == tap) {
                    v.name.get_or_insert(name.clone());
                    if v.mac.is_none() {
                        v.mac = mac;
                    }
                } else {
                    out.push(VmInfo {
                        name: Some(name.clone()),
                        pid: None,
                        tap,
                        mac,
                    });
                }
            }
        }
    }
    // Taps nobody holds open (or held by a process we cannot see).
    if let Ok(entries) = fs::read_dir(&r.sys_class_net) {
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join("tun_flags").exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for n in names {
            if !out.iter().any(|v| v.tap == n) {
                out.push(VmInfo {
                    tap: n,
                    ..Default::default()
                });
            }
        }
    }
    out
}

/// Why a VM could not be resolved.
#[derive(Debug)]
pub struct UnknownVm {
    pub query: String,
    pub found: Vec<VmInfo>,
}

impl fmt::Display for UnknownVm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "no VM, tap device or guest MAC matches '{}' in this network namespace",
            self.query
        )?;
        if self.found.is_empty() {
            write!(
                f,
                "no VM or tap device was found here (run kvmtrace in the namespace that holds \
                 the VM's tap, e.g. `ip netns exec NS kvmtrace …`)"
            )
        } else {
            writeln!(f, "VMs and taps found:")?;
            for v in &self.found {
                writeln!(f, "  {v}")?;
            }
            write!(f, "give one of these names, taps or MACs")
        }
    }
}

impl std::error::Error for UnknownVm {}

fn looks_like_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
}

/// Resolves a VM name, tap name or guest MAC.
pub fn resolve(query: &str, r: &Roots) -> Result<VmInfo, UnknownVm> {
    let vms = list_vms(r);
    let q = query.to_ascii_lowercase();
    let hit = if looks_like_mac(&q) {
        vms.iter()
            .find(|v| v.mac.as_deref() == Some(q.as_str()))
            .cloned()
    } else {
        vms.iter()
            .find(|v| v.tap == query)
            .or_else(|| vms.iter().find(|v| v.name.as_deref() == Some(query)))
            .cloned()
    };
    hit.ok_or(UnknownVm {
        query: query.to_string(),
        found: vms,
    })
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

    fn fixture(tag: &str) -> (Fixture, Roots) {
        let dir =
            std::env::temp_dir().join(format!("kvmtrace-resolve-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let roots = Roots {
            proc_dir: dir.join("proc"),
            sys_class_net: dir.join("sys"),
            libvirt_run: dir.join("libvirt"),
        };
        for d in [&roots.proc_dir, &roots.sys_class_net, &roots.libvirt_run] {
            fs::create_dir_all(d).unwrap();
        }
        (Fixture { dir }, roots)
    }

    fn qemu(r: &Roots, pid: u32, cmdline: &[&str], taps: &[&str]) {
        let p = r.proc_dir.join(pid.to_string());
        fs::create_dir_all(p.join("fd")).unwrap();
        fs::create_dir_all(p.join("fdinfo")).unwrap();
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
        let by_name = resolve("web1", &r).expect("by name");
        assert_eq!(by_name.tap, "vnet7");
        assert_eq!(by_name.pid, Some(4242));
        assert_eq!(by_name.mac.as_deref(), Some("52:54:00:ab:cd:01"));
        assert_eq!(resolve("vnet7", &r).unwrap().name.as_deref(), Some("web1"));
        assert_eq!(resolve("52:54:00:ab:cd:01", &r).unwrap().tap, "vnet7");
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
        let v = resolve("db2", &r).expect("by libvirt name");
        assert_eq!(v.tap, "vnet3");
        assert_eq!(v.mac.as_deref(), Some("52:54:00:00:00:09"));
    }

    #[test]
    fn unknown_vm_lists_what_was_found() {
        let (_f, r) = fixture("unknown");
        qemu(&r, 7, &["qemu", "-name", "alpha"], &["tap-a"]);
        fs::create_dir_all(r.sys_class_net.join("lonelytap")).unwrap();
        fs::write(r.sys_class_net.join("lonelytap/tun_flags"), "0x1002\n").unwrap();
        let e = resolve("nosuchvm", &r).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("nosuchvm"), "{msg}");
        assert!(msg.contains("alpha") && msg.contains("tap-a"), "{msg}");
        assert!(msg.contains("lonelytap"), "{msg}");
        // A bare tap resolves by its name.
        assert_eq!(resolve("lonelytap", &r).unwrap().tap, "lonelytap");
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
