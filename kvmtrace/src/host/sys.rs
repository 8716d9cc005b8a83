//! The few facts asked of libc, through nix: device names and indexes, the monotonic clock,
//! the host's name and kernel release. One place, so no layer writes its own `unsafe` for them.

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
}
