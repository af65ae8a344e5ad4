//! The feed relay between instances: once a second each instance publishes on `rw:feed`
//! its counts of the last second, whether it has subscribers, and a bounded sample of its
//! decision events; the others add the counts to their cluster statistics and hand the
//! events to their broadcaster, so any instance's `/ws/global` and dashboard show the
//! cluster.

use super::Cluster;
use crate::actors::broadcaster::TakeOutbox;
use crate::actors::{Asked, DecisionEvent, LimitSeen, Via};
use crate::limiter::Decision;
use crate::stats::SecondCounts;
use crate::store::redis::FEED_CHANNEL;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Decision events one instance sends the others per second at most.
const EVENTS_PER_SECOND: usize = 500;

/// One instance's message on `rw:feed`.
#[derive(Debug, Serialize, Deserialize)]
struct FeedBatch {
    instance: String,
    second: u64,
    allowed: u64,
    blocked: u64,
    /// Whether this instance has feed subscribers (then the others send their events).
    watching: bool,
    events: Vec<SharedEvent>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SharedEvent {
    client: String,
    endpoint: String,
    path: Option<String>,
    /// Absent from instances that predate it: their events read as a route's, whoever
    /// asked.
    #[serde(default)]
    via: Via,
    allowed: bool,
    limit: u64,
    remaining: u64,
    retry_after: u64,
    reset_after: u64,
    /// Absent from instances that predate shadow mode.
    #[serde(default)]
    shadow: bool,
    /// The binding limit of a config of several; absent otherwise (and from instances
    /// that predate several limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit_name: Option<String>,
    /// Each limit of a config of several (see `DecisionEvent::each`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    limits: Vec<LimitSeen>,
    at: u64,
    /// Units charged after the fact, when the event is a charge; absent otherwise (and
    /// from instances that predate usage limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    charged: Option<u64>,
    /// The binding limit's debt; absent while 0.
    #[serde(default, skip_serializing_if = "crate::is_zero")]
    debt: u64,
}

impl Cluster {
    pub(super) async fn publish_batch(&self) {
        let now = self.clock.now();
        let Some(last) = self.global.recent_seconds(now, 1).pop() else {
            return;
        };
        // A tick delayed and caught up must not report the same second twice.
        if self.published.swap(last.second, Ordering::Relaxed) == last.second {
            return;
        }
        let events = self.broadcaster.send(TakeOutbox).await.unwrap_or_default();
        let batch = FeedBatch {
            instance: self.instance.to_string(),
            second: last.second,
            allowed: last.allowed,
            blocked: last.blocked,
            watching: self.interest.watched_here(),
            events: events.into_iter().map(SharedEvent::from).collect(),
        };
        // A batch of plain fields always serialises.
        let json = serde_json::to_string(&batch).unwrap_or_default();
        if let Err(e) = self.redis.publish(FEED_CHANNEL, &json).await {
            log::debug!("publishing this instance's feed batch failed: {e}");
        }
    }

    /// Another instance's feed batch: its counts and its events.
    pub(super) fn heard(&self, payload: &str) {
        let batch: FeedBatch = match serde_json::from_str(payload) {
            Ok(b) => b,
            Err(e) => {
                log::debug!("ignored a malformed feed batch: {e}");
                return;
            }
        };
        if *batch.instance == *self.instance {
            return;
        }
        let counts = SecondCounts {
            second: batch.second,
            allowed: batch.allowed,
            blocked: batch.blocked,
        };
        self.peers
            .heard(&batch.instance, counts, batch.watching, self.clock.now());
        if batch.watching {
            self.interest.set_remote(true);
        }
        let origin: Arc<str> = Arc::from(batch.instance);
        for e in batch.events {
            self.broadcaster.do_send(e.into_event(origin.clone()));
        }
    }
}

impl From<DecisionEvent> for SharedEvent {
    fn from(e: DecisionEvent) -> Self {
        Self {
            client: e.client.to_string(),
            endpoint: e.endpoint.to_string(),
            via: e.asked.as_ref().map(|a| a.via).unwrap_or_default(),
            path: e.asked.map(|a| a.path.to_string()),
            allowed: e.decision.allowed,
            limit: e.decision.limit,
            remaining: e.decision.remaining,
            retry_after: e.decision.retry_after,
            reset_after: e.decision.reset_after,
            shadow: e.shadow,
            limit_name: e.limit.as_deref().map(str::to_owned),
            limits: e.each,
            at: e.at,
            charged: e.charged,
            debt: e.decision.debt,
        }
    }
}

impl SharedEvent {
    fn into_event(self, origin: Arc<str>) -> DecisionEvent {
        DecisionEvent {
            client: Arc::from(self.client),
            endpoint: Arc::from(self.endpoint),
            asked: self.path.map(|p| Asked {
                via: self.via,
                path: Arc::from(p),
            }),
            decision: Decision {
                allowed: self.allowed,
                limit: self.limit,
                remaining: self.remaining,
                retry_after: self.retry_after,
                reset_after: self.reset_after,
                debt: self.debt,
            },
            limit: self.limit_name.map(Arc::from),
            each: self.limits,
            shadow: self.shadow,
            at: self.at,
            origin: Some(origin),
            charged: self.charged,
        }
    }
}

/// The events an instance forwards per second: the feed cap, within the cluster cap.
pub fn events_per_second(feed_max: u32) -> usize {
    (feed_max as usize).min(EVENTS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_the_trip_between_instances() {
        let event = DecisionEvent {
            client: Arc::from("alice"),
            endpoint: Arc::from("/api/*"),
            asked: Some(Asked {
                via: Via::Check,
                path: Arc::from("/api/data"),
            }),
            decision: Decision {
                allowed: false,
                limit: 5,
                remaining: 0,
                retry_after: 1_500_000_000,
                reset_after: 9_000_000_000,
                debt: 2,
            },
            limit: Some(Arc::from("daily")),
            each: vec![LimitSeen {
                name: "daily".to_owned(),
                remaining: 0,
                limit: 5,
                debt: 2,
            }],
            shadow: true,
            at: 1_800_000_000_000_000_123,
            origin: None,
            charged: Some(7),
        };
        let json = serde_json::to_string(&SharedEvent::from(event.clone())).unwrap();
        let back: SharedEvent = serde_json::from_str(&json).unwrap();
        let back = back.into_event(Arc::from("b:1"));
        assert_eq!(back.decision, event.decision);
        assert_eq!(
            (back.at, &*back.client, back.origin.as_deref()),
            (event.at, "alice", Some("b:1"))
        );
        assert_eq!(back.asked, event.asked);
        assert!(back.shadow);
        assert_eq!(back.limit.as_deref(), Some("daily"));
        assert_eq!(back.each, event.each);
        // From an instance that predates `via`: read as a route's.
        let old = json.replace(r#""via":"check","#, "");
        assert_ne!(old, json);
        let old: SharedEvent = serde_json::from_str(&old).unwrap();
        let asked = old.into_event(Arc::from("b:1")).asked.unwrap();
        assert_eq!((asked.via, &*asked.path), (Via::Route, "/api/data"));
        // From a newer instance, with an asker this one does not know: still read.
        let newer = json.replace(r#""via":"check""#, r#""via":"carrier_pigeon""#);
        let newer: SharedEvent = serde_json::from_str(&newer).unwrap();
        let asked = newer.into_event(Arc::from("b:1")).asked.unwrap();
        assert_eq!(asked.via, Via::Other);
    }
}
