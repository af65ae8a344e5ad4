//! Three middlewares: `rate_limit` decides every request outside the exempt prefixes (one
//! message to the client's registry shard, bounded by `--decision-timeout-ms`),
//! `admin_access` guards `/admin`, `/metrics` and the feeds, and `log_request` logs every
//! request at debug level.

use super::proxy;
use super::realtime::Tokened;
use super::{AppState, deadline};
use crate::actors::registry::Check;
use crate::actors::{Asked, Via};
use crate::clock::{NANOS_PER_SEC, Nanos, ceil_secs, rfc3339};
use crate::error::{ApiError, Refusal};
use crate::limiter::{Decision, Mode};
use crate::metrics::{ErrorReason, Metrics, Outcome};
use crate::policy::Policy;
use crate::settings::OnError;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use actix_web::middleware::Next;
use actix_web::rt::time::Instant;
use actix_web::{Error, HttpResponse, ResponseError, web};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Never limited: the admin API, the decision API, the feeds, the dashboard and its assets, metrics, and
/// the health check and the probes (a load balancer's probe must never be throttled).
const EXEMPT: [&str; 11] = [
    "/admin",
    "/openapi.json",
    "/v1",
    "/ws",
    "/events",
    "/dashboard",
    "/static",
    "/metrics",
    "/health",
    "/livez",
    "/readyz",
];

