//! One client's limiter: an actor holding that client's algorithm state for every endpoint
//! it has used, its counters, and the statistics not yet written. Check-and-consume is
//! one message, so concurrent requests of a client can never over-admit.
//!
//! Messages:
//! - [`ClientCheck`] → [`Decision`]: decide one request and consume from the quota.
//! - [`RedisCheck`] → [`Decision`]: the same in distributed mode, where the quota lives
//!   in Redis (atomic there, so this limiter does not serialise its checks: they are in
//!   flight together and only their bookkeeping runs here).
//! - [`TakeSnapshot`] → `Option<ClientSnapshot>`: what changed since the last snapshot.
//! - [`Evict`] → `Option<ClientSnapshot>`: the final snapshot; the actor then stops.
//! - [`Status`] → [`ClientStatus`]: counters and remaining quota per endpoint.

use super::db::{Db, LoadClient};
use super::{DecisionEvent, EventSink};
use crate::clock::{NANOS_PER_SEC, Nanos, SharedClock, rfc3339};
use crate::limiter::{Algorithm, Decision, Limits, Mode, State};
use crate::policy::{Policy, PolicyTable};
use crate::stats::GlobalStats;
use crate::store::redis::Redis;
use crate::store::{ClientSnapshot, EndpointSnapshot, StatDelta, StoredClient, Totals};
use actix::clock::Instant;
use actix::prelude::*;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// Decide one request of this client under `policy`, unless `answer_by` has passed:
/// then the request is answered by `--on-error`, and nothing is consumed (`None`).
#[derive(Message)]
#[rtype(result = "Option<Decision>")]
pub struct ClientCheck {
    pub policy: Arc<Policy>,
    pub cost: u64,
    pub mode: Mode,
    pub answer_by: Instant,
    /// For the live feeds; only set while someone watches.
    pub path: Option<Arc<str>>,
}

/// Decide one request through Redis (distributed mode). `None` when Redis cannot answer
/// in time, or `answer_by` passed first.
#[derive(Message)]
#[rtype(result = "Option<Decision>")]
pub struct RedisCheck {
    pub policy: Arc<Policy>,
    pub cost: u64,
    pub mode: Mode,
    pub answer_by: Instant,
    pub path: Option<Arc<str>>,
}

/// Hand over a snapshot if anything changed since the last one.
#[derive(Message)]
#[rtype(result = "Option<ClientSnapshot>")]
pub struct TakeSnapshot;

/// Hand over the final snapshot (if anything changed) and stop.
#[derive(Message)]
#[rtype(result = "Option<ClientSnapshot>")]
pub struct Evict;

/// Report counters and quotas under the given configs.
#[derive(Message)]
#[rtype(result = "ClientStatus")]
pub struct Status {
    pub table: Arc<crate::policy::PolicyTable>,
}

/// Where a new limiter's state comes from.
pub enum Restore {
    /// A client never seen before.
    Fresh,
    /// A snapshot the registry still holds in memory.
    From(StoredClient),
    /// Ask the database before handling the first check.
    Load(Addr<Db>),
}

/// Per endpoint: the algorithm state and the counts of the current minute.
struct Endpoint {
    state: State,
    /// The limits of the last check, to tell when the state expires; `None` for a state
    /// restored from a snapshot and not checked since.
    limits: Option<Limits>,
    /// The restored snapshot's expiry, used while `limits` is `None`.
    stored_expiry: Nanos,
    minute: u64,
    allowed: u64,
    blocked: u64,
}

pub struct ClientLimiter {
    client: Arc<str>,
    clock: SharedClock,
    global: Arc<GlobalStats>,
    events: Option<EventSink>,
    endpoints: HashMap<Arc<str>, Endpoint>,
    totals: Totals,
    /// Counts checks; snapshots carry it so the database keeps the newest.
    version: u64,
    /// The latest time this limiter has seen: a wall clock stepped back (NTP) must not
    /// reopen a window or refill a bucket, so time here never goes backwards.
    last_now: Nanos,
    /// `version` at the last snapshot: the limiter is dirty when they differ.
    snapshot_version: u64,
    /// Per-minute counts of past minutes, waiting for the next snapshot.
    stats: Vec<StatDelta>,
    restore: Option<Restore>,
    /// Distributed mode: decisions are made in Redis, this actor keeps the bookkeeping.
    redis: Option<Redis>,
    /// The restore failed: this limiter decides nothing more (actix still delivers the
    /// checks already queued when it stops) and the registry replaces it.
    restore_failed: bool,
}

