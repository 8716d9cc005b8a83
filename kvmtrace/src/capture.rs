//! Capture: everything that needs root and eBPF. Loads the kernel programs with the kernel's
//! struct offsets from BTF, attaches them (TCX on the tap and the path devices, tp_btf,
//! tracepoints, netfilter links), drains the ring buffer and decodes events; traces the
//! followed flow through nftables. Nothing outside this folder imports aya.
pub mod btf;
pub mod clsact;
pub mod kernel;
pub mod nf;
pub mod nftrace;
pub mod pathdevs;
pub mod privileges;
pub mod probe;
pub mod spec;
mod startup;
pub mod watch;
