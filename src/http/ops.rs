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

/// What the probes and the health check ask of the server, asked once per call.
struct Checks {
    /// Every registry shard answered (`Ok(true)`), one has stopped (`Ok(false)`), or they
    /// did not all answer within [`HEALTH_TIMEOUT`] (`Err`: busy, still deciding).
    deciding: Result<bool, String>,
    /// Why the database does not answer or fails, if it does.
    database_failure: Option<String>,
    /// A remote quota backend (Redis): its name, and why it is unreachable, if it is.
    backend: Option<(&'static str, Option<String>)>,
}

impl Checks {
    async fn run(state: &AppState) -> Self {
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
        let deciding = deciding.map_err(|_| {
            format!(
                "the limiters did not answer within {} s (overloaded)",
                HEALTH_TIMEOUT.as_secs()
            )
        });
        // Without the remote backend, decisions follow --on-error.
        let backend = state.registries.backend_reachable().map(|(name, up, shards)| {
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
        });
        Self {
            deciding,
            database_failure,
            backend,
        }
    }
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
    let checks = Checks::run(&state).await;
    let timestamp = rfc3339(state.clock.now());
    let database = if checks.database_failure.is_some() {
        "failing"
    } else {
        "connected"
    };
    // The one remote backend there is names itself `redis`.
    let redis = checks.backend.as_ref().map(|(_, why)| match why {
        None => "connected",
        Some(_) => "unreachable",
    });
    let mut reasons = Vec::new();
    match checks.deciding {
        Ok(true) => {}
        Ok(false) => {
            return HttpResponse::ServiceUnavailable().json(Health {
                status: "unhealthy",
                reason: Some(SHARD_STOPPED.to_owned()),
                database,
                redis: None,
                timestamp,
            });
        }
        // Busy (a full mailbox pushes back), not broken: requests are still decided.
        Err(busy) => reasons.push(busy),
    }
    reasons.extend(checks.backend.and_then(|(_, why)| why));
    if let Some(reason) = checks.database_failure {
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
        redis,
        timestamp,
    })
}

/// Set once a stop has begun: from then on `/readyz` answers 503, while requests are
/// still served for `--shutdown-delay-ms` so that load balancers can drain this instance.
#[derive(Debug, Default)]
pub struct Draining(AtomicBool);

impl Draining {
    pub fn begin(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// `GET /livez` and `GET /readyz`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Probe {
    /// `/livez`: `alive` or `dead`; `/readyz`: `ready` or `not_ready`.
    status: &'static str,
    /// Why not, when not (empty otherwise).
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
    let stopped = timeout(HEALTH_TIMEOUT, state.registries.alive()).await == Ok(false);
    let reasons = if stopped {
        vec![SHARD_STOPPED.to_owned()]
    } else {
        Vec::new()
    };
    probe(&state, "alive", "dead", reasons)
}

/// Readiness ("send me traffic"): 200 only when the configs are loaded (in distributed
/// mode, synced from Redis once), the database answers, no shard has stopped and, in
/// distributed mode, Redis answers; 503 with every reason otherwise, and from the
/// moment a stop begins.
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
    if state.draining.is_draining() {
        reasons.push("shutting down".to_owned());
    }
    let checks = Checks::run(&state).await;
    match checks.deciding {
        Ok(true) => {}
        Ok(false) => reasons.push(SHARD_STOPPED.to_owned()),
        // Busy is still deciding: taking every overloaded instance out of rotation
        // would turn a peak into an outage. `/health` reports it.
        Err(_) => {}
    }
    if let Some(why) = checks.database_failure {
        reasons.push(format!("database: {why}"));
    }
    reasons.extend(checks.backend.and_then(|(_, why)| why));
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
