//! A real QEMU guest boots behind a bridge in a KVM-host-shaped namespace, and its pings and TCP
//! connections reach an "outside" namespace through masquerading (IPv4) and routing (IPv6, on
//! the shared [`Lab`]).
//!
//! The namespace pair is built by hand with `ip`, local to this test, until the shared lab type
//! covers it:
//!
//! ```text
//!  guest eth0 10.77.0.2/24 ── vnet0 (tap) ─ br0 10.77.0.1/24      [hv netns]
//!                             veth-hv 192.0.2.2/24, default via .1, masquerade 10.77.0.0/24
//!                                │
//!                             veth-out 192.0.2.1/24, lo 203.0.113.1/32   [out netns]
//! ```
//!
//! Needs root, qemu-system-x86 and apt access for the first image build (`cargo xtask setup`).

use std::{
    fs::File,
    io::{ErrorKind, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener},
    os::unix::io::AsRawFd,
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use kvmtrace_lab::guest::{build_image, default_cache_dir, Guest, GuestConfig};
use kvmtrace_lab::lab::{Lab, LabOptions};

const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const BRIDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const DEST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const DEST_PORT: u16 = 80;

#[test]
fn guest_boots_and_reaches_outside_through_the_bridge() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");

    let started = Instant::now();
    let image = build_image(&default_cache_dir()).expect("building the guest image");
    let image_time = started.elapsed();

    let lab = HandLab::new();
    let _sink = TcpSink::start(&lab.outside, SocketAddr::from((DEST, DEST_PORT)));

    let cfg = GuestConfig {
        netns: lab.hv.clone(),
        tap: "vnet0".into(),
        mac: [0x52, 0x54, 0x00, 0x4b, 0x54, 0x02],
        ip: GUEST_IP,
        prefix: 24,
        gateway: BRIDGE_IP,
        dest: DEST,
        tcp_port: DEST_PORT,
        // IPv4 only: the hand-built namespaces have no IPv6 plan (the lab's test below has).
        ip6: None,
        gateway6: None,
        dest6: None,
        name: format!("ktgb-{}", std::process::id()),
        extra_args: Vec::new(),
        tap_fd: None,
    };
    let booted = Instant::now();
    let guest = Guest::boot(&image, &cfg).expect("starting qemu");
    let report = |what: &str| {
        format!(
            "{what}\n--- serial log ---\n{}\n--- qemu stderr ---\n{}",
            guest.serial_log(),
            guest.qemu_stderr()
        )
    };

    assert!(
        guest.wait_for_serial(&format!("KT ready {GUEST_IP}"), Duration::from_secs(60)),
        "{}",
        report("guest never configured eth0")
    );
    let ready = booted.elapsed();
    let left = Duration::from_secs(60).saturating_sub(ready);
    assert!(
        guest.wait_for_serial("KT ping ok", left),
        "{}",
        report("no ping reply within 60 s of boot")
    );
    let first_ping = booted.elapsed();
    assert!(
        guest.wait_for_serial("KT tcp ok", Duration::from_secs(20)),
        "{}",
        report("no TCP connection to the outside sink")
    );
    let first_tcp = booted.elapsed();

    // What kvmtrace relies on to name a VM: QEMU's own command line carries `guest=<name>`.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", guest.pid())).expect("qemu cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(
        cmdline.contains(&format!("guest={}", cfg.name)),
        "pid {} is not the named qemu: {cmdline:?}",
        guest.pid()
    );

    eprintln!(
        "[guest_boot] image {image_time:.2?}; from qemu start: ready {ready:.2?}, \
         first ping ok {first_ping:.2?}, first tcp ok {first_tcp:.2?}"
    );
}

/// The guest on the shared lab, with IPv6 from `GuestConfig::for_lab`: it configures its v6
/// address and route, and its ping6 and TCP connect over IPv6 are answered by the outside
/// through the hypervisor's (routed, not NATed) IPv6 forwarding.
#[test]
fn guest_gets_ipv6_and_pings_the_outside_over_it() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root");
    let image = build_image(&default_cache_dir()).expect("building the guest image");
    let lab = Lab::new(LabOptions::default());
    lab.tcp_listen(DEST_PORT);
    lab.tcp_listen6(DEST_PORT);

    let mut cfg = GuestConfig::for_lab(&lab, &format!("ktgb6-{}", std::process::id()), DEST_PORT);
    assert_eq!(cfg.ip6, Some((lab.guest_ip6, 64)));
    assert_eq!(cfg.gateway6, Some(lab.gw_ip6));
    cfg.dest6 = Some(lab.dest6);
    let booted = Instant::now();
    let guest = Guest::boot(&image, &cfg).expect("starting qemu");
    let report = |what: &str| {
        format!(
            "{what}\n--- serial log ---\n{}\n--- qemu stderr ---\n{}",
            guest.serial_log(),
            guest.qemu_stderr()
        )
    };
    let echo_replies_before = outside_snmp6(&lab, "Icmp6OutEchoReplies");

    assert!(
        guest.wait_for_serial(
            &format!("KT ready6 {}", lab.guest_ip6),
            Duration::from_secs(60)
        ),
        "{}",
        report("guest never configured its IPv6 address")
    );
    let ready6 = booted.elapsed();
    let left = Duration::from_secs(60).saturating_sub(ready6);
    assert!(
        guest.wait_for_serial("KT ping6 ok", left),
        "{}",
        report("no ping6 reply within 60 s of boot")
    );
    let first_ping6 = booted.elapsed();
    assert!(
        guest.wait_for_serial("KT tcp6 ok", Duration::from_secs(20)),
        "{}",
        report("no TCP connection over IPv6 to the outside")
    );
    assert!(
        !guest.serial_log().contains("KT error"),
        "{}",
        report("/init reported an error")
    );
    // The reply came from the outside itself, and the host knows the guest at its v6 address.
    assert!(
        outside_snmp6(&lab, "Icmp6OutEchoReplies") > echo_replies_before,
        "the outside sent no echo reply"
    );
    let neigh = lab.hv_run(&["ip", "-6", "neigh", "show", &lab.guest_ip6.to_string()]);
    assert!(neigh.contains("lladdr 52:54:00:4b:54:02"), "{neigh}");
    eprintln!(
        "[guest_boot] v6 from qemu start: ready6 {ready6:.2?}, first ping6 ok {first_ping6:.2?}"
    );
}

