//! The rate-limiting algorithms: pure code over `(state, limit, now)`.
//!
//! A [`Limit`] is a closed enum whose variants carry their algorithm's own parameters,
//! and a [`State`] one whose variants hold its state. Each algorithm is one module
//! owning its parameters, its state, their arithmetic, the state's binary encoding, and
//! its Redis script and keys (the [`Algo`] trait says what a module provides). Adding an
//! algorithm means a new module implementing [`Algo`], a variant in [`Algorithm`],
//! [`Limit`] and [`State`], and one arm in each of their `match`es:
//! `Algorithm::index`, `Algorithm::as_str`, `Algorithm::redis_kinds`,
//! `Algorithm::redis_script`, `Limit::new`, `Limit::algorithm`, `Limit::quota`,
//! `Limit::fresh_after`, `Limit::redis_args`, `Limit::settle`, `State::new`,
//! `State::algorithm`, `State::evaluate`, `State::encode` and `State::decode` (and the
//! script's in `store::redis::Scripts`).
//! None has a catch-all arm, so the compiler lists every place to touch. Nothing in this
//! module reads the clock, allocates per decision (beyond the sliding window's growth)
//! or does I/O, so it is unit- and property-tested directly.

mod concurrency;
mod fixed_window;
mod several;
mod sliding_window;
mod token_bucket;

pub use concurrency::ConcurrencyLimit;
pub use fixed_window::{Calendar, FixedWindow, FixedWindowLimit};
pub use several::{DEFAULT_LIMIT, Decisions, MAX_LIMITS, Named, States, Unit};
pub use sliding_window::{SlidingWindow, SlidingWindowLimit, granule_ms};
pub use token_bucket::{TokenBucket, TokenBucketLimit};

use crate::clock::{NANOS_PER_SEC, Nanos};
use serde::{Deserialize, Serialize};

/// The algorithms a config may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    SlidingWindow,
    FixedWindow,
    TokenBucket,
    /// Requests in flight (see [`ConcurrencyLimit`]).
    Concurrency,
}

impl Algorithm {
    pub const ALL: [Algorithm; 4] = [
        Algorithm::SlidingWindow,
        Algorithm::FixedWindow,
        Algorithm::TokenBucket,
        Algorithm::Concurrency,
    ];

    /// Its place in [`Algorithm::ALL`]: how snapshots and the Redis script of several
    /// limits name it.
    pub fn index(self) -> usize {
        match self {
            Algorithm::SlidingWindow => 0,
            Algorithm::FixedWindow => 1,
            Algorithm::TokenBucket => 2,
            Algorithm::Concurrency => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::Concurrency => "concurrency",
        }
    }

    /// Every algorithm's name, in the order of [`Algorithm::ALL`]: the one list that
    /// errors and the dashboard show.
    pub fn names() -> impl Iterator<Item = &'static str> {
        Self::ALL.into_iter().map(Self::as_str)
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Its Redis script (see [`Algo::REDIS_SCRIPT`]).
    pub fn redis_script(self) -> &'static str {
        match self {
            Algorithm::SlidingWindow => SlidingWindowLimit::REDIS_SCRIPT,
            Algorithm::FixedWindow => FixedWindowLimit::REDIS_SCRIPT,
            Algorithm::TokenBucket => TokenBucketLimit::REDIS_SCRIPT,
            Algorithm::Concurrency => ConcurrencyLimit::REDIS_SCRIPT,
        }
    }

    /// The suffixes of the Redis keys this algorithm keeps a quota's state under.
    pub fn redis_kinds(self) -> &'static [&'static str] {
        match self {
            Algorithm::SlidingWindow => SlidingWindowLimit::REDIS_KINDS,
            Algorithm::FixedWindow => FixedWindowLimit::REDIS_KINDS,
            Algorithm::TokenBucket => TokenBucketLimit::REDIS_KINDS,
            Algorithm::Concurrency => ConcurrencyLimit::REDIS_KINDS,
        }
    }
}

