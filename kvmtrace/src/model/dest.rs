//! A destination as the operator writes it (`follow`'s DEST, `doctor --dest`), parsed once:
//! the address as written, which a route lookup asks for, and its prefix (host bits cleared),
//! which the followed packets go to.

use ipnet::IpNet;
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dest {
    /// As written: `2001:db8::5/64` looks the route up for 2001:db8::5.
    pub addr: IpAddr,
    /// The prefix (a /32 or /128 for an address).
    pub net: IpNet,
}

impl From<IpNet> for Dest {
    fn from(net: IpNet) -> Self {
        Dest {
            addr: net.addr(),
            net,
        }
    }
}

const EXAMPLES: &str = "examples: 203.0.113.1, 203.0.113.0/24, 2001:db8::1, 2001:db8::/32";

fn version(a: IpAddr) -> &'static str {
    if a.is_ipv6() {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// Parses an IPv4 or IPv6 unicast address or prefix.
pub fn parse_dest(s: &str) -> Result<Dest, String> {
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = a
        .parse()
        .map_err(|_| format!("'{s}' is not an IPv4 or IPv6 address or prefix ({EXAMPLES})"))?;
    let max = if addr.is_ipv6() { 128 } else { 32 };
    let len = match len {
        None => max,
        Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| {
            format!(
                "bad prefix length in '{s}': expected 0-{max} for an {} address",
                version(addr)
            )
        })?,
    };
    // A prefix may start at the unspecified address (0.0.0.0/0, ::/0: everything, what
    // watch's flight recorder follows); an address alone may not.
    let whole = len < max;
    if (addr.is_unspecified() && !whole) || (addr.is_multicast() && len >= 4) {
        return Err(format!("'{s}' is not a unicast destination ({EXAMPLES})"));
    }
    let net = IpNet::new(addr, len).map_err(|e| format!("'{s}': {e}"))?;
    Ok(Dest {
        addr,
        net: net.trunc(),
    })
}

/// `follow`'s one or two destinations: at most one per IP version.
pub fn parse_dests(v: &[String]) -> Result<Vec<Dest>, String> {
    let dests = v
        .iter()
        .map(|d| parse_dest(d))
        .collect::<Result<Vec<_>, _>>()?;
    if let [a, b] = dests.as_slice() {
        if a.addr.is_ipv4() == b.addr.is_ipv4() {
            return Err(format!(
                "'{}' and '{}' are both {}: give one destination, or one IPv4 and one IPv6 to \
                 follow both versions at once",
                a.net,
                b.net,
                version(a.addr)
            ));
        }
    }
    Ok(dests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_prefixes_of_both_versions() {
        let d = parse_dest("2001:db8:ffff::1").unwrap();
        assert_eq!(d.addr, "2001:db8:ffff::1".parse::<IpAddr>().unwrap());
        assert_eq!(d.net.to_string(), "2001:db8:ffff::1/128");
        let d = parse_dest("2001:db8:ffff::5/48").unwrap();
        assert_eq!(d.addr, "2001:db8:ffff::5".parse::<IpAddr>().unwrap());
        assert_eq!(d.net.to_string(), "2001:db8:ffff::/48");
        let d = parse_dest("203.0.113.7/24").unwrap();
        assert_eq!(d.net.to_string(), "203.0.113.0/24");
        assert_eq!(parse_dest("203.0.113.1").unwrap().net.prefix_len(), 32);
        let n: IpNet = "198.51.100.0/24".parse().unwrap();
        assert_eq!(Dest::from(n).addr, n.addr());
    }

    #[test]
    fn clear_errors() {
        assert_eq!(
            parse_dest("vm1").unwrap_err(),
            "'vm1' is not an IPv4 or IPv6 address or prefix (examples: 203.0.113.1, 203.0.113.0/24, 2001:db8::1, 2001:db8::/32)"
        );
        assert_eq!(
            parse_dest("203.0.113.1/40").unwrap_err(),
            "bad prefix length in '203.0.113.1/40': expected 0-32 for an IPv4 address"
        );
        assert_eq!(
            parse_dest("2001:db8::/x").unwrap_err(),
            "bad prefix length in '2001:db8::/x': expected 0-128 for an IPv6 address"
        );
        assert!(parse_dest("::")
            .unwrap_err()
            .contains("not a unicast destination"));
        assert!(parse_dest("224.0.0.1").is_err());
        assert!(parse_dest("ff02::/16").is_err());
        // Everything: watch's flight recorder follows both versions' default prefixes.
        assert_eq!(
            parse_dest("0.0.0.0/0").unwrap().net.to_string(),
            "0.0.0.0/0"
        );
        assert_eq!(parse_dest("::/0").unwrap().net.to_string(), "::/0");
        let both = ["0.0.0.0/0".to_string(), "::/0".to_string()];
        assert_eq!(parse_dests(&both).unwrap().len(), 2);
    }

    #[test]
    fn one_destination_per_version() {
        let both = ["203.0.113.1".to_string(), "2001:db8::1".to_string()];
        assert_eq!(parse_dests(&both).unwrap().len(), 2);
        let two4 = ["203.0.113.1".to_string(), "198.51.100.1".to_string()];
        let e = parse_dests(&two4).unwrap_err();
        assert!(e.contains("both IPv4"), "{e}");
    }
}
