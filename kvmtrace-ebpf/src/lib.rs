//! Empty on purpose: kvmtrace/build.rs has a build-dependency on this crate so that cargo
//! rebuilds the eBPF object when it changes; the programs themselves are the `kvmtrace` bin.
#![no_std]
