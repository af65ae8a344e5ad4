//! Registry shards: each owns the limiters of the clients that hash to it, as entities
//! in one map (no actor, task or mailbox per client), hands each its checks one at a
//! time, evicts the least recently used beyond its share of `--max-clients` and those
//! idle for `--client-idle-secs`, and collects their snapshots into one batch per flush
//! interval.
//!
//! Messages:
//! - [`Check`] → `Result<Decisions, LimiterUnavailable>`: decide one check of a client.
//! - [`Flush`] → `Result<usize, String>`: sweep idle clients, snapshot dirty ones, persist
//!   the batch; answers once the database has committed it.
//! - [`FlushSlice`] (to itself): the timer's flush, [`FLUSH_SLICE`] snapshots at a time, so
//!   that the HTTP workers, which lock the shard to decide, never wait for a whole flush.
//! - [`GetClientStatus`] → [`ClientStatus`]: for `/admin/stats/{client_id}`.
//! - [`Alive`]: the health check.
//!
//! Eviction and restore are ordered so that no consumption is lost in between: an evicted
//! limiter's final snapshot is taken in the same message that evicts it and kept in
//! `unsent` until it has been queued to the DB actor; a returning client is restored from
//! `unsent` or, after that, from the database, whose single thread handles the write
//! before the read. While a client's state is being read back, its checks wait in order
//! in its entity (up to [`MAX_WAITING`]); nothing is decided before the state is back.

use super::client_limiter::{ClientLimiter, ClientStatus, Shared};
use super::db::{Db, LoadClient, Persist};
use super::{Asked, DecisionEvent, EventSink, LimitSeen};
use crate::clock::{Nanos, SharedClock};
use crate::limiter::{Decisions, Mode};
use crate::metrics::{Metrics, RestoreSource};
use crate::policy::{Policy, PolicyTable};
use crate::snapshot::{ClientSnapshot, PendingSnapshots, StoredClient, merge_snapshot};
use crate::stats::GlobalStats;
use crate::store::quota::{QuotaBackend, Verdict};
use crate::store::sqlite::StoreError;
use crate::top::{By, Ranked, TopClients, rank, sum};
use actix::clock::Instant;
use actix::prelude::*;
use futures_util::future::{BoxFuture, join_all};
use hashlink::LinkedHashMap;
use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;

/// Queued checks per shard before HTTP workers wait for room.
const MAILBOX_CAPACITY: usize = 1 << 16;
/// Checks one client may have waiting for its restore; beyond, they are refused (and
/// get `--on-error`) rather than queue without bound behind a stalled database.
pub const MAX_WAITING: usize = 1024;

/// Decide one request of `client` under `policy`: `cost` units, taken or only looked at
/// (`mode`).
#[derive(Message)]
#[rtype(result = "Result<Decisions, LimiterUnavailable>")]
pub struct Check {
    pub client: Arc<str>,
    pub policy: Arc<Policy>,
    pub cost: u64,
    pub mode: Mode,
    /// Who asked and for what path, for the live feeds (only set while someone watches).
    pub asked: Option<Asked>,
    /// The latest time an answer can still reach the request; a check whose turn comes
    /// later consumes nothing.
    pub answer_by: Instant,
    /// Whether the decision is counted (statistics, top list, feeds) once made: not
    /// when it decides only some of a request's limits, which
    /// [`Registries::record`] counts once all are decided.
    pub record: bool,
}

impl Check {
    /// A check that is not counted (see [`Check::record`]) and that no feed shows: a
    /// part of a request's limits, a refund, a reset.
    pub fn unrecorded(
        client: Arc<str>,
        policy: Arc<Policy>,
        cost: u64,
        mode: Mode,
        answer_by: Instant,
    ) -> Self {
        Check {
            client,
            policy,
            cost,
            mode,
            asked: None,
            answer_by,
            record: false,
        }
    }
}

/// The client's limiter could not answer (its restore failed, or the check's turn came
/// after `answer_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterUnavailable;

/// Evict idle clients, snapshot the dirty ones and persist everything pending.
#[derive(Message)]
#[rtype(result = "Result<usize, String>")]
pub struct Flush;

/// Snapshot the next [`FLUSH_SLICE`] clients of the timer's flush; persist the batch
/// after the last.
#[derive(Message)]
#[rtype(result = "()")]
struct FlushSlice;

/// Snapshots taken per lock of the shard during the timer's flush: a worker waits for
/// the lock at most this many snapshots long, not for every dirty client's.
const FLUSH_SLICE: usize = 256;

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
    /// Least time between two writes of one client's state (`--client-write-interval-ms`):
    /// a client that stays busy is written once per this, not at every flush.
    pub write_interval: Duration,
    /// Live limiters over all shards, for `/admin/stats`.
    pub live_total: Arc<AtomicUsize>,
    pub metrics: Arc<Metrics>,
}

pub type Answer = Result<Decisions, LimiterUnavailable>;

/// A check waiting for its client's state to be read back, and where its answer goes.
type Waiting = (Check, oneshot::Sender<Answer>);

