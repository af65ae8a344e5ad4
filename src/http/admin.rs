//! The admin API: configs (CRUD) and statistics. Config writes go through the one
//! writer ([`crate::config::writer`]): durable before they take effect, and in effect
//! from the very next request.

use super::client_id::validate_key_value;
use super::{AppState, read_json};
use crate::actors::broadcaster::ClientReset;
use crate::actors::db::ConfigHistory;
use crate::actors::registry::Check;
use crate::clock::rfc3339;
use crate::config::writer::Edit;
use crate::config::{
    Change, Config, ConfigAction, ConfigSpec, ConfigView, DEFAULT_ENDPOINT, Source, descriptor,
    percent_encode_into, validate_endpoint, validate_name, views,
};
use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::http::openapi::{ConfigCreate, ConfigPatch, Endpoint};
use crate::limiter::Mode;
use crate::policy::Policy;
use crate::report::{ClientStatsBody, GlobalStatsBody, Traffic};
use crate::store::sqlite::HistoryEntry;
use crate::top::{By, MINUTES, Ranked};
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

const CONFIGS_PREFIX: &str = "/admin/configs/";
const HISTORY_PATH: &str = "/admin/configs/history";
const ROLLBACK_SUFFIX: &str = "/rollback";
/// History entries one request may ask for.
const MAX_HISTORY: usize = 1000;

/// The config endpoint named by the rest of the path, decoded once:
/// `/admin/configs/api/data` → `/api/data`, `/admin/configs/*` → `*`.
fn endpoint_from_path(req: &HttpRequest) -> Result<String, ApiError> {
    let raw = req.uri().path().strip_prefix(CONFIGS_PREFIX).unwrap_or("");
    decode_endpoint(raw)
}

/// The config endpoint named by the raw (still percent-encoded) rest of an admin path:
/// decoded exactly once, then validated like a config's endpoint. A descriptor rule's
/// identity (`rw: generic_key=api`, sent percent-encoded) names itself; anything else
/// names the path `/` + rest.
pub fn decode_endpoint(raw: &str) -> Result<String, ApiError> {
    let decoded = percent_decode(raw)?;
    if descriptor::is_identity(&decoded) {
        return Ok(decoded);
    }
    let endpoint = if decoded == DEFAULT_ENDPOINT {
        decoded
    } else {
        format!("/{decoded}")
    };
    validate_endpoint(&endpoint).map_err(|e| {
        ApiError::bad_request(
            "invalid_endpoint",
            format!("The path names no valid endpoint: {}.", e.message),
        )
    })?;
    Ok(endpoint)
}

fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "invalid_endpoint",
            "The path has a malformed percent-encoding.",
        )
    };
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// The `Location` of a config: its admin path, non-ASCII and reserved bytes encoded.
pub fn location(endpoint: &str) -> String {
    let rest = endpoint.strip_prefix('/').unwrap_or(endpoint);
    let mut out = String::from(CONFIGS_PREFIX);
    percent_encode_into(&mut out, rest, |b| {
        b.is_ascii_alphanumeric() || b"/-._~*".contains(&b)
    });
    out
}

fn object_from(body: Value) -> Result<Map<String, Value>, ApiError> {
    match body {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::bad_request(
            "invalid_json",
            "The body must be a JSON object.",
        )),
    }
}

/// The config a change left (or, for a delete, removed).
fn written(change: &Change) -> Result<&Config, ApiError> {
    change
        .shown()
        .ok_or_else(|| ApiError::Unavailable("The write answered no config.".to_owned()))
}

#[utoipa::path(
    get,
    path = "/admin/configs",
    tag = "configs",
    responses((status = 200, description = "Every config", body = [ConfigView]))
)]
pub async fn list_configs(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(views(state.policies.current().configs()))
}

#[utoipa::path(
    get,
    path = "/admin/configs/{endpoint}",
    tag = "configs",
    params(Endpoint),
    responses(
        (status = 200, description = "The config", body = ConfigView),
        (status = 400, description = "The path names no valid endpoint", body = ErrorBody),
        (status = 404, description = "No config for that endpoint", body = ErrorBody),
    )
)]
pub async fn get_config(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    // Compared undecoded: the config of the path `/history` is `%68istory`.
    if req.uri().path() == HISTORY_PATH {
        return config_history(state, req).await;
    }
    let endpoint = endpoint_from_path(&req)?;
    let table = state.policies.current();
    let config = table
        .get(&endpoint)
        .ok_or_else(|| ApiError::NotFound(format!("There is no config for {endpoint:?}.")))?;
    Ok(HttpResponse::Ok().json(config.view()))
}