/// What an algorithm's module provides, implemented by its parameters.
pub trait Algo: Copy + Into<Limit> {
    /// One key's state.
    type State: Default + Clone + PartialEq + std::fmt::Debug;
    /// The suffixes of its Redis keys (the first holds the state; see `store::redis`).
    const REDIS_KINDS: &'static [&'static str];
    /// Its Redis script, run after `store/redis/prelude.lua`; the file says what its keys
    /// and arguments are.
    const REDIS_SCRIPT: &'static str;

    /// Checks `cost` units at `now`, and takes them as `take` says (see [`Take`]).
    fn evaluate(&self, state: &mut Self::State, now: Nanos, cost: u64, take: Take) -> Decision;
    /// Gives back, at `now`, `cost` units that a check at `at` consumed, as if it had
    /// not been made (see [`Mode::Refund`]): never more than it took or than is still
    /// counted of it, and never so that units recorded later than they were would count
    /// for less time.
    fn refund(&self, state: &mut Self::State, at: Nanos, now: Nanos, cost: u64);
    /// The quota reported in headers.
    fn quota(&self) -> u64;
    /// The longest a state can take, after its last check, to be as good as fresh.
    fn fresh_after(&self) -> Nanos;
    /// The script's own arguments, from `ARGV[5]` on.
    fn redis_args(&self) -> Vec<u64>;
    fn encode(state: &Self::State, out: &mut Vec<u8>);
    fn decode(r: &mut Reader) -> Option<Self::State>;
    /// Its variant of [`State`], if `state` is of this algorithm.
    fn state_of(state: &mut State) -> Option<&mut Self::State>;
    fn wrap(state: Self::State) -> State;
}

/// One limit: an algorithm and its own parameters, already validated (see
/// `config::ConfigSpec::limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    SlidingWindow(SlidingWindowLimit),
    FixedWindow(FixedWindowLimit),
    TokenBucket(TokenBucketLimit),
    Concurrency(ConcurrencyLimit),
}

impl Limit {
    /// A limit of `limit` requests per `window_secs`; a token bucket gets the defaults
    /// (capacity `limit`, one token every `window / limit`, rounded up so never faster
    /// than that rate).
    pub fn new(algorithm: Algorithm, limit: u64, window_secs: u64) -> Self {
        let window = window_secs * NANOS_PER_SEC;
        match algorithm {
            Algorithm::SlidingWindow => Limit::SlidingWindow(SlidingWindowLimit { limit, window }),
            Algorithm::FixedWindow => Limit::FixedWindow(FixedWindowLimit {
                limit,
                window,
                calendar: None,
            }),
            Algorithm::TokenBucket => Limit::TokenBucket(TokenBucketLimit {
                burst: limit,
                refill_interval: window.div_ceil(limit).max(1),
            }),
            Algorithm::Concurrency => Limit::Concurrency(ConcurrencyLimit {
                max_in_flight: limit,
                lease: window,
            }),
        }
    }

    /// Whether a request holds what it takes of this limit only until it is done (and
    /// gives it back then), rather than for good.
    pub fn is_held(&self) -> bool {
        matches!(self, Limit::Concurrency(_))
    }

    /// A decision of its Redis script, as this limit answers it (see
    /// [`ConcurrencyLimit::settle`]; the others answer the script's as it is).
    pub fn settle(&self, d: Decision) -> Decision {
        match self {
            Limit::Concurrency(p) => p.settle(d),
            Limit::SlidingWindow(_) | Limit::FixedWindow(_) | Limit::TokenBucket(_) => d,
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Limit::SlidingWindow(_) => Algorithm::SlidingWindow,
            Limit::FixedWindow(_) => Algorithm::FixedWindow,
            Limit::TokenBucket(_) => Algorithm::TokenBucket,
            Limit::Concurrency(_) => Algorithm::Concurrency,
        }
    }