/// One live client.
struct Entity {
    limiter: ClientLimiter,
    last_used: Nanos,
    /// Listed in `Shard::dirty` since its last snapshot.
    dirty: bool,
    /// The flush that took its last snapshot (0: none yet), which decides when the next
    /// may be taken. (32 bits, compared wrapping, like `incarnation`: every live client
    /// has them.)
    written: u32,
    /// While its state is being read back from the database: the checks that wait.
    /// (Boxed: a pointer in the struct every live client has, a vector only while
    /// restoring; the extra allocation is made only then.)
    #[allow(clippy::box_collection)]
    restoring: Option<Box<Vec<Waiting>>>,
    /// Tells this entity from an earlier one of the same client, for a restore's answer
    /// (wrapping: two entities of a client 2^32 apart never overlap a restore).
    incarnation: u32,
}

/// A check's answer: now, or once the backend (or a restore) has answered.
pub enum Reply {
    Now(Answer),
    Later(BoxFuture<'static, Answer>),
}

/// Awaited as the answer. (A plain future, not an `async fn`: it is part of every
/// request's future, which it keeps small.)
impl std::future::Future for Reply {
    type Output = Answer;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Answer> {
        match &mut *self {
            Reply::Now(answer) => {
                std::task::Poll::Ready(std::mem::replace(answer, Err(LimiterUnavailable)))
            }
            Reply::Later(later) => later.as_mut().poll(cx),
        }
    }
}

/// One shard's clients, behind a mutex: the HTTP worker that has a check for a live,
/// restored client locks it and has it decided right there (the common case, no thread
/// hop; a backend that answers later is awaited by that request); a new client's first
/// check, which may have to wait for its restore, goes through the shard's actor.
pub struct Shard {
    config: RegistryConfig,
    /// Live clients, least recently used first.
    live: LinkedHashMap<Arc<str>, Entity>,
    /// Clients checked since their last snapshot, by the flush that is due to take them.
    dirty: Dirty,
    /// Dirty clients the timer's flush has yet to snapshot, a slice at a time, oldest
    /// first.
    flushing: VecDeque<Arc<str>>,
    /// Snapshots taken but not yet queued to the DB actor.
    unsent: PendingSnapshots,
    /// Hashes of clients the database may hold state for; a hit costs one read on the
    /// client's first request, a miss (a new client) costs nothing.
    known: HashSet<u64>,
    /// Where the quotas are decided (for a remote store, this shard's handle: its
    /// breaker and shared connection, beside each deciding thread's own).
    backend: Arc<dyn QuotaBackend>,
    incarnations: u32,
    /// The heaviest clients of the last hour, for `/admin/top`.
    top: TopClients,
}

/// A shard as its actor, the HTTP workers and its spawned tasks share it.
type SharedShard = Arc<Mutex<Shard>>;

fn lock(shard: &SharedShard) -> MutexGuard<'_, Shard> {
    // A panic while holding it can leave one client's bookkeeping half done, never its
    // quota over-admitted: keep serving.
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

/// A shard's actor: checks that must wait, the flush timer, status and health.
pub struct Registry {
    shard: SharedShard,
}

/// Lists `client` for the flush due to snapshot it, once.
fn mark_dirty(e: &mut Entity, dirty: &mut Dirty, client: &Arc<str>) {
    if !e.dirty {
        e.dirty = true;
        dirty.list(e.written, client);
    }
}

/// Clients whose state changed since their last snapshot, each listed for the flush that
/// is due to take it: the next flush, or for a client snapshotted less than
/// `write_interval` ago, the first flush a whole `write_interval` after that snapshot.
/// A client that stays busy is then written once per `write_interval`, not once per
/// flush; one whose first change follows a quiet spell still waits one flush at most.
/// Listing costs a push, whatever the wait: a ring of one list per flush to come.
#[derive(Debug)]
struct Dirty {
    /// `lists[i]`: the clients flush `next + i` takes.
    lists: VecDeque<Vec<Arc<str>>>,
    /// The number of the next flush to begin (from 1, wrapping; a client's `written` is
    /// 0 before its first snapshot).
    next: u32,
}

impl Dirty {
    /// `flushes` apart: the flushes that begin in one write interval (at least 1).
    fn new(flushes: u32) -> Self {
        Dirty {
            lists: (0..flushes.max(1)).map(|_| Vec::new()).collect(),
            next: 1,
        }
    }

    /// Lists a client last snapshotted by flush `written` (its low 32 bits).
    fn list(&mut self, written: u32, client: &Arc<str>) {
        // Flush `written + apart` is due: `apart - since` flushes after the next, where
        // `since >= 1` flushes have begun since the write (counted wrapping).
        let since = self.next.wrapping_sub(written);
        let wait = match written {
            0 => 0,
            _ => self.lists.len().saturating_sub(since as usize),
        };
        self.lists[wait].push(client.clone());
    }

    /// Begins the next flush: moves the clients it is due to take to `into`. (The
    /// emptied list goes round to the back with its room, so the workers' pushes do not
    /// grow a new one each flush.)
    fn begin(&mut self, into: &mut VecDeque<Arc<str>>) {
        self.next = self.next.wrapping_add(1);
        if let Some(mut due) = self.lists.pop_front() {
            into.extend(due.drain(..));
            self.lists.push_back(due);
        }
    }

    /// Every listed client, due or not (a flush someone waits for: a stop, a test).
    fn take_all(&mut self) -> impl Iterator<Item = Arc<str>> + '_ {
        self.lists.iter_mut().flat_map(std::mem::take)
    }

    /// The flush whose snapshots are being taken (the last one begun), as a client's
    /// `written`.
    fn current(&self) -> u32 {
        self.next.wrapping_sub(1)
    }
}

