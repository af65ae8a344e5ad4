//! Token bucket, computed as GCRA: the state is the *theoretical arrival time* `tat`, the
//! moment the bucket would be full again. Capacity `burst`, one token refilled every
//! `refill_interval` nanoseconds, continuously (fractional tokens are kept implicitly);
//! a new bucket starts full. Integer arithmetic makes `retry_after` exact.

use super::{Algo, Decision, Limit, Reader, State, Take};
use crate::clock::Nanos;

/// The longest debt a bucket keeps, in nanoseconds of refill (2^52, 52 days), when its
/// whole capacity is shorter: a debt and a request's tokens added to it stay below
/// 2^53, which Redis's Lua counts exactly.
pub const MAX_DEBT: u64 = 1 << 52;

/// A token bucket's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucketLimit {
    /// Capacity.
    pub burst: u64,
    /// Nanoseconds to refill one token (rounded up, so never faster than the configured
    /// rate).
    pub refill_interval: Nanos,
}

impl From<TokenBucketLimit> for Limit {
    fn from(p: TokenBucketLimit) -> Self {
        Limit::TokenBucket(p)
    }
}

impl Algo for TokenBucketLimit {
    type State = TokenBucket;
    const REDIS_KINDS: &'static [&'static str] = &["tb"];
    const REDIS_SCRIPT: &'static str = include_str!("token_bucket.lua");

    fn evaluate(&self, state: &mut TokenBucket, now: Nanos, cost: u64, take: Take) -> Decision {
        state.evaluate(self, now, cost, take)
    }

    fn refund(&self, state: &mut TokenBucket, at: Nanos, now: Nanos, cost: u64) {
        // The debt the check added (in the interval it was recorded with), less what has
        // dripped back in since: a check made since on a bucket that had refilled may
        // have taken that, and it is not given back twice. Never back before now.
        let interval = match state.interval {
            0 => self.refill_interval,
            i => i,
        };
        let elapsed = now.saturating_sub(at) as u128;
        let back = (cost as u128 * interval as u128).saturating_sub(elapsed);
        if state.tat > now as u128 && back > 0 {
            state.tat = state.tat.saturating_sub(back).max(now as u128);
        }
    }

    fn quota(&self) -> u64 {
        self.burst
    }

    fn fresh_after(&self) -> Nanos {
        self.refill_interval.saturating_mul(self.burst)
    }

    fn redis_args(&self) -> Vec<u64> {
        vec![self.burst, self.refill_interval]
    }

    fn encode(state: &TokenBucket, out: &mut Vec<u8>) {
        out.extend_from_slice(&state.tat.to_le_bytes());
        out.extend_from_slice(&state.interval.to_le_bytes());
    }

    fn decode(r: &mut Reader) -> Option<TokenBucket> {
        Some(TokenBucket {
            tat: r.u128()?,
            interval: r.u64()?,
        })
    }

    fn state_of(state: &mut State) -> Option<&mut TokenBucket> {
        match state {
            State::Bucket(s) => Some(s),
            _ => None,
        }
    }

    fn wrap(state: TokenBucket) -> State {
        State::Bucket(state)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// When the bucket is full again. `u128` because `burst * refill_interval` can reach
    /// 10^9 tokens times a year in nanoseconds.
    tat: u128,
    /// The refill interval `tat` was computed with; when the config's rate changes, the
    /// recorded debt is rescaled so consumption carries over.
    interval: Nanos,
}

