//! Reading the host, never changing it: which tap a VM has ([`resolve`]), the facts verdicts
//! cite ([`facts`]: forwarding, addresses, nftables chains), the rtnetlink requests behind
//! them ([`netlink`]), the one nftables reader ([`nftables`]), and the one netlink transport
//! every netlink user shares ([`nl`]).
pub mod facts;
pub mod netlink;
pub mod nftables;
pub mod nl;
pub mod resolve;

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`, so comparable with event times.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
