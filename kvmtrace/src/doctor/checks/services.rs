//! Checks of the services a guest needs from its network: DHCP.

use super::ctx::{check, Ctx};
use crate::doctor::check::{Check, CheckStatus};
use std::net::Ipv4Addr;

use CheckStatus::{Pass, Skip, Warn};

pub(super) fn dhcp_check(c: &Ctx) -> Check {
    let name = "dhcp";
    if c.bridged {
        return check(
            name,
            Skip,
            format!(
                "the VM is bridged onto the uplink's network through {}: its DHCP server, if any, is on that network",
                c.l3_name()
            ),
            None,
        );
    }
    if c.l3.is_none() {
        return check(
            name,
            Skip,
            format!("the VM's network is unknown: {}", c.no_subnet),
            None,
        );
    }
    let socks = match &c.h.udp67 {
        Ok(s) => s,
        Err(e) => return check(name, Skip, e.clone(), None),
    };
    let gw = c.gw.map(|(a, _)| a);
    let desc = |s: &crate::doctor::host::UdpSock| {
        format!(
            "UDP {}:67{}",
            s.local,
            s.owner
                .as_deref()
                .map(|o| format!(" ({o})"))
                .unwrap_or_default()
        )
    };
    let good: Vec<String> = socks
        .iter()
        .filter(|s| s.local.is_unspecified() || Some(s.local) == gw)
        .map(desc)
        .collect();
    if !good.is_empty() {
        return check(
            name,
            Pass,
            format!(
                "a DHCP server listens in this namespace: {}",
                good.join(", ")
            ),
            None,
        );
    }
    let l3 = c.l3_name();
    let fix = match c
        .subnet
        .filter(|s| s.size() >= 8)
        .and_then(|s| Some((s, s.v4()?)))
    {
        Some((s, a)) => {
            let base = u32::from(a);
            let start = Ipv4Addr::from(base + (s.size() / 2) as u32);
            let end = Ipv4Addr::from(base + (s.size() - 2) as u32);
            format!(
                "give the guest a static address, or serve DHCP on {l3}: dnsmasq --interface={l3} --bind-interfaces --except-interface=lo --dhcp-range={start},{end},12h"
            )
        }
        None => format!("give the guest a static address, or run a DHCP server on {l3}"),
    };
    if !socks.is_empty() {
        let other: Vec<String> = socks.iter().map(desc).collect();
        return check(
            name,
            Warn,
            format!(
                "UDP port 67 is bound only to other addresses than {l3}'s: {}",
                other.join(", ")
            ),
            Some(fix),
        );
    }
    check(
        name,
        Warn,
        "nothing listens on UDP port 67 in this namespace: a guest that asks for its address by DHCP gets none (fine for a guest with a static address)",
        Some(fix),
    )
}
