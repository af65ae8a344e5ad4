//! Three middlewares: `rate_limit` decides every request outside the exempt prefixes (one
//! message to the client's registry shard, bounded by `--decision-timeout-ms`),
//! `admin_access` guards `/admin`, `/metrics` and the feeds, and `log_request` logs every
//! request at debug level.

use super::AppState;
use super::proxy;
use crate::access::{AllowedHosts, Asker, admit, bearer};
use crate::actors::Via;
use crate::clock::Nanos;
use crate::decide::{Cost, Ruling, retry_after_secs, structured_fields};
use crate::error::{ApiError, Refusal};
use crate::limiter::{Decisions, Mode};
use crate::policy::Policy;
use crate::settings::OnError;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use actix_web::middleware::Next;
use actix_web::rt::time::Instant;
use actix_web::{Error, HttpResponse, ResponseError, web};
use std::sync::Arc;

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

/// A response body and what its request holds until the body is done with.
struct Holding {
    body: BoxBody,
    _hold: crate::decide::Hold,
}

impl MessageBody for Holding {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> actix_web::body::BodySize {
        self.body.size()
    }

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<actix_web::web::Bytes, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

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
    // Most paths have no dot at all.
    if !path.contains('.') {
        return false;
    }
    path.split('/')
        .flat_map(|s| s.split("%2F").flat_map(|s| s.split("%2f")))
        .any(|seg| seg == "." || seg == "..")
}

const X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

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
    let path = req.match_info().as_str();
    // Counted under the config's key: the client id, the address, a header, or global.
    let (values, policy) = match state.resolve_request(path, req.headers(), req.peer_addr()) {
        Ok(found) => found,
        Err(e) => return Ok(req.error_response(e)),
    };
    // In reverse-proxy mode every path that is not the server's own goes upstream.
    let via = match req.app_data::<proxy::Forwarder>() {
        Some(_) => Via::Proxy,
        None => Via::Route,
    };
    let shown = || Arc::from(path);
    // A route's limits of bytes take the request body's declared length up front; the
    // reverse proxy's are charged the response body's bytes as it streams.
    let cost = match via {
        Via::Route => {
            let length = || super::content_length(req.headers()).unwrap_or(0);
            match super::usage::bytes_up_front(&policy, length) {
                Ok(bytes) => Cost { bytes, ..Cost::ONE },
                Err(limit) => return Ok(req.error_response(ApiError::PayloadTooLarge { limit })),
            }
        }
        _ => Cost::ONE,
    };
    let ruling = state
        .decider
        .decide(&values, &policy, shown, via, cost, Mode::Consume)
        .await;
    let decision = match ruling {
        Ruling::Inactive => return Ok(next.call(req).await?.map_into_boxed_body()),
        Ruling::Failed => {
            return match state.decider.on_error {
                OnError::Allow => Ok(next.call(req).await?.map_into_boxed_body()),
                OnError::Deny => Ok(req.error_response(ApiError::LimiterUnavailable)),
            };
        }
        Ruling::Decided(d, hold) => (d, hold),
    };
    let (decision, hold) = decision;
    let now = state.clock.now();
    if !policy.refuses(&decision) {
        // What the request holds (its concurrency limits' units) is given back when
        // its response body is done with: sent whole, or the connection gone. An error
        // or a panic on the way drops it sooner.
        let mut res = next.call(req).await?.map_into_boxed_body();
        // What the response says the request used is charged to its limits of tokens
        // or bytes.
        if super::usage::charges_after(&policy) {
            res = super::usage::charge_response(&state, &values, &policy, via, res).await;
        }
        add_headers(res.headers_mut(), &policy, &decision, now);
        if hold.is_empty() {
            return Ok(res);
        }
        return Ok(res.map_body(|_, body| Holding { body, _hold: hold }.boxed()));
    }
    let problem = wants_problem(req.headers());
    let res = refusal(
        &values[0],
        &policy,
        &decision,
        now,
        problem,
        StatusCode::TOO_MANY_REQUESTS,
    );
    Ok(req.into_response(res))
}

/// Whether the client asks for errors as problem details (RFC 9457): an `Accept` that
/// names `application/problem+json` (with a non-zero weight).
pub fn wants_problem(headers: &HeaderMap) -> bool {
    headers
        .get_all(actix_web::http::header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let kind = parts.next().unwrap_or_default();
            kind.eq_ignore_ascii_case("application/problem+json")
                && !parts.any(|p| {
                    p.split_once('=').is_some_and(|(k, q)| {
                        k.trim().eq_ignore_ascii_case("q")
                            && q.trim().parse::<f32>().is_ok_and(|q| q == 0.0)
                    })
                })
        })
}

/// The problem type of the IETF rate-limit headers draft for a refusal.
const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// A refusal as problem details (RFC 9457): the draft's members, then the plain
/// answer's fields as extension members.
#[derive(serde::Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    detail: &'a str,
    #[serde(rename = "violated-policies")]
    violated_policies: Vec<&'a str>,
    #[serde(flatten)]
    plain: &'a Refusal,
}