impl ClientLimiter {
    pub fn new(
        client: Arc<str>,
        clock: SharedClock,
        global: Arc<GlobalStats>,
        events: Option<EventSink>,
        restore: Restore,
        redis: Option<Redis>,
    ) -> Self {
        Self {
            client,
            clock,
            global,
            events,
            endpoints: HashMap::new(),
            totals: Totals::default(),
            version: 0,
            last_now: 0,
            snapshot_version: 0,
            stats: Vec::new(),
            restore: Some(restore),
            redis,
            restore_failed: false,
        }
    }

    fn restore_from(&mut self, stored: StoredClient) {
        self.version = stored.version;
        self.snapshot_version = stored.version;
        self.totals = stored.totals;
        self.last_now = stored.totals.last_request;
        let minute = self.clock.now() / NANOS_PER_SEC / 60;
        for e in stored.endpoints {
            match State::decode(e.algorithm, &e.state) {
                Some(state) => {
                    let endpoint = Endpoint {
                        state,
                        limits: None,
                        stored_expiry: e.expires_at,
                        minute,
                        allowed: 0,
                        blocked: 0,
                    };
                    self.endpoints.insert(e.endpoint, endpoint);
                }
                None => log::warn!(
                    "client {:?}: unreadable snapshot for endpoint {:?} ignored",
                    self.client,
                    e.endpoint
                ),
            }
        }
    }

    /// The clock, never earlier than it was before.
    fn now(&mut self) -> Nanos {
        self.last_now = self.last_now.max(self.clock.now());
        self.last_now
    }

    fn snapshot(&mut self) -> Option<ClientSnapshot> {
        if self.version == self.snapshot_version {
            return None;
        }
        self.snapshot_version = self.version;
        let now = self.now();
        let remote = self.redis.is_some();
        let mut endpoints = Vec::with_capacity(self.endpoints.len());
        let mut stats = std::mem::take(&mut self.stats);
        for (name, e) in &mut self.endpoints {
            stats.extend(e.take_counts(name));
            endpoints.push(EndpointSnapshot {
                endpoint: name.clone(),
                algorithm: e.state.algorithm(),
                state: e.state.encode(),
                expires_at: e.expires_at(now, remote),
            });
        }
        Some(ClientSnapshot {
            client: self.client.clone(),
            version: self.version,
            totals: self.totals,
            endpoints,
            stats,
        })
    }
}

impl Actor for ClientLimiter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Many thousands of checks may queue for a hot client; the default mailbox of 16
        // would push back on the registry instead of queueing.
        ctx.set_mailbox_capacity(1024);
        match self.restore.take() {
            Some(Restore::From(stored)) => self.restore_from(stored),
            Some(Restore::Load(db)) => {
                let msg = LoadClient {
                    client: self.client.clone(),
                    now: self.clock.now(),
                };
                // `wait`: no check is handled before the state is back.
                // A failed restore stops this limiter rather than start it empty (which
                // would hand the client a fresh quota): the checks queued meanwhile get
                // the `--on-error` policy, and the next check spawns a limiter that
                // tries again.
                ctx.wait(db.send(msg).into_actor(self).map(|res, act, ctx| {
                    let e = match res {
                        Ok(Ok(Some(stored))) => return act.restore_from(stored),
                        Ok(Ok(None)) => return,
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                    };
                    log::error!("restoring client {:?} failed: {e}", act.client);
                    act.restore_failed = true;
                    ctx.stop();
                }));
            }
            Some(Restore::Fresh) | None => {}
        }
    }
}

impl ClientLimiter {
    /// Whether a check must be refused: the restore failed, or the answer could not reach
    /// the request before it gives up (a request answered by `--on-error` must not have
    /// consumed).
    fn refuses(&self, answer_by: Instant) -> bool {
        self.restore_failed || Instant::now() > answer_by
    }

