//! The IP version a check is about. The checks of the two halves of the VM's path are one
//! function each, given the family: what differs between IPv4 and IPv6 (names, tools, words)
//! is asked of it here. A leaf of `doctor`: the snapshot (`host.rs`) and the checks use it.

/// IPv4 or IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn is_v6(self) -> bool {
        self == Family::V6
    }

    /// The family of an address.
    pub fn of(a: std::net::IpAddr) -> Family {
        if a.is_ipv6() {
            Family::V6
        } else {
            Family::V4
        }
    }

    /// A check's name for this family: `forward_filter`, `forward_filter6`.
    pub fn name(self, base: &str) -> String {
        match self {
            Family::V4 => base.to_string(),
            Family::V6 => format!("{base}6"),
        }
    }

    /// `IPv4`, `IPv6`.
    pub fn ver(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The xtables command of the family: `iptables`, `ip6tables`.
    pub fn tables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// The `ip` command for the family's routes and rules: `ip`, `ip -6`.
    pub fn ip(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip -6",
        }
    }
}
