//! Decisions for other services: the decision API for programs, `POST /v1/check`,
//! forward-auth for proxies, `/v1/forward-auth`, and Envoy's rate-limit protocol in
//! protojson, `POST /v1/envoy/json`. Each is an adapter over the decision core
//! ([`crate::decide::Decider`]): they get the same decision a protected route gets
//! (resolve the path to its config, decide through the client's limiter, count, stream).
//!
//! `/v1/check` takes a cost and a peek mode, one check or a batch of up to
//! [`MAX_CHECKS`] decided in order. A refused check is still a 200 (the call worked); a
//! bad one is a 400 or 422 naming the field, and then nothing of the call is decided.
//!
//! `/v1/forward-auth` reads the original request from the headers the proxy sets (only
//! those of the family `--forward-auth-headers` names, so a client cannot choose its
//! config by sending the other family) and answers 200 or the refusal.

use super::AppState;
use super::client_id::validate_client_id;
use super::middleware::{add_headers, has_dot_segments, refusal, wants_problem};
use crate::actors::Via;
use crate::actors::client_limiter::LimitStatus;
use crate::clock::{NANOS_PER_SEC, Nanos, rfc3339};
use crate::config::key::KeySource;
use crate::config::{Key, ValidationError};
use crate::decide::{Charging, Cost, Lease, Ruling};
use crate::envoy::proto::{Code, RateLimitRequest};
use crate::envoy::{Failure, should_rate_limit};
use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::limiter::{Algorithm, Decisions, Mode};
use crate::policy::{KeyValues, Policy};
use crate::settings::{ForwardAuthHeaders, OnError};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;
use utoipa::ToSchema;

/// Checks one call may carry.
pub const MAX_CHECKS: usize = 100;

/// One check as asked for, validated.
struct Ask {
    /// The values the check counts under (see `policy::KeyValues`).
    values: KeyValues,
    path: String,
    policy: Arc<Policy>,
    cost: Cost,
    mode: Mode,
}

/// One check, as `POST /v1/check` reads it (the parser below reads these fields by name;
/// `tests/openapi.rs` sends one built from this schema).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // a description of the input, which `parse` reads field by field
struct CheckRequest {
    /// The client, by the rule of `X-Client-ID`: 1 to 128 of `A-Z a-z 0-9 . _ : @ -`.
    /// Required when the path's config counts per client (the default key), ignored
    /// otherwise.
    #[schema(pattern = "^[A-Za-z0-9._:@-]{1,128}$", nullable = false)]
    client_id: Option<String>,
    /// The path of the request being decided (its query string is ignored).
    #[schema(pattern = "^/", max_length = 2048)]
    path: String,
    /// The request's method, for the record.
    #[schema(pattern = "^[A-Za-z]+$", nullable = false)]
    method: Option<String>,
    /// Units to take of the config's limits of requests (0 to the smallest of their
    /// quotas; default 1).
    #[schema(minimum = 0, nullable = false)]
    cost: Option<u64>,
    /// Units to take up front of the config's limits of tokens or bytes, whose cost is
    /// known (or estimated) before the request runs: 0 to the smallest of their quotas;
    /// default 0, which takes nothing and is admitted while a unit is left. An admitted
    /// check that took an estimate answers a `check_id` for `POST /v1/report` to
    /// reconcile with what the request used.
    #[schema(minimum = 0, nullable = false)]
    estimate: Option<u64>,
    /// Only look: decide nothing, count nothing.
    #[schema(nullable = false)]
    peek: Option<bool>,
    /// The original request's address: required when the path's config counts per IP
    /// address (`"key": "ip"`), ignored otherwise.
    #[schema(nullable = false, example = "192.0.2.7")]
    ip: Option<String>,
    /// The original request's headers that a config's `header:<Name>` key reads (names
    /// in any case; a header not given counts as empty).
    #[schema(nullable = false)]
    headers: Option<std::collections::BTreeMap<String, String>>,
}

/// Several checks, decided in order.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct BatchRequest {
    #[schema(min_items = 1, max_items = 100)]
    checks: Vec<CheckRequest>,
}

/// The body of `POST /v1/check`: one check, or a batch.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum CheckBody {
    One(CheckRequest),
    Batch(BatchRequest),
}

