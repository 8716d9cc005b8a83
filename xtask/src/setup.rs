//! `cargo xtask setup`: install what building and testing kvmtrace needs on a Debian 12 host.
//!
//! Every step first checks whether its piece is already there, so a second run only probes
//! (well under two seconds) and changes nothing. The steps:
//!
//! - the nightly toolchain with `rust-src` (aya-build compiles the eBPF crate with nightly and
//!   `-Z build-std=core`);
//! - `bpf-linker` 0.13.0, dynamically linked against the nightly's own `libLLVM` so it reads the
//!   bitcode that exact rustc emits;
//! - Debian packages for the lab (namespaces, nftables, capture tools, Prometheus for the
//!   `watch` tests) and QEMU 10 from bookworm-backports for the real-guest tests (bookworm's
//!   QEMU 7.2 would remove the image's qemu-utils 10, see shared/LAB.md);
//! - the `br_netfilter` kernel module (`modprobe`), without which the bridged-mode netfilter
//!   test cannot show a FORWARD drop of bridged frames;
//! - the Rust std for `x86_64-unknown-linux-musl` (`rustup target add`) for the static binary
//!   (`cargo xtask static`), and a Debian 11 root (`debootstrap --variant=minbase bullseye`,
//!   ~215 MB in /var/cache/kvmtrace) that the test of that binary runs it in;
//! - Debian's kernels for the kernel matrix (5.10 from bullseye, 6.1 from bookworm, 6.12 from
//!   trixie), downloaded with a private `APT_CONFIG` and extracted, never installed
//!   (`kvmtrace_lab::kernels::fetch`, into `/var/cache/kvmtrace/kernels`);
//! - cargo-deb and cargo-generate-rpm (`cargo install`) for the Debian and RPM packages
//!   (`cargo xtask dist`), Debian's `rpm` to install the RPM in its test, and a Debian 12
//!   root with man-db and systemd (`debootstrap --variant=minbase --include=man-db,systemd
//!   bookworm`, in /var/cache/kvmtrace) that the package's test installs it into.

use std::{
    collections::HashMap,
    env, fs,
    io::ErrorKind,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::dist::{
    cargo_bin, musl_std_installed, BOOKWORM_INCLUDE, BOOKWORM_ROOT, BULLSEYE_ROOT,
    CARGO_DEB_VERSION, CARGO_GENERATE_RPM_VERSION, ROOT_DONE, STATIC_TARGET,
};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM majors bpf-linker 0.13.0 has a `llvm-N` cargo feature for.
const BPF_LINKER_LLVM_MAJORS: std::ops::RangeInclusive<u32> = 21..=23;

/// Debian packages the lab and the tests use, installed from the default suites.
const DEB_PACKAGES: &[&str] = &[
    "nftables",
    "iptables",
    "iproute2",
    "busybox-static",
    "tshark",
    "tcpdump",
    "tmux",
    "procps",
    "kmod",
    // The kernel matrix decompresses Debian's `.ko.xz` modules.
    "xz-utils",
    // The `watch` lab tests scrape kvmtrace with a real Prometheus server (2.42 on bookworm).
    "prometheus",
    // Makes the Debian 11 root the static binary is tested in.
    "debootstrap",
    // Installs the RPM package into a scratch root in its test (`rpm --root`).
    "rpm",
];
/// Where debootstrap fetches Debian from.
const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
const QEMU_PACKAGE: &str = "qemu-system-x86";
const BACKPORTS_SUITE: &str = "bookworm-backports";
const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/kvmtrace-backports.sources";
const BACKPORTS_DEB822: &str = "\
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

#[derive(Args, Default)]
pub struct SetupArgs {
    /// Only report what is missing and install nothing (exit status 1 if anything is missing).
    /// Works without root.
    #[arg(long)]
    check: bool,
}

pub fn run(args: &SetupArgs) -> Result<ExitCode> {
    let start = Instant::now();
    if !args.check && !is_root() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap_or(Path::new("."));
        eprintln!("[setup] must run as root: it installs Debian packages and writes to /etc/apt");
        eprintln!(
            "[setup] run it from a root shell:  sudo -i, then  cd {} && cargo xtask setup",
            workspace.display()
        );
        eprintln!("[setup] (`cargo xtask setup --check` lists what is missing without root)");
        return Ok(ExitCode::FAILURE);
    }

    let mut setup = Setup {
        check: args.check,
        missing: Vec::new(),
        apt_updated: false,
        changed: false,
    };
    match setup.nightly()? {
        Some(sysroot) => setup.bpf_linker(&sysroot)?,
        None => say("bpf-linker", "not checked (no nightly toolchain)"),
    }
    setup.musl_target()?;
    setup.debian()?;
    setup.br_netfilter()?;
    setup.cargo_tool("cargo-deb", CARGO_DEB_VERSION)?;
    setup.cargo_tool("cargo-generate-rpm", CARGO_GENERATE_RPM_VERSION)?;
    setup.debian_root("debian 11 root", "bullseye", BULLSEYE_ROOT, None)?;
    setup.debian_root(
        "debian 12 root",
        "bookworm",
        BOOKWORM_ROOT,
        Some(BOOKWORM_INCLUDE),
    )?;
    setup.kernels()?;

    let took = start.elapsed();
    if setup.missing.is_empty() {
        let what = if setup.changed {
            "installed what was missing"
        } else {
            "everything present"
        };
        say("done", &format!("{what} ({took:.2?})"));
        Ok(ExitCode::SUCCESS)
    } else {
        say(
            "missing",
            &format!(
                "{} ({took:.2?}); run `cargo xtask setup` as root",
                setup.missing.join(", ")
            ),
        );
        Ok(ExitCode::FAILURE)
    }
}

