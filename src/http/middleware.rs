//! Two middlewares: `rate_limit` decides every request outside the exempt prefixes (one
//! message to the client's registry shard), and `admin_access` guards `/admin`.

use super::AppState;
use crate::actors::registry::Check;
use crate::clock::{NANOS_PER_SEC, Nanos, ceil_secs, rfc3339};
use crate::error::ApiError;
use crate::limiter::Decision;
use crate::policy::Policy;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use actix_web::middleware::Next;
use actix_web::{Error, HttpResponse, ResponseError, web};
use serde_json::json;
use std::sync::Arc;

/// Never limited: the admin API, the feeds, the dashboard and its assets, metrics, and
/// the health check (a load balancer's probe must never be throttled).
const EXEMPT: [&str; 7] = [
    "/admin",
    "/ws",
    "/events",
    "/dashboard",
    "/static",
    "/metrics",
    "/health",
];

pub fn is_exempt(path: &str) -> bool {
    EXEMPT.iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

const X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

fn state(req: &ServiceRequest) -> web::Data<AppState> {
    // `app::start` registers the state before any route; without it nothing works.
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .expect("AppState is registered by app::start")
}

pub async fn rate_limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    // The router matches the percent-decoded path, so limits must too: `/%61pi/data`
    // is served by `/api/data` and must count against its config.
    if is_exempt(req.match_info().as_str()) {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let state = state(&req);
    let client = match state.identity.client_id(req.headers(), req.peer_addr()) {
        Ok(c) => c,
        Err(e) => return Ok(req.error_response(e)),
    };
    let path = req.match_info().as_str();
    let policy = state.policies.current().resolve(path).clone();
    if !policy.active {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let check = Check {
        client: client.clone(),
        policy: policy.clone(),
        // Copied only while a feed would show it.
        path: state.interest.wants(&client).then(|| Arc::from(path)),
    };
    let decision = match state.registries.shard(&client).send(check).await {
        Ok(Ok(d)) => d,
        // Fail open: a limiter that cannot answer must not take the service down.
        _ => {
            log::warn!(
                "client {client:?}: limiter unavailable for {}; request allowed",
                policy.endpoint
            );
            return Ok(next.call(req).await?.map_into_boxed_body());
        }
    };
    let now = state.clock.now();
    if decision.allowed {
        let mut res = next.call(req).await?.map_into_boxed_body();
        add_headers(res.headers_mut(), &policy, &decision, now);
        return Ok(res);
    }
    let retry_after = ceil_secs(decision.retry_after).max(1);
    let mut res = HttpResponse::TooManyRequests().json(json!({
        "error": "rate_limit_exceeded",
        "message": format!(
            "Rate limit exceeded: {} requests per {} s for {}. Retry in {retry_after} s.",
            decision.limit, policy.window_seconds, policy.endpoint
        ),
        "client_id": &*client,
        "endpoint": &*policy.endpoint,
        "limit": decision.limit,
        "remaining": 0,
        "retry_after": retry_after,
        "reset_time": rfc3339(now.saturating_add(decision.reset_after)),
    }));
    let headers = res.headers_mut();
    add_headers(headers, &policy, &decision, now);
    headers.insert(RETRY_AFTER, HeaderValue::from(retry_after));
    Ok(req.into_response(res))
}

/// The rate-limit headers of one decision.
fn add_headers(headers: &mut HeaderMap, policy: &Policy, d: &Decision, now: Nanos) {
    let reset_in = ceil_secs(d.reset_after);
    let reset_at = now.div_ceil(NANOS_PER_SEC).saturating_add(reset_in);
    let name = sf_string(&policy.endpoint);
    headers.insert(X_LIMIT, HeaderValue::from(d.limit));
    headers.insert(X_REMAINING, HeaderValue::from(d.remaining));
    headers.insert(X_RESET, HeaderValue::from(reset_at));
    let structured = [
        (
            RATELIMIT_POLICY,
            format!("{name};q={};w={}", d.limit, policy.window_seconds),
        ),
        (RATELIMIT, format!("{name};r={};t={reset_in}", d.remaining)),
    ];
    for (header, value) in structured {
        // `sf_string` only emits printable ASCII, so this cannot fail.
        if let Ok(v) = HeaderValue::try_from(value) {
            headers.insert(header, v);
        }
    }
}

/// A structured-field string (RFC 8941): quoted, `"` and `\` escaped, and anything
/// outside printable ASCII percent-encoded (the policy name is a path).
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for b in s.bytes() {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out.push('"');
    out
}

/// Admin access (the admin API and the live feeds): a bearer token when one is
/// configured (or a `token` query parameter, because browsers cannot set headers on
/// WebSocket and EventSource requests), else loopback peers only.
pub async fn admin_access(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let state = state(&req);
    let verdict = match &state.admin_token {
        Some(token) => {
            let header = req
                .headers()
                .get(actix_web::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim().to_owned());
            let presented = header.or_else(|| query_token(req.query_string()));
            match presented {
                Some(p) if constant_time_eq(p.as_bytes(), token.as_bytes()) => Ok(()),
                _ => Err(ApiError::Unauthorized),
            }
        }
        // Behind a trusted proxy on this host, the peer is always loopback: judge the
        // client the proxy names instead.
        None => match state.identity.client_ip(req.headers(), req.peer_addr()) {
            Some(ip) if ip.is_loopback() => Ok(()),
            _ => Err(ApiError::Forbidden),
        },
    };
    match verdict {
        Ok(()) => Ok(next.call(req).await?.map_into_boxed_body()),
        Err(e) => {
            let res = e.error_response();
            Ok(req.into_response(res))
        }
    }
}

/// The `token` query parameter, percent-decoded.
fn query_token(query: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct TokenQuery {
        token: String,
    }
    web::Query::<TokenQuery>::from_query(query)
        .ok()
        .map(|q| q.into_inner().token)
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
    fn exempts_whole_segments_only() {
        for p in [
            "/admin",
            "/admin/configs",
            "/health",
            "/ws/global",
            "/static/app.js",
        ] {
            assert!(is_exempt(p), "{p}");
        }
        for p in ["/", "/administrator", "/healthz", "/api/admin", "//admin"] {
            assert!(!is_exempt(p), "{p}");
        }
    }

    #[test]
    fn escapes_policy_names() {
        assert_eq!(sf_string("/api/*"), "\"/api/*\"");
        assert_eq!(sf_string("/a\"b\\c"), "\"/a\\\"b\\\\c\"");
        assert_eq!(sf_string("/é"), "\"/%C3%A9\"");
    }

    #[test]
    fn reads_the_token_query_parameter() {
        assert_eq!(query_token("token=a%2Bb&x=1"), Some("a+b".to_owned()));
        assert_eq!(query_token("x=1"), None);
        assert_eq!(query_token(""), None);
    }

    #[test]
    fn compares_tokens_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret!"));
    }
}