/// One check's answer.
#[derive(Debug, Serialize, ToSchema)]
struct Answer {
    /// Whether the request may go on: within the limit, or over it in shadow mode.
    allowed: bool,
    /// Over the limit (in shadow mode `allowed` is still true).
    would_limit: bool,
    /// The config that applied.
    endpoint: String,
    algorithm: Algorithm,
    /// False when that config is inactive: nothing was limited or counted.
    active: bool,
    limit: u64,
    remaining: u64,
    /// Seconds until a check of this cost would be allowed (0 when it is).
    retry_after: f64,
    /// Seconds until the quota is fully restored.
    reset_after: f64,
    reset_time: String,
    /// Set when the limiter could not decide in time: `allowed` is then what
    /// `--on-error` says.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    /// Under a config of several limits, each one's decision in the config's order (the
    /// fields above are the binding limit's: on a refusal, the one with the longest
    /// wait; otherwise the one with the fewest units left relative to its quota).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    limits: Vec<LimitStatus>,
    /// Under a config with a concurrency limit, an admitted check holds its units until
    /// this lease is given back (`POST /v1/release`) or ends by itself (the limit's
    /// `lease_seconds`, 60 by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<String>,
    /// When the check took an `estimate` of limits of tokens or bytes: what
    /// `POST /v1/report` names to reconcile it with what the request used, once.
    #[serde(skip_serializing_if = "Option::is_none")]
    check_id: Option<String>,
}

/// The answer of `POST /v1/check`: one check's, or a batch's.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
enum CheckAnswer {
    One(Answer),
    Batch(Batch),
}

/// The batch form's answer.
#[derive(Serialize, ToSchema)]
struct Batch {
    results: Vec<Answer>,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
    ApiError::Validation(ValidationError::new(field, message.into()))
}

/// `POST /v1/check`.
#[utoipa::path(
    post,
    path = "/v1/check",
    tag = "decisions",
    request_body(content = CheckBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Decided: `allowed` says whether (a refusal is a 200 too); a batch answers `results`", body = CheckAnswer),
        (status = 422, description = "A bad check; `field` names it (checks[2].cost); nothing was decided", body = ErrorBody),
    )
)]
pub async fn check(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // Every check is validated before any is decided, so a bad call consumes nothing.
    let batch = items(&req, payload, "checks", |c, at| parse(&state, c, at)).await?;
    let now = || state.clock.now();
    match batch {
        Items::Batch(asks) => {
            let mut results = Vec::with_capacity(asks.len());
            // In order: each check sees what the ones before it consumed.
            for ask in &asks {
                results.push(answer(&state, ask, now()).await.0);
            }
            Ok(HttpResponse::Ok().json(CheckAnswer::Batch(Batch { results })))
        }
        Items::One(ask) => {
            let (answer, decision) = answer(&state, &ask, now()).await;
            let mut res = HttpResponse::Ok().json(CheckAnswer::One(answer));
            if let Some(d) = decision {
                add_headers(res.headers_mut(), &ask.policy, &d, now());
            }
            Ok(res)
        }
    }
}

/// One check or report of a call as an object (`prefix` names it within a batch).
fn object(item: Value, prefix: &str) -> Result<Map<String, Value>, ApiError> {
    match item {
        Value::Object(c) => Ok(c),
        _ => {
            let field = prefix.trim_end_matches('.');
            Err(invalid(
                if field.is_empty() { "body" } else { field },
                "must be a JSON object",
            ))
        }
    }
}

/// A call's items: one, or a batch.
enum Items<T> {
    One(T),
    Batch(Vec<T>),
}

