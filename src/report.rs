//! The statistics bodies, built in one place for `/admin/stats`, `/admin/stats/{client_id}`
//! and the live feeds' `global_stats` and `client_stats` messages.

use crate::actors::client_limiter::ClientStatus;
use crate::actors::db::{ClientEvents, Db};
use crate::actors::registry::{GetClientStatus, Registries};
use crate::clock::{NANOS_PER_SEC, Nanos, SharedClock, rfc3339};
use crate::policy::Policies;
use crate::stats::{DayTotals, GlobalStats, InstanceRow, Peers, SecondCounts};
use crate::store::sqlite::EventRow;
use actix::Addr;
use serde::Serialize;
use std::sync::Arc;
use utoipa::ToSchema;

/// `GET /admin/stats` and the feeds' `global_stats`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GlobalStatsBody {
    pub total_requests_24h: u64,
    pub blocked_requests_24h: u64,
    /// Percent of the last 24 hours' requests let through (100 with none).
    pub success_rate: f64,
    pub active_configs: usize,
    /// Live limiters.
    pub active_clients: usize,
    /// Averaged over the last ten complete seconds.
    pub requests_per_second: f64,
    /// The last complete second, for charts.
    pub last_second: Option<SecondCounts>,
    pub uptime_seconds: u64,
    /// Distributed mode: one row per instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<InstanceRow>>,
    /// RFC 3339.
    pub timestamp: String,
}

/// `GET /admin/traffic`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Traffic {
    /// Per second, oldest first.
    pub seconds: Vec<SecondCounts>,
    /// RFC 3339.
    pub timestamp: String,
}

/// `GET /admin/stats/{client_id}` and the feeds' `client_stats`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientStatsBody {
    pub client_id: String,
    pub status: ClientStatus,
    pub recent_events: Vec<EventRow>,
    /// RFC 3339.
    pub timestamp: String,
}

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
    /// Distributed mode: this instance's name and what the others report.
    pub cluster: Option<(Arc<str>, Arc<Peers>)>,
}

impl Reporter {
    /// The body of `GET /admin/stats`, from memory only. In distributed mode the totals
    /// are the cluster's (this instance's plus what the others reported) and
    /// `instances` has a row per instance.
    pub fn global_stats(&self) -> GlobalStatsBody {
        let now = self.clock.now();
        let mut day = self.global.last_24h(now);
        let mut rps = self.global.requests_per_second(now);
        let mut last = self.global.recent_seconds(now, 1);
        let mut instances = None;
        if let Some((name, peers)) = &self.cluster {
            let remote = peers.remote.last_24h(now);
            day = DayTotals {
                total: day.total.saturating_add(remote.total),
                blocked: day.blocked.saturating_add(remote.blocked),
            };
            let mut rows = vec![InstanceRow {
                instance: name.to_string(),
                local: true,
                requests_per_second: rps,
                last_second: last.first().copied().unwrap_or_default(),
                last_seen: rfc3339(now),
            }];
            rows.extend(peers.rows(now));
            rps += peers.remote.requests_per_second(now);
            last = add_seconds(last, peers.remote.recent_seconds(now, 1));
            instances = Some(rows);
        }
        let success_rate = if day.total == 0 {
            100.0
        } else {
            (day.total - day.blocked) as f64 * 100.0 / day.total as f64
        };
        GlobalStatsBody {
            total_requests_24h: day.total,
            blocked_requests_24h: day.blocked,
            success_rate: (success_rate * 100.0).round() / 100.0,
            active_configs: self.policies.current().active_count(),
            active_clients: self.registries.live_clients(),
            requests_per_second: rps,
            last_second: last.first().copied(),
            uptime_seconds: now.saturating_sub(self.started_at) / NANOS_PER_SEC,
            instances,
            timestamp: rfc3339(now),
        }
    }

    /// Allowed and blocked requests per second over the last five minutes, oldest first.
    pub fn traffic(&self) -> Traffic {
        let now = self.clock.now();
        let mut seconds = self.global.recent_seconds(now, 300);
        if let Some((_, peers)) = &self.cluster {
            seconds = add_seconds(seconds, peers.remote.recent_seconds(now, 300));
        }
        Traffic {
            seconds,
            timestamp: rfc3339(now),
        }
    }

    /// The body of `GET /admin/stats/{client_id}` (the id must be valid already).
    pub async fn client_stats(&self, client: Arc<str>) -> Result<ClientStatsBody, Unavailable> {
        let status = self
            .registries
            .shard(&client)
            .send(GetClientStatus {
                client: client.clone(),
                table: self.policies.current(),
            })
            .await
            .map_err(|e| Unavailable(format!("The limiter is not answering ({e}).")))?;
        let events = self
            .db
            .send(ClientEvents {
                client: client.clone(),
                limit: RECENT_EVENTS,
            })
            .await
            .map_err(|e| Unavailable(format!("The database is not answering ({e}).")))?
            .map_err(|e| Unavailable(format!("The database is failing ({e}).")))?;
        Ok(ClientStatsBody {
            client_id: client.to_string(),
            status,
            recent_events: events,
            timestamp: rfc3339(self.clock.now()),
        })
    }
}

/// A report that could not be read: the limiter or the database did not answer. The
/// message is a sentence for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Two series of the same seconds, added up.
fn add_seconds(mut a: Vec<SecondCounts>, b: Vec<SecondCounts>) -> Vec<SecondCounts> {
    for (x, y) in a.iter_mut().zip(b) {
        x.allowed = x.allowed.saturating_add(y.allowed);
        x.blocked = x.blocked.saturating_add(y.blocked);
    }
    a
}
