//! Descriptor rules: configs that select Envoy rate-limit requests by `domain` and a
//! descriptor pattern instead of by path (see [`crate::envoy`] for the protocol).
//!
//! A pattern is a list of entries, in order, each a key with a fixed value or with any
//! value (`value` absent). A request descriptor matches a pattern of its own length whose
//! keys are its keys, in order, and whose fixed values are its values. Among the patterns
//! that match, the most specific wins: the one with a fixed value at the first position
//! where they differ (as envoyproxy/ratelimit prefers `key + value` over `key` at each
//! level of its nested descriptors).
//!
//! A rule's identity, its `endpoint`, is written from its domain and pattern:
//! `rw: generic_key=api, remote_address`. It always holds `": "`, so it can never be a
//! path config's endpoint (a path has no whitespace) nor `"*"`; names and values are
//! percent-encoded outside `A-Z a-z 0-9 - . _ ~ @`.
//!
//! The client of a request is the values its pattern left open (a remote address, a user
//! id): those of one client share a budget, whatever the fixed values.

use super::{ValidationError, percent_encode_into};
use serde::{Deserialize, Serialize};
use std::fmt::Write;

/// Longest domain, in bytes.
pub const MAX_DOMAIN_BYTES: usize = 128;
/// Longest descriptor key, in bytes.
pub const MAX_KEY_BYTES: usize = 128;
/// Longest fixed value of a rule, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024;
/// Longest value of a request's descriptor, in bytes: above any header Envoy accepts by
/// default (60 KiB of headers), so that a client's long header cannot make the whole
/// call fail (and Envoy then let it through).
pub const MAX_REQUEST_VALUE_BYTES: usize = 64 * 1024;
/// Longest open value written into a client key as it is; a longer one is written as
/// its SHA-1, so that a client's key stays small whatever it sends.
const MAX_CLIENT_PART: usize = 128;
/// Most entries of a descriptor (in a rule, and in a request).
pub const MAX_ENTRIES: usize = 16;

/// One entry of a descriptor pattern: a key, and the value it must have (any, if none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DescriptorEntry {
    pub key: String,
    /// The value the request's entry must have; absent: any value, which then becomes
    /// part of the client's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// What a descriptor rule's identity is made of: the name and values percent-encoded
/// outside this set, so the separators (`:`, `,`, `=`, the space) stay unambiguous.
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~@".contains(&b)
}

/// The identity (`endpoint`) of the rule for `domain` and `pattern`.
pub fn identity(domain: &str, pattern: &[DescriptorEntry]) -> String {
    identity_of(
        domain,
        pattern.iter().map(|e| (e.key.as_str(), e.value.as_deref())),
    )
}

/// [`identity`] of entries given as (key, value), without building entries: a request
/// descriptor, for the feeds, is a pattern with every value fixed.
pub fn identity_of<'a>(
    domain: &str,
    entries: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> String {
    let mut out = String::new();
    percent_encode_into(&mut out, domain, plain);
    out.push(':');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        out.push_str(if i == 0 { " " } else { ", " });
        percent_encode_into(&mut out, key, plain);
        if let Some(v) = value {
            out.push('=');
            percent_encode_into(&mut out, v, plain);
        }
    }
    out
}

/// Whether `endpoint` is written as a descriptor rule's identity, as [`identity`] writes
/// one (rather than a path or `"*"`): the admin API reads `/admin/configs/{endpoint}` by
/// this. Its `": "` is what no path has.
pub fn is_identity(endpoint: &str) -> bool {
    let Some((domain, entries)) = endpoint.split_once(": ") else {
        return false;
    };
    let written = |part: &str, empty_ok: bool| {
        let b = part.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'%' if b
                    .get(i + 1..i + 3)
                    .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
                {
                    i += 3
                }
                c if plain(c) => i += 1,
                _ => return false,
            }
        }
        empty_ok || !b.is_empty()
    };
    written(domain, false)
        && entries
            .split(", ")
            .all(|entry| match entry.split_once('=') {
                Some((key, value)) => written(key, false) && written(value, true),
                None => written(entry, false),
            })
}