    /// The quota reported in headers: the window limit, or the bucket's capacity.
    pub fn quota(&self) -> u64 {
        match self {
            Limit::SlidingWindow(p) => p.quota(),
            Limit::FixedWindow(p) => p.quota(),
            Limit::TokenBucket(p) => p.quota(),
            Limit::Concurrency(p) => p.quota(),
        }
    }

    /// The longest a state can take, after its last check, to be as good as fresh: one
    /// window (and the granule a sliding window rounds up to), or the time to refill a
    /// whole bucket. For a state kept elsewhere (Redis), whose exact reset is unknown.
    pub fn fresh_after(&self) -> Nanos {
        match self {
            Limit::SlidingWindow(p) => p.fresh_after(),
            Limit::FixedWindow(p) => p.fresh_after(),
            Limit::TokenBucket(p) => p.fresh_after(),
            Limit::Concurrency(p) => p.fresh_after(),
        }
    }

    /// The Redis script's own arguments (see [`Algo::redis_args`]).
    pub fn redis_args(&self) -> Vec<u64> {
        match self {
            Limit::SlidingWindow(p) => p.redis_args(),
            Limit::FixedWindow(p) => p.redis_args(),
            Limit::TokenBucket(p) => p.redis_args(),
            Limit::Concurrency(p) => p.redis_args(),
        }
    }
}

/// Whether a check takes what it asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Consume the cost if all of it fits (what a request does).
    #[default]
    Consume,
    /// Report what a request of that cost would get, consuming nothing.
    Peek,
    /// Give the whole quota back (an operator's reset), then report as a peek.
    Reset,
    /// Give back the cost that a check consumed at the given time (the decision's
    /// [`Decisions::at`]), because another limit of the same request refused it, the
    /// request ended (a concurrency limit), or it used less than its estimate; then
    /// report as a peek. Nothing is given back from a window that has ended.
    Refund(Nanos),
    /// Take the cost whatever is left: what a request used, known only once it is done.
    /// Past the limit the quota is overdrawn (`remaining` shows 0, never less) and
    /// refuses until the debt has aged out of the window or been refilled; the decision
    /// is `allowed` (the charge was made) and its `retry_after` is when one unit would
    /// pass again.
    Charge,
}

impl Mode {
    /// Whether it takes units (and so makes a state where there was none).
    pub fn takes(self) -> bool {
        matches!(self, Mode::Consume | Mode::Charge)
    }
}

/// What an algorithm does with a check's cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Nothing: a peek.
    Nothing,
    /// All of it if all of it fits, else nothing.
    IfFits,
    /// All of it, fitting or not (see [`Mode::Charge`]).
    Always,
}

impl Take {
    /// Whether a check of `cost` with `used` of `limit` taken is allowed, and the units a
    /// retry estimate is for. A cost of 0 takes nothing and is allowed while at least
    /// one unit is left (a balance is positive); a charge is always made, and its retry
    /// estimate is for one unit.
    fn decide(self, used: u64, cost: u64, limit: u64) -> (bool, u64) {
        match self {
            Take::Always => (true, 1),
            Take::Nothing | Take::IfFits => (fits(used, cost.max(1), limit), cost.max(1)),
        }
    }

    /// The units a check that was `allowed` takes of `cost`.
    fn taken(self, allowed: bool, cost: u64) -> u64 {
        match self {
            Take::Always => cost,
            Take::IfFits if allowed => cost,
            Take::IfFits | Take::Nothing => 0,
        }
    }
}

/// The largest integer Redis's Lua (a double) holds exactly, 2^53 - 1: how far a
/// charge may push a fixed window's count, so that both backends keep the same numbers
/// (a token bucket's debt stops earlier: `token_bucket::MAX_DEBT`).
pub const MAX_EXACT: u64 = (1 << 53) - 1;

/// Whether `cost` more units fit next to `used` under `limit`.
fn fits(used: u64, cost: u64, limit: u64) -> bool {
    used.checked_add(cost).is_some_and(|n| n <= limit)
}