#[utoipa::path(
    post,
    path = "/admin/configs",
    tag = "configs",
    request_body(content = ConfigCreate, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = ConfigView,
         headers(("Location" = String, description = "The config's admin path"))),
        (status = 409, description = "A config for that endpoint exists, or a config file is in charge", body = ErrorBody),
        (status = 422, description = "A rule broken; `field` names it", body = ErrorBody),
    )
)]
pub async fn create_config(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let spec = ConfigSpec::from_create(object_from(read_json(&req, payload).await?)?)?;
    let change = state.configs.write(Edit::Create(spec), Source::Api).await?;
    let config = written(&change)?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location(config.endpoint())))
        .json(config.view()))
}

#[utoipa::path(
    put,
    path = "/admin/configs/{endpoint}",
    tag = "configs",
    params(Endpoint),
    request_body(content = ConfigPatch, content_type = "application/json"),
    responses(
        (status = 200, description = "The merged config", body = ConfigView),
        (status = 404, description = "No config for that endpoint", body = ErrorBody),
        (status = 409, description = "A config file is in charge", body = ErrorBody),
        (status = 422, description = "A rule broken; `field` names it", body = ErrorBody),
    )
)]
pub async fn update_config(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let endpoint = endpoint_from_path(&req)?;
    let patch = object_from(read_json(&req, payload).await?)?;
    let change = state
        .configs
        .write(Edit::Update { endpoint, patch }, Source::Api)
        .await?;
    Ok(HttpResponse::Ok().json(written(&change)?.view()))
}

#[utoipa::path(
    delete,
    path = "/admin/configs/{endpoint}",
    tag = "configs",
    params(Endpoint),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "The path names no valid endpoint", body = ErrorBody),
        (status = 404, description = "No config for that endpoint", body = ErrorBody),
        (status = 409, description = "The default \"*\", or a config file is in charge", body = ErrorBody),
    )
)]
pub async fn delete_config(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let endpoint = endpoint_from_path(&req)?;
    state
        .configs
        .write(Edit::Delete(endpoint), Source::Api)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    endpoint: Option<String>,
    limit: Option<usize>,
}

/// One change as `GET /admin/configs/history` shows it.
#[derive(serde::Serialize, ToSchema)]
#[schema(as = HistoryEntry)]
struct HistoryView<'a> {
    version: i64,
    at: String,
    endpoint: &'a str,
    action: &'a str,
    source: &'a str,
    before: Option<ConfigView<'a>>,
    after: Option<ConfigView<'a>>,
}

fn bad_query(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(
        "invalid_query",
        format!("The query string is not valid: {e}."),
    )
}

/// `GET /admin/configs/history[?endpoint=/api/*][&limit=N]`: recorded changes, newest
/// first (100 unless `limit` says, at most 1000).
#[utoipa::path(
    get,
    path = "/admin/configs/history",
    tag = "configs",
    params(HistoryQuery),
    responses(
        (status = 200, description = "Recorded changes, newest first", body = [HistoryView]),
        (status = 400, description = "A bad query", body = ErrorBody),
    )
)]
pub async fn config_history(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q = web::Query::<HistoryQuery>::from_query(req.query_string()).map_err(bad_query)?;
    if let Some(e) = &q.endpoint {
        validate_name(e).map_err(|e| bad_query(format!("endpoint {}", e.message)))?;
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_HISTORY).contains(&limit) {
        return Err(bad_query(format!("limit must be from 1 to {MAX_HISTORY}")));
    }
    let entries = read_history(&state, q.endpoint.clone(), None, limit).await?;
    let views: Vec<HistoryView> = entries
        .iter()
        .map(|h| HistoryView {
            version: h.version,
            at: rfc3339(h.at),
            endpoint: &h.endpoint,
            action: &h.action,
            source: &h.source,
            before: h.before.as_ref().map(Config::view),
            after: h.after.as_ref().map(Config::view),
        })
        .collect();
    Ok(HttpResponse::Ok().json(views))
}

