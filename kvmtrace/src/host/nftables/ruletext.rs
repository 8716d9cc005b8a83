//! Rule text for a rule handle, from `nft -a -s list ruleset <family>` (nft is the one program
//! that renders every expression the way users wrote it; `-s` leaves counter values out, `-a`
//! prints `# handle N`). Run in the traced network namespace; only ever reads.
//!
//! The whole family is listed rather than one chain because `nft list chain` cannot name a
//! table or chain that is an nft keyword (`fwd`, …) and nft 1.0.6 accepts no quoted names there.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};

/// (table, chain, handle) → rule text, for one family.
pub type Rules = HashMap<(String, String, u64), String>;

/// Parses `nft -a -s list ruleset` output.
pub fn parse_listing(text: &str) -> Rules {
    let mut out = Rules::new();
    let (mut table, mut chain) = (None::<String>, None::<String>);
    let mut pending: Vec<&str> = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        let (body, handle) = match line.rsplit_once("# handle ") {
            Some((b, h)) if h.trim().parse::<u64>().is_ok() => {
                (b.trim_end(), h.trim().parse::<u64>().ok())
            }
            _ => (line, None),
        };
        if let Some(rest) = body
            .strip_prefix("table ")
            .and_then(|r| r.strip_suffix('{'))
        {
            // `table <family> <name> {`
            table = rest.split_whitespace().nth(1).map(str::to_string);
            chain = None;
            pending.clear();
            continue;
        }
        if let Some(rest) = body
            .strip_prefix("chain ")
            .and_then(|r| r.strip_suffix('{'))
        {
            chain = Some(rest.trim().to_string());
            pending.clear();
            continue;
        }
        if body.is_empty()
            || body.starts_with('#')
            || body == "}"
            || (handle.is_none() && body.ends_with(';'))
        {
            // Blank, warnings, block ends and chain properties (`type … policy accept;`).
            pending.clear();
            continue;
        }
        pending.push(body);
        if let (Some(h), Some(t), Some(c)) = (handle, &table, &chain) {
            // A long rule (a big anonymous set) spans lines; the handle is on its last.
            let text = pending.join(" ");
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            out.insert((t.clone(), c.clone(), h), text);
        }
        if handle.is_some() {
            pending.clear();
        }
    }
    out
}

/// Lists rules with `nft`, inside a network namespace, caching per family. A handle not found is
/// looked up again (one listing) once: rules added after the last listing are found, a rule that
/// is gone does not cause a listing per message.
pub struct RuleText {
    netns: File,
    available: bool,
    families: HashMap<String, Rules>,
    tried: HashSet<(String, String, String, u64)>,
}

impl RuleText {
    pub fn new(netns: File, available: bool) -> Self {
        RuleText {
            netns,
            available,
            families: HashMap::new(),
            tried: HashSet::new(),
        }
    }

    pub fn get(&mut self, family: &str, table: &str, chain: &str, handle: u64) -> Option<String> {
        if !self.available {
            return None;
        }
        let key = (table.to_string(), chain.to_string(), handle);
        if let Some(t) = self.families.get(family).and_then(|r| r.get(&key)) {
            return Some(t.clone());
        }
        if !self
            .tried
            .insert((family.to_string(), key.0.clone(), key.1.clone(), handle))
        {
            return None;
        }
        match list(&self.netns, family) {
            Ok(text) => {
                self.families
                    .insert(family.to_string(), parse_listing(&text));
            }
            Err(e) => log::debug!("nft list ruleset {family}: {e}"),
        }
        self.families.get(family)?.get(&key).cloned()
    }
}

/// Whether `nft` can be run at all.
pub fn nft_available() -> bool {
    Command::new("nft")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn list(netns: &File, family: &str) -> anyhow::Result<String> {
    let fd = netns.as_raw_fd();
    let mut cmd = Command::new("nft");
    cmd.args(["-a", "-s", "list", "ruleset", family])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only calls setns(2), which is
    // async-signal-safe; `fd` is open in the child (O_CLOEXEC closes it only at exec).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output()?;
    if !out.status.success() {
        anyhow::bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// nft 1.0.6 output, including an iptables-nft table and a wrapped set.
    const LISTING: &str = "\
table inet labrej { # handle 1
\tchain forwarding { # handle 1
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr { 1.1.1.1, 2.2.2.2,
\t\t\t   3.3.3.3 } counter accept comment \"hi there\" # handle 5
\t\ttcp dport 8080 reject with tcp reset # handle 6
\t\tjump sub # handle 7
\t}

\tchain sub { # handle 2
\t\tcounter return # handle 8
\t}

\tchain DOCKER-USER { # handle 3
\t}
}
table ip filter { # handle 2
\tchain FORWARD { # handle 1
\t\ttype filter hook forward priority filter; policy drop;
\t\ttcp dport 22 counter reject # handle 2
\t}
}# Warning: table ip filter is managed by iptables-nft, do not touch!
";

    fn get<'a>(r: &'a Rules, t: &str, c: &str, h: u64) -> Option<&'a str> {
        r.get(&(t.to_string(), c.to_string(), h))
            .map(String::as_str)
    }

    #[test]
    fn finds_each_rule_by_table_chain_and_handle() {
        let r = parse_listing(LISTING);
        assert_eq!(
            get(&r, "labrej", "forwarding", 6),
            Some("tcp dport 8080 reject with tcp reset")
        );
        assert_eq!(get(&r, "labrej", "forwarding", 7), Some("jump sub"));
        assert_eq!(get(&r, "labrej", "sub", 8), Some("counter return"));
        assert_eq!(
            get(&r, "filter", "FORWARD", 2),
            Some("tcp dport 22 counter reject")
        );
        assert_eq!(r.len(), 5, "{r:?}");
    }

    #[test]
    fn a_wrapped_rule_is_joined_and_chain_properties_are_not_rules() {
        let r = parse_listing(LISTING);
        assert_eq!(
            get(&r, "labrej", "forwarding", 5),
            Some("ip saddr { 1.1.1.1, 2.2.2.2, 3.3.3.3 } counter accept comment \"hi there\"")
        );
        assert_eq!(
            get(&r, "labrej", "forwarding", 1),
            None,
            "the chain's own handle"
        );
    }
}
