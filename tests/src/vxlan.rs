//! A VXLAN overlay lab: the VM's bridge has a VXLAN port, and a second namespace is the other
//! tunnel endpoint (VTEP) with a "remote VM" address in the overlay.
//!
//! ```text
//!   FakeVm                 netns <id>-hv ("the hypervisor")                  netns <id>-vtep
//!   guest 10.88.0.2 ── tap vnet0 ─┐                                         ("the other VTEP")
//!                                 br0 10.88.0.1/24                          lo 198.51.100.1/32
//!                       vx0 ──────┘ (vxlan id 42, dstport 4789,             vx0 (id 42, remote 192.0.2.2)
//!                       local 192.0.2.2, remote 198.51.100.1, [dev ul0])        10.88.0.3/24, MAC 52:54:00:4b:58:03
//!                       ul0 192.0.2.2/24 ══════════ veth ══════════════════ ul0 192.0.2.1/24
//!                       route 198.51.100.1/32 via 192.0.2.1
//! ```
//!
//! The remote VTEP's address sits on its loopback, reached through a route, as VTEP addresses
//! usually are: the "underlay route missing" fault is that route gone. The overlay subnet is
//! private (RFC 1918), the underlay documentation ranges (RFC 5737); nothing leaves the two
//! namespaces. Learning is off on the hypervisor's vx0 (`nolearning`), so its forwarding
//! database holds exactly what the lab put there: the default entry to the remote, or nothing.

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::vm::{open_tap_in, FakeVm};

/// How to build a [`VxlanLab`]: `Default` is a healthy overlay.
#[derive(Debug, Clone)]
pub struct VxlanOptions {
    /// Give the hypervisor's vx0 its remote (`remote 198.51.100.1`: the default all-zeros
    /// forwarding entry). Without it vx0 knows no VTEP for any MAC.
    pub remote: bool,
    /// The hypervisor's route to the remote VTEP (198.51.100.1/32 via 192.0.2.1).
    pub underlay_route: bool,
    /// Bind the hypervisor's vx0 to the underlay veth (`dev ul0`). Bound, its MTU is the
    /// underlay's less the 50 bytes of encapsulation (1450) and its route lookups name ul0 as
    /// the output device, so that a missing route is taken for an on-link remote
    /// (net/ipv4/route.c `ip_route_output_key_hash_rcu`, Linux 6.18); unbound, its MTU is 1500
    /// whatever the underlay's and a missing route fails the lookup.
    pub bind_dev: bool,
    /// Drop the outer packets (`udp dport 4789`) in this hook of the hypervisor's nftables
    /// (`table ip vxfw`): "output" or "postrouting" (leaving), "input" (coming back).
    pub drop_outer_at: Option<&'static str>,
    /// The VNI of the other VTEP's vx0 (42 unless a mismatch is wanted).
    pub remote_vni: u32,
}

impl Default for VxlanOptions {
    fn default() -> Self {
        VxlanOptions {
            remote: true,
            underlay_route: true,
            bind_dev: true,
            drop_outer_at: None,
            remote_vni: 42,
        }
    }
}

