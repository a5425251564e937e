//! Peer addresses: `ip:port`, `[ipv6]:port` or `hostname:port`, and the
//! canonical spelling of socket addresses seen on dual-stack sockets.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::identity::PeerId;

/// How long a hostname lookup may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A peer address: `ip:port`, `[ipv6]:port` or `hostname:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerAddr {
    Socket(SocketAddr),
    Host { host: String, port: u16 },
}

/// Why a string is not a [`PeerAddr`].
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid peer address {input:?}: {reason} (expected ip:port, [ipv6]:port or hostname:port)"
)]
pub struct ParsePeerAddrError {
    input: String,
    reason: &'static str,
}

impl FromStr for PeerAddr {
    type Err = ParsePeerAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParsePeerAddrError {
            input: s.to_string(),
            reason,
        };
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self::Socket(addr));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| err("missing port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| err("port is not a number in 0..=65535"))?;
        if port == 0 {
            return Err(err("port 0 cannot be dialed"));
        }
        if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
            // "::1:5" or "[bad]:5": an IPv6 address needs brackets, and must be valid.
            return Err(err("IPv6 addresses must be written [addr]:port"));
        }
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        let name = host.strip_suffix('.').unwrap_or(host);
        if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
            return Err(err("not a valid IP address or hostname"));
        }
        if name
            .split('.')
            .all(|l| l.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(err("not a valid IPv4 address"));
        }
        Ok(Self::Host {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Socket(a) => write!(f, "{a}"),
            Self::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(a: SocketAddr) -> Self {
        Self::Socket(a)
    }
}

impl Serialize for PeerAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PeerAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl PeerAddr {
    /// Resolve to socket addresses (DNS for hostnames).
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        match self {
            Self::Socket(a) => Ok(vec![*a]),
            Self::Host { host, port } => {
                let lookup = tokio::net::lookup_host((host.as_str(), *port));
                match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                    Ok(addrs) => Ok(addrs?.collect()),
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("resolving {host} took over {RESOLVE_TIMEOUT:?}"),
                    )),
                }
            }
        }
    }
}

/// Map IPv4-mapped IPv6 addresses (`[::ffff:1.2.3.4]:5`, as seen on a
/// dual-stack socket) to plain IPv4, so one peer has one spelling.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// An address, optionally pinned to an identity: `addr` or `PEERID@addr`
/// (64 hex characters, `@`, then any [`PeerAddr`] form).
///
/// A pinned peer counts only if it proves that key in the TLS handshake;
/// an unpinned one is whoever answers at the address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerSpec {
    /// The identity the peer must prove, if pinned.
    pub id: Option<PeerId>,
    /// Where to reach it.
    pub addr: PeerAddr,
}

/// Why a string is not a [`PeerSpec`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParsePeerSpecError {
    /// The part before `@` is not a peer id.
    #[error("{source} (in {input:?})")]
    Id {
        input: String,
        source: crate::identity::ParsePeerIdError,
    },
    /// The address part is not valid.
    #[error(transparent)]
    Addr(#[from] ParsePeerAddrError),
}

impl FromStr for PeerSpec {
    type Err = ParsePeerSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('@') {
            Some((id, addr)) => Ok(Self {
                id: Some(id.parse().map_err(|source| ParsePeerSpecError::Id {
                    input: s.to_string(),
                    source,
                })?),
                addr: addr.parse()?,
            }),
            None => Ok(Self {
                id: None,
                addr: s.parse()?,
            }),
        }
    }
}

impl fmt::Display for PeerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            Some(id) => write!(f, "{id}@{}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

impl From<PeerAddr> for PeerSpec {
    fn from(addr: PeerAddr) -> Self {
        Self { id: None, addr }
    }
}

impl From<SocketAddr> for PeerSpec {
    fn from(addr: SocketAddr) -> Self {
        Self {
            id: None,
            addr: addr.into(),
        }
    }
}

impl Serialize for PeerSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PeerSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_address_forms() {
        assert!(matches!("127.0.0.1:12000".parse(), Ok(PeerAddr::Socket(_))));
        assert!(matches!("[::1]:12000".parse(), Ok(PeerAddr::Socket(_))));
        assert_eq!(
            "boot.example.org:12000".parse::<PeerAddr>().unwrap(),
            PeerAddr::Host {
                host: "boot.example.org".into(),
                port: 12000
            }
        );
        for bad in [
            "127.0.0.1",
            "::1:12000",
            "host:",
            "host:99999",
            "-bad-:1",
            "1.2.3:5",
            "a b:1",
            ":5",
            "[::1:5",
        ] {
            let err = bad.parse::<PeerAddr>();
            assert!(err.is_err(), "{bad} should be rejected");
            assert!(
                err.unwrap_err().to_string().contains(bad),
                "error names the input"
            );
        }
    }

    #[test]
    fn peer_specs_pin_an_identity_or_not() {
        let id = "19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1";
        let pinned: PeerSpec = format!("{id}@127.0.0.1:7").parse().unwrap();
        assert_eq!(pinned.id.unwrap().to_string(), id);
        assert_eq!(pinned.to_string(), format!("{id}@127.0.0.1:7"));
        let open: PeerSpec = "boot.example.org:12000".parse().unwrap();
        assert_eq!(open.id, None);
        let err = "abc@127.0.0.1:7"
            .parse::<PeerSpec>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid peer id"), "{err}");
        assert!("@127.0.0.1:7".parse::<PeerSpec>().is_err());
    }

    #[test]
    fn canonical_unmaps_ipv4() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5".parse().unwrap();
        assert_eq!(canonical(mapped), "127.0.0.1:5".parse().unwrap());
    }
}
