//! What a limiter's state looks like on its way to and from the database: a client's
//! snapshot (totals, per-endpoint algorithm state, statistics since the last one), the
//! write-behind queue of them, and what a restore reads back. The model of persistence;
//! `store::sqlite` writes and reads it.

use crate::clock::Nanos;
use crate::limiter::{Algorithm, Reader};
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

/// The `algorithm` of a stored state holding the states of a config of several limits.
const SEVERAL: &str = "several";

impl EndpointSnapshot {
    /// Appends `endpoints` to `out` in the stored form (`clients.states`, described in
    /// `schema.sql`); returns the latest expiry, 0 for none.
    pub fn encode_all(endpoints: &[EndpointSnapshot], out: &mut Vec<u8>) -> Nanos {
        let mut latest = 0;
        for e in endpoints {
            let algorithm = e.algorithm.map_or(SEVERAL, Algorithm::as_str);
            // A slot is a config's endpoint (at most 256 bytes) and the name of a key,
            // a state a few dozen bytes per limit: the lengths always fit.
            let (Ok(n), Ok(state)) = (
                u16::try_from(e.endpoint.len()),
                u32::try_from(e.state.len()),
            ) else {
                continue;
            };
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(e.endpoint.as_bytes());
            out.push(algorithm.len() as u8);
            out.extend_from_slice(algorithm.as_bytes());
            out.extend_from_slice(&state.to_be_bytes());
            out.extend_from_slice(&e.state);
            let expires_at = e.expires_at.min(i64::MAX as u64);
            out.extend_from_slice(&expires_at.to_be_bytes());
            latest = latest.max(expires_at);
        }
        latest
    }

    /// The states of `stored` that have not expired by `now`; `None` if it is not in the
    /// stored form. A state of an algorithm this version does not know is left out.
    pub fn decode_all(stored: &[u8], now: Nanos) -> Option<Vec<EndpointSnapshot>> {
        let mut r = Reader::new(stored);
        let mut endpoints = Vec::new();
        while !r.is_empty() {
            let n = r.be_u16()?.into();
            let endpoint = std::str::from_utf8(r.bytes(n)?).ok()?;
            let n = r.u8()?.into();
            let algorithm = std::str::from_utf8(r.bytes(n)?).ok()?;
            let n = r.be_u32()? as usize;
            let state = r.bytes(n)?;
            let expires_at = r.be_u64()?;
            let algorithm = match Algorithm::parse(algorithm) {
                Some(a) => Some(a),
                None if algorithm == SEVERAL => None,
                None => continue,
            };
            if expires_at > now {
                endpoints.push(EndpointSnapshot {
                    endpoint: Arc::from(endpoint),
                    algorithm,
                    state: state.to_vec(),
                    expires_at,
                });
            }
        }
        Some(endpoints)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn endpoint(
        name: &str,
        algorithm: Option<Algorithm>,
        state: &[u8],
        expires_at: Nanos,
    ) -> EndpointSnapshot {
        EndpointSnapshot {
            endpoint: Arc::from(name),
            algorithm,
            state: state.to_vec(),
            expires_at,
        }
    }

    #[test]
    fn the_stored_form_keeps_every_state_that_has_not_expired() {
        let all = vec![
            endpoint("/api/*", Some(Algorithm::TokenBucket), &[1, 2, 3], 50),
            endpoint("/ é [key:global]", None, &[], 200),
            endpoint("*", Some(Algorithm::SlidingWindow), &[9; 40], 100),
        ];
        let mut stored = Vec::new();
        assert_eq!(EndpointSnapshot::encode_all(&all, &mut stored), 200);
        assert_eq!(EndpointSnapshot::decode_all(&stored, 0).unwrap(), all);
        assert_eq!(
            EndpointSnapshot::decode_all(&stored, 100).unwrap(),
            all[1..2]
        );
        assert_eq!(EndpointSnapshot::decode_all(&[], 0).unwrap(), []);
        assert_eq!(EndpointSnapshot::encode_all(&[], &mut Vec::new()), 0);
        // An algorithm this version does not know is skipped, the rest kept.
        let mut unknown = Vec::new();
        EndpointSnapshot::encode_all(&all[..1], &mut unknown);
        let at = 2 + "/api/*".len() + 1;
        unknown[at..at + 5].copy_from_slice(b"gcra_");
        unknown.extend_from_slice(&stored);
        assert_eq!(EndpointSnapshot::decode_all(&unknown, 0).unwrap(), all);
    }

    proptest! {
        /// A damaged row never panics a restore: any cut of a stored form, or any bytes at
        /// all, decode to states or to `None`.
        #[test]
        fn damaged_stored_forms_are_refused_not_panicked_on(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            cut in 0usize..200,
        ) {
            let _ = EndpointSnapshot::decode_all(&bytes, 0);
            let all = vec![
                endpoint("/a", Some(Algorithm::FixedWindow), &[7; 17], 9),
                endpoint("/b", None, &[1, 2], 9),
            ];
            let mut stored = Vec::new();
            EndpointSnapshot::encode_all(&all, &mut stored);
            let cut = cut.min(stored.len());
            let decoded = EndpointSnapshot::decode_all(&stored[..cut], 0);
            prop_assert!(cut == stored.len() || decoded.is_none() || decoded.unwrap().len() < 2);
        }
    }
}