/// The overlay lab; dropping it kills what runs in its namespaces and deletes them.
#[derive(Debug)]
pub struct VxlanLab {
    pub id: String,
    /// The hypervisor's namespace.
    pub hv: String,
    /// The other VTEP's namespace.
    pub vtep: String,
    pub bridge: String,
    pub tap: String,
    /// "vx0", the bridge's VXLAN port.
    pub vxlan: String,
    /// "ul0", the underlay veth vx0 is bound to.
    pub underlay: String,
    pub vni: u32,
    pub port: u16,
    pub guest_ip: Ipv4Addr,
    pub guest_mac: [u8; 6],
    /// 10.88.0.3 on the other VTEP's vx0: the VM across the overlay.
    pub remote_vm: Ipv4Addr,
    pub remote_vm_mac: [u8; 6],
    /// 192.0.2.2 on ul0: the hypervisor's VTEP address.
    pub local_vtep: Ipv4Addr,
    /// 198.51.100.1: the other VTEP's address.
    pub remote_vtep: Ipv4Addr,
    /// 192.0.2.1: the other VTEP's underlay end, the next hop to `remote_vtep`.
    pub underlay_gw: Ipv4Addr,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

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

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl VxlanLab {
    pub fn new(opts: VxlanOptions) -> VxlanLab {
        let id = format!(
            "ktvx{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let lab = VxlanLab {
            hv: format!("{id}-hv"),
            vtep: format!("{id}-vtep"),
            id,
            bridge: "br0".into(),
            tap: "vnet0".into(),
            vxlan: "vx0".into(),
            underlay: "ul0".into(),
            vni: 42,
            port: 4789,
            guest_ip: Ipv4Addr::new(10, 88, 0, 2),
            guest_mac: [0x52, 0x54, 0x00, 0x4b, 0x58, 0x02],
            remote_vm: Ipv4Addr::new(10, 88, 0, 3),
            remote_vm_mac: [0x52, 0x54, 0x00, 0x4b, 0x58, 0x03],
            local_vtep: Ipv4Addr::new(192, 0, 2, 2),
            remote_vtep: Ipv4Addr::new(198, 51, 100, 1),
            underlay_gw: Ipv4Addr::new(192, 0, 2, 1),
        };
        // The value exists before the first step: a failing step unwinds through Drop.
        run(&["ip", "netns", "add", &lab.hv]);
        run(&["ip", "netns", "add", &lab.vtep]);
        let (hv, vt) = (lab.hv.as_str(), lab.vtep.as_str());
        let remote_mac = mac_str(lab.remote_vm_mac);
        let remote_vni = opts.remote_vni.to_string();
        #[rustfmt::skip]
        let steps: &[&[&str]] = &[
            &["ip", "-n", hv, "link", "set", "lo", "up"],
            &["ip", "-n", vt, "link", "set", "lo", "up"],
            &["ip", "-n", hv, "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", vt],
            &["ip", "-n", hv, "addr", "add", "192.0.2.2/24", "dev", "ul0"],
            &["ip", "-n", hv, "link", "set", "ul0", "up"],
            &["ip", "-n", vt, "addr", "add", "192.0.2.1/24", "dev", "ul0"],
            &["ip", "-n", vt, "link", "set", "ul0", "up"],
            &["ip", "-n", vt, "addr", "add", "198.51.100.1/32", "dev", "lo"],
            &["ip", "-n", hv, "link", "add", "br0", "type", "bridge"],
            &["ip", "-n", hv, "addr", "add", "10.88.0.1/24", "dev", "br0"],
            &["ip", "-n", hv, "link", "set", "br0", "up"],
            &["ip", "-n", hv, "tuntap", "add", "dev", "vnet0", "mode", "tap"],
            &["ip", "-n", hv, "link", "set", "vnet0", "master", "br0"],
            &["ip", "-n", hv, "link", "set", "vnet0", "up"],
            &["ip", "-n", vt, "link", "add", "vx0", "address", &remote_mac, "type", "vxlan", "id", &remote_vni,
              "dstport", "4789", "local", "198.51.100.1", "remote", "192.0.2.2", "nolearning"],
            &["ip", "-n", vt, "addr", "add", "10.88.0.3/24", "dev", "vx0"],
            &["ip", "-n", vt, "link", "set", "vx0", "up"],
        ];
        for s in steps {
            run(s);
        }
        #[rustfmt::skip]
        let mut vx: Vec<&str> = vec![
            "ip", "-n", hv, "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789",
            "local", "192.0.2.2", "nolearning",
        ];
        if opts.bind_dev {
            vx.extend(["dev", "ul0"]);
        }
        if opts.remote {
            vx.extend(["remote", "198.51.100.1"]);
        }
        run(&vx);
        run(&["ip", "-n", hv, "link", "set", "vx0", "master", "br0"]);
        run(&["ip", "-n", hv, "link", "set", "vx0", "up"]);
        if opts.underlay_route {
            run(&[
                "ip",
                "-n",
                hv,
                "route",
                "add",
                "198.51.100.1/32",
                "via",
                "192.0.2.1",
                "dev",
                "ul0",
            ]);
        }
        if let Some(hook) = opts.drop_outer_at {
            lab.nft(&format!(
                "table ip vxfw {{\n chain c {{\n  type filter hook {hook} priority 0;\n  udp dport 4789 drop\n }}\n}}\n"
            ));
        }
        lab
    }

    /// Loads an nftables ruleset into the hypervisor.
    pub fn nft(&self, ruleset: &str) {
        use std::io::Write as _;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.hv, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nft");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ruleset.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft -f failed: {}\n{ruleset}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `args` (program first) inside the hypervisor namespace; panics unless it succeeds.
    pub fn hv_run(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.hv];
        full.extend_from_slice(args);
        run(&full)
    }

    /// `args` (program first) inside the other VTEP's namespace; panics unless it succeeds.
    pub fn vtep_run(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.vtep];
        full.extend_from_slice(args);
        run(&full)
    }

    /// A fake VM on the tap, the remote VM its "gateway" (so that it resolves the remote VM's
    /// MAC across the overlay). Waits until the tap forwards as a bridge port.
    pub fn attach_vm(&self) -> FakeVm {
        let fd: OwnedFd = open_tap_in(&self.hv, &self.tap)
            .unwrap_or_else(|e| panic!("opening {} in {}: {e}", self.tap, self.hv));
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let st = Command::new("ip")
                .args(["netns", "exec", &self.hv, "cat"])
                .arg(format!("/sys/class/net/{}/brport/state", self.tap))
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
            if st.as_deref() == Some("3") {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        FakeVm::on_fd(fd, &self.tap, self.guest_mac, self.guest_ip, self.remote_vm)
    }
}

impl Drop for VxlanLab {
    fn drop(&mut self) {
        let me = std::process::id();
        for ns in [&self.hv, &self.vtep] {
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
    }
}
