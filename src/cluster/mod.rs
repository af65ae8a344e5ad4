//! Distributed mode's coordination between instances, over Redis (see
//! [`crate::store::redis`] for the keys and scripts). This module subscribes to the
//! channels and runs the once-a-second tick; `configs` keeps the shared configs and is
//! the config writes' store in distributed mode; `feed` relays the live feeds.
//!
//! - **Configs**: Redis holds the shared truth, each instance's SQLite its durable copy.
//!   A config write is a compare-and-set in Redis that announces the new version on
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

mod configs;
mod feed;

pub use feed::events_per_second;

use crate::actors::broadcaster::{Broadcaster, FeedInterest};
use crate::actors::registry::Registries;
use crate::clock::SharedClock;
use crate::config::writer::Committer;
use crate::metrics::Metrics;
use crate::policy::Policies;
use crate::stats::{GlobalStats, Peers};
use crate::store::redis::{CONFIG_CHANNEL, FEED_CHANNEL, RESET_CHANNEL, Redis};
use actix::Addr;
use configs::Mine;
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often an instance publishes its feed batch and checks the config version.
const TICK: Duration = Duration::from_secs(1);
/// A subscription that hears nothing for this long is asked for a PING, and made again
/// unless it answers within [`PING_WAIT`].
const SILENCE: Duration = Duration::from_secs(3);
const PING_WAIT: Duration = Duration::from_secs(1);
/// Wait before resubscribing after the pub/sub connection broke.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(250);
/// `applied` before the first sync.
const NEVER: u64 = u64::MAX;

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
    unstored: std::sync::Mutex<Mine>,
}

/// What [`Cluster::start`] needs.
pub struct ClusterParts {
    pub instance: Arc<str>,
    /// The coordination's own handle (its connection and breaker), not yet connected.
    pub redis: Redis,
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
        p.redis.connect();
        let cluster = Arc::new(Self {
            instance: p.instance,
            redis: p.redis,
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
            unstored: std::sync::Mutex::default(),
            published: AtomicU64::new(0),
        });
        actix_web::rt::spawn(cluster.clone().tick_loop());
        actix_web::rt::spawn(cluster.clone().subscription());
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

    /// Tells the other instances that `client` was reset here: they forget the refusals
    /// they remember of it. (Best effort: one that misses it refuses that client at
    /// most until the refusal it remembers would have ended anyway.)
    pub async fn announce_reset(&self, client: &str) {
        if let Err(e) = self.redis.publish(RESET_CHANNEL, client).await {
            log::warn!("announcing the reset of {client:?} to the other instances failed: {e}");
        }
    }

    /// Subscribes to the channels, and again whenever the connection breaks.
    async fn subscription(self: Arc<Self>) {
        // Failures since the last subscription that worked (a cluster's seed nodes are
        // tried in turn).
        let mut failures = 0;
        loop {
            let subscribed = async {
                let mut pubsub = self.redis.pubsub(failures).await?;
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
            let (mut sink, mut messages) = pubsub.split();
            loop {
                let msg = match actix_web::rt::time::timeout(SILENCE, messages.next()).await {
                    Ok(Some(msg)) => msg,
                    Ok(None) => break,
                    // Quiet for a while: a server gone without closing the connection
                    // (after a failover, a partition) would leave it silent for good, so
                    // it must answer a PING.
                    Err(_) => {
                        let ping = sink.ping::<redis::Value>();
                        match actix_web::rt::time::timeout(PING_WAIT, ping).await {
                            Ok(Ok(_)) => continue,
                            _ => break,
                        }
                    }
                };
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
            match self.redis.is_up() {
                true => log::warn!("the cluster subscription ended or fell silent; resubscribing"),
                false => {
                    log::debug!("the cluster subscription ended or fell silent; resubscribing")
                }
            }
            actix_web::rt::time::sleep(RESUBSCRIBE_AFTER).await;
        }
    }
}