/// The answer to a refused request: `status` (429, or forward-auth's deny status) with
/// `Retry-After`, the rate-limit headers and a JSON body saying why and until when; with
/// `problem`, that body as problem details (`application/problem+json`, the draft's
/// `quota-exceeded` type, its `violated-policies` naming the config).
pub fn refusal(
    client: &str,
    policy: &Policy,
    decision: &Decisions,
    now: Nanos,
    problem: bool,
    status: StatusCode,
) -> HttpResponse {
    let retry_after = retry_after_secs(decision);
    let binding = decision.binding();
    let violated: Vec<&str> = match policy.several() {
        true => policy.violated(decision).map(|l| &*l.name).collect(),
        false => Vec::new(),
    };
    let which = match policy.several() {
        true => format!("limit {:?}: ", policy.limits[binding].name),
        false => String::new(),
    };
    let refusal = Refusal {
        error: "rate_limit_exceeded",
        message: format!(
            "Rate limit exceeded: {which}{} for {}. Retry in {retry_after} s.",
            policy.limit_words(binding, decision.limit),
            policy.endpoint
        ),
        client_id: client.to_owned(),
        endpoint: policy.endpoint.to_string(),
        limit: decision.limit,
        // 0 for a request refused for lack of one unit; what is left for one whose cost
        // (a body's declared bytes) did not fit.
        remaining: decision.remaining,
        retry_after,
        reset_time: decision.reset_time(now),
        violated: violated.iter().map(|v| (*v).to_owned()).collect(),
    };
    let mut res = match problem {
        false => HttpResponse::build(status).json(refusal),
        true => {
            let body = Problem {
                kind: QUOTA_EXCEEDED,
                title: "Request cannot be satisfied as assigned quota has been exceeded",
                status: status.as_u16(),
                detail: &refusal.message,
                violated_policies: match policy.several() {
                    true => violated,
                    false => vec![&policy.endpoint],
                },
                plain: &refusal,
            };
            HttpResponse::build(status)
                .content_type("application/problem+json")
                .body(serde_json::to_string(&body).unwrap_or_default())
        }
    };
    add_headers(res.headers_mut(), policy, decision, now);
    res
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

/// The rate-limit headers of one decision, with `Retry-After` when it was refused.
/// Every surface (a protected route, `/v1/check`, `/v1/forward-auth`) sends these.
/// The `X-RateLimit-*` headers describe the binding limit (see `limiter::Decisions`).
pub fn add_headers(headers: &mut HeaderMap, policy: &Policy, d: &Decisions, now: Nanos) {
    let reset_at = d.reset_at_secs(now);
    headers.insert(X_LIMIT, policy.quota_field.limit_field(policy, d));
    headers.insert(X_REMAINING, HeaderValue::from(d.remaining));
    headers.insert(X_RESET, HeaderValue::from(reset_at));
    for (header, value) in structured_fields(policy, d) {
        headers.insert(header, value);
    }
    // Only a refusal says when to retry; a request let through in shadow mode does not.
    if policy.refuses(d) {
        headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(d)));
    }
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
    let mut verdict = authorize(&req, caller, &state.allowed_hosts, [&state.admin_token]);
    // A change asked by a page of another site (a simple POST or DELETE needs no
    // preflight) is refused: without a token, loopback access is all it would need.
    let safe = matches!(req.method().as_str(), "GET" | "HEAD" | "OPTIONS");
    if verdict.is_ok() && !safe {
        verdict = state
            .feeds
            .check_origin(req.headers(), &req.connection_info(), true);
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
    let verdict = authorize(&req, caller, &state.allowed_hosts, state.decision_tokens());
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
/// in constant time. With none: only a loopback `caller` that addressed a loopback or
/// allowed host (see [`crate::access`]).
fn authorize<'a>(
    req: &ServiceRequest,
    caller: Option<std::net::IpAddr>,
    allowed_hosts: &AllowedHosts,
    tokens: impl IntoIterator<Item = &'a Option<String>>,
) -> Result<(), ApiError> {
    // `Host` as the client sent it (no page can set it), never X-Forwarded-Host or
    // Forwarded, which a same-origin page may; HTTP/2 carries it in the URI. A value
    // that is not text names no allowed host.
    let host = match req.headers().get(actix_web::http::header::HOST) {
        Some(h) => Some(h.to_str().unwrap_or("")),
        None => req.uri().authority().map(|a| a.as_str()),
    };
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .or_else(|| protocol_token(req.headers()))
        .or_else(|| query_token(req.query_string()));
    let asker = Asker {
        token: presented.as_deref(),
        ip: caller,
        host,
    };
    Ok(admit(asker, allowed_hosts, tokens)?)
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
    // Most requests carry no query: nothing to decode.
    if query.is_empty() {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct TokenQuery {
        token: String,
    }
    web::Query::<TokenQuery>::from_query(query)
        .ok()
        .map(|q| q.into_inner().token)
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
}
