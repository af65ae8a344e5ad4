//! The demo endpoints a rate limiter protects: `/`, `/api/data`, `/api/submit`.

use super::{AppState, read_json};
use crate::clock::{Nanos, rfc3339};
use crate::error::ApiError;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

/// `GET /`.
#[derive(Serialize, ToSchema)]
pub struct Index {
    message: &'static str,
    version: &'static str,
    /// RFC 3339.
    timestamp: String,
}

/// `GET /api/data`.
#[derive(Serialize, ToSchema)]
pub struct Data {
    data: DemoItems,
    /// RFC 3339.
    timestamp: String,
}

#[derive(Serialize, ToSchema)]
pub struct DemoItems {
    items: [u8; 3],
    source: &'static str,
}

/// `POST /api/submit`: what was sent, echoed.
#[derive(Serialize, ToSchema)]
pub struct Submitted {
    message: &'static str,
    /// The request's JSON, as it was.
    received_data: serde_json::Value,
    /// RFC 3339.
    timestamp: String,
}

#[utoipa::path(
    get,
    path = "/",
    tag = "demo",
    responses(
        (status = 200, description = "Allowed", body = Index),
    )
)]
pub async fn index(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(Index {
        message: "ratewarden: a rate-limiting server. Try /api/data, /admin/configs or /health.",
        version: env!("CARGO_PKG_VERSION"),
        timestamp: rfc3339(state.clock.now()),
    })
}

#[utoipa::path(
    get,
    path = "/api/data",
    tag = "demo",
    responses(
        (status = 200, description = "Allowed", body = Data),
    )
)]
pub async fn data(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(data_body(state.clock.now()))
}

/// The body of `GET /api/data`; the benchmark's peers answer with the same.
pub fn data_body(now: Nanos) -> Data {
    Data {
        data: DemoItems {
            items: [1, 2, 3],
            source: "ratewarden demo",
        },
        timestamp: rfc3339(now),
    }
}

#[utoipa::path(
    post,
    path = "/api/submit",
    tag = "demo",
    request_body(content = serde_json::Value, description = "Any JSON, at most 64 KiB", content_type = "application/json"),
    responses(
        (status = 200, description = "Allowed, and echoed", body = Submitted),
    )
)]
pub async fn submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let received = read_json(&req, payload).await?;
    Ok(HttpResponse::Ok().json(Submitted {
        message: "received",
        received_data: received,
        timestamp: rfc3339(state.clock.now()),
    }))
}
