//! What a limiter's state looks like on its way to and from the database: a client's
//! snapshot (totals, per-endpoint algorithm state, statistics since the last one), the
//! write-behind queue of them, and what a restore reads back. The model of persistence;
//! `store::sqlite` writes and reads it.

use crate::clock::Nanos;
use crate::limiter::Algorithm;
use serde::Serialize;
use std::sync::Arc;

/// A client's lifetime counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub total_requests: u64,
    pub blocked_requests: u64,
    /// Nanoseconds since the epoch; 0 for never.
    pub last_request: Nanos,
}

/// The state of one client's limiter for one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSnapshot {
    pub endpoint: Arc<str>,
    /// The algorithm of a config of one limit; `None` for several (each state says its
    /// own; see `limiter::States::encode`).
    pub algorithm: Option<Algorithm>,
    pub state: Vec<u8>,
    pub expires_at: Nanos,
}

/// Requests counted for one endpoint in one minute, not yet written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatDelta {
    pub minute: u64,
    pub endpoint: Arc<str>,
    pub allowed: u64,
    pub blocked: u64,
}

/// Everything one flush writes for one client.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSnapshot {
    pub client: Arc<str>,
    /// Orders snapshots of the same client: the limiter counts its checks.
    pub version: u64,
    pub totals: Totals,
    pub endpoints: Vec<EndpointSnapshot>,
    /// Counts since the previous snapshot; added, never overwritten.
    pub stats: Vec<StatDelta>,
}

/// Snapshots waiting to be written, keyed by client, least recently updated first.
pub type PendingSnapshots = hashlink::LinkedHashMap<Arc<str>, ClientSnapshot>;

/// Keeps `new` among the pending snapshots: the newest state wins, statistics add up.
pub fn merge_snapshot(pending: &mut PendingSnapshots, mut new: ClientSnapshot) {
    if let Some(old) = pending.get_mut(&new.client) {
        if old.version > new.version {
            old.stats.append(&mut new.stats);
            return;
        }
        new.stats.append(&mut old.stats);
    }
    // `insert` moves an updated client to the back: when the queue is capped, the clients
    // that went quiet longest are dropped, never the busiest ones' newest state.
    pending.insert(new.client.clone(), new);
}

impl ClientSnapshot {
    /// The state this snapshot restores (its statistics stay with it, to be written).
    pub fn stored(&self) -> StoredClient {
        StoredClient {
            version: self.version,
            totals: self.totals,
            endpoints: self.endpoints.clone(),
        }
    }
}

/// A client as it was last persisted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredClient {
    pub version: u64,
    pub totals: Totals,
    /// Only states that have not expired by `now`.
    pub endpoints: Vec<EndpointSnapshot>,
}
