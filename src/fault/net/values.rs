//! Owns the value types of the network faults: addresses and networks, bit rates, directions and
//! matches, as users write them and as they travel on the wire.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An address or a network: `10.0.0.5`, `10.0.1.0/24`, `fd00::/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cidr {
    pub(crate) addr: IpAddr,
    pub(crate) prefix: u8,
}

impl Cidr {
    pub(crate) fn is_ipv6(self) -> bool {
        self.addr.is_ipv6()
    }

    fn max_prefix(addr: IpAddr) -> u8 {
        if addr.is_ipv6() { 128 } else { 32 }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "invalid address `{s}`: {why}; write e.g. `10.0.0.5`, `10.0.1.0/24` or `fd00::/8`"
            )
        };
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
        let max = Cidr::max_prefix(addr);
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| bad("the prefix length is out of range"))?,
        };
        let network = mask(addr, prefix);
        if network != addr {
            // nft and tc would silently widen or reject it; say which network was probably meant.
            return Err(format!(
                "invalid address `{s}`: host bits are set after the /{prefix}; did you mean `{network}/{prefix}`?"
            ));
        }
        Ok(Cidr { addr, prefix })
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a) & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(bits.into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a) & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(bits.into())
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix == Cidr::max_prefix(self.addr) {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

/// A rate in bits per second, written the way `tc` reads it: `1mbit`, `500kbit`, `1gbit`, `64kbps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BitRate(pub(crate) u64);

impl FromStr for BitRate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid rate `{s}`: write a whole number with a unit, e.g. `1mbit`, `500kbit`, `1gbit` or `64kbps` (bytes)"
            )
        };
        let (n, unit) = crate::units::number_and_unit(s).ok_or_else(bad)?;
        // The units of tc(8): SI multiples; `bps` means bytes per second.
        let bits_per_unit: u64 = match unit.to_ascii_lowercase().as_str() {
            "bit" => 1,
            "kbit" => 1_000,
            "mbit" => 1_000_000,
            "gbit" => 1_000_000_000,
            "bps" => 8,
            "kbps" => 8_000,
            "mbps" => 8_000_000,
            "gbps" => 8_000_000_000,
            _ => return Err(bad()),
        };
        match n.checked_mul(bits_per_unit) {
            Some(0) => Err(format!(
                "invalid rate `{s}`: a rate of zero would stop all traffic; use `partition` for that"
            )),
            Some(bits) => Ok(BitRate(bits)),
            None => Err(bad()),
        }
    }
}

impl fmt::Display for BitRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            b if b % 1_000_000_000 == 0 => write!(f, "{}gbit", b / 1_000_000_000),
            b if b % 1_000_000 == 0 => write!(f, "{}mbit", b / 1_000_000),
            b if b % 1_000 == 0 => write!(f, "{}kbit", b / 1_000),
            b => write!(f, "{b}bit"),
        }
    }
}

crate::units::serde_via_str!(Cidr, BitRate);

/// Which packets a firewall fault acts on, relative to this host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Direction {
    /// Packets this host sends.
    Egress,
    /// Packets this host receives.
    Ingress,
    /// Both; see [`NetMatch`] for how `dst` and `src` read on the way in.
    #[default]
    Both,
}

/// The packets a `network-loss` fault drops.
///
/// `dst` and `src` are the packet's own destination and source addresses. With
/// `direction = "both"`, incoming packets are matched mirrored — those coming back from `dst` to
/// `src` — so one match describes both halves of a conversation. `port` matches either the source
/// or the destination port, TCP or UDP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NetMatch {
    pub(crate) dst: Option<Cidr>,
    pub(crate) src: Option<Cidr>,
    pub(crate) port: Option<u16>,
    /// `None` means both, as given: kept apart so a match with no key at all can be refused.
    #[serde(default)]
    pub(crate) direction: Option<Direction>,
}

impl NetMatch {
    pub(crate) fn direction(&self) -> Direction {
        self.direction.unwrap_or_default()
    }
}

/// "to DST from SRC on port P", each part only when given: how plans and reports name a match.
fn described_match(dst: Option<Cidr>, src: Option<Cidr>, port: Option<u16>) -> Vec<String> {
    let mut parts = Vec::new();
    if let Some(dst) = dst {
        parts.push(format!("to {dst}"));
    }
    if let Some(src) = src {
        parts.push(format!("from {src}"));
    }
    if let Some(port) = port {
        parts.push(format!("on port {port}"));
    }
    parts
}

