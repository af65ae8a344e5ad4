//! Who the client is: the `X-Client-ID` header (or the configured one) when present,
//! otherwise the peer IP, or the first untrusted hop of `X-Forwarded-For` when the peer is
//! a trusted proxy.

pub use crate::config::MAX_CLIENT_ID_BYTES;
use crate::config::key::{KeySource, is_key_value};
use crate::config::{Key, is_client_id};
use crate::error::ApiError;
use actix_web::http::header::{HeaderMap, HeaderName};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// An IP network such as `10.0.0.0/8` or `::1/128`; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has a prefix length outside 0..={max}"))?,
        };
        Ok(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
            if prefix == 0 {
                0
            } else {
                bits >> (width - prefix)
            }
        }
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net) as u128, self.prefix, 32)
                    == masked(u32::from(ip) as u128, self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), self.prefix, 128)
                    == masked(u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

/// The header rule and the trusted proxies.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub header: Option<HeaderName>,
    pub trusted_proxies: Vec<Cidr>,
}

/// 1 to 128 bytes of `A-Z a-z 0-9 . _ : @ -` (see [`crate::config::is_client_id`]).
pub fn validate_client_id(id: &str) -> Result<(), ApiError> {
    if is_client_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_client_id",
            "A client id is 1 to 128 characters of A-Z a-z 0-9 . _ : @ -",
        ))
    }
}

/// What an HTTP request gives a config's key.
struct HttpRequest<'a> {
    identity: &'a Identity,
    headers: &'a HeaderMap,
    peer: Option<SocketAddr>,
}

impl KeySource for HttpRequest<'_> {
    type Error = ApiError;

    fn client(&self) -> Result<Arc<str>, ApiError> {
        self.identity.client_id(self.headers, self.peer)
    }

    /// A request with no peer address (a Unix socket) has one "no address".
    fn ip(&self) -> Result<Arc<str>, ApiError> {
        Ok(self
            .identity
            .client_ip(self.headers, self.peer)
            .map_or_else(|| Arc::from("(no address)"), Key::ip_value))
    }

    fn header(&self, name: &str) -> Result<Option<&[u8]>, ApiError> {
        let mut values = self.headers.get_all(name);
        let first = values.next();
        if values.next().is_some() {
            return Err(ApiError::bad_request(
                "invalid_key",
                format!("Send one {name} header, not several: it counts this request's limit."),
            ));
        }
        Ok(first.map(|v| v.as_bytes()))
    }

    fn invalid_header(&self, message: String) -> ApiError {
        ApiError::bad_request("invalid_key", message)
    }
}

/// A client as the admin API and the feeds name it: a client id, or the value of a
/// config's key (`(global)`, `(x-tenant)acme`; see [`crate::config::key`]).
pub fn validate_key_value(id: &str) -> Result<(), ApiError> {
    if is_key_value(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_client_id",
            "A client is a client id (1 to 128 characters of A-Z a-z 0-9 . _ : @ -) or a \
             key value such as (global) or (x-tenant)acme",
        ))
    }
}