pub fn is_exempt(path: &str) -> bool {
    EXEMPT.iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// Whether a (decoded) request path has a `.` or `..` segment, `%2F` counting as a
/// slash. Clients resolve them before sending, and a server behind may resolve them
/// after the config was chosen: `/api/../admin` would be limited as `/api/*` and served
/// as `/admin`. So such a path is refused, never decided.
pub fn has_dot_segments(path: &str) -> bool {
    path.split('/')
        .flat_map(|s| s.split("%2F").flat_map(|s| s.split("%2f")))
        .any(|seg| seg == "." || seg == "..")
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
    if has_dot_segments(req.match_info().as_str()) {
        let e = ApiError::bad_request(
            "invalid_path",
            "The path has \".\" or \"..\" segments: send it resolved.",
        );
        return Ok(req.error_response(e));
    }
    let state = state(&req);
    let client = match state.identity.client_id(req.headers(), req.peer_addr()) {
        Ok(c) => c,
        Err(e) => return Ok(req.error_response(e)),
    };
    let path = req.match_info().as_str();
    let policy = state.policies.current().resolve(path, &client).clone();
    // In reverse-proxy mode every path that is not the server's own goes upstream.
    let via = match req.app_data::<proxy::Forwarder>() {
        Some(_) => Via::Proxy,
        None => Via::Route,
    };
    let shown = || Arc::from(path);
    let decision = match decide(&state, &client, &policy, shown, via, 1, Mode::Consume).await {
        Ruling::Inactive => return Ok(next.call(req).await?.map_into_boxed_body()),
        Ruling::Failed => {
            return match state.on_error {
                OnError::Allow => Ok(next.call(req).await?.map_into_boxed_body()),
                OnError::Deny => Ok(req.error_response(ApiError::LimiterUnavailable)),
            };
        }
        Ruling::Decided(d) => d,
    };
    let now = state.clock.now();
    if !policy.refuses(&decision) {
        let mut res = next.call(req).await?.map_into_boxed_body();
        add_headers(res.headers_mut(), &policy, &decision, now);
        return Ok(res);
    }
    Ok(req.into_response(refusal(&client, &policy, &decision, now)))
}

/// What the server ruled on one check, whoever asked (a protected route, the decision
/// API).
pub enum Ruling {
    /// The config that applies is inactive: nothing is limited, nothing counted.
    Inactive,
    Decided(Decision),
    /// The limiter could not decide in time: `--on-error` applies.
    Failed,
}

/// The one decision path of the HTTP layer: decides `cost` units of `client` under
/// `policy` (resolved from `path`) within `--decision-timeout-ms`, and counts the
/// outcome in the metrics. Peeks are answered, not counted.
pub async fn decide(
    state: &AppState,
    client: &Arc<str>,
    policy: &Arc<Policy>,
    path: impl FnOnce() -> Arc<str>,
    via: Via,
    cost: u64,
    mode: Mode,
) -> Ruling {
    if !policy.active {
        return Ruling::Inactive;
    }
    let started = Instant::now();
    let deadline = started + state.decision_timeout;
    let check = Check {
        client: client.clone(),
        policy: policy.clone(),
        cost,
        mode,
        // The request gives up at `deadline`, and learns of an answer up to one ticker
        // period late: an answer given after this could not reach it in time, so the
        // limiter refuses the check (consuming nothing) instead.
        answer_by: deadline.checked_sub(deadline::TICK).unwrap_or(started),
        // Made only while a feed would show it.
        asked: state
            .interest
            .wants(client)
            .then(|| Asked { via, path: path() }),
    };
    let answer = deadline::within(deadline, state.registries.decide(check)).await;
    let counted = mode == Mode::Consume;
    match answer {
        Ok(Ok(d)) => {
            if counted {
                Metrics::observe(&state.metrics.decision_seconds, started.elapsed());
                let outcome = match (d.allowed, policy.shadow) {
                    (true, _) => Outcome::allowed,
                    (false, false) => Outcome::limited,
                    (false, true) => Outcome::shadow_limited,
                };
                state.metrics.decision(&policy.endpoint, outcome);
            }
            Ruling::Decided(d)
        }
        failed => {
            let reason = match failed {
                Err(_) => ErrorReason::timeout,
                Ok(_) => ErrorReason::unavailable,
            };
            if counted {
                failed_decision(state, client, &policy.endpoint, reason);
            }
            Ruling::Failed
        }
    }
}

/// The answer to a refused request: 429 with `Retry-After`, the rate-limit headers and
/// a JSON body saying why and until when.
pub fn refusal(client: &str, policy: &Policy, decision: &Decision, now: Nanos) -> HttpResponse {
    let retry_after = retry_after_secs(decision);
    let mut res = HttpResponse::TooManyRequests().json(Refusal {
        error: "rate_limit_exceeded",
        message: format!(
            "Rate limit exceeded: {} requests per {} s for {}. Retry in {retry_after} s.",
            decision.limit, policy.window_seconds, policy.endpoint
        ),
        client_id: client.to_owned(),
        endpoint: policy.endpoint.to_string(),
        limit: decision.limit,
        remaining: 0,
        retry_after,
        reset_time: rfc3339(now.saturating_add(decision.reset_after)),
    });
    add_headers(res.headers_mut(), policy, decision, now);
    res
}

/// A check whose limiter could not decide: counted under `--on-error`'s outcome, and
/// logged at most once a second so an outage cannot flood the log.
fn failed_decision(state: &AppState, client: &str, endpoint: &Arc<str>, reason: ErrorReason) {
    static LAST_WARNED: AtomicU64 = AtomicU64::new(0);
    let second = state.clock.now() / NANOS_PER_SEC;
    if LAST_WARNED.swap(second, Ordering::Relaxed) != second {
        log::warn!(
            "client {client:?}: no decision for {endpoint} ({reason:?}); --on-error {:?} applies",
            state.on_error
        );
    }
    state.metrics.decision_error(reason);
    let outcome = match state.on_error {
        OnError::Allow => Outcome::on_error_allowed,
        OnError::Deny => Outcome::on_error_denied,
    };
    state.metrics.decision(endpoint, outcome);
}

/// Logs every request at debug level as `key=value` pairs: method, path (never the query
/// string, which may carry a token), status, time taken and peer. Costs nothing above
/// debug.
pub async fn log_request(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    if !log::log_enabled!(log::Level::Debug) {
        return next.call(req).await;
    }
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.path().to_owned();
    let peer = req.peer_addr();
    let res = next.call(req).await;
    let status = match &res {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.as_response_error().status_code().as_u16(),
    };
    // key=value pairs; the path is quoted with Rust escapes, so no request can forge
    // a field or a line.
    log::debug!(
        "request method={method} path={path:?} status={status} duration_us={} peer={}",
        started.elapsed().as_micros(),
        peer.map_or_else(|| "unknown".to_owned(), |p| p.ip().to_string())
    );
    res
}

/// `Retry-After` of a refused request: whole seconds until a request would be allowed
/// again, rounded up so never earlier than the truth, and at least 1.
pub fn retry_after_secs(d: &Decision) -> u64 {
    ceil_secs(d.retry_after).max(1)
}

/// `RateLimit`'s `t`. With quota left (`r` > 0): seconds until all of it is back, the
/// same point as `X-RateLimit-Reset`. With none left (`r` = 0, on the last allowed
/// request and on every 429): seconds until the next request is allowed, which on a 429
/// is exactly `Retry-After`, so both name the same point in time as the draft asks. A
/// client that waits `t` seconds always has quota again.
pub fn reset_secs(d: &Decision) -> u64 {
    match d.remaining {
        0 => retry_after_secs(d),
        _ => ceil_secs(d.reset_after),
    }
}

/// The rate-limit headers of one decision, with `Retry-After` when it was refused.
/// Every surface (a protected route, `/v1/check`, `/v1/forward-auth`) sends these.
pub fn add_headers(headers: &mut HeaderMap, policy: &Policy, d: &Decision, now: Nanos) {
    let reset_at = now
        .div_ceil(NANOS_PER_SEC)
        .saturating_add(ceil_secs(d.reset_after));
    headers.insert(X_LIMIT, HeaderValue::from(d.limit));
    headers.insert(X_REMAINING, HeaderValue::from(d.remaining));
    headers.insert(X_RESET, HeaderValue::from(reset_at));
    for (header, value) in structured_fields(policy, d) {
        // `sf_string` only emits printable ASCII, so this cannot fail.
        if let Ok(v) = HeaderValue::try_from(value) {
            headers.insert(header, v);
        }
    }
    // Only a refusal says when to retry; a request let through in shadow mode does not.
    if policy.refuses(d) {
        headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(d)));
    }
}

