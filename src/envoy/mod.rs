//! Envoy's rate-limit service (`envoy.service.ratelimit.v3.RateLimitService`), the
//! protocol Envoy, Istio, Envoy Gateway, Contour and Emissary call an external rate
//! limiter with. One function, [`should_rate_limit`], answers a `RateLimitRequest`; the
//! gRPC server ([`grpc`], `--grpc-bind`) and `POST /v1/envoy/json` (protojson, as
//! envoyproxy/ratelimit's `/json`, served by the HTTP layer) both call it.
//!
//! Each request descriptor is matched against the descriptor rules of its domain (see
//! [`crate::config::descriptor`]) and decided through the same path as a protected
//! route ([`Decider::decide`]): counted, persisted, streamed and shown alike. The
//! protocol's adapters are the gRPC server here and the protojson route in
//! `http::decision`; nothing here knows the HTTP layer.

pub mod grpc;
pub mod proto;

use crate::actors::Via;
use crate::config::MAX_REQUESTS_PER_WINDOW;
use crate::config::descriptor::{self, MAX_ENTRIES};
use crate::decide::{Cost, Decider, Hold, Ruling, reset_secs, retry_after_secs, structured_fields};
use crate::limiter::{DEFAULT_LIMIT, Decisions, Limit, Mode, Named};
use crate::policy::{KeyValues, Kind, Policy, PolicyTable};
use proto::{
    Code, DescriptorStatus, HeaderValue, RateLimit, RateLimitDescriptor, RateLimitRequest,
    RateLimitResponse, UNITS, override_unit,
};
use std::sync::Arc;

/// Most descriptors one request may carry.
pub const MAX_DESCRIPTORS: usize = 64;

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The request breaks the protocol's rules or ours (gRPC `INVALID_ARGUMENT`).
    Invalid(String),
    /// A limiter could not decide in time (gRPC `UNAVAILABLE`, so that Envoy's
    /// `failure_mode_deny` applies).
    Unavailable,
}

/// The request's rules, checked before anything is decided. A value is refused only
/// past any header Envoy accepts by default ([`descriptor::MAX_REQUEST_VALUE_BYTES`]): a
/// refused call is one Envoy lets through (without `failure_mode_deny`), so what a
/// client sends must not be able to cause one.
fn validate(req: &RateLimitRequest) -> Result<(), Failure> {
    let invalid = |m: String| Err(Failure::Invalid(m));
    if let Some(why) = descriptor::bad_domain(&req.domain) {
        return invalid(format!("domain {why}"));
    }
    if req.descriptors.is_empty() || req.descriptors.len() > MAX_DESCRIPTORS {
        return invalid(format!("send 1 to {MAX_DESCRIPTORS} descriptors"));
    }
    for (i, d) in req.descriptors.iter().enumerate() {
        if d.entries.is_empty() || d.entries.len() > MAX_ENTRIES {
            return invalid(format!(
                "descriptors[{i}] must hold 1 to {MAX_ENTRIES} entries"
            ));
        }
        for (j, e) in d.entries.iter().enumerate() {
            if let Some(why) = descriptor::bad_key(&e.key) {
                return invalid(format!("descriptors[{i}].entries[{j}].key {why}"));
            }
            if let Some(why) = descriptor::bad_request_value(&e.value) {
                return invalid(format!("descriptors[{i}].entries[{j}].value {why}"));
            }
        }
        if let Some(limit) = &d.limit {
            if !(1..=MAX_REQUESTS_PER_WINDOW).contains(&u64::from(limit.requests_per_unit)) {
                return invalid(format!(
                    "descriptors[{i}].limit.requests_per_unit must be 1 to {MAX_REQUESTS_PER_WINDOW}"
                ));
            }
            if unit_seconds(limit.unit).is_none() {
                return invalid(format!(
                    "descriptors[{i}].limit.unit must be SECOND, MINUTE, HOUR, DAY, MONTH or YEAR"
                ));
            }
        }
    }
    Ok(())
}

/// An override's unit in seconds; `None` for `UNKNOWN` and any other number.
fn unit_seconds(unit: i32) -> Option<u64> {
    override_unit(unit).map(|u| u.seconds)
}