impl<'a> Shared<'a> {
    fn of(c: &'a RegistryConfig) -> Self {
        Shared {
            global: &c.global,
            events: c.events.as_ref(),
        }
    }
}

/// Has `backend` decide `check` for its live, restored client `e`, and counts the
/// decision: at once, or when the backend answers. A backend's checks of one client may
/// be in flight together (the backend keeps each atomic); their bookkeeping runs in the
/// order the answers come.
fn decide_now(
    e: &mut Entity,
    parts: Parts<'_>,
    me: &SharedShard,
    check: Check,
    now: Nanos,
) -> Reply {
    let Parts {
        backend,
        config,
        top,
    } = parts;
    let now = e.limiter.now(now);
    let p = &check.policy;
    match e.limiter.decide(backend, p, check.cost, check.mode, now) {
        // A peek changes nothing, so it is answered but neither counted nor streamed.
        Verdict::Now(d) => {
            match check.mode {
                Mode::Consume if check.record => {
                    let shared = Shared::of(config);
                    e.limiter.record(p, &d, check.asked.clone(), now, &shared);
                    top.record(&check.client, !p.refuses(&d), now);
                }
                // A reset or a refund marks the state changed itself, when there was one;
                // a check of a request's other limits is counted with the request.
                // A charge is counted by whoever made it, with what it charged.
                Mode::Consume | Mode::Reset | Mode::Peek | Mode::Refund(_) | Mode::Charge => {}
            }
            Reply::Now(Ok(d))
        }
        Verdict::Later(later) => {
            // Awaited by a task of this thread (the request's, whose connection the
            // backend uses: no hop to another thread), not by the request: an answer
            // that comes after the request gave up is still counted (the backend has
            // consumed).
            let me = me.clone();
            let (tx, rx) = oneshot::channel();
            actix::spawn(async move {
                let answer = later.await.map_err(|_| LimiterUnavailable);
                if let Ok(d) = &answer
                    && check.mode == Mode::Consume
                    && check.record
                {
                    lock(&me).record(&check, d);
                }
                let _ = tx.send(answer);
            });
            Reply::Later(Box::pin(async move {
                rx.await.unwrap_or(Err(LimiterUnavailable))
            }))
        }
    }
}

/// What [`decide_now`] borrows of its shard besides the entity.
struct Parts<'a> {
    backend: &'a dyn QuotaBackend,
    config: &'a RegistryConfig,
    top: &'a mut TopClients,
}

impl<'a> Parts<'a> {
    /// From the shard's fields (not the shard, whose map lends the entity meanwhile).
    fn of(
        backend: &'a Arc<dyn QuotaBackend>,
        config: &'a RegistryConfig,
        top: &'a mut TopClients,
    ) -> Self {
        Parts {
            backend: &**backend,
            config,
            top,
        }
    }
}

/// The flushes that begin in one write interval, rounded up: how far apart two
/// snapshots of a busy client are taken.
fn flushes_apart(c: &RegistryConfig) -> u32 {
    let flush = c.flush_interval.as_nanos().max(1);
    let apart = c.write_interval.as_nanos().div_ceil(flush).max(1);
    u32::try_from(apart).unwrap_or(u32::MAX)
}

/// The hash that picks a client's shard and marks it as known.
pub fn client_hash(client: &str) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(client)
}

impl Shard {
    pub fn new(
        config: RegistryConfig,
        known: HashSet<u64>,
        backend: Arc<dyn QuotaBackend>,
    ) -> Self {
        Self {
            dirty: Dirty::new(flushes_apart(&config)),
            config,
            live: LinkedHashMap::new(),
            flushing: VecDeque::new(),
            unsent: PendingSnapshots::new(),
            known,
            backend,
            incarnations: 0,
            top: TopClients::default(),
        }
    }