/// The structured rate-limit fields of one decision, `RateLimit` then
/// `RateLimit-Policy`: part of [`add_headers`], and what Envoy's callers get.
pub fn structured_fields(policy: &Policy, d: &Decision) -> [(HeaderName, String); 2] {
    let name = sf_string(&policy.endpoint);
    [
        (
            RATELIMIT,
            format!("{name};r={};t={}", d.remaining, reset_secs(d)),
        ),
        (
            RATELIMIT_POLICY,
            format!("{name};q={};w={}", d.limit, policy.window_seconds),
        ),
    ]
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

/// Admin access (the admin API, `/metrics` and the live feeds): the admin token when
/// one is configured (see [`authorize`]), else loopback peers only; and a change only
/// from this server's own pages (or `--allowed-origins`), or from clients that are not
/// browsers.
pub async fn admin_access(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let state = state(&req);
    // Behind a trusted proxy on this host, the peer is always loopback: judge the
    // client the proxy names.
    let caller = state.identity.client_ip(req.headers(), req.peer_addr());
    let mut verdict = authorize(&req, caller, [&state.admin_token]);
    // A change asked by a page of another site (a simple POST or DELETE needs no
    // preflight) is refused: without a token, loopback access is all it would need.
    let safe = matches!(req.method().as_str(), "GET" | "HEAD" | "OPTIONS");
    if verdict.is_ok() && !safe {
        let tokened = match state.admin_token {
            Some(_) => Tokened::Yes,
            None => Tokened::No,
        };
        verdict = state
            .feeds
            .check_origin(req.headers(), &req.connection_info(), Some(tokened));
    }
    guarded(req, next, verdict).await
}

/// Access to the decision API (`/v1/*`): the decision token or the admin token when
/// either is configured, so a proxy needs no admin rights; else loopback peers only.
pub async fn decision_access(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let state = state(&req);
    // The caller of `/v1` is the proxy (or program) itself, whoever it names.
    let caller = req.peer_addr().map(|p| p.ip());
    let verdict = authorize(&req, caller, [&state.decision_token, &state.admin_token]);
    guarded(req, next, verdict).await
}

async fn guarded(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
    verdict: Result<(), ApiError>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    match verdict {
        Ok(()) => Ok(next.call(req).await?.map_into_boxed_body()),
        Err(e) => {
            let res = e.error_response();
            Ok(req.into_response(res))
        }
    }
}

/// With some of `tokens` configured: one of them as a bearer token (in `Authorization`,
/// or as a `bearer.<hex>` WebSocket subprotocol, or a `token` query parameter), compared
/// in constant time. With none: only a loopback `caller`.
fn authorize<'a>(
    req: &ServiceRequest,
    caller: Option<std::net::IpAddr>,
    tokens: impl IntoIterator<Item = &'a Option<String>>,
) -> Result<(), ApiError> {
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .or_else(|| protocol_token(req.headers()))
        .or_else(|| query_token(req.query_string()));
    admit(presented.as_deref(), caller, tokens)
}

/// The token of an `Authorization: Bearer <token>` value.
pub fn bearer(value: &str) -> Option<String> {
    value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_owned())
}

