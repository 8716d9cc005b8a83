//! Reading the host, never changing it: which tap a VM has ([`resolve`]), the facts verdicts
//! cite ([`facts`]: forwarding, addresses, nftables chains), the rtnetlink requests behind
//! them ([`netlink`]), the one nftables reader ([`nftables`]), and the one netlink transport
//! every netlink user shares ([`nl`]).
pub mod facts;
pub mod netlink;
pub mod nftables;
pub mod nl;
pub mod resolve;

pub mod sys;

pub use sys::monotonic_ns;

/// Whether a followed VM is still there: its tap (by name and ifindex, read at the start) in
/// this namespace, and its QEMU process when one was found. `None` while it is; else what went
/// away, in words (`tap vnet0 was removed`, `its QEMU (pid 4242) exited`).
pub fn vm_went_away(tap: &str, tap_ifindex: u32, qemu_pid: Option<u32>) -> Option<String> {
    let now = std::fs::read_to_string(format!("/sys/class/net/{tap}/ifindex"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    match now {
        None => return Some(format!("tap {tap} was removed")),
        Some(i) if i != tap_ifindex => {
            return Some(format!(
            "tap {tap} was removed (a new device of that name has ifindex {i}, not {tap_ifindex})"
        ))
        }
        Some(_) => {}
    }
    let pid = qemu_pid?;
    // A zombie still has its /proc entry, but its fds (the tap) are gone.
    sys::process_exited(pid).then(|| format!("its QEMU (pid {pid}) exited"))
}
