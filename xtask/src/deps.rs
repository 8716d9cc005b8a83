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

    /// The project's own manifests pass.
    #[test]
    fn every_workspace_dependency_is_used() {
        check(Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()).unwrap();
    }
}
