//! `cargo xtask demo`: the main job on the built-in lab, end to end.
//!
//! Builds a hypervisor namespace (bridge, tap, NAT uplink) and an "outside" holding
//! 203.0.113.1, boots a real QEMU guest that pings and connects out, breaks the path (FORWARD
//! policy drop), runs `kvmtrace follow` and shows the verdict, repairs the path and shows
//! `delivered`, then tears everything down (also on error: the lab and guest are RAII guards).

use anyhow::{bail, Context as _, Result};
use kvmtrace_lab::guest::{self, Guest, GuestConfig};
use kvmtrace_lab::lab::{Lab, LabOptions};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn say(s: &str) {
    eprintln!("\n\x1b[1m[demo] {s}\x1b[0m");
}

fn follow(bin: &PathBuf, lab: &Lab, vm: &str) -> Result<i32> {
    let status = Command::new("ip")
        .args(["netns", "exec", &lab.hv])
        .arg(bin)
        .args([
            "follow",
            vm,
            &lab.dest.to_string(),
            "--count",
            "3",
            "--duration",
            "15",
            // Line output: the demo narrates, and a terminal UI would hide the hops it shows.
            "--no-tui",
        ])
        .status()
        .context("running kvmtrace")?;
    Ok(status.code().unwrap_or(-1))
}

pub fn run() -> Result<ExitCode> {
    let code = crate::setup::run(&crate::setup::SetupArgs::default())?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    say("building kvmtrace");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(&cargo)
        .args(["build", "-p", "kvmtrace"])
        .current_dir(workspace())
        .status()?;
    if !st.success() {
        bail!("building kvmtrace failed");
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("target"));
    let bin = target.join("debug/kvmtrace");

    say("building the guest image (Debian kernel + busybox initramfs)");
    let image = guest::build_image(&guest::default_cache_dir())?;

    say("building the lab: hypervisor namespace (br0, tap vnet0, NAT out of up0) and the outside (203.0.113.1)");
    let lab = Lab::new(LabOptions::default());
    lab.tcp_listen(80);
    let name = format!("demo-{}", std::process::id());
    let cfg = GuestConfig::for_lab(&lab, &name, 80);
    say(&format!("booting QEMU guest '{name}' (TCG) on {}", lab.tap));
    let g = Guest::boot(&image, &cfg)?;
    if !g.wait_for_serial("KT ping ok", Duration::from_secs(60)) {
        bail!("the guest never reached {}:\n{}", lab.dest, g.serial_log());
    }
    say("the guest pings and connects to 203.0.113.1; now breaking the path: FORWARD policy drop");
    lab.nft("table inet demo_filter {\n chain forward {\n  type filter hook forward priority 0; policy drop;\n }\n}\n");
    say(&format!("kvmtrace follow {name} {}", lab.dest));
    let broken = follow(&bin, &lab, &name)?;
    say("repairing: deleting the drop policy");
    lab.hv_run(&["nft", "delete", "table", "inet", "demo_filter"]);
    say(&format!("kvmtrace follow {name} {}", lab.dest));
    let fixed = follow(&bin, &lab, &name)?;
    say(&format!(
        "exit codes: broken path {broken} (a problem found), repaired path {fixed} (delivered); tearing down"
    ));
    drop(g);
    drop(lab);
    if broken != 1 || fixed != 0 {
        bail!("unexpected verdicts: broken path exited {broken}, repaired path {fixed}");
    }
    Ok(ExitCode::SUCCESS)
}
