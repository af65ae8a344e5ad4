//! The statistics bodies, built in one place for `/admin/stats`, `/admin/stats/{client_id}`
//! and the live feeds' `global_stats` and `client_stats` messages.

use crate::actors::db::{ClientEvents, Db};
use crate::actors::registry::{GetClientStatus, Registries};
use crate::clock::{NANOS_PER_SEC, Nanos, SharedClock, rfc3339};
use crate::error::ApiError;
use crate::policy::Policies;
use crate::stats::GlobalStats;
use actix::Addr;
use serde_json::{Value, json};
use std::sync::Arc;

/// Events listed by a client's statistics.
const RECENT_EVENTS: usize = 20;

#[derive(Clone)]
pub struct Reporter {
    pub clock: SharedClock,
    pub global: Arc<GlobalStats>,
    pub policies: Arc<Policies>,
    pub registries: Registries,
    pub db: Addr<Db>,
    pub started_at: Nanos,
}

impl Reporter {
    /// The body of `GET /admin/stats`, from memory only.
    pub fn global_stats(&self) -> Value {
        let now = self.clock.now();
        let day = self.global.last_24h(now);
        let success_rate = if day.total == 0 {
            100.0
        } else {
            (day.total - day.blocked) as f64 * 100.0 / day.total as f64
        };
        let last = self.global.recent_seconds(now, 1);
        json!({
            "total_requests_24h": day.total,
            "blocked_requests_24h": day.blocked,
            "success_rate": (success_rate * 100.0).round() / 100.0,
            "active_configs": self.policies.current().active_count(),
            "active_clients": self.registries.live_clients(),
            "requests_per_second": self.global.requests_per_second(now),
            "last_second": last.first(),
            "uptime_seconds": now.saturating_sub(self.started_at) / NANOS_PER_SEC,
            "timestamp": rfc3339(now),
        })
    }

    /// Allowed and blocked requests per second over the last five minutes, oldest first.
    pub fn traffic(&self) -> Value {
        let now = self.clock.now();
        json!({"seconds": self.global.recent_seconds(now, 300), "timestamp": rfc3339(now)})
    }

    /// The body of `GET /admin/stats/{client_id}` (the id must be valid already).
    pub async fn client_stats(&self, client: Arc<str>) -> Result<Value, ApiError> {
        let status = self
            .registries
            .shard(&client)
            .send(GetClientStatus {
                client: client.clone(),
                table: self.policies.current(),
            })
            .await
            .map_err(|e| ApiError::Unavailable(format!("The limiter is not answering ({e}).")))?;
        let events = self
            .db
            .send(ClientEvents {
                client: client.clone(),
                limit: RECENT_EVENTS,
            })
            .await?
            .map_err(|e| ApiError::Unavailable(format!("The database is failing ({e}).")))?;
        Ok(json!({
            "client_id": &*client,
            "status": status,
            "recent_events": events,
            "timestamp": rfc3339(self.clock.now()),
        }))
    }
}