/// The outcome of one check; headers and bodies are built from it, never recomputed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    /// Units still available right now, after this check.
    pub remaining: u64,
    /// Time until a request of the same cost (at least 1) would be allowed; zero while
    /// one would be allowed now. For a cost above the quota, which never fits, the time
    /// until the quota is fully restored.
    pub retry_after: Nanos,
    /// Time until the quota is fully restored.
    pub reset_after: Nanos,
    /// Units used past the limit: the debt of a quota overdrawn by a charge (or by a
    /// limit lowered below what was used), repaid by `retry_after`; 0 otherwise.
    pub debt: u64,
}

impl Decision {
    /// When the quota is fully restored, in whole seconds since the epoch, rounded up
    /// (never earlier than the truth): `X-RateLimit-Reset`, and every body's
    /// `reset_time`, so that both name the same second.
    pub fn reset_at_secs(&self, now: Nanos) -> u64 {
        crate::clock::ceil_secs(now.saturating_add(self.reset_after))
    }

    /// [`Decision::reset_at_secs`] as an RFC 3339 timestamp, for bodies.
    pub fn reset_time(&self, now: Nanos) -> String {
        crate::clock::rfc3339(self.reset_at_secs(now).saturating_mul(NANOS_PER_SEC))
    }
}

/// One client's state for one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Sliding(SlidingWindow),
    Fixed(FixedWindow),
    Bucket(TokenBucket),
    /// Held units of a concurrency limit.
    InFlight(SlidingWindow),
}

impl State {
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::SlidingWindow => State::Sliding(SlidingWindow::default()),
            Algorithm::FixedWindow => State::Fixed(FixedWindow::default()),
            Algorithm::TokenBucket => State::Bucket(TokenBucket::default()),
            Algorithm::Concurrency => State::InFlight(SlidingWindow::default()),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            State::Sliding(_) => Algorithm::SlidingWindow,
            State::Fixed(_) => Algorithm::FixedWindow,
            State::Bucket(_) => Algorithm::TokenBucket,
            State::InFlight(_) => Algorithm::Concurrency,
        }
    }

    /// Checks a request of `cost` units and, when all of them fit, consumes them (never
    /// a part: a request that does not fit consumes nothing). A cost of 0 consumes
    /// nothing and is allowed while at least one unit is left. A state of another
    /// algorithm (the config's algorithm was changed) is replaced by a fresh one first.
    pub fn check(&mut self, limit: &Limit, cost: u64, now: Nanos) -> Decision {
        self.evaluate(limit, now, cost, Mode::Consume)
    }

    /// The decision a request of `cost` would get now, consuming nothing: the state's
    /// later decisions are the same as if the peek had not been made.
    pub fn peek(&mut self, limit: &Limit, cost: u64, now: Nanos) -> Decision {
        self.evaluate(limit, now, cost, Mode::Peek)
    }

    /// [`State::check`] or [`State::peek`], by `mode`.
    pub fn evaluate(&mut self, limit: &Limit, now: Nanos, cost: u64, mode: Mode) -> Decision {
        match limit {
            Limit::SlidingWindow(p) => self.evaluate_with(p, now, cost, mode),
            Limit::FixedWindow(p) => self.evaluate_with(p, now, cost, mode),
            Limit::TokenBucket(p) => self.evaluate_with(p, now, cost, mode),
            Limit::Concurrency(p) => self.evaluate_with(p, now, cost, mode),
        }
    }

    fn evaluate_with<A: Algo>(&mut self, p: &A, now: Nanos, cost: u64, mode: Mode) -> Decision {
        if mode == Mode::Reset || A::state_of(self).is_none() {
            *self = A::wrap(A::State::default());
        }
        let take = match mode {
            Mode::Consume => Take::IfFits,
            Mode::Charge => Take::Always,
            Mode::Peek | Mode::Reset | Mode::Refund(_) => Take::Nothing,
        };
        match A::state_of(self) {
            // A refund then reports as a peek that leaves the state as the refund left
            // it (as the Redis scripts do, which give back at the check's time).
            Some(state) => match mode {
                Mode::Refund(at) => {
                    p.refund(state, at, now, cost);
                    p.evaluate(&mut state.clone(), now, cost, Take::Nothing)
                }
                _ => p.evaluate(state, now, cost, take),
            },
            // Not reached: made of this algorithm just above.
            None => p.evaluate(&mut A::State::default(), now, cost, take),
        }
    }

    /// A compact binary form for the snapshot table.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            State::Sliding(s) => SlidingWindowLimit::encode(s, &mut out),
            State::Fixed(s) => FixedWindowLimit::encode(s, &mut out),
            State::Bucket(s) => TokenBucketLimit::encode(s, &mut out),
            State::InFlight(s) => ConcurrencyLimit::encode(s, &mut out),
        }
        out
    }

    /// The inverse of [`State::encode`]; `None` for bytes it did not write.
    pub fn decode(algorithm: Algorithm, bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        let state = match algorithm {
            Algorithm::SlidingWindow => State::Sliding(SlidingWindowLimit::decode(&mut r)?),
            Algorithm::FixedWindow => State::Fixed(FixedWindowLimit::decode(&mut r)?),
            Algorithm::TokenBucket => State::Bucket(TokenBucketLimit::decode(&mut r)?),
            Algorithm::Concurrency => State::InFlight(ConcurrencyLimit::decode(&mut r)?),
        };
        r.0.is_empty().then_some(state)
    }
}