/// Reads a call of one item, or a batch of 1 to [`MAX_CHECKS`] under `plural`, each
/// validated by `parse` (given the prefix that names it in error fields, `checks[2].`)
/// before any is acted on.
async fn items<T>(
    req: &HttpRequest,
    payload: web::Payload,
    plural: &str,
    parse: impl Fn(Value, &str) -> Result<T, ApiError>,
) -> Result<Items<T>, ApiError> {
    let body = super::read_json(req, payload).await?;
    let Value::Object(mut body) = body else {
        return Err(invalid("body", "must be a JSON object"));
    };
    let Some(list) = body.remove(plural) else {
        return Ok(Items::One(parse(Value::Object(body), "")?));
    };
    if let Some(other) = body.keys().next() {
        return Err(invalid(
            other.clone(),
            format!("is not allowed next to {plural}"),
        ));
    }
    let Value::Array(list) = list else {
        return Err(invalid(plural, format!("must be an array of {plural}")));
    };
    if list.is_empty() || list.len() > MAX_CHECKS {
        return Err(invalid(
            plural,
            format!("must hold 1 to {MAX_CHECKS} {plural}"),
        ));
    }
    let parsed = (list.into_iter().enumerate())
        .map(|(i, item)| parse(item, &format!("{plural}[{i}].")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Items::Batch(parsed))
}

/// Validates one check (`prefix` names it within a batch in error messages).
fn parse(state: &AppState, check: Value, prefix: &str) -> Result<Ask, ApiError> {
    let mut c = object(check, prefix)?;
    let field = |name: &str| format!("{prefix}{name}");
    let (values, path, policy) = original(state, &mut c, prefix)?;
    let units = |c: &mut Map<String, Value>, name: &str, default: u64| match c.remove(name) {
        None => Ok(default),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| invalid(field(name), "must be a whole number of units, 0 or more")),
    };
    if c.contains_key("cost") && policy.limits.iter().all(|l| l.is_metered()) {
        return Err(invalid(
            field("cost"),
            format!(
                "is for limits of requests, and the limits of {} count {}: send what the \
                 request will use as estimate, or report it after (POST /v1/report)",
                policy.endpoint,
                policy.limits[0].unit.as_str()
            ),
        ));
    }
    let cost = units(&mut c, "cost", 1)?;
    let estimate = units(&mut c, "estimate", 0)?;
    // A cost above a limit's quota could never be admitted; an estimate needs limits
    // of tokens or bytes to take it.
    fits_quotas(&policy, cost, false).map_err(|m| invalid(field("cost"), m))?;
    if estimate > 0 {
        if !policy.limits.iter().any(|l| l.is_metered()) {
            return Err(invalid(
                field("estimate"),
                format!(
                    "is for limits of tokens or bytes, and the config of {} has none \
                     (send the request's units as cost)",
                    policy.endpoint
                ),
            ));
        }
        fits_quotas(&policy, estimate, true).map_err(|m| invalid(field("estimate"), m))?;
    }
    let cost = Cost {
        requests: cost,
        tokens: estimate,
        bytes: estimate,
    };
    let mode = match c.remove("peek") {
        None | Some(Value::Bool(false)) => Mode::Consume,
        Some(Value::Bool(true)) => Mode::Peek,
        Some(_) => return Err(invalid(field("peek"), "must be true or false")),
    };
    if let Some(other) = c.keys().next() {
        return Err(invalid(field(other), "is not a field of a check"));
    }
    Ok(Ask {
        values,
        path,
        policy,
        cost,
        mode,
    })
}

/// Takes from a check or a report what it says of the original request (`client_id`,
/// `path`, `method`, `ip`, `headers`), validated, and resolves its config and the
/// values its key counts under.
fn original(
    state: &AppState,
    c: &mut Map<String, Value>,
    prefix: &str,
) -> Result<(KeyValues, String, Arc<Policy>), ApiError> {
    let field = |name: &str| format!("{prefix}{name}");
    let string = |c: &mut Map<String, Value>, name: &str| match c.remove(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(field(name), "must be a string")),
    };
    // Needed only by a config that counts per client (see `OriginalRequest::client`);
    // checked whenever given.
    let client = string(c, "client_id")?;
    if let Some(client) = &client {
        validate_client_id(client).map_err(|e| invalid(field("client_id"), e.to_string()))?;
    }
    let path = string(c, "path")?.ok_or_else(|| invalid(field("path"), "is required"))?;
    let path = (path.len() <= 2048)
        .then(|| request_path(path.split('#').next().unwrap_or_default()))
        .flatten()
        .ok_or_else(|| {
            invalid(
                field("path"),
                "must be a request path starting with / (at most 2048 bytes, no control characters, spaces, \".\" or \"..\" segments)",
            )
        })?;
    if let Some(method) = string(c, "method")?
        && (method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()))
    {
        return Err(invalid(
            field("method"),
            "must be an HTTP method such as GET",
        ));
    }
    // What the config's key counts per, when it is not the client id: the original
    // request's address and headers, as the caller saw them.
    let ip = match c.remove("ip") {
        None => None,
        Some(Value::String(s)) => Some(
            s.parse::<std::net::IpAddr>()
                .map_err(|_| invalid(field("ip"), "must be an IP address"))?,
        ),
        Some(_) => return Err(invalid(field("ip"), "must be an IP address, as a string")),
    };
    let headers = match c.remove("headers") {
        None => Map::new(),
        Some(Value::Object(h)) if h.values().all(Value::is_string) => {
            // Header names are case-insensitive: one name given twice is ambiguous.
            let mut seen = std::collections::HashSet::new();
            if let Some(twice) = h.keys().find(|k| !seen.insert(k.to_ascii_lowercase())) {
                return Err(invalid(
                    field("headers"),
                    format!("names {twice:?} twice (header names are case-insensitive)"),
                ));
            }
            h
        }
        Some(_) => {
            return Err(invalid(
                field("headers"),
                "must be an object of header names and string values",
            ));
        }
    };
    let original = OriginalRequest {
        client: client.as_deref(),
        ip,
        headers: &headers,
        prefix,
    };
    let (values, policy) = state
        .policies
        .current()
        .resolve_keyed(&path, |key| key.value(&original))?;
    Ok((values, path, policy))
}

