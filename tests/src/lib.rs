//! Test lab for kvmtrace: network namespaces shaped like a KVM host, a fake VM that drives a
//! real tap device with raw Ethernet frames, and a real QEMU guest.
pub mod guest;
pub mod kernels;
pub mod lab;
pub mod macvtap;
pub mod vm;
pub mod vxlan;