struct Setup {
    /// `--check`: report only.
    check: bool,
    /// What `--check` found missing.
    missing: Vec<String>,
    apt_updated: bool,
    /// Whether this run installed anything.
    changed: bool,
}

impl Setup {
    /// How a step starts: when `present` (what to say of the piece, e.g. "present"), says
    /// so and there is nothing to do; else under `--check` says `missing` and records `item`
    /// as missing; else the run is about to change the host and the caller installs it
    /// (`true`).
    fn must_install(&mut self, item: &str, present: Option<&str>, missing: &str) -> bool {
        if let Some(state) = present {
            say(item, state);
            return false;
        }
        if self.check {
            say(item, missing);
            self.missing.push(item.into());
            return false;
        }
        self.changed = true;
        true
    }

    /// Makes sure the nightly toolchain and its `rust-src` exist; returns the nightly sysroot.
    fn nightly(&mut self) -> Result<Option<PathBuf>> {
        let found = nightly_sysroot();
        let present = found.is_some().then_some("present");
        let sysroot = if self.must_install("nightly toolchain", present, "MISSING") {
            say("nightly toolchain", "installing…");
            run_cmd(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))?;
            nightly_sysroot().context("nightly installed, but `rustc +nightly` still fails")?
        } else {
            // None: missing, under `--check`.
            let Some(sysroot) = found else {
                return Ok(None);
            };
            sysroot
        };

