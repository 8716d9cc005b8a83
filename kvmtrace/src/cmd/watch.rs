//! `kvmtrace watch`: its flags, and what they make of the service's start (`crate::watch::Launch`):
//! the listen address, and the settings that the config file, re-read on SIGHUP, overrides.

use crate::watch::recorder::{RecorderSettings, Threshold};
use crate::watch::{Launch, Settings};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct WatchArgs {
    /// Address and port of the metrics endpoint (`/metrics`, `/healthz`): localhost only by
    /// default. Plain HTTP without authentication: to scrape it from another machine, bind a
    /// management address or put a TLS proxy in front (docs/watch.md, "Exposing /metrics").
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub listen: SocketAddr,
    /// Watch only this VM (name, tap or MAC); repeat for more. Default: every VM and tap in
    /// this network namespace.
    #[arg(long = "vm", value_name = "VM")]
    pub vms: Vec<String>,
    /// A JSON file whose fields override these flags (docs/watch.md); re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Seconds between scans for VMs that started or stopped.
    #[arg(long, default_value_t = 2.0)]
    pub rescan_s: f64,
    /// Drops of one VM within --window-s that start a flight recording (0 = never).
    #[arg(long, default_value_t = 5)]
    pub threshold_drops: u64,
    /// Seconds of the sliding window in which a VM's drops are counted against the threshold.
    #[arg(long, default_value_t = 10.0)]
    pub window_s: f64,
    /// Seconds after a VM's recording before it may get another.
    #[arg(long, default_value_t = 60.0)]
    pub cooldown_s: f64,
    /// Seconds each flight recording lasts.
    #[arg(long, default_value_t = 5.0)]
    pub record_s: f64,
    /// Directory of the flight recordings (created, mode 0700).
    #[arg(long, default_value = "/var/lib/kvmtrace/recordings")]
    pub record_dir: PathBuf,
    /// Size cap of the recordings directory; the oldest traces go first.
    #[arg(long, default_value_t = 256)]
    pub record_max_mib: u64,
    /// Most traces kept in the recordings directory.
    #[arg(long, default_value_t = 100)]
    pub record_max_files: usize,
    /// No flight recorder: metrics only.
    #[arg(long)]
    pub no_record: bool,
    /// Bound on distinct drop label sets; past it drops are counted under `other`.
    #[arg(long, default_value_t = crate::watch::metrics::DEFAULT_MAX_DROP_SERIES)]
    pub max_drop_series: usize,
}

impl WatchArgs {
    /// The flags as the service's start: the settings they give, before any config file.
    pub fn launch(&self) -> Launch {
        let flags = Settings {
            vms: self.vms.clone(),
            rescan_s: self.rescan_s,
            threshold: Threshold {
                drops: self.threshold_drops,
                window_s: self.window_s,
                cooldown_s: self.cooldown_s,
            },
            recorder: RecorderSettings {
                enabled: !self.no_record,
                dir: self.record_dir.clone(),
                record_s: self.record_s,
                max_bytes: self.record_max_mib << 20,
                max_files: self.record_max_files,
            },
            max_drop_series: self.max_drop_series,
        };
        Launch {
            listen: self.listen,
            config: self.config.clone(),
            flags,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::{load_settings, parse_config};
    use clap::Parser as _;

    fn args(extra: &[&str]) -> WatchArgs {
        let mut v = vec!["kvmtrace", "watch"];
        v.extend_from_slice(extra);
        match crate::cmd::Cli::try_parse_from(v).unwrap().cmd {
            crate::cmd::Cmd::Watch(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_bind_localhost_and_record_after_5_drops_in_10_s() {
        let a = args(&[]);
        assert_eq!(a.listen, "127.0.0.1:9464".parse().unwrap());
        let s = load_settings(&a.launch()).unwrap();
        assert_eq!(s.threshold, Threshold::default());
        assert!(s.recorder.enabled);
    }

    #[test]
    fn the_config_file_overrides_flags_and_bad_values_are_refused() {
        let dir = std::env::temp_dir().join(format!("kvmtrace-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("watch.json");
        std::fs::write(
            &p,
            r#"{"threshold_drops": 20, "vms": ["web1"], "record": false}"#,
        )
        .unwrap();
        let a = args(&["--config", p.to_str().unwrap(), "--window-s", "30"]);
        let s = load_settings(&a.launch()).unwrap();
        assert_eq!(s.threshold.drops, 20);
        assert_eq!(s.threshold.window_s, 30.0);
        assert_eq!(s.vms, vec!["web1".to_string()]);
        assert!(!s.recorder.enabled);
        std::fs::write(&p, r#"{"window_s": 0}"#).unwrap();
        assert!(load_settings(&a.launch()).is_err());
        std::fs::write(&p, r#"{"thresold_drops": 1}"#).unwrap();
        let e = format!("{:#}", load_settings(&a.launch()).unwrap_err());
        assert!(e.contains("thresold_drops"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The example the package ships (contrib/watch.json): valid once its comments are
    /// dropped, it sets every field, and each one to the flag's default, so that copying it
    /// changes nothing until an operator edits it.
    #[test]
    fn the_shipped_example_config_sets_every_field_to_its_default() {
        let text = include_str!("../../../contrib/watch.json");
        let f = parse_config(text).unwrap();
        assert!(
            !format!("{f:?}").contains("None"),
            "a field is missing: {f:?}"
        );
        let defaults = load_settings(&args(&[]).launch()).unwrap();
        assert_eq!(defaults.clone().apply(&f), defaults);
        let e = parse_config("{\n# a comment\n\"rescan_s\": x}").unwrap_err();
        assert_eq!(e.line(), 3, "{e}");
    }
}
