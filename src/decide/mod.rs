//! The decision core: the one place where a check of a client under a policy becomes a
//! [`Ruling`], whoever asks. A protected route (the rate-limit middleware), the reverse
//! proxy, `POST /v1/check`, `/v1/forward-auth` and Envoy's rate-limit service are
//! adapters around [`Decider::decide`]: each turns its own request into a client, a
//! policy and a cost, and turns the ruling into its own answer. The decision is counted
//! in the metrics here, bounded in time here (`--decision-timeout-ms`, then
//! `--on-error`), and what the rate-limit headers say of it ([`retry_after_secs`],
//! [`reset_secs`], [`structured_fields`]) is computed here, so that every surface says
//! the same. Nothing here knows HTTP or gRPC: `http/` and `envoy/` depend on this
//! module, never the reverse.

pub(crate) mod deadline;

use crate::actors::broadcaster::FeedInterest;
use crate::actors::registry::{Check, LimiterUnavailable, Registries};
use crate::actors::{Asked, Via};
use crate::clock::{NANOS_PER_SEC, Nanos, SharedClock, ceil_secs};
use crate::limiter::{Decision, Decisions, Mode};
use crate::metrics::{ErrorReason, Metrics, Outcome};
use crate::policy::{Kind, Policies, Policy};
use crate::settings::OnError;
use actix_web::http::header::{HeaderName, HeaderValue};
use smallvec::SmallVec;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// How long a refund or a charge may wait for its limiter.
const REFUND_DEADLINE: Duration = Duration::from_secs(5);

/// What one request costs each kind of limit ([`Kind`]): limits of requests (and
/// concurrency limits) take `requests`; limits of tokens and of bytes take what the
/// request is known or estimated to use up front (0 when nothing is: it is then
/// admitted while at least one unit is left, and charged what it used afterwards).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub requests: u64,
    pub tokens: u64,
    pub bytes: u64,
}

impl Cost {
    /// A request: one of limits of requests, nothing known up front of the others.
    pub const ONE: Cost = Cost::requests(1);

    /// `n` of limits of requests, nothing known up front of the others.
    pub const fn requests(n: u64) -> Self {
        Cost {
            requests: n,
            tokens: 0,
            bytes: 0,
        }
    }

    /// `n` of every limit, whatever it counts (Envoy's `hits_addend`).
    pub const fn all(n: u64) -> Self {
        Cost {
            requests: n,
            tokens: n,
            bytes: n,
        }
    }

    /// What limits of `kind` take.
    pub fn of(&self, kind: Kind) -> u64 {
        match kind {
            Kind::Requests | Kind::Held => self.requests,
            Kind::Tokens => self.tokens,
            Kind::Bytes => self.bytes,
        }
    }
}

/// What the server ruled on one check, whoever asked.
pub enum Ruling {
    /// The config that applies is inactive: nothing is limited, nothing counted.
    Inactive,
    /// The decision, and what the request holds until it is done (its concurrency
    /// limits' units; nothing for most configs).
    Decided(Decisions, Hold),
    /// The limiter could not decide in time: `--on-error` applies.
    Failed,
}

/// Decides checks: the configs, the limiters, and what a check needs on its way.
pub struct Decider {
    /// The configs every surface resolves against.
    pub policies: Arc<Policies>,
    registries: Registries,
    /// Who watches the feeds, so that a check's path is only copied when shown.
    interest: Arc<FeedInterest>,
    metrics: Arc<Metrics>,
    clock: SharedClock,
    /// What a check gets when its limiter cannot answer within `timeout`.
    pub on_error: OnError,
    timeout: Duration,
    /// The scope of the leases it gives (see [`Lease::scope`]).
    pub lease_scope: u64,
}

impl Decider {
    pub fn new(
        policies: Arc<Policies>,
        registries: Registries,
        interest: Arc<FeedInterest>,
        metrics: Arc<Metrics>,
        clock: SharedClock,
        on_error: OnError,
        timeout: Duration,
    ) -> Self {
        // Quotas in a shared store are released by any instance; quotas in this
        // process's memory only by it: a random scope of its own.
        let lease_scope = match registries.backend_reachable() {
            Some(_) => 0,
            None => random_u64() | 1,
        };
        Self {
            policies,
            registries,
            interest,
            metrics,
            clock,
            on_error,
            timeout,
            lease_scope,
        }
    }

