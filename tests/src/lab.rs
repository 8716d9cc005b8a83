//! A KVM-host-shaped lab built from two network namespaces.
//!
//! ```text
//!   FakeVm / QEMU            netns <id>-hv ("the hypervisor")                 netns <id>-out ("the outside")
//!   ───────────── tap vnet0 ── br0 10.77.0.1/24      up0 192.0.2.2/24 ══ veth ══ eth0 192.0.2.1/24
//!   guest 10.77.0.2          ip_forward, MASQUERADE out of up0,               lo 203.0.113.1/32 (`dest`)
//!                            optional FORWARD drop policy                     no route back to 10.77.0.0/24
//! ```
//!
//! The outside deliberately has no route to the guest subnet: without MASQUERADE in the hypervisor
//! the replies die in the outside namespace, which is exactly the "VM has no internet" failure that
//! kvmtrace must explain. All addresses are documentation ranges (RFC 5737) or private, and every
//! packet stays inside the two namespaces.
//!
//! Every setup step panics with the command line and its stderr; a half-built lab is torn down by
//! `Drop` while the panic unwinds, because the `Lab` value exists before the first step runs.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// How to build a [`Lab`]. `Default` is a healthy host: forwarding on, MASQUERADE on, no drop.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Install `table ip labnat` with a MASQUERADE rule for 10.77.0.0/24 leaving via `up0`.
    pub masquerade: bool,
    /// Set the FORWARD policy of the hypervisor to drop, with this tool.
    pub forward_drop: Option<Firewall>,
    /// Value of `net.ipv4.ip_forward` in the hypervisor namespace.
    pub ip_forward: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            masquerade: true,
            forward_drop: None,
            ip_forward: true,
        }
    }
}

/// Which front end installs a FORWARD drop policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firewall {
    /// `table inet labfilter { chain forward { type filter hook forward priority 0; policy drop; } }`
    Nftables,
    /// `iptables -P FORWARD DROP` (Debian's iptables is the nf_tables backend).
    Iptables,
}

/// Network namespaces shaped like a KVM host; see the module docs for the picture.
///
/// Dropping it kills every process still inside its namespaces and deletes both namespaces, which
/// also removes their interfaces.
#[derive(Debug)]
pub struct Lab {
    /// Unique per lab: `kt<pid>-<counter>-<suffix>`.
    pub id: String,
    /// Netns name of the hypervisor.
    pub hv: String,
    /// Netns name of "the outside".
    pub outside: String,
    /// Bridge in `hv` ("br0").
    pub bridge: String,
    /// Persistent tap in `hv` ("vnet0"), port of `bridge`, up.
    pub tap: String,
    /// Uplink veth in `hv` ("up0"); its peer is "eth0" in `outside`.
    pub uplink: String,
    /// 10.77.0.2, the guest.
    pub guest_ip: Ipv4Addr,
    /// 10.77.0.1/24 on `bridge`.
    pub gw_ip: Ipv4Addr,
    /// 52:54:00:4b:54:02, the guest's MAC (QEMU's OUI).
    pub guest_mac: [u8; 6],
    /// 192.0.2.2/24 on `uplink`.
    pub uplink_ip: Ipv4Addr,
    /// 192.0.2.1/24 on eth0 in `outside`; the hypervisor's default route points at it.
    pub outside_gw: Ipv4Addr,
    /// 203.0.113.1/32 on the outside's lo: the "internet" destination.
    pub dest: Ipv4Addr,
    /// Listening sockets created by [`Lab::tcp_listen`]; closed when the lab drops.
    listeners: Mutex<Vec<TcpListener>>,
}

/// Path of a named network namespace (what `ip netns add` bind-mounts).
pub fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// What `LabOptions::masquerade` loads into the hypervisor: its own table, so deleting it
/// (`delete table ip labnat`) removes exactly this. Multi-line on purpose: nft 1.0.6 rejects a
/// one-line `{ ... masquerade } }` (it wants `;` or a newline before each `}`).
pub const MASQUERADE_RULESET: &str = "\
table ip labnat {
    chain post {
        type nat hook postrouting priority srcnat;
        ip saddr 10.77.0.0/24 oifname \"up0\" masquerade
    }
}
";