/// The unit a window is reported in: the shortest of Envoy's units at least as long as
/// the window, so that "this many per unit" never promises more than the window allows
/// (a 90-second window of 10 is reported as 10 per hour).
pub fn unit_of(window_seconds: u64) -> i32 {
    UNITS
        .iter()
        .filter(|u| u.seconds >= window_seconds)
        .min_by_key(|u| u.seconds)
        .map_or(6, |u| u.number)
}

/// The policy and key values of one request descriptor: the rule it matches, with the
/// caller's `limit` instead of the rule's numbers when it sends one; `None` when no rule
/// matches (nothing limits it, the caller's `limit` included).
///
/// A caller's limit is its own budget, under the rule's name followed by the limit
/// (`rw: user (5/MINUTE)`), with the rule's algorithm, mode and activity: sharing the
/// rule's budget with other numbers would let one window length reset the other's
/// count. Only rules' descriptors take one, so callers cannot make new names (metric
/// series, entries in a client's state) without an operator's rule.
fn policy_for(
    table: &PolicyTable,
    domain: &str,
    d: &RateLimitDescriptor,
) -> Option<(Arc<Policy>, KeyValues)> {
    let entries = d.entries.iter().map(|e| (e.key.as_str(), e.value.as_str()));
    let m = table.match_descriptor(domain, entries)?;
    // Envoy never says when a request is done: a rule's concurrency limits are not
    // enforced here (the admin API warns of it), and a rule of only those limits
    // nothing.
    let policy = m.policy.without_held()?;
    let Some(limit) = &d.limit else {
        return Some((policy.clone(), m.values));
    };
    let unit = override_unit(limit.unit)?;
    let window = unit.seconds;
    let requests = u64::from(limit.requests_per_unit);
    // One limit, of the algorithm of the rule's first.
    // The rule's first limit's algorithm and unit: a rule of tokens stays one.
    let first = &policy.limits[0];
    let limit = Named {
        unit: first.unit,
        cost_header: first.cost_header.clone(),
        ..Named::requests(
            DEFAULT_LIMIT,
            Limit::new(first.limit.algorithm(), requests, window),
            window,
        )
    };
    let kind = Kind::of(&limit);
    let endpoint: Arc<str> = Arc::from(format!("{} ({requests}/{})", m.policy.endpoint, unit.name));
    let policy = Policy {
        endpoint: endpoint.clone(),
        limits: Box::new([limit]),
        active: m.policy.active,
        shadow: m.policy.shadow,
        key: m.policy.key.clone(),
        tier: None,
        slot: endpoint,
        groups: Box::new([]),
        other_keys: Box::new([]),
        unheld: None,
        quota_field: Default::default(),
        refundable: kind.is_metered(),
        kind,
    };
    // Its own budget, under the config's key alone.
    let mut values = m.values;
    values.truncate(1);
    Some((Arc::new(policy), values))
}

/// A descriptor as the feeds show it: `rw: generic_key=api, remote_address=10.0.0.1`.
fn shown(domain: &str, d: &RateLimitDescriptor) -> String {
    let entries = d
        .entries
        .iter()
        .map(|e| (e.key.as_str(), Some(e.value.as_str())));
    descriptor::identity_of(domain, entries)
}

/// The status of a descriptor decided under `policy`: its binding limit's (see
/// `limiter::Decisions`).
fn status(policy: &Policy, d: &Decisions) -> DescriptorStatus {
    let code = if policy.refuses(d) {
        Code::OverLimit
    } else {
        Code::Ok
    };
    DescriptorStatus {
        code: code as i32,
        current_limit: Some(RateLimit {
            name: policy.endpoint.to_string(),
            requests_per_unit: u32::try_from(d.limit).unwrap_or(u32::MAX),
            unit: unit_of(policy.limits[d.binding()].window_seconds),
        }),
        limit_remaining: u32::try_from(d.remaining).unwrap_or(u32::MAX),
        // When the quota is back: the `t` of the `RateLimit` header.
        duration_until_reset: Some(proto::Duration {
            seconds: i64::try_from(reset_secs(d)).unwrap_or(i64::MAX),
            nanos: 0,
        }),
    }
}

fn unlimited() -> DescriptorStatus {
    DescriptorStatus {
        code: Code::Ok as i32,
        ..Default::default()
    }
}

