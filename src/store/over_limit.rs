//! The quotas a shared store has refused lately, remembered until they could next
//! admit, so that a client flooding past its limit is refused here without asking the
//! store again (envoyproxy/ratelimit keeps such a local cache of over-limit keys).
//!
//! Exact: a store's refusal consumes nothing and says when a request of the same cost
//! could next pass (`retry_after`); nothing but time, a reset or a refund makes the
//! quota admit sooner. So a refusal is remembered from the moment the check was *sent*
//! (never later than the store decided it) for its `retry_after`, and only for
//! - a consuming check of the same cost, under the same limits (a config changed or an
//!   override's limits compare unequal, and are asked again);
//! - a quota whose units are never given back early: not one holding units until a
//!   request is done (concurrency), nor a part of a config whose limits count per
//!   different keys (a refused later part gives back what the earlier parts took).
//!
//! A reset forgets the client here at once (its check passes through this backend), and
//! on the other instances when they hear of it (`crate::cluster`); an instance that
//! missed the announcement refuses that client at most until the remembered time, never
//! admitting more than the limit. A refusal whose answer comes back after a reset
//! began is not remembered: it may predate the reset (see [`OverLimit::generation`]).
//! Memory is bounded by [`MOST`] entries, pruned of the expired ones as it fills, and
//! emptied if that is not enough (it only saves round trips).

use crate::clock::Nanos;
use crate::limiter::{Decision, Decisions, Named};
use std::collections::HashMap;
use std::hash::BuildHasher;

/// Refused quotas remembered at most, per backend.
pub const MOST: usize = 1 << 16;

/// One refused quota.
struct Refused {
    client: Box<str>,
    endpoint: Box<str>,
    limits: Box<[Named]>,
    cost: u64,
    /// When the refused check was sent, by this instance's clock.
    at: Nanos,
    /// Until when it refuses: `at` + the binding limit's `retry_after`.
    until: Nanos,
    decision: Decisions,
}

/// The refused quotas of one backend, by a hash of client and endpoint.
#[derive(Default)]
pub struct OverLimit {
    refused: HashMap<u64, Refused>,
    hasher: hashlink::DefaultHashBuilder,
    /// Counts what it was told to forget: a refusal asked before the last forget is not
    /// remembered.
    generation: u64,
}

impl OverLimit {
    fn key(&self, client: &str, endpoint: &str) -> u64 {
        self.hasher.hash_one((client, endpoint))
    }

    /// The refusal of a check of `cost` under `limits` at `now`, if one is remembered:
    /// the remembered decision with its times counted from `now`.
    pub fn refusal(
        &self,
        client: &str,
        endpoint: &str,
        limits: &[Named],
        cost: u64,
        now: Nanos,
    ) -> Option<Decisions> {
        let r = self.refused.get(&self.key(client, endpoint))?;
        let same = *r.client == *client
            && *r.endpoint == *endpoint
            && r.cost == cost
            && *r.limits == *limits;
        if !same || now >= r.until {
            return None;
        }
        let since = now.saturating_sub(r.at);
        // Each limit's times counted from now (one that refused and could admit by now
        // no longer refuses); what remains is as the store last said.
        let each = r.decision.each().iter().map(|d| Decision {
            allowed: d.allowed || d.retry_after <= since,
            retry_after: d.retry_after.saturating_sub(since),
            reset_after: d.reset_after.saturating_sub(since),
            ..*d
        });
        Some(Decisions::of(each.collect()).decided_at(now))
    }

    /// What to hand back to [`OverLimit::remember`] with the answer of a check sent now.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Remembers `decision`, a refusal of a check of `cost` under `limits` sent at `at`,
    /// when it was told to forget nothing since (`generation`, read when it was sent).
    pub fn remember(
        &mut self,
        client: &str,
        endpoint: &str,
        limits: &[Named],
        cost: u64,
        (at, generation): (Nanos, u64),
        decision: &Decisions,
    ) {
        if decision.allowed || decision.retry_after == 0 || generation != self.generation {
            return;
        }
        let until = at.saturating_add(decision.retry_after);
        if self.refused.len() >= MOST {
            self.refused.retain(|_, r| r.until > at);
            if self.refused.len() >= MOST / 2 {
                self.refused.clear();
            }
        }
        let key = self.key(client, endpoint);
        self.refused.insert(
            key,
            Refused {
                client: client.into(),
                endpoint: endpoint.into(),
                limits: limits.into(),
                cost,
                at,
                until,
                decision: decision.clone(),
            },
        );
    }

    /// Forgets the refusal of `client` under `endpoint` (its quota was reset or given
    /// units back).
    pub fn forget_quota(&mut self, client: &str, endpoint: &str) {
        self.generation += 1;
        let key = self.key(client, endpoint);
        if self.refused.get(&key).is_some_and(|r| *r.client == *client) {
            self.refused.remove(&key);
        }
    }

    /// Forgets every refusal of `client` (reset on another instance).
    pub fn forget_client(&mut self, client: &str) {
        self.generation += 1;
        self.refused.retain(|_, r| *r.client != *client);
    }

    /// Forgets everything (announcements may have been missed).
    pub fn clear(&mut self) {
        self.generation += 1;
        self.refused.clear();
    }

    pub fn len(&self) -> usize {
        self.refused.len()
    }