/// What `Firewall::Nftables` loads: `delete table inet labfilter` undoes it.
pub const FORWARD_DROP_RULESET: &str = "\
table inet labfilter {
    chain forward {
        type filter hook forward priority 0; policy drop;
    }
}
";

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Build the lab. Panics with the failing command line and its stderr; partial state is
    /// removed before the panic propagates.
    pub fn new(opts: LabOptions) -> Lab {
        let lab = Lab {
            id: String::new(),
            hv: String::new(),
            outside: String::new(),
            bridge: "br0".into(),
            tap: "vnet0".into(),
            uplink: "up0".into(),
            guest_ip: Ipv4Addr::new(10, 77, 0, 2),
            gw_ip: Ipv4Addr::new(10, 77, 0, 1),
            guest_mac: [0x52, 0x54, 0x00, 0x4b, 0x54, 0x02],
            uplink_ip: Ipv4Addr::new(192, 0, 2, 2),
            outside_gw: Ipv4Addr::new(192, 0, 2, 1),
            dest: Ipv4Addr::new(203, 0, 113, 1),
            listeners: Mutex::new(Vec::new()),
        }
        .with_fresh_names();
        lab.setup(&opts);
        lab
    }

    /// Pick an id whose namespaces do not exist yet.
    fn with_fresh_names(mut self) -> Lab {
        let pid = std::process::id();
        loop {
            let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let id = format!("kt{pid}-{n}-{:03x}", nanos & 0xfff);
            let (hv, outside) = (format!("{id}-hv"), format!("{id}-out"));
            if !netns_path(&hv).exists() && !netns_path(&outside).exists() {
                self.id = id;
                self.hv = hv;
                self.outside = outside;
                return self;
            }
        }
    }

    fn setup(&self, opts: &LabOptions) {
        let (hv, out) = (self.hv.as_str(), self.outside.as_str());
        let (br, tap, up) = (
            self.bridge.as_str(),
            self.tap.as_str(),
            self.uplink.as_str(),
        );
        let gw_cidr = format!("{}/24", self.gw_ip);
        let uplink_cidr = format!("{}/24", self.uplink_ip);
        let outside_gw_cidr = format!("{}/24", self.outside_gw);
        let outside_gw = self.outside_gw.to_string();
        let dest_cidr = format!("{}/32", self.dest);

        run("ip", &["netns", "add", hv]);
        run("ip", &["netns", "add", out]);
        for ns in [hv, out] {
            run("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }

        // Hypervisor: br0 with the tap as its port. STP off and forward_delay 0 so the port forwards
        // as soon as the fake VM attaches and the tap gets carrier.
        #[rustfmt::skip]
        let hv_steps: &[&[&str]] = &[
            &["link", "add", br, "type", "bridge", "stp_state", "0", "forward_delay", "0"],
            &["tuntap", "add", "dev", tap, "mode", "tap"],
            &["link", "set", tap, "master", br],
            &["link", "set", tap, "up"],
            &["addr", "add", &gw_cidr, "dev", br],
            &["link", "set", br, "up"],
            &["link", "add", up, "type", "veth", "peer", "name", "eth0", "netns", out],
            &["addr", "add", &uplink_cidr, "dev", up],
            &["link", "set", up, "up"],
            &["route", "add", "default", "via", &outside_gw],
        ];
        for step in hv_steps {
            let mut args = vec!["-n", hv];
            args.extend_from_slice(step);
            run("ip", &args);
        }

        // Outside: the peer end and the destination on lo; deliberately no route to 10.77.0.0/24.
        let out_steps: &[&[&str]] = &[
            &["addr", "add", &outside_gw_cidr, "dev", "eth0"],
            &["link", "set", "eth0", "up"],
            &["addr", "add", &dest_cidr, "dev", "lo"],
        ];
        for step in out_steps {
            let mut args = vec!["-n", out];
            args.extend_from_slice(step);
            run("ip", &args);
        }

        // Set explicitly: a new netns may inherit IPv4 settings from init_net
        // (net.core.devconf_inherit_init_net), so the default is the host's, not 0.
        self.set_ip_forward(opts.ip_forward);

        if opts.masquerade {
            self.nft(MASQUERADE_RULESET);
        }
        match opts.forward_drop {
            None => {}
            Some(Firewall::Nftables) => self.nft(FORWARD_DROP_RULESET),
            Some(Firewall::Iptables) => {
                self.hv_run(&["iptables", "-w", "-P", "FORWARD", "DROP"]);
            }
        }
    }

    /// Run `args` (program first) inside the hypervisor namespace; panic with stderr on failure;
    /// return stdout.
    pub fn hv_run(&self, args: &[&str]) -> String {
        run_in(&self.hv, args)
    }

    /// Run `args` (program first) inside the outside namespace; panic with stderr on failure;
    /// return stdout.
    pub fn outside_run(&self, args: &[&str]) -> String {
        run_in(&self.outside, args)
    }

    /// `ip netns exec <hv> <program>` for the caller to add arguments to and spawn. Processes
    /// still running in the namespace when the lab drops are killed.
    pub fn hv_cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.hv, program]);
        cmd
    }

    /// Same as [`Lab::hv_cmd`] for the outside namespace.
    pub fn outside_cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.outside, program]);
        cmd
    }

    /// Load `ruleset` with `nft -f -` inside the hypervisor namespace.
    pub fn nft(&self, ruleset: &str) {
        let line = format!("ip netns exec {} nft -f -", self.hv);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.hv, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("`{line}`: cannot spawn: {e}"));
        let write_result = child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(ruleset.as_bytes());
        let output = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("`{line}`: cannot wait: {e}"));
        if !output.status.success() {
            panic!(
                "`{line}` failed ({}): {}\nruleset:\n{ruleset}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        if let Err(e) = write_result {
            panic!("`{line}`: cannot write the ruleset: {e}");
        }
    }

    /// Set `net.ipv4.ip_forward` in the hypervisor namespace (this also sets every interface's
    /// `forwarding`).
    pub fn set_ip_forward(&self, on: bool) {
        let value = format!("net.ipv4.ip_forward={}", u8::from(on));
        self.hv_run(&["sysctl", "-q", "-w", &value]);
    }

    /// Add another persistent tap `name` to the hypervisor, as a port of the bridge, up (a
    /// second VM or a second NIC; Proxmox names them `tap<VMID>i<N>`). Removed with the lab.
    pub fn add_tap(&self, name: &str) {
        let br = self.bridge.as_str();
        #[rustfmt::skip]
        let steps: &[&[&str]] = &[
            &["tuntap", "add", "dev", name, "mode", "tap"],
            &["link", "set", name, "master", br],
            &["link", "set", name, "up"],
        ];
        for step in steps {
            let mut args = vec!["-n", self.hv.as_str()];
            args.extend_from_slice(step);
            run("ip", &args);
        }
    }

    /// Listen on `dest:port` in the outside namespace so a SYN gets a SYN-ACK. The socket is
    /// created by a short-lived thread that entered the namespace; nothing accepts, the kernel
    /// answers the handshake. Closed when the lab drops.
    pub fn tcp_listen(&self, port: u16) {
        let addr = SocketAddrV4::new(self.dest, port);
        let listener = in_netns(&self.outside, || TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("tcp_listen({addr}) in {}: {e}", self.outside))
            .unwrap_or_else(|e| panic!("tcp_listen({addr}) in {}: bind: {e}", self.outside));
        self.listeners
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(listener);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Ok(mut listeners) = self.listeners.lock() {
            listeners.clear();
        }
        if self.hv.is_empty() {
            return;
        }
        let me = std::process::id();
        for ns in [&self.hv, &self.outside] {
            if !netns_path(ns).exists() {
                continue;
            }
            // Processes left in the namespace (spawned through hv_cmd, say): kill them so the
            // namespace really goes away instead of lingering without a name.
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
            match Command::new("ip")
                .args(["netns", "delete", ns])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
            {
                Ok(o) if o.status.success() => {}
                Ok(o) => log::warn!(
                    "lab {}: `ip netns delete {ns}` failed: {}",
                    self.id,
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => log::warn!("lab {}: cannot run `ip netns delete {ns}`: {e}", self.id),
            }
        }
    }
}

/// Run `f` on a fresh thread that first joined the named network namespace. Sockets and fds that
/// `f` creates keep that namespace after the thread ends. Errors are for the setns part only.
pub(crate) fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    let path = netns_path(ns);
    let file = std::fs::File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: plain syscall on an fd we own; it only changes this thread's netns,
                // and this thread ends right after `f`.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(format!(
                        "setns({}): {}",
                        path.display(),
                        std::io::Error::last_os_error()
                    ));
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn run_in(ns: &str, args: &[&str]) -> String {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Run a command, panic with its command line and stderr unless it succeeds, return stdout.
fn run(program: &str, args: &[&str]) -> String {
    let line = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("`{line}`: cannot spawn: {e}"));
    if !output.status.success() {
        panic!(
            "`{line}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8_lossy(&output.stdout).into_owned()
}
