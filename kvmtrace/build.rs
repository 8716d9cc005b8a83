//! Builds the eBPF programs (crate kvmtrace-ebpf) for the bpfel target with the nightly
//! toolchain and bpf-linker, and leaves the object in OUT_DIR for `include_bytes!`.
//! `cargo xtask setup` installs what this needs (nightly rust-src, bpf-linker).

#[cfg(feature = "live")]
fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../kvmtrace-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "kvmtrace-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

/// The offline half (`--no-default-features`) loads no eBPF: nothing to build.
#[cfg(not(feature = "live"))]
fn main() -> anyhow::Result<()> {
    Ok(())
}
