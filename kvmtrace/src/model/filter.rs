//! What `follow` follows besides the destination: the protocol and the remote port. Parsed
//! once, from the flags (`--proto`, `--port`) or from the terminal UI's `/` filter, and carried
//! typed to the kernel programs' config and the nftables rule tracer, which alone turn it into
//! protocol numbers.

/// The protocol followed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Proto {
    Icmp,
    Tcp,
    Udp,
    #[default]
    Any,
}

impl Proto {
    /// In the order `--proto` lists them.
    pub const ALL: [Proto; 4] = [Proto::Icmp, Proto::Tcp, Proto::Udp, Proto::Any];

    /// Its word on the command line and in the status line.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Icmp => "icmp",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Any => "any",
        }
    }

    /// A name as typed (any case; `all` and `ip` mean any).
    pub fn from_name(s: &str) -> Option<Proto> {
        match s.to_ascii_lowercase().as_str() {
            "any" | "all" | "ip" => Some(Proto::Any),
            "icmp" => Some(Proto::Icmp),
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => None,
        }
    }

    /// The IP protocol number the kernel programs match: 0 for any; ICMP is 1 for both
    /// versions (the programs accept ICMPv6 for it).
    pub fn number(self) -> u8 {
        match self {
            Proto::Icmp => 1,
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Any => 0,
        }
    }

    /// The protocol number on the wire towards a destination of that version: ICMP is
    /// ICMPv6 (58) over IPv6.
    pub fn number_for(self, v6: bool) -> u8 {
        match (self, v6) {
            (Proto::Icmp, true) => 58,
            (p, _) => p.number(),
        }
    }

    /// Its packets have ports (any protocol may: TCP, UDP, SCTP).
    pub fn has_ports(self) -> bool {
        !matches!(self, Proto::Icmp)
    }
}

/// The protocol and remote port followed (`follow --proto … --port …`, the TUI's `/`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketFilter {
    pub proto: Proto,
    /// The remote TCP/UDP port; None: any (never 0).
    pub port: Option<u16>,
}

impl PacketFilter {
    /// Refuses a port with ICMP (nothing would ever match) and port 0.
    pub fn new(proto: Proto, port: Option<u16>) -> Result<PacketFilter, String> {
        match port {
            Some(_) if !proto.has_ports() => {
                Err("a port applies to tcp and udp, not icmp".to_string())
            }
            Some(0) => Err("'0' is not a port (1-65535)".to_string()),
            _ => Ok(PacketFilter { proto, port }),
        }
    }

    /// What is typed after `/` in the terminal UI: `tcp 443`, `tcp port 443`, `udp 53`,
    /// `icmp`, `any`, `443` (any protocol, that port) or nothing (any). Err: a message for
    /// the input line.
    pub fn parse(s: &str) -> Result<PacketFilter, String> {
        let words: Vec<&str> = s
            .split_whitespace()
            .filter(|w| !w.eq_ignore_ascii_case("port"))
            .collect();
        let unknown = |w: &str| format!("unknown protocol '{w}': icmp, tcp, udp or any");
        let port_of = |w: &str| {
            w.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("'{w}' is not a port (1-65535)"))
        };
        let (proto, port) = match words.as_slice() {
            [] => (Proto::Any, None),
            [w] => match Proto::from_name(w) {
                Some(p) => (p, None),
                None if w.chars().all(|c| c.is_ascii_digit()) => (Proto::Any, Some(port_of(w)?)),
                None => return Err(unknown(w)),
            },
            [p, n] => (
                Proto::from_name(p).ok_or_else(|| unknown(p))?,
                Some(port_of(n)?),
            ),
            _ => return Err("expected: PROTO [PORT], e.g. 'tcp 443', 'icmp', 'any'".into()),
        };
        PacketFilter::new(proto, port)
    }

    /// The port as the kernel programs take it: 0 for any.
    pub fn port_number(&self) -> u16 {
        self.port.unwrap_or(0)
    }

    /// How it is shown (status line, the trace's `filter`): `any`, `icmp`, `tcp port 443`,
    /// `any port 53`.
    pub fn label(&self) -> String {
        match self.port {
            None => self.proto.name().to_string(),
            Some(p) => format!("{} port {p}", self.proto.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(proto: Proto, port: Option<u16>) -> PacketFilter {
        PacketFilter { proto, port }
    }

    #[test]
    fn filters_parse_as_typed() {
        let p = PacketFilter::parse;
        assert_eq!(p("tcp 443"), Ok(f(Proto::Tcp, Some(443))));
        assert_eq!(p("  TCP port 443 "), Ok(f(Proto::Tcp, Some(443))));
        assert_eq!(p("udp 53"), Ok(f(Proto::Udp, Some(53))));
        assert_eq!(p("icmp"), Ok(f(Proto::Icmp, None)));
        assert_eq!(p("any"), Ok(f(Proto::Any, None)));
        assert_eq!(p(""), Ok(f(Proto::Any, None)));
        assert_eq!(p("8080"), Ok(f(Proto::Any, Some(8080))));
        assert_eq!(
            p("icmp 7").unwrap_err(),
            "a port applies to tcp and udp, not icmp"
        );
        assert!(p("sctp").unwrap_err().contains("unknown protocol"));
        assert!(p("tcp 0").unwrap_err().contains("not a port"));
        assert!(p("tcp 70000").unwrap_err().contains("not a port"));
        assert!(p("tcp 1 2").is_err());
    }

    #[test]
    fn labels_numbers_and_names() {
        assert_eq!(f(Proto::Any, None).label(), "any");
        assert_eq!(f(Proto::Icmp, None).label(), "icmp");
        assert_eq!(f(Proto::Tcp, Some(443)).label(), "tcp port 443");
        assert_eq!(f(Proto::Any, Some(53)).label(), "any port 53");
        assert_eq!(Proto::Icmp.number_for(true), 58);
        assert_eq!(Proto::Icmp.number_for(false), 1);
        assert_eq!(Proto::Udp.number_for(true), 17);
        for p in Proto::ALL {
            assert_eq!(Proto::from_name(p.name()), Some(p));
        }
        assert!(!Proto::Icmp.has_ports() && Proto::Any.has_ports());
    }
}