    /// Decides a request of `cost` under `policy` (each kind of limit taking its own:
    /// see [`Cost`]), counted under `values` (see [`crate::policy::KeyValues`]; the
    /// path `path` makes is only made when a feed would show it) within the decision
    /// timeout, and counts the outcome in the metrics. Peeks are answered, not counted.
    pub async fn decide(
        &self,
        values: &[Arc<str>],
        policy: &Arc<Policy>,
        path: impl FnOnce() -> Arc<str>,
        via: Via,
        cost: Cost,
        mode: Mode,
    ) -> Ruling {
        if !policy.active {
            return Ruling::Inactive;
        }
        let own = cost.of(policy.kind);
        let client = &values[0];
        let started = Instant::now();
        let deadline = started + self.timeout;
        let check = Check {
            client: client.clone(),
            policy: policy.clone(),
            cost: own,
            mode,
            // The check gives up at `deadline`, and learns of an answer up to one ticker
            // period late: an answer given after this could not reach it in time, so the
            // limiter refuses the check (consuming nothing) instead.
            answer_by: deadline.checked_sub(deadline::TICK).unwrap_or(started),
            // Made only while a feed would show it.
            asked: self
                .interest
                .wants(client)
                .then(|| Asked { via, path: path() }),
            record: true,
        };
        let answer = match policy.groups.is_empty() {
            true => {
                let whole = async {
                    let d = self.registries.decide(check).await?;
                    // A policy all of whose limits are held holds what it took.
                    // ... and a policy of tokens or bytes remembers the estimate it took.
                    let mut hold = Hold::default();
                    if mode == Mode::Consume && d.allowed && own > 0 {
                        if policy.kind == Kind::Held {
                            hold = Hold::new(&self.registries, values);
                            hold.push(0, &values[0], policy, d.at(), own);
                        } else if policy.kind.is_metered() {
                            hold = Hold::new(&self.registries, values);
                            hold.estimated(0, &values[0], policy, d.at(), own);
                        }
                    }
                    Ok((d, hold))
                };
                deadline::within(deadline, std::pin::pin!(whole)).await
            }
            // Boxed: its state is large, and would make every request's future as large.
            false => {
                let mut groups = Box::pin(self.decide_groups(values, check, cost));
                deadline::within(deadline, groups.as_mut()).await
            }
        };
        let counted = mode == Mode::Consume;
        match answer {
            Ok(Ok((d, hold))) => {
                if counted {
                    Metrics::observe(&self.metrics.decision_seconds, started.elapsed());
                    let outcome = match (d.allowed, policy.shadow) {
                        (true, _) => Outcome::allowed,
                        (false, false) => Outcome::limited,
                        (false, true) => Outcome::shadow_limited,
                    };
                    self.metrics.decision(&policy.endpoint, outcome);
                    if !d.allowed {
                        for limit in policy.violated(&d) {
                            self.metrics.limit_refusal(&policy.endpoint, &limit.name);
                        }
                    }
                }
                Ruling::Decided(d, hold)
            }
            failed => {
                let reason = match failed {
                    Err(_) => ErrorReason::timeout,
                    Ok(_) => ErrorReason::unavailable,
                };
                if counted {
                    self.failed(client, &policy.endpoint, reason);
                }
                Ruling::Failed
            }
        }
    }

    /// A check under a policy whose limits count per different keys (or hold units
    /// until a request is done): each group under its own key value, in the groups'
    /// order, each all or nothing. Once one refuses, the groups after it are only
    /// peeked (for the headers) and the groups before it are given back what they
    /// consumed ([`Mode::Refund`]), so a refused request ends up taking nothing; until
    /// then its units are held, which can refuse another request that would have fit.
    /// What was taken is given back even when this is dropped half way (the decision
    /// timed out): it is held in a [`Hold`] meanwhile. The request is counted once,
    /// under the config's key value, with every limit's decision; an admitted request
    /// keeps what its held groups took.
    async fn decide_groups(
        &self,
        values: &[Arc<str>],
        whole: Check,
        cost: Cost,
    ) -> Result<(Decisions, Hold), LimiterUnavailable> {
        let policy = whole.policy.clone();
        let mut parts: SmallVec<[Decisions; 2]> = SmallVec::new();
        let mut taken = Hold::new(&self.registries, values);
        let mut refused = false;
        for (i, g) in policy.groups.iter().enumerate() {
            let value = &values[g.value];
            let mode = match (whole.mode, refused) {
                (Mode::Consume, true) => Mode::Peek,
                (mode, _) => mode,
            };
            let (client, part) = (value.clone(), g.policy.clone());
            let cost = cost.of(g.kind);
            let check = Check::unrecorded(client, part, cost, mode, whole.answer_by);
            let d = match self.registries.decide(check).await {
                Ok(d) => d,
                // Refused already: a group that cannot be looked at changes nothing.
                Err(_) if refused => unknown(&g.policy),
                Err(e) => return Err(e),
            };
            if mode == Mode::Consume && d.allowed {
                taken.push(i, value, &g.policy, d.at(), cost);
            }
            refused |= !d.allowed;
            parts.push(d);
        }
        if refused {
            // Given back now, so that the answer says what each limit has once it is.
            for (i, after) in taken.give_back().await {
                parts[i] = after;
            }
        }
        let d = policy.merge(&parts);
        if whole.mode == Mode::Consume {
            self.registries.record(&whole, &d);
        }
        // What the held groups took is held until the request is done; what the groups
        // of tokens or bytes took is an estimate a report may reconcile.
        taken.settle(
            |i| policy.groups[i].kind == Kind::Held,
            |i| policy.groups[i].kind.is_metered(),
        );
        Ok((d, taken))
    }