/// Whether `units` fit every quota of the limits of `policy` that are (`metered`) or
/// are not of tokens or bytes; the message for a field when not.
fn fits_quotas(policy: &Policy, units: u64, metered: bool) -> Result<(), String> {
    let smallest = (policy.limits.iter())
        .filter(|l| l.is_metered() == metered)
        .min_by_key(|l| l.limit.quota());
    match smallest {
        Some(l) if units > l.limit.quota() => {
            let quota = l.limit.quota();
            Err(match policy.several() {
                true => format!(
                    "must be at most the smallest quota of {} ({quota}, limit {:?})",
                    policy.endpoint, l.name
                ),
                false => format!("must be at most the limit of {} ({quota})", policy.endpoint),
            })
        }
        _ => Ok(()),
    }
}

/// What a check names of the original request, for the config's key.
struct OriginalRequest<'a> {
    /// The check's `client_id`, if it gave one.
    client: Option<&'a str>,
    ip: Option<std::net::IpAddr>,
    headers: &'a Map<String, Value>,
    /// The check's place in a batch, for error fields.
    prefix: &'a str,
}

impl KeySource for OriginalRequest<'_> {
    type Error = ApiError;

    fn client(&self) -> Result<Arc<str>, ApiError> {
        self.client.map(Arc::from).ok_or_else(|| {
            invalid(
                format!("{}client_id", self.prefix),
                "is required: the config of this path counts per client",
            )
        })
    }

    fn ip(&self) -> Result<Arc<str>, ApiError> {
        self.ip.map(Key::ip_value).ok_or_else(|| {
            invalid(
                format!("{}ip", self.prefix),
                "is required: the config of this path counts per IP address (key \"ip\")",
            )
        })
    }

    fn header(&self, name: &str) -> Result<Option<&[u8]>, ApiError> {
        Ok(self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str())
            .map(str::as_bytes))
    }

    fn invalid_header(&self, message: String) -> ApiError {
        invalid(format!("{}headers", self.prefix), message)
    }
}

/// Decides one check; the decision too when one was made (for the headers).
async fn answer(state: &AppState, ask: &Ask, now: Nanos) -> (Answer, Option<Decisions>) {
    let p = &ask.policy;
    let secs = |n: Nanos| n as f64 / NANOS_PER_SEC as f64;
    let quota = p.limits[0].limit.quota();
    let base = Answer {
        allowed: true,
        would_limit: false,
        endpoint: p.endpoint.to_string(),
        algorithm: p.limits[0].limit.algorithm(),
        active: p.active,
        limit: quota,
        remaining: quota,
        retry_after: 0.0,
        reset_after: 0.0,
        reset_time: rfc3339(now),
        error: None,
        limits: Vec::new(),
        lease: None,
        check_id: None,
    };
    let ruling = state
        .decider
        .decide(
            &ask.values,
            p,
            || Arc::from(ask.path.as_str()),
            Via::Check,
            ask.cost,
            ask.mode,
        )
        .await;
    match ruling {
        Ruling::Inactive => (base, None),
        Ruling::Failed => (
            Answer {
                allowed: state.decider.on_error == OnError::Allow,
                remaining: 0,
                error: Some("limiter_unavailable"),
                ..base
            },
            None,
        ),
        Ruling::Decided(d, mut hold) => (
            Answer {
                check_id: (hold.take_estimate(state.decider.lease_scope)).map(|l| l.token()),
                lease: hold
                    .into_lease(state.decider.lease_scope)
                    .map(|l| l.token()),
                allowed: !p.refuses(&d),
                would_limit: !d.allowed,
                algorithm: p.limits[d.binding()].limit.algorithm(),
                limits: LimitStatus::list(p, &d, now, p.several()),
                limit: d.limit,
                remaining: d.remaining,
                retry_after: secs(d.retry_after),
                reset_after: secs(d.reset_after),
                reset_time: d.reset_time(now),
                ..base
            },
            Some(d),
        ),
    }
}

/// One report, as `POST /v1/report` reads it: the original request as a check names
/// it, and what it used.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // a description of the input, which `parse_report` reads by name
struct ReportRequest {
    /// As in a check: required when the path's config counts per client.
    #[schema(pattern = "^[A-Za-z0-9._:@-]{1,128}$", nullable = false)]
    client_id: Option<String>,
    /// The path of the request that used the units.
    #[schema(pattern = "^/", max_length = 2048)]
    path: String,
    #[schema(pattern = "^[A-Za-z]+$", nullable = false)]
    method: Option<String>,
    /// Units of tokens or bytes the request used (0 to 10^15), charged to every limit
    /// of tokens or bytes of the path's config, past the limit too.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_u64)]
    cost: u64,
    /// The `check_id` of the check that took an estimate for this request: the report
    /// then charges what `cost` exceeds the estimate, or gives back what the estimate
    /// exceeds `cost`. Once per check id.
    #[schema(nullable = false)]
    check_id: Option<String>,
    #[schema(nullable = false, example = "192.0.2.7")]
    ip: Option<String>,
    #[schema(nullable = false)]
    headers: Option<std::collections::BTreeMap<String, String>>,
}

