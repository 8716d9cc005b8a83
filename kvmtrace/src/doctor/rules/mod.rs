//! nftables chains and rules (iptables-nft's included), read by the host's nftables reader
//! (`host/nftables/`) and judged against a model packet.
//!
//! A rule is decoded into conditions (`ip saddr 10.77.0.0/24`, `oifname "up0"`, `ct state
//! established,related`, …) and an action (accept, drop, jump, masquerade, …). Only what a
//! verdict about a VM's path needs is understood exactly: IPv4 and IPv6 source and destination
//! prefixes, interface names and indexes, conntrack state, the protocol family. Everything else
//! (ports, sets, marks, limits, …) is kept as text and judged *maybe*, so an answer is either
//! certain or says which rule it depends on.
//!
//! Expression layouts: `include/uapi/linux/netfilter/nf_tables.h` (Linux 6.18); iptables-nft's
//! compat `match`/`target` payloads: `include/uapi/linux/netfilter/xt_conntrack.h`, `xt_state.h`.
//!
//! Layout: [`model`] (prefixes, conditions, actions, rules, chains), [`decode`] (the
//! kernel's expressions, as the reader lists them, into conditions), [`judge`] (a model packet walked through a base
//! chain).

mod decode;
mod judge;
mod model;
#[cfg(test)]
mod tests;

pub use decode::read_ruleset;
pub use judge::*;
pub use model::*;
