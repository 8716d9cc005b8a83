//! Checks of the services a guest needs from its network: DHCP, router advertisements.

use super::ctx::{check, Ctx};
use crate::doctor::check::{Check, CheckStatus};
use crate::doctor::family::Family;
use std::net::{IpAddr, Ipv4Addr};

use CheckStatus::{Pass, Skip, Warn};

pub(super) fn dhcp_check(c: &Ctx) -> Check {
    let name = "dhcp";
    if c.v4.bridged {
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
            format!("the VM's network is unknown: {}", c.v4.no_subnet),
            None,
        );
    }
    let socks = match &c.h.udp67 {
        Ok(s) => s,
        Err(e) => return check(name, Skip, e.clone(), None),
    };
    let gw = c.v4.gw.map(|(a, _)| a);
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
        .filter(|s| s.local.is_unspecified() || Some(IpAddr::V4(s.local)) == gw)
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
        .v4
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

/// Router advertisements on the VM's device for its IPv6 prefix (radvd, dnsmasq).
pub(super) fn ra_service_check(c: &Ctx) -> Check {
    let name = "ra_service";
    if let Some(s) = c.skip(Family::V6, name) {
        return s;
    }
    let l3 = c.l3_name();
    if c.v6.bridged {
        return check(
            name,
            Skip,
            format!("the VM is bridged onto the uplink's network through {l3}: its router advertisements, if any, come from that network"),
            None,
        );
    }
    let Some(subnet) = c.v6.subnet else {
        return check(
            name,
            Skip,
            format!("{l3} has no global IPv6 address: there is no prefix to advertise to the VM"),
            None,
        );
    };
    let daemons = match &c.h.ra_daemons {
        Ok(d) => d,
        Err(e) => {
            return check(
                name,
                Warn,
                format!("cannot tell whether anything sends router advertisements on {l3}: {e}"),
                None,
            )
        }
    };
    let serves = |d: &crate::doctor::host::RaDaemon| {
        d.ifaces.as_ref().is_none_or(|i| {
            i.iter()
                .any(|n| n == l3 || (n.ends_with('*') && l3.starts_with(n.trim_end_matches('*'))))
        })
    };
    let good: Vec<String> = daemons
        .iter()
        .filter(|d| d.sends_ra && serves(d))
        .map(|d| format!("{} advertises on {l3} ({})", d.who, d.config))
        .collect();
    if !good.is_empty() {
        return check(name, Pass, good.join("; "), None);
    }
    let fix = Some(format!(
        "configure the guest statically, or advertise {subnet} on {l3}: radvd with `interface {l3} {{ AdvSendAdvert on; prefix {subnet} {{ }}; }};`, or dnsmasq --interface={l3} --bind-interfaces --enable-ra --dhcp-range={},ra-only",
        subnet.addr
    ));
    let near: Vec<String> = daemons
        .iter()
        .map(|d| {
            format!(
                "{} ({}) {}",
                d.who,
                d.config,
                if !serves(d) {
                    format!(
                        "serves {} only",
                        d.ifaces.as_deref().unwrap_or_default().join(", ")
                    )
                } else {
                    "sends no RAs (no enable-ra / RA mode)".to_string()
                }
            )
        })
        .collect();
    if !near.is_empty() {
        return check(
            name,
            Warn,
            format!(
                "nothing sends router advertisements on {l3}: {}; a guest using SLAAC gets no IPv6 address or default route (fine for a guest configured statically)",
                near.join("; ")
            ),
            fix,
        );
    }
    check(
        name,
        Warn,
        format!("no radvd or dnsmasq runs in this namespace: nothing sends router advertisements on {l3}, so a guest using SLAAC gets no address in {subnet} and no IPv6 default route (fine for a guest configured statically)"),
        fix,
    )
}
