//! Which capabilities kvmtrace needs, checked before anything is loaded, so that a missing one
//! is named (exit 3) instead of surfacing as a bare EPERM from the middle of start-up. Root
//! has them all; a service can run as its own user with exactly these (contrib/
//! kvmtrace-watch.service). Each was measured on Linux 6.18 as a non-root user given the others
//! (`setpriv --reuid … --ambient-caps`):
//! - `CAP_BPF`: creating maps and loading programs (without it: the first map, EPERM);
//! - `CAP_PERFMON`: programs that read kernel memory (tp_btf, BTF-typed `sk_buff` loads: the
//!   verifier refuses them, EACCES) and tracepoint perf events;
//! - `CAP_NET_ADMIN`: TC programs and TCX links on the taps and path devices (EPERM);
//! - `CAP_SYSLOG`: the addresses in `/proc/kallsyms` (all zero without it at
//!   `perf_event_paranoid` 2, kernel/kallsyms.c `kallsyms_show_value`), which name a drop's
//!   location and, from its stack, its netfilter hook;
//! - `CAP_SYS_PTRACE` and `CAP_DAC_READ_SEARCH`: another user's `/proc/PID/fd` and
//!   `/proc/PID/fdinfo` (fs/proc/fd.c: the directory's mode, then `ptrace_may_access`), which
//!   tell which QEMU holds a tap, hence the VM's name; without either a root-owned QEMU's tap
//!   is seen as a bare tap. Also the tracefs format files `follow` reads (mode 0700 root).
//!
//! Not root, kvmtrace cannot mount tracefs itself (`CAP_SYS_ADMIN`): where it is not mounted,
//! the route lookup tracepoints of `--hooks all` are left out with a warning.

use crate::error::EnvError;

/// (capability number from include/uapi/linux/capability.h, its name).
pub type Cap = (u32, &'static str);

pub const CAP_DAC_READ_SEARCH: Cap = (2, "CAP_DAC_READ_SEARCH");
pub const CAP_NET_ADMIN: Cap = (12, "CAP_NET_ADMIN");
pub const CAP_SYS_PTRACE: Cap = (19, "CAP_SYS_PTRACE");
pub const CAP_SYSLOG: Cap = (34, "CAP_SYSLOG");
pub const CAP_PERFMON: Cap = (38, "CAP_PERFMON");
pub const CAP_BPF: Cap = (39, "CAP_BPF");

/// What `follow` and `watch` need (the flight recorder is a `follow`).
pub const TRACING: [Cap; 6] = [
    CAP_BPF,
    CAP_PERFMON,
    CAP_NET_ADMIN,
    CAP_SYSLOG,
    CAP_SYS_PTRACE,
    CAP_DAC_READ_SEARCH,
];

/// What `doctor` needs: the nftables rules over netlink (`CAP_NET_ADMIN`), and which QEMU
/// holds the tap, as for `follow`. It loads nothing.
pub const DOCTOR: [Cap; 3] = [CAP_NET_ADMIN, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH];

/// The effective set of this process (`CapEff` of /proc/self/status).
pub fn effective() -> Option<u64> {
    crate::host::sys::effective_caps()
}

/// Those of `needed` that `effective` lacks.
pub fn missing(effective: u64, needed: &[Cap]) -> Vec<&'static str> {
    needed
        .iter()
        .filter(|(bit, _)| effective & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

pub const CAP_SYS_ADMIN: Cap = (21, "CAP_SYS_ADMIN");

/// `needed` as this kernel knows it: before Linux 5.8 there is no CAP_BPF or CAP_PERFMON
/// (above `cap_last_cap`), and CAP_SYS_ADMIN grants what they later split off.
pub fn for_kernel(needed: &[Cap], last_cap: u32) -> Vec<Cap> {
    let mut v: Vec<Cap> = needed
        .iter()
        .copied()
        .filter(|(bit, _)| *bit <= last_cap)
        .collect();
    if v.len() < needed.len() && !v.contains(&CAP_SYS_ADMIN) {
        v.push(CAP_SYS_ADMIN);
    }
    v
}

/// An [`EnvError`] naming what is missing, if anything is.
pub fn require(what: &str, needed: &[Cap]) -> Result<(), EnvError> {
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    let needed = for_kernel(needed, last_cap);
    let needed = needed.as_slice();
    let eff = effective().unwrap_or(0);
    let lacking = missing(eff, needed);
    if lacking.is_empty() {
        return Ok(());
    }
    let all: Vec<&str> = needed.iter().map(|(_, n)| *n).collect();
    Err(EnvError(format!(
        "{what} lacks the capabilit{} {}: run it as root, or with all of {}",
        if lacking.len() == 1 { "y" } else { "ies" },
        lacking.join(", "),
        all.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing() {
        let eff: u64 = (1 << 39) | (1 << 38) | (1 << 19) | (1 << 12) | (1 << 2);
        assert_eq!(missing(eff, &TRACING), ["CAP_SYSLOG"]);
        assert_eq!(missing(u64::MAX >> 23, &TRACING), Vec::<&str>::new());
        assert_eq!(
            missing(0, &[CAP_BPF, CAP_NET_ADMIN]),
            ["CAP_BPF", "CAP_NET_ADMIN"]
        );
    }

    #[test]
    fn a_kernel_before_cap_bpf_asks_for_cap_sys_admin_instead() {
        assert_eq!(for_kernel(&TRACING, 40), TRACING.to_vec());
        assert_eq!(
            for_kernel(&TRACING, 37),
            [
                CAP_NET_ADMIN,
                CAP_SYSLOG,
                CAP_SYS_PTRACE,
                CAP_DAC_READ_SEARCH,
                CAP_SYS_ADMIN
            ]
        );
        assert_eq!(for_kernel(&DOCTOR, 37), DOCTOR.to_vec());
    }
}
