//! The checks, in the order a packet from the VM meets what they check: tap, bridge port,
//! bridge, MTU, bridge netfilter, forwarding, reverse-path filter, FORWARD rules, NAT,
//! conntrack, default route (or the route to DEST), gateway neighbour, DHCP; then the IPv6
//! half: bridge netfilter, forwarding, reverse-path filter, FORWARD rules, NAT66, default
//! route (or the route to DEST), gateway neighbour, router advertisements. Each is a pure
//! function of a [`Host`] snapshot and says what it read (evidence) and what to run (fix).
//!
//! A check that both halves have is one function given the [`Family`] (`nat_check(c, V6)`
//! is `nat6`); the checks live by what they check (`devices.rs`, `netfilter.rs`,
//! `routing.rs`, `services.rs`, `overlay.rs`), and what they share is `ctx.rs`.

mod ctx;
mod devices;
mod netfilter;
mod overlay;
mod routing;
mod services;

use super::check::Check;
use super::family::Family::{self, V4, V6};
use super::host::Host;
use super::rules::Net;
use ctx::Ctx;
use devices::{
    bridge_check, bridge_port_check, lower_device_check, macvtap_host_check, macvtap_mode_check,
    mtu_check, tap_check,
};
use netfilter::{
    br_netfilter_check, conntrack_check, forward_filter_check, nat_check, rpfilter6_check,
};
use routing::{
    default_route_check, gateway_neighbour_check, ip6_forward_check, ip_forward_check, route_check,
    rp_filter_check,
};
use services::{dhcp_check, ra_service_check};
use std::net::IpAddr;

/// Every check for the VM whose tap is `tap` (guest MAC `mac`, when known), in path order.
#[cfg(test)]
pub fn run_checks(h: &Host, tap: &str, mac: Option<&str>) -> Vec<Check> {
    run_checks_to(h, tap, mac, None)
}

/// The address and device a forwarded packet from the VM comes from, for the route lookup
/// to a destination of `v6`'s family: the guest's address when the host has seen it, else
/// one of the VM's subnet that is not the gateway's.
pub fn vm_source(h: &Host, tap: &str, mac: Option<&str>, v6: bool) -> Option<(IpAddr, String)> {
    let c = Ctx::new(h, tap, mac, None);
    let l3 = c.l3?;
    let s = c.side(if v6 { V6 } else { V4 });
    let (guest, gw, subnet) = (s.guest.map(|(g, _)| g), s.gw.map(|(a, _)| a), s.subnet?);
    let pick = guest.or_else(|| {
        ipnet::IpNet::new(subnet.addr, subnet.len)
            .ok()?
            .hosts()
            .take(4)
            .find(|a| Some(*a) != gw && *a != subnet.addr)
    })?;
    Some((pick, l3.name.clone()))
}

/// Every check, with the model packets going to `dest` and the route to it looked up
/// (`h.dest_route`) when one is given.
pub fn run_checks_to(h: &Host, tap: &str, mac: Option<&str>, dest: Option<Net>) -> Vec<Check> {
    let c = Ctx::new(h, tap, mac, dest);
    // A macvtap guest meets no bridge, no routing and no netfilter of this host: its frames
    // go straight out of the lower device. Its own faults are the lower device and the
    // host it cannot reach.
    if let Some(lower) = c.tap.and_then(|t| t.macvtap_lower.as_deref()) {
        return vec![
            tap_check(&c),
            lower_device_check(&c, lower),
            macvtap_mode_check(&c, lower),
            macvtap_host_check(&c, lower),
        ];
    }
    let mut out = vec![
        tap_check(&c),
        bridge_port_check(&c),
        bridge_check(&c),
        mtu_check(&c),
    ];
    out.extend(half(&c, V4));
    out.extend(half(&c, V6));
    out.extend(overlay::vxlan_checks(&c));
    out
}

/// The checks of one IP version's half of the path, in path order: the same for both, but
/// for forwarding, the reverse-path filter and the guest's services, which are the version's
/// own (IPv4's are sysctls and DHCP; IPv6's are netfilter rules and router advertisements).
fn half(c: &Ctx, f: Family) -> Vec<Check> {
    let mut out = vec![br_netfilter_check(c, f)];
    out.extend(match f {
        V4 => [ip_forward_check(c), rp_filter_check(c)],
        V6 => [ip6_forward_check(c), rpfilter6_check(c)],
    });
    out.push(forward_filter_check(c, f));
    out.push(nat_check(c, f));
    if f == V4 {
        // The conntrack table is one for both versions.
        out.push(conntrack_check(c));
    }
    // The route to DEST of this version replaces its default route.
    out.push(if c.side(f).dest.is_some() {
        route_check(c, f)
    } else {
        default_route_check(c, f)
    });
    out.push(gateway_neighbour_check(c, f));
    out.push(match f {
        V4 => dhcp_check(c),
        V6 => ra_service_check(c),
    });
    out
}

#[cfg(test)]
mod tests;