impl fmt::Display for NetMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = described_match(self.dst, self.src, self.port);
        let described = if parts.is_empty() {
            String::new()
        } else {
            format!(" {}", parts.join(" "))
        };
        match self.direction() {
            Direction::Egress => write!(f, "outgoing packets{described}"),
            Direction::Ingress => write!(f, "incoming packets{described}"),
            Direction::Both if self.dst.is_some() || self.src.is_some() => {
                write!(f, "packets{described}, and the incoming ones back")
            }
            Direction::Both => write!(f, "packets{described} in both directions"),
        }
    }
}

/// `match = { dst, src, port, direction }` of the network faults, as written; which keys apply
/// is decided by the kind that reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MatchTable {
    pub(crate) dst: Option<Cidr>,
    pub(crate) src: Option<Cidr>,
    pub(crate) port: Option<u16>,
    pub(crate) direction: Option<Direction>,
}

/// `device = "eth0"`, which the tc kinds need.
pub(crate) fn device(
    kind: &str,
    device: Option<String>,
) -> Result<String, crate::fault::FieldError> {
    device.ok_or_else(|| {
        crate::fault::FieldError::raw(
            "device",
            format!(
                "kind `{kind}` needs `device`, the network interface, e.g. `device = \"eth0\"`"
            ),
        )
    })
}

/// The match of a tc fault: tc shapes what leaves a device, so only egress makes sense.
pub(crate) fn tc_match(m: Option<MatchTable>) -> Result<TcMatch, crate::fault::FieldError> {
    let Some(m) = m else {
        return Ok(TcMatch::default());
    };
    if m.direction.is_some_and(|d| d != Direction::Egress) {
        return Err(crate::fault::FieldError::raw(
            "match",
            "tc acts on what leaves `device`, so `direction` can only be \"egress\" here"
                .to_owned(),
        ));
    }
    if m.dst.is_none() && m.src.is_none() && m.port.is_none() {
        return Err(crate::fault::FieldError::raw(
            "match",
            "`match` needs at least one of `dst`, `src` or `port`; leave it out to act on the whole device".to_owned(),
        ));
    }
    Ok(TcMatch {
        dst: m.dst,
        src: m.src,
        port: m.port,
    })
}

/// The packets a tc fault shapes. tc acts on what leaves a device, so there is no direction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TcMatch {
    pub(crate) dst: Option<Cidr>,
    pub(crate) src: Option<Cidr>,
    pub(crate) port: Option<u16>,
}

impl TcMatch {
    pub(crate) fn is_empty(&self) -> bool {
        self.dst.is_none() && self.src.is_none() && self.port.is_none()
    }
}

impl fmt::Display for TcMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = described_match(self.dst, self.src, self.port);
        if parts.is_empty() {
            f.write_str("all packets")
        } else {
            write!(f, "packets {}", parts.join(" "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_and_without_prefix() {
        assert_eq!("10.0.0.5".parse::<Cidr>().unwrap().to_string(), "10.0.0.5");
        assert_eq!(
            "10.0.1.0/24".parse::<Cidr>().unwrap().to_string(),
            "10.0.1.0/24"
        );
        assert_eq!("fd00::/8".parse::<Cidr>().unwrap().to_string(), "fd00::/8");
        assert_eq!(
            "10.0.0.5/32".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.5"
        );
        let e = "10.0.1.7/24".parse::<Cidr>().unwrap_err();
        assert!(e.contains("did you mean `10.0.1.0/24`?"), "{e}");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("db.internal".parse::<Cidr>().is_err());
    }

    #[test]
    fn rates_use_tc_units() {
        assert_eq!("1mbit".parse::<BitRate>().unwrap(), BitRate(1_000_000));
        assert_eq!("64kbps".parse::<BitRate>().unwrap(), BitRate(512_000));
        assert_eq!(BitRate(1_000_000).to_string(), "1mbit");
        assert_eq!(BitRate(512_000).to_string(), "512kbit");
        assert!("0mbit".parse::<BitRate>().unwrap_err().contains("zero"));
        assert!("1.5mbit".parse::<BitRate>().is_err());
        assert!("10 furlongs".parse::<BitRate>().is_err());
    }
}
