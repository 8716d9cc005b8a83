//! A macvtap ("direct") lab: no bridge, no tap netdev, the guest on the wire of a lower device.
//!
//! ```text
//!   FakeVm on /dev/tapN      netns <id>-hv                           netns <id>-out
//!   guest 10.78.0.2 ── mvtap0 (macvtap, mode M) on low0 ══ veth ══ eth0 10.78.0.1/24 (gateway)
//!                            low0 [10.78.0.3/24 with `host_addr`]    lo 203.0.113.1/32 (`dest`)
//!   [another guest ── mvtap1 on low0, with `add_macvtap`]
//! ```
//!
//! The kernel creates `/dev/tapN` in the host's /dev with N the macvtap's ifindex in its own
//! namespace, so two labs can both have a `tap4`. The lab makes its own node of the macvtap's
//! major:minor in a private directory and opens that: what a QEMU holds is told apart by the
//! character device, never by the node's name.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A macvtap lab; dropping it kills what runs in its namespaces and deletes them.
#[derive(Debug)]
pub struct MacvtapLab {
    pub id: String,
    pub hv: String,
    pub outside: String,
    /// "low0", the macvtap's lower device (a veth to the outside).
    pub lower: String,
    /// "mvtap0".
    pub macvtap: String,
    /// 52:54:00:4b:54:20, the macvtap's (and the guest's) MAC.
    pub guest_mac: [u8; 6],
    pub guest_ip: Ipv4Addr,
    /// 10.78.0.1, the outside's end: the guest's gateway.
    pub gw_ip: Ipv4Addr,
    /// 10.78.0.3 on `lower`, when asked for.
    pub host_ip: Ipv4Addr,
    /// 203.0.113.1 on the outside's lo.
    pub dest: Ipv4Addr,
    /// The character device node this lab made for the macvtap.
    pub node: PathBuf,
    dir: PathBuf,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The macvtap's ifindex in its namespace. The kernel names its character device
/// `/dev/tap<ifindex>` in the host's one /dev, and QEMU 10 opens `/dev/tap<ifindex>` for a
/// `-netdev tap,ifname=X` whose X has that ifindex in *its* namespace: with a small ifindex
/// (mvtap0 would be 3), another lab's QEMU on its tap vnet0 (also ifindex 3) opened this lab's
/// macvtap. An ifindex no lab's tap ever has keeps them apart.
const MVTAP_INDEX: &str = "4000";

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("`{}`: cannot spawn: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "`{}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl MacvtapLab {
    /// `mode`: macvtap mode (`bridge`, `vepa`, `private`, `passthru`). `host_addr`: give the
    /// hypervisor an address on the lower device.
    pub fn new(mode: &str, host_addr: bool) -> MacvtapLab {
        let id = format!(
            "ktmv{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("kvmtrace-{id}"));
        let lab = MacvtapLab {
            hv: format!("{id}-hv"),
            outside: format!("{id}-out"),
            id,
            lower: "low0".into(),
            macvtap: "mvtap0".into(),
            guest_mac: [0x52, 0x54, 0x00, 0x4b, 0x54, 0x20],
            guest_ip: Ipv4Addr::new(10, 78, 0, 2),
            gw_ip: Ipv4Addr::new(10, 78, 0, 1),
            host_ip: Ipv4Addr::new(10, 78, 0, 3),
            dest: Ipv4Addr::new(203, 0, 113, 1),
            node: dir.join("tap"),
            dir,
        };
        let (hv, out) = (lab.hv.as_str(), lab.outside.as_str());
        let mac = "52:54:00:4b:54:20";
        run(&["ip", "netns", "add", hv]);
        run(&["ip", "netns", "add", out]);
        #[rustfmt::skip]
        let steps: &[&[&str]] = &[
            &["ip", "-n", hv, "link", "set", "lo", "up"],
            &["ip", "-n", out, "link", "set", "lo", "up"],
            &["ip", "-n", hv, "link", "add", "low0", "type", "veth", "peer", "name", "eth0", "netns", out],
            &["ip", "-n", hv, "link", "set", "low0", "up"],
            &["ip", "-n", out, "addr", "add", "10.78.0.1/24", "dev", "eth0"],
            &["ip", "-n", out, "link", "set", "eth0", "up"],
            &["ip", "-n", out, "addr", "add", "203.0.113.1/32", "dev", "lo"],
            &["ip", "-n", hv, "link", "add", "link", "low0", "name", "mvtap0", "index", MVTAP_INDEX, "address", mac, "type", "macvtap", "mode", mode],
            &["ip", "-n", hv, "link", "set", "mvtap0", "up"],
        ];
        for s in steps {
            run(s);
        }
        if host_addr {
            run(&["ip", "-n", hv, "addr", "add", "10.78.0.3/24", "dev", "low0"]);
        }
        // Through `ip netns exec`: /sys shows the namespace of whoever mounted it.
        let dev = run(&[
            "ip",
            "netns",
            "exec",
            hv,
            "sh",
            "-c",
            "cat /sys/class/net/mvtap0/macvtap/*/dev",
        ]);
        let (maj, min) = dev.trim().split_once(':').expect("major:minor");
        std::fs::create_dir_all(&lab.dir).unwrap();
        let node = lab.node.to_str().unwrap();
        run(&["mknod", node, "c", maj, min]);
        lab
    }

    /// Another guest's macvtap `name` (`mvtapN`, N ≥ 1) on the same lower device, with `mac` and
    /// `mode`; returns
    /// the character device node this lab made for it (open it with `open_macvtap`).
    pub fn add_macvtap(&self, name: &str, mac: &str, mode: &str) -> PathBuf {
        let hv = self.hv.as_str();
        // mvtapN gets ifindex MVTAP_INDEX + N (mvtap0 has MVTAP_INDEX).
        let n: u32 = name
            .trim_start_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .expect("a macvtap name ending in its number, e.g. mvtap1");
        let index = (MVTAP_INDEX.parse::<u32>().unwrap() + n).to_string();
        run(&[
            "ip", "-n", hv, "link", "add", "link", "low0", "name", name, "index", &index,
            "address", mac, "type", "macvtap", "mode", mode,
        ]);
        run(&["ip", "-n", hv, "link", "set", name, "up"]);
        let dev = self.hv_run(&[
            "sh",
            "-c",
            &format!("cat /sys/class/net/{name}/macvtap/*/dev"),
        ]);
        let (maj, min) = dev.trim().split_once(':').expect("major:minor");
        let node = self.dir.join(name);
        run(&["mknod", node.to_str().unwrap(), "c", maj, min]);
        node
    }

    /// `args` (program first) inside the hypervisor namespace; panics unless it succeeds.
    pub fn hv_run(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.hv];
        full.extend_from_slice(args);
        run(&full)
    }
}

impl Drop for MacvtapLab {
    fn drop(&mut self) {
        let me = std::process::id();
        for ns in [&self.hv, &self.outside] {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                    .filter(|&p| p > 1 && p as u32 != me)
                {
                    // SAFETY: kill(2) has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            let _ = Command::new("ip")
                .args(["netns", "delete", ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