    pub fn is_empty(&self) -> bool {
        self.refused.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::NANOS_PER_SEC;
    use crate::limiter::{Algorithm, Limit, Mode, States};

    const S: Nanos = NANOS_PER_SEC;

    fn limits(quota: u64) -> Vec<Named> {
        vec![Named::requests(
            "default",
            Limit::new(Algorithm::FixedWindow, quota, 60),
            60,
        )]
    }

    /// A refusal by a limit of 2 that admits again after `retry_after`.
    fn refusing(retry_after: Nanos) -> Decision {
        Decision {
            allowed: false,
            limit: 2,
            remaining: 0,
            retry_after,
            reset_after: retry_after,
            debt: 0,
        }
    }

    #[test]
    fn a_refusal_is_remembered_until_the_quota_could_admit_and_no_longer() {
        let limits = limits(2);
        let mut state = States::new(&limits);
        let mut cache = OverLimit::default();
        let start = 1_000 * 60 * S;
        for i in 0..2 {
            assert!(state.evaluate(&limits, start + i, 1, Mode::Consume).allowed);
        }
        let refused = state.evaluate(&limits, start + 5 * S, 1, Mode::Consume);
        assert!(!refused.allowed);
        cache.remember(
            "c",
            "/a",
            &limits,
            1,
            (start + 5 * S, cache.generation()),
            &refused,
        );
        // Every later moment before the window ends: refused here exactly as the
        // limiter itself refuses, with the same times.
        for t in [start + 5 * S, start + 30 * S, start + 60 * S - 1] {
            let here = cache.refusal("c", "/a", &limits, 1, t).expect("remembered");
            let truth = state.evaluate(&limits, t, 1, Mode::Peek);
            assert!(!truth.allowed && !here.allowed);
            assert_eq!(here.retry_after, truth.retry_after, "at {t}");
            assert_eq!(here.remaining, truth.remaining);
            assert_eq!(here.at(), t);
        }
        // From the moment it could admit, the store is asked again.
        let open = start + 60 * S;
        assert!(state.evaluate(&limits, open, 1, Mode::Peek).allowed);
        assert!(cache.refusal("c", "/a", &limits, 1, open).is_none());
    }

    #[test]
    fn only_the_same_check_under_the_same_limits_is_answered() {
        let mut cache = OverLimit::default();
        let refused = Decisions::one(refusing(10 * S));
        cache.remember("c", "/a", &limits(2), 1, (0, cache.generation()), &refused);
        assert!(cache.refusal("c", "/a", &limits(2), 1, S).is_some());
        // A raised limit, another cost, client or endpoint: asked again.
        assert!(cache.refusal("c", "/a", &limits(3), 1, S).is_none());
        assert!(cache.refusal("c", "/a", &limits(2), 2, S).is_none());
        assert!(cache.refusal("d", "/a", &limits(2), 1, S).is_none());
        assert!(cache.refusal("c", "/b", &limits(2), 1, S).is_none());
        // Admissions are never remembered.
        let allowed = Decisions::one(Decision {
            allowed: true,
            ..*refused
        });
        cache.remember("d", "/a", &limits(2), 1, (0, cache.generation()), &allowed);
        assert!(cache.refusal("d", "/a", &limits(2), 1, S).is_none());
        // A refusal asked before a reset, answered after it, is not remembered.
        let asked = cache.generation();
        cache.forget_client("x");
        cache.remember("e", "/a", &limits(2), 1, (0, asked), &refused);
        assert!(cache.refusal("e", "/a", &limits(2), 1, S).is_none());
        // Forgotten by a reset of the quota, of the client, or all at once.
        cache.forget_quota("c", "/a");
        assert!(cache.is_empty());
        cache.remember("c", "/a", &limits(2), 1, (0, cache.generation()), &refused);
        cache.remember("c", "/b", &limits(2), 1, (0, cache.generation()), &refused);
        cache.remember("e", "/b", &limits(2), 1, (0, cache.generation()), &refused);
        cache.forget_client("c");
        assert_eq!(cache.len(), 1);
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn a_limit_whose_own_wait_has_passed_no_longer_refuses() {
        let both = Decisions::of([refusing(10 * S), refusing(3 * S)].into_iter().collect());
        let mut cache = OverLimit::default();
        let two = [limits(2), limits(2)].concat();
        cache.remember("c", "/a", &two, 1, (0, cache.generation()), &both);
        let at = |t| cache.refusal("c", "/a", &two, 1, t).unwrap();
        assert!(!at(2 * S).each()[1].allowed);
        let later = at(4 * S);
        assert!(!later.allowed && !later.each()[0].allowed && later.each()[1].allowed);
        assert_eq!(later.retry_after, 6 * S);
    }

    #[test]
    fn it_stays_bounded() {
        let mut cache = OverLimit::default();
        let refused = Decisions::one(refusing(S));
        let g = cache.generation();
        for i in 0..MOST {
            cache.remember(&format!("c{i}"), "/a", &limits(2), 1, (0, g), &refused);
        }
        assert_eq!(cache.len(), MOST);
        // Once they have expired, they make room.
        cache.remember("late", "/a", &limits(2), 1, (2 * S, g), &refused);
        assert_eq!(cache.len(), 1);
        // Full of refusals still running: emptied rather than searched again and again.
        for i in 0..MOST - 1 {
            cache.remember(&format!("d{i}"), "/a", &limits(2), 1, (2 * S, g), &refused);
        }
        assert_eq!(cache.len(), MOST);
        cache.remember("last", "/a", &limits(2), 1, (2 * S, g), &refused);
        assert_eq!(cache.len(), 1);
    }
}