/// Several reports, charged in order.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct ReportBatchRequest {
    #[schema(min_items = 1, max_items = 100)]
    reports: Vec<ReportRequest>,
}

/// The body of `POST /v1/report`: one report, or a batch.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum ReportBody {
    One(ReportRequest),
    Batch(ReportBatchRequest),
}

/// One report, validated.
struct Report {
    values: KeyValues,
    policy: Arc<Policy>,
    cost: u64,
    /// The check that took an estimate, to reconcile.
    estimate: Option<Lease>,
}

/// One report's answer: its config's limits of tokens or bytes once charged.
#[derive(Debug, Serialize, ToSchema)]
struct ReportAnswer {
    /// The config that applied.
    endpoint: String,
    /// False when that config is inactive: nothing was charged.
    active: bool,
    /// Units charged now: the cost, or what it exceeds the check's estimate.
    charged: u64,
    /// Units given back: what the check's estimate exceeds the cost.
    refunded: u64,
    /// Whether a request would be admitted now by these limits (at least one unit
    /// left in each).
    allowed: bool,
    /// The binding limit's (the one with the fewest units left relative to its
    /// quota; the one with the longest wait when any is overdrawn): its quota, the
    /// units left (never below 0: an overdrawn limit shows 0), and seconds until one
    /// unit is available again (0 while one is) and until the quota is whole.
    limit: u64,
    remaining: u64,
    retry_after: f64,
    reset_after: f64,
    reset_time: String,
    /// Each limit of tokens or bytes, in the config's order.
    limits: Vec<LimitStatus>,
    /// Set in a batch when this report's `check_id` was reconciled before (nothing was
    /// charged), or the limiter could not be reached; the numbers then say nothing of
    /// the limits (0, `limits` empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

/// The answer of `POST /v1/report`: one report's, or a batch's.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
enum ReportResult {
    One(ReportAnswer),
    Batch(ReportBatch),
}

/// The batch form's answer.
#[derive(Serialize, ToSchema)]
struct ReportBatch {
    results: Vec<ReportAnswer>,
}

/// `POST /v1/report`: charges what requests used to their configs' limits of tokens or
/// bytes, after the fact (see `limiter::Mode::Charge`), or reconciles a check's
/// estimate.
#[utoipa::path(
    post,
    path = "/v1/report",
    tag = "decisions",
    request_body(content = ReportBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Charged: the limits' state once charged; a batch answers `results`", body = ReportResult),
        (status = 422, description = "A bad report, or a check id reconciled before; `field` names it (reports[2].cost); nothing was charged", body = ErrorBody),
        (status = 503, description = "The limiter could not be reached", body = ErrorBody),
    )
)]
pub async fn report(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // Every report is validated before any is charged, so a bad call charges nothing.
    let batch = items(&req, payload, "reports", |r, at| {
        parse_report(&state, r, at)
    })
    .await?;
    match batch {
        Items::Batch(reports) => {
            let mut ids = std::collections::HashSet::new();
            for (i, r) in reports.iter().enumerate() {
                if let Some(lease) = &r.estimate
                    && !ids.insert(lease.id)
                {
                    return Err(invalid(
                        format!("reports[{i}].check_id"),
                        "is named by an earlier report of this batch",
                    ));
                }
            }
            let mut results = Vec::with_capacity(reports.len());
            for r in &reports {
                results.push(match charge(&state, r).await {
                    Ok(answer) => answer,
                    Err(e) => failed(r, e, state.clock.now()),
                });
            }
            Ok(HttpResponse::Ok().json(ReportResult::Batch(ReportBatch { results })))
        }
        Items::One(r) => match charge(&state, &r).await {
            Ok(answer) => Ok(HttpResponse::Ok().json(ReportResult::One(answer))),
            Err(Charging::Reported) => Err(invalid(
                "check_id",
                "was reconciled before: a check id is reported once (nothing was charged)",
            )),
            Err(Charging::Unavailable) => Err(ApiError::LimiterUnavailable),
        },
    }
}

