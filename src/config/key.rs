//! What a config's limit counts per: its key. The rate-limit key of a request is (key
//! value, config): every request with the same key value shares one budget.
//!
//! - `client` (the default): the client id (`X-Client-ID`, else the peer address), as
//!   identified by `--client-id-header` and `--trusted-proxies`;
//! - `global`: one budget for every caller;
//! - `ip`: the caller's address (the peer, or the client a trusted proxy names), even when
//!   it sends a client id, so a forged `X-Client-ID` cannot escape the limit;
//! - `header:<Name>`: the value of that request header (a tenant, an API key's name); a
//!   request without it is counted under the empty value.
//!
//! The values of `global` and `header:` keys are written so that none can be a client
//! id (they begin with `(`); an `ip` key's value is the address, as a client without
//! an id is counted. The statistics, the top list and the feeds show them, and the
//! admin API takes them wherever it takes a client id ([`is_key_value`]).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::net::IpAddr;
use std::sync::Arc;

/// Longest header value counted under its own key.
pub const MAX_HEADER_VALUE_BYTES: usize = 128;
/// Longest header name a key may name.
const MAX_HEADER_NAME_BYTES: usize = 64;
/// Headers a key may not name: their values are secrets, and a key value is shown and
/// stored.
const CREDENTIALS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
];

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum Key {
    #[default]
    Client,
    Global,
    Ip,
    /// A header's name, lower-cased (header names are case-insensitive).
    Header(String),
}

impl Key {
    /// The value every request of a `global` key is counted under.
    pub const GLOBAL: &'static str = "(global)";

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "client" => Ok(Key::Client),
            "global" => Ok(Key::Global),
            "ip" => Ok(Key::Ip),
            _ => match s.strip_prefix("header:") {
                Some(name) if CREDENTIALS.iter().any(|c| name.eq_ignore_ascii_case(c)) => {
                    Err(format!(
                        "names {name}, which carries credentials: a key value is shown in the \
                         statistics, the feeds and every 429, and stored; key on a header \
                         that names the tenant or the key instead"
                    ))
                }
                Some(name) if is_header_name(name) => Ok(Key::Header(name.to_ascii_lowercase())),
                Some(_) => Err(format!(
                    "names a header that is not a valid header name (1 to \
                     {MAX_HEADER_NAME_BYTES} of A-Z a-z 0-9 and !#$%&'*+-.^_`|~)"
                )),
                None => {
                    Err("must be \"client\", \"global\", \"ip\" or \"header:<Name>\"".to_owned())
                }
            },
        }
    }

    pub fn is_client(&self) -> bool {
        *self == Key::Client
    }

    /// Whether a key value can be found without an HTTP request (Envoy's descriptors
    /// carry no address and no headers).
    pub fn needs_http(&self) -> bool {
        matches!(self, Key::Ip | Key::Header(_))
    }

    /// The value this key gives a request, from what the asking surface knows of it: the
    /// one dispatch over key kinds, for every surface.
    pub fn value<S: KeySource>(&self, source: &S) -> Result<Arc<str>, S::Error> {
        match self {
            Key::Client => source.client(),
            Key::Global => Ok(Arc::from(Key::GLOBAL)),
            Key::Ip => source.ip(),
            Key::Header(name) => {
                Key::header_value(name, source.header(name)?).map_err(|m| source.invalid_header(m))
            }
        }
    }

    /// The value of an `ip` key.
    pub fn ip_value(ip: IpAddr) -> Arc<str> {
        Arc::from(ip.to_canonical().to_string())
    }

    /// The value of a `header:<name>` key for the header's `value` (`None` when the
    /// request has none: the empty value). A value that is not visible ASCII, or longer
    /// than [`MAX_HEADER_VALUE_BYTES`], is refused with the reason.
    pub fn header_value(name: &str, value: Option<&[u8]>) -> Result<Arc<str>, String> {
        let value = value.unwrap_or_default();
        if value.len() > MAX_HEADER_VALUE_BYTES {
            return Err(format!(
                "The {name} header counts this request's limit: send at most \
                 {MAX_HEADER_VALUE_BYTES} bytes."
            ));
        }
        if !value.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            return Err(format!(
                "The {name} header counts this request's limit: send visible ASCII only."
            ));
        }
        // Braces and `%` are percent-encoded, so that a key value never holds a brace
        // (a Redis key's hash tag ends at the first `}`) and the encoding is reversible.
        let mut out = format!("({name})");
        for &b in value {
            match b {
                b'{' | b'}' | b'%' => out.push_str(&format!("%{b:02X}")),
                _ => out.push(char::from(b)),
            }
        }
        Ok(Arc::from(out))
    }
}

