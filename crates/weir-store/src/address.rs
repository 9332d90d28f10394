//! Which network addresses a URI from data may reach: only public internet addresses, unless an
//! address range is allow-listed.
//!
//! The check is made on the addresses a host name resolves to (by the resolver of
//! [`crate::http`]), on literal addresses in URLs, and again for every redirect, so a name that
//! resolves to a loopback, private, link-local or cloud-metadata address is refused like the
//! literal address would be.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use weir_types::{Error, Result};

/// Why an address is not public, for messages: `loopback`, `private`, `link-local (cloud
/// metadata)`, ...; `None` for a public address.
pub fn non_public_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    let in_net = |net: [u8; 4], bits: u32| {
        let mask = if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
    };
    Some(if o[0] == 0 {
        "unspecified (0.0.0.0/8 reaches this host)"
    } else if ip.is_loopback() {
        "loopback"
    } else if ip.is_private() {
        "private"
    } else if ip.is_link_local() {
        "link-local (cloud metadata)"
    } else if in_net([100, 64, 0, 0], 10) {
        "shared address space (100.64.0.0/10, cloud metadata)"
    } else if in_net([192, 0, 0, 0], 24) {
        "IETF protocol assignment"
    } else if in_net([192, 0, 2, 0], 24)
        || in_net([198, 51, 100, 0], 24)
        || in_net([203, 0, 113, 0], 24)
    {
        "documentation"
    } else if in_net([198, 18, 0, 0], 15) {
        "benchmarking"
    } else if in_net([192, 88, 99, 0], 24) {
        "6to4 relay"
    } else if ip.is_multicast() {
        "multicast"
    } else if o[0] >= 240 {
        "reserved or broadcast"
    } else {
        return None;
    })
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    // Addresses that embed an IPv4 address are judged by it.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_class(v4);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        // NAT64 (64:ff9b::/96)
        return v4_class(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    if s[0] == 0x2002 {
        // 6to4 (2002::/16) carries an IPv4 address in bits 16..48
        return v4_class(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    Some(if ip.is_unspecified() {
        "unspecified"
    } else if ip.is_loopback() {
        "loopback"
    } else if s[0..6] == [0, 0, 0, 0, 0, 0] {
        // IPv4-compatible (::a.b.c.d, deprecated)
        return v4_class(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ))
        .or(Some("IPv4-compatible"));
    } else if (s[0] & 0xfe00) == 0xfc00 {
        "unique local (fc00::/7, includes fd00:ec2::254 cloud metadata)"
    } else if (s[0] & 0xffc0) == 0xfe80 {
        "link-local"
    } else if (s[0] & 0xffc0) == 0xfec0 {
        "site-local"
    } else if (s[0] & 0xff00) == 0xff00 {
        "multicast"
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        "documentation"
    } else if s[0] == 0x0100 && s[1..4] == [0, 0, 0] {
        "discard"
    } else {
        return None;
    })
}

/// Which addresses URIs from data may reach: public ones, plus the allow-listed ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Ranges allowed although not public (`127.0.0.1/32`, `10.0.0.0/8`, `fd00::/8`).
    pub allow: Vec<IpNet>,
}

impl AddressPolicy {
    /// A policy allowing public addresses and `allow` (each a CIDR range or a single address).
    /// Errors (kind `Config`) name an entry that is neither.
    pub fn new<S: AsRef<str>>(allow: &[S]) -> Result<Self> {
        let allow = allow
            .iter()
            .map(|a| {
                let a = a.as_ref().trim();
                a.parse::<IpNet>()
                    .or_else(|_| a.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|e| {
                        Error::config(format!(
                            "'{a}' is not an address range (write 10.0.0.0/8, 127.0.0.1 or fd00::/8)"
                        ))
                        .with_source(e)
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AddressPolicy { allow })
    }

    /// Whether `ip` may be reached: `Err` (kind `InvalidInput`) says why not, naming `host`.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<()> {
        let Some(class) = non_public_class(ip) else {
            return Ok(());
        };
        if self.allow.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        let what = if host == ip.to_string() || host.trim_matches(['[', ']']) == ip.to_string() {
            format!("address {ip}")
        } else {
            format!("host '{host}' resolves to {ip}, which")
        };
        Err(Error::input(format!(
            "refused: {what} is a {class} address (allow its range in allow_addresses to reach it)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn classes() {
        for refused in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "fd00:ec2::254",
            "fe80::1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "::127.0.0.1",
            "ff02::1",
        ] {
            assert!(non_public_class(ip(refused)).is_some(), "{refused}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "93.184.216.34",
        ] {
            assert_eq!(non_public_class(ip(public)), None, "{public}");
        }
    }

    #[test]
    fn allow_list_and_messages() {
        let p = AddressPolicy::new(&["127.0.0.1/32", "fd00::/8"]).expect("policy");
        assert!(p.check("x", ip("127.0.0.1")).is_ok());
        assert!(p.check("x", ip("fd00:ec2::254")).is_ok());
        let e = p.check("evil.test", ip("127.0.0.2")).expect_err("refused");
        assert!(
            e.message()
                .contains("host 'evil.test' resolves to 127.0.0.2, which is a loopback address"),
            "{e}"
        );
        let e = AddressPolicy::default()
            .check("169.254.169.254", ip("169.254.169.254"))
            .expect_err("metadata");
        assert!(
            e.message()
                .contains("address 169.254.169.254 is a link-local"),
            "{e}"
        );
        assert!(AddressPolicy::new(&["nonsense"]).is_err());
        assert!(AddressPolicy::new(&["10.0.0.1"]).is_ok());
    }
}
