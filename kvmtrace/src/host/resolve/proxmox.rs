//! Proxmox VE: a VMID's taps (`tap<VMID>i<N>`) and its `/etc/pve/qemu-server/VMID.conf`.

use super::mac::looks_like_mac;

/// The N of a Proxmox tap `tap<VMID>i<N>` (the VM's `netN`).
pub fn pve_tap_nic(tap: &str, vmid: &str) -> Option<u32> {
    tap.strip_prefix("tap")?
        .strip_prefix(vmid)?
        .strip_prefix('i')?
        .parse()
        .ok()
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
