//! The stand-in for QEMU inside the kernel matrix: a process whose command line reads like
//! QEMU's (`-name guest=kvm1 -netdev tap,id=net0,ifname=vnet0 -device …,mac=M`) and that holds
//! the tap, so kvmtrace resolves the VM exactly as it does a real one (`host/resolve/`: the tun
//! fd in `/proc/PID/fdinfo`, the name from the command line).
//!
//! It moves frames between the tap and an AF_PACKET socket on `w0`, a veth whose peer is the
//! guest namespace's `eth0` (`KT_WIRE=/run/netns/NS:w0`). The socket is opened inside `NS` and
//! the process then returns to the hypervisor's namespace, so the guest's frames appear in the
//! hypervisor only through the tap, as a real guest's do (shared/LAB.md).

use std::{
    ffi::CString,
    fs::File,
    io::{Error, Read, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use anyhow::{bail, ensure, Context, Result};

/// `TUNSETIFF` (`_IOW('T', 202, int)`, include/uapi/linux/if_tun.h).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `PACKET_IGNORE_OUTGOING` (include/uapi/linux/if_packet.h, Linux 4.20+).
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
/// `sll_pkttype` of a frame this socket's device sent.
const PACKET_OUTGOING: u8 = 4;

/// Whether this process was started as the stand-in (a QEMU-like `-name` in its arguments).
pub fn is_standin(args: &[String]) -> bool {
    args.iter().any(|a| a == "-name")
}

/// Runs the stand-in until it is killed; returns only on an error.
pub fn run(args: &[String]) -> Result<()> {
    let tap = args
        .windows(2)
        .filter(|w| w[0] == "-netdev")
        .find_map(|w| {
            w[1].split(',')
                .find_map(|kv| kv.strip_prefix("ifname=").map(str::to_owned))
        })
        .context("no -netdev …,ifname=TAP on the command line")?;
    let wire = std::env::var("KT_WIRE").context("KT_WIRE=/run/netns/NS:DEV is not set")?;
    let (ns_path, wire_dev) = wire
        .rsplit_once(':')
        .context("KT_WIRE is not /run/netns/NS:DEV")?;

    let tap_fd = open_tap(&tap)?;
    let home = File::open("/proc/self/ns/net").context("opening /proc/self/ns/net")?;
    let wire_ns = File::open(ns_path).with_context(|| format!("opening {ns_path}"))?;
    setns(&wire_ns)?;
    let sock = packet_socket(wire_dev);
    // Back home before anything else can fail: the tap's owner must live in the hypervisor.
    setns(&home)?;
    let sock = sock?;

    let mut tap_r = File::from(tap_fd.try_clone()?);
    let sock_w = sock.try_clone()?;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        loop {
            match tap_r.read(&mut buf) {
                Ok(n) if n > 0 => {
                    // SAFETY: sends `n` initialised bytes of `buf` on a socket we own.
                    unsafe { libc::send(sock_w.as_raw_fd(), buf.as_ptr().cast(), n, 0) };
                }
                Ok(_) => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    });
    let mut tap_w = File::from(tap_fd);
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: an all-zero sockaddr_ll is valid; recvfrom writes at most `len` bytes of it
        // and at most `buf.len()` bytes of payload.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        let n = unsafe {
            libc::recvfrom(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut from).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let err = Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err).context("recvfrom on the wire");
        }
        if from.sll_pkttype == PACKET_OUTGOING {
            continue;
        }
        // A tap whose queue is full (nobody reads: the kernel side is down) refuses the write;
        // a real NIC would drop the frame too.
        let _ = tap_w.write(&buf[..n as usize]);
    }
}

fn open_tap(name: &str) -> Result<OwnedFd> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun")?;
    // struct ifreq: the name (IFNAMSIZ = 16), then ifr_flags (a short) in the union.
    let mut ifr = [0u8; 40];
    ensure!(name.len() < 16, "tap name {name} too long");
    ifr[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as i16;
    ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifr` is large enough for.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) };
    if rc != 0 {
        return Err(Error::last_os_error()).with_context(|| format!("TUNSETIFF {name}"));
    }
    Ok(tun.into())
}

fn setns(ns: &File) -> Result<()> {
    // SAFETY: setns on an fd we own; it only changes this thread's namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(Error::last_os_error()).context("setns");
    }
    Ok(())
}

fn packet_socket(dev: &str) -> Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the fd is owned right after.
    let fd: RawFd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        return Err(Error::last_os_error()).context("socket(AF_PACKET)");
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let cname = CString::new(dev)?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        bail!("no device {dev} in the wire namespace");
    }
    // SAFETY: an all-zero sockaddr_ll is valid; bind reads `size_of` bytes of it.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&raw const sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(Error::last_os_error()).with_context(|| format!("bind to {dev}"));
    }
    let one: libc::c_int = 1;
    // Best effort (4.20+); outgoing frames are also skipped by their packet type.
    // SAFETY: setsockopt reads one c_int.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_IGNORE_OUTGOING,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    Ok(sock)
}