        // The component's files, checked directly: faster than `rustup component list`.
        let rust_src = sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml");
        let present = rust_src.exists().then_some("present");
        if self.must_install("nightly rust-src", present, "MISSING") {
            say("nightly rust-src", "installing…");
            run_cmd(Command::new("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                "nightly",
            ]))?;
        }
        Ok(Some(sysroot))
    }

    fn bpf_linker(&mut self, sysroot: &Path) -> Result<()> {
        let libdir = sysroot.join("lib");
        let llvm = NightlyLlvm::find(&libdir)?;
        let reinstall = match probe_bpf_linker(&libdir, &llvm) {
            Probe::Ok { standalone: true } => {
                say("bpf-linker", &format!("present ({BPF_LINKER_VERSION})"));
                return Ok(());
            }
            Probe::Ok { standalone: false } => {
                // rustc runs its linker through the rustup proxy environment, whose
                // LD_LIBRARY_PATH holds the toolchain's lib/ (checked: `rustup run nightly env`),
                // so this is how the eBPF build runs it.
                say(
                    "bpf-linker",
                    &format!(
                        "present ({BPF_LINKER_VERSION}; finds {} through rustup's LD_LIBRARY_PATH)",
                        llvm.file_name
                    ),
                );
                return Ok(());
            }
            Probe::Missing => {
                say("bpf-linker", "not installed");
                false
            }
            Probe::Unusable(why) => {
                say("bpf-linker", &format!("unusable: {why}"));
                true
            }
        };
        if self.check {
            self.missing.push("bpf-linker".into());
            return Ok(());
        }

        // bpf-linker's build.rs links `-lLLVM` from `$LLVM_PREFIX/lib` and sets that directory
        // as the binary's RUNPATH. The prefix holds the link-time name (libLLVM.so) and the
        // soname, both pointing into the nightly sysroot, so the binary also runs outside rustup.
        let prefix = home_dir()?.join(".cache/kvmtrace/llvm-prefix");
        let prefix_lib = prefix.join("lib");
        fs::create_dir_all(&prefix_lib)
            .with_context(|| format!("creating {}", prefix_lib.display()))?;
        let target = libdir.join(&llvm.file_name);
        for name in ["libLLVM.so", llvm.file_name.as_str()] {
            let link = prefix_lib.join(name);
            match fs::remove_file(&link) {
                Err(err) if err.kind() != ErrorKind::NotFound => {
                    return Err(err).with_context(|| format!("removing {}", link.display()));
                }
                _ => {}
            }
            symlink(&target, &link).with_context(|| format!("creating {}", link.display()))?;
        }
        say(
            "bpf-linker",
            &format!(
                "installing {BPF_LINKER_VERSION} against {} (LLVM {}, a few minutes)…",
                llvm.file_name, llvm.major
            ),
        );
        self.changed = true;
        let feature = format!("llvm-{}", llvm.major);
        let mut cmd = Command::new("cargo");
        cmd.args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", &feature, "--locked"])
            .env("LLVM_PREFIX", &prefix);
        if reinstall {
            cmd.arg("--force");
        }
        run_cmd(&mut cmd)?;
        match probe_bpf_linker(&libdir, &llvm) {
            Probe::Ok { .. } => {
                say("bpf-linker", "installed");
                Ok(())
            }
            Probe::Missing => bail!(
                "bpf-linker installed but not found on PATH: add ~/.cargo/bin (or \
                 $CARGO_INSTALL_ROOT/bin) to PATH"
            ),
            Probe::Unusable(why) => bail!("bpf-linker installed but unusable: {why}"),
        }
    }

    fn debian(&mut self) -> Result<()> {
        let codename = os_codename();
        let bookworm = codename.as_deref() == Some("bookworm");
        if !bookworm {
            say(
                "debian",
                &format!(
                    "release {} is not bookworm: installing QEMU from the default suites",
                    codename.as_deref().unwrap_or("unknown")
                ),
            );
        }

        let mut all: Vec<&str> = DEB_PACKAGES.to_vec();
        all.push(QEMU_PACKAGE);
        let installed = dpkg_installed(&all)?;

        let mut missing = Vec::new();
        for &pkg in DEB_PACKAGES {
            match installed.get(pkg) {
                Some(version) => say(pkg, &format!("present ({version})")),
                None => {
                    say(pkg, if self.check { "MISSING" } else { "missing" });
                    missing.push(pkg);
                }
            }
        }
        let need_qemu = match installed.get(QEMU_PACKAGE) {
            Some(version) if !bookworm || version.contains("bpo") || qemu_major(version) >= 10 => {
                say(QEMU_PACKAGE, &format!("present ({version})"));
                false
            }
            Some(version) => {
                say(
                    QEMU_PACKAGE,
                    &format!("{version} is bookworm's own: needs 10.x from {BACKPORTS_SUITE}"),
                );
                true
            }
            None => {
                say(QEMU_PACKAGE, if self.check { "MISSING" } else { "missing" });
                true
            }
        };

        let need_backports = bookworm && need_qemu && !backports_configured();
        if self.check {
            self.missing.extend(missing.iter().map(|p| p.to_string()));
            if need_qemu {
                self.missing.push(QEMU_PACKAGE.into());
            }
            if need_backports {
                say("apt source", &format!("{BACKPORTS_SUITE} MISSING"));
            }
            return Ok(());
        }

        self.changed |= need_backports || need_qemu || !missing.is_empty();
        if need_backports {
            say(
                "apt source",
                &format!("adding {BACKPORTS_SUITE} as {BACKPORTS_SOURCES}"),
            );
            fs::write(BACKPORTS_SOURCES, BACKPORTS_DEB822)
                .with_context(|| format!("writing {BACKPORTS_SOURCES}"))?;
        }
        if !missing.is_empty() {
            say("apt", &format!("installing {}…", missing.join(" ")));
            self.apt_update()?;
            let mut cmd = apt_get();
            cmd.args(["install", "-y", "--no-install-recommends"])
                .args(&missing);
            run_cmd(&mut cmd)?;
        }
        if need_qemu {
            self.apt_update()?;
            let mut cmd = apt_get();
            cmd.args(["install", "-y", "--no-install-recommends"]);
            if bookworm {
                say(
                    "apt",
                    &format!("installing {QEMU_PACKAGE} from {BACKPORTS_SUITE}…"),
                );
                cmd.args(["-t", BACKPORTS_SUITE]);
            } else {
                say("apt", &format!("installing {QEMU_PACKAGE}…"));
            }
            cmd.arg(QEMU_PACKAGE);
            run_cmd(&mut cmd)?;
        }
        if !missing.is_empty() || need_qemu {
            let now = dpkg_installed(&all)?;
            let still: Vec<&str> = all
                .iter()
                .copied()
                .filter(|p| !now.contains_key(*p))
                .collect();
            if !still.is_empty() {
                bail!("apt-get finished but these are still not installed: {still:?}");
            }
            say("apt", "packages installed");
        }
        Ok(())
    }

    /// Makes sure br_netfilter is loaded (or built in): its sysctls exist once it is.
    fn br_netfilter(&mut self) -> Result<()> {
        const ITEM: &str = "br_netfilter";
        let present = br_netfilter_loaded().then_some("loaded");
        if !self.must_install(ITEM, present, "MISSING (not loaded)") {
            return Ok(());
        }
        say(ITEM, "loading (modprobe br_netfilter)…");
        run_cmd(Command::new("modprobe").arg(ITEM))?;
        if !br_netfilter_loaded() {
            bail!("modprobe br_netfilter succeeded but {BR_NF_SYSCTL} is still missing");
        }
        say(ITEM, "loaded");
        Ok(())
    }

    /// Makes sure the default toolchain can build for the static binary's target.
    fn musl_target(&mut self) -> Result<()> {
        let item = format!("rust std {STATIC_TARGET}");
        if !self.must_install(&item, musl_std_installed().then_some("present"), "MISSING") {
            return Ok(());
        }
        say(&item, "installing (rustup target add)…");
        run_cmd(Command::new("rustup").args(["target", "add", STATIC_TARGET]))?;
        if !musl_std_installed() {
            bail!("`rustup target add {STATIC_TARGET}` succeeded but its std is still missing");
        }
        say(&item, "installed");
        Ok(())
    }

    /// Makes sure a cargo subcommand (a packaging tool) is installed at `version`, built from
    /// crates.io with the stable toolchain.
    fn cargo_tool(&mut self, name: &str, version: &str) -> Result<()> {
        let item = format!("{name} {version}");
        let installed = cargo_bin(name).and_then(|p| {
            // Both tools answer `--version` when run by their own name.
            let out = Command::new(p).arg("--version").output().ok()?;
            Some(String::from_utf8_lossy(&out.stdout).into_owned())
        });
        let present = installed
            .as_deref()
            .is_some_and(|v| v.split_whitespace().any(|w| w == version))
            .then_some("present");
        if !self.must_install(&item, present, "MISSING") {
            return Ok(());
        }
        say(&item, "installing (cargo install, ~3 min)…");
        run_cmd(Command::new("cargo").args(["install", "--locked", name, "--version", version]))?;
        say(&item, "installed");
        Ok(())
    }

    /// Makes sure a Debian root of `suite` exists at `path` (made once, then reused).
    /// debootstrap works in a sibling directory that is renamed into place when it has
    /// finished, so an interrupted run leaves nothing that looks complete.
    fn debian_root(
        &mut self,
        item: &str,
        suite: &str,
        path: &str,
        include: Option<&str>,
    ) -> Result<()> {
        let root = Path::new(path);
        let present = format!("present ({path})");
        let present = root.join(ROOT_DONE).exists().then_some(present.as_str());
        if !self.must_install(item, present, &format!("MISSING ({path})")) {
            return Ok(());
        }
        let work = root.with_extension("partial");
        let log = root.with_extension("log");
        for dir in [&work, &root.to_path_buf()] {
            if dir.exists() {
                fs::remove_dir_all(dir)
                    .with_context(|| format!("removing the unfinished {}", dir.display()))?;
            }
        }
        if let Some(parent) = root.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let with = include
            .map(|i| format!(" --include={i}"))
            .unwrap_or_default();
        say(
            item,
            &format!(
                "making {path} with debootstrap --variant=minbase{with} {suite} \
                 (~2 min, 200-300 MB; log {})…",
                log.display()
            ),
        );
        let start = Instant::now();
        let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new("debootstrap");
        cmd.arg("--variant=minbase");
        if let Some(include) = include {
            cmd.arg(format!("--include={include}"));
        }
        let status = cmd
            .arg(suite)
            .arg(&work)
            .arg(DEBIAN_MIRROR)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .status()
            .context("running debootstrap")?;
        if !status.success() {
            let text = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            for line in tail.iter().rev() {
                say(item, line);
            }
            bail!("debootstrap failed ({status}); see {}", log.display());
        }
        fs::write(work.join(ROOT_DONE), "")?;
        fs::rename(&work, root)
            .with_context(|| format!("renaming {} to {path}", work.display()))?;
        say(item, &format!("made in {:.0?}", start.elapsed()));
        Ok(())
    }

    /// Debian's kernels for the kernel matrix (kvmtrace/tests/kernels.rs).
    fn kernels(&mut self) -> Result<()> {
        let fetched =
            kvmtrace_lab::kernels::fetch(&kvmtrace_lab::kernels::cache_dir(), self.check)?;
        self.missing.extend(fetched.missing);
        self.changed |= fetched.changed;
        Ok(())
    }

    /// `apt-get update`, at most once per run and only when something must be installed.
    fn apt_update(&mut self) -> Result<()> {
        if !self.apt_updated {
            say("apt", "updating package lists…");
            let mut cmd = apt_get();
            cmd.arg("update");
            run_cmd(&mut cmd)?;
            self.apt_updated = true;
        }
        Ok(())
    }
}

