//! What operators, orchestrators and load balancers ask: `GET /livez` (restart me?),
//! `GET /readyz` (send me traffic?) and `GET /health` (the detail), never limited and
//! open to all, and `GET /metrics` (Prometheus, behind the admin rule).

use super::AppState;
use crate::actors::db::Ping;
use crate::clock::rfc3339;
use crate::metrics::CONTENT_TYPE;
use actix_web::rt::time::timeout;
use actix_web::{HttpResponse, web};
use std::sync::atomic::{AtomicBool, Ordering};
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

/// What is wrong with the database.
enum DatabaseTrouble {
    /// It did not answer within [`HEALTH_TIMEOUT`]: its one thread is busy (a retention
    /// cleanup, the backlog written after a fault), not failing.
    Slow(String),
    /// It answered with an error, its actor stopped, or its writes fail.
    Failing(String),
}

/// Asks the database actor (within [`HEALTH_TIMEOUT`]) and reads its write status.
async fn database_trouble(state: &AppState) -> Option<DatabaseTrouble> {
    match timeout(HEALTH_TIMEOUT, state.db.send(Ping)).await {
        Ok(Ok(Ok(()))) => state.db_status.failure().map(DatabaseTrouble::Failing),
        Ok(Ok(Err(e))) => Some(DatabaseTrouble::Failing(e.to_string())),
        Ok(Err(_)) => Some(DatabaseTrouble::Failing(
            "the database actor stopped".to_owned(),
        )),
        Err(_) => Some(DatabaseTrouble::Slow(format!(
            "the database actor did not answer within {} s",
            HEALTH_TIMEOUT.as_secs()
        ))),
    }
}

/// A remote quota backend (Redis): its name, and why it is unreachable, if it is;
/// `None` for a backend that cannot be unreachable. Without it, decisions follow
/// `--on-error`.
fn backend_trouble(state: &AppState) -> Option<(&'static str, Option<String>)> {
    state.registries.backend_reachable().map(|(name, up, shards)| {
        let coordinating = state.cluster.as_ref().is_none_or(|c| c.is_up());
        if up == shards && coordinating {
            return (name, None);
        }
        let why = format!(
            "{name}: unreachable from {} of {shards} limiter shards{}; decisions follow --on-error {:?}",
            shards - up,
            if coordinating { "" } else { " and from the config sync" },
            state.decider.on_error
        );
        (name, Some(why))
    })
}

/// A stopped registry shard: its clients cannot be decided at all.
const SHARD_STOPPED: &str = "a registry shard stopped; its clients cannot be decided";

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
    // The limiters are asked too, only to tell a busy server (the round trip takes
    // longer than the timeout) from an idle one.
    let (answered, database) = futures_util::future::join(
        timeout(HEALTH_TIMEOUT, state.registries.alive()),
        database_trouble(&state),
    )
    .await;
    let timestamp = rfc3339(state.clock.now());
    let database_shown = match database {
        None => "connected",
        Some(_) => "failing",
    };
    if state.registries.stopped() {
        return HttpResponse::ServiceUnavailable().json(Health {
            status: "unhealthy",
            reason: Some(SHARD_STOPPED.to_owned()),
            database: database_shown,
            redis: None,
            timestamp,
        });
    }
    let backend = backend_trouble(&state);
    // The one remote backend there is names itself `redis`.
    let redis = backend.as_ref().map(|(_, why)| match why {
        None => "connected",
        Some(_) => "unreachable",
    });
    let mut reasons = Vec::new();
    // Busy (a full mailbox pushes back), not broken: requests are still decided.
    if answered.is_err() {
        reasons.push(format!(
            "the limiters did not answer within {} s (overloaded)",
            HEALTH_TIMEOUT.as_secs()
        ));
    }
    reasons.extend(backend.and_then(|(_, why)| why));
    if let Some(DatabaseTrouble::Slow(why) | DatabaseTrouble::Failing(why)) = database {
        reasons.push(format!("database: {why}; decisions continue from memory"));
    }
    HttpResponse::Ok().json(Health {
        status: if reasons.is_empty() {
            "healthy"
        } else {
            "degraded"
        },
        reason: (!reasons.is_empty()).then(|| reasons.join("; ")),
        database: database_shown,
        redis,
        timestamp,
    })
}

/// Set once a stop has begun: from then on `/readyz` answers 503, while requests are
/// still served for `--shutdown-delay-ms` so that load balancers can drain this instance.
#[derive(Debug, Default)]
pub struct Draining(AtomicBool);

impl Draining {
    /// A stop has begun: from now on, not ready.
    pub fn begin(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether a stop has begun.
    pub fn has_begun(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// `GET /livez` and `GET /readyz`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Probe {
    /// `/livez`: `alive` or `dead`; `/readyz`: `ready` or `not_ready`.
    status: &'static str,
    /// Why not, when not (left out otherwise).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    reasons: Vec<String>,
    /// RFC 3339.
    timestamp: String,
}

fn probe(
    state: &AppState,
    ok: &'static str,
    failed: &'static str,
    reasons: Vec<String>,
) -> HttpResponse {
    let body = Probe {
        status: if reasons.is_empty() { ok } else { failed },
        reasons,
        timestamp: rfc3339(state.clock.now()),
    };
    if body.reasons.is_empty() {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Liveness ("restart me if not"): 200 while the server can serve requests at all; 503
/// only when a registry shard has stopped, which nothing but a restart mends. A busy
/// server is alive: an overloaded instance restarted by its probe would only shift its
/// load onto the others.
#[utoipa::path(
    get,
    path = "/livez",
    tag = "operations",
    responses(
        (status = 200, description = "Alive", body = Probe),
        (status = 503, description = "A limiter shard stopped: restart the process", body = Probe),
    )
)]
pub async fn livez(state: web::Data<AppState>) -> HttpResponse {
    // Asks no actor: a busy server answers at once, and is alive.
    let reasons = if state.registries.stopped() {
        vec![SHARD_STOPPED.to_owned()]
    } else {
        Vec::new()
    };
    probe(&state, "alive", "dead", reasons)
}

/// Readiness ("send me traffic"): 200 only when the configs are loaded (in distributed
/// mode, synced from Redis once), the database works (slow is not failing), no shard
/// has stopped and, in distributed mode, Redis answers; 503 with every reason
/// otherwise, and from the moment a stop begins.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready for traffic", body = Probe),
        (status = 503, description = "Not ready: the reasons say why", body = Probe),
    )
)]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let mut reasons = Vec::new();
    if state.draining.has_begun() {
        reasons.push("shutting down".to_owned());
    }
    // Busy limiters are not asked about, and a slow database does not count: both are
    // still deciding, and taking every busy instance out of rotation would turn a peak
    // into an outage. `/health` reports both.
    if state.registries.stopped() {
        reasons.push(SHARD_STOPPED.to_owned());
    }
    if let Some(DatabaseTrouble::Failing(why)) = database_trouble(&state).await {
        reasons.push(format!("database: {why}"));
    }
    reasons.extend(backend_trouble(&state).and_then(|(_, why)| why));
    if state.cluster.as_ref().is_some_and(|c| !c.synced()) {
        reasons.push("the shared configs have not been loaded from Redis yet".to_owned());
    }
    probe(&state, "ready", "not_ready", reasons)
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
