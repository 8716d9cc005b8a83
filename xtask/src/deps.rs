//! Every dependency the workspace declares is used by a member: a crate listed in
//! `[workspace.dependencies]` that no member takes is a promise the code does not keep (issue
//! 19: aya-log, bytes and network-types sat there unused). `cargo xtask test` fails on one.

use anyhow::{bail, Context as _, Result};
use std::path::Path;

/// The names in the `[workspace.dependencies]` table of a root `Cargo.toml`.
fn declared(root_manifest: &str) -> Vec<String> {
    let mut in_table = false;
    let mut out = Vec::new();
    for line in root_manifest.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_table = l == "[workspace.dependencies]";
            continue;
        }
        if !in_table || l.is_empty() || l.starts_with('#') {
            continue;
        }
        if let Some((name, _)) = l.split_once('=') {
            out.push(name.trim().trim_matches('"').to_string());
        }
    }
    out
}

/// Whether a member manifest takes `name` from the workspace (`name.workspace = true` or
/// `name = { workspace = true, … }`, in any dependency table).
fn uses(member_manifest: &str, name: &str) -> bool {
    member_manifest.lines().any(|l| {
        let l = l.trim();
        l.strip_prefix(name).is_some_and(|rest| {
            let rest = rest.trim_start();
            rest.starts_with(".workspace")
                || (rest.starts_with('=') && rest.contains("workspace") && rest.contains("true"))
        })
    })
}

/// Fails with the list of workspace dependencies no member uses.
pub fn check(workspace: &Path) -> Result<()> {
    let root = std::fs::read_to_string(workspace.join("Cargo.toml"))
        .context("reading the workspace Cargo.toml")?;
    let members: Vec<String> = [
        "kvmtrace",
        "kvmtrace-common",
        "kvmtrace-ebpf",
        "xtask",
        "tests",
    ]
    .iter()
    .map(|m| std::fs::read_to_string(workspace.join(m).join("Cargo.toml")))
    .collect::<std::io::Result<_>>()
    .context("reading the members' Cargo.toml")?;
    let unused: Vec<String> = declared(&root)
        .into_iter()
        .filter(|d| !members.iter().any(|m| uses(m, d)))
        .collect();
    if !unused.is_empty() {
        bail!(
            "[workspace.dependencies] declares what no member uses: {} (use it in a member or \
             remove it)",
            unused.join(", ")
        );
    }
    Ok(())
}

/// The crates of a `cargo tree --prefix none` listing whose name starts with `aya`.
fn aya_crates(tree: &str) -> Vec<String> {
    let mut v: Vec<String> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with("aya"))
        .map(str::to_string)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The offline half (`replay`, `export`, `report`) stands alone: `kvmtrace` built without its
/// default `live` feature has no aya crate anywhere in its dependency tree (normal and build
/// dependencies), and passes clippy.
pub fn check_offline(cargo: &str, workspace: &Path) -> Result<()> {
    let out = std::process::Command::new(cargo)
        .current_dir(workspace)
        .args([
            "tree",
            "-p",
            "kvmtrace",
            "--no-default-features",
            "-e",
            "normal,build",
            "--prefix",
            "none",
        ])
        .output()
        .context("running cargo tree")?;
    if !out.status.success() {
        bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let aya = aya_crates(&String::from_utf8_lossy(&out.stdout));
    if !aya.is_empty() {
        bail!(
            "kvmtrace --no-default-features (the offline half) depends on {}: only the `live` \
             feature may bring aya in",
            aya.join(", ")
        );
    }
    let status = std::process::Command::new(cargo)
        .current_dir(workspace)
        .args([
            "clippy",
            "-p",
            "kvmtrace",
            "--no-default-features",
            "--lib",
            "--bins",
            "--",
            "-D",
            "warnings",
        ])
        .status()?;
    if !status.success() {
        bail!("kvmtrace --no-default-features (the offline half) does not build cleanly");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_declared_names_and_their_uses() {
        let root = "[workspace]\nmembers = [\"a\"]\n\n[workspace.dependencies]\naya = { version = \"0.14\" }\nbytes = \"1\"\n# x = 1\n\n[profile.release]\ndebug = 1\n";
        assert_eq!(declared(root), ["aya", "bytes"]);
        let member =
            "[dependencies]\naya = { workspace = true, features = [\"x\"] }\nbytes-utils = \"1\"\n";
        assert!(uses(member, "aya"));
        assert!(!uses(member, "bytes"), "bytes-utils is another crate");
        assert!(uses(
            "[dev-dependencies]\nbytes.workspace = true\n",
            "bytes"
        ));
    }

    #[test]
    fn names_the_aya_crates_of_a_tree() {
        let tree = "kvmtrace v0.1.0 (/w/kvmtrace)\nanyhow v1.0.1\naya v0.14.0\naya-obj v0.3.0\naya v0.14.0\nlibc v0.2.1\n";
        assert_eq!(aya_crates(tree), ["aya", "aya-obj"]);
        assert!(aya_crates("kvmtrace v0.1.0\nserde v1.0.0\n").is_empty());
    }

    /// The project's own manifests pass.
    #[test]
    fn every_workspace_dependency_is_used() {
        check(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()).unwrap();
    }
}
