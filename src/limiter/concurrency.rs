//! Concurrency: at most `max_in_flight` units held at once. A request takes a unit when
//! admitted and gives it back when it is done (the response sent, the connection gone,
//! the upstream's body ended, or a lease released through `POST /v1/release`), which is a
//! [`Mode::Refund`](super::Mode::Refund) at the time it was taken. A unit never given
//! back (an instance that crashed while holding it, a lease never released) comes back
//! by itself `lease` after it was taken.
//!
//! So a held unit is an admission that expires after `lease` unless given back earlier:
//! exactly a sliding window of `max_in_flight` per `lease`, whose state, encoding,
//! refund and Redis script this module reuses (with keys of its own kinds, so that a
//! limit changed from one to the other starts fresh). Only `retry_after` differs: a unit
//! usually comes back when some request ends, which nobody can know, so a refusal says
//! to retry within [`RETRY_AFTER`] rather than at the latest lease's expiry.

use super::{Algo, Decision, Limit, Reader, SlidingWindow, SlidingWindowLimit, State, Take};
use crate::clock::{NANOS_PER_SEC, Nanos};

/// What a refusal by a concurrency limit says to wait, at most.
pub const RETRY_AFTER: Nanos = NANOS_PER_SEC;

/// A concurrency limit's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcurrencyLimit {
    /// Units held at once.
    pub max_in_flight: u64,
    /// How long a unit is held at most.
    pub lease: Nanos,
}

impl ConcurrencyLimit {
    /// The sliding window whose arithmetic it is.
    fn window(&self) -> SlidingWindowLimit {
        SlidingWindowLimit {
            limit: self.max_in_flight,
            window: self.lease,
        }
    }

    /// A decision of that window, as this limit answers it (see the module).
    pub fn settle(&self, mut d: Decision) -> Decision {
        d.retry_after = d.retry_after.min(RETRY_AFTER);
        d
    }
}

impl From<ConcurrencyLimit> for Limit {
    fn from(p: ConcurrencyLimit) -> Self {
        Limit::Concurrency(p)
    }
}

impl Algo for ConcurrencyLimit {
    type State = SlidingWindow;
    const REDIS_KINDS: &'static [&'static str] = &["cc", "ccn"];
    const REDIS_SCRIPT: &'static str = SlidingWindowLimit::REDIS_SCRIPT;

    fn evaluate(&self, state: &mut SlidingWindow, now: Nanos, cost: u64, take: Take) -> Decision {
        self.settle(self.window().evaluate(state, now, cost, take))
    }

    fn refund(&self, state: &mut SlidingWindow, at: Nanos, now: Nanos, cost: u64) {
        self.window().refund(state, at, now, cost)
    }

    fn quota(&self) -> u64 {
        self.max_in_flight
    }

    fn fresh_after(&self) -> Nanos {
        self.window().fresh_after()
    }

    fn redis_args(&self) -> Vec<u64> {
        self.window().redis_args()
    }

    fn encode(state: &SlidingWindow, out: &mut Vec<u8>) {
        SlidingWindowLimit::encode(state, out)
    }

    fn decode(r: &mut Reader) -> Option<SlidingWindow> {
        SlidingWindowLimit::decode(r)
    }

    fn state_of(state: &mut State) -> Option<&mut SlidingWindow> {
        match state {
            State::InFlight(s) => Some(s),
            _ => None,
        }
    }

    fn wrap(state: SlidingWindow) -> State {
        State::InFlight(state)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Mode;
    use super::*;
    use proptest::prelude::*;

    fn exports(max: u64) -> Limit {
        Limit::Concurrency(ConcurrencyLimit {
            max_in_flight: max,
            lease: 60 * NANOS_PER_SEC,
        })
    }

    #[test]
    fn holds_at_most_max_in_flight_and_a_release_lets_the_next_in() {
        let limit = exports(2);
        let mut state = State::new(limit.algorithm());
        let t0 = 1_800_000_000 * NANOS_PER_SEC;
        let a = state.check(&limit, 1, t0);
        assert!(a.allowed && state.check(&limit, 1, t0 + 5).allowed);
        let refused = state.check(&limit, 1, t0 + 10);
        assert!(!refused.allowed);
        // Retry soon: a unit comes back whenever a request ends.
        assert_eq!(refused.retry_after, RETRY_AFTER);
        // The first request ends: its unit is back at once.
        state.evaluate(&limit, t0 + 20, 1, Mode::Refund(t0));
        assert!(state.check(&limit, 1, t0 + 30).allowed);
        assert!(!state.check(&limit, 1, t0 + 40).allowed);
        // Units never given back come back when their lease ends.
        assert!(state.check(&limit, 1, t0 + 61 * NANOS_PER_SEC).allowed);
    }

    proptest! {
        /// Whatever the order in which requests start and end, never more than
        /// `max_in_flight` are held, a request is refused only when that many are, and
        /// once every admitted request has ended the whole quota is back.
        #[test]
        fn units_are_always_returned(
            max in 1u64..5,
            steps in prop::collection::vec((0u64..50_000_000, any::<bool>(), 0usize..8), 1..120),
        ) {
            let limit = exports(max);
            let mut state = State::new(limit.algorithm());
            let mut now = 1_800_000_000 * NANOS_PER_SEC;
            // The admitted requests still in flight, by the time they were admitted.
            let mut held: Vec<Nanos> = Vec::new();
            for (gap, start, pick) in steps {
                now += gap;
                if start || held.is_empty() {
                    let d = state.check(&limit, 1, now);
                    prop_assert_eq!(d.allowed, (held.len() as u64) < max);
                    if d.allowed {
                        held.push(now);
                    }
                } else {
                    let at = held.remove(pick % held.len());
                    state.evaluate(&limit, now, 1, Mode::Refund(at));
                }
                prop_assert_eq!(state.peek(&limit, 0, now).remaining, max - held.len() as u64);
            }
            for at in held.drain(..) {
                state.evaluate(&limit, now, 1, Mode::Refund(at));
            }
            prop_assert_eq!(state.peek(&limit, 1, now).remaining, max);
        }
    }
}