/// Checks a rule's domain and pattern; errors name `domain` or `descriptor[i].key`.
pub fn validate(domain: &str, pattern: &[DescriptorEntry]) -> Result<(), ValidationError> {
    if let Some(why) = bad_domain(domain) {
        return Err(ValidationError::new("domain", why));
    }
    if pattern.is_empty() || pattern.len() > MAX_ENTRIES {
        return Err(ValidationError::new(
            "descriptor",
            format!("must hold 1 to {MAX_ENTRIES} entries"),
        ));
    }
    for (i, e) in pattern.iter().enumerate() {
        if let Some(why) = bad_key(&e.key) {
            return Err(ValidationError::new(format!("descriptor[{i}].key"), why));
        }
        if let Some(why) = e.value.as_deref().and_then(bad_value) {
            return Err(ValidationError::new(format!("descriptor[{i}].value"), why));
        }
    }
    Ok(())
}

/// Why a domain is refused (in a rule or a request), if it is.
pub fn bad_domain(domain: &str) -> Option<String> {
    bad_name(domain, MAX_DOMAIN_BYTES)
}

/// Why a descriptor key is refused (in a rule or a request), if it is.
pub fn bad_key(key: &str) -> Option<String> {
    bad_name(key, MAX_KEY_BYTES)
}

fn bad_name(name: &str, max: usize) -> Option<String> {
    (name.is_empty() || name.len() > max || name.chars().any(char::is_control))
        .then(|| format!("must be 1 to {max} bytes with no control characters"))
}

/// Why a rule's fixed value is refused, if it is.
pub fn bad_value(value: &str) -> Option<String> {
    (value.len() > MAX_VALUE_BYTES).then(|| format!("must be at most {MAX_VALUE_BYTES} bytes"))
}

/// Why a request's value is refused, if it is.
pub fn bad_request_value(value: &str) -> Option<String> {
    (value.len() > MAX_REQUEST_VALUE_BYTES)
        .then(|| format!("must be at most {MAX_REQUEST_VALUE_BYTES} bytes"))
}

/// A rule's pattern, ready to match request descriptors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    entries: Vec<DescriptorEntry>,
}

impl Pattern {
    pub fn new(entries: &[DescriptorEntry]) -> Self {
        Self {
            entries: entries.to_vec(),
        }
    }

    /// Whether the request descriptor `entries` (key, value) matches.
    pub fn matches<'a>(&self, entries: impl ExactSizeIterator<Item = (&'a str, &'a str)>) -> bool {
        entries.len() == self.entries.len()
            && self
                .entries
                .iter()
                .zip(entries)
                .all(|(p, (k, v))| p.key == k && p.value.as_deref().is_none_or(|f| f == v))
    }

    /// Orders patterns most specific first: by a fixed value at the first position where
    /// they differ.
    pub fn specificity(&self) -> impl Ord + '_ {
        std::cmp::Reverse(
            self.entries
                .iter()
                .map(|e| e.value.is_some())
                .collect::<Vec<_>>(),
        )
    }

    /// The client of a matching request: the values this pattern leaves open, each
    /// written as it is when made of `A-Z a-z 0-9 . : @ -` (an address, most ids), else
    /// with `_` and every other byte written `_xx`; an empty value is `_z`, and one
    /// longer than 128 bytes `_h` and its SHA-1. Several are joined by `__`, which no
    /// written value contains, so two descriptors are one client only if their open
    /// values are the same. A pattern with every value fixed is one budget for
    /// everyone: its client is the domain, written the same way.
    pub fn client<'a>(
        &self,
        domain: &str,
        entries: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> String {
        let mut out = String::new();
        let mut open = self
            .entries
            .iter()
            .zip(entries)
            .filter(|(p, _)| p.value.is_none())
            .map(|(_, (_, v))| v)
            .peekable();
        if open.peek().is_none() {
            client_part(&mut out, domain);
        }
        for (i, v) in open.enumerate() {
            if i > 0 {
                out.push_str("__");
            }
            client_part(&mut out, v);
        }
        out
    }
}

