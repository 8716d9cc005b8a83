//! Which taps a process holds: `/dev/net/tun` fds (their fdinfo names the tap) and macvtap
//! character devices (`/dev/tapN`, N the macvtap's ifindex, matched by device number).

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

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
                fs::read_to_string(n.path().join("dev")).ok(),
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
pub(super) fn macvtap_of_fd<'a>(
    fd: &Path,
    target: &Path,
    mv: &'a [Macvtap],
) -> Option<&'a Macvtap> {
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
pub(super) fn taps_of_pid(proc_dir: &Path, pid: &str, mv: &[Macvtap]) -> Vec<(String, bool)> {
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
        if let Ok(text) = fs::read_to_string(&info) {
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
