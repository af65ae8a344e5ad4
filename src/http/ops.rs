//! What operators and load balancers ask: `GET /health` (never limited, open to all) and
//! `GET /metrics` (Prometheus, behind the admin rule).

use super::AppState;
use crate::actors::db::Ping;
use crate::clock::rfc3339;
use crate::metrics::CONTENT_TYPE;
use actix_web::rt::time::timeout;
use actix_web::{HttpResponse, web};
use std::time::Duration;

/// How long the health check waits for the limiters and for the database.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// `GET /health`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `healthy`, `degraded` (still deciding) or `unhealthy` (503).
    status: &'static str,
    /// What is wrong, when not healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// `connected` or `failing`.
    database: &'static str,
    /// Distributed mode: `connected` or `unreachable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<&'static str>,
    /// RFC 3339.
    timestamp: String,
}

/// `healthy` (200) when everything answers; `degraded` (still 200, with the reason) when
/// the database fails but decisions are still made from memory, or the limiters are too
/// busy to answer within a second; `unhealthy` (503) only when the server cannot decide,
/// because a registry shard has stopped.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses(
        (status = 200, description = "Deciding (healthy or degraded)", body = Health),
        (status = 503, description = "A limiter shard stopped: nothing can be decided", body = Health),
    )
)]
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let (deciding, ping) = futures_util::future::join(
        timeout(HEALTH_TIMEOUT, state.registries.alive()),
        timeout(HEALTH_TIMEOUT, state.db.send(Ping)),
    )
    .await;
    let database_failure = match ping {
        Ok(Ok(Ok(()))) => state.db_status.failure(),
        Ok(Ok(Err(e))) => Some(e.to_string()),
        Ok(Err(_)) => Some("the database actor stopped".to_owned()),
        Err(_) => Some(format!(
            "the database actor did not answer within {} s",
            HEALTH_TIMEOUT.as_secs()
        )),
    };
    let timestamp = rfc3339(state.clock.now());
    let database = if database_failure.is_some() {
        "failing"
    } else {
        "connected"
    };
    let mut reasons = Vec::new();
    match deciding {
        Ok(true) => {}
        // A shard's mailbox is closed: its clients cannot be decided at all.
        Ok(false) => {
            return HttpResponse::ServiceUnavailable().json(Health {
                status: "unhealthy",
                reason: Some("a registry shard stopped; its clients cannot be decided".to_owned()),
                database,
                redis: None,
                timestamp,
            });
        }
        // Busy (a full mailbox pushes back), not broken: requests are still decided.
        Err(_) => reasons.push(format!(
            "the limiters did not answer within {} s (overloaded)",
            HEALTH_TIMEOUT.as_secs()
        )),
    }
    // A remote quota backend (Redis): without it, decisions follow --on-error.
    let backend = state.registries.backend_reachable().map(|(name, up, shards)| {
        let coordinating = state.cluster.as_ref().is_none_or(|c| c.is_up());
        if up == shards && coordinating {
            return (name, "connected");
        }
        reasons.push(format!(
            "{name}: unreachable from {} of {shards} limiter shards{}; decisions follow --on-error {:?}",
            shards - up,
            if coordinating { "" } else { " and from the config sync" },
            state.on_error
        ));
        (name, "unreachable")
    });
    if let Some(reason) = database_failure {
        reasons.push(format!(
            "database: {reason}; decisions continue from memory"
        ));
    }
    HttpResponse::Ok().json(Health {
        status: if reasons.is_empty() {
            "healthy"
        } else {
            "degraded"
        },
        reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
        database,
        // The one remote backend there is names itself `redis`.
        redis: backend.map(|(_, reachable)| reachable),
        timestamp,
    })
}

/// Every metric, in the OpenMetrics text format Prometheus scrapes.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Every metric", body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
        (status = 401, description = "The admin token is required", body = crate::error::ErrorBody),
        (status = 403, description = "Loopback only without a token", body = crate::error::ErrorBody),
    )
)]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let m = &state.metrics;
    m.live_limiters.set(state.registries.live_clients() as i64);
    HttpResponse::Ok()
        .content_type(CONTENT_TYPE)
        .body(m.encode())
}
