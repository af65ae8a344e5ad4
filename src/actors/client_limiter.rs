//! One client's limiter: an entity holding that client's algorithm state for every
//! endpoint it has used, its counters, and the statistics not yet written. It is an actor
//! in the model's sense, not an actix actor of its own: its state is private to it, and
//! its registry shard, which owns it, hands it one check at a time, in order, so
//! check-and-consume is atomic and concurrent requests of a client can never over-admit.
//! A live client costs its key, this struct and one entry per endpoint used, with no
//! task, mailbox or context of its own.
//!
//! What the shard asks of it, all synchronous:
//! - [`ClientLimiter::decide`]: decide one check through the quota backend.
//! - [`ClientLimiter::record`]: count a decision, however the backend made it.
//! - [`ClientLimiter::snapshot`]: what changed since the last snapshot.
//! - [`ClientLimiter::states`]: its quotas, for [`ClientStatus::of`].

use super::{Asked, DecisionEvent, EventSink, LimitSeen};
use crate::clock::{NANOS_PER_SEC, Nanos, rfc3339};
use crate::limiter::{Algorithm, Decisions, Mode, States, Unit};
use crate::policy::{Policy, PolicyTable};
use crate::snapshot::{ClientSnapshot, EndpointSnapshot, StatDelta, StoredClient, Totals};
use crate::stats::GlobalStats;
use crate::store::quota::{Quota, QuotaBackend, Verdict};
use serde::Serialize;
use std::sync::Arc;

/// Per endpoint: the algorithm state and the counts of the current minute.
struct Endpoint {
    name: Arc<str>,
    /// One state per limit of the config.
    state: States,
    /// The config of the last check, to tell when the state expires; `None` for a state
    /// restored from a snapshot and not checked since. (A shared pointer: a tenth of a
    /// copy of its limits, in the struct every live client has.)
    policy: Option<Arc<Policy>>,
    /// The restored snapshot's expiry, used while `policy` is `None`.
    stored_expiry: Nanos,
    /// The minute counted (minutes since the epoch fit 32 bits until the year 10,000),
    /// and its requests (a minute's fit too; they saturate). Narrow: every live client
    /// has one.
    minute: u32,
    allowed: u32,
    blocked: u32,
}

/// What every limiter of a shard shares, lent for one call.
pub struct Shared<'a> {
    pub global: &'a GlobalStats,
    pub events: Option<&'a EventSink>,
}

pub struct ClientLimiter {
    client: Arc<str>,
    /// A client uses few endpoints: a vector is smaller and faster than a map.
    endpoints: Vec<Endpoint>,
    totals: Totals,
    /// Counts checks; snapshots carry it so the database keeps the newest.
    version: u64,
    /// The latest time this limiter has seen: a wall clock stepped back (NTP) must not
    /// reopen a window or refill a bucket, so time here never goes backwards.
    last_now: Nanos,
    /// `version` at the last snapshot: the limiter is dirty when they differ.
    snapshot_version: u64,
    /// Per-minute counts of past minutes, waiting for the next snapshot. (Boxed: a
    /// pointer in the struct every live client has, a vector only once a minute has
    /// passed since the last snapshot.)
    #[allow(clippy::box_collection)]
    stats: Option<Box<Vec<StatDelta>>>,
}

impl ClientLimiter {
    pub fn new(client: Arc<str>) -> Self {
        Self {
            client,
            endpoints: Vec::new(),
            totals: Totals::default(),
            version: 0,
            last_now: 0,
            snapshot_version: 0,
            stats: None,
        }
    }

    pub fn restore_from(&mut self, stored: StoredClient, now: Nanos) {
        self.version = stored.version;
        self.snapshot_version = stored.version;
        self.totals = stored.totals;
        self.last_now = self.last_now.max(stored.totals.last_request);
        let minute = now / NANOS_PER_SEC / 60;
        for e in stored.endpoints {
            match States::decode(e.algorithm, &e.state) {
                Some(state) => {
                    self.endpoints.retain(|x| x.name != e.endpoint);
                    // Room for exactly one more: a first push would reserve four.
                    self.endpoints.reserve_exact(1);
                    self.endpoints.push(Endpoint {
                        name: e.endpoint,
                        state,
                        policy: None,
                        stored_expiry: e.expires_at,
                        minute: minute as u32,
                        allowed: 0,
                        blocked: 0,
                    });
                }
                None => log::warn!(
                    "client {:?}: unreadable snapshot for endpoint {:?} ignored",
                    self.client,
                    e.endpoint
                ),
            }
        }
    }