    /// Finds `client`'s entity, moving it to the back of the LRU order, or makes it
    /// (evicting the least recently used beyond the cap), from the unsent snapshot, or
    /// starting a restore from the database.
    fn touch(&mut self, me: &SharedShard, client: &Arc<str>, now: Nanos) {
        if let Some(e) = self.live.to_back(client) {
            e.last_used = now;
            mark_dirty(e, &mut self.dirty, client);
            return;
        }
        if self.live.len() >= self.config.max_clients {
            self.evict_oldest(now, 1, |_| true);
        }
        self.incarnations = self.incarnations.wrapping_add(1);
        let mut entity = Entity {
            limiter: ClientLimiter::new(client.clone()),
            last_used: now,
            dirty: true,
            written: 0,
            restoring: None,
            incarnation: self.incarnations,
        };
        if let Some(s) = self.unsent.get(client) {
            self.config.metrics.restored(RestoreSource::memory);
            entity.limiter.restore_from(s.stored(), now);
        } else if self.known.contains(&client_hash(client)) {
            entity.restoring = Some(Box::default());
            self.restore(me, client.clone(), entity.incarnation, now);
        }
        self.live.insert(client.clone(), entity);
        self.dirty.list(0, client);
        self.config.live_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads `client`'s state back, then decides the checks that waited, in order. A
    /// failed read decides nothing (the waiting checks get `--on-error`) and drops the
    /// entity, rather than start it empty, which would hand the client a fresh quota:
    /// the next check tries again.
    fn restore(&mut self, me: &SharedShard, client: Arc<str>, incarnation: u32, now: Nanos) {
        let load = self.config.db.send(LoadClient {
            client: client.clone(),
            now,
        });
        let me = me.clone();
        actix::spawn(async move {
            let res = load.await;
            lock(&me).restored(&me, client, incarnation, res);
        });
    }

    fn restored(
        &mut self,
        me: &SharedShard,
        client: Arc<str>,
        incarnation: u32,
        res: Result<Result<Option<StoredClient>, StoreError>, MailboxError>,
    ) {
        let now = self.config.clock.now();
        let Some(e) = self
            .live
            .get_mut(&client)
            .filter(|e| e.incarnation == incarnation)
        else {
            return;
        };
        let waiting = e.restoring.take().map(|w| *w).unwrap_or_default();
        let error = match res {
            Ok(Ok(Some(stored))) => {
                e.limiter.restore_from(stored, now);
                None
            }
            Ok(Ok(None)) => None,
            Ok(Err(err)) => Some(err.to_string()),
            Err(err) => Some(err.to_string()),
        };
        if let Some(err) = error {
            log::error!("restoring client {client:?} failed: {err}");
            self.live.remove(&client);
            self.config.live_total.fetch_sub(1, Ordering::Relaxed);
            for (_, reply) in waiting {
                let _ = reply.send(Err(LimiterUnavailable));
            }
            return;
        }
        mark_dirty(e, &mut self.dirty, &client);
        for (check, reply) in waiting {
            match self.decide(me, check) {
                Reply::Now(answer) => {
                    let _ = reply.send(answer);
                }
                later => {
                    actix::spawn(async move {
                        let _ = reply.send(later.await);
                    });
                }
            }
        }
    }

    /// Decides `check` for its live, restored client, unless its turn came too late.
    fn decide(&mut self, me: &SharedShard, check: Check) -> Reply {
        // An answer that could not reach the request in time must not consume: the
        // request was answered by `--on-error`.
        if Instant::now() > check.answer_by {
            return Reply::Now(Err(LimiterUnavailable));
        }
        let now = self.config.clock.now();
        match self.live.get_mut(&check.client) {
            Some(e) => decide_now(
                e,
                Parts::of(&self.backend, &self.config, &mut self.top),
                me,
                check,
                now,
            ),
            None => Reply::Now(Err(LimiterUnavailable)),
        }
    }

    /// Counts a decision the backend made later, and marks its client dirty again (a
    /// flush may have run while it was in flight). An entity evicted meanwhile, or one
    /// being restored (whose restore would overwrite the count), misses it in its
    /// lifetime totals; the quota itself is in the backend.
    fn record(&mut self, check: &Check, d: &Decisions) {
        let c = &self.config;
        let shared = Shared::of(c);
        match self
            .live
            .get_mut(&check.client)
            .filter(|e| e.restoring.is_none())
        {
            Some(e) => {
                let now = e.limiter.now(c.clock.now());
                e.limiter
                    .record(&check.policy, d, check.asked.clone(), now, &shared);
                self.top
                    .record(&check.client, !check.policy.refuses(d), now);
                mark_dirty(e, &mut self.dirty, &check.client);
            }
            None => shared
                .global
                .record(c.clock.now(), !check.policy.refuses(d)),
        }
    }

    /// The HTTP worker's own path: decides `check` right here when its client is live
    /// and restored; hands it back to go through the shard's actor otherwise.
    fn try_decide(&mut self, me: &SharedShard, check: Check) -> Result<Reply, Check> {
        let now = self.config.clock.now();
        // A peek is not a use: it leaves the LRU order, the idle time and the dirty
        // list alone.
        let peek = check.mode == Mode::Peek;
        let found = match peek {
            true => self.live.get_mut(&check.client),
            false => self.live.to_back(&check.client),
        };
        let Some(e) = found.filter(|e| e.restoring.is_none()) else {
            return Err(check);
        };
        if !peek {
            e.last_used = now;
            mark_dirty(e, &mut self.dirty, &check.client);
        }
        Ok(decide_now(
            e,
            Parts::of(&self.backend, &self.config, &mut self.top),
            me,
            check,
            now,
        ))
    }

    /// Evicts up to `most` of the least recently used clients, oldest first, stopping at
    /// the first that is not `evictable`. A client being restored is skipped (its state
    /// is not here to snapshot) and moved to the back.
    fn evict_oldest(&mut self, now: Nanos, most: usize, evictable: impl Fn(&Entity) -> bool) {
        let mut evicted = 0;
        for _ in 0..self.live.len() {
            match self.live.front() {
                Some((_, e)) if evicted < most && evictable(e) => {}
                _ => return,
            }
            let Some((client, entity)) = self.live.pop_front() else {
                return;
            };
            if entity.restoring.is_some() {
                self.live.insert(client, entity);
                continue;
            }
            self.evict(entity, now);
            evicted += 1;
        }
    }

    /// Takes a limiter's final snapshot for the next batch, and lets it go.
    fn evict(&mut self, mut entity: Entity, now: Nanos) {
        self.config.live_total.fetch_sub(1, Ordering::Relaxed);
        self.config.metrics.evictions.inc();
        if let Some(snapshot) = entity.limiter.snapshot(now, &*self.backend) {
            self.stash(snapshot, false);
        }
    }

    /// Keeps a snapshot for the next batch: the newest state wins, statistics add up.
    /// `known`: the client is known to have state in the database already.
    fn stash(&mut self, new: ClientSnapshot, known: bool) {
        if !known {
            self.known.insert(client_hash(&new.client));
        }
        merge_snapshot(&mut self.unsent, new);
    }

    /// Starts a flush: the idle sweep, and the dirty clients listed for snapshots.
    fn begin_flush(&mut self) {
        let now = self.config.clock.now();
        let idle = self.config.idle;
        self.evict_oldest(now, usize::MAX, |e| e.last_used.saturating_add(idle) <= now);
        self.dirty.begin(&mut self.flushing);
    }

    /// Snapshots up to `most` clients of the flush under way; true once none is left.
    fn snapshot_some(&mut self, most: usize) -> bool {
        let now = self.config.clock.now();
        let flush = self.dirty.current();
        let slice: Vec<Arc<str>> = self
            .flushing
            .drain(..most.min(self.flushing.len()))
            .collect();
        self.unsent.reserve(slice.len());
        for client in slice {
            let Some(e) = self.live.get_mut(&client) else {
                continue;
            };
            e.dirty = false;
            if e.restoring.is_some() {
                continue;
            }
            // Only a snapshot taken counts as a write (and puts the client in `known`):
            // one that found nothing changed leaves the next due at once.
            if let Some(snapshot) = e.limiter.snapshot(now, &*self.backend) {
                let known = std::mem::replace(&mut e.written, flush) != 0;
                self.stash(snapshot, known);
            }
        }
        self.flushing.is_empty()
    }

    /// Ends a flush: every pending snapshot, in one batch to the DB actor. `done` hears
    /// back once the batch is committed.
    fn persist(&mut self, done: Option<oneshot::Sender<Result<usize, String>>>) {
        // Drained, not taken: the map keeps its capacity for the next flush.
        let batch: Vec<ClientSnapshot> = self.unsent.drain().map(|(_, s)| s).collect();
        // `do_send` queues at once, ahead of any restore read that follows. An empty
        // batch is sent too: the DB actor retries what it holds.
        self.config.db.do_send(Persist { batch, done });
    }

    /// A whole flush at once (shutdown, tests): the idle sweep, every dirty client's
    /// snapshot (with those of a sliced flush under way), the batch.
    fn flush(&mut self, done: Option<oneshot::Sender<Result<usize, String>>>) {
        self.snapshot_all();
        self.persist(done);
    }

    /// Snapshots every changed client, whether or not its write is due.
    fn snapshot_all(&mut self) {
        self.begin_flush();
        let waiting: Vec<Arc<str>> = self.dirty.take_all().collect();
        self.flushing.extend(waiting);
        self.snapshot_some(usize::MAX);
    }
}

impl Shard {
    /// A check that came through the shard's actor: a new client's, or one whose state
    /// is being restored.
    fn check(&mut self, me: &SharedShard, msg: Check) -> Reply {
        let now = self.config.clock.now();
        self.touch(me, &msg.client, now);
        let restoring = self
            .live
            .get_mut(&msg.client)
            .and_then(|e| e.restoring.as_mut());
        match restoring {
            Some(waiting) if waiting.len() >= MAX_WAITING => Reply::Now(Err(LimiterUnavailable)),
            Some(waiting) => {
                let (tx, rx) = oneshot::channel();
                waiting.push((msg, tx));
                Reply::Later(Box::pin(async move {
                    rx.await.unwrap_or(Err(LimiterUnavailable))
                }))
            }
            None => self.decide(me, msg),
        }
    }

