//! The admin API: configs (CRUD) and statistics. Config writes are durable in SQLite
//! before they take effect, and take effect on the very next request.

use super::client_id::validate_client_id;
use super::{AppState, read_json};
use crate::actors::broadcaster::ConfigChanged;
use crate::actors::db::{CreateConfig, Db, DeleteConfig, UpdateConfig, WriteTicket};
use crate::cluster::Cluster;
use crate::error::ApiError;
use crate::metrics;
use crate::policy::Config;
use crate::policy::{ConfigPatch, DEFAULT_ENDPOINT, ValidationError, validate_endpoint};
use crate::store::{ConfigAction, StoreError};
use actix::Addr;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONFIGS_PREFIX: &str = "/admin/configs/";

/// How long an admin write may wait (for other admin writes, then for the database)
/// before it answers 503; see [`send_write`].
const WRITE_DEADLINE: Duration = Duration::from_secs(2);

/// Sends an admin write and answers 503 at the ticket's deadline, unless the DB actor
/// has started the write by then: its outcome is awaited, so a change the database made
/// is never reported as failed, and a 503 always means nothing changed.
async fn send_write<M, T>(db: &Addr<Db>, ticket: &WriteTicket, msg: M) -> Result<T, ApiError>
where
    M: actix::Message<Result = Result<T, StoreError>> + Send + 'static,
    T: Send + 'static,
    Db: actix::Handler<M>,
{
    let mut reply = std::pin::pin!(db.send(msg));
    let left = ticket.deadline.saturating_duration_since(Instant::now());
    let answer = match actix_web::rt::time::timeout(left, reply.as_mut()).await {
        Ok(answer) => answer,
        Err(_) if ticket.abandon() => {
            return Err(store_error(StoreError::Unavailable(
                "the database did not get to the change in time",
            )));
        }
        Err(_) => reply.await,
    };
    answer?.map_err(store_error)
}

/// The config endpoint named by the rest of the path, decoded once:
/// `/admin/configs/api/data` → `/api/data`, `/admin/configs/*` → `*`.
fn endpoint_from_path(req: &HttpRequest) -> Result<String, ApiError> {
    let raw = req.uri().path().strip_prefix(CONFIGS_PREFIX).unwrap_or("");
    decode_endpoint(raw)
}

/// The config endpoint named by the raw (still percent-encoded) rest of an admin path:
/// decoded exactly once, then validated like a config's endpoint.
pub fn decode_endpoint(raw: &str) -> Result<String, ApiError> {
    let decoded = percent_decode(raw)?;
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
    for b in rest.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~*".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict => {
            ApiError::Conflict("A config for that endpoint exists already.".to_owned())
        }
        e => ApiError::Unavailable(format!(
            "The database could not store the change ({e}); nothing changed."
        )),
    }
}

fn patch_from(body: Value) -> Result<ConfigPatch, ApiError> {
    match body {
        Value::Object(map) => Ok(ConfigPatch::from_json(map)?),
        _ => Err(ApiError::bad_request(
            "invalid_json",
            "The body must be a JSON object.",
        )),
    }
}

/// Runs a config write to its end on its own task: if the client hangs up while the
/// database works, the change it stored still takes effect in memory, so the table the
/// server decides with never differs from the file.
async fn to_completion<T, F>(
    state: web::Data<AppState>,
    write: impl FnOnce(web::Data<AppState>) -> F,
) -> Result<T, ApiError>
where
    T: 'static,
    F: Future<Output = Result<T, ApiError>> + 'static,
{
    actix_web::rt::spawn(write(state))
        .await
        .map_err(|e| ApiError::Unavailable(format!("The config write did not finish ({e}).")))?
}

/// Tells the live feeds; never waits.
fn announce(state: &AppState, action: ConfigAction, config: &Config) {
    state.broadcaster.do_send(ConfigChanged {
        action,
        config: config.clone(),
    });
}

/// Distributed mode: one admin write against the shared configs (see
/// [`crate::cluster::Cluster::write`]), run to completion like a local one.
async fn shared_write<F>(
    state: web::Data<AppState>,
    cluster: Arc<Cluster>,
    endpoint: String,
    action: metrics::ConfigAction,
    change: impl FnOnce(&AppState, Option<i64>) -> F + 'static,
) -> Result<Config, ApiError>
where
    F: Fn(Option<Config>) -> Result<Option<Config>, ApiError> + 'static,
{
    to_completion(state, move |state| async move {
        let _writing = state.policies.lock_writes().await;
        let id = match action {
            metrics::ConfigAction::create => Some(cluster.next_config_id().await?),
            _ => None,
        };
        let config = cluster.write(&endpoint, change(&state, id)).await?;
        log::info!("config {action:?}d for {endpoint} (shared through Redis)");
        state.metrics.config_changed(action);
        Ok(config)
    })
    .await
}

pub async fn list_configs(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.policies.current().configs())
}

pub async fn get_config(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let endpoint = endpoint_from_path(&req)?;
    let table = state.policies.current();
    let config = table.get(&endpoint).ok_or_else(|| not_found(&endpoint))?;
    Ok(HttpResponse::Ok().json(config))
}

fn not_found(endpoint: &str) -> ApiError {
    ApiError::NotFound(format!("There is no config for {endpoint:?}."))
}