    /// Gives back what a lease holds (see [`Lease`]), each part to the held group of
    /// its slot, once: `Ok(false)` when it was given back before, or the config no
    /// longer has any of its parts (nothing is held any more). A lease is marked as
    /// given back (in Redis, for every instance) until its units would have come back
    /// by themselves, before they are: a release that then fails (503) is not made
    /// again, and its units come back when their lease ends.
    pub async fn release(&self, lease: &Lease) -> Result<bool, LimiterUnavailable> {
        let table = self.policies.current();
        let Some(policy) = (lease.values.first()).and_then(|v| table.policy(&lease.endpoint, v))
        else {
            return Ok(false);
        };
        let held: Vec<_> = (policy.held_parts())
            .filter(|(_, part)| lease.parts.iter().any(|(slot, _)| **slot == *part.slot))
            .collect();
        let Some(ttl) = (held.iter())
            .flat_map(|(_, part)| part.limits.iter().map(|l| l.limit.fresh_after()))
            .max()
        else {
            return Ok(false);
        };
        let first = self
            .registries
            .first_use(&lease.values[0], lease.id, ttl, self.clock.now())
            .await
            .map_err(|()| LimiterUnavailable)?;
        if !first {
            return Ok(false);
        }
        let mut released = false;
        for (i, part) in policy.held_parts() {
            let Some((_, at)) = lease.parts.iter().find(|(slot, _)| **slot == *part.slot) else {
                continue;
            };
            let value = match policy.groups.get(i) {
                Some(g) => lease.values.get(g.value),
                None => lease.values.first(),
            };
            let Some(value) = value else { continue };
            let check = refund_check(&Arc::from(value.as_str()), part, lease.cost, *at);
            self.registries.decide(check).await?;
            released = true;
        }
        Ok(released)
    }

    /// Charges `amount` units that a request counted under `values` used to every limit
    /// of tokens or bytes of `policy` ([`Mode::Charge`]: past the limit too), and
    /// answers each such part's decisions once charged, in the policy's order. Given
    /// the check id of the check that took an estimate up front (`estimate`, whose
    /// values and endpoint the caller has matched to these), it reconciles instead:
    /// the parts that took the estimate are charged what `amount` exceeds it, or given
    /// back what it exceeds `amount` (never more than the check took, see
    /// [`Mode::Refund`]); a check id is reconciled once, in Redis for every instance
    /// (`Err(Charging::Reported)` after). Nothing is charged under an inactive config.
    pub async fn charge(
        &self,
        values: &[Arc<str>],
        policy: &Arc<Policy>,
        amount: u64,
        estimate: Option<&Lease>,
    ) -> Result<Vec<(Arc<Policy>, Decisions)>, Charging> {
        let parts: SmallVec<[(usize, &Arc<Policy>); 1]> = policy.metered_parts().collect();
        if let Some(lease) = estimate {
            let ttl = (parts.iter())
                .flat_map(|(_, p)| p.limits.iter().map(|l| l.limit.fresh_after()))
                .max()
                .unwrap_or(0);
            let first = (self.registries)
                .first_use(&values[0], lease.id, ttl, self.clock.now())
                .await
                .map_err(|()| Charging::Unavailable)?;
            if !first {
                return Err(Charging::Reported);
            }
        }
        // A charge is worth making however late, as a refund is: it is what was used.
        let answer_by = Instant::now() + REFUND_DEADLINE;
        let mut charged = Vec::with_capacity(parts.len());
        for (value, part) in parts {
            let value = values.get(value).unwrap_or(&values[0]);
            let took = estimate.and_then(|l| {
                let (_, at) = l.parts.iter().find(|(slot, _)| **slot == *part.slot)?;
                Some((l.cost, *at))
            });
            let d = match took {
                Some((taken, at)) if amount < taken => {
                    // Given back, then looked at: the answer is for one more unit.
                    let back = taken - amount;
                    let refund = Mode::Refund(at);
                    let check =
                        Check::unrecorded(value.clone(), part.clone(), back, refund, answer_by);
                    (self.registries.decide(check).await).map_err(|_| Charging::Unavailable)?;
                    self.charge_part(value, part, 0).await
                }
                Some((taken, _)) => self.charge_part(value, part, amount - taken).await,
                None => self.charge_part(value, part, amount).await,
            };
            charged.push((part.clone(), d.map_err(|_| Charging::Unavailable)?));
        }
        Ok(charged)
    }

