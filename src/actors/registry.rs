//! Registry shards: each owns the limiters of the clients that hash to it, spawns them on
//! its own arbiter (so a forwarded check is a same-thread hop), evicts the least recently
//! used beyond its share of `--max-clients` and those idle for `--client-idle-secs`, and
//! collects their snapshots into one batch per flush interval.
//!
//! Messages:
//! - [`Check`] → `Result<Decision, LimiterUnavailable>`: route one check to its client.
//! - [`Flush`] → `Result<usize, String>`: sweep idle clients, snapshot dirty ones, persist
//!   the batch; answers once the database has committed it (the timer sends it too).
//! - [`GetClientStatus`] → [`ClientStatus`]: for `/admin/stats/{client_id}`.
//!
//! Eviction and restore are ordered so that no consumption is lost in between: the
//! registry waits (`ctx.wait`) for an evicted limiter's final snapshot before handling
//! another message, keeps it in `unsent` until it has been queued to the DB actor, and a
//! returning client is restored from `unsent` or, after that, from the database, whose
//! single thread handles the write before the read.

use super::EventSink;
use super::client_limiter::{
    ClientCheck, ClientLimiter, ClientStatus, Evict, RedisCheck, Restore, Status, TakeSnapshot,
};
use super::db::{Db, LoadClient, Persist};
use crate::clock::{Nanos, SharedClock};
use crate::limiter::{Decision, Mode};
use crate::metrics::{Metrics, RestoreSource};
use crate::policy::{Policy, PolicyTable};
use crate::stats::GlobalStats;
use crate::store::redis::{Redis, RedisConfig};
use crate::store::{ClientSnapshot, PendingSnapshots, merge_snapshot};
use actix::clock::Instant;
use actix::prelude::*;
use futures_util::future::join_all;
use hashlink::LinkedHashMap;
use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;

/// Queued checks per shard before HTTP workers wait for room.
const MAILBOX_CAPACITY: usize = 1 << 16;

/// Decide one request of `client` under `policy`: `cost` units, taken or only looked at
/// (`mode`).
#[derive(Message)]
#[rtype(result = "Result<Decision, LimiterUnavailable>")]
pub struct Check {
    pub client: Arc<str>,
    pub policy: Arc<Policy>,
    pub cost: u64,
    pub mode: Mode,
    /// The request's path, for the live feeds (only set while someone watches).
    pub path: Option<Arc<str>>,
    /// The latest time an answer can still reach the request; a check whose turn comes
    /// later consumes nothing.
    pub answer_by: Instant,
}

/// The client's limiter could not answer (it stopped while the check was queued, or the
/// check's deadline passed before its turn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterUnavailable;

/// Evict idle clients, snapshot the dirty ones and persist everything pending.
#[derive(Message)]
#[rtype(result = "Result<usize, String>")]
pub struct Flush;

/// Answers once the shard handles messages: the health check's proof that requests
/// can be decided.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Alive;

/// Counters and quotas of one client, live or stored.
#[derive(Message)]
#[rtype(result = "ClientStatus")]
pub struct GetClientStatus {
    pub client: Arc<str>,
    pub table: Arc<PolicyTable>,
}

/// What a shard needs to run.
#[derive(Clone)]
pub struct RegistryConfig {
    pub clock: SharedClock,
    pub db: Addr<Db>,
    pub global: Arc<GlobalStats>,
    pub events: Option<EventSink>,
    /// Live limiters this shard may hold.
    pub max_clients: usize,
    pub idle: Nanos,
    pub flush_interval: Duration,
    /// Live limiters over all shards, for `/admin/stats`.
    pub live_total: Arc<AtomicUsize>,
    pub metrics: Arc<Metrics>,
    /// Distributed mode: decide through Redis (each shard opens its own connection).
    pub redis: Option<Arc<RedisConfig>>,
}

