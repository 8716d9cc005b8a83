//! kvmtrace: follow a KVM guest's packets through the host with eBPF and say where they stop.
//!
//! Layers (see docs/architecture.md): `probe` (load, attach, ring buffer; root) →
//! `event` (decoded events) → `model` (journeys, flows, verdicts; pure) → `output` (views).
//! `resolve` finds the VM's tap; `facts` reads the host facts verdicts cite. `trace` is the
//! recorded-trace format; `offline` (replay, export, report), `pcapng` and `report` work on it.
pub mod btf;
pub mod cli;
pub mod doctor;
pub mod event;
pub mod facts;
pub mod model;
pub mod nf;
pub mod nftrace;
pub mod offline;
pub mod output;
pub mod pathdevs;
pub mod pcapng;
pub mod probe;
pub mod report;
pub mod resolve;
pub mod trace;
pub mod tui;
pub mod watch;
