//! A KVM-host-shaped lab built from two network namespaces.
//!
//! ```text
//!   FakeVm / QEMU            netns <id>-hv ("the hypervisor")                 netns <id>-out ("the outside")
//!   ───────────── tap vnet0 ── br0 10.77.0.1/24      up0 192.0.2.2/24 ══ veth ══ eth0 192.0.2.1/24
//!   guest 10.77.0.2              fd00:77::1/64          2001:db8:2::2/64          2001:db8:2::1/64
//!         fd00:77::2         ip_forward, MASQUERADE out of up0,               lo 203.0.113.1/32 (`dest`)
//!                            IPv6 forwarding (routed, no NAT66),              lo 2001:db8:ffff::1/128 (`dest6`)
//!                            optional FORWARD drop policies                   no route back to 10.77.0.0/24,
//!                                                                             fd00:77::/64 via 2001:db8:2::2
//! ```
//!
//! The outside deliberately has no route to the IPv4 guest subnet: without MASQUERADE in the
//! hypervisor the replies die in the outside namespace, which is exactly the "VM has no internet"
//! failure that kvmtrace must explain. IPv6 is routed the way real v6 hosts are: the outside has a
//! route back to the guest prefix, so the default v6 path is healthy and only the forwarding
//! sysctl or a firewall breaks it. All addresses are documentation ranges (RFC 5737, RFC 3849),
//! private (RFC 1918) or unique local (RFC 4193), and every packet stays inside the two namespaces.
//!
//! Duplicate address detection is off everywhere (`accept_dad=0`, addresses added `nodad`):
//! addresses are usable at once, so IPv6 costs the lab no waiting, and no DAD probes show up on
//! the tap. The hypervisor takes no router advertisements (`accept_ra=0`).
//!
//! Every setup step panics with the command line (or the `ip -batch` input) and its stderr; a
//! half-built lab is torn down by `Drop` while the panic unwinds, because the `Lab` value exists
//! before the first step runs.

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// How to build a [`Lab`]. `Default` is a healthy host: IPv4 and IPv6 forwarding on, MASQUERADE
/// on, no drop.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Install `table ip labnat` with a MASQUERADE rule for 10.77.0.0/24 leaving via `up0`.
    pub masquerade: bool,
    /// Set the FORWARD policy of the hypervisor to drop, with this tool. The nftables variant is an
    /// `inet` table, so it drops forwarded IPv6 too; the iptables one drops IPv4 only.
    pub forward_drop: Option<Firewall>,
    /// Value of `net.ipv4.ip_forward` in the hypervisor namespace.
    pub ip_forward: bool,
    /// Value of `net.ipv6.conf.all.forwarding` in the hypervisor namespace.
    pub ip6_forward: bool,
    /// Drop forwarded IPv6 only: `ip6tables -P FORWARD DROP`, or with nftables
    /// [`FORWARD6_DROP_RULESET`] (`table ip6 labfilter6`).
    pub forward6_drop: Option<Firewall>,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            masquerade: true,
            forward_drop: None,
            ip_forward: true,
            ip6_forward: true,
            forward6_drop: None,
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
    /// fd00:77::2, the guest's IPv6 address (prefix [`Lab::PREFIX6`]).
    pub guest_ip6: Ipv6Addr,
    /// fd00:77::1/64 on `bridge`: the guest's IPv6 gateway.
    pub gw_ip6: Ipv6Addr,
    /// 2001:db8:2::2/64 on `uplink`.
    pub uplink_ip6: Ipv6Addr,
    /// 2001:db8:2::1/64 on eth0 in `outside`; the hypervisor's IPv6 default route points at it.
    pub outside_gw6: Ipv6Addr,
    /// 2001:db8:ffff::1/128 on the outside's lo: the IPv6 "internet" destination.
    pub dest6: Ipv6Addr,
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