/// Exists once br_netfilter is loaded (or built into the kernel).
const BR_NF_SYSCTL: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

fn br_netfilter_loaded() -> bool {
    Path::new(BR_NF_SYSCTL).exists()
}

fn say(item: &str, state: &str) {
    eprintln!("[setup] {item}: {state}");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn home_dir() -> Result<PathBuf> {
    env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .context("HOME is not set")
}

/// Runs a command with inherited stdio, failing on a non-zero exit.
fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    // Noninteractive: debconf takes each question's default (e.g. wireshark-common's "may
    // non-superusers capture packets?" is answered no) and keeps changed config files.
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["-q", "-o", "DPkg::Lock::Timeout=120"])
        .args(["-o", "Dpkg::Options::=--force-confdef"])
        .args(["-o", "Dpkg::Options::=--force-confold"]);
    cmd
}

fn nightly_sysroot() -> Option<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    path.is_dir().then_some(path)
}

/// The nightly's shared LLVM, e.g. `libLLVM.so.22.1-rust-1.97.0-nightly` (its soname).
struct NightlyLlvm {
    file_name: String,
    major: u32,
}

impl NightlyLlvm {
    fn find(libdir: &Path) -> Result<Self> {
        let entries =
            fs::read_dir(libdir).with_context(|| format!("reading {}", libdir.display()))?;
        for entry in entries {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(version) = name.strip_prefix("libLLVM.so.") else {
                continue;
            };
            if !name.contains("-rust-") {
                continue;
            }
            let major: String = version.chars().take_while(char::is_ascii_digit).collect();
            let major: u32 = major
                .parse()
                .with_context(|| format!("no LLVM version in {name}"))?;
            if !BPF_LINKER_LLVM_MAJORS.contains(&major) {
                bail!(
                    "the nightly toolchain ships LLVM {major} ({name}), but bpf-linker \
                     {BPF_LINKER_VERSION} supports LLVM {}-{}: pin an older nightly or move \
                     to a newer bpf-linker",
                    BPF_LINKER_LLVM_MAJORS.start(),
                    BPF_LINKER_LLVM_MAJORS.end()
                );
            }
            return Ok(Self {
                file_name: name.to_owned(),
                major,
            });
        }
        bail!(
            "no libLLVM.so.*-rust-* in {}: is this a rustup nightly?",
            libdir.display()
        )
    }
}

