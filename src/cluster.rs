//! Distributed mode's coordination between instances, over Redis (see
//! [`crate::store::redis`] for the keys and scripts):
//!
//! - **Configs**: Redis holds the shared truth, each instance's SQLite its durable copy.
//!   An admin write is a compare-and-set in Redis that announces the new version on
//!   `rw:config`; every instance then reads the whole shared table, stores it in SQLite
//!   and swaps it in. A once-a-second version check covers a missed announcement (pub/sub
//!   does not queue for a disconnected subscriber), so every instance applies a change
//!   within a second, or at once when the announcement arrives. The first instance on an
//!   empty Redis seeds it with its own configs. A shared config this server refuses is
//!   logged and the instance keeps what it had for that endpoint.
//! - **Live feeds**: once a second each instance publishes on `rw:feed` its counts of
//!   the last second, whether it has subscribers, and a bounded sample of its decision
//!   events; the others add the counts to their cluster statistics and hand the events
//!   to their broadcaster, so any instance's `/ws/global` and dashboard show the cluster.
//!
//! - **Resets**: an admin reset of a client is announced on `rw:reset`; every instance
//!   then forgets the refusals it remembers of that client (see
//!   [`crate::store::over_limit`]), and all of them whenever its subscription starts
//!   again (announcements may have been missed meanwhile).
//!
//! Everything here runs as tasks on the main arbiter; nothing on the request path waits
//! for it.

use crate::actors::broadcaster::{Broadcaster, FeedInterest, TakeOutbox};
use crate::actors::registry::Registries;
use crate::actors::{Asked, DecisionEvent, LimitSeen, Via};
use crate::clock::SharedClock;
use crate::config::writer::{Committer, ConfigStore, Plan, WriteError};
use crate::config::{Change, Config, DEFAULT_ENDPOINT, Source, diff};
use crate::limiter::Decision;
use crate::metrics::Metrics;
use crate::policy::Policies;
use crate::stats::{GlobalStats, Peers, SecondCounts};
use crate::store::redis::{
    CONFIG_CHANNEL, FEED_CHANNEL, RESET_CHANNEL, Redis, RedisConfig, RedisUnavailable,
};
use actix::Addr;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often an instance publishes its feed batch and checks the config version.
const TICK: Duration = Duration::from_secs(1);
/// Wait before resubscribing after the pub/sub connection broke.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(250);
/// Compare-and-set attempts of one admin write before it answers 409.
const WRITE_ATTEMPTS: usize = 8;
/// Decision events one instance sends the others per second at most.
const EVENTS_PER_SECOND: usize = 500;
/// `applied` before the first sync.
const NEVER: u64 = u64::MAX;

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

/// The coordination of one instance with the others.
pub struct Cluster {
    pub instance: Arc<str>,
    redis: Redis,
    policies: Arc<Policies>,
    /// Stores, serves and announces what a sync finds changed.
    committer: Arc<Committer>,
    broadcaster: Addr<Broadcaster>,
    interest: Arc<FeedInterest>,
    global: Arc<GlobalStats>,
    pub peers: Arc<Peers>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    /// Told of other instances' resets.
    registries: Registries,
    /// The shared config version this instance serves.
    applied: AtomicU64,
    /// A sync is running; another request for one only marks `again`.
    syncing: AtomicBool,
    again: AtomicBool,
    /// The last second whose counts were published.
    published: AtomicU64,
    /// Writing the shared configs to SQLite failed; retried at every sync until it works.
    copy_stale: AtomicBool,
    /// This instance's own change served before it was stored (its sync failed): the
    /// endpoint and source the history records once a copy succeeds.
    unstored: std::sync::Mutex<Option<Mine>>,
}

/// What [`Cluster::start`] needs.
pub struct ClusterParts {
    pub instance: Arc<str>,
    pub redis: Arc<RedisConfig>,
    pub committer: Arc<Committer>,
    pub interest: Arc<FeedInterest>,
    pub global: Arc<GlobalStats>,
    pub peers: Arc<Peers>,
    pub clock: SharedClock,
    pub metrics: Arc<Metrics>,
    pub registries: Registries,
}

impl Cluster {
    /// Connects (in the background) and starts the tick and the subscription. Must run
    /// inside an actix system.
    pub fn start(p: ClusterParts) -> Arc<Self> {
        let redis = Redis::new(p.redis.clone());
        redis.connect();
        let cluster = Arc::new(Self {
            instance: p.instance,
            redis,
            policies: p.committer.policies.clone(),
            broadcaster: p.committer.broadcaster.clone(),
            committer: p.committer,
            interest: p.interest,
            global: p.global,
            peers: p.peers,
            clock: p.clock,
            metrics: p.metrics,
            registries: p.registries,
            applied: AtomicU64::new(NEVER),
            syncing: AtomicBool::new(false),
            again: AtomicBool::new(false),
            copy_stale: AtomicBool::new(false),
            unstored: std::sync::Mutex::new(None),
            published: AtomicU64::new(0),
        });
        actix_web::rt::spawn(cluster.clone().tick_loop());
        actix_web::rt::spawn(cluster.clone().subscription(p.redis));
        cluster
    }

