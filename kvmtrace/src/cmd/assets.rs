//! What a package ships beside the binary, generated from the flags themselves so that it can
//! never disagree with them: shell completions (`kvmtrace completions SHELL`, also for an
//! operator who copied the static binary by hand) and one man page per command (`kvmtrace
//! manpages DIR`, hidden: `cargo xtask dist` calls it on the binary it packages).

use anyhow::{Context as _, Result};
use clap::Args;
use clap_complete::Shell;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Args, Debug)]
pub struct ManpagesArgs {
    /// Directory to write `kvmtrace.1`, `kvmtrace-follow.1`, … into (created if missing).
    pub dir: PathBuf,
}

/// `cmd`: the whole command line (`crate::cmd::command`).
pub fn completions(a: CompletionsArgs, mut cmd: clap::Command) -> Result<ExitCode> {
    clap_complete::generate(a.shell, &mut cmd, "kvmtrace", &mut std::io::stdout().lock());
    Ok(ExitCode::SUCCESS)
}

pub fn manpages(a: ManpagesArgs, cmd: clap::Command) -> Result<ExitCode> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    // Hidden commands (this one) get no page; `help` is no command of its own either.
    clap_mangen::generate_to(cmd, &a.dir)
        .with_context(|| format!("writing man pages into {}", a.dir.display()))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_man_page_per_visible_command() {
        let dir = std::env::temp_dir().join(format!("kvmtrace-man-{}", std::process::id()));
        manpages(ManpagesArgs { dir: dir.clone() }, crate::cmd::command()).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let follow = std::fs::read_to_string(dir.join("kvmtrace-follow.1")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            names,
            [
                "kvmtrace-completions.1",
                "kvmtrace-doctor.1",
                "kvmtrace-export.1",
                "kvmtrace-follow.1",
                "kvmtrace-list.1",
                "kvmtrace-replay.1",
                "kvmtrace-report.1",
                "kvmtrace-watch.1",
                "kvmtrace.1",
            ]
        );
        assert!(follow.starts_with(".ie \\n(.g .ds Aq"), "{follow}");
        assert!(follow.contains(".TH kvmtrace-follow 1"), "{follow}");
        assert!(follow.contains("explain\\-rules"), "{follow}");
    }
}