struct Live {
    addr: Addr<ClientLimiter>,
    last_used: Nanos,
    /// Listed in `Registry::dirty` since the last flush.
    dirty: bool,
}

pub struct Registry {
    config: RegistryConfig,
    /// Live limiters, least recently used first.
    live: LinkedHashMap<Arc<str>, Live>,
    /// Clients checked since the last flush.
    dirty: Vec<Arc<str>>,
    /// Snapshots taken but not yet queued to the DB actor.
    unsent: PendingSnapshots,
    /// Hashes of clients the database may hold state for; a hit costs one read on the
    /// client's first request, a miss (a new client) costs nothing.
    known: HashSet<u64>,
    /// This shard's Redis connection, in distributed mode.
    redis: Option<Redis>,
}

/// The hash that picks a client's shard and marks it as known.
pub fn client_hash(client: &str) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(client)
}

impl Registry {
    pub fn new(config: RegistryConfig, known: HashSet<u64>, redis: Option<Redis>) -> Self {
        Self {
            config,
            live: LinkedHashMap::new(),
            dirty: Vec::new(),
            unsent: PendingSnapshots::new(),
            known,
            redis,
        }
    }

    fn spawn(
        &mut self,
        client: &Arc<str>,
        now: Nanos,
        ctx: &mut Context<Self>,
    ) -> Addr<ClientLimiter> {
        if self.live.len() >= self.config.max_clients {
            let victim = self.live.pop_front();
            self.evict(victim.into_iter().collect(), ctx);
        }
        let restore = if let Some(s) = self.unsent.get(client) {
            self.config.metrics.restored(RestoreSource::memory);
            Restore::From(s.stored())
        } else if self.known.contains(&client_hash(client)) {
            Restore::Load(self.config.db.clone())
        } else {
            Restore::Fresh
        };
        let c = &self.config;
        let addr = ClientLimiter::new(
            client.clone(),
            c.clock.clone(),
            c.global.clone(),
            c.events.clone(),
            restore,
            self.redis.clone(),
        )
        .start();
        self.live.insert(
            client.clone(),
            Live {
                addr: addr.clone(),
                last_used: now,
                dirty: true,
            },
        );
        self.dirty.push(client.clone());
        c.live_total.fetch_add(1, Ordering::Relaxed);
        addr
    }

    /// Stops the given limiters, waiting for their final snapshots before this shard
    /// handles anything else.
    fn evict(&mut self, victims: Vec<(Arc<str>, Live)>, ctx: &mut Context<Self>) {
        if victims.is_empty() {
            return;
        }
        self.config
            .live_total
            .fetch_sub(victims.len(), Ordering::Relaxed);
        self.config.metrics.evictions.inc_by(victims.len() as u64);
        let replies = victims
            .into_iter()
            .map(|(client, live)| async move { (client, live.addr.send(Evict).await) });
        ctx.wait(join_all(replies).into_actor(self).map(|results, act, _| {
            for (client, reply) in results {
                match reply {
                    Ok(snapshot) => act.stash(snapshot),
                    Err(e) => log::error!("client {client:?}: final snapshot lost: {e}"),
                }
            }
        }));
    }

    /// Keeps a snapshot for the next batch: the newest state wins, statistics add up.
    fn stash(&mut self, snapshot: Option<ClientSnapshot>) {
        let Some(new) = snapshot else { return };
        self.known.insert(client_hash(&new.client));
        merge_snapshot(&mut self.unsent, new);
    }