fn client_part(out: &mut String, value: &str) {
    if value.is_empty() {
        out.push_str("_z");
        return;
    }
    if value.len() > MAX_CLIENT_PART {
        let _ = write!(out, "_h{}", sha1_smol::Sha1::from(value).digest());
        return;
    }
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b".:@-".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "_{b:02x}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::is_client_id;

    fn entry(key: &str, value: Option<&str>) -> DescriptorEntry {
        DescriptorEntry {
            key: key.to_owned(),
            value: value.map(str::to_owned),
        }
    }

    #[test]
    fn identities_are_readable_and_never_paths() {
        let p = [
            entry("generic_key", Some("api")),
            entry("remote_address", None),
        ];
        assert_eq!(identity("rw", &p), "rw: generic_key=api, remote_address");
        let odd = identity("/x", &[entry("a b", Some("c=d, e:f"))]);
        assert_eq!(odd, "%2Fx: a%20b=c%3Dd%2C%20e%3Af");
        assert!(is_identity(&odd));
        assert!(crate::config::validate_endpoint(&odd).is_err());
        assert!(!is_identity("/api/data"));
        // Only what `identity` writes: no raw separators, spaces or control bytes inside.
        assert!(is_identity("rw: k=, j"));
        for not in [
            "rw:k",
            ": k",
            "rw: ",
            "rw: k=v=w",
            "rw: k,j",
            "rw: k, ",
            "rw: k%2",
            "rw: a b",
            "rw: k\u{0}",
            "i/./~/.: a`",
        ] {
            assert!(!is_identity(not), "{not:?}");
        }
        // Distinct rules, distinct identities.
        assert_ne!(
            identity("a", &[entry("b", Some("c, d"))]),
            identity("a", &[entry("b", Some("c")), entry("d", None)])
        );
    }

    #[test]
    fn matches_keys_in_order_with_fixed_values() {
        let p = Pattern::new(&[entry("k", Some("v")), entry("ip", None)]);
        let m = |e: &[(&str, &str)]| p.matches(e.iter().copied());
        assert!(m(&[("k", "v"), ("ip", "1.2.3.4")]));
        assert!(!m(&[("k", "w"), ("ip", "1.2.3.4")]));
        assert!(!m(&[("ip", "1.2.3.4"), ("k", "v")]));
        assert!(!m(&[("k", "v")]));
        assert!(!m(&[("k", "v"), ("ip", "1"), ("x", "y")]));
    }

    #[test]
    fn a_fixed_value_is_more_specific_than_any_value() {
        let fixed_first = Pattern::new(&[entry("a", Some("1")), entry("b", None)]);
        let fixed_second = Pattern::new(&[entry("a", None), entry("b", Some("2"))]);
        let open = Pattern::new(&[entry("a", None), entry("b", None)]);
        let mut all = [&open, &fixed_second, &fixed_first];
        all.sort_by(|x, y| x.specificity().cmp(&y.specificity()));
        assert_eq!(all, [&fixed_first, &fixed_second, &open]);
    }

    #[test]
    fn clients_are_the_open_values_written_without_ambiguity() {
        let p = Pattern::new(&[entry("k", Some("v")), entry("ip", None)]);
        let c = |e: &[(&str, &str)]| p.client("rw", e.iter().copied());
        assert_eq!(c(&[("k", "v"), ("ip", "10.0.0.1")]), "10.0.0.1");
        assert_eq!(c(&[("k", "v"), ("ip", "::1")]), "::1");
        assert_eq!(c(&[("k", "v"), ("ip", "a b_c")]), "a_20b_5fc");
        let two = Pattern::new(&[entry("a", None), entry("b", None)]);
        let c2 = |a: &str, b: &str| two.client("rw", [("a", a), ("b", b)].into_iter());
        assert_eq!(c2("x", "y"), "x__y");
        assert_ne!(c2("x_", "y"), c2("x", "_y"));
        assert_ne!(c2("", "a"), c2("a", ""));
        assert_eq!(c2("", "a"), "_z__a");
        assert_ne!(c2("_z", ""), c2("", "_z"));
        assert!(is_client_id(&c2("user_1", "10.0.0.1")));
        // A long value is its digest: a small key, still one per value.
        let long = "v".repeat(200);
        let longer = "v".repeat(201);
        assert_eq!(c(&[("k", "v"), ("ip", &long)]).len(), 42);
        assert_ne!(
            c(&[("k", "v"), ("ip", &long)]),
            c(&[("k", "v"), ("ip", &longer)])
        );
        assert!(is_client_id(&c(&[("k", "v"), ("ip", &long)])));
        let fixed = Pattern::new(&[entry("a", Some("1"))]);
        assert_eq!(fixed.client("rw", [("a", "1")].into_iter()), "rw");
    }

    #[test]
    fn validates_domains_keys_and_values() {
        let ok = [entry("k", None)];
        assert!(validate("rw", &ok).is_ok());
        assert_eq!(validate("", &ok).unwrap_err().field, "domain");
        assert_eq!(validate("rw", &[]).unwrap_err().field, "descriptor");
        assert_eq!(
            validate("rw", &[entry("k", None), entry("", None)])
                .unwrap_err()
                .field,
            "descriptor[1].key"
        );
        let huge = "v".repeat(MAX_VALUE_BYTES + 1);
        assert_eq!(
            validate("rw", &[entry("k", Some(&huge))])
                .unwrap_err()
                .field,
            "descriptor[0].value"
        );
    }
}