    /// Counters and quotas of one client, live or stored.
    fn status(&mut self, msg: GetClientStatus) -> BoxFuture<'static, ClientStatus> {
        let now = self.config.clock.now();
        let (backend, client) = (self.backend.clone(), msg.client.clone());
        let status = move |states, table: &PolicyTable| {
            Box::pin(ClientStatus::of(&*backend, &client, states, table, now))
        };
        if let Some(e) = self
            .live
            .get_mut(&msg.client)
            .filter(|e| e.restoring.is_none())
        {
            return status(e.limiter.states(), &msg.table);
        }
        if let Some(s) = self.unsent.get(&msg.client) {
            return status(ClientLimiter::stored_states(s.stored()), &msg.table);
        }
        if !self.known.contains(&client_hash(&msg.client)) {
            return Box::pin(async { ClientStatus::default() });
        }
        let load = self.config.db.send(LoadClient {
            client: msg.client.clone(),
            now,
        });
        let table = msg.table.clone();
        Box::pin(async move {
            match load.await {
                Ok(Ok(Some(stored))) => status(ClientLimiter::stored_states(stored), &table).await,
                _ => ClientStatus::default(),
            }
        })
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Checks that must wait queue here. Beyond this many, senders wait
        // (backpressure) instead of the queue growing without bound.
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        // On this shard's thread, so the shared connection's driver and the probe that
        // reconnects it run here, not on an HTTP worker (each deciding thread opens a
        // connection of its own besides).
        lock(&self.shard).backend.start();
        ctx.run_interval(lock(&self.shard).config.flush_interval, |act, ctx| {
            let mut shard = lock(&act.shard);
            // A sliced flush still under way (a slow tick) takes the new dirty clients
            // along; it persists once it is through.
            let idle = shard.flushing.is_empty();
            shard.begin_flush();
            if idle {
                ctx.notify(FlushSlice);
            }
        });
    }
}

