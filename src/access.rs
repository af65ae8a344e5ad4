//! Who may ask: the access rule of the admin API and of every decision surface, HTTP
//! (`/v1/*`) and gRPC (Envoy's rate-limit service) alike, once the caller's token has
//! been read from wherever its protocol carries it.
//!
//! With a token configured, the token is the rule. With none, the caller must be on this
//! host (a loopback peer) *and*, where the protocol says which host it addressed (HTTP's
//! `Host`), have addressed this machine's loopback or a name of `--allowed-hosts`: a web
//! page whose own host name was rebound to 127.0.0.1 (DNS rebinding) is same-origin with
//! the server to the browser, and only its `Host` header, which no page can set, gives it
//! away.

use std::net::IpAddr;

/// Why a caller was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A token is configured and the caller did not present one of them.
    Unauthorized,
    /// No token is configured and the caller is not on this host.
    Forbidden,
    /// No token is configured and the request addressed a host that is neither loopback
    /// nor allowed (`--allowed-hosts`).
    ForeignHost,
}

/// Who asks, as far as the access rule cares.
#[derive(Debug, Clone, Copy, Default)]
pub struct Asker<'a> {
    /// The token presented, if any.
    pub token: Option<&'a str>,
    /// The peer address (or the client a trusted proxy names).
    pub ip: Option<IpAddr>,
    /// The host the request addressed, where the protocol carries one that a web page
    /// cannot set (HTTP's `Host`); `None` when absent (HTTP/1.0) or not applicable.
    pub host: Option<&'a str>,
}

/// The host names a tokenless server answers besides loopback (`--allowed-hosts`),
/// lower-cased, without port or brackets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts(Vec<String>);

impl AllowedHosts {
    /// The names given, each already checked by [`host_name`].
    pub fn new(names: Vec<String>) -> Self {
        Self(names)
    }

    /// Whether `host` (a `Host` header's value, with or without a port) names this
    /// machine's loopback (`localhost`, 127.0.0.0/8, `[::1]`) or one of these names.
    pub fn admits(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(name, _)| name),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        let ip = name.parse::<IpAddr>().ok();
        name.eq_ignore_ascii_case("localhost")
            || ip.is_some_and(|ip| ip.to_canonical().is_loopback())
            || self.0.iter().any(|n| {
                n.eq_ignore_ascii_case(name) || ip.is_some() && n.parse::<IpAddr>().ok() == ip
            })
    }
}

/// One `--allowed-hosts` entry, checked and normalized (lower case, no brackets, no
/// trailing dot): a DNS name or an IP address, without scheme, port or path.
pub fn host_name(entry: &str) -> Result<String, String> {
    let raw = entry.trim();
    let name = raw
        .strip_prefix('[')
        .and_then(|v6| v6.strip_suffix(']'))
        .unwrap_or(raw);
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let is_ip = name.parse::<IpAddr>().is_ok();
    let is_name = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if is_ip || is_name {
        Ok(name)
    } else {
        Err(format!(
            "{raw:?} is not a host name or IP address (give names such as ops.internal: no \
             scheme, port or path; any port is accepted)"
        ))
    }
}

/// The token of an `Authorization: Bearer <token>` value.
pub fn bearer(value: &str) -> Option<String> {
    value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_owned())
}

/// With some of `tokens` configured, the presented token must be one of them (compared
/// in constant time); with none, only a loopback caller that addressed a loopback or
/// allowed host is let in.
pub fn admit<'a>(
    asker: Asker<'_>,
    allowed_hosts: &AllowedHosts,
    tokens: impl IntoIterator<Item = &'a Option<String>>,
) -> Result<(), Refused> {
    let tokens: Vec<&String> = tokens.into_iter().flatten().collect();
    if tokens.is_empty() {
        return match asker.ip {
            Some(ip) if ip.to_canonical().is_loopback() => match asker.host {
                Some(host) if !allowed_hosts.admits(host) => Err(Refused::ForeignHost),
                _ => Ok(()),
            },
            _ => Err(Refused::Forbidden),
        };
    }
    match asker.token {
        // Every token is compared, so the time taken does not tell which one matched.
        Some(p) => tokens
            .iter()
            .fold(false, |ok, t| {
                constant_time_eq(p.as_bytes(), t.as_bytes()) | ok
            })
            .then_some(())
            .ok_or(Refused::Unauthorized),
        None => Err(Refused::Unauthorized),
    }
}

