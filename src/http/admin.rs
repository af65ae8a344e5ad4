//! The admin API: configs (CRUD) and statistics. Config writes go through the one
//! writer ([`crate::config::writer`]): durable before they take effect, and in effect
//! from the very next request.

use super::client_id::validate_client_id;
use super::{AppState, read_json};
use crate::config::writer::Edit;
use crate::config::{Change, Config, ConfigSpec, DEFAULT_ENDPOINT, validate_endpoint, views};
use crate::error::ApiError;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value};
use std::sync::Arc;

const CONFIGS_PREFIX: &str = "/admin/configs/";

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

pub async fn list_configs(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(views(state.policies.current().configs()))
}

pub async fn get_config(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let endpoint = endpoint_from_path(&req)?;
    let table = state.policies.current();
    let config = table
        .get(&endpoint)
        .ok_or_else(|| ApiError::NotFound(format!("There is no config for {endpoint:?}.")))?;
    Ok(HttpResponse::Ok().json(config.view()))
}

pub async fn create_config(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let spec = ConfigSpec::from_create(object_from(read_json(&req, payload).await?)?)?;
    let change = state.configs.write(Edit::Create(spec)).await?;
    let config = written(&change)?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location(config.endpoint())))
        .json(config.view()))
}

pub async fn update_config(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let endpoint = endpoint_from_path(&req)?;
    let patch = object_from(read_json(&req, payload).await?)?;
    let change = state
        .configs
        .write(Edit::Update { endpoint, patch })
        .await?;
    Ok(HttpResponse::Ok().json(written(&change)?.view()))
}

pub async fn delete_config(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let endpoint = endpoint_from_path(&req)?;
    state.configs.write(Edit::Delete(endpoint)).await?;
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