impl Handler<Check> for Registry {
    type Result = ResponseFuture<Answer>;

    fn handle(&mut self, msg: Check, _: &mut Context<Self>) -> Self::Result {
        let reply = lock(&self.shard).check(&self.shard, msg);
        Box::pin(reply)
    }
}

impl Handler<Flush> for Registry {
    type Result = ResponseFuture<Result<usize, String>>;

    fn handle(&mut self, _: Flush, _: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        lock(&self.shard).flush(Some(tx));
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err("the database actor stopped".to_owned()))
        })
    }
}

impl Handler<FlushSlice> for Registry {
    type Result = ();

    fn handle(&mut self, _: FlushSlice, ctx: &mut Context<Self>) {
        let mut shard = lock(&self.shard);
        if shard.snapshot_some(FLUSH_SLICE) {
            shard.persist(None);
        } else {
            // Other messages (new clients' checks) and the workers go in between.
            ctx.notify(FlushSlice);
        }
    }
}

impl Handler<Alive> for Registry {
    type Result = ();
    fn handle(&mut self, _: Alive, _: &mut Context<Self>) {}
}

impl Handler<GetClientStatus> for Registry {
    type Result = ResponseFuture<ClientStatus>;

    fn handle(&mut self, msg: GetClientStatus, _: &mut Context<Self>) -> Self::Result {
        lock(&self.shard).status(msg)
    }
}

/// The shards, each on its own arbiter, and the routing between them.
#[derive(Clone)]
pub struct Registries {
    shards: Arc<[Addr<Registry>]>,
    /// The same shards' state, for the HTTP workers' own path.
    states: Arc<[SharedShard]>,
    live_total: Arc<AtomicUsize>,
    /// Each shard's backend, for the health check.
    backends: Arc<[Arc<dyn QuotaBackend>]>,
    /// Where the shards' limiters send their events, for charges made outside them.
    events: Option<EventSink>,
}

impl Registries {
    /// Starts one shard per backend (each its own connection), on new arbiters. `known`
    /// lists the clients the database holds.
    pub fn start(
        backends: Vec<Arc<dyn QuotaBackend>>,
        config: RegistryConfig,
        known: impl IntoIterator<Item = u64>,
    ) -> Self {
        assert!(!backends.is_empty(), "a registry needs at least one shard");
        let n = backends.len();
        let mut per_shard: Vec<HashSet<u64>> = vec![HashSet::new(); n];
        for h in known {
            per_shard[(h % n as u64) as usize].insert(h);
        }
        let shard_config = RegistryConfig {
            max_clients: config.max_clients.div_ceil(n).max(1),
            ..config.clone()
        };
        let backends: Arc<[_]> = backends.into();
        let arbiters: Vec<ArbiterHandle> = (0..n)
            .map(|i| {
                let arbiter = Arbiter::new().handle();
                arbiter.spawn_fn(move || super::name_thread(&format!("rw-shard-{i}")));
                arbiter
            })
            .collect();
        let states: Arc<[SharedShard]> = per_shard
            .into_iter()
            .zip(backends.iter())
            .map(|(known, backend)| {
                let shard = Shard::new(shard_config.clone(), known, backend.clone());
                Arc::new(Mutex::new(shard))
            })
            .collect();
        let shards = states
            .iter()
            .zip(&arbiters)
            .map(|(shard, arbiter)| {
                let shard = shard.clone();
                Registry::start_in_arbiter(arbiter, move |_| Registry { shard })
            })
            .collect();
        Self {
            shards,
            states,
            live_total: config.live_total,
            backends,
            events: config.events,
        }
    }

    fn index(&self, client: &str) -> usize {
        match self.shards.len() {
            // (The default on two CPUs: no hash to compute.)
            1 => 0,
            n => (client_hash(client) % n as u64) as usize,
        }
    }

    /// The one decision path: decides `check` on the calling thread when its client is
    /// live and restored (locking its shard for the decision alone, and awaiting a
    /// backend that answers later), else through the shard's actor.
    /// (Decided when called, answered when awaited.)
    pub fn decide(&self, check: Check) -> Reply {
        let i = self.index(&check.client);
        let tried = lock(&self.states[i]).try_decide(&self.states[i], check);
        match tried {
            Ok(reply) => reply,
            Err(check) => {
                let sent = self.shards[i].send(check);
                Reply::Later(Box::pin(async move {
                    sent.await.unwrap_or(Err(LimiterUnavailable))
                }))
            }
        }
    }

    /// Counts a request decided in several checks (its limits count per different
    /// keys): `check` names the request's client and whole policy, `d` every limit's
    /// decision.
    pub fn record(&self, check: &Check, d: &Decisions) {
        let i = self.index(&check.client);
        lock(&self.states[i]).record(check, d);
    }

    /// Streams to the live feeds a charge of `units` to `value` under `part` (a
    /// policy's part of tokens or bytes) that left its limits as `d` says.
    pub fn charged(&self, value: &Arc<str>, part: &Arc<Policy>, d: &Decisions, units: u64) {
        if let Some(sink) = &self.events {
            sink.offer(value, || DecisionEvent {
                client: value.clone(),
                endpoint: part.endpoint.clone(),
                asked: None,
                decision: **d,
                limit: Some(part.limits[d.binding()].name.clone()),
                each: LimitSeen::each(part, d),
                shadow: part.shadow,
                at: d.at(),
                origin: None,
                charged: Some(units),
            });
        }
    }