    /// Charges `units` to `part` (a policy's part of tokens or bytes, see
    /// [`Policy::metered_parts`]) under `value`, counted in the metrics, and answers
    /// its limits as a request would now find them (`allowed` while a unit is left);
    /// 0 units only looks.
    pub async fn charge_part(
        &self,
        value: &Arc<str>,
        part: &Arc<Policy>,
        units: u64,
    ) -> Result<Decisions, LimiterUnavailable> {
        let mode = match units {
            0 => Mode::Peek,
            _ => Mode::Charge,
        };
        let answer_by = Instant::now() + REFUND_DEADLINE;
        let check = Check::unrecorded(value.clone(), part.clone(), units, mode, answer_by);
        let d = self.registries.decide(check).await?;
        let each = d.each().iter().map(|d| Decision {
            allowed: d.retry_after == 0,
            ..*d
        });
        let d = Decisions::of(each.collect()).decided_at(d.at());
        if units > 0 {
            for l in part.limits.iter() {
                self.metrics.charged(&part.endpoint, &l.name, units);
            }
            self.registries.charged(value, part, &d, units);
        }
        Ok(d)
    }

    /// A check whose limiter could not decide: counted under `--on-error`'s outcome, and
    /// logged at most once a second so an outage cannot flood the log.
    fn failed(&self, client: &str, endpoint: &Arc<str>, reason: ErrorReason) {
        static LAST_WARNED: AtomicU64 = AtomicU64::new(0);
        let second = self.clock.now() / NANOS_PER_SEC;
        if LAST_WARNED.swap(second, Ordering::Relaxed) != second {
            log::warn!(
                "client {client:?}: no decision for {endpoint} ({reason:?}); --on-error {:?} applies",
                self.on_error
            );
        }
        self.metrics.decision_error(reason);
        let outcome = match self.on_error {
            OnError::Allow => Outcome::on_error_allowed,
            OnError::Deny => Outcome::on_error_denied,
        };
        self.metrics.decision(endpoint, outcome);
    }
}

/// Why a charge was not made.
#[derive(Debug, PartialEq, Eq)]
pub enum Charging {
    /// A limiter could not answer (what was charged before it stays charged).
    Unavailable,
    /// The check id was reconciled before: nothing was charged again.
    Reported,
}

/// A check that gives back `cost` units that a check of `value` under `policy` took at
/// `at`.
fn refund_check(value: &Arc<str>, policy: &Arc<Policy>, cost: u64, at: Nanos) -> Check {
    let (value, policy) = (value.clone(), policy.clone());
    // A refund is worth making however late: it only gives back.
    let answer_by = Instant::now() + REFUND_DEADLINE;
    Check::unrecorded(value, policy, cost, Mode::Refund(at), answer_by)
}

/// Gives back `cost` units that a check of `value` under `policy` took at `at`, and
/// answers what `policy` says once they are; logs a refund that failed (its units
/// then count until their window, or lease, passes: never more than a limit admits).
async fn give_back_part(
    registries: &Registries,
    value: &Arc<str>,
    policy: &Arc<Policy>,
    cost: u64,
    at: Nanos,
) -> Option<Decisions> {
    let answer = registries
        .decide(refund_check(value, policy, cost, at))
        .await;
    if answer.is_err() {
        log::warn!(
            "{value:?}: could not give back what a request took of {}; it counts until \
             its window (a concurrency limit: its lease) passes",
            policy.endpoint
        );
    }
    answer.ok()
}

/// A random number, from the standard library's randomly keyed hasher.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// The decision of a group that could not be asked (after another refused): it
/// refuses nothing, and says nothing of its quota but the quota.
fn unknown(policy: &Policy) -> Decisions {
    let each = policy.limits.iter().map(|l| Decision {
        allowed: true,
        limit: l.limit.quota(),
        remaining: l.limit.quota(),
        retry_after: 0,
        reset_after: 0,
        debt: 0,
    });
    Decisions::of(each.collect())
}