    /// Whether the shared configs have been loaded from Redis at least once.
    pub fn synced(&self) -> bool {
        self.applied.load(Ordering::Relaxed) != NEVER
    }

    /// Whether this instance reaches Redis for its coordination.
    pub fn is_up(&self) -> bool {
        self.redis.is_up()
    }

    async fn tick_loop(self: Arc<Self>) {
        let mut every = actix_web::rt::time::interval(TICK);
        loop {
            every.tick().await;
            if !self.redis.is_up() {
                continue;
            }
            self.publish_batch().await;
            match self.redis.config_version().await {
                Ok(v) if v.is_none_or(|v| v != self.applied.load(Ordering::Relaxed)) => {
                    self.clone().request_sync();
                }
                _ => {}
            }
            let watched = self.peers.sweep(self.clock.now());
            self.interest.set_remote(watched);
        }
    }

    async fn publish_batch(&self) {
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

    /// Tells the other instances that `client` was reset here: they forget the refusals
    /// they remember of it. (Best effort: one that misses it refuses that client at
    /// most until the refusal it remembers would have ended anyway.)
    pub async fn announce_reset(&self, client: &str) {
        if let Err(e) = self.redis.publish(RESET_CHANNEL, client).await {
            log::warn!("announcing the reset of {client:?} to the other instances failed: {e}");
        }
    }

    /// Subscribes to the channels, and again whenever the connection breaks.
    async fn subscription(self: Arc<Self>, config: Arc<RedisConfig>) {
        // Failures since the last subscription that worked (a cluster's seed nodes are
        // tried in turn).
        let mut failures = 0;
        loop {
            let subscribed = async {
                let mut pubsub = config.pubsub(failures).await?;
                pubsub
                    .subscribe(&[CONFIG_CHANNEL, FEED_CHANNEL, RESET_CHANNEL])
                    .await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = match subscribed.await {
                Ok(p) => p,
                Err(e) => {
                    if failures == 0 {
                        log::warn!("subscribing to the cluster's channels failed ({e}); retrying");
                    }
                    failures += 1;
                    actix_web::rt::time::sleep(RESUBSCRIBE_AFTER).await;
                    continue;
                }
            };
            failures = 0;
            // Whatever was announced while not subscribed.
            self.clone().request_sync();
            self.registries.forget(None);
            let mut messages = pubsub.into_on_message();
            while let Some(msg) = messages.next().await {
                self.metrics.cluster_messages.inc();
                let Ok(payload) = msg.get_payload::<String>() else {
                    continue;
                };
                match msg.get_channel_name() {
                    CONFIG_CHANNEL => self.clone().request_sync(),
                    FEED_CHANNEL => self.heard(&payload),
                    RESET_CHANNEL => self.registries.forget(Some(&payload)),
                    _ => {}
                }
            }
            log::warn!("the cluster subscription ended; resubscribing");
            actix_web::rt::time::sleep(RESUBSCRIBE_AFTER).await;
        }
    }

    /// Another instance's feed batch: its counts and its events.
    fn heard(&self, payload: &str) {
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

    /// Runs a config sync now, or right after the one running.
    fn request_sync(self: Arc<Self>) {
        self.again.store(true, Ordering::SeqCst);
        if self.syncing.swap(true, Ordering::SeqCst) {
            return;
        }
        actix_web::rt::spawn(async move {
            loop {
                while self.again.swap(false, Ordering::SeqCst) {
                    let _writing = self.policies.lock_writes().await;
                    if let Err(e) = self.sync(None).await {
                        log::debug!("config sync failed: {e}");
                    }
                }
                self.syncing.store(false, Ordering::SeqCst);
                // A request that came after the last round but before `syncing` was
                // cleared found it set and only marked `again`: run for it, unless
                // another task took over.
                if !self.again.load(Ordering::SeqCst) || self.syncing.swap(true, Ordering::SeqCst) {
                    break;
                }
            }
        });
    }

    /// Reads the shared configs and serves them (the caller holds the write lock). The
    /// first instance on an empty Redis seeds it with its own. `mine`: the endpoints this
    /// instance just wrote and who asked, for its history; other changes are recorded as
    /// the cluster's.
    async fn sync(&self, mine: Option<Mine>) -> Result<(), RedisUnavailable> {
        let mut shared = self.redis.shared_configs().await?;
        if shared.version.is_none() {
            self.seed().await?;
            shared = self.redis.shared_configs().await?;
        }
        let Some(version) = shared.version else {
            return Ok(());
        };
        let current = self.policies.current();
        let mut configs = Vec::with_capacity(shared.configs.len());
        for (endpoint, _, parsed) in shared.configs {
            match parsed {
                Ok(c) if c.endpoint() == endpoint => configs.push(c),
                refused => {
                    let why = refused
                        .err()
                        .unwrap_or_else(|| "its endpoint differs".to_owned());
                    log::error!(
                        "shared config for {endpoint:?} refused ({why}); keeping this instance's"
                    );
                    configs.extend(current.get(&endpoint).cloned());
                }
            }
        }
        if !configs.iter().any(|c| c.endpoint() == DEFAULT_ENDPOINT) {
            log::error!("the shared configs have no default policy \"*\"; keeping this instance's");
            configs.extend(current.get(DEFAULT_ENDPOINT).cloned());
        }
        let changes = diff(current.configs(), &configs);
        if changes.is_empty() {
            self.applied.store(version, Ordering::Relaxed);
            if self.copy_stale.load(Ordering::Relaxed) || mine.is_some() {
                self.store_copy(configs, mine).await;
            }
            return Ok(());
        }
        self.store_copy(configs, mine).await;
        if self.committer.publish(&changes, Source::Cluster) {
            self.applied.store(version, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes the shared configs to this instance's SQLite copy; on failure they are still
    /// served from memory, and every later sync tries again.
    async fn store_copy(&self, configs: Vec<Config>, mine: Option<Mine>) {
        let unstored = self
            .unstored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mine = mine.or(unstored);
        let failed = self.committer.copy(configs, mine).await.err();
        if failed.is_none() {
            *self.unstored.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        if let Some(e) = &failed {
            log::error!(
                "storing the shared configs in SQLite failed ({e}); retrying at the next sync"
            );
        }
        self.copy_stale.store(failed.is_some(), Ordering::Relaxed);
    }

    /// Seeds an empty Redis with this instance's configs (no-op once any instance has).
    async fn seed(&self) -> Result<(), RedisUnavailable> {
        let mine = self.policies.current().configs().to_vec();
        if self.redis.seed_configs(&mine).await? {
            log::info!("seeded Redis with this instance's {} configs", mine.len());
        }
        Ok(())
    }
}

/// The endpoints this instance wrote, and who asked: its history records them so.
type Mine = (Vec<String>, Source);

/// The shared configs as the store of config writes: a plan is made against the table
/// Redis holds and written back as one compare-and-set of its version (retried when
/// another instance wrote in between); this instance's sync then stores, serves and
/// announces it before the write answers.
impl ConfigStore for Cluster {
    fn change<'a>(
        &'a self,
        plan: &'a Plan<'a>,
        source: Source,
    ) -> BoxFuture<'a, Result<Vec<Change>, WriteError>> {
        Box::pin(async move {
            let unavailable = |e: RedisUnavailable| {
                WriteError::Unavailable(format!(
                    "The shared configs could not be changed ({e}); nothing changed."
                ))
            };
            // A write must never be the first shared config: the others would lack the
            // rest.
            self.seed().await.map_err(unavailable)?;
            for _ in 0..WRITE_ATTEMPTS {
                let shared = self.redis.shared_configs().await.map_err(unavailable)?;
                let Some(read) = shared.version else {
                    continue;
                };
                let mut configs = Vec::with_capacity(shared.configs.len());
                let mut unreadable = Vec::new();
                for (endpoint, _, parsed) in shared.configs {
                    match parsed {
                        Ok(c) if c.endpoint() == endpoint => configs.push(c),
                        _ => unreadable.push(endpoint),
                    }
                }
                let mut changes = plan(&configs)?;
                if changes.is_empty() {
                    return Ok(changes);
                }
                if let Some(e) = changes
                    .iter()
                    .find(|c| unreadable.contains(&c.endpoint().to_owned()))
                {
                    return Err(WriteError::Unavailable(format!(
                        "The shared config for {:?} is unreadable; nothing changed.",
                        e.endpoint()
                    )));
                }
                // A created config gets an id no other instance will use.
                for change in &mut changes {
                    if let Some(after) = change.after.as_mut().filter(|a| a.id == 0) {
                        after.id = self.redis.next_config_id().await.map_err(unavailable)?;
                    }
                }
                let writes: Vec<(String, Option<String>)> = (changes.iter())
                    .map(|c| {
                        (
                            c.endpoint().to_owned(),
                            c.after.as_ref().map(Config::to_json),
                        )
                    })
                    .collect();
                if self
                    .redis
                    .swap_configs(read, &writes)
                    .await
                    .map_err(unavailable)?
                    .is_err()
                {
                    continue;
                }
                // The sync serves them here, stores them in SQLite (recorded with their
                // source) and tells the feeds; should Redis fail in between, they are
                // served from memory at once and stored by the next sync.
                let mine: Mine = (writes.into_iter().map(|(e, _)| e).collect(), source);
                if let Err(e) = self.sync(Some(mine.clone())).await {
                    log::warn!("configs stored in Redis, local sync deferred: {e}");
                    self.committer.publish(&changes, source);
                    self.copy_stale.store(true, Ordering::Relaxed);
                    *self.unstored.lock().unwrap_or_else(|e| e.into_inner()) = Some(mine);
                }
                return Ok(changes);
            }
            Err(WriteError::Conflict(
                "Other instances kept changing the configs; nothing changed, try again.".to_owned(),
            ))
        })
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