/// Answers one `ShouldRateLimit` call. Descriptors are decided in order, each taking its
/// units when they fit (a descriptor over its limit does not stop the others from being
/// counted, as in envoyproxy/ratelimit). The answer is `OVER_LIMIT` when any descriptor
/// is; its headers are those of the descriptor that decided it: the first one over its
/// limit, else the one with the least quota left.
pub async fn should_rate_limit(
    decider: &Decider,
    req: &RateLimitRequest,
) -> Result<RateLimitResponse, Failure> {
    validate(req)?;
    let default_hits = u64::from(req.hits_addend.max(1));
    let mut statuses = Vec::with_capacity(req.descriptors.len());
    let mut headline: Option<(Arc<Policy>, Decisions)> = None;
    // One table for the whole call, as a route's request resolves against one.
    let table = decider.policies.current();
    for d in &req.descriptors {
        let Some((policy, values)) = policy_for(&table, &req.domain, d) else {
            statuses.push(unlimited());
            continue;
        };
        let (cost, mode) = match d.hits_addend {
            // Only looking: would one more request fit?
            Some(0) => (1, Mode::Peek),
            Some(n) => (n, Mode::Consume),
            None => (default_hits, Mode::Consume),
        };
        let path = || Arc::from(shown(&req.domain, d));
        // A rule whose limits all count tokens or bytes is charged what a call carries,
        // past its limit too: the call Envoy makes when a stream is done
        // (`apply_on_stream_done`) says what the request used.
        let charged = policy.active && policy.limits.iter().all(|l| l.is_metered());
        let ruling = match (charged, mode) {
            (true, Mode::Consume) => match decider.charge(&values, &policy, cost, None).await {
                Ok(parts) => {
                    // Each group's decisions (all of them are charged), as the rule's.
                    let mut parts: Vec<Decisions> = parts.into_iter().map(|(_, d)| d).collect();
                    match (policy.groups.len(), parts.len()) {
                        (0, 1) => Ruling::Decided(parts.remove(0), Hold::default()),
                        (groups, n) if groups == n && n > 0 => {
                            Ruling::Decided(policy.merge(&parts), Hold::default())
                        }
                        _ => Ruling::Failed,
                    }
                }
                Err(_) => Ruling::Failed,
            },
            _ => (decider.decide(&values, &policy, path, Via::Envoy, Cost::all(cost), mode)).await,
        };
        match ruling {
            Ruling::Inactive => statuses.push(unlimited()),
            Ruling::Failed => return Err(Failure::Unavailable),
            // Decided without its concurrency limits: nothing is held.
            Ruling::Decided(decision, _) => {
                statuses.push(status(&policy, &decision));
                let over = policy.refuses(&decision);
                let better = match &headline {
                    None => true,
                    Some((p, h)) => {
                        let was_over = p.refuses(h);
                        !was_over && (over || decision.remaining < h.remaining)
                    }
                };
                if better {
                    headline = Some((policy, decision));
                }
            }
        }
    }
    let over = statuses.iter().any(|s| s.code == Code::OverLimit as i32);
    let mut response_headers_to_add = Vec::new();
    if let Some((policy, decision)) = headline {
        // The structured fields and Retry-After, in that order; not X-RateLimit-*, which
        // Envoy writes itself with `enable_x_ratelimit_headers` (its Reset in seconds,
        // ours a time).
        for (name, value) in structured_fields(&policy, &decision) {
            response_headers_to_add.push(HeaderValue {
                key: name.as_str().to_owned(),
                value: value.to_str().unwrap_or_default().to_owned(),
            });
        }
        // Only a refusal says when to retry, as on a route.
        if policy.refuses(&decision) {
            response_headers_to_add.push(HeaderValue {
                key: "retry-after".to_owned(),
                value: retry_after_secs(&decision).to_string(),
            });
        }
    }
    Ok(RateLimitResponse {
        overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
        statuses,
        response_headers_to_add,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_reported_in_a_unit_that_never_overstates() {
        assert_eq!(unit_of(1), 1);
        assert_eq!(unit_of(60), 2);
        assert_eq!(unit_of(90), 3);
        assert_eq!(unit_of(3600), 3);
        assert_eq!(unit_of(86_400), 4);
        assert_eq!(unit_of(86_401), 7);
        assert_eq!(unit_of(604_801), 5);
        assert_eq!(unit_of(31_536_000), 6);
        assert_eq!(unit_seconds(7), None);
        assert_eq!(unit_seconds(0), None);
        assert_eq!(unit_seconds(5), Some(2_592_000));
    }
}