/// Units a request took and still holds: what its concurrency limits hold until it is
/// done, or, while a request of several groups is being decided, what the groups
/// decided so far took. Given back when dropped (the response sent, the connection
/// gone, the handler failed or panicked, the decision timed out), or turned into a
/// [`Lease`] for a caller to give back later. Empty (one null pointer) for most
/// requests.
#[derive(Default)]
pub struct Hold(Option<Box<Holding>>);

/// One held part: its group's index (0 for a policy of one group), the key value it
/// counts under, the part's policy, when it was decided, and what it took.
type HeldPart = (usize, Arc<str>, Arc<Policy>, Nanos, u64);

/// What a non-empty [`Hold`] holds.
struct Holding {
    parts: SmallVec<[HeldPart; 1]>,
    /// The parts of tokens or bytes that took an estimate up front: never given back
    /// here, but named by a check id for a report to reconcile (see
    /// [`Hold::take_estimate`]).
    estimated: SmallVec<[HeldPart; 1]>,
    /// For a lease: every key value of the request, in their order.
    values: Vec<Arc<str>>,
    registries: Registries,
}

/// What a request holds of a config's concurrency limits, to give back: the config,
/// the key values the request counted under, each held part by its slot with when it
/// was decided, the cost, and the scope of the counters it was taken from. It is what
/// `POST /v1/release` takes back (in [`Lease::token`]'s form).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    #[serde(rename = "e")]
    pub endpoint: String,
    #[serde(rename = "v")]
    pub values: Vec<String>,
    /// Each held part's slot (see `Policy::slot`) and decision time.
    #[serde(rename = "p")]
    pub parts: Vec<(String, Nanos)>,
    #[serde(rename = "c")]
    pub cost: u64,
    /// Where the units are counted: 0 for a shared Redis (any instance gives them
    /// back), else the process that holds them in memory (only it can).
    #[serde(rename = "s")]
    pub scope: u64,
    /// Its own id: a lease is given back once (see [`Decider::release`]).
    #[serde(rename = "n")]
    pub id: u64,
}

impl Lease {
    /// Its opaque form: URL-safe base64 of its JSON.
    pub fn token(&self) -> String {
        use base64::Engine;
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// The lease a token names, if it is one.
    pub fn parse(token: &str) -> Option<Self> {
        use base64::Engine;
        if token.len() > 4096 {
            return None;
        }
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()?;
        let lease: Lease = serde_json::from_slice(&json).ok()?;
        let limits = crate::limiter::MAX_LIMITS;
        let sane = (1..=limits + 1).contains(&lease.values.len())
            && (1..=limits).contains(&lease.parts.len())
            && (1..=crate::config::MAX_UNITS).contains(&lease.cost);
        sane.then_some(lease)
    }
}

impl Hold {
    /// Nothing yet, for a request counted under `values` (an allocation: made only for
    /// a request that may hold something).
    fn new(registries: &Registries, values: &[Arc<str>]) -> Self {
        Self(Some(Box::new(Holding {
            parts: SmallVec::new(),
            estimated: SmallVec::new(),
            values: values.to_vec(),
            registries: registries.clone(),
        })))
    }

    /// Adds what group `i` (counted under `value`, decided by `policy` at `at`) took:
    /// `cost`.
    fn push(&mut self, i: usize, value: &Arc<str>, policy: &Arc<Policy>, at: Nanos, cost: u64) {
        if let Some(h) = &mut self.0
            && cost > 0
        {
            h.parts.push((i, value.clone(), policy.clone(), at, cost));
        }
    }

    /// Adds the estimate group `i` (counted under `value`, decided by `policy` at
    /// `at`) took: `cost` of its tokens or bytes.
    fn estimated(
        &mut self,
        i: usize,
        value: &Arc<str>,
        policy: &Arc<Policy>,
        at: Nanos,
        cost: u64,
    ) {
        if let Some(h) = &mut self.0 {
            h.estimated
                .push((i, value.clone(), policy.clone(), at, cost));
        }
    }

    /// Keeps held the parts whose group `held` says, keeps as estimates those
    /// `estimated` says, and lets the others go (what they took stays taken).
    fn settle(&mut self, held: impl Fn(usize) -> bool, estimated: impl Fn(usize) -> bool) {
        if let Some(h) = &mut self.0 {
            for part in std::mem::take(&mut h.parts) {
                if held(part.0) {
                    h.parts.push(part);
                } else if estimated(part.0) {
                    h.estimated.push(part);
                }
            }
            if h.parts.is_empty() && h.estimated.is_empty() {
                // Nothing left to give back or reconcile: disarmed.
                self.0 = None;
            }
        }
    }