/// Compares without an early exit, so the time taken does not reveal how much of a
/// guessed token was right (the length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_tokens_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret!"));
    }

    fn asker<'a>(token: Option<&'a str>, ip: &str, host: Option<&'a str>) -> Asker<'a> {
        Asker {
            token,
            ip: Some(ip.parse().unwrap()),
            host,
        }
    }

    #[test]
    fn admits_a_configured_token_or_else_loopback_only() {
        let none = [&None, &None];
        let any = AllowedHosts::default();
        assert_eq!(admit(asker(None, "127.0.0.1", None), &any, none), Ok(()));
        assert_eq!(
            admit(asker(None, "192.0.2.1", None), &any, none),
            Err(Refused::Forbidden)
        );
        assert_eq!(admit(Asker::default(), &any, none), Err(Refused::Forbidden));
        // An IPv4 loopback peer seen through an IPv6 socket is loopback too.
        assert_eq!(
            admit(asker(None, "::ffff:127.0.0.1", None), &any, none),
            Ok(())
        );
        let set = [&None, &Some("t0k".to_owned())];
        assert_eq!(
            admit(asker(Some("t0k"), "192.0.2.1", None), &any, set),
            Ok(())
        );
        assert_eq!(
            admit(asker(Some("t0K"), "127.0.0.1", None), &any, set),
            Err(Refused::Unauthorized)
        );
        assert_eq!(
            admit(asker(None, "127.0.0.1", None), &any, set),
            Err(Refused::Unauthorized)
        );
        assert_eq!(bearer("Bearer  abc "), Some("abc".to_owned()));
        assert_eq!(bearer("Basic abc"), None);
    }

    #[test]
    fn without_a_token_the_addressed_host_must_be_loopback_or_allowed() {
        let none = [&None];
        let allowed = AllowedHosts::new(
            ["Ops.Internal", "[fd00::7]", "10.1.2.3"]
                .map(|h| host_name(h).unwrap())
                .to_vec(),
        );
        for host in [
            "localhost",
            "LOCALHOST:8000",
            "localhost.:8000",
            "127.0.0.1",
            "127.9.8.7:1",
            "[::1]:8000",
            "[::1]",
            "ops.internal:8000",
            "OPS.internal",
            "[fd00::7]:80",
            "[FD00:0::7]",
            "10.1.2.3:8000",
        ] {
            let a = asker(None, "127.0.0.1", Some(host));
            assert_eq!(admit(a, &allowed, none), Ok(()), "{host}");
        }
        for host in [
            "evil.example:8000",
            "evil.example",
            "localhost.evil.example",
            "ops.internal.evil.example",
            "127.0.0.1.nip.io:8000",
            "192.0.2.1:8000",
            "[fd00::8]:80",
            "",
            ":8000",
            "ops",
        ] {
            let a = asker(None, "127.0.0.1", Some(host));
            assert_eq!(
                admit(a, &allowed, none),
                Err(Refused::ForeignHost),
                "{host}"
            );
        }
        // A remote peer is refused as before, whatever host it names.
        let a = asker(None, "192.0.2.1", Some("localhost"));
        assert_eq!(admit(a, &allowed, none), Err(Refused::Forbidden));
        // With a token, the host is not the rule.
        let a = asker(Some("t"), "192.0.2.1", Some("evil.example"));
        assert_eq!(admit(a, &allowed, [&Some("t".to_owned())]), Ok(()));
    }

    #[test]
    fn allowed_hosts_take_names_and_addresses_only() {
        assert_eq!(host_name("a.example.").unwrap(), "a.example");
        assert_eq!(host_name(" B-c_d.internal ").unwrap(), "b-c_d.internal");
        assert_eq!(host_name("[::1]").unwrap(), "::1");
        for bad in [
            "",
            "http://a.example",
            "a.example:8000",
            "a.example/x",
            "a..b",
            "*.example",
            "a b",
        ] {
            assert!(host_name(bad).is_err(), "{bad:?}");
        }
    }
}