enum Probe {
    Missing,
    /// Runs and is the wanted version; `standalone`: also without the nightly's lib/ in
    /// LD_LIBRARY_PATH.
    Ok {
        standalone: bool,
    },
    Unusable(String),
}

fn probe_bpf_linker(libdir: &Path, llvm: &NightlyLlvm) -> Probe {
    let version = |ld_library_path: Option<&Path>| {
        let mut cmd = Command::new("bpf-linker");
        cmd.arg("--version").stdin(Stdio::null());
        match ld_library_path {
            Some(dir) => cmd.env("LD_LIBRARY_PATH", dir),
            None => cmd.env_remove("LD_LIBRARY_PATH"),
        };
        cmd.output()
    };
    let (out, standalone) = match version(None) {
        Err(err) if err.kind() == ErrorKind::NotFound => return Probe::Missing,
        Err(err) => return Probe::Unusable(err.to_string()),
        Ok(out) if out.status.success() => (out, true),
        Ok(_) => match version(Some(libdir)) {
            Ok(out) if out.status.success() => (out, false),
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                return Probe::Unusable(stderr.trim().to_owned());
            }
            Err(err) => return Probe::Unusable(err.to_string()),
        },
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let found = stdout.trim();
    if found != format!("bpf-linker {BPF_LINKER_VERSION}") {
        return Probe::Unusable(format!("`{found}`, want {BPF_LINKER_VERSION}"));
    }
    // After a nightly update the old libLLVM may still resolve through some other path; the
    // linker must load exactly the nightly's LLVM to read the bitcode that rustc writes.
    if let Some(needed) = needed_llvm("bpf-linker", libdir) {
        if needed != llvm.file_name {
            return Probe::Unusable(format!(
                "built against {needed}, the nightly now has {}",
                llvm.file_name
            ));
        }
    }
    Probe::Ok { standalone }
}