    /// One flush: idle sweep, snapshots of dirty limiters, then the batch to the DB actor.
    /// `done` hears back once the batch is committed.
    ///
    /// Only the idle evictions hold up this shard (`ctx.wait`: a returning client must
    /// find its final snapshot). Snapshots of live limiters are collected without
    /// blocking checks; a late one can never overwrite a newer one, because `stash` and
    /// the database both keep the higher version. Spawned items only run once pending
    /// waits are done, so the batch always holds the evicted limiters' final state.
    fn flush(
        &mut self,
        ctx: &mut Context<Self>,
        done: Option<oneshot::Sender<Result<usize, String>>>,
    ) {
        let now = self.config.clock.now();
        let mut idle = Vec::new();
        while let Some((_, live)) = self.live.front() {
            if live.last_used.saturating_add(self.config.idle) > now {
                break;
            }
            idle.extend(self.live.pop_front());
        }
        self.evict(idle, ctx);

        let takes: Vec<_> = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|client| {
                let live = self.live.get_mut(&client)?;
                live.dirty = false;
                Some(live.addr.send(TakeSnapshot))
            })
            .collect();
        ctx.spawn(
            join_all(takes)
                .into_actor(self)
                .map(move |replies, act, _| {
                    for reply in replies {
                        // A limiter evicted meanwhile answered `Evict` with the same state.
                        act.stash(reply.ok().flatten());
                    }
                    let batch: Vec<ClientSnapshot> = std::mem::take(&mut act.unsent)
                        .into_iter()
                        .map(|(_, s)| s)
                        .collect();
                    // `do_send` queues at once, ahead of any restore read that follows.
                    // An empty batch is sent too: the DB actor retries what it holds.
                    act.config.db.do_send(Persist { batch, done });
                }),
        );
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Checks from every HTTP worker queue here. Beyond this many, senders wait
        // (backpressure) instead of the queue growing without bound.
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        // On this shard's thread, so the connection's driver runs beside its limiters.
        if let Some(redis) = &self.redis {
            redis.connect();
        }
        ctx.run_interval(self.config.flush_interval, |act, ctx| act.flush(ctx, None));
    }
}

impl Handler<Check> for Registry {
    type Result = ResponseFuture<Result<Decision, LimiterUnavailable>>;

    fn handle(&mut self, msg: Check, ctx: &mut Context<Self>) -> Self::Result {
        let now = self.config.clock.now();
        let addr = match self.live.to_back(&msg.client) {
            // A limiter that stopped on its own (its restore failed) is replaced.
            Some(live) if live.addr.connected() => {
                live.last_used = now;
                if !live.dirty {
                    live.dirty = true;
                    self.dirty.push(msg.client.clone());
                }
                live.addr.clone()
            }
            Some(_) => {
                self.live.remove(&msg.client);
                self.config.live_total.fetch_sub(1, Ordering::Relaxed);
                self.spawn(&msg.client, now, ctx)
            }
            None => self.spawn(&msg.client, now, ctx),
        };
        if self.redis.is_some() {
            let check = addr.send(RedisCheck {
                policy: msg.policy,
                cost: msg.cost,
                mode: msg.mode,
                path: msg.path,
                answer_by: msg.answer_by,
            });
            return Box::pin(async move { check.await.ok().flatten().ok_or(LimiterUnavailable) });
        }
        let check = addr.send(ClientCheck {
            policy: msg.policy,
            cost: msg.cost,
            mode: msg.mode,
            path: msg.path,
            answer_by: msg.answer_by,
        });
        Box::pin(async move { check.await.ok().flatten().ok_or(LimiterUnavailable) })
    }
}

impl Handler<Flush> for Registry {
    type Result = ResponseFuture<Result<usize, String>>;

    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.flush(ctx, Some(tx));
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err("the database actor stopped".to_owned()))
        })
    }
}

impl Handler<Alive> for Registry {
    type Result = ();
    fn handle(&mut self, _: Alive, _: &mut Context<Self>) {}
}

impl Handler<GetClientStatus> for Registry {
    type Result = ResponseFuture<ClientStatus>;