/// A cursor over stored bytes: little-endian for [`State::decode`], big-endian (`be_`)
/// for the stored form of a client's states (`snapshot::EndpointSnapshot::decode_all`,
/// whose bytes a migration also writes in SQL, as hex).
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader(bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }

    pub fn u8(&mut self) -> Option<u8> {
        self.take().map(u8::from_be_bytes)
    }
    pub fn be_u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_be_bytes)
    }
    pub fn be_u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_be_bytes)
    }
    pub fn be_u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_be_bytes)
    }
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, tail) = self.0.split_first_chunk::<N>()?;
        self.0 = tail;
        Some(*head)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    fn u128(&mut self) -> Option<u128> {
        self.take().map(u128::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Limits of `algorithm` with a small quota over a window of 1 to 4 s.
    fn small_limits(algorithm: Algorithm, quota: u64, window_secs: u64) -> Limit {
        Limit::new(algorithm, quota, window_secs)
    }

    /// Whether admitting `cost` at `now` after `admitted` (time, units) keeps the
    /// algorithm's guarantee.
    fn within_guarantee(l: &Limit, admitted: &[(Nanos, u64)], now: Nanos) -> bool {
        let units = |keep: &dyn Fn(Nanos) -> bool| -> u64 {
            admitted
                .iter()
                .filter(|(t, _)| keep(*t))
                .map(|(_, n)| n)
                .sum()
        };
        match l {
            // Never more than the limit in any window ending now.
            Limit::SlidingWindow(l) => units(&|t| t + l.window > now) <= l.limit,
            // Never more than the limit in the aligned window of now.
            Limit::FixedWindow(l) => units(&|t| t / l.window == now / l.window) <= l.limit,
            // In any interval from an earlier admission to now: the burst plus what
            // dripped in meanwhile.
            Limit::TokenBucket(l) => admitted.iter().all(|&(from, _)| {
                units(&|t| t >= from) <= l.burst + (now - from) / l.refill_interval
            }),
            // Never more held at once (none given back here: each for its lease).
            Limit::Concurrency(l) => units(&|t| t + l.lease > now) <= l.max_in_flight,
        }
    }

    proptest! {
        /// With costs: never more units than the guarantee allows, no partial admission,
        /// and `retry_after` is exactly when a request of that cost passes.
        #[test]
        fn costs_keep_the_guarantee_and_retry_after_is_exact(
            algorithm in prop::sample::select(Algorithm::ALL.to_vec()),
            quota in 1u64..8,
            window_secs in 1u64..4,
            steps in prop::collection::vec((0u64..900_000_000, 0u64..9), 1..120),
        ) {
            let l = small_limits(algorithm, quota, window_secs);
            let mut state = State::new(algorithm);
            let mut now = 1_700_000_000 * NANOS_PER_SEC + 7;
            let mut admitted = Vec::new();
            for (gap, cost) in steps {
                now += gap;
                let cost = cost.min(quota);
                let before = state.peek(&l, 0, now).remaining;
                let d = state.check(&l, cost, now);
                if d.allowed {
                    prop_assert_eq!(d.remaining, before - cost);
                    if cost > 0 {
                        admitted.push((now, cost));
                    }
                    prop_assert!(within_guarantee(&l, &admitted, now));
                } else {
                    // Nothing was taken; a cost of 0 needs one unit left.
                    prop_assert_eq!(d.remaining, before);
                    prop_assert!(cost.max(1) > before);
                }
                let need = cost.max(1);
                prop_assert_eq!(d.retry_after > 0, d.remaining < need);
                if d.retry_after > 0 {
                    let mut probe = state.clone();
                    prop_assert!(!probe.check(&l, need, now + d.retry_after - 1).allowed);
                    // A concurrency limit says to retry soon, however long its leases.
                    if !l.is_held() {
                        let mut probe = state.clone();
                        prop_assert!(probe.check(&l, need, now + d.retry_after).allowed);
                    }
                }
            }
        }

        /// Charges (usage known after the fact) always apply, even past the limit:
        /// `remaining` drops by the charge and stops at 0, an overdrawn quota refuses
        /// every check (a cost of 0 too) until the debt has aged out or been refilled,
        /// `retry_after` is exactly then, and every admission still keeps the
        /// guarantee counting what was charged.
        #[test]
        fn charges_overdraw_and_the_debt_is_repaid_exactly_when_retry_after_says(
            algorithm in prop::sample::select(vec![
                Algorithm::SlidingWindow, Algorithm::FixedWindow, Algorithm::TokenBucket,
            ]),
            quota in 1u64..8,
            window_secs in 1u64..4,
            steps in prop::collection::vec((0u64..900_000_000, 0u64..20, any::<bool>()), 1..120),
        ) {
            let l = small_limits(algorithm, quota, window_secs);
            let mut state = State::new(algorithm);
            let mut now = 1_700_000_000 * NANOS_PER_SEC + 7;
            let mut taken = Vec::new();
            for (gap, cost, charge) in steps {
                now += gap;
                let before = state.peek(&l, 0, now).remaining;
                let d = match charge {
                    true => state.evaluate(&l, now, cost, Mode::Charge),
                    false => state.check(&l, cost.min(quota), now),
                };
                prop_assert!(d.remaining <= quota);
                if charge {
                    prop_assert!(d.allowed);
                    prop_assert_eq!(d.remaining, before.saturating_sub(cost));
                    taken.push((now, cost));
                } else if d.allowed {
                    taken.push((now, cost.min(quota)));
                    prop_assert!(within_guarantee(&l, &taken, now));
                }
                // When one unit passes again: exactly `retry_after` after a charge (for
                // one unit) or a check (for its cost, here 1).
                let one = match charge { true => d, false => state.peek(&l, 1, now) };
                prop_assert_eq!(one.retry_after > 0, one.remaining == 0);
                prop_assert_eq!(state.peek(&l, 0, now).allowed, one.retry_after == 0);
                if one.retry_after > 0 {
                    let at = now + one.retry_after;
                    prop_assert!(!state.clone().check(&l, 1, at - 1).allowed);
                    prop_assert!(!state.clone().check(&l, 0, at - 1).allowed);
                    prop_assert!(state.clone().check(&l, 1, at).allowed);
                }
            }
        }

        /// Reconciling an estimate: giving back part or all of what a check took never
        /// frees more than it took. With the same charges made next to it, the quota
        /// never has more left than if the check had never been made, and giving back
        /// all of it right away leaves exactly that.
        #[test]
        fn a_refund_never_frees_more_than_the_check_took(
            algorithm in prop::sample::select(vec![
                Algorithm::SlidingWindow, Algorithm::FixedWindow, Algorithm::TokenBucket,
            ]),
            quota in 1u64..8,
            before in prop::collection::vec((0u64..900_000_000, 0u64..9, any::<bool>()), 0..20),
            estimate in 1u64..8,
            back in 0u64..9,
            later in prop::collection::vec((0u64..900_000_000, 0u64..9), 0..40),
        ) {
            let l = small_limits(algorithm, quota, 2);
            let mut plain = State::new(algorithm);
            let mut now = 1_700_000_000 * NANOS_PER_SEC;
            let step = |s: &mut State, now: Nanos, cost: u64, charge: bool| match charge {
                true => s.evaluate(&l, now, cost, Mode::Charge),
                false => s.check(&l, cost, now),
            };
            for &(gap, cost, charge) in &before {
                now += gap;
                step(&mut plain, now, cost, charge);
            }
            let mut reconciled = plain.clone();
            // An estimate that fits what is left.
            let estimate = estimate.min(plain.peek(&l, 0, now).remaining);
            if estimate == 0 {
                return Ok(());
            }
            prop_assert!(reconciled.check(&l, estimate, now).allowed);
            let at = now;
            // All of it at once: as if never taken.
            let mut whole = reconciled.clone();
            whole.evaluate(&l, now, estimate, Mode::Refund(at));
            prop_assert_eq!(
                whole.peek(&l, 0, now).remaining,
                plain.clone().peek(&l, 0, now).remaining
            );
            // Part or all of it, at any later time.
            let mut refunded = false;
            for (gap, cost) in later {
                now += gap;
                if !refunded && cost % 3 == 0 {
                    reconciled.evaluate(&l, now, back.min(estimate), Mode::Refund(at));
                    refunded = true;
                }
                prop_assert!(
                    reconciled.peek(&l, 0, now).remaining <= plain.peek(&l, 0, now).remaining
                );
                step(&mut plain, now, cost, true);
                step(&mut reconciled, now, cost, true);
            }
        }

        /// A peek, of any cost, changes nothing that a later check could see.
        #[test]
        fn a_peek_never_changes_what_later_checks_decide(
            algorithm in prop::sample::select(Algorithm::ALL.to_vec()),
            quota in 1u64..8,
            steps in prop::collection::vec((0u64..900_000_000, 0u64..9, any::<bool>()), 1..120),
        ) {
            let l = small_limits(algorithm, quota, 2);
            let (mut plain, mut peeked) = (State::new(algorithm), State::new(algorithm));
            let mut now = 1_700_000_000 * NANOS_PER_SEC;
            for (gap, cost, peek) in steps {
                now += gap;
                if peek {
                    // It says what the check would decide, and leaves the quota as it was.
                    let seen = peeked.peek(&l, cost, now);
                    prop_assert_eq!(seen.allowed, plain.clone().check(&l, cost, now).allowed);
                    prop_assert_eq!(seen.remaining, plain.clone().peek(&l, 0, now).remaining);
                }
                prop_assert_eq!(peeked.check(&l, cost, now), plain.check(&l, cost, now));
            }
        }
    }

    #[test]
    fn an_overdrawn_quota_refuses_until_its_debt_is_repaid() {
        // 1,000 tokens a minute; two responses of 700 each, charged after the fact: the
        // second overdraws by 400, so the third request waits for the debt and one token.
        let t0 = 1_700_000_080 * NANOS_PER_SEC;
        let s = NANOS_PER_SEC;
        let granule = granule_ms(60 * s) * 1_000_000;
        for (algorithm, charged_at, repaid_at) in [
            // The first charge leaves the window (rounded up to its granule).
            (
                Algorithm::SlidingWindow,
                t0 + 10 * s,
                t0.div_ceil(granule) * granule + 60 * s,
            ),
            // The window ends (t0 is 40 s into a minute).
            (Algorithm::FixedWindow, t0 + 10 * s, t0 + 20 * s),
            // 401 tokens drip back at 60 ms each.
            (Algorithm::TokenBucket, t0, t0 + 401 * 60_000_000),
        ] {
            let l = Limit::new(algorithm, 1_000, 60);
            let mut state = State::new(algorithm);
            assert!(state.check(&l, 0, t0).allowed, "{algorithm:?}");
            let d = state.evaluate(&l, t0, 700, Mode::Charge);
            assert_eq!((d.allowed, d.remaining, d.retry_after), (true, 300, 0));
            assert!(state.check(&l, 0, charged_at).allowed, "{algorithm:?}");
            let d = state.evaluate(&l, charged_at, 700, Mode::Charge);
            assert_eq!(d.remaining, 0, "{algorithm:?}");
            assert_eq!(charged_at + d.retry_after, repaid_at, "{algorithm:?}");
            assert!(!state.check(&l, 0, repaid_at - 1).allowed, "{algorithm:?}");
            let d = state.check(&l, 0, repaid_at);
            assert!(d.allowed, "{algorithm:?}");
        }
    }

    #[test]
    fn a_changed_algorithm_starts_fresh_state() {
        let sliding = Limit::new(Algorithm::SlidingWindow, 2, 60);
        let mut state = State::new(Algorithm::SlidingWindow);
        assert!(state.check(&sliding, 1, 0).allowed);
        assert!(state.check(&sliding, 1, 0).allowed);
        assert!(!state.check(&sliding, 1, 0).allowed);

        let fixed = Limit::new(Algorithm::FixedWindow, 2, 60);
        let d = state.check(&fixed, 1, 0);
        assert!(d.allowed);
        assert_eq!(d.remaining, 1);
        assert_eq!(state.algorithm(), Algorithm::FixedWindow);
    }

    #[test]
    fn peek_consumes_nothing() {
        for algorithm in Algorithm::ALL {
            let limits = Limit::new(algorithm, 3, 10);
            let mut state = State::new(algorithm);
            state.check(&limits, 1, 0);
            let before = state.peek(&limits, 1, 0);
            assert_eq!(before.remaining, 2, "{algorithm:?}");
            assert_eq!(state.peek(&limits, 1, 0), before, "{algorithm:?}");
        }
    }

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        for algorithm in Algorithm::ALL {
            let limits = Limit::new(algorithm, 5, 10);
            let mut state = State::new(algorithm);
            for i in 0..4 {
                state.check(&limits, 1, i * 1_500_000_000);
            }
            let bytes = state.encode();
            assert_eq!(State::decode(algorithm, &bytes), Some(state.clone()));
            assert_eq!(State::decode(algorithm, &bytes[..bytes.len() - 1]), None);
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(State::decode(algorithm, &longer), None);
        }
    }

    #[test]
    fn every_state_is_fresh_after_its_longest_reset() {
        for algorithm in Algorithm::ALL {
            let limits = Limit::new(algorithm, 5, 10);
            let mut state = State::new(algorithm);
            let mut now = 123_456_789;
            for _ in 0..7 {
                let d = state.check(&limits, 1, now);
                assert!(d.reset_after <= limits.fresh_after(), "{algorithm:?}");
                now += 1_000_000;
            }
            let last = now - 1_000_000;
            let fresh = state.peek(&limits, 1, last + limits.fresh_after());
            assert_eq!(fresh.remaining, limits.quota(), "{algorithm:?}");
        }
    }

    #[test]
    fn all_lists_every_algorithm() {
        // `index` is an exhaustive match: a new variant fails to compile there until it
        // is given a place, which must be its place in `ALL`.
        for (i, a) in Algorithm::ALL.into_iter().enumerate() {
            assert_eq!(a.index(), i, "{a:?}");
        }
    }

    #[test]
    fn algorithms_round_trip_through_their_names() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::parse(a.as_str()), Some(a));
        }
        assert_eq!(Algorithm::parse("leaky_bucket"), None);
    }
}
