//! The destination of `follow` (and doctor's `--dest`), parsed once into prefixes.

use anyhow::{anyhow, Result};
use std::net::IpAddr;

/// Parses a destination: an IPv4 or IPv6 address (a /32 or /128) or a prefix
/// (`203.0.113.0/24`, `2001:db8::/64`; host bits are cleared).
pub fn parse_dest(s: &str) -> Result<ipnet::IpNet> {
    let bad = || {
        anyhow!(
            "'{s}' is not an IP address or prefix (examples: 203.0.113.1, 203.0.113.0/24, \
             2001:db8::1, 2001:db8::/64)"
        )
    };
    match s.split_once('/') {
        Some((a, p)) => {
            let addr: IpAddr = a.parse().map_err(|_| bad())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if !p.parse::<u8>().is_ok_and(|p| p <= max) {
                return Err(anyhow!("bad prefix length in '{s}': expected 0-{max}"));
            }
            let net: ipnet::IpNet = s.parse().map_err(|_| bad())?;
            Ok(net.trunc())
        }
        None => Ok(ipnet::IpNet::from(s.parse::<IpAddr>().map_err(|_| bad())?)),
    }
}

/// Parses `follow`'s one or two destinations: at most one per IP version.
pub fn parse_dests(v: &[String]) -> Result<Vec<ipnet::IpNet>> {
    let nets = v
        .iter()
        .map(|d| parse_dest(d))
        .collect::<Result<Vec<_>>>()?;
    if let [a, b] = nets.as_slice() {
        if a.addr().is_ipv4() == b.addr().is_ipv4() {
            return Err(anyhow!(
                "'{a}' and '{b}' are both {}: give one destination, or one IPv4 and one IPv6 \
                 to follow both versions at once",
                if a.addr().is_ipv4() { "IPv4" } else { "IPv6" }
            ));
        }
    }
    Ok(nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dest_forms() {
        let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
        assert_eq!(parse_dest("203.0.113.1").unwrap(), net("203.0.113.1/32"));
        assert_eq!(
            parse_dest("198.51.100.7/24").unwrap(),
            net("198.51.100.0/24")
        );
        assert!(parse_dest("203.0.113.1/33").is_err());
        let e = parse_dest("not-an-ip").unwrap_err().to_string();
        assert!(e.contains("not an IP address"), "{e}");
        assert_eq!(parse_dest("2001:db8::1").unwrap(), net("2001:db8::1/128"));
        assert_eq!(parse_dest("2001:db8::5/32").unwrap(), net("2001:db8::/32"));
        let e = parse_dest("2001:db8::/129").unwrap_err().to_string();
        assert!(e.contains("0-128"), "{e}");
        let both = ["203.0.113.1".to_string(), "2001:db8::1".to_string()];
        assert_eq!(parse_dests(&both).unwrap().len(), 2);
        let two4 = ["203.0.113.1".to_string(), "198.51.100.1".to_string()];
        let e = parse_dests(&two4).unwrap_err().to_string();
        assert!(e.contains("both IPv4"), "{e}");
    }
}