/// A counter of the outside's /proc/net/snmp6.
fn outside_snmp6(lab: &Lab, name: &str) -> u64 {
    let text = lab.outside_run(&["cat", "/proc/net/snmp6"]);
    text.lines()
        .find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(name)).then(|| it.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("{name} not in /proc/net/snmp6:\n{text}"))
}

/// Runs a command, panicking with its stderr if it fails.
fn sh(args: &[&str]) {
    sh_stdin(args, "");
}

fn sh_stdin(args: &[&str], stdin: &str) {
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("running {args:?}: {err}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("writing stdin");
    let out = child.wait_with_output().expect("waiting");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Two namespaces, deleted on drop (also when the test panics).
struct HandLab {
    hv: String,
    outside: String,
}

impl HandLab {
    fn new() -> Self {
        let (hv, outside) = loop {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let tag = format!("{}-{:04x}", std::process::id(), nanos & 0xffff);
            let (hv, outside) = (format!("ktgb-hv-{tag}"), format!("ktgb-out-{tag}"));
            // `ip netns list | grep` would match other labs' longer names: test the path.
            if !Path::new("/run/netns").join(&hv).exists()
                && !Path::new("/run/netns").join(&outside).exists()
            {
                break (hv, outside);
            }
        };
        sh(&["ip", "netns", "add", &hv]);
        // From here on Drop cleans up whatever exists.
        let lab = HandLab { hv, outside };
        sh(&["ip", "netns", "add", &lab.outside]);
        let (hv, out) = (lab.hv.as_str(), lab.outside.as_str());

        sh(&["ip", "-n", hv, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", hv, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", hv, "addr", "add", "10.77.0.1/24", "dev", "br0"]);
        sh(&["ip", "-n", hv, "link", "set", "br0", "up"]);
        sh(&[
            "ip", "-n", hv, "tuntap", "add", "dev", "vnet0", "mode", "tap",
        ]);
        sh(&["ip", "-n", hv, "link", "set", "vnet0", "master", "br0"]);
        sh(&["ip", "-n", hv, "link", "set", "vnet0", "up"]);
        sh(&[
            "ip", "-n", hv, "link", "add", "veth-hv", "type", "veth", "peer", "name", "veth-out",
            "netns", out,
        ]);
        sh(&[
            "ip",
            "-n",
            hv,
            "addr",
            "add",
            "192.0.2.2/24",
            "dev",
            "veth-hv",
        ]);
        sh(&["ip", "-n", hv, "link", "set", "veth-hv", "up"]);
        sh(&[
            "ip",
            "-n",
            hv,
            "route",
            "add",
            "default",
            "via",
            "192.0.2.1",
        ]);
        sh(&[
            "ip",
            "netns",
            "exec",
            hv,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        sh_stdin(
            &["ip", "netns", "exec", hv, "nft", "-f", "-"],
            r#"table ip ktgb {
                chain postrouting {
                    type nat hook postrouting priority srcnat; policy accept;
                    ip saddr 10.77.0.0/24 oifname "veth-hv" masquerade
                }
            }"#,
        );

        sh(&["ip", "-n", out, "link", "set", "lo", "up"]);
        sh(&[
            "ip",
            "-n",
            out,
            "addr",
            "add",
            "203.0.113.1/32",
            "dev",
            "lo",
        ]);
        sh(&[
            "ip",
            "-n",
            out,
            "addr",
            "add",
            "192.0.2.1/24",
            "dev",
            "veth-out",
        ]);
        sh(&["ip", "-n", out, "link", "set", "veth-out", "up"]);
        lab
    }
}

impl Drop for HandLab {
    fn drop(&mut self) {
        // A persistent tap is not a netns-local device: delete it explicitly rather than let
        // the netns teardown decide its fate.
        let _ = Command::new("ip")
            .args(["-n", &self.hv, "link", "del", "vnet0"])
            .stderr(Stdio::null())
            .status();
        for ns in [&self.hv, &self.outside] {
            if Path::new("/run/netns").join(ns).exists() {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
}

/// A TCP listener inside a namespace that accepts and drops connections until dropped.
struct TcpSink {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpSink {
    fn start(netns: &str, addr: SocketAddr) -> Self {
        let path = Path::new("/run/netns").join(netns);
        // A socket belongs to the netns it was created in, whichever thread uses it later; only
        // this short-lived thread switches namespaces.
        let listener = std::thread::spawn(move || {
            let ns = File::open(&path).expect("opening the netns");
            // SAFETY: setns on a namespace fd we own; it changes only this thread's netns.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            TcpListener::bind(addr).expect("binding the sink")
        })
        .join()
        .expect("netns thread");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => drop(conn),
                        Err(err) if err.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(err) => panic!("accept: {err}"),
                    }
                }
            })
        };
        TcpSink {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TcpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
