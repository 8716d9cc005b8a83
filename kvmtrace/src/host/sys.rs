//! The few facts asked of libc (through nix) and of /proc (through procfs): device names and
//! indexes, the monotonic clock, the host's name and kernel release, this process's network
//! namespace, memory and capabilities, another process's state and start time. One place, so
//! no layer writes its own `unsafe` or its own /proc parser for them.

/// The ifindex of a network device of this network namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok().filter(|&i| i != 0)
}

/// The name of a network device of this network namespace.
pub fn ifname(ifindex: u32) -> Option<String> {
    nix::net::if_::if_indextoname(ifindex)
        .ok()
        .map(|c| c.to_string_lossy().into_owned())
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`, so comparable with event times.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// The host's name and its kernel release (`uname -n`, `uname -r`); empty if unknown.
pub fn uname() -> (String, String) {
    match nix::sys::utsname::uname() {
        Ok(u) => (
            u.nodename().to_string_lossy().into_owned(),
            u.release().to_string_lossy().into_owned(),
        ),
        Err(_) => (String::new(), String::new()),
    }
}

/// The inode of this process's network namespace (`/proc/self/ns/net`): what the kernel
/// programs compare a packet's namespace with.
pub fn netns_inode() -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self/ns/net").map(|m| m.ino())
}

/// Whether process `pid` has exited: gone, or a zombie (its fds, a tap among them, are closed).
pub fn process_exited(pid: u32) -> bool {
    match procfs::process::Process::new(pid as i32).and_then(|p| p.stat()) {
        Ok(s) => matches!(s.state, 'Z' | 'X' | 'x'),
        Err(_) => true,
    }
}

/// When process `pid` started (clock ticks after boot, field 22 of /proc/PID/stat): with the
/// pid, names one process even after its pid is reused.
pub fn start_time(pid: u32) -> Option<u64> {
    let p = procfs::process::Process::new(pid as i32).ok()?;
    p.stat().ok().map(|s| s.starttime)
}

/// This process's resident and peak resident memory (VmRSS, VmHWM) in KiB.
pub fn rss_kib() -> (u64, u64) {
    procfs::process::Process::myself()
        .and_then(|p| p.status())
        .map(|s| (s.vmrss.unwrap_or(0), s.vmhwm.unwrap_or(0)))
        .unwrap_or((0, 0))
}

/// This process's effective capabilities (CapEff).
pub fn effective_caps() -> Option<u64> {
    procfs::process::Process::myself()
        .and_then(|p| p.status())
        .ok()
        .map(|s| s.capeff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_both_ways_and_a_clock_that_moves() {
        let lo = ifindex("lo").expect("lo has an index");
        assert_eq!(ifname(lo).as_deref(), Some("lo"));
        assert_eq!(ifindex("no-such-dev0"), None);
        let (a, b) = (monotonic_ns(), monotonic_ns());
        assert!(a > 0 && b >= a);
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_eq!(uname().1, release.trim());
    }

    #[test]
    fn this_process_and_a_child_that_exits() {
        let (rss, peak) = rss_kib();
        assert!(rss > 0 && peak >= rss, "{rss} {peak}");
        assert!(netns_inode().unwrap() > 0);
        assert!(effective_caps().is_some());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(!process_exited(pid));
        assert!(start_time(pid).is_some_and(|t| t > 0));
        child.kill().unwrap();
        // Killed but not reaped: a zombie, which counts as exited.
        while !process_exited(pid) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child.wait().unwrap();
        assert!(process_exited(pid));
        assert_eq!(start_time(pid), None);
    }
}