impl TokenBucket {
    pub(super) fn evaluate(
        &mut self,
        limits: &TokenBucketLimit,
        now: Nanos,
        cost: u64,
        take: Take,
    ) -> Decision {
        let t = limits.refill_interval as u128;
        let capacity = limits.burst as u128 * t;
        let now128 = now as u128;
        // Debt: how far the bucket is from full, in time.
        let mut debt = self.tat.saturating_sub(now128);
        if self.interval != 0 && self.interval != limits.refill_interval {
            // Tokens owed times the new interval; a product past u128 is far beyond any
            // capacity: an empty bucket.
            debt = debt
                .checked_mul(t)
                .map_or(capacity, |d| d / self.interval as u128);
        }
        // A debt past the capacity (a charge overdrew the bucket, or its capacity was
        // lowered) is kept: it refuses until refilled, as a window keeps what it counted.
        self.interval = limits.refill_interval;

        // As `Take::decide`, in time rather than units. `cost * t` stays far inside
        // u128: both are below 2^64.
        let (allowed, need) = match take {
            Take::Always => (true, 1),
            Take::Nothing | Take::IfFits => {
                let need = cost.max(1);
                (debt + need as u128 * t <= capacity, need)
            }
        };
        debt = debt.saturating_add(take.taken(allowed, cost) as u128 * t);
        // A debt is kept up to 2^52 ns of refill (52 days), or a whole bucket if that is
        // longer: what Redis's Lua still counts exactly with a request's tokens added,
        // and expires.
        debt = debt.min(capacity.max(MAX_DEBT as u128));
        self.tat = now128.saturating_add(debt);
        let remaining = (capacity.saturating_sub(debt) / t) as u64;
        let need = need as u128 * t;
        let short = debt.saturating_add(need).saturating_sub(capacity);
        let retry_after = match short {
            0 => 0,
            // Never fits: the best it gets is a full bucket.
            _ if need > capacity => debt,
            _ => short,
        };
        let nanos = |d: u128| d.min(Nanos::MAX as u128) as Nanos;
        Decision {
            allowed,
            limit: limits.burst,
            remaining,
            retry_after: nanos(retry_after),
            reset_after: nanos(debt),
            // Tokens owed past an empty bucket, rounded up.
            debt: debt
                .saturating_sub(capacity)
                .div_ceil(t)
                .min(u64::MAX as u128) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Algorithm;
    use super::*;
    use crate::clock::NANOS_PER_SEC;
    use proptest::prelude::*;

    fn limits(burst: u64, per_sec: u64) -> TokenBucketLimit {
        TokenBucketLimit {
            burst,
            refill_interval: NANOS_PER_SEC / per_sec,
        }
    }

    #[test]
    fn allows_a_full_burst_then_refills_one_token_per_interval() {
        let l = limits(5, 2); // one token every 500 ms
        let mut s = TokenBucket::default();
        let t0 = 10 * NANOS_PER_SEC;
        for remaining in (0..5).rev() {
            let d = s.evaluate(&l, t0, 1, Take::IfFits);
            assert!(d.allowed);
            assert_eq!(d.remaining, remaining);
        }
        let d = s.evaluate(&l, t0, 1, Take::IfFits);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, 500_000_000);
        assert_eq!(d.reset_after, 5 * 500_000_000);
        assert!(!s.evaluate(&l, t0 + 499_999_999, 1, Take::IfFits).allowed);
        let d = s.evaluate(&l, t0 + 500_000_000, 1, Take::IfFits);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        // Fractional refill is kept: 1.5 intervals later one token is back, half of the
        // next one is on its way.
        let d = s.evaluate(&l, t0 + 1_250_000_000, 1, Take::Nothing);
        assert_eq!(d.remaining, 1);
    }

    #[test]
    fn a_changed_rate_keeps_the_consumption() {
        let mut s = TokenBucket::default();
        for _ in 0..4 {
            s.evaluate(&limits(10, 1), 0, 1, Take::IfFits);
        }
        // Four tokens used; twice the rate: the debt is rescaled, still four tokens.
        assert_eq!(s.evaluate(&limits(10, 2), 0, 1, Take::Nothing).remaining, 6);
        // A smaller bucket keeps the debt past its capacity, as a window keeps what it
        // counted: it shows none left (never fewer), and one token fits once two have
        // dripped back (4 owed, 3 held).
        let d = s.evaluate(&limits(3, 2), 0, 1, Take::Nothing);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after, 1_000_000_000);
    }

    proptest! {
        #[test]
        fn admits_no_more_than_burst_plus_refill(
            burst in 1u64..10,
            per_sec in 1u64..20,
            gaps in prop::collection::vec(0u64..400_000_000, 1..200),
        ) {
            let l = limits(burst, per_sec);
            let mut state = State::new(Algorithm::TokenBucket);
            let start = 1_700_000_000 * NANOS_PER_SEC;
            let mut now = start;
            let mut admitted = 0u64;
            for gap in gaps {
                now += gap;
                let d = state.check(&l.into(), 1, now);
                if d.allowed {
                    admitted += 1;
                } else {
                    let mut probe = state.clone();
                    prop_assert!(!probe.check(&l.into(), 1, now + d.retry_after - 1).allowed);
                    prop_assert!(probe.check(&l.into(), 1, now + d.retry_after).allowed);
                }
                let refilled = (now - start) / l.refill_interval;
                prop_assert!(admitted <= burst + refilled);
                prop_assert_eq!(d.remaining == 0, d.retry_after > 0);
            }
        }
    }
}
