//! The demo endpoints a rate limiter protects: `/`, `/health`, `/api/data`, `/api/submit`.

use super::{AppState, read_json};
use crate::actors::db::Ping;
use crate::clock::{Nanos, rfc3339};
use crate::error::ApiError;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;
use std::time::Duration;

/// How long the health check waits for the database actor.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn index(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "message": "ratewarden: a rate-limiting server. Try /api/data, /admin/configs or /health.",
        "version": env!("CARGO_PKG_VERSION"),
        "timestamp": rfc3339(state.clock.now()),
    }))
}

pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let ping = actix_web::rt::time::timeout(HEALTH_TIMEOUT, state.db.send(Ping)).await;
    let timestamp = rfc3339(state.clock.now());
    match ping {
        Ok(Ok(Ok(()))) => HttpResponse::Ok().json(json!({
            "status": "healthy", "database": "connected", "timestamp": timestamp,
        })),
        _ => HttpResponse::ServiceUnavailable().json(json!({
            "status": "unhealthy", "database": "unavailable", "timestamp": timestamp,
        })),
    }
}

pub async fn data(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(data_body(state.clock.now()))
}

/// The body of `GET /api/data`; the benchmark's peers answer with the same.
pub fn data_body(now: Nanos) -> serde_json::Value {
    json!({
        "data": {"items": [1, 2, 3], "source": "ratewarden demo"},
        "timestamp": rfc3339(now),
    })
}

pub async fn submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let received = read_json(&req, payload).await?;
    Ok(HttpResponse::Ok().json(json!({
        "message": "received",
        "received_data": received,
        "timestamp": rfc3339(state.clock.now()),
    })))
}
