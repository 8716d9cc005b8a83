//! `cargo xtask static`: the kvmtrace binary to copy onto a hypervisor.
//!
//! The ordinary release binary links glibc dynamically and asks for the glibc of the machine
//! that built it (2.34+ here), so it does not start on Debian 11 (2.31), Ubuntu 20.04 or
//! RHEL 8. Built for `x86_64-unknown-linux-musl` it links musl's libc statically: one file,
//! no interpreter, no shared library, the eBPF object inside (`include_bytes!` in
//! `capture/probe.rs`), so it runs on any x86_64 Linux whose kernel kvmtrace supports.
//!
//! Why musl and not `-C target-feature=+crt-static` on glibc: the musl std is one `rustup
//! target add` away, no crate of kvmtrace compiles C, and kvmtrace calls nothing that goes
//! through NSS (no user, group or host name lookups: `watch --listen` takes an address, not a
//! name; the dynamic build imports none of `getaddrinfo`, `getpw*`, `getgr*`, `gethostby*` or
//! `dlopen`), which is what a static glibc would break.
//!
//! The eBPF object is unaffected by the target: `kvmtrace/build.rs` is a host program (an
//! explicit `--target` keeps build scripts host-built and out of reach of target flags) and
//! aya-build compiles the eBPF crate for `bpfel-unknown-none` with nightly, replacing the
//! inherited flags with its own `CARGO_ENCODED_RUSTFLAGS`. Checked: the eBPF object of this
//! build, of the dynamic release build and of a static glibc build made with
//! `RUSTFLAGS="-C target-feature=+crt-static"` and `--target x86_64-unknown-linux-gnu` are the
//! same bytes (that glibc build links without a warning and also runs on Debian 11, 13.2 MiB).
//!
//! It is built in its own target directory, `target/static`: `cargo test` holds the lock of
//! the workspace's target directory while tests run, and a test here builds this binary.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

/// The Rust target of the static binary.
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";

/// A Debian 11 (bullseye, glibc 2.31) root made by `cargo xtask setup` with
/// `debootstrap --variant=minbase`: the oldest userland the static binary is tested in.
pub const BULLSEYE_ROOT: &str = "/var/cache/kvmtrace/bullseye-root";
/// Written into a Debian root ([`BULLSEYE_ROOT`], [`BOOKWORM_ROOT`]) once debootstrap has
/// finished, so that a root left half made by an interrupted run is made again rather than
/// trusted.
pub const ROOT_DONE: &str = ".kvmtrace-debootstrap-done";

/// A Debian 12 (bookworm) root made by `cargo xtask setup` with `debootstrap
/// --variant=minbase --include=man-db,systemd`: the clean system the package is installed in
/// by its test (through an overlay, so the cached root itself stays clean).
pub const BOOKWORM_ROOT: &str = "/var/cache/kvmtrace/bookworm-root";
/// Packages debootstrap adds to the minimal bookworm root: `man` for the man pages,
/// `systemd-analyze` for the unit.
pub const BOOKWORM_INCLUDE: &str = "man-db,systemd";

/// cargo-deb, the packaging tool `cargo xtask dist` runs (`cargo xtask setup` installs it).
pub const CARGO_DEB_VERSION: &str = "3.8.0";
/// cargo-generate-rpm, which builds the RPM beside the Debian package (pure Rust: no rpmbuild).
pub const CARGO_GENERATE_RPM_VERSION: &str = "0.21.1";

/// The workspace root (xtask lives one level below it).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_path_buf()
}

/// Builds kvmtrace as a static x86_64 musl binary (release) and returns its path, after
/// checking that it is static and carries the eBPF object.
pub fn static_binary(workspace: &Path) -> Result<PathBuf> {
    if !musl_std_installed() {
        bail!(
            "the Rust std for {STATIC_TARGET} is not installed: run `cargo xtask setup` (or \
             `rustup target add {STATIC_TARGET}`)"
        );
    }
    let target_dir = workspace.join("target/static");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--release", "--package", "kvmtrace", "--bin"])
        .args(["kvmtrace", "--target", STATIC_TARGET, "--target-dir"])
        .arg(&target_dir)
        .stdin(Stdio::null());
    eprintln!("[static] building: {cmd:?}");
    let start = Instant::now();
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("building the static binary failed ({status})");
    }
    let bin = target_dir.join(STATIC_TARGET).join("release/kvmtrace");
    let image = fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
    match linkage(&image)? {
        Linkage::Static => {}
        Linkage::Dynamic {
            interpreter,
            needed,
        } => bail!(
            "{} is dynamically linked (interpreter {interpreter:?}, libraries {needed:?}): \
             are RUSTFLAGS turning crt-static off?",
            bin.display()
        ),
    }
    let Some(ebpf) = embedded_bpf_object(&image) else {
        bail!("{} carries no eBPF object", bin.display());
    };
    eprintln!(
        "[static] {} in {:.1?}: static, {} KiB, eBPF object inside ({} KiB)",
        bin.display(),
        start.elapsed(),
        image.len() / 1024,
        ebpf / 1024
    );
    Ok(bin)
}

