//! Who may ask: the access rule of the admin API and of every decision surface, HTTP
//! (`/v1/*`) and gRPC (Envoy's rate-limit service) alike, once the caller's token has
//! been read from wherever its protocol carries it.

/// Why a caller was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A token is configured and the caller did not present one of them.
    Unauthorized,
    /// No token is configured and the caller is not on this host.
    Forbidden,
}

/// The token of an `Authorization: Bearer <token>` value.
pub fn bearer(value: &str) -> Option<String> {
    value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_owned())
}

/// With some of `tokens` configured, `presented` must be one of them (compared in
/// constant time); with none, only a loopback `caller` is let in.
pub fn admit<'a>(
    presented: Option<&str>,
    caller: Option<std::net::IpAddr>,
    tokens: impl IntoIterator<Item = &'a Option<String>>,
) -> Result<(), Refused> {
    let tokens: Vec<&String> = tokens.into_iter().flatten().collect();
    if tokens.is_empty() {
        return match caller {
            Some(ip) if ip.to_canonical().is_loopback() => Ok(()),
            _ => Err(Refused::Forbidden),
        };
    }
    match presented {
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

    #[test]
    fn admits_a_configured_token_or_else_loopback_only() {
        let loopback = Some("127.0.0.1".parse().unwrap());
        let remote = Some("192.0.2.1".parse().unwrap());
        let none = [&None, &None];
        assert_eq!(admit(None, loopback, none), Ok(()));
        assert_eq!(admit(None, remote, none), Err(Refused::Forbidden));
        // An IPv4 loopback peer seen through an IPv6 socket is loopback too.
        let mapped = Some("::ffff:127.0.0.1".parse().unwrap());
        assert_eq!(admit(None, mapped, none), Ok(()));
        let set = [&None, &Some("t0k".to_owned())];
        assert_eq!(admit(Some("t0k"), remote, set), Ok(()));
        assert_eq!(
            admit(Some("t0K"), loopback, set),
            Err(Refused::Unauthorized)
        );
        assert_eq!(admit(None, loopback, set), Err(Refused::Unauthorized));
        assert_eq!(bearer("Bearer  abc "), Some("abc".to_owned()));
        assert_eq!(bearer("Basic abc"), None);
    }
}