    /// `now`, never earlier than this limiter has seen before.
    pub fn now(&mut self, now: Nanos) -> Nanos {
        self.last_now = self.last_now.max(now);
        self.last_now
    }

    fn endpoint(&mut self, policy: &Arc<Policy>, minute: u64) -> &mut Endpoint {
        let i = self.endpoint_index(policy, minute);
        &mut self.endpoints[i]
    }

    /// Where `policy`'s endpoint is in `endpoints`, if this client has used it.
    fn find(&self, policy: &Policy) -> Option<usize> {
        self.endpoints
            .iter()
            .position(|e| Arc::ptr_eq(&e.name, &policy.slot) || e.name == policy.slot)
    }

    fn endpoint_index(&mut self, policy: &Arc<Policy>, minute: u64) -> usize {
        self.index_or_add(self.find(policy), policy, minute)
    }

    /// `found` (from [`ClientLimiter::find`]), or a new endpoint for `policy`.
    fn index_or_add(&mut self, found: Option<usize>, policy: &Arc<Policy>, minute: u64) -> usize {
        match found {
            Some(i) => i,
            None => {
                // Room for exactly one more: a first push would reserve four, and most
                // clients use one endpoint.
                self.endpoints.reserve_exact(1);
                self.endpoints.push(Endpoint::new(policy, minute));
                self.endpoints.len() - 1
            }
        }
    }

    /// Decides a check of `cost` under `policy` through `backend`, at `now` (from
    /// [`ClientLimiter::now`]). The caller records the decision once it has it.
    pub fn decide(
        &mut self,
        backend: &dyn QuotaBackend,
        policy: &Arc<Policy>,
        cost: u64,
        mode: Mode,
        now: Nanos,
    ) -> Verdict {
        let found = self.find(policy);
        // A state changed (consumed, reset or given back): the next flush must write it,
        // whether or not the decision is counted here.
        if mode.takes() || (mode != Mode::Peek && found.is_some()) {
            self.version += 1;
        }
        let mut fresh;
        let state = if !mode.takes() && found.is_none() {
            // A peek changes nothing, not even the list of endpoints this client used;
            // nor does resetting a quota the client never used.
            fresh = States::new(&policy.limits);
            &mut fresh
        } else {
            let i = self.index_or_add(found, policy, now / NANOS_PER_SEC / 60);
            let e = &mut self.endpoints[i];
            // A config of one limit that gained others: its limit keeps its state.
            if let Some(last) = &e.policy
                && let [one] = &*last.limits
                && policy.several()
            {
                e.state.grow(&one.name, &policy.limits);
            }
            // The config it was last checked under, peeks and resets included.
            if !e.policy.as_ref().is_some_and(|p| Arc::ptr_eq(p, policy)) {
                e.policy = Some(policy.clone());
            }
            &mut e.state
        };
        let quota = Quota {
            client: &self.client,
            policy,
        };
        backend.check(state, quota, cost, mode, now)
    }

    /// Counts one decision: per-minute statistics, totals, global counters, the feeds.
    pub fn record(
        &mut self,
        policy: &Arc<Policy>,
        decision: &Decisions,
        asked: Option<Asked>,
        now: Nanos,
        shared: &Shared,
    ) {
        let minute = now / NANOS_PER_SEC / 60;
        // Counted as what happened to the request: in shadow mode it went through.
        let passed = !policy.refuses(decision);
        // Per minute under the state this key value keeps of the config (of a policy
        // whose limits count per different keys, its group's); a policy that keeps none
        // here counts in the totals only.
        if let Some(own) = policy.own() {
            let endpoint = self.endpoint(own, minute);
            if !endpoint
                .policy
                .as_ref()
                .is_some_and(|p| Arc::ptr_eq(p, own))
            {
                endpoint.policy = Some(own.clone());
            }
            if let Some(past) = endpoint.count(minute, passed) {
                self.stats.get_or_insert_default().push(past);
            }
        }
        if !passed {
            self.totals.blocked_requests += 1;
        }
        self.totals.total_requests += 1;
        self.totals.last_request = now;
        self.version += 1;
        shared.global.record(now, passed);
        if let Some(sink) = shared.events {
            sink.offer(&self.client, || DecisionEvent {
                client: self.client.clone(),
                endpoint: policy.endpoint.clone(),
                asked,
                decision: **decision,
                limit: policy
                    .several()
                    .then(|| policy.limits[decision.binding()].name.clone()),
                each: match policy.several() {
                    true => LimitSeen::each(policy, decision),
                    false => Vec::new(),
                },
                shadow: policy.shadow,
                at: now,
                origin: None,
                charged: None,
            });
        }
    }

