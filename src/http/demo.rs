//! The demo endpoints a rate limiter protects: `/`, `/api/data`, `/api/submit`.

use super::{AppState, read_json};
use crate::clock::{Nanos, rfc3339};
use crate::error::ApiError;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

pub async fn index(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "message": "ratewarden: a rate-limiting server. Try /api/data, /admin/configs or /health.",
        "version": env!("CARGO_PKG_VERSION"),
        "timestamp": rfc3339(state.clock.now()),
    }))
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