    /// The actor of `client`'s shard.
    pub fn shard(&self, client: &str) -> &Addr<Registry> {
        &self.shards[self.index(client)]
    }

    /// Forgets what the backends remember of `client`'s quotas (`None`: of every
    /// client): another instance reset them, or may have (see `crate::cluster`).
    pub fn forget(&self, client: Option<&str>) {
        for backend in self.backends.iter() {
            backend.forget(client);
        }
    }

    /// Whether a shard has stopped (its mailbox is closed): its clients cannot be
    /// decided, and only a restart mends that. Asks nothing, so it answers at once
    /// however busy the shards are.
    pub fn stopped(&self) -> bool {
        self.shards.iter().any(|s| !s.connected())
    }

    /// Whether every shard handles messages.
    pub async fn alive(&self) -> bool {
        join_all(self.shards.iter().map(|s| s.send(Alive)))
            .await
            .iter()
            .all(Result::is_ok)
    }

    /// Marks the lease `id` of `client` as given back, for `ttl`: `true` the first time
    /// (see [`QuotaBackend::first_use`]), through `client`'s shard's backend.
    pub async fn first_use(
        &self,
        client: &str,
        id: u64,
        ttl: Nanos,
        now: Nanos,
    ) -> Result<bool, ()> {
        let backend = &self.backends[self.index(client)];
        backend
            .first_use(client, id, ttl, now)
            .await
            .map_err(|_| ())
    }

