//! What a QEMU command line says: `-name`, `-id`/`-pidfile` (Proxmox's VMID), the NICs' MACs
//! and their taps (`-netdev …,id=X,ifname=TAP` + `-device …,netdev=X,mac=M`).

use std::path::Path;

/// The value after `flag` on a command line.
pub(super) fn arg_after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
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

/// MAC addresses given to NICs on a QEMU command line, in order.
pub fn qemu_macs(args: &[String]) -> Vec<String> {
    args.iter()
        .flat_map(|a| a.split(','))
        .filter_map(|kv| kv.strip_prefix("mac="))
        .map(|m| m.to_ascii_lowercase())
        .collect()
}

pub(super) fn kv<'a>(opt: &'a str, key: &str) -> Option<&'a str> {
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