/// Validates one report (`prefix` names it within a batch in error messages).
fn parse_report(state: &AppState, report: Value, prefix: &str) -> Result<Report, ApiError> {
    let mut c = object(report, prefix)?;
    let field = |name: &str| format!("{prefix}{name}");
    let (values, _, policy) = original(state, &mut c, prefix)?;
    let max = crate::config::MAX_UNITS;
    let cost = match c.remove("cost") {
        None => {
            return Err(invalid(
                field("cost"),
                "is required: the units the request used",
            ));
        }
        Some(v) => v.as_u64().filter(|&n| n <= max).ok_or_else(|| {
            invalid(
                field("cost"),
                format!("must be a whole number of units, 0 to {max}"),
            )
        })?,
    };
    if policy.active && policy.metered_parts().next().is_none() {
        return Err(invalid(
            field("path"),
            format!(
                "is limited by the config {}, which has no limit of tokens or bytes to \
                 charge (a limit's \"unit\")",
                policy.endpoint
            ),
        ));
    }
    let estimate = match c.remove("check_id") {
        None => None,
        Some(Value::String(token)) => {
            let lease = Lease::parse(&token)
                // An estimate kept in another process's memory is that process's.
                .filter(|l| l.scope == state.decider.lease_scope)
                .ok_or_else(|| invalid(field("check_id"), "is not a check id this server gave"))?;
            let same = *lease.endpoint == *policy.endpoint
                && lease.values.len() == values.len()
                && lease
                    .values
                    .iter()
                    .zip(values.iter())
                    .all(|(a, b)| **a == **b);
            let estimated = policy
                .metered_parts()
                .any(|(_, p)| lease.parts.iter().any(|(slot, _)| **slot == *p.slot));
            if !same || !estimated {
                return Err(invalid(
                    field("check_id"),
                    "was given for a check of another client or config (or the config's \
                     limits of tokens or bytes changed since): report with the check's \
                     client_id and path",
                ));
            }
            // No check takes more than the smallest quota of the limits it estimated.
            if fits_quotas(&policy, lease.cost, true).is_err() {
                return Err(invalid(
                    field("check_id"),
                    "is not a check id this server gave",
                ));
            }
            Some(lease)
        }
        Some(_) => return Err(invalid(field("check_id"), "must be a string")),
    };
    if let Some(other) = c.keys().next() {
        return Err(invalid(field(other), "is not a field of a report"));
    }
    Ok(Report {
        values,
        policy,
        cost,
        estimate,
    })
}

/// Charges one report, and answers its limits' state.
async fn charge(state: &AppState, r: &Report) -> Result<ReportAnswer, Charging> {
    let now = state.clock.now();
    let p = &r.policy;
    let (charged, refunded) = match &r.estimate {
        Some(l) => (r.cost.saturating_sub(l.cost), l.cost.saturating_sub(r.cost)),
        None => (r.cost, 0),
    };
    let mut answer = ReportAnswer::empty(r, now);
    if !p.active {
        return Ok(answer);
    }
    let parts = (state.decider)
        .charge(&r.values, p, r.cost, r.estimate.as_ref())
        .await?;
    let mut each = smallvec::SmallVec::<[crate::limiter::Decision; 1]>::new();
    for (part, d) in &parts {
        answer.limits.extend(LimitStatus::list(part, d, now, true));
        each.extend(d.each().iter().copied());
    }
    let d = Decisions::of(each);
    let secs = |n: Nanos| n as f64 / NANOS_PER_SEC as f64;
    Ok(ReportAnswer {
        charged,
        refunded,
        // Shadow mode lets everything through, over the limit or not.
        allowed: !p.refuses(&d),
        limit: d.limit,
        remaining: d.remaining,
        retry_after: secs(d.retry_after),
        reset_after: secs(d.reset_after),
        reset_time: d.reset_time(now),
        ..answer
    })
}

impl ReportAnswer {
    /// The answer of `r` before anything is charged: its config, and no numbers.
    fn empty(r: &Report, now: Nanos) -> Self {
        ReportAnswer {
            endpoint: r.policy.endpoint.to_string(),
            active: r.policy.active,
            charged: 0,
            refunded: 0,
            allowed: true,
            limit: 0,
            remaining: 0,
            retry_after: 0.0,
            reset_after: 0.0,
            reset_time: rfc3339(now),
            limits: Vec::new(),
            error: None,
        }
    }
}

/// A batch's answer for a report that was not charged.
fn failed(r: &Report, e: Charging, now: Nanos) -> ReportAnswer {
    ReportAnswer {
        allowed: false,
        error: Some(match e {
            Charging::Reported => "already_reported",
            Charging::Unavailable => "limiter_unavailable",
        }),
        ..ReportAnswer::empty(r, now)
    }
}

/// The body of `POST /v1/release`.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    /// A lease from an admitted check's answer.
    lease: String,
}