pub async fn create_config(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let spec = patch_from(read_json(&req, payload).await?)?.into_new_spec()?;
    let endpoint = spec.endpoint.clone();
    if let Some(cluster) = state.cluster.clone() {
        let action = metrics::ConfigAction::create;
        let config = shared_write(state, cluster, endpoint.clone(), action, |state, id| {
            let now = state.clock.now();
            move |current: Option<Config>| match current {
                Some(_) => Err(store_error(StoreError::Conflict)),
                None => Ok(Some(Config::from_spec(
                    id.unwrap_or(0),
                    spec.clone(),
                    now,
                    now,
                ))),
            }
        })
        .await?;
        return Ok(HttpResponse::Created()
            .insert_header((header::LOCATION, location(&endpoint)))
            .json(config));
    }
    let ticket = WriteTicket::new(Instant::now() + WRITE_DEADLINE);
    let config = to_completion(state.clone(), move |state| async move {
        let _writing = state.policies.lock_writes().await;
        if state.policies.current().get(&spec.endpoint).is_some() {
            return Err(store_error(StoreError::Conflict));
        }
        let endpoint = spec.endpoint.clone();
        let msg = CreateConfig {
            spec,
            now: state.clock.now(),
            ticket: ticket.clone(),
        };
        let config = send_write(&state.db, &ticket, msg).await?;
        state.policies.apply(&endpoint, Some(config.clone()));
        announce(&state, ConfigAction::Created, &config);
        state.metrics.config_changed(metrics::ConfigAction::create);
        log::info!("config created for {endpoint}");
        Ok(config)
    })
    .await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location(&endpoint)))
        .json(config))
}

pub async fn update_config(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let endpoint = endpoint_from_path(&req)?;
    let patch = patch_from(read_json(&req, payload).await?)?;
    if patch.endpoint.as_ref().is_some_and(|e| *e != endpoint) {
        return Err(ValidationError::new(
            "endpoint",
            "cannot be changed; create a config for the new endpoint and delete this one"
                .to_owned(),
        )
        .into());
    }
    if let Some(cluster) = state.cluster.clone() {
        let action = metrics::ConfigAction::update;
        let name = endpoint.clone();
        let config = shared_write(state, cluster, endpoint, action, |state, _| {
            let now = state.clock.now();
            move |current: Option<Config>| {
                let current = current.ok_or_else(|| not_found(&name))?;
                let mut spec = current.spec();
                spec.merge(patch.clone());
                spec.validate()?;
                Ok(Some(Config::from_spec(
                    current.id,
                    spec,
                    current.created_at,
                    now,
                )))
            }
        })
        .await?;
        return Ok(HttpResponse::Ok().json(config));
    }
    let ticket = WriteTicket::new(Instant::now() + WRITE_DEADLINE);
    let config = to_completion(state.clone(), move |state| async move {
        let _writing = state.policies.lock_writes().await;
        let mut spec = state
            .policies
            .current()
            .get(&endpoint)
            .ok_or_else(|| not_found(&endpoint))?
            .spec();
        spec.merge(patch);
        spec.validate()?;
        let msg = UpdateConfig {
            spec,
            now: state.clock.now(),
            ticket: ticket.clone(),
        };
        let config = send_write(&state.db, &ticket, msg)
            .await?
            .ok_or_else(|| not_found(&endpoint))?;
        state.policies.apply(&endpoint, Some(config.clone()));
        announce(&state, ConfigAction::Updated, &config);
        state.metrics.config_changed(metrics::ConfigAction::update);
        log::info!("config updated for {endpoint}");
        Ok(config)
    })
    .await?;
    Ok(HttpResponse::Ok().json(config))
}

pub async fn delete_config(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let endpoint = endpoint_from_path(&req)?;
    if endpoint == DEFAULT_ENDPOINT {
        return Err(ApiError::Conflict(
            "The default policy \"*\" cannot be deleted; update or deactivate it instead."
                .to_owned(),
        ));
    }
    if let Some(cluster) = state.cluster.clone() {
        let action = metrics::ConfigAction::delete;
        let name = endpoint.clone();
        shared_write(state, cluster, endpoint, action, |_, _| {
            move |current: Option<Config>| current.ok_or_else(|| not_found(&name)).map(|_| None)
        })
        .await?;
        return Ok(HttpResponse::NoContent().finish());
    }
    let ticket = WriteTicket::new(Instant::now() + WRITE_DEADLINE);
    to_completion(state.clone(), move |state| async move {
        let _writing = state.policies.lock_writes().await;
        if state.policies.current().get(&endpoint).is_none() {
            return Err(not_found(&endpoint));
        }
        let msg = DeleteConfig {
            endpoint: endpoint.clone(),
            now: state.clock.now(),
            ticket: ticket.clone(),
        };
        let config = send_write(&state.db, &ticket, msg)
            .await?
            .ok_or_else(|| not_found(&endpoint))?;
        state.policies.apply(&endpoint, None);
        announce(&state, ConfigAction::Deleted, &config);
        state.metrics.config_changed(metrics::ConfigAction::delete);
        log::info!("config deleted for {endpoint}");
        Ok(())
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn global_stats(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.reporter.global_stats())
}

/// Per-second traffic of the last five minutes, for the dashboard's chart.
pub async fn traffic(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.reporter.traffic())
}

pub async fn client_stats(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let client_id = req.match_info().query("client_id").to_owned();
    validate_client_id(&client_id)?;
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