    /// The backend's name, and how many shards reach it of how many (`None` for a
    /// backend that cannot be unreachable).
    pub fn backend_reachable(&self) -> Option<(&'static str, usize, usize)> {
        let mut name = None;
        let mut up = 0;
        for (n, ok) in self.backends.iter().filter_map(|b| b.reachable()) {
            name = Some(n);
            up += usize::from(ok);
        }
        name.map(|n| (n, up, self.backends.len()))
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

    /// The `limit` clients with the most requests `by` outcome in the last `minutes`
    /// minutes, over every shard, and how far short of the truth a count may be.
    pub fn top(&self, by: By, minutes: u64, limit: usize) -> (Vec<Ranked>, u64) {
        let mut all = Vec::new();
        let mut error = 0;
        for state in self.states.iter() {
            // Copied under the lock the shard's decisions need; summed and ranked after.
            let (entries, shed) = {
                let shard = lock(state);
                let now = shard.config.clock.now();
                shard.top.entries(by, minutes, now)
            };
            // A client lives in one shard: each shard's own best are enough.
            all.extend(
                rank(sum(entries), limit)
                    .into_iter()
                    .map(|r| (r.client_id, r.count)),
            );
            error = error.max(shed);
        }
        (rank(all, limit), error)
    }
}

/// A shard's settings for unit tests: an in-memory database, no feeds, room for 10,000
/// clients never idle, on `clock`.
#[cfg(test)]
pub(crate) fn test_config(clock: SharedClock) -> RegistryConfig {
    use crate::store::sqlite::{DatabaseUrl, open};
    let url = DatabaseUrl::Memory;
    let metrics = Arc::new(Metrics::default());
    let db = Db::start(
        open(&url).unwrap(),
        url,
        1000,
        metrics.clone(),
        Default::default(),
    );
    RegistryConfig {
        clock,
        db,
        global: Arc::default(),
        events: None,
        max_clients: 10_000,
        idle: u64::MAX,
        flush_interval: Duration::from_secs(60),
        write_interval: Duration::from_secs(60),
        live_total: Arc::default(),
        metrics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::ConfigSpec;
    use crate::store::quota::Memory;

    fn shard() -> SharedShard {
        shard_with(|_| {})
    }

    fn shard_with(configure: impl FnOnce(&mut RegistryConfig)) -> SharedShard {
        let clock = ManualClock::new(1_800_000_000 * crate::clock::NANOS_PER_SEC);
        let mut config = test_config(clock);
        configure(&mut config);
        Arc::new(Mutex::new(Shard::new(
            config,
            HashSet::new(),
            Arc::new(Memory),
        )))
    }

    fn check(client: &str, policy: &Arc<Policy>) -> Check {
        Check {
            client: Arc::from(client),
            policy: policy.clone(),
            cost: 1,
            mode: Mode::Consume,
            asked: None,
            answer_by: Instant::now() + Duration::from_secs(60),
            record: true,
        }
    }

    fn total_requests(shard: &Shard, client: &str) -> u64 {
        shard
            .unsent
            .get(client)
            .unwrap()
            .stored()
            .totals
            .total_requests
    }

    #[actix_rt::test]
    async fn a_sliced_flush_snapshots_every_dirty_client_and_lists_later_checks_for_the_next() {
        let me = shard();
        let policy = Arc::new(Policy::from_spec(&ConfigSpec::default_policy()));
        let n = 2 * FLUSH_SLICE + 88;
        let (done, last) = ("c0".to_owned(), format!("c{}", n - 1));
        let waiting = &*last;
        let rx = {
            let mut s = lock(&me);
            for i in 0..n {
                assert!(matches!(
                    s.check(&me, check(&format!("c{i}"), &policy)),
                    Reply::Now(Ok(_))
                ));
            }
            s.begin_flush();
            assert_eq!((s.flushing.len(), s.dirty.lists[0].len()), (n, 0));

            assert!(!s.snapshot_some(FLUSH_SLICE));
            assert_eq!(s.unsent.len(), FLUSH_SLICE);
            // The first clients listed are snapshotted first: one checked again now must
            // be listed for the next flush; one still waiting for its slice must not, and
            // its snapshot must carry the new check. A peek lists nothing.
            assert!(s.unsent.get(&*done).is_some() && s.unsent.get(waiting).is_none());
            for client in [&*done, waiting] {
                assert!(matches!(
                    s.try_decide(&me, check(client, &policy)),
                    Ok(Reply::Now(Ok(_)))
                ));
            }
            let mut peek = check("c1", &policy);
            peek.mode = Mode::Peek;
            assert!(matches!(s.try_decide(&me, peek), Ok(Reply::Now(Ok(_)))));
            assert_eq!(s.dirty.lists[0], vec![Arc::<str>::from(&*done)]);

            assert!(!s.snapshot_some(FLUSH_SLICE));
            assert!(s.snapshot_some(FLUSH_SLICE));
            assert_eq!(s.unsent.len(), n);
            assert_eq!(total_requests(&s, waiting), 2);
            assert_eq!(total_requests(&s, &done), 1);

            let (tx, rx) = oneshot::channel();
            s.persist(Some(tx));
            assert!(s.unsent.is_empty());
            rx
        };
        assert_eq!(rx.await.unwrap(), Ok(n));

        // The next flush takes the client checked after its slice, with both checks.
        let mut s = lock(&me);
        s.begin_flush();
        assert!(s.snapshot_some(FLUSH_SLICE));
        assert_eq!(s.unsent.len(), 1);
        assert_eq!(total_requests(&s, &done), 2);
    }

    #[actix_rt::test]
    async fn a_busy_client_is_written_once_per_write_interval_and_a_quiet_one_at_the_next_flush() {
        let me = shard_with(|c| {
            c.flush_interval = Duration::from_secs(1);
            c.write_interval = Duration::from_millis(2500);
        });
        let policy = Arc::new(Policy::from_spec(&ConfigSpec::default_policy()));
        let mut s = lock(&me);
        // One flush at a time, after the checks of its interval: the clients it wrote.
        let flush = |s: &mut Shard, checked: &[&str]| {
            for client in checked {
                let check = check(client, &policy);
                let decided = match s.try_decide(&me, check) {
                    Ok(reply) => reply,
                    Err(check) => s.check(&me, check),
                };
                assert!(matches!(decided, Reply::Now(Ok(_))));
            }
            s.begin_flush();
            assert!(s.snapshot_some(usize::MAX));
            let mut written: Vec<String> = std::mem::take(&mut s.unsent)
                .into_iter()
                .map(|(c, _)| c.to_string())
                .collect();
            written.sort();
            written
        };
        // Written 2.5 s apart, rounded up to whole flushes: every third flush.
        assert_eq!(flush(&mut s, &["busy"]), ["busy"]);
        assert_eq!(flush(&mut s, &["busy"]), [""; 0]);
        assert_eq!(flush(&mut s, &["busy", "quiet"]), ["quiet"]);
        assert_eq!(flush(&mut s, &["busy"]), ["busy"]);
        assert_eq!(flush(&mut s, &["busy"]), [""; 0]);
        assert_eq!(flush(&mut s, &[]), [""; 0]);
        // Its check two flushes ago is written now, a whole interval after the last.
        assert_eq!(flush(&mut s, &[]), ["busy"]);
        assert_eq!(flush(&mut s, &[]), [""; 0]);
        // Checked again after a quiet spell as long as the interval: written at once.
        assert_eq!(flush(&mut s, &["quiet"]), ["quiet"]);
        assert_eq!(flush(&mut s, &[]), [""; 0]);
        assert_eq!(flush(&mut s, &[]), [""; 0]);
        assert_eq!(flush(&mut s, &[]), [""; 0]);
        assert_eq!(flush(&mut s, &["quiet"]), ["quiet"]);

        // A flush someone waits for (a stop) writes every changed client, due or not.
        assert_eq!(flush(&mut s, &["quiet"]), [""; 0]);
        s.snapshot_all();
        assert_eq!(total_requests(&s, "quiet"), 4);
        assert_eq!(s.unsent.len(), 1);
    }

    #[actix_rt::test]
    async fn a_client_whose_first_flush_found_nothing_to_write_is_known_once_written() {
        let me = shard();
        let policy = Arc::new(Policy::from_spec(&ConfigSpec::default_policy()));
        let mut s = lock(&me);
        // A peek makes the entity and changes nothing: no write, so not known yet.
        let mut peek = check("p", &policy);
        peek.mode = Mode::Peek;
        assert!(matches!(s.check(&me, peek), Reply::Now(Ok(_))));
        s.begin_flush();
        assert!(s.snapshot_some(usize::MAX));
        assert!(s.unsent.is_empty());
        assert!(!s.known.contains(&client_hash("p")));
        // Its first write makes it known: evicted later, it is restored, not started
        // afresh with its quota back.
        assert!(matches!(
            s.try_decide(&me, check("p", &policy)),
            Ok(Reply::Now(Ok(_)))
        ));
        s.begin_flush();
        assert!(s.snapshot_some(usize::MAX));
        assert_eq!(total_requests(&s, "p"), 1);
        assert!(s.known.contains(&client_hash("p")));
    }
}
