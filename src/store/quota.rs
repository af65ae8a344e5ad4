//! The quota backend: where a client's quotas are kept and decided. One interface, two
//! implementations: [`Memory`] (here: the limiter's own state decides) and
//! [`super::redis::Redis`] (a Lua script decides in Redis, shared by every instance).
//! `app.rs` picks one, once; the registry and the limiters see only `dyn QuotaBackend`.
//!
//! A backend decides either at once ([`Verdict::Now`]) or later ([`Verdict::Later`]);
//! whoever asked treats both the same way (count, stream, answer), so statistics, feeds
//! and client status are built one way for every backend.

use crate::clock::Nanos;
use crate::limiter::{Decisions, Mode, Named, States};
use crate::policy::Policy;
use futures_util::future::BoxFuture;
use std::sync::Arc;

/// The quota a check is about: one client's, under one config (by reference to what
/// the caller holds, so a backend that keeps them past the call clones two `Arc`s).
#[derive(Debug, Clone, Copy)]
pub struct Quota<'a> {
    pub client: &'a Arc<str>,
    /// The config: its identity (`endpoint`) names the quota, and all its `limits` must
    /// admit a check.
    pub policy: &'a Arc<Policy>,
}

/// The backend could not decide (unreachable, timed out, or its breaker is open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the quota backend is unavailable")
    }
}

/// A backend's answer: now, or once the store has answered.
pub enum Verdict {
    Now(Decisions),
    Later(BoxFuture<'static, Result<Decisions, Unavailable>>),
}

impl Verdict {
    /// The decision, however it comes.
    pub async fn resolve(self) -> Result<Decisions, Unavailable> {
        match self {
            Verdict::Now(d) => Ok(d),
            Verdict::Later(f) => f.await,
        }
    }
}

/// Where quotas live. A new backend is one module implementing this, and one arm in
/// `app.rs` that picks it.
pub trait QuotaBackend: Send + Sync + 'static {
    /// Decides `cost` units of `quota` at `now`, consuming them when `mode` says so and
    /// they all fit under every limit (never a part): the decision of
    /// [`States::evaluate`]. `local` is the limiter's own state for this quota; a backend
    /// that keeps quotas elsewhere leaves it alone.
    fn check(
        &self,
        local: &mut States,
        quota: Quota<'_>,
        cost: u64,
        mode: Mode,
        now: Nanos,
    ) -> Verdict;

    /// When the quota of `local` will be as good as fresh, so its snapshot may be
    /// forgotten (it still names the client's endpoints until then).
    fn fresh_at(&self, local: &mut States, limits: &[Named], now: Nanos) -> Nanos;

    /// Starts the backend's connections; called once on each registry shard's thread.
    fn start(&self) {}

    /// The backend's name and whether it can decide now, for the health check; `None`
    /// for a backend that cannot be unreachable.
    fn reachable(&self) -> Option<(&'static str, bool)> {
        None
    }

    /// Marks `id` (of `client`'s lease) as used, for `ttl` after `now`: `true` the first
    /// time, `false` while it is marked (a lease given back twice).
    fn first_use(
        &self,
        client: &str,
        id: u64,
        ttl: Nanos,
        now: Nanos,
    ) -> BoxFuture<'static, Result<bool, Unavailable>>;

    /// Forgets what it remembers of `client`'s quotas (see
    /// [`super::over_limit::OverLimit`]): another instance reset them. `None`: all
    /// clients.
    fn forget(&self, _client: Option<&str>) {}
}

/// The leases given back in this process, with when each may be forgotten.
static USED: std::sync::Mutex<Option<std::collections::HashMap<u64, Nanos>>> =
    std::sync::Mutex::new(None);

/// Quotas in this process: the limiter's own state decides, at once.
#[derive(Debug, Default, Clone, Copy)]
pub struct Memory;

impl QuotaBackend for Memory {
    fn check(
        &self,
        local: &mut States,
        quota: Quota<'_>,
        cost: u64,
        mode: Mode,
        now: Nanos,
    ) -> Verdict {
        Verdict::Now(local.evaluate(&quota.policy.limits, now, cost, mode))
    }

    fn fresh_at(&self, local: &mut States, limits: &[Named], now: Nanos) -> Nanos {
        local.fresh_at(limits, now)
    }

    fn first_use(
        &self,
        _client: &str,
        id: u64,
        ttl: Nanos,
        now: Nanos,
    ) -> BoxFuture<'static, Result<bool, Unavailable>> {
        let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
        let used = used.get_or_insert_with(Default::default);
        // Forgotten once their leases have ended: what is marked is bounded by the
        // leases of the last `ttl`.
        if used.len() >= 1024 && used.len().is_power_of_two() {
            used.retain(|_, until| *until > now);
        }
        let first = match used.get(&id) {
            Some(until) if *until > now => false,
            _ => {
                used.insert(id, now.saturating_add(ttl));
                true
            }
        };
        Box::pin(async move { Ok(first) })
    }
}