/// The access rule of the admin API and of every decision surface (HTTP and gRPC),
/// once the caller's token is read: with some of `tokens` configured, `presented` must
/// be one of them (compared in constant time; 401 otherwise); with none, only a
/// loopback `caller` is let in (403 otherwise).
pub fn admit<'a>(
    presented: Option<&str>,
    caller: Option<std::net::IpAddr>,
    tokens: impl IntoIterator<Item = &'a Option<String>>,
) -> Result<(), ApiError> {
    let tokens: Vec<&String> = tokens.into_iter().flatten().collect();
    if tokens.is_empty() {
        return match caller {
            Some(ip) if ip.to_canonical().is_loopback() => Ok(()),
            _ => Err(ApiError::Forbidden),
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
            .ok_or(ApiError::Unauthorized),
        None => Err(ApiError::Unauthorized),
    }
}

/// The token a browser's WebSocket carries as the subprotocol `bearer.<hex>` (a page
/// cannot set headers on a WebSocket, and a token in the URL would reach proxy logs).
fn protocol_token(headers: &HeaderMap) -> Option<String> {
    let hex = headers
        .get_all(actix_web::http::header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("bearer."))?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// The `token` query parameter, percent-decoded (for clients that can set neither a
/// header nor a subprotocol; avoid it where URLs are logged).
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
    use crate::limiter::{Algorithm, Limits, State};

    /// The `t` and `Retry-After` of `n` requests `gap` apart under `limits`.
    fn headers_of(limits: Limits, n: usize, gap: Nanos) -> Vec<(u64, Option<u64>)> {
        let mut state = State::new(limits.algorithm);
        (0..n as u64)
            .map(|i| {
                let d = state.check(&limits, 1, 1_000 * NANOS_PER_SEC + i * gap);
                (reset_secs(&d), (!d.allowed).then(|| retry_after_secs(&d)))
            })
            .collect()
    }

    #[test]
    fn t_is_retry_after_on_every_refusal() {
        let ms = NANOS_PER_SEC / 1000;
        let mut bucket = Limits::new(Algorithm::TokenBucket, 3, 60);
        bucket.burst = 3;
        // The case: the 4th request of a 3-per-60-s bucket waits 20 s, not 60.
        let seen = headers_of(bucket, 5, ms);
        assert_eq!(seen[3], (20, Some(20)));
        // With quota left, `t` is when all of it is back: one token (20 s), two (40 s).
        assert_eq!(&seen[..3], &[(20, None), (40, None), (20, None)]);
        // A sliding window with admissions 2.2 s apart: the 3rd refusal comes when the
        // first admission leaves the window.
        let sliding = Limits::new(Algorithm::SlidingWindow, 2, 60);
        let seen = headers_of(sliding, 3, 2_200 * ms);
        assert_eq!(seen[2], (56, Some(56)));
        for limits in [bucket, sliding, Limits::new(Algorithm::FixedWindow, 2, 60)] {
            for gap in [0, ms, 700 * ms, 2_200 * ms] {
                for (t, retry_after) in headers_of(limits, 8, gap) {
                    if let Some(r) = retry_after {
                        assert_eq!(t, r, "{limits:?} gap {gap}");
                    }
                }
            }
        }
    }

    #[test]
    fn exempts_whole_segments_only() {
        for p in [
            "/admin",
            "/admin/configs",
            "/health",
            "/livez",
            "/readyz",
            "/ws/global",
            "/static/app.js",
        ] {
            assert!(is_exempt(p), "{p}");
        }
        for p in [
            "/",
            "/administrator",
            "/healthz",
            "/livezz",
            "/readyz.html",
            "/api/admin",
            "//admin",
        ] {
            assert!(!is_exempt(p), "{p}");
        }
    }

    #[test]
    fn finds_dot_segments() {
        for p in [
            "/api/../admin",
            "/..",
            "/a/./b",
            "/a/..%2Fb",
            "/a%2f..%2fb",
            "/a/..",
        ] {
            assert!(has_dot_segments(p), "{p}");
        }
        for p in ["/", "/a.b/c", "/...", "/a/.b", "/a..", "/a%2Fb"] {
            assert!(!has_dot_segments(p), "{p}");
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
    fn reads_the_token_from_a_websocket_subprotocol() {
        let mut h = HeaderMap::new();
        let set = |h: &mut HeaderMap, v: &'static str| {
            h.insert(
                actix_web::http::header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(v),
            )
        };
        set(&mut h, "ratewarden, bearer.746f6b2f656e3d31");
        assert_eq!(protocol_token(&h), Some("tok/en=1".to_owned()));
        for bad in ["ratewarden", "bearer.7", "bearer.zz", "bearer.ff"] {
            set(&mut h, bad);
            assert_eq!(protocol_token(&h), None, "{bad}");
        }
    }

    #[test]
    fn compares_tokens_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret!"));
    }
}