/// What `cargo xtask dist` made.
pub struct Dist {
    pub binary: PathBuf,
    pub deb: PathBuf,
    pub rpm: PathBuf,
}

/// `cargo xtask dist`: the static binary, then the Debian package and the RPM around it. The man pages
/// and completions are written by that very binary (`kvmtrace manpages`, `kvmtrace
/// completions`), so they describe the flags it has; cargo-deb (`[package.metadata.deb]` in
/// kvmtrace/Cargo.toml) then packs them with the unit and the contrib files.
pub fn dist(workspace: &Path) -> Result<Dist> {
    let binary = static_binary(workspace)?;
    let release = binary.parent().context("the binary has a directory")?;
    // cargo-deb reads `target/release/dist/…` assets from here (its "target/release" prefix
    // means the profile directory of the target being packaged).
    let out = release.join("dist");
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    fs::create_dir_all(out.join("completions"))?;
    let status = Command::new(&binary)
        .arg("manpages")
        .arg(out.join("man"))
        .stdin(Stdio::null())
        .status()
        .context("running kvmtrace manpages")?;
    if !status.success() {
        bail!("kvmtrace manpages failed ({status})");
    }
    // Debian installs man pages compressed (policy 12.1); -n leaves the time out, so the same
    // flags give the same bytes.
    let status = Command::new("sh")
        .args(["-c", r#"gzip -9nf "$1"/*.1"#, "sh"])
        .arg(out.join("man"))
        .status()
        .context("running gzip")?;
    if !status.success() {
        bail!("compressing the man pages failed ({status})");
    }
    for (shell, file) in [
        ("bash", "kvmtrace.bash"),
        ("zsh", "_kvmtrace"),
        ("fish", "kvmtrace.fish"),
    ] {
        let o = Command::new(&binary)
            .args(["completions", shell])
            .stdin(Stdio::null())
            .output()
            .context("running kvmtrace completions")?;
        if !o.status.success() || o.stdout.is_empty() {
            bail!(
                "kvmtrace completions {shell} failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
        }
        fs::write(out.join("completions").join(file), &o.stdout)?;
    }
    let unit = fs::read_to_string(workspace.join("contrib/kvmtrace-watch.service"))?;
    fs::write(
        out.join("kvmtrace-watch.service"),
        packaged_unit(&unit).context("contrib/kvmtrace-watch.service")?,
    )?;

    let Some(cargo_deb) = cargo_bin("cargo-deb") else {
        bail!("cargo-deb is not installed: run `cargo xtask setup`");
    };
    let debian = workspace.join("target/static/debian");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo_deb);
    // `cargo-deb` run as `cargo deb` gets its own name as the first argument.
    cmd.current_dir(workspace)
        .arg("deb")
        .args([
            "--package",
            "kvmtrace",
            "--no-build",
            "--target",
            STATIC_TARGET,
        ])
        .arg("--output")
        .arg(&debian)
        .env("CARGO", cargo)
        .env("CARGO_TARGET_DIR", workspace.join("target/static"))
        .stdin(Stdio::null());
    let stdout = package(&mut cmd, "cargo-deb")?;
    let deb = PathBuf::from(stdout.trim());
    if deb.extension().is_none_or(|e| e != "deb") || !deb.is_file() {
        bail!("cargo-deb printed no package path: {stdout:?}");
    }
    eprintln!(
        "[dist] {} ({} KiB)",
        deb.display(),
        fs::metadata(&deb)?.len() / 1024
    );
    let rpm = rpm(workspace)?;
    Ok(Dist { binary, deb, rpm })
}

/// Runs the packaging tool `tool` (`cmd`), its messages passed on to stderr; its stdout.
fn package(cmd: &mut Command, tool: &str) -> Result<String> {
    eprintln!("[dist] packaging: {cmd:?}");
    let o = cmd.output().with_context(|| format!("running {tool}"))?;
    eprint!("{}", String::from_utf8_lossy(&o.stderr));
    if !o.status.success() {
        bail!("{tool} failed ({})", o.status);
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The RPM (`[package.metadata.generate-rpm]` in kvmtrace/Cargo.toml): the same files as the
/// Debian package, written by cargo-generate-rpm, which needs no rpmbuild.
fn rpm(workspace: &Path) -> Result<PathBuf> {
    let Some(tool) = cargo_bin("cargo-generate-rpm") else {
        bail!("cargo-generate-rpm is not installed: run `cargo xtask setup`");
    };
    let dir = workspace.join("target/static/rpm");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    let mut cmd = Command::new(tool);
    // Run as `cargo generate-rpm`: its own name comes first.
    cmd.current_dir(workspace)
        .args(["generate-rpm", "-p", "kvmtrace", "--target", STATIC_TARGET])
        .arg("--target-dir")
        .arg(workspace.join("target/static"))
        .arg("-o")
        .arg(&dir)
        .stdin(Stdio::null());
    package(&mut cmd, "cargo-generate-rpm")?;
    let found: Vec<PathBuf> = fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "rpm"))
        .collect();
    let [rpm] = found.as_slice() else {
        bail!(
            "cargo-generate-rpm left {} packages in {}",
            found.len(),
            dir.display()
        );
    };
    eprintln!(
        "[dist] {} ({} KiB)",
        rpm.display(),
        fs::metadata(rpm)?.len() / 1024
    );
    Ok(rpm.clone())
}

/// The unit as the package installs it: the binary is `/usr/bin/kvmtrace` there, not the
/// `/usr/local/bin/kvmtrace` of a hand install.
pub fn packaged_unit(unit: &str) -> Result<String> {
    const HAND: &str = "ExecStart=/usr/local/bin/kvmtrace ";
    if !unit.lines().any(|l| l.starts_with(HAND)) {
        bail!("no `{HAND}…` line to point at /usr/bin/kvmtrace");
    }
    Ok(unit.replace(HAND, "ExecStart=/usr/bin/kvmtrace "))
}

/// A cargo subcommand's executable (`cargo-deb`, `cargo-generate-rpm`): on PATH, else where
/// `cargo install` puts it.
pub fn cargo_bin(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Whether the default toolchain has the musl std (`rustup target add` puts it in its sysroot).
pub fn musl_std_installed() -> bool {
    let Ok(out) = Command::new("rustc")
        .args(["--print", "sysroot"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    else {
        return false;
    };
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let lib = sysroot.join("lib/rustlib").join(STATIC_TARGET).join("lib");
    fs::read_dir(lib).is_ok_and(|entries| {
        entries.filter_map(|e| e.ok()).any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libstd-") && name.ends_with(".rlib")
        })
    })
}

/// How an ELF executable finds its libraries.
#[derive(Debug, PartialEq, Eq)]
pub enum Linkage {
    /// No program interpreter and no shared library (static or static-pie).
    Static,
    Dynamic {
        /// `PT_INTERP`, e.g. `/lib64/ld-linux-x86-64.so.2`.
        interpreter: Option<String>,
        /// `DT_NEEDED` names, e.g. `libc.so.6`.
        needed: Vec<String>,
    },
}

// ELF constants (include/uapi/linux/elf.h).
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const EM_BPF: u16 = 247;

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// A program header of a 64-bit little-endian ELF file.
struct Phdr {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// Reads the program headers: what the kernel and the dynamic loader look at.
fn program_headers(elf: &[u8]) -> Result<Vec<Phdr>> {
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        bail!("not a 64-bit little-endian ELF file");
    }
    let bad = || anyhow::anyhow!("truncated ELF header");
    let phoff = usize::try_from(u64_at(elf, 0x20).ok_or_else(bad)?)?;
    let phentsize = usize::from(u16_at(elf, 0x36).ok_or_else(bad)?);
    let phnum = usize::from(u16_at(elf, 0x38).ok_or_else(bad)?);
    (0..phnum)
        .map(|i| {
            let p = phoff + i * phentsize;
            Ok(Phdr {
                kind: u32_at(elf, p).ok_or_else(bad)?,
                offset: u64_at(elf, p + 8).ok_or_else(bad)?,
                vaddr: u64_at(elf, p + 16).ok_or_else(bad)?,
                filesz: u64_at(elf, p + 32).ok_or_else(bad)?,
            })
        })
        .collect()
}

/// Whether an executable needs a dynamic loader or shared libraries (what `file` and `ldd`
/// tell, read from the program headers).
pub fn linkage(elf: &[u8]) -> Result<Linkage> {
    let phdrs = program_headers(elf)?;
    let slice = |off: u64, len: u64| -> Result<&[u8]> {
        let start = usize::try_from(off)?;
        let end = start + usize::try_from(len)?;
        elf.get(start..end)
            .context("segment beyond the end of file")
    };
    let interpreter = match phdrs.iter().find(|p| p.kind == PT_INTERP) {
        Some(p) => {
            let raw = slice(p.offset, p.filesz)?;
            let raw = raw.split(|&c| c == 0).next().unwrap_or_default();
            Some(String::from_utf8_lossy(raw).into_owned())
        }
        None => None,
    };
    let mut needed = Vec::new();
    if let Some(dynamic) = phdrs.iter().find(|p| p.kind == PT_DYNAMIC) {
        let table = slice(dynamic.offset, dynamic.filesz)?;
        let entries: Vec<(u64, u64)> = table
            .chunks_exact(16)
            .map(|e| (u64_at(e, 0).unwrap_or(0), u64_at(e, 8).unwrap_or(0)))
            .take_while(|&(tag, _)| tag != DT_NULL)
            .collect();
        let names: Vec<u64> = entries
            .iter()
            .filter(|&&(tag, _)| tag == DT_NEEDED)
            .map(|&(_, v)| v)
            .collect();
        if !names.is_empty() {
            // DT_STRTAB is an address: find the loaded segment that holds it.
            let strtab = entries
                .iter()
                .find(|&&(tag, _)| tag == DT_STRTAB)
                .map(|&(_, v)| v)
                .context("DT_NEEDED without DT_STRTAB")?;
            let seg = phdrs
                .iter()
                .find(|p| p.vaddr <= strtab && strtab < p.vaddr + p.filesz)
                .context("DT_STRTAB outside every segment")?;
            let strings = usize::try_from(seg.offset + (strtab - seg.vaddr))?;
            for off in names {
                let start = strings + usize::try_from(off)?;
                let raw = elf
                    .get(start..)
                    .context("DT_NEEDED beyond the end of file")?;
                let raw = raw.split(|&c| c == 0).next().unwrap_or_default();
                needed.push(String::from_utf8_lossy(raw).into_owned());
            }
        }
    }
    if interpreter.is_none() && needed.is_empty() {
        Ok(Linkage::Static)
    } else {
        Ok(Linkage::Dynamic {
            interpreter,
            needed,
        })
    }
}

/// The size of the first eBPF ELF object (machine `EM_BPF`) embedded in a file, if any:
/// kvmtrace carries its kernel programs as such an object.
pub fn embedded_bpf_object(image: &[u8]) -> Option<usize> {
    const MAGIC: &[u8] = b"\x7fELF\x02\x01";
    let mut from = 1; // the file's own header is not embedded
    while let Some(pos) = image
        .get(from..)?
        .windows(MAGIC.len())
        .position(|w| w == MAGIC)
    {
        let obj = &image[from + pos..];
        if u16_at(obj, 18) == Some(EM_BPF) {
            // Section headers come last in what bpf-linker writes: they end the object.
            let shoff = usize::try_from(u64_at(obj, 0x28)?).ok()?;
            let shentsize = usize::from(u16_at(obj, 0x3a)?);
            let shnum = usize::from(u16_at(obj, 0x3c)?);
            return Some(shoff + shentsize * shnum);
        }
        from += pos + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmtrace_lab::lab::{Lab, LabOptions};
    use kvmtrace_lab::vm::FakeVm;
    use serde_json::Value;
    use std::io::Read as _;
    use std::os::fd::{AsRawFd as _, RawFd};
    use std::os::unix::process::CommandExt as _;
    use std::process::{Child, Output};
    use std::time::Duration;

    #[test]
    fn a_glibc_executable_is_dynamic_with_its_loader_and_libc() {
        let ls = fs::read("/bin/ls").unwrap();
        match linkage(&ls).unwrap() {
            Linkage::Dynamic {
                interpreter,
                needed,
            } => {
                assert_eq!(interpreter.as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
                assert!(needed.iter().any(|n| n == "libc.so.6"), "{needed:?}");
            }
            Linkage::Static => panic!("/bin/ls read as static"),
        }
        assert_eq!(embedded_bpf_object(&ls), None);
    }

    #[test]
    fn busybox_static_is_static() {
        // Debian's busybox-static (installed by `cargo xtask setup` for the QEMU guest).
        let busybox = fs::read("/bin/busybox").unwrap();
        assert_eq!(linkage(&busybox).unwrap(), Linkage::Static);
        assert_eq!(embedded_bpf_object(&busybox), None);
    }

    #[test]
    fn a_file_that_is_not_elf_is_an_error() {
        let err = linkage(b"#!/bin/sh\necho hi\n").unwrap_err();
        assert_eq!(err.to_string(), "not a 64-bit little-endian ELF file");
    }

    /// Runs `/mnt/kvmtrace ARGS` chrooted into the Debian 11 root, inside the lab's hypervisor
    /// namespace. `ip netns exec` gives the command its own mount namespace, so the tmpfs that
    /// carries the binary and the proc, sysfs and tracefs mounts the root gets vanish with it
    /// and the cached root is never written.
    fn in_bullseye(lab: &Lab, bin: &Path, args: &[&str]) -> Command {
        const SCRIPT: &str = r#"root=$1 bin=$2; shift 2
            mount -t tmpfs kvmtrace "$root/mnt" && cp "$bin" "$root/mnt/kvmtrace" &&
            mount -t proc proc "$root/proc" && mount -t sysfs sysfs "$root/sys" &&
            mount -t tracefs tracefs "$root/sys/kernel/tracing" &&
            exec chroot "$root" /mnt/kvmtrace "$@""#;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &lab.hv, "sh", "-c", SCRIPT, "sh"])
            .arg(BULLSEYE_ROOT)
            .arg(bin)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        cmd
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    fn dump(out: &Output) -> String {
        format!(
            "{}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        )
    }

    /// `out`, once it has exited 0 (else the test fails, showing it); its stdout, as text.
    fn succeeded(out: &Output) -> String {
        assert_eq!(out.status.code(), Some(0), "{}", dump(out));
        text(&out.stdout)
    }

    /// `out` is `kvmtrace --version`'s answer: this build's version, exit 0.
    fn assert_version(out: &Output) {
        assert_eq!(
            succeeded(out).trim(),
            format!("kvmtrace {}", env!("CARGO_PKG_VERSION"))
        );
    }

    /// `kvmtrace list --json`'s NICs held by the process `pid` (the stand-in QEMU).
    fn listed_of(out: &Output, pid: u32) -> Vec<Value> {
        succeeded(out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .filter(|v: &Value| v["pid"] == pid)
            .collect()
    }

    /// Each of `files` is a line of `listing` (what the package manager lists of the package).
    fn assert_listed(listing: &str, files: &[&str], package: &str) {
        for f in files {
            assert!(
                listing.lines().any(|l| l == *f),
                "{f} not in the {package}:\n{listing}"
            );
        }
    }

    /// A stand-in QEMU in the lab's hypervisor named `guest=old-host-vm`, holding the fake VM's
    /// tun fd as its fd 7 (as QEMU holds its tap), so `list` names it.
    fn qemu_standin(lab: &Lab, vm: &FakeVm) -> Child {
        let fd: RawFd = vm.tap_fd().as_raw_fd();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &lab.hv, "sh", "-c", "sleep 60 7>&-; :"])
            .args(["qemu-system-x86_64", "-name", "guest=old-host-vm"])
            .args(["-netdev", "tap,id=n0,ifname=vnet0,script=no,downscript=no"])
            .args(["-device", "virtio-net-pci,netdev=n0,mac=52:54:00:4b:54:02"])
            .stdin(Stdio::null());
        // SAFETY: dup2 and prctl are async-signal-safe; the fd stays open in the parent.
        unsafe {
            cmd.pre_exec(move || {
                // dup2 leaves the copy without FD_CLOEXEC, so the shell inherits it.
                if libc::dup2(fd, 7) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn the stand-in QEMU");
        let pid = child.id();
        for _ in 0..100 {
            let holds = fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|d| {
                d.flatten()
                    .any(|e| fs::read_link(e.path()).is_ok_and(|t| t == Path::new("/dev/net/tun")))
            });
            if holds {
                return child;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the stand-in QEMU (pid {pid}) never held the tap");
    }

    /// The shipped binary on a Debian 11 userland (glibc 2.31, older than the 2.34 the dynamic
    /// build needs): it starts, lists the VM of a lab and follows its pings to a verdict.
    #[test]
    fn the_static_binary_runs_in_a_debian_11_root() {
        let root = Path::new(BULLSEYE_ROOT);
        assert!(
            root.join(ROOT_DONE).exists(),
            "no Debian 11 root at {BULLSEYE_ROOT}: run `cargo xtask setup`"
        );
        let ldd = Command::new("chroot")
            .arg(root)
            .args(["ldd", "--version"])
            .output()
            .unwrap();
        let first = text(&ldd.stdout).lines().next().unwrap_or("").to_owned();
        assert!(first.ends_with(" 2.31"), "not glibc 2.31: {first}");

        let bin = static_binary(&workspace()).unwrap();
        let image = fs::read(&bin).unwrap();
        assert_eq!(linkage(&image).unwrap(), Linkage::Static);
        assert!(embedded_bpf_object(&image).is_some_and(|n| n > 4096));

        let lab = Lab::new(LabOptions::default());
        assert_version(&in_bullseye(&lab, &bin, &["--version"]).output().unwrap());

        let mut vm = FakeVm::attach(&lab);
        let mut standin = qemu_standin(&lab, &vm);
        let out = in_bullseye(&lab, &bin, &["list", "--json"])
            .output()
            .unwrap();
        let listed = listed_of(&out, standin.id());
        assert_eq!(listed.len(), 1, "{}", dump(&out));
        let nic = &listed[0];
        assert_eq!(nic["name"], "old-host-vm", "{nic}");
        assert_eq!(nic["tap"], "vnet0", "{nic}");
        assert_eq!(nic["mac"], "52:54:00:4b:54:02", "{nic}");
        assert_eq!(nic["followable"], true, "{nic}");

        // `follow` by the VM's name while the fake VM pings through the lab's NAT.
        let mut child = in_bullseye(
            &lab,
            &bin,
            &[
                "follow",
                "old-host-vm",
                "203.0.113.1",
                "--json",
                "--proto",
                "icmp",
                "--duration",
                "5",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in std::io::BufRead::lines(std::io::BufReader::new(err)).map_while(Result::ok)
            {
                if line.contains("following") {
                    let _ = tx.send(());
                }
                all += &line;
                all.push('\n');
            }
            all
        });
        // Until it has attached (or has ended: the assertions below then show why).
        let _ = rx.recv_timeout(Duration::from_secs(60));
        let mut replies = 0;
        for seq in 1..=3 {
            let got = vm.ping(
                "203.0.113.1".parse().unwrap(),
                0x5b11,
                seq,
                Duration::from_millis(500),
            );
            replies += usize::from(got.is_some());
        }
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let status = child.wait().unwrap();
        let stderr = stderr.join().unwrap();
        let _ = standin.kill();
        let _ = standin.wait();
        let run = format!("{status}\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
        assert_eq!(replies, 3, "the lab itself is broken: {run}");
        let verdicts: Vec<Value> = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["type"] == "verdict")
            .collect();
        assert_eq!(verdicts.len(), 1, "{run}");
        let v = &verdicts[0];
        assert_eq!(v["status"], "delivered", "{run}");
        assert_eq!(v["stage"], "tap", "{run}");
        assert_eq!(v["direction"], "reply", "{run}");
        assert_eq!(v["device"], "vnet0", "{run}");
        assert_eq!(v["requests"], 3, "{run}");
        assert_eq!(status.code(), Some(0), "{run}");
    }

    /// A Debian 12 root seen through an overlay on a tmpfs of its own: the package is installed
    /// into the overlay, the cached root is never written, and dropping this unmounts it all.
    struct Bookworm {
        dir: PathBuf,
        root: PathBuf,
    }

    impl Bookworm {
        fn new() -> Bookworm {
            let dir = env::temp_dir().join(format!("kvmtrace-deb-{}", std::process::id()));
            fs::create_dir_all(&dir).unwrap();
            let sh = |script: &str| {
                let st = Command::new("sh")
                    .args(["-ec", script, "sh"])
                    .arg(&dir)
                    .arg(BOOKWORM_ROOT)
                    .status()
                    .unwrap();
                assert!(st.success(), "{script}: {st}");
            };
            sh(
                r#"mount -t tmpfs kvmtrace-deb "$1"; mkdir "$1/upper" "$1/work" "$1/root"
                mount -t overlay overlay -o "lowerdir=$2,upperdir=$1/upper,workdir=$1/work" "$1/root""#,
            );
            Bookworm {
                root: dir.join("root"),
                dir,
            }
        }

        /// `chroot ROOT ARGS`, in the lab's hypervisor namespace with its own /proc and /sys
        /// (mounted in the private mount namespace `ip netns exec` makes, gone with it).
        fn run(&self, lab: &Lab, args: &[&str]) -> Output {
            const SCRIPT: &str = r#"root=$1; shift
                mount -t proc proc "$root/proc" && mount -t sysfs sysfs "$root/sys" &&
                exec chroot "$root" "$@""#;
            Command::new("ip")
                .args(["netns", "exec", &lab.hv, "sh", "-c", SCRIPT, "sh"])
                .arg(&self.root)
                .args(args)
                .env("RUST_LOG", "warn")
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("LANG", "C")
                .stdin(Stdio::null())
                .output()
                .unwrap()
        }
    }

    impl Drop for Bookworm {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.root).status();
            let _ = Command::new("umount").arg(&self.dir).status();
            let _ = fs::remove_dir(&self.dir);
        }
    }

    /// `cargo xtask dist`'s package in a clean Debian 12 root: `dpkg -i` installs it, and what
    /// it installed works there: the binary lists a lab's VM, `man` shows a command's page, the
    /// completions load, systemd accepts the unit.
    #[test]
    fn the_package_installs_and_runs_in_a_clean_debian_12_root() {
        assert!(
            Path::new(BOOKWORM_ROOT).join(ROOT_DONE).exists(),
            "no Debian 12 root at {BOOKWORM_ROOT}: run `cargo xtask setup`"
        );
        let d = dist(&workspace()).unwrap();
        let lab = Lab::new(LabOptions::default());
        let root = Bookworm::new();
        assert!(
            root.run(&lab, &["dpkg", "-s", "kvmtrace"]).status.code() == Some(1),
            "the root is not clean"
        );
        fs::copy(&d.deb, root.root.join("tmp/kvmtrace.deb")).unwrap();
        succeeded(&root.run(&lab, &["dpkg", "-i", "/tmp/kvmtrace.deb"]));

        let files = succeeded(&root.run(&lab, &["dpkg", "-L", "kvmtrace"]));
        assert_listed(
            &files,
            &[
                "/usr/bin/kvmtrace",
                "/usr/share/man/man1/kvmtrace.1.gz",
                "/usr/share/man/man1/kvmtrace-follow.1.gz",
                "/usr/share/man/man1/kvmtrace-watch.1.gz",
                "/usr/share/bash-completion/completions/kvmtrace",
                "/usr/share/zsh/vendor-completions/_kvmtrace",
                "/usr/share/fish/vendor_completions.d/kvmtrace.fish",
                "/lib/systemd/system/kvmtrace-watch.service",
                "/usr/share/doc/kvmtrace/examples/watch.json",
                "/usr/share/kvmtrace/grafana-kvmtrace.json",
                "/usr/share/kvmtrace/kvmtrace-alerts.yml",
            ],
            "package",
        );

        assert_version(&root.run(&lab, &["kvmtrace", "--version"]));

        let vm = FakeVm::attach(&lab);
        let mut standin = qemu_standin(&lab, &vm);
        let out = root.run(&lab, &["kvmtrace", "list", "--json"]);
        let _ = standin.kill();
        let _ = standin.wait();
        let listed = listed_of(&out, standin.id());
        assert_eq!(listed.len(), 1, "{}", dump(&out));
        assert_eq!(listed[0]["name"], "old-host-vm", "{}", listed[0]);
        assert_eq!(listed[0]["tap"], "vnet0", "{}", listed[0]);

        let page = succeeded(&root.run(&lab, &["man", "-P", "cat", "kvmtrace-follow"]));
        assert!(page.starts_with("kvmtrace-follow(1)"), "{page}");
        for flag in ["--explain-rules", "--record", "--nic"] {
            assert!(page.contains(flag), "{flag} not in the man page:\n{page}");
        }

        let out = root.run(
            &lab,
            &[
                "bash",
                "-c",
                ". /usr/share/bash-completion/completions/kvmtrace && complete -p kvmtrace",
            ],
        );
        assert!(
            succeeded(&out)
                .trim_end()
                .ends_with(" -F _kvmtrace kvmtrace"),
            "{}",
            dump(&out)
        );

        let out = root.run(
            &lab,
            &[
                "systemd-analyze",
                "verify",
                "/lib/systemd/system/kvmtrace-watch.service",
            ],
        );
        succeeded(&out);
        assert_eq!(text(&out.stderr), "", "{}", dump(&out));

        // The RPM of the same build (here, not in a test of its own: `dist` rewrites the
        // files both packages are made from).
        rpm_installs_into_a_scratch_root(&d);
    }

    /// The RPM holds the same files as the Debian package (the unit where RHEL keeps units),
    /// and installed with `rpm --root` into an empty root its binary runs.
    fn rpm_installs_into_a_scratch_root(d: &Dist) {
        let root = env::temp_dir().join(format!("kvmtrace-rpm-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let rpm = |args: &[&str]| {
            Command::new("rpm")
                .arg("--root")
                .arg(&root)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        };
        succeeded(&rpm(&["--initdb"]));
        let pkg = d.rpm.to_str().unwrap();
        let out = rpm(&["-qp", "--queryformat", "%{NAME} %{VERSION} %{ARCH}\n", pkg]);
        assert_eq!(
            succeeded(&out).trim(),
            format!("kvmtrace {} x86_64", env!("CARGO_PKG_VERSION"))
        );
        let requires: Vec<String> = succeeded(&rpm(&["-qpR", pkg]))
            .lines()
            .filter(|l| !l.starts_with("rpmlib("))
            .map(str::to_string)
            .collect();
        assert!(
            requires.is_empty(),
            "a static binary requires nothing: {requires:?}"
        );
        // --nodeps: the scratch root has no rpm database of a distribution to satisfy
        // `rpmlib(…)` features against.
        succeeded(&rpm(&["-i", "--nodeps", "--noscripts", pkg]));
        let files = [
            "/usr/bin/kvmtrace",
            "/usr/share/man/man1/kvmtrace-follow.1.gz",
            "/usr/share/bash-completion/completions/kvmtrace",
            "/usr/lib/systemd/system/kvmtrace-watch.service",
            "/usr/share/doc/kvmtrace/examples/watch.json",
            "/usr/share/kvmtrace/kvmtrace-alerts.yml",
        ];
        assert_listed(&succeeded(&rpm(&["-ql", "kvmtrace"])), &files, "RPM");
        for f in files {
            assert!(root.join(&f[1..]).is_file(), "{f} not installed");
        }
        assert_version(
            &Command::new(root.join("usr/bin/kvmtrace"))
                .arg("--version")
                .output()
                .unwrap(),
        );
        let unit =
            fs::read_to_string(root.join("usr/lib/systemd/system/kvmtrace-watch.service")).unwrap();
        assert!(unit.contains("ExecStart=/usr/bin/kvmtrace "), "{unit}");
        let _ = fs::remove_dir_all(&root);
    }

    /// The capabilities the shipped unit gives `watch` (`AmbientCapabilities=`), checked to be
    /// its bounding set too, as `setpriv` flags (`+bpf,+perfmon,…`).
    fn unit_capabilities() -> Vec<String> {
        let unit = fs::read_to_string(workspace().join("contrib/kvmtrace-watch.service")).unwrap();
        let value = |key: &str| -> Vec<String> {
            let line = unit
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in the unit"));
            line.split_whitespace().map(str::to_owned).collect()
        };
        let ambient = value("AmbientCapabilities=");
        assert_eq!(ambient, value("CapabilityBoundingSet="));
        ambient
    }

    fn setpriv_caps(caps: &[String]) -> String {
        let mut s = String::from("-all");
        for c in caps {
            s += ",+";
            s += &c.trim_start_matches("CAP_").to_lowercase();
        }
        s
    }

    /// `kvmtrace watch` as `nobody` (not root, as the unit's dynamic user) with exactly the
    /// given capabilities, no new privileges, in the lab's hypervisor namespace.
    fn watch_as_nobody(lab: &Lab, bin: &Path, caps: &[String], port: u16) -> Child {
        watch_as_nobody_with(lab, bin, caps, port, &["--no-record"], Stdio::null())
    }

    fn watch_as_nobody_with(
        lab: &Lab,
        bin: &Path,
        caps: &[String],
        port: u16,
        extra: &[&str],
        stdout: Stdio,
    ) -> Child {
        let set = setpriv_caps(caps);
        Command::new("ip")
            .args(["netns", "exec", &lab.hv, "setpriv"])
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(format!("--inh-caps={set}"))
            .arg(format!("--ambient-caps={set}"))
            .arg(format!("--bounding-set={set}"))
            .arg("--no-new-privs")
            .arg(bin)
            .args(["watch", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// GET /metrics inside the lab's hypervisor namespace (a thread that enters it).
    fn metrics(lab: &Lab, port: u16) -> Option<String> {
        use std::io::Write as _;
        let ns = fs::File::open(format!("/run/netns/{}", lab.hv)).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns(2) on an fd we own; only this thread changes namespace.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
                c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
                write!(
                    c,
                    "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                .ok()?;
                let mut text = String::new();
                c.read_to_string(&mut text).ok()?;
                text.starts_with("HTTP/1.1 200").then_some(text)
            })
            .join()
            .unwrap()
        })
    }

    /// Least privilege, measured: with the unit's capabilities and nothing else, as a user
    /// that is not root, `watch` serves /metrics and names the VM of a root-owned QEMU; with
    /// any one of them taken away it exits 3 naming that one.
    #[test]
    fn watch_runs_with_the_units_capabilities_only_and_names_a_missing_one() {
        let caps = unit_capabilities();
        assert_eq!(
            caps,
            [
                "CAP_BPF",
                "CAP_PERFMON",
                "CAP_NET_ADMIN",
                "CAP_SYSLOG",
                "CAP_SYS_PTRACE",
                "CAP_DAC_READ_SEARCH"
            ]
        );
        let bin = static_binary(&workspace()).unwrap();
        let lab = Lab::new(LabOptions::default());
        let vm = FakeVm::attach(&lab);
        let mut standin = qemu_standin(&lab, &vm);
        let port = 9464;

        let mut watch = watch_as_nobody(&lab, &bin, &caps, port);
        let mut body = None;
        for _ in 0..100 {
            body = metrics(&lab, port);
            if body
                .as_deref()
                .is_some_and(|b| b.contains("kvmtrace_vm_info{"))
            {
                break;
            }
            if watch.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = watch.kill();
        let out = watch.wait_with_output().unwrap();
        let _ = standin.kill();
        let _ = standin.wait();
        let body = body.unwrap_or_else(|| panic!("no /metrics: {}", dump(&out)));
        let info: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with("kvmtrace_vm_info{"))
            .collect();
        assert_eq!(info.len(), 1, "{body}");
        assert!(info[0].contains(r#"vm="old-host-vm""#), "{}", info[0]);
        assert!(info[0].contains(r#"tap="vnet0""#), "{}", info[0]);

        for gone in &caps {
            let fewer: Vec<String> = caps.iter().filter(|c| *c != gone).cloned().collect();
            let watch = watch_as_nobody(&lab, &bin, &fewer, port);
            let out = watch.wait_with_output().unwrap();
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "without {gone}: {}", dump(&out));
            assert!(
                err.contains(&format!(
                    "kvmtrace watch lacks the capability {gone}: run it as root"
                )),
                "without {gone}: {err}"
            );
        }
    }

    /// The flight recorder under the unit's capabilities: its `follow` child inherits them (as
    /// `nobody`), records the VM's packets once a FORWARD drop crosses the threshold, and the
    /// trace names the drop's hook (from the drop's kernel stack, read with CAP_SYSLOG).
    #[test]
    fn the_flight_recorder_works_with_the_units_capabilities() {
        let caps = unit_capabilities();
        let bin = static_binary(&workspace()).unwrap();
        let lab = Lab::new(LabOptions::default());
        let rec = env::temp_dir().join(format!("kvmtrace-rec-{}", lab.id));
        let _ = fs::remove_dir_all(&rec);
        fs::create_dir_all(&rec).unwrap();
        std::os::unix::fs::chown(&rec, Some(65534), Some(65534)).unwrap();
        let mut vm = FakeVm::attach(&lab);
        let mut watch = watch_as_nobody_with(
            &lab,
            &bin,
            &caps,
            9464,
            &[
                "--record-dir",
                rec.join("r").to_str().unwrap(),
                "--record-s",
                "3",
                "--rescan-s",
                "1",
                "--threshold-drops",
                "3",
            ],
            Stdio::piped(),
        );
        let out = watch.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<Value>();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        // Until watch has its counters on the tap.
        for _ in 0..100 {
            if metrics(&lab, 9464).is_some_and(|b| b.contains(r#"tap="vnet0""#)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        lab.nft(
            "table inet pkgtest {\n chain forward {\n  type filter hook forward priority 0; \
             policy drop;\n }\n}\n",
        );
        let mut done = None;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut seq = 0u16;
        while done.is_none() && std::time::Instant::now() < deadline {
            seq += 1;
            let _ = vm.ping(lab.dest, 0x5c11, seq, Duration::from_millis(250));
            while let Ok(v) = rx.try_recv() {
                if v["type"] == "flight_recording" {
                    done = Some(v);
                }
            }
        }
        let _ = watch.kill();
        let out = watch.wait_with_output().unwrap();
        let done = done.unwrap_or_else(|| panic!("no flight recording: {}", dump(&out)));
        assert_eq!(done["tap"], "vnet0", "{done}");
        assert_eq!(done["verdict"]["status"], "dropped", "{done}");
        assert_eq!(done["verdict"]["stage"], "netfilter", "{done}");
        assert_eq!(done["verdict"]["hook"], "FORWARD", "{done}");
        let file = PathBuf::from(done["file"].as_str().unwrap());
        assert!(file.starts_with(&rec), "{}", file.display());
        let meta = fs::metadata(&file).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534);
        let _ = fs::remove_dir_all(&rec);
    }
}