async fn read_history(
    state: &AppState,
    endpoint: Option<String>,
    version: Option<i64>,
    limit: usize,
) -> Result<Vec<HistoryEntry>, ApiError> {
    let msg = ConfigHistory {
        endpoint,
        version,
        limit,
    };
    state
        .db
        .send(msg)
        .await
        .map_err(|e| ApiError::Unavailable(format!("The database is not answering ({e}).")))?
        .map_err(|e| ApiError::Unavailable(format!("The database is failing ({e}).")))
}

#[derive(serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct RollbackQuery {
    /// The history version to go back to.
    to: i64,
}

/// `POST /admin/configs/{endpoint}/rollback?to=<version>`: makes the config exactly what
/// that change left (recreating it if it was deleted since; deleting it if that change
/// was its deletion). Recorded in the history like any other change.
#[utoipa::path(
    post,
    path = "/admin/configs/{endpoint}/rollback",
    tag = "configs",
    params(Endpoint, RollbackQuery),
    responses(
        (status = 200, description = "The config as that version left it", body = ConfigView),
        (status = 204, description = "That version was the config's deletion: deleted"),
        (status = 400, description = "A bad endpoint or query", body = ErrorBody),
        (status = 404, description = "No such version of that config", body = ErrorBody),
        (status = 405, description = "Not a rollback path", body = ErrorBody),
        (status = 409, description = "A config file is in charge, the default cannot be deleted, or the version is unreadable", body = ErrorBody),
    )
)]
pub async fn rollback(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let raw = req.uri().path().strip_prefix(CONFIGS_PREFIX).unwrap_or("");
    let Some(raw) = raw.strip_suffix(ROLLBACK_SUFFIX) else {
        return Err(ApiError::MethodNotAllowed);
    };
    let endpoint = decode_endpoint(raw)?;
    let q = web::Query::<RollbackQuery>::from_query(req.query_string()).map_err(bad_query)?;
    let entry = read_history(&state, Some(endpoint.clone()), Some(q.to), 1)
        .await?
        .pop()
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "The history of {endpoint:?} has no version {}.",
                q.to
            ))
        })?;
    // What the change did decides, not whether its config could be read: an entry
    // this server cannot read (written by a newer version) is refused, never taken for
    // a deletion.
    let deleted = entry.action == ConfigAction::Deleted.as_str();
    let edit = match (deleted, entry.after) {
        (true, _) => Edit::Delete(endpoint),
        (false, Some(config)) => Edit::Put(config.spec),
        (false, None) => {
            return Err(ApiError::Conflict(format!(
                "Version {} of {endpoint:?} holds a config this server cannot read; nothing changed.",
                q.to
            )));
        }
    };
    let change = state.configs.write(edit, Source::Rollback).await?;
    match &change.after {
        Some(config) => Ok(HttpResponse::Ok().json(config.view())),
        None => Ok(HttpResponse::NoContent().finish()),
    }
}

#[derive(serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ResetQuery {
    /// Only this config's quota (default: every config's).
    endpoint: Option<String>,
}

/// One quota a reset gave back.
#[derive(serde::Serialize, ToSchema)]
struct ResetView {
    endpoint: String,
    limit: u64,
    remaining: u64,
}

/// `DELETE /admin/clients/{client_id}/state[?endpoint=/api/*]`: gives the client its
/// whole quota back now, under one config or under every config, in whichever backend
/// decides (memory or Redis); written at the next flush, and announced on the feeds.
/// `DELETE /admin/clients/{client_id}/state`.
#[derive(serde::Serialize, ToSchema)]
struct Reset {
    client_id: String,
    reset: Vec<ResetView>,
}