/// The answer of `POST /v1/release`.
#[derive(Serialize, ToSchema)]
struct Released {
    /// False when the lease was given back before, or its config no longer has its
    /// concurrency limits: nothing was held any more.
    released: bool,
}

/// `POST /v1/release`: gives back what an admitted check holds of its config's
/// concurrency limits, once (a second release gives nothing back). A lease not given
/// back ends by itself after the limit's `lease_seconds`.
#[utoipa::path(
    post,
    path = "/v1/release",
    tag = "decisions",
    request_body(content = ReleaseBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Given back (or nothing was held any more)", body = Released),
        (status = 422, description = "Not a lease; nothing was given back", body = ErrorBody),
        (status = 503, description = "The limiter could not be reached: the lease ends by itself", body = ErrorBody),
    )
)]
pub async fn release(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = super::read_json(&req, payload).await?;
    let body: ReleaseBody = serde_json::from_value(body)
        .map_err(|_| invalid("lease", "is required: the lease of an admitted check"))?;
    // Units kept in another process's memory are that process's to give back.
    let lease = Lease::parse(&body.lease)
        .filter(|l| l.scope == state.decider.lease_scope)
        .filter(|l| l.values.iter().all(|v| crate::config::key::is_key_value(v)))
        .ok_or_else(|| invalid("lease", "is not a lease this server gave"))?;
    let released = state
        .decider
        .release(&lease)
        .await
        .map_err(|_| ApiError::LimiterUnavailable)?;
    Ok(HttpResponse::Ok().json(Released { released }))
}

/// `/v1/forward-auth`, any method: decides the request the proxy describes in its
/// headers, for the client it names (see `Identity`: `X-Client-ID` when enabled, else the
/// address, believed from `X-Forwarded-For` / `X-Real-IP` only when the caller is one of
/// `--trusted-proxies`). 200 with the rate-limit headers and an empty body when allowed;
/// the usual 429 (or `--forward-auth-deny-status`) when refused.
#[utoipa::path(
    method(get, post, put, patch, delete, head),
    path = "/v1/forward-auth",
    tag = "decisions",
    params(
        ("X-Original-URI" = String, Header, pattern = "^/", description = "The original request's path and query (with --forward-auth-headers forwarded: X-Forwarded-Uri)"),
        ("X-Original-Method" = Option<String>, Header, description = "The original request's method (with --forward-auth-headers forwarded: X-Forwarded-Method)"),
        ("X-Client-ID" = Option<String>, Header, description = "The client; else its address"),
    ),
    responses(
        (status = 200, description = "Allowed: let the request through"),
        (status = 429, description = "Over the limit (or --forward-auth-deny-status)", body = crate::error::Refusal),
        (status = 400, description = "The headers name no valid request or client", body = ErrorBody),
    )
)]
pub async fn forward_auth(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (uri_header, method_header, length_header) = match state.forward_auth.headers {
        ForwardAuthHeaders::Original => (
            "x-original-uri",
            "x-original-method",
            "x-original-content-length",
        ),
        ForwardAuthHeaders::Forwarded => (
            "x-forwarded-uri",
            "x-forwarded-method",
            "x-forwarded-content-length",
        ),
    };
    let one = |name: &str| -> Result<Option<&str>, ApiError> {
        let mut values = req.headers().get_all(name);
        let value = values.next();
        if values.next().is_some() {
            return Err(ApiError::bad_request(
                "invalid_forward_auth",
                format!("Send one {name} header, not several."),
            ));
        }
        value.map(|v| v.to_str()).transpose().map_err(|_| {
            ApiError::bad_request("invalid_forward_auth", format!("{name} is not ASCII."))
        })
    };
    let uri = one(uri_header)?.ok_or_else(|| {
        ApiError::bad_request(
            "invalid_forward_auth",
            format!(
                "{uri_header} names the original request's path; the proxy must set it \
                 (see --forward-auth-headers)."
            ),
        )
    })?;
    let _method = one(method_header)?;
    // The original request body's declared length, for limits of bytes (0 when the
    // proxy does not say).
    let length = match one(length_header)?.map(str::trim) {
        // A proxy that sets it from a request without a body may send it empty.
        None | Some("") => 0,
        Some(n) => n.parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                "invalid_forward_auth",
                format!(
                    "{length_header} must be the original request's Content-Length, a whole number."
                ),
            )
        })?,
    };
    let path = request_path(uri).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_forward_auth",
            format!("{uri_header} must be a request path starting with /, with no \".\" or \"..\" segments."),
        )
    })?;
    let (values, policy) = state.resolve_request(&path, req.headers(), req.peer_addr())?;
    // No end of the request comes here: its concurrency limits are not enforced.
    let Some(policy) = policy.without_held().cloned() else {
        return Ok(HttpResponse::Ok().finish());
    };
    // A body that could never fit is answered with the refusal's status, which the
    // proxy maps (nginx's auth_request makes any other status a 500), and says why.
    let length = match super::usage::bytes_up_front(&policy, || length) {
        Ok(length) => length,
        Err(limit) => {
            use actix_web::ResponseError;
            let mut res = ApiError::PayloadTooLarge { limit }.error_response();
            *res.status_mut() = state.forward_auth.deny_status;
            return Ok(res);
        }
    };
    let now = state.clock.now();
    let ruling = state
        .decider
        .decide(
            &values,
            &policy,
            || Arc::from(path.as_str()),
            Via::ForwardAuth,
            Cost {
                bytes: length,
                ..Cost::ONE
            },
            Mode::Consume,
        )
        .await;
    match ruling {
        Ruling::Inactive => Ok(HttpResponse::Ok().finish()),
        Ruling::Failed => match state.decider.on_error {
            OnError::Allow => Ok(HttpResponse::Ok().finish()),
            OnError::Deny => Err(ApiError::LimiterUnavailable),
        },
        Ruling::Decided(d, _) if !policy.refuses(&d) => {
            let mut res = HttpResponse::Ok().finish();
            add_headers(res.headers_mut(), &policy, &d, now);
            Ok(res)
        }
        Ruling::Decided(d, _) => {
            let problem = wants_problem(req.headers());
            let status = state.forward_auth.deny_status;
            Ok(refusal(&values[0], &policy, &d, now, problem, status))
        }
    }
}