/// What `LabOptions::forward6_drop` with `Firewall::Nftables` loads: IPv6 only, so IPv4 keeps
/// flowing. `delete table ip6 labfilter6` undoes it.
pub const FORWARD6_DROP_RULESET: &str = "\
table ip6 labfilter6 {
    chain forward {
        type filter hook forward priority 0; policy drop;
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
    /// Prefix length of the IPv6 guest and uplink subnets.
    pub const PREFIX6: u8 = 64;

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
            guest_ip6: Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 2),
            gw_ip6: Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 1),
            uplink_ip6: Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2),
            outside_gw6: Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1),
            dest6: Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1),
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
        let gw6_cidr = format!("{}/{}", self.gw_ip6, Self::PREFIX6);
        let uplink6_cidr = format!("{}/{}", self.uplink_ip6, Self::PREFIX6);
        let outside_gw6_cidr = format!("{}/{}", self.outside_gw6, Self::PREFIX6);
        let outside_gw6 = self.outside_gw6.to_string();
        let dest6_cidr = format!("{}/128", self.dest6);
        let guest_net6 = format!("{}/{}", guest_prefix6(self.guest_ip6), Self::PREFIX6);
        let uplink_ip6 = self.uplink_ip6.to_string();

        run("ip", &["netns", "add", hv]);
        run("ip", &["netns", "add", out]);
        for ns in [hv, out] {
            // Before any interface exists: a new device copies `default`, and the veth peer
            // gets the outside's defaults when it moves there (it re-registers). No DAD means
            // no tentative addresses and no waiting; no RA means no surprise routes.
            write_sysctls(
                ns,
                &[
                    ("net/ipv6/conf/all/disable_ipv6", "0"),
                    ("net/ipv6/conf/default/disable_ipv6", "0"),
                    ("net/ipv6/conf/all/accept_dad", "0"),
                    ("net/ipv6/conf/default/accept_dad", "0"),
                    ("net/ipv6/conf/all/accept_ra", "0"),
                    ("net/ipv6/conf/default/accept_ra", "0"),
                ],
            );
        }

        // Hypervisor: br0 with the tap as its port. STP off and forward_delay 0 so the port forwards
        // as soon as the fake VM attaches and the tap gets carrier.
        #[rustfmt::skip]
        let hv_steps: &[&[&str]] = &[
            &["link", "set", "lo", "up"],
            &["link", "add", br, "type", "bridge", "stp_state", "0", "forward_delay", "0"],
            &["tuntap", "add", "dev", tap, "mode", "tap"],
            &["link", "set", tap, "master", br],
            &["link", "set", tap, "up"],
            &["addr", "add", &gw_cidr, "dev", br],
            &["addr", "add", &gw6_cidr, "dev", br, "nodad"],
            &["link", "set", br, "up"],
            &["link", "add", up, "type", "veth", "peer", "name", "eth0", "netns", out],
            &["addr", "add", &uplink_cidr, "dev", up],
            &["addr", "add", &uplink6_cidr, "dev", up, "nodad"],
            &["link", "set", up, "up"],
            &["route", "add", "default", "via", &outside_gw],
            // `::/0`, not `-6 ... default`: a batch line takes no options.
            &["route", "add", "::/0", "via", &outside_gw6, "dev", up],
        ];
        ip_batch(hv, hv_steps);

        // Outside: the peer end and the destinations on lo; deliberately no route to 10.77.0.0/24,
        // but a route back to the IPv6 guest prefix (v6 is routed, not NATed).
        #[rustfmt::skip]
        let out_steps: &[&[&str]] = &[
            &["link", "set", "lo", "up"],
            &["addr", "add", &outside_gw_cidr, "dev", "eth0"],
            &["addr", "add", &outside_gw6_cidr, "dev", "eth0", "nodad"],
            &["link", "set", "eth0", "up"],
            &["addr", "add", &dest_cidr, "dev", "lo"],
            &["addr", "add", &dest6_cidr, "dev", "lo", "nodad"],
            &["route", "add", &guest_net6, "via", &uplink_ip6, "dev", "eth0"],
        ];
        ip_batch(out, out_steps);

        // The per-device values, explicitly: they already came from `default`, but a test that
        // reads them should not have to know that.
        let mut per_device = Vec::new();
        for dev in [br, tap, up] {
            per_device.push((format!("net/ipv6/conf/{dev}/accept_dad"), "0"));
            per_device.push((format!("net/ipv6/conf/{dev}/accept_ra"), "0"));
        }
        let per_device: Vec<(&str, &str)> =
            per_device.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        write_sysctls(hv, &per_device);
        write_sysctls(out, &[("net/ipv6/conf/eth0/accept_dad", "0")]);

        // Set explicitly: a new netns may inherit IPv4 settings from init_net
        // (net.core.devconf_inherit_init_net), so the default is the host's, not 0.
        self.set_ip_forward(opts.ip_forward);
        self.set_ip6_forward(opts.ip6_forward);

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
        match opts.forward6_drop {
            None => {}
            Some(Firewall::Nftables) => self.nft(FORWARD6_DROP_RULESET),
            Some(Firewall::Iptables) => {
                self.hv_run(&["ip6tables", "-w", "-P", "FORWARD", "DROP"]);
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
        let value = if on { "1" } else { "0" };
        write_sysctls(&self.hv, &[("net/ipv4/ip_forward", value)]);
    }

    /// Set `net.ipv6.conf.all.forwarding` in the hypervisor namespace (this also sets every
    /// interface's `forwarding`, net/ipv6/addrconf.c `addrconf_fixup_forwarding`).
    pub fn set_ip6_forward(&self, on: bool) {
        let value = if on { "1" } else { "0" };
        write_sysctls(&self.hv, &[("net/ipv6/conf/all/forwarding", value)]);
    }

    /// Listen on `[dest6]:port` in the outside namespace: the IPv6 twin of [`Lab::tcp_listen`].
    pub fn tcp_listen6(&self, port: u16) {
        let addr = SocketAddrV6::new(self.dest6, port, 0, 0);
        let listener = in_netns(&self.outside, || TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("tcp_listen6({addr}) in {}: {e}", self.outside))
            .unwrap_or_else(|e| panic!("tcp_listen6({addr}) in {}: bind: {e}", self.outside));
        self.listeners
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(listener);
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
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, String> {
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

/// Run `ip -n NS -batch -` with one command per step: one process for a whole namespace's
/// setup instead of one per step (a lab is built for nearly every test). Panics with ip's
/// stderr, which names the failing line, and the batch.
fn ip_batch(ns: &str, steps: &[&[&str]]) {
    let batch: String = steps.iter().map(|step| step.join(" ") + "\n").collect();
    let line = format!("ip -n {ns} -batch -");
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("`{line}`: cannot spawn: {e}"));
    let write_result = child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(batch.as_bytes());
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("`{line}`: cannot wait: {e}"));
    if !output.status.success() {
        panic!(
            "`{line}` failed ({}): {}\nbatch:\n{batch}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    if let Err(e) = write_result {
        panic!("`{line}`: cannot write the batch: {e}");
    }
}

/// The /64 network of `addr` (its first four 16-bit groups).
fn guest_prefix6(addr: Ipv6Addr) -> Ipv6Addr {
    let s = addr.segments();
    Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)
}

/// Write `(key, value)` pairs under `/proc/sys/` from a thread inside `ns`: the net sysctls a
/// task sees are those of its own network namespace (net/sysctl_net.c, `net_ctl_header_lookup`
/// and `is_seen` go by `current->nsproxy->net_ns`). Cheaper than spawning `ip netns exec NS sysctl` per value.
/// Panics naming the key on failure.
fn write_sysctls(ns: &str, pairs: &[(&str, &str)]) {
    let result = in_netns(ns, || {
        for (key, value) in pairs {
            let path = Path::new("/proc/sys").join(key);
            std::fs::write(&path, value)
                .map_err(|e| format!("write {value} to {}: {e}", path.display()))?;
        }
        Ok::<(), String>(())
    });
    if let Err(e) = result.and_then(|r| r) {
        panic!("sysctl in netns {ns}: {e}");
    }
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