/// Whether `s` can be a key value: a client id (or an address), `(global)`, or a
/// header's `(<name>)<value>` as [`Key::header_value`] writes it. The admin API takes
/// these wherever it takes a client (statistics, reset, feeds).
pub fn is_key_value(s: &str) -> bool {
    if crate::config::is_client_id(s) || s == Key::GLOBAL {
        return true;
    }
    let Some((name, value)) = s.strip_prefix('(').and_then(|r| r.split_once(')')) else {
        return false;
    };
    is_header_name(name)
        && name.bytes().all(|b| !b.is_ascii_uppercase())
        && value.len() <= 3 * MAX_HEADER_VALUE_BYTES
        && value
            .bytes()
            .all(|b| (b.is_ascii_graphic() || b == b' ') && b != b'{' && b != b'}')
}

/// What a surface knows of a request, for [`Key::value`]: an HTTP request (routes, the
/// reverse proxy, forward-auth), or a decision API check that names the original
/// request's client, address and headers.
pub trait KeySource {
    type Error;
    /// The client id, validated.
    fn client(&self) -> Result<Arc<str>, Self::Error>;
    /// The caller's address, as an `ip` key's value ([`Key::ip_value`]).
    fn ip(&self) -> Result<Arc<str>, Self::Error>;
    /// The value of the header `name` (lower case), `None` when the request has none.
    fn header(&self, name: &str) -> Result<Option<&[u8]>, Self::Error>;
    /// The error of a header value that cannot be a key value.
    fn invalid_header(&self, message: String) -> Self::Error;
}

/// An HTTP token (RFC 9110), as header names are.
fn is_header_name(name: &str) -> bool {
    (1..=MAX_HEADER_NAME_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Client => f.write_str("client"),
            Key::Global => f.write_str("global"),
            Key::Ip => f.write_str("ip"),
            Key::Header(name) => write!(f, "header:{name}"),
        }
    }
}

impl Serialize for Key {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Key {
    /// A name, or `null` for the default (`client`), as every optional field takes.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => Key::parse(&s).map_err(serde::de::Error::custom),
            None => Ok(Key::Client),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_names() {
        for (text, key) in [
            ("client", Key::Client),
            ("global", Key::Global),
            ("ip", Key::Ip),
            ("header:x-tenant", Key::Header("x-tenant".into())),
        ] {
            assert_eq!(Key::parse(text), Ok(key.clone()));
            assert_eq!(key.to_string(), text);
        }
        assert_eq!(
            Key::parse("header:X-Tenant"),
            Ok(Key::Header("x-tenant".into()))
        );
        for bad in [
            "",
            "Client",
            "header:",
            "header:a b",
            "header:a:b",
            "cookie:x",
        ] {
            assert!(Key::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Key::parse(&format!("header:{}", "a".repeat(65))).is_err());
    }

    #[test]
    fn key_values_never_look_like_client_ids() {
        assert_eq!(
            &*Key::ip_value("::ffff:10.0.0.7".parse().unwrap()),
            "10.0.0.7"
        );
        assert_eq!(
            Key::header_value("x-tenant", Some(b"acme corp")).as_deref(),
            Ok("(x-tenant)acme corp")
        );
        assert_eq!(
            Key::header_value("x-tenant", None).as_deref(),
            Ok("(x-tenant)")
        );
        assert!(Key::header_value("x-tenant", Some(b"a\x01")).is_err());
        assert!(Key::header_value("x-tenant", Some("é".as_bytes())).is_err());
        assert!(Key::header_value("x-tenant", Some(&[b'a'; 129])).is_err());
        for value in [Key::GLOBAL, "(x-tenant)", "(x-tenant)acme corp"] {
            assert!(!crate::config::is_client_id(value), "{value}");
            assert!(is_key_value(value), "{value}");
        }
        // Braces cannot end a Redis hash tag early.
        assert_eq!(
            Key::header_value("x-t", Some(b"a}:/x{%")).as_deref(),
            Ok("(x-t)a%7D:/x%7B%25")
        );
        assert!(is_key_value("(x-t)a%7D:/x%7B%25") && is_key_value("10.0.0.7"));
        for bad in ["(x-t)a}", "(X-T)a", "(x t)a", "(x-t", "", "(glob)x\u{1}"] {
            assert!(!is_key_value(bad), "{bad:?}");
        }
        // Credentials are never a key.
        for name in [
            "Authorization",
            "cookie",
            "Proxy-Authorization",
            "X-Api-Key",
        ] {
            assert!(Key::parse(&format!("header:{name}")).is_err(), "{name}");
        }
    }
}