    /// The estimate a check took of its limits of tokens or bytes, as the check id a
    /// report names to reconcile it (a [`Lease`] of those parts; `scope` as a lease's):
    /// `None` when it took none.
    pub fn take_estimate(&mut self, scope: u64) -> Option<Lease> {
        let h = self.0.as_mut()?;
        let estimated = std::mem::take(&mut h.estimated);
        let first = estimated.first()?;
        Some(Lease {
            endpoint: first.2.endpoint.to_string(),
            values: h.values.iter().map(|v| v.to_string()).collect(),
            parts: (estimated.iter())
                .map(|(_, _, p, at, _)| (p.slot.to_string(), *at))
                .collect(),
            // Every part of tokens or bytes takes the same estimate.
            cost: first.4,
            scope,
            id: random_u64(),
        })
    }

    /// Gives back every part now, and says what each part's group answered once given
    /// back (by group index). A part whose refund fails stays taken until its window
    /// passes (logged): never more than a limit admits.
    async fn give_back(&mut self) -> Vec<(usize, Decisions)> {
        let mut answers = Vec::new();
        let Some(h) = &mut self.0 else {
            return answers;
        };
        // Each part leaves the hold before its refund is asked: once asked it is made
        // (a backend that answers later completes it on its own thread), and a hold
        // dropped meanwhile must not give it back twice.
        while !h.parts.is_empty() {
            let (i, value, policy, at, cost) = h.parts.remove(0);
            let after = give_back_part(&h.registries, &value, &policy, cost, at).await;
            answers.extend(after.map(|after| (i, after)));
        }
        self.0 = None;
        answers
    }

    /// Whether it holds anything.
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|h| h.parts.is_empty())
    }

    /// What it holds, for a caller to give back later; it no longer gives it back
    /// itself. `scope`: see [`Lease::scope`].
    pub fn into_lease(mut self, scope: u64) -> Option<Lease> {
        let h = self.0.take().filter(|h| !h.parts.is_empty())?;
        Some(Lease {
            endpoint: h.parts[0].2.endpoint.to_string(),
            values: h.values.iter().map(|v| v.to_string()).collect(),
            parts: (h.parts.iter())
                .map(|(_, _, p, at, _)| (p.slot.to_string(), *at))
                .collect(),
            // Only held parts (of concurrency limits, which take the request's cost)
            // are leased.
            cost: h.parts[0].4,
            scope,
            id: random_u64(),
        })
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let Some(h) = self.0.take().filter(|h| !h.parts.is_empty()) else {
            return;
        };
        // Given back on the thread that dropped it, after the response is on its way.
        actix_web::rt::spawn(async move {
            for (_, value, policy, at, cost) in &h.parts {
                give_back_part(&h.registries, value, policy, *cost, *at).await;
            }
        });
    }
}

/// `Retry-After` of a refused request: whole seconds until a request would be allowed
/// again, rounded up so never earlier than the truth, and at least 1.
pub fn retry_after_secs(d: &Decision) -> u64 {
    ceil_secs(d.retry_after).max(1)
}

/// `RateLimit`'s `t`. With quota left (`r` > 0): seconds until all of it is back, the
/// same point as `X-RateLimit-Reset`. With none left (`r` = 0, on the last allowed
/// request and on every 429): seconds until the next request is allowed, which on a 429
/// is exactly `Retry-After`, so both name the same point in time as the draft asks. A
/// client that waits `t` seconds always has quota again.
pub fn reset_secs(d: &Decision) -> u64 {
    match d.remaining {
        0 => retry_after_secs(d),
        _ => ceil_secs(d.reset_after),
    }
}

/// The IETF structured fields' names (the `http` crate's type, which HTTP/1, HTTP/2 and
/// gRPC metadata share; nothing of this crate's HTTP layer).
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The structured rate-limit fields of one decision, `RateLimit` then
/// `RateLimit-Policy`: what a route's response and Envoy's callers get. A config of one
/// limit is one policy named by its endpoint; a config of several lists each limit as a
/// policy of its own name, in the config's order. `RateLimit-Policy` says nothing a
/// decision changes but the quotas, so it is made once per policy and reused while the
/// decisions report the same quotas.
pub fn structured_fields(policy: &Policy, d: &Decisions) -> [(HeaderName, HeaderValue); 2] {
    let mut limits = String::with_capacity(48);
    for (l, d) in policy.each(d) {
        if !limits.is_empty() {
            limits.push_str(", ");
        }
        push_sf_string(&mut limits, policy_name(policy, l));
        limits.push_str(";r=");
        limits.push_str(itoa::Buffer::new().format(d.remaining));
        // A concurrency limit has no window: when a unit comes back nobody knows.
        if !l.limit.is_held() {
            limits.push_str(";t=");
            limits.push_str(itoa::Buffer::new().format(reset_secs(d)));
        }
    }
    let policies = policy.quota_field.policy_field(policy, d);
    [
        (RATELIMIT, header_value(limits)),
        (RATELIMIT_POLICY, policies),
    ]
}