impl Identity {
    /// The value a request is counted under by a config keyed by `key` (see
    /// [`crate::config::key`]): its client id, its address, a header's value, or one
    /// value for every caller.
    pub fn key_value(
        &self,
        key: &Key,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Result<Arc<str>, ApiError> {
        if !key.is_client() {
            // Not counted, but still checked: a malformed id is bad input whatever the key.
            self.header_id(headers)?;
        }
        key.value(&HttpRequest {
            identity: self,
            headers,
            peer,
        })
    }

    /// The client id the request sends in the client-id header, validated; `None`
    /// without one (or with `--client-id-header none`).
    fn header_id<'h>(&self, headers: &'h HeaderMap) -> Result<Option<&'h str>, ApiError> {
        let Some(name) = &self.header else {
            return Ok(None);
        };
        let mut values = headers.get_all(name);
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(ApiError::bad_request(
                "invalid_client_id",
                format!("Send one {name} header, not several."),
            ));
        }
        let id = value.to_str().unwrap_or("");
        validate_client_id(id)?;
        Ok(Some(id))
    }

    pub fn client_id(
        &self,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Result<Arc<str>, ApiError> {
        if let Some(id) = self.header_id(headers)? {
            return Ok(Arc::from(id));
        }
        let ip = self.client_ip(headers, peer).ok_or_else(|| {
            ApiError::bad_request("unknown_client", "The client has no id and no address.")
        })?;
        Ok(Arc::from(ip.to_string()))
    }

    /// The peer, or behind trusted proxies the rightmost untrusted `X-Forwarded-For` hop.
    /// (`X-Real-IP` is not read: a proxy that is not told to set it passes a client's own
    /// copy through, and unlike `X-Forwarded-For` it has no hops to walk.)
    pub fn client_ip(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<IpAddr> {
        let peer = peer?.ip().to_canonical();
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let mut client = peer;
        // Walk from the nearest hop outward; every header line counts, in order.
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for hop in hops.iter().rev() {
            // A hop that does not parse was not written by a trusted proxy: stop at the
            // last address we can vouch for.
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                break;
            };
            client = ip.to_canonical();
            if !self.is_trusted(client) {
                break;
            }
        }
        Some(client)
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_static(k),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn identity(trusted: &[&str]) -> Identity {
        Identity {
            header: Some(HeaderName::from_static("x-client-id")),
            trusted_proxies: trusted.iter().map(|c| Cidr::parse(c).unwrap()).collect(),
        }
    }

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().unwrap(), 4000))
    }

    #[test]
    fn prefers_a_valid_header_and_rejects_bad_ones() {
        let id = identity(&[]);
        let got = id.client_id(&headers(&[("x-client-id", "user-1@x.io")]), peer("1.2.3.4"));
        assert_eq!(&*got.unwrap(), "user-1@x.io");
        let long = "a".repeat(129);
        for bad in ["", "a b", "ü", "a/b", long.as_str()] {
            assert!(
                id.client_id(&headers(&[("x-client-id", bad)]), peer("1.2.3.4"))
                    .is_err(),
                "{bad:?}"
            );
        }
        let two = headers(&[("x-client-id", "a"), ("x-client-id", "b")]);
        assert!(id.client_id(&two, peer("1.2.3.4")).is_err());
    }

    #[test]
    fn falls_back_to_the_peer_and_ignores_the_header_when_told() {
        let mut id = identity(&[]);
        assert_eq!(
            &*id.client_id(&headers(&[]), peer("::ffff:1.2.3.4")).unwrap(),
            "1.2.3.4"
        );
        id.header = None;
        let h = headers(&[("x-client-id", "spoofed")]);
        assert_eq!(&*id.client_id(&h, peer("1.2.3.4")).unwrap(), "1.2.3.4");
    }

    #[test]
    fn honours_forwarded_for_only_behind_trusted_proxies() {
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 5.5.5.5, 10.0.0.2")]);
        let id = Identity {
            header: None,
            ..identity(&["10.0.0.0/8"])
        };
        assert_eq!(&*id.client_id(&h, peer("10.0.0.1")).unwrap(), "5.5.5.5");
        // An untrusted peer's header is ignored.
        assert_eq!(&*id.client_id(&h, peer("7.7.7.7")).unwrap(), "7.7.7.7");
        // A garbage hop stops the walk at the last trusted address.
        let h = headers(&[("x-forwarded-for", "5.5.5.5, junk")]);
        assert_eq!(&*id.client_id(&h, peer("10.0.0.1")).unwrap(), "10.0.0.1");
    }

    #[test]
    fn never_believes_x_real_ip() {
        let id = Identity {
            header: None,
            ..identity(&["10.0.0.0/8"])
        };
        let h = headers(&[("x-real-ip", "127.0.0.1")]);
        assert_eq!(&*id.client_id(&h, peer("10.0.0.1")).unwrap(), "10.0.0.1");
    }

    #[test]
    fn parses_and_matches_cidrs() {
        let net = Cidr::parse("192.168.0.0/16").unwrap();
        assert!(net.contains("192.168.4.5".parse().unwrap()));
        assert!(!net.contains("192.169.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        for bad in ["", "1.2.3", "1.2.3.4/33", "::/129", "x/8"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