/// The libLLVM soname a binary on PATH needs, per `ldd` (None if that cannot be told).
fn needed_llvm(binary: &str, libdir: &Path) -> Option<String> {
    let path = env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(binary))
        .find(|p| p.is_file())?;
    let out = Command::new("ldd")
        .arg(&path)
        .env("LD_LIBRARY_PATH", libdir)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|word| word.starts_with("libLLVM"))
        .map(str::to_owned)
}

fn os_codename() -> Option<String> {
    let text = fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
}

/// Installed packages among `packages`, with their versions.
fn dpkg_installed(packages: &[&str]) -> Result<HashMap<String, String>> {
    // Exits 1 when some package was never known to dpkg, still printing the others.
    let out = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package}\t${Status}\t${Version}\n")
        .args(packages)
        .stdin(Stdio::null())
        .output()
        .context("running dpkg-query")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let (name, status, version) = (fields.next()?, fields.next()?, fields.next()?);
            (status == "install ok installed").then(|| (name.to_owned(), version.to_owned()))
        })
        .collect())
}

/// Major of a Debian QEMU version such as `1:10.0.2+ds-2+deb13u1~bpo12+1`.
fn qemu_major(version: &str) -> u32 {
    let upstream = version.split_once(':').map_or(version, |(_, v)| v);
    upstream
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// Whether any apt source (one-line or deb822) already names bookworm-backports.
fn backports_configured() -> bool {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.extension()
                        .is_some_and(|ext| ext == "list" || ext == "sources")
                }),
        );
    }
    files.iter().any(|file| {
        fs::read_to_string(file).is_ok_and(|text| {
            text.lines().any(|line| {
                let line = line.trim_start();
                !line.starts_with('#')
                    && line.split_whitespace().any(|word| word == BACKPORTS_SUITE)
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_major_reads_debian_versions() {
        assert_eq!(qemu_major("1:10.0.2+ds-2+deb13u1~bpo12+1"), 10);
        assert_eq!(qemu_major("1:7.2+dfsg-7+deb12u7"), 7);
        assert_eq!(qemu_major("garbage"), 0);
    }

    #[test]
    fn a_step_installs_only_what_is_missing_and_check_only_records_it() {
        let mut check = Setup {
            check: true,
            missing: Vec::new(),
            apt_updated: false,
            changed: false,
        };
        assert!(!check.must_install("a", Some("present"), "MISSING"));
        assert!(!check.must_install("b", None, "MISSING"));
        assert_eq!(check.missing, ["b"]);
        assert!(!check.changed);

        let mut install = Setup {
            check: false,
            ..check
        };
        install.missing.clear();
        assert!(!install.must_install("a", Some("present"), "MISSING"));
        assert!(!install.changed);
        assert!(install.must_install("b", None, "MISSING"));
        assert!(install.missing.is_empty());
        assert!(install.changed);
    }
}