/// A limit's name in the structured fields: a config of one limit is named by its
/// endpoint, each of several by its own name.
fn policy_name<'a>(policy: &'a Policy, l: &'a crate::limiter::Named) -> &'a str {
    match policy.several() {
        true => &l.name,
        false => &policy.endpoint,
    }
}

/// `RateLimit-Policy` of `policy` as decision `d` reports its quotas.
fn policy_field(policy: &Policy, d: &Decisions) -> HeaderValue {
    let mut policies = String::with_capacity(48);
    for (l, d) in policy.each(d) {
        if !policies.is_empty() {
            policies.push_str(", ");
        }
        push_sf_string(&mut policies, policy_name(policy, l));
        let _ = match l.limit.is_held() {
            // Its quota is of requests in flight.
            true => write!(policies, ";q={};qu=\"concurrent-requests\"", d.limit),
            false => write!(policies, ";q={};w={}", d.limit, l.window_seconds),
        };
        // Requests are the draft's default unit, left unsaid.
        if !l.limit.is_held() && l.is_metered() {
            let _ = write!(policies, ";qu=\"{}\"", l.unit.quota_unit());
        }
    }
    header_value(policies)
}

/// A field made of `sf_string`s, numbers and separators: printable ASCII, so always a
/// valid header value.
fn header_value(s: String) -> HeaderValue {
    HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// What a policy's rate-limit headers say of its quotas, made once: `RateLimit-Policy`
/// and `X-RateLimit-Limit`, kept with the quotas they state and reused for every
/// decision that reports the same.
#[derive(Debug, Default)]
pub struct QuotaField(std::sync::OnceLock<Quotas>);

#[derive(Debug)]
struct Quotas {
    each: SmallVec<[u64; 2]>,
    policy: HeaderValue,
    /// The binding limit's quota, and `X-RateLimit-Limit` saying it.
    binding: (u64, HeaderValue),
}

impl QuotaField {
    fn quotas(&self, policy: &Policy, d: &Decisions) -> &Quotas {
        (self.0).get_or_init(|| Quotas {
            each: d.each().iter().map(|d| d.limit).collect(),
            policy: policy_field(policy, d),
            binding: (d.limit, HeaderValue::from(d.limit)),
        })
    }

    fn policy_field(&self, policy: &Policy, d: &Decisions) -> HeaderValue {
        let kept = self.quotas(policy, d);
        match kept
            .each
            .iter()
            .copied()
            .eq(d.each().iter().map(|d| d.limit))
        {
            true => kept.policy.clone(),
            // Quotas the policy's first decision did not report: made for this one.
            false => policy_field(policy, d),
        }
    }

    /// `X-RateLimit-Limit` of decision `d` under `policy`.
    pub fn limit_field(&self, policy: &Policy, d: &Decisions) -> HeaderValue {
        match &self.quotas(policy, d).binding {
            (limit, value) if *limit == d.limit => value.clone(),
            _ => HeaderValue::from(d.limit),
        }
    }
}

/// Equal whatever they cached: a cache is not part of what a policy says.
impl PartialEq for QuotaField {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Appends a structured-field string (RFC 8941): quoted, `"` and `\` escaped, and
/// anything outside printable ASCII percent-encoded (the policy name is a path).
fn push_sf_string(out: &mut String, s: &str) {
    out.push('"');
    let plain = |b: u8| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\';
    if s.bytes().all(plain) {
        out.push_str(s);
    } else {
        for b in s.bytes() {
            match b {
                b'"' | b'\\' => {
                    out.push('\\');
                    out.push(b as char);
                }
                0x20..=0x7e => out.push(b as char),
                _ => {
                    let _ = write!(out, "%{b:02X}");
                }
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::{Algorithm, Limit, State};

    /// A decider over one in-memory registry shard, on a manual clock.
    fn decider() -> Decider {
        use crate::actors::registry::test_config;
        use crate::config::{Config, ConfigSpec};
        use crate::policy::PolicyTable;
        use crate::store::quota::Memory;
        let clock = crate::clock::ManualClock::new(1_800_000_000 * NANOS_PER_SEC);
        let config = test_config(clock.clone());
        let metrics = config.metrics.clone();
        let registries = Registries::start(vec![Arc::new(Memory)], config, []);
        let default = Config {
            id: 0,
            spec: ConfigSpec::default_policy(),
            created_at: 0,
            updated_at: 0,
        };
        let policies = Arc::new(Policies::new(PolicyTable::new(vec![default]).unwrap()));
        let timeout = Duration::from_secs(5);
        Decider::new(
            policies,
            registries,
            Arc::default(),
            metrics,
            clock,
            OnError::Deny,
            timeout,
        )
    }

    #[actix_rt::test]
    async fn what_a_request_holds_comes_back_when_its_handler_panics() {
        let decider = decider();
        let spec: crate::config::ConfigSpec = serde_json::from_str(
            r#"{"endpoint": "/x", "limits": [
                {"name": "minute", "algorithm": "fixed_window", "requests_per_window": 10, "window_seconds": 60},
                {"name": "c", "algorithm": "concurrency", "max_in_flight": 1}]}"#,
        )
        .unwrap();
        let policy = Arc::new(Policy::from_spec(&spec));
        let values = [Arc::<str>::from("p")];
        let decide = || {
            decider.decide(
                &values,
                &policy,
                || Arc::from("/x"),
                Via::Route,
                Cost::ONE,
                Mode::Consume,
            )
        };
        let Ruling::Decided(d, hold) = decide().await else {
            panic!("decided");
        };
        assert!(d.allowed && !hold.is_empty());
        let Ruling::Decided(d, nothing) = decide().await else {
            panic!("decided");
        };
        assert!(!d.allowed && nothing.is_empty(), "one in flight");
        // The handler holding it panics: unwinding drops the hold, which gives it back.
        let handler = std::panic::AssertUnwindSafe(move || {
            let _held = hold;
            panic!("the handler failed");
        });
        assert!(std::panic::catch_unwind(handler).is_err());
        let mut admitted = false;
        for _ in 0..1000 {
            actix_rt::task::yield_now().await;
            if let Ruling::Decided(d, _) = decide().await
                && d.allowed
            {
                admitted = true;
                break;
            }
        }
        assert!(admitted, "the unit came back");
        // The refusals took nothing from the minute: 10 - 2 admitted.
        let Ruling::Decided(d, _) = (decider.decide(
            &values,
            &policy,
            || Arc::from("/x"),
            Via::Route,
            Cost::ONE,
            Mode::Peek,
        ))
        .await
        else {
            panic!("decided");
        };
        assert_eq!(d.each()[0].remaining, 8);
    }

    /// The `t` and `Retry-After` of `n` requests `gap` apart under `limits`.
    fn headers_of(limits: Limit, n: usize, gap: Nanos) -> Vec<(u64, Option<u64>)> {
        let mut state = State::new(limits.algorithm());
        (0..n as u64)
            .map(|i| {
                let d = state.check(&limits, 1, 1_000 * NANOS_PER_SEC + i * gap);
                (reset_secs(&d), (!d.allowed).then(|| retry_after_secs(&d)))
            })
            .collect()
    }

    #[test]
    fn t_is_retry_after_on_every_refusal() {
        let ms = NANOS_PER_SEC / 1000;
        let bucket = Limit::new(Algorithm::TokenBucket, 3, 60);
        // The issue's case: the 4th request of a 3-per-60-s bucket waits 20 s, not 60.
        let seen = headers_of(bucket, 5, ms);
        assert_eq!(seen[3], (20, Some(20)));
        // With quota left, `t` is when all of it is back: one token (20 s), two (40 s).
        assert_eq!(&seen[..3], &[(20, None), (40, None), (20, None)]);
        // A sliding window with admissions 2.2 s apart: the 3rd refusal comes when the
        // first admission leaves the window.
        let sliding = Limit::new(Algorithm::SlidingWindow, 2, 60);
        let seen = headers_of(sliding, 3, 2_200 * ms);
        assert_eq!(seen[2], (56, Some(56)));
        for limits in [bucket, sliding, Limit::new(Algorithm::FixedWindow, 2, 60)] {
            for gap in [0, ms, 700 * ms, 2_200 * ms] {
                for (t, retry_after) in headers_of(limits, 8, gap) {
                    if let Some(r) = retry_after {
                        assert_eq!(t, r, "{limits:?} gap {gap}");
                    }
                }
            }
        }
    }

    #[test]
    fn escapes_policy_names() {
        let sf_string = |s: &str| {
            let mut out = String::new();
            push_sf_string(&mut out, s);
            out
        };
        assert_eq!(sf_string("/api/*"), "\"/api/*\"");
        assert_eq!(sf_string("/a\"b\\c"), "\"/a\\\"b\\\\c\"");
        assert_eq!(sf_string("/é"), "\"/%C3%A9\"");
    }
}
