//! What every check answers: a status, the evidence read and the fix. A leaf of `doctor`,
//! shared by the checks (`checks/`) and the reports (`doctor.rs`), so neither imports the
//! other for it.

use serde::{Deserialize, Serialize};

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Pass,
    /// Probably fine, or fine for some setups: worth a look.
    Warn,
    /// Breaks the VM's path.
    Fail,
    /// Not applicable here, or could not be read.
    Skip,
}

impl CheckStatus {
    pub fn name(self) -> &'static str {
        match self {
            CheckStatus::Pass => "pass",
            CheckStatus::Warn => "warn",
            CheckStatus::Fail => "fail",
            CheckStatus::Skip => "skip",
        }
    }
}

/// One check of the VM's path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// `tap`, `bridge_port`, `bridge`, `mtu`, `br_netfilter`, `ip_forward`, `rp_filter`,
    /// `forward_filter`, `nat`, `conntrack`, `default_route` (or `route` to an IPv4 DEST),
    /// `gateway_neighbour`, `dhcp`; the IPv6 half: `br_netfilter6`, `ip6_forward`, `rpfilter6`,
    /// `forward_filter6`, `nat6`, `default_route6` (or `route6` to an IPv6 DEST),
    /// `gateway_neighbour6`, `ra_service`; macvtap: `lower_device`, `macvtap_host`.
    pub name: String,
    pub status: CheckStatus,
    /// What was read and what it means.
    pub evidence: String,
    /// What to run (or do) to fix it; None when there is nothing to fix.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fix: Option<String>,
}