    /// A snapshot of what changed since the last one, if anything did. Each endpoint's
    /// snapshot lives until `backend` says its quota is fresh again: it is what names
    /// the client's endpoints once the limiter is gone.
    pub fn snapshot(&mut self, now: Nanos, backend: &dyn QuotaBackend) -> Option<ClientSnapshot> {
        if self.version == self.snapshot_version {
            return None;
        }
        self.snapshot_version = self.version;
        let now = self.now(now);
        let mut endpoints = Vec::with_capacity(self.endpoints.len());
        let mut stats = self.stats.take().map_or_else(Vec::new, |s| *s);
        for e in &mut self.endpoints {
            stats.extend(e.take_counts());
            // A single state keeps its limit's name (see `States::stored`).
            let one_name = e.policy.as_ref().and_then(|p| p.limits.first());
            let (algorithm, state) = e.state.stored(one_name.map(|l| &*l.name));
            endpoints.push(EndpointSnapshot {
                endpoint: e.name.clone(),
                algorithm,
                state,
                expires_at: e.expires_at(now, backend),
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

    /// Its totals and a copy of its state per endpoint, for [`ClientStatus::of`].
    pub fn states(&self) -> (Totals, Vec<(Arc<str>, States)>) {
        let states = self.endpoints.iter();
        let states = states.map(|e| (e.name.clone(), e.state.clone())).collect();
        (self.totals, states)
    }

    /// The same from a stored snapshot (a client without a live limiter); an endpoint
    /// whose state cannot be read is left out.
    pub fn stored_states(stored: StoredClient) -> (Totals, Vec<(Arc<str>, States)>) {
        let states = stored.endpoints.into_iter();
        let states =
            states.filter_map(|e| Some((e.endpoint, States::decode(e.algorithm, &e.state)?)));
        (stored.totals, states.collect())
    }
}

impl Endpoint {
    fn new(policy: &Arc<Policy>, minute: u64) -> Self {
        Endpoint {
            name: policy.slot.clone(),
            state: States::new(&policy.limits),
            policy: Some(policy.clone()),
            stored_expiry: 0,
            minute: minute as u32,
            allowed: 0,
            blocked: 0,
        }
    }

    /// Counts a decision in `minute`; returns the counts of an earlier minute it ends.
    fn count(&mut self, minute: u64, allowed: bool) -> Option<StatDelta> {
        let minute = minute as u32;
        let mut past = None;
        if self.minute != minute {
            past = self.take_counts();
            self.minute = minute;
        }
        if allowed {
            self.allowed = self.allowed.saturating_add(1);
        } else {
            self.blocked = self.blocked.saturating_add(1);
        }
        past
    }

    /// When the state will be as good as fresh (see [`ClientLimiter::snapshot`]).
    fn expires_at(&mut self, now: Nanos, backend: &dyn QuotaBackend) -> Nanos {
        match &self.policy {
            Some(p) => backend.fresh_at(&mut self.state, &p.limits, now),
            None => self.stored_expiry,
        }
    }

    fn take_counts(&mut self) -> Option<StatDelta> {
        (self.allowed > 0 || self.blocked > 0).then(|| StatDelta {
            minute: self.minute.into(),
            // Counted under the config's endpoint, whatever slot holds the state.
            endpoint: self
                .policy
                .as_ref()
                .map_or(&self.name, |p| &p.endpoint)
                .clone(),
            allowed: std::mem::take(&mut self.allowed).into(),
            blocked: std::mem::take(&mut self.blocked).into(),
        })
    }
}

/// One endpoint of a client, as `/admin/stats/{client_id}` shows it: under a config of
/// several limits, the binding one's numbers (see `limiter::Decisions`), and each limit's
/// in `limits`.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
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
    /// Shadow mode: over the limit is reported, not refused.
    pub shadow: bool,
    /// The client pattern of the override that gives this client its limit, if one.
    #[serde(rename = "override", skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Each limit of a config of several, in its order; absent for a config of one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitStatus>,
}

/// One limit of a config of several, as a client stands under it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct LimitStatus {
    pub name: String,
    pub algorithm: Algorithm,
    /// What it counts, when not requests.
    #[serde(skip_serializing_if = "Unit::is_requests")]
    pub unit: Unit,
    /// Whether this limit admits (or, for a status, would admit) a request.
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// When this limit's quota is fully restored (RFC 3339).
    pub reset_time: String,
    /// Whole seconds until this limit would allow the request again, rounded up (0 while
    /// it would): for an overdrawn limit, when its debt is repaid.
    pub retry_after: u64,
    /// Units used past the limit (charged after the fact), repaid by `retry_after`;
    /// left out while 0.
    #[serde(skip_serializing_if = "crate::is_zero")]
    pub debt: u64,
}

impl LimitStatus {
    /// Each limit of `policy` under `d`, if its config has several (`named`; `policy`
    /// may be the part of it kept under one key value) or counts tokens or bytes (whose
    /// unit and debt a body then shows).
    pub fn list(policy: &Policy, d: &Decisions, now: Nanos, named: bool) -> Vec<Self> {
        if !named && !policy.limits.iter().any(|l| l.is_metered()) {
            return Vec::new();
        }
        (policy.each(d))
            .map(|(l, d)| LimitStatus {
                name: l.name.to_string(),
                algorithm: l.limit.algorithm(),
                unit: l.unit,
                allowed: d.allowed,
                limit: d.limit,
                remaining: d.remaining,
                reset_time: d.reset_time(now),
                retry_after: crate::clock::ceil_secs(d.retry_after),
                debt: d.debt,
            })
            .collect()
    }
}

/// A client's counters and quotas.
#[derive(Debug, Clone, Default, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ClientStatus {
    pub total_requests: u64,
    pub blocked_requests: u64,
    /// RFC 3339, or null if the client never made a request.
    pub last_request: Option<String>,
    pub endpoints: Vec<EndpointStatus>,
}

impl ClientStatus {
    /// A client's status under today's configs: each endpoint's quota as `backend`
    /// would decide a request of cost 1 now, consuming nothing, from the client's own
    /// `states` (live or read back from a snapshot). Endpoints whose config was deleted,
    /// or that the backend cannot answer for, are left out.
    pub fn of(
        backend: &dyn QuotaBackend,
        client: &str,
        (totals, mut states): (Totals, Vec<(Arc<str>, States)>),
        table: &PolicyTable,
        now: Nanos,
    ) -> impl Future<Output = Self> + use<> {
        let client: Arc<str> = Arc::from(client);
        let peeks: Vec<_> = states
            .iter_mut()
            .filter_map(|(name, state)| {
                let (policy, named) = table.slot_policy(name, &client)?;
                let policy = policy.clone();
                let quota = Quota {
                    client: &client,
                    policy: &policy,
                };
                let peek = backend.check(state, quota, 1, Mode::Peek, now);
                Some(async move { peek.resolve().await.ok().map(|d| (policy, named, d)) })
            })
            .collect();
        async move {
            let decisions = futures_util::future::join_all(peeks).await;
            Self::from_decisions(totals, decisions.into_iter().flatten(), now)
        }
    }

    /// The status from each endpoint's policy and the decision a request would get now.
    fn from_decisions(
        totals: Totals,
        decisions: impl Iterator<Item = (Arc<Policy>, bool, Decisions)>,
        now: Nanos,
    ) -> Self {
        let mut endpoints: Vec<EndpointStatus> = decisions
            .map(|(policy, named, d)| EndpointStatus {
                endpoint: policy.endpoint.to_string(),
                algorithm: policy.limits[d.binding()].limit.algorithm(),
                limit: d.limit,
                remaining: d.remaining,
                reset_time: d.reset_time(now),
                retry_after: crate::clock::ceil_secs(d.retry_after),
                is_active: policy.active,
                shadow: policy.shadow,
                tier: policy.tier.as_deref().map(str::to_owned),
                limits: LimitStatus::list(&policy, &d, now, named),
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
}