/// The path of a request target (`/api/data?page=2`), decoded as the router decodes a
/// request's, so it resolves to the config the same request sent to a protected route
/// would get; the query string never selects a config. `None` for anything else, and
/// for a path with `.` or `..` segments (refused as a protected route refuses them).
fn request_path(target: &str) -> Option<String> {
    match target.parse::<actix_web::http::Uri>() {
        Ok(u) if u.path().starts_with('/') && u.scheme().is_none() => {
            let path = actix_web::dev::Url::new(u).path().to_owned();
            (!has_dot_segments(&path)).then_some(path)
        }
        _ => None,
    }
}

/// How `/v1/forward-auth` reads and answers.
#[derive(Debug, Clone, Copy)]
pub struct ForwardAuth {
    pub headers: ForwardAuthHeaders,
    /// The status of a refusal (429 unless set).
    pub deny_status: StatusCode,
}

/// `POST /v1/envoy/json`: `envoy::should_rate_limit` in protojson, as envoyproxy/ratelimit's
/// `/json`: 200 with the answer when it is `OK`, 429 when `OVER_LIMIT`, with the
/// answer's headers set on the response too.
#[utoipa::path(
    post,
    path = "/v1/envoy/json",
    // The id it was published under before the route moved here.
    operation_id = "json",
    tag = "decisions",
    request_body(content = Object, content_type = "application/json",
        description = "A RateLimitRequest in protojson: {\"domain\": \"rw\", \"descriptors\": [{\"entries\": [{\"key\": \"generic_key\", \"value\": \"api\"}]}]}"),
    responses(
        (status = 200, description = "A RateLimitResponse in protojson, overallCode OK", body = Object),
        (status = 429, description = "A RateLimitResponse in protojson, overallCode OVER_LIMIT", body = Object),
        (status = 400, description = "Not a valid RateLimitRequest; nothing was decided", body = crate::error::ErrorBody),
        (status = 503, description = "A limiter could not decide in time (gRPC: UNAVAILABLE)", body = crate::error::ErrorBody),
    )
)]
pub async fn envoy_json(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = super::read_json(&req, payload).await?;
    let request = RateLimitRequest::deserialize(&body).map_err(|e| {
        ApiError::bad_request("invalid_request", format!("Not a RateLimitRequest: {e}."))
    })?;
    let answer = match should_rate_limit(&state.decider, &request).await {
        Ok(a) => a,
        Err(Failure::Invalid(m)) => return Err(ApiError::bad_request("invalid_request", m)),
        Err(Failure::Unavailable) => {
            return Err(ApiError::Unavailable(
                "A limiter could not decide in time; nothing more was decided.".to_owned(),
            ));
        }
    };
    let mut res = if answer.overall_code == Code::OverLimit as i32 {
        HttpResponse::TooManyRequests()
    } else {
        HttpResponse::Ok()
    };
    for h in &answer.response_headers_to_add {
        res.insert_header((h.key.as_str(), h.value.as_str()));
    }
    Ok(res.json(answer))
}