    /// Counts one decision: per-minute statistics, totals, global counters, the feeds.
    fn record(&mut self, policy: &Policy, decision: Decision, path: Option<Arc<str>>, now: Nanos) {
        let minute = now / NANOS_PER_SEC / 60;
        let endpoint = self
            .endpoints
            .entry(policy.endpoint.clone())
            .or_insert_with(|| Endpoint::new(policy.limits, minute));
        endpoint.limits = Some(policy.limits);
        endpoint.count(&policy.endpoint, minute, decision.allowed, &mut self.stats);
        if !decision.allowed {
            self.totals.blocked_requests += 1;
        }
        self.totals.total_requests += 1;
        self.totals.last_request = now;
        self.version += 1;
        self.global.record(now, decision.allowed);
        if let Some(sink) = &self.events {
            sink.offer(&self.client, || DecisionEvent {
                client: self.client.clone(),
                endpoint: policy.endpoint.clone(),
                path,
                decision,
                at: now,
                origin: None,
            });
        }
    }
}

impl Handler<ClientCheck> for ClientLimiter {
    type Result = MessageResult<ClientCheck>;

    fn handle(&mut self, msg: ClientCheck, _: &mut Context<Self>) -> Self::Result {
        if self.refuses(msg.answer_by) {
            return MessageResult(None);
        }
        let now = self.now();
        let policy = &msg.policy;
        let minute = now / NANOS_PER_SEC / 60;
        let endpoint = self
            .endpoints
            .entry(policy.endpoint.clone())
            .or_insert_with(|| Endpoint::new(policy.limits, minute));
        let decision = endpoint
            .state
            .evaluate(&policy.limits, now, msg.cost, msg.mode);
        self.record(policy, decision, msg.path, now);
        MessageResult(Some(decision))
    }
}

impl Handler<RedisCheck> for ClientLimiter {
    type Result = ResponseActFuture<Self, Option<Decision>>;

    fn handle(&mut self, msg: RedisCheck, _: &mut Context<Self>) -> Self::Result {
        let Some(redis) = self.redis.as_ref().filter(|_| !self.refuses(msg.answer_by)) else {
            return Box::pin(fut::ready(None));
        };
        let ask = redis.check(
            &self.client,
            &msg.policy.endpoint,
            &msg.policy.limits,
            msg.cost,
            msg.mode,
        );
        Box::pin(ask.into_actor(self).map(move |answer, act, _| {
            let decision = answer.ok()?;
            let now = act.now();
            act.record(&msg.policy, decision, msg.path, now);
            Some(decision)
        }))
    }
}

impl Endpoint {
    fn new(limits: Limits, minute: u64) -> Self {
        Endpoint {
            state: State::new(limits.algorithm),
            limits: Some(limits),
            stored_expiry: 0,
            minute,
            allowed: 0,
            blocked: 0,
        }
    }

    /// Counts a decision in `minute`, moving the counts of an earlier minute to `out`.
    fn count(&mut self, name: &Arc<str>, minute: u64, allowed: bool, out: &mut Vec<StatDelta>) {
        if self.minute != minute {
            if let Some(delta) = self.take_counts(name) {
                out.push(delta);
            }
            self.minute = minute;
        }
        if allowed {
            self.allowed += 1;
        } else {
            self.blocked += 1;
        }
    }

    /// When the state will be as good as fresh. With the quota kept in Redis (`remote`),
    /// the local state never decides, so the longest reset of the limits is used: the
    /// snapshot must outlive the quota, since it is what names the client's endpoints.
    fn expires_at(&mut self, now: Nanos, remote: bool) -> Nanos {
        match self.limits {
            Some(limits) if remote => now.saturating_add(limits.fresh_after()),
            Some(limits) => now.saturating_add(self.state.peek(&limits, 0, now).reset_after),
            None => self.stored_expiry,
        }
    }

    fn take_counts(&mut self, name: &Arc<str>) -> Option<StatDelta> {
        (self.allowed + self.blocked > 0).then(|| StatDelta {
            minute: self.minute,
            endpoint: name.clone(),
            allowed: std::mem::take(&mut self.allowed),
            blocked: std::mem::take(&mut self.blocked),
        })
    }
}

impl Handler<TakeSnapshot> for ClientLimiter {
    type Result = Option<ClientSnapshot>;
    fn handle(&mut self, _: TakeSnapshot, _: &mut Context<Self>) -> Self::Result {
        self.snapshot()
    }
}

impl Handler<Evict> for ClientLimiter {
    type Result = Option<ClientSnapshot>;
    fn handle(&mut self, _: Evict, ctx: &mut Context<Self>) -> Self::Result {
        ctx.stop();
        self.snapshot()
    }
}