#[utoipa::path(
    delete,
    path = "/admin/clients/{client_id}/state",
    tag = "stats",
    params(("client_id" = String, Path, description = "1 to 128 of A-Z a-z 0-9 . _ : @ -", pattern = "^[A-Za-z0-9._:@-]{1,128}$"), ResetQuery),
    responses(
        (status = 200, description = "The quotas given back", body = Reset),
        (status = 400, description = "A bad client id or query", body = ErrorBody),
        (status = 404, description = "No config for that endpoint", body = ErrorBody),
    )
)]
pub async fn reset_client(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let client = req.match_info().query("client_id").to_owned();
    validate_key_value(&client)?;
    let q = web::Query::<ResetQuery>::from_query(req.query_string()).map_err(bad_query)?;
    let client: Arc<str> = Arc::from(client);
    let table = state.policies.current();
    let policies: Vec<Arc<Policy>> = match &q.endpoint {
        Some(endpoint) => {
            validate_name(endpoint).map_err(|e| bad_query(format!("endpoint {}", e.message)))?;
            let policy = table.policy(endpoint, &client).ok_or_else(|| {
                ApiError::NotFound(format!("There is no config for {endpoint:?}."))
            })?;
            vec![policy.clone()]
        }
        None => table
            .configs()
            .iter()
            .filter_map(|c| table.policy(c.endpoint(), &client).cloned())
            .collect(),
    };
    let mut reset = Vec::with_capacity(policies.len());
    let mut failed = None;
    'policies: for policy in policies {
        // A config whose limits count per different keys keeps each key's state apart:
        // the value is reset wherever it holds one.
        let parts: Vec<Arc<Policy>> = match policy.groups.is_empty() {
            true => vec![policy.clone()],
            false => policy.groups.iter().map(|g| g.policy.clone()).collect(),
        };
        let mut first = None;
        for part in parts {
            let answer_by = actix_web::rt::time::Instant::now() + RESET_DEADLINE;
            let check = Check::unrecorded(client.clone(), part, 1, Mode::Reset, answer_by);
            let Ok(d) = state.registries.decide(check).await else {
                failed = Some(policy.endpoint.clone());
                break 'policies;
            };
            first.get_or_insert(d);
        }
        if let Some(d) = first {
            reset.push(ResetView {
                endpoint: policy.endpoint.to_string(),
                limit: d.limit,
                remaining: d.remaining,
            });
        }
    }
    // What was reset is announced even when a later config could not be.
    let endpoints: Vec<String> = reset.iter().map(|r| r.endpoint.clone()).collect();
    if !endpoints.is_empty() {
        if let Some(cluster) = &state.cluster {
            cluster.announce_reset(&client).await;
        }
        state.broadcaster.do_send(ClientReset {
            client: client.clone(),
            endpoints: endpoints.clone(),
        });
    }
    if let Some(endpoint) = failed {
        return Err(ApiError::Unavailable(format!(
            "The limiter could not reset {endpoint:?}; only {endpoints:?} were reset. Retry."
        )));
    }
    log::info!("client {client:?}: quota reset for {} configs", reset.len());
    Ok(HttpResponse::Ok().json(Reset {
        client_id: client.to_string(),
        reset,
    }))
}

/// `POST /admin/reload`: reads the config file (`--config-file`) and makes the configs
/// equal to it, as one change; answers what changed. 422 with the line and field when
/// the file is refused (nothing changed), 409 when no file is in charge.
#[utoipa::path(
    post,
    path = "/admin/reload",
    tag = "configs",
    responses(
        (status = 200, description = "The file applied", body = Reloaded),
        (status = 409, description = "No config file is in charge", body = ErrorBody),
        (status = 422, description = "The file was refused; `line` and `field` say where", body = ErrorBody),
    )
)]
pub async fn reload(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let changes = state.configs.reload().await?;
    let table = state.policies.current();
    Ok(HttpResponse::Ok().json(Reloaded {
        changes: changes
            .iter()
            .map(|c| Changed {
                action: c.action(),
                endpoint: c.endpoint(),
            })
            .collect(),
        configs: views(table.configs()),
    }))
}

/// `POST /admin/reload`.
#[derive(serde::Serialize, ToSchema)]
struct Reloaded<'a> {
    changes: Vec<Changed<'a>>,
    configs: Vec<ConfigView<'a>>,
}

#[derive(serde::Serialize, ToSchema)]
struct Changed<'a> {
    action: ConfigAction,
    endpoint: &'a str,
}

#[derive(serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct TopQuery {
    /// `blocked` (default) or `allowed`.
    by: Option<By>,
    window: Option<String>,
    limit: Option<usize>,
}

/// Most clients one ranking may list.
const MAX_TOP: usize = 100;

