//! The VM's bridge carries its frames into a VXLAN overlay: is there a VTEP to send them to,
//! a route to it, and room for the 50 bytes of encapsulation on the underlay?

use super::ctx::{check, Ctx};
use crate::doctor::check::{Check, CheckStatus};
use crate::model::VXLAN_OVERHEAD;

/// One `vxlan` check per VXLAN port of the VM's bridge (none without one).
pub(super) fn vxlan_checks(c: &Ctx) -> Vec<Check> {
    let Some(br) = c.bridge else {
        return Vec::new();
    };
    c.h.vxlans
        .iter()
        .filter(|v| {
            c.h.devs
                .iter()
                .any(|d| d.name == v.name && d.master.as_deref() == Some(br.name.as_str()))
        })
        .map(|v| {
            let name = &v.name;
            let underlay = v.dev.clone().or_else(|| v.route_dev.clone());
            // The default VTEP: `remote`, else the all-zeros forwarding entry's.
            let remote = v.remote.or(v.fdb_remote);
            let remote_text = match (v.remote, v.fdb_remote) {
                (Some(r), _) => r.to_string(),
                (None, Some(r)) => format!("{r} (fdb 00:00:00:00:00:00)"),
                (None, None) => "none".into(),
            };
            let what = format!(
                "{name} (VXLAN port of {}: vni {}, udp {}, remote {remote_text}, underlay {})",
                br.name,
                v.vni,
                v.port,
                underlay.as_deref().unwrap_or("none")
            );
            let fdb_fix = format!(
                "`bridge fdb show dev {name}`; for flooding to a VTEP: `bridge fdb append \
                 00:00:00:00:00:00 dev {name} dst REMOTE_VTEP`"
            );
            let Some(remote) = remote else {
                if v.fdb_macs == 0 {
                    return check(
                        "vxlan",
                        CheckStatus::Fail,
                        format!(
                            "{what}: no default remote VTEP and no forwarding entry: every \
                             frame into the overlay is dropped (NO_TX_TARGET)"
                        ),
                        Some(fdb_fix),
                    );
                }
                return check(
                    "vxlan",
                    CheckStatus::Warn,
                    format!(
                        "{what}: no default remote VTEP; {} MAC{} {} a forwarding entry to a \
                         VTEP, frames to any other MAC (broadcasts and ARP included) are \
                         dropped (NO_TX_TARGET)",
                        v.fdb_macs,
                        if v.fdb_macs == 1 { "" } else { "s" },
                        if v.fdb_macs == 1 { "has" } else { "have" },
                    ),
                    Some(fdb_fix),
                );
            };
            let Some(ul) = underlay else {
                return check(
                    "vxlan",
                    CheckStatus::Fail,
                    format!(
                        "{what}: no route to the remote VTEP {remote} and no underlay device \
                         bound: the encapsulated packets have nowhere to go"
                    ),
                    Some(format!(
                        "`ip route get {remote}`; add the underlay route (`ip route add \
                         {remote} via UNDERLAY_GATEWAY`)"
                    )),
                );
            };
            let ul_mtu = c.h.devs.iter().find(|d| d.name == ul).and_then(|d| d.mtu);
            match ul_mtu {
                Some(m) if v.mtu + VXLAN_OVERHEAD > m => check(
                    "vxlan",
                    CheckStatus::Fail,
                    format!(
                        "{what}: MTU {} plus the {VXLAN_OVERHEAD} bytes of encapsulation is \
                         more than {ul}'s MTU {m}: full-size frames do not fit the underlay",
                        v.mtu
                    ),
                    Some(format!(
                        "`ip link set {name} mtu {}` (and the guests' MTU to match), or raise \
                         {ul}'s MTU to {}",
                        m.saturating_sub(VXLAN_OVERHEAD),
                        v.mtu + VXLAN_OVERHEAD
                    )),
                ),
                _ => check(
                    "vxlan",
                    CheckStatus::Pass,
                    format!(
                        "{what}: remote {remote} reached through {ul}, MTU {} fits {ul}{}",
                        v.mtu,
                        ul_mtu.map(|m| format!(" (MTU {m})")).unwrap_or_default()
                    ),
                    None,
                ),
            }
        })
        .collect()
}