    fn handle(&mut self, msg: GetClientStatus, _: &mut Context<Self>) -> Self::Result {
        let now = self.config.clock.now();
        if let Some(live) = self.live.get(&msg.client) {
            let status = live.addr.send(Status { table: msg.table });
            return Box::pin(async move { status.await.unwrap_or_default() });
        }
        let redis = self.redis.clone();
        let client = msg.client.clone();
        // Distributed mode: the quotas are in Redis; the snapshot names the endpoints.
        let status = move |stored: crate::store::StoredClient, table: Arc<PolicyTable>| {
            let redis = redis.clone();
            let client = client.clone();
            async move {
                match redis {
                    Some(redis) => {
                        let names = stored
                            .endpoints
                            .iter()
                            .map(|e| e.endpoint.clone())
                            .collect();
                        ClientStatus::from_redis(&redis, &client, stored.totals, names, table, now)
                            .await
                    }
                    None => ClientStatus::from_stored(stored, &table, now),
                }
            }
        };
        if let Some(s) = self.unsent.get(&msg.client) {
            return Box::pin(status(s.stored(), msg.table));
        }
        if !self.known.contains(&client_hash(&msg.client)) {
            return Box::pin(async { ClientStatus::default() });
        }
        let load = self.config.db.send(LoadClient {
            client: msg.client,
            now,
        });
        Box::pin(async move {
            match load.await {
                Ok(Ok(Some(stored))) => status(stored, msg.table).await,
                _ => ClientStatus::default(),
            }
        })
    }
}

/// The shards, each on its own arbiter, and the routing between them.
#[derive(Clone)]
pub struct Registries {
    shards: Arc<[Addr<Registry>]>,
    live_total: Arc<AtomicUsize>,
    /// Each shard's Redis connection, for the health check.
    redis: Arc<[Redis]>,
}

impl Registries {
    /// Starts `n` shards on new arbiters. `known` lists the clients the database holds.
    pub fn start(n: usize, config: RegistryConfig, known: impl IntoIterator<Item = u64>) -> Self {
        let n = n.max(1);
        let mut per_shard: Vec<HashSet<u64>> = vec![HashSet::new(); n];
        for h in known {
            per_shard[(h % n as u64) as usize].insert(h);
        }
        let shard_config = RegistryConfig {
            max_clients: config.max_clients.div_ceil(n).max(1),
            ..config.clone()
        };
        let redis: Arc<[Redis]> = match &config.redis {
            Some(r) => (0..n).map(|_| Redis::new(r.clone())).collect(),
            None => Arc::new([]),
        };
        let shards = per_shard
            .into_iter()
            .enumerate()
            .map(|(i, known)| {
                let config = shard_config.clone();
                let redis = redis.get(i).cloned();
                Registry::start_in_arbiter(&Arbiter::new().handle(), move |_| {
                    Registry::new(config, known, redis)
                })
            })
            .collect();
        Self {
            shards,
            live_total: config.live_total,
            redis,
        }
    }

    pub fn shard(&self, client: &str) -> &Addr<Registry> {
        &self.shards[(client_hash(client) % self.shards.len() as u64) as usize]
    }

    /// Whether every shard handles messages.
    pub async fn alive(&self) -> bool {
        join_all(self.shards.iter().map(|s| s.send(Alive)))
            .await
            .iter()
            .all(Result::is_ok)
    }

    /// Distributed mode: how many shards reach Redis, of how many (`None` without Redis).
    pub fn redis_reachable(&self) -> Option<(usize, usize)> {
        (!self.redis.is_empty()).then(|| {
            let up = self.redis.iter().filter(|r| r.is_up()).count();
            (up, self.redis.len())
        })
    }

    pub fn live_clients(&self) -> usize {
        self.live_total.load(Ordering::Relaxed)
    }

    /// Flushes every shard and waits until all batches are committed.
    pub async fn flush_all(&self) -> Result<usize, String> {
        let mut total = 0;
        for r in join_all(self.shards.iter().map(|s| s.send(Flush))).await {
            total += r.map_err(|e| e.to_string())??;
        }
        Ok(total)
    }
}