/// `GET /admin/top?by=blocked|allowed&window=5m&limit=20`: the clients with the most
/// requests refused (or let through) in the last `window` (`1m` to `60m`, or `1h`), on
/// this instance, from bounded sketches (see [`crate::top`]).
/// `GET /admin/top`.
#[derive(serde::Serialize, ToSchema)]
struct Top {
    by: By,
    window_minutes: u64,
    clients: Vec<Ranked>,
    /// How far short of the truth a count may be (0: exact).
    error_bound: u64,
    /// RFC 3339.
    timestamp: String,
}

#[utoipa::path(
    get,
    path = "/admin/top",
    tag = "stats",
    params(TopQuery),
    responses(
        (status = 200, description = "The heaviest clients", body = Top),
        (status = 400, description = "A bad query", body = ErrorBody),
    )
)]
pub async fn top(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let q = web::Query::<TopQuery>::from_query(req.query_string()).map_err(bad_query)?;
    let by = q.by.unwrap_or(By::Blocked);
    let window = q.window.as_deref().unwrap_or("5m");
    let minutes = match window {
        "1h" => Some(60),
        w => w.strip_suffix('m').and_then(|n| n.parse::<u64>().ok()),
    }
    .filter(|m| (1..=MINUTES).contains(m))
    .ok_or_else(|| {
        bad_query(format!(
            "window must be 1m to {MINUTES}m, or 1h, not {window:?}"
        ))
    })?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=MAX_TOP).contains(&limit) {
        return Err(bad_query(format!("limit must be from 1 to {MAX_TOP}")));
    }
    let (clients, error_bound) = state.registries.top(by, minutes, limit);
    Ok(HttpResponse::Ok().json(Top {
        by,
        window_minutes: minutes,
        clients,
        error_bound,
        timestamp: rfc3339(state.clock.now()),
    }))
}

/// How long one reset may wait for the client's limiter (a restore, Redis).
const RESET_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

#[utoipa::path(
    get,
    path = "/admin/stats",
    tag = "stats",
    responses((status = 200, description = "Totals", body = GlobalStatsBody))
)]
pub async fn global_stats(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.reporter.global_stats())
}

/// Per-second traffic of the last five minutes, for the dashboard's chart.
#[utoipa::path(
    get,
    path = "/admin/traffic",
    tag = "stats",
    responses((status = 200, description = "Per second, the last five minutes", body = Traffic))
)]
pub async fn traffic(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.reporter.traffic())
}

#[utoipa::path(
    get,
    path = "/admin/stats/{client_id}",
    tag = "stats",
    params(("client_id" = String, Path, description = "1 to 128 of A-Z a-z 0-9 . _ : @ -", pattern = "^[A-Za-z0-9._:@-]{1,128}$")),
    responses(
        (status = 200, description = "The client's counters and quotas (zeros for an unknown client)", body = ClientStatsBody),
        (status = 400, description = "A bad client id", body = ErrorBody),
    )
)]
pub async fn client_stats(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let client_id = req.match_info().query("client_id").to_owned();
    validate_key_value(&client_id)?;
    let body = state.reporter.client_stats(Arc::from(client_id)).await?;
    Ok(HttpResponse::Ok().json(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn endpoint(path: &str) -> Result<String, ApiError> {
        endpoint_from_path(&TestRequest::get().uri(path).to_http_request())
    }

    #[test]
    fn decodes_the_endpoint_from_the_path_once() {
        assert_eq!(endpoint("/admin/configs/*").unwrap(), "*");
        assert_eq!(endpoint("/admin/configs/%2A").unwrap(), "*");
        assert_eq!(endpoint("/admin/configs/api/data").unwrap(), "/api/data");
        assert_eq!(endpoint("/admin/configs/api%2Fdata").unwrap(), "/api/data");
        assert_eq!(endpoint("/admin/configs/api/*").unwrap(), "/api/*");
        assert_eq!(endpoint("/admin/configs/a%2525").unwrap(), "/a%25");
        for bad in [
            "/admin/configs/a%2",
            "/admin/configs/a%zz",
            "/admin/configs/%FF",
            "/admin/configs/a%20b",
        ] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn locations_round_trip() {
        for e in ["*", "/api/data", "/api/*", "/é", "/a%b"] {
            let loc = location(e);
            assert_eq!(endpoint(&loc).unwrap(), e, "{loc}");
        }
    }
}
