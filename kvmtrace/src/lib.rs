//! kvmtrace: follow a KVM guest's packets through the host with eBPF and say where they stop.
//!
//! Layers, bottom up (docs/architecture.md draws them; a layer imports only those below it):
//! - [`error`]: the error kinds every layer may return (exit codes are decided in `cmd`).
//! - [`model`]: decoded events → journeys → flows → verdicts. Pure: no eBPF, no I/O.
//! - [`host`]: reading the host: which tap a VM has, links, routes, neighbours, addresses,
//!   nftables chains (netlink, /proc, /sys). Read-only.
//! - [`capture`]: everything that needs root and eBPF (load, BTF offsets, attach, ring buffer,
//!   the path devices, nftables tracing) → decoded events. The only layer that imports aya.
//! - [`trace`]: the recorded-trace file format and the analysis of a trace.
//! - [`views`]: text, JSON Lines, pcapng, the HTML/SVG report, the terminal UI.
//! - [`doctor`]: the static checks of a VM's path.
//! - [`cmd`]: flags, the commands (follow, replay, export, report, doctor, list), exit codes.
//! - [`watch`]: the always-on service beside `cmd` (per-VM counters → Prometheus, flight
//!   recorder); its kernel side is `capture::watch`.
//!
//! `capture`, `doctor` and `watch` (and `follow`, `doctor` and `watch` on the command line) are
//! the live half, feature `live` (default); without it the crate is the offline half.
#[cfg(feature = "live")]
pub mod capture;
pub mod cmd;
#[cfg(feature = "live")]
pub mod doctor;
pub mod error;
pub mod host;
pub mod model;
pub mod trace;
pub mod views;
#[cfg(feature = "live")]
pub mod watch;