/// One endpoint of a client, as `/admin/stats/{client_id}` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EndpointStatus {
    pub endpoint: String,
    pub algorithm: Algorithm,
    pub limit: u64,
    pub remaining: u64,
    /// When the quota is fully restored (RFC 3339).
    pub reset_time: String,
    /// Seconds until a request would be allowed again (0 while `remaining > 0`).
    pub retry_after: u64,
    pub is_active: bool,
}

/// A client's counters and quotas.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ClientStatus {
    pub total_requests: u64,
    pub blocked_requests: u64,
    /// RFC 3339, or null if the client never made a request.
    pub last_request: Option<String>,
    pub endpoints: Vec<EndpointStatus>,
}

impl ClientStatus {
    /// Builds the status from states under today's configs; endpoints whose config was
    /// deleted are left out.
    pub fn build<'a>(
        totals: Totals,
        states: impl Iterator<Item = (&'a Arc<str>, &'a mut State)>,
        table: &PolicyTable,
        now: Nanos,
    ) -> Self {
        let peeked = states.filter_map(|(name, state)| {
            let policy = table.policy(name)?;
            Some((policy.clone(), state.peek(&policy.limits, 1, now)))
        });
        Self::from_decisions(totals, peeked, now)
    }

    /// The status from each endpoint's policy and the decision a request would get now.
    fn from_decisions(
        totals: Totals,
        decisions: impl Iterator<Item = (Arc<Policy>, Decision)>,
        now: Nanos,
    ) -> Self {
        let mut endpoints: Vec<EndpointStatus> = decisions
            .map(|(policy, d)| EndpointStatus {
                endpoint: policy.endpoint.to_string(),
                algorithm: policy.limits.algorithm,
                limit: d.limit,
                remaining: d.remaining,
                reset_time: rfc3339(now.saturating_add(d.reset_after)),
                retry_after: crate::clock::ceil_secs(d.retry_after),
                is_active: policy.active,
            })
            .collect();
        endpoints.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        ClientStatus {
            total_requests: totals.total_requests,
            blocked_requests: totals.blocked_requests,
            last_request: (totals.last_request > 0).then(|| rfc3339(totals.last_request)),
            endpoints,
        }
    }

    /// The same in distributed mode: the quotas of `endpoints` as Redis holds them now
    /// (an endpoint Redis cannot answer for is left out).
    pub fn from_redis(
        redis: &Redis,
        client: &str,
        totals: Totals,
        endpoints: Vec<Arc<str>>,
        table: Arc<PolicyTable>,
        now: Nanos,
    ) -> impl Future<Output = Self> + use<> {
        let peeks: Vec<_> = endpoints
            .iter()
            .filter_map(|name| table.policy(name).cloned())
            .map(|policy| {
                let peek = redis.check(client, &policy.endpoint, &policy.limits, 1, Mode::Peek);
                async move { peek.await.ok().map(|d| (policy, d)) }
            })
            .collect();
        async move {
            let decisions = futures_util::future::join_all(peeks).await;
            Self::from_decisions(totals, decisions.into_iter().flatten(), now)
        }
    }

    /// The same from a stored snapshot (a client without a live limiter).
    pub fn from_stored(stored: StoredClient, table: &PolicyTable, now: Nanos) -> Self {
        let mut states: Vec<(Arc<str>, State)> = stored
            .endpoints
            .into_iter()
            .filter_map(|e| Some((e.endpoint, State::decode(e.algorithm, &e.state)?)))
            .collect();
        Self::build(
            stored.totals,
            states.iter_mut().map(|(n, s)| (&*n, s)),
            table,
            now,
        )
    }
}

impl Handler<Status> for ClientLimiter {
    type Result = ResponseActFuture<Self, ClientStatus>;
    fn handle(&mut self, msg: Status, _: &mut Context<Self>) -> Self::Result {
        let now = self.now();
        let Some(redis) = &self.redis else {
            let status = ClientStatus::build(
                self.totals,
                self.endpoints.iter_mut().map(|(n, e)| (n, &mut e.state)),
                &msg.table,
                now,
            );
            return Box::pin(fut::ready(status));
        };
        let names: Vec<Arc<str>> = self.endpoints.keys().cloned().collect();
        let ask = ClientStatus::from_redis(redis, &self.client, self.totals, names, msg.table, now);
        Box::pin(ask.into_actor(self))
    }
}
