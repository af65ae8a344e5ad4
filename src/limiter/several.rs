//! Several limits decided as one: a config may hold up to [`MAX_LIMITS`] named limits,
//! and a request is admitted only if every one of them admits it. [`States`] holds one
//! client's state for each limit of a config and decides them all or nothing: each is
//! first asked what it would decide (a peek, which changes nothing), and only if all
//! would admit is the cost consumed from each. A refused request leaves every limit as
//! it was. [`Decisions`] is the outcome: one [`Decision`] per limit, and the one that
//! binds, which is what a single-number view of the decision (the `X-RateLimit-*`
//! headers, a feed's event) shows.
//!
//! A config of one limit costs nothing more than before: its state is held inline
//! ([`States::One`]) and decided directly, with no peek first and no allocation.

use super::{Algorithm, Decision, Limit, Mode, Reader, State};
use crate::clock::Nanos;
use smallvec::SmallVec;
use std::sync::Arc;

/// Most limits one config may hold.
pub const MAX_LIMITS: usize = 8;

/// One limit of a config: its name (unique within the config) and parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Named {
    /// `[a-z0-9_-]{1,32}`: the IETF policy name, and what a refusal names.
    pub name: Arc<str>,
    pub limit: Limit,
    /// The window as configured, in seconds: the `w` the headers announce.
    pub window_seconds: u64,
    /// What it counts.
    pub unit: Unit,
    /// For a limit of tokens or bytes charged from the upstream's answer: the response
    /// header (its name in lower case) whose value is the cost.
    pub cost_header: Option<Arc<str>>,
}

impl Named {
    /// A limit of requests.
    pub fn requests(name: &str, limit: Limit, window_seconds: u64) -> Self {
        Named {
            name: Arc::from(name),
            limit,
            window_seconds,
            unit: Unit::Requests,
            cost_header: None,
        }
    }

    /// Whether its units are charged for what a request used (tokens, bytes), rather
    /// than taken one per request.
    pub fn is_metered(&self) -> bool {
        self.unit != Unit::Requests
    }
}

/// What a limit counts: requests (one per request, or a check's cost), or units a
/// request uses, known up front or only once it is done: a caller-defined quantity
/// (`tokens`: an LLM call's tokens, an export's rows) or `bytes` of a body.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    #[default]
    Requests,
    Tokens,
    Bytes,
}

impl Unit {
    pub const ALL: [Unit; 3] = [Unit::Requests, Unit::Tokens, Unit::Bytes];

    /// Whether it is the default, requests (which bodies leave out).
    pub fn is_requests(&self) -> bool {
        *self == Unit::Requests
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Requests => "requests",
            Unit::Tokens => "tokens",
            Unit::Bytes => "bytes",
        }
    }

    /// Its name as the IETF `qu` parameter of `RateLimit-Policy`: a registered quota
    /// unit, or a vendor-prefixed one for tokens.
    pub fn quota_unit(self) -> &'static str {
        match self {
            Unit::Requests => "requests",
            Unit::Tokens => "ratewarden-tokens",
            Unit::Bytes => "content-bytes",
        }
    }
}

/// The name of the one limit a config written with top-level fields holds.
pub const DEFAULT_LIMIT: &str = "default";

/// The outcome of one check under every limit of a config.
#[derive(Debug, Clone, PartialEq)]
pub struct Decisions {
    /// One per limit, in the config's order. On a refusal these are what each limit
    /// would have decided: nothing was consumed from any.
    each: SmallVec<[Decision; 1]>,
    /// The index of the binding decision (see [`Decisions::binding`]).
    binding: usize,
    /// When it was decided, by the clock of whoever decided (see [`Decisions::at`]).
    at: Nanos,
}

impl Decisions {
    pub fn one(d: Decision) -> Self {
        Self {
            each: SmallVec::from_buf([d]),
            binding: 0,
            at: 0,
        }
    }

    /// The decisions of several limits (at least one), with the binding one found.
    pub fn of(each: SmallVec<[Decision; 1]>) -> Self {
        let binding = binding(&each);
        Self {
            each,
            binding,
            at: 0,
        }
    }

    /// The same, decided at `at`.
    pub fn decided_at(mut self, at: Nanos) -> Self {
        self.at = at;
        self
    }

    /// When it was decided, by the deciding clock (the limiter's, or the Redis server's):
    /// what [`Mode::Refund`] names to give back what it consumed.
    pub fn at(&self) -> Nanos {
        self.at
    }

    pub fn each(&self) -> &[Decision] {
        &self.each
    }

    /// The index of the limit that binds: on a refusal, the refusing limit with the
    /// longest wait (so its `retry_after` is the request's); otherwise the limit with the
    /// fewest units left relative to its quota (ties: the first in the config's order).
    pub fn binding(&self) -> usize {
        self.binding
    }

    /// The decision of the binding limit; `allowed` is whether every limit admitted.
    pub fn decision(&self) -> &Decision {
        &self.each[self.binding]
    }
}

impl std::ops::Deref for Decisions {
    type Target = Decision;
    fn deref(&self) -> &Decision {
        self.decision()
    }
}

fn binding(each: &[Decision]) -> usize {
    let refused = each.iter().enumerate().filter(|(_, d)| !d.allowed);
    if let Some((i, _)) = refused.fold(None::<(usize, &Decision)>, |best, (i, d)| match best {
        Some((_, b)) if b.retry_after >= d.retry_after => best,
        _ => Some((i, d)),
    }) {
        return i;
    }
    // Fewest remaining relative to the quota: a/b < c/d as a*d < c*b (no division).
    let mut best = 0;
    for (i, d) in each.iter().enumerate().skip(1) {
        let b = &each[best];
        if (d.remaining as u128) * (b.limit as u128) < (b.remaining as u128) * (d.limit as u128) {
            best = i;
        }
    }
    best
}

/// One client's state for each limit of one config.
#[derive(Debug, Clone, PartialEq)]
pub enum States {
    /// A config of one limit, whatever its name: held inline.
    One(State),
    /// Several limits, each state under its limit's name, in the config's order.
    Many(Box<[(Arc<str>, State)]>),
}

impl States {
    pub fn new(limits: &[Named]) -> Self {
        match limits {
            [only] => States::One(State::new(only.limit.algorithm())),
            _ => States::Many(
                limits
                    .iter()
                    .map(|l| (l.name.clone(), State::new(l.limit.algorithm())))
                    .collect(),
            ),
        }
    }

    /// Decides `cost` units under every limit of `limits` (a config's, in its order), all
    /// or nothing (see the module). States of limits the config no longer has are
    /// dropped, and a new limit starts fresh; a limit keeps its state across a change of
    /// the config by its name (a config of one limit: whatever its name).
    pub fn evaluate(&mut self, limits: &[Named], now: Nanos, cost: u64, mode: Mode) -> Decisions {
        if let [only] = limits {
            let state = self.single(&only.name);
            return Decisions::one(state.evaluate(&only.limit, now, cost, mode)).decided_at(now);
        }
        let states = self.align(limits, DEFAULT_LIMIT);
        let pairs = states.iter_mut().zip(limits);
        let each = match mode {
            // A charge is made to each (it refuses nothing).
            Mode::Peek | Mode::Reset | Mode::Refund(_) | Mode::Charge => pairs
                .map(|((_, s), l)| s.evaluate(&l.limit, now, cost, mode))
                .collect(),
            Mode::Consume => {
                let peeks: SmallVec<[Decision; 1]> = pairs
                    .map(|((_, s), l)| s.evaluate(&l.limit, now, cost, Mode::Peek))
                    .collect();
                if peeks.iter().all(|d| d.allowed) {
                    let pairs = states.iter_mut().zip(limits);
                    pairs
                        .map(|((_, s), l)| s.evaluate(&l.limit, now, cost, Mode::Consume))
                        .collect()
                } else {
                    peeks
                }
            }
        };
        Decisions::of(each).decided_at(now)
    }

    /// The state of a config of one limit, named `name`: kept as it is, or taken from
    /// the states of several by that name.
    fn single(&mut self, name: &str) -> &mut State {
        if let States::Many(states) = self {
            let kept = states.iter_mut().find(|(n, _)| &**n == name);
            let kept = kept.map(|(_, s)| std::mem::replace(s, State::Fixed(Default::default())));
            // A fresh state of any algorithm: the first check replaces it with its own.
            *self = States::One(kept.unwrap_or(State::Fixed(Default::default())));
        }
        match self {
            States::One(state) => state,
            States::Many(_) => unreachable!("made One just above"),
        }
    }

    /// A config of one limit, named `name`, becomes `limits`: its state goes on under
    /// its name. (A single state does not keep its name; the caller knows the config it
    /// was last checked under.)
    pub fn grow(&mut self, name: &str, limits: &[Named]) {
        if matches!(self, States::One(_)) && limits.len() > 1 {
            self.align(limits, name);
        }
    }

    /// The states of several limits, exactly `limits`' names in their order; a single
    /// state goes on under `one_name`.
    fn align(&mut self, limits: &[Named], one_name: &str) -> &mut [(Arc<str>, State)] {
        let same = |states: &[(Arc<str>, State)]| {
            states.len() == limits.len()
                && states.iter().zip(limits).all(|((n, _), l)| *n == l.name)
        };
        if !matches!(self, States::Many(states) if same(states)) {
            let old = std::mem::replace(self, States::Many(Box::new([])));
            let take = |name: &Arc<str>| -> Option<State> {
                match &old {
                    // A config of one limit grows: its state stays with its name.
                    States::One(s) => (&**name == one_name).then(|| s.clone()),
                    States::Many(states) => states
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, s)| s.clone()),
                }
            };
            *self = States::Many(
                limits
                    .iter()
                    .map(|l| {
                        let state =
                            take(&l.name).unwrap_or_else(|| State::new(l.limit.algorithm()));
                        (l.name.clone(), state)
                    })
                    .collect(),
            );
        }
        match self {
            States::Many(states) => states,
            States::One(_) => unreachable!("made Many just above"),
        }
    }

    /// The latest time any of these states takes to be as good as fresh under
    /// `limits`, after `now`: when a snapshot of them may be forgotten.
    pub fn fresh_at(&mut self, limits: &[Named], now: Nanos) -> Nanos {
        let d = self.evaluate(limits, now, 0, Mode::Peek);
        let longest = d.each().iter().map(|d| d.reset_after).max().unwrap_or(0);
        now.saturating_add(longest)
    }

    /// The algorithm of a single state, `None` for several: what the snapshot table's
    /// `algorithm` column holds (`several` for `None`).
    pub fn algorithm(&self) -> Option<Algorithm> {
        match self {
            States::One(s) => Some(s.algorithm()),
            States::Many(_) => None,
        }
    }

    /// What a snapshot stores: the algorithm column and the bytes. One state is stored
    /// in its own encoding, as a config of one limit always was, unless its limit
    /// (`one_name`, the one it was last checked under) is named other than `default`:
    /// then as a list of one, so that it keeps its name when read back. Several states
    /// are stored as [`States::encode`] writes them, under no algorithm (`None`).
    pub fn stored(&self, one_name: Option<&str>) -> (Option<Algorithm>, Vec<u8>) {
        match (self, one_name) {
            (States::One(s), Some(name)) if name != DEFAULT_LIMIT => {
                let named = States::Many(Box::new([(Arc::from(name), s.clone())]));
                (None, named.encode())
            }
            _ => (self.algorithm(), self.encode()),
        }
    }

    /// A compact binary form: one state's own encoding, or each limit's name, algorithm
    /// and state.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            States::One(s) => s.encode(),
            States::Many(states) => {
                let mut out = vec![states.len() as u8];
                for (name, state) in states.iter() {
                    out.push(name.len() as u8);
                    out.extend_from_slice(name.as_bytes());
                    out.push(state.algorithm().index() as u8);
                    let bytes = state.encode();
                    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                    out.extend_from_slice(&bytes);
                }
                out
            }
        }
    }

    /// The inverse of [`States::encode`], given the `algorithm` it was stored with
    /// (`None` for several); `None` for bytes it did not write.
    pub fn decode(algorithm: Option<Algorithm>, bytes: &[u8]) -> Option<Self> {
        let Some(algorithm) = algorithm else {
            let mut r = Reader(bytes);
            let n = r.take::<1>()?[0] as usize;
            if !(1..=MAX_LIMITS).contains(&n) {
                return None;
            }
            let mut states: Vec<(Arc<str>, State)> = Vec::with_capacity(n);
            for _ in 0..n {
                let len = r.take::<1>()?[0] as usize;
                let name = std::str::from_utf8(r.bytes(len)?).ok()?;
                if states.iter().any(|(n, _)| &**n == name) {
                    return None;
                }
                let algorithm = *Algorithm::ALL.get(r.take::<1>()?[0] as usize)?;
                let len = r.u32()? as usize;
                let state = State::decode(algorithm, r.bytes(len)?)?;
                states.push((Arc::from(name), state));
            }
            return r.0.is_empty().then(|| States::Many(states.into()));
        };
        State::decode(algorithm, bytes).map(States::One)
    }

    /// Each state with its name (`None` for the one state of a single limit).
    pub fn iter(&self) -> impl Iterator<Item = (Option<&Arc<str>>, &State)> {
        let (one, many) = match self {
            States::One(s) => (Some(s), &[][..]),
            States::Many(states) => (None, &states[..]),
        };
        one.map(|s| (None, s))
            .into_iter()
            .chain(many.iter().map(|(n, s)| (Some(n), s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::NANOS_PER_SEC;
    use proptest::prelude::*;

    fn named(name: &str, algorithm: Algorithm, quota: u64, window: u64) -> Named {
        Named {
            unit: Unit::Requests,
            cost_header: None,
            name: Arc::from(name),
            limit: Limit::new(algorithm, quota, window),
            window_seconds: window,
        }
    }

    /// Random configs of 2 to 4 limits with small quotas, around a leap day's midnight.
    fn limits() -> impl Strategy<Value = Vec<Named>> {
        let one = (
            prop::sample::select(Algorithm::ALL.to_vec()),
            1u64..6,
            1u64..5,
            any::<bool>(),
        );
        prop::collection::vec(one, 2..5).prop_map(|specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (a, q, w, daily))| {
                    let mut l = named(&format!("l{i}"), a, q, w);
                    // A fixed window may count calendar days instead.
                    if let Limit::FixedWindow(f) = &mut l.limit
                        && daily
                    {
                        f.calendar = Some(super::super::Calendar::Day);
                    }
                    l
                })
                .collect()
        })
    }

    proptest! {
        /// Several limits decide as one: a check is admitted exactly when each limit,
        /// decided alone on the same admitted history, would admit it; a refusal consumes
        /// nothing from any limit; the binding decision is a refusing one on a refusal.
        #[test]
        fn all_or_nothing_matches_each_limit_alone(
            limits in limits(),
            steps in prop::collection::vec((0u64..700_000_000, 0u64..4), 1..100),
        ) {
            let mut states = States::new(&limits);
            // Each limit alone, fed only what the whole admitted.
            let mut alone: Vec<State> =
                limits.iter().map(|l| State::new(l.limit.algorithm())).collect();
            // 2028-02-29T23:59:50Z: the trace crosses the leap day's midnight.
            let mut now = 1_835_481_590 * NANOS_PER_SEC;
            for (gap, cost) in steps {
                now += gap;
                let d = states.evaluate(&limits, now, cost, Mode::Consume);
                let would: Vec<bool> = alone
                    .iter_mut()
                    .zip(&limits)
                    .map(|(s, l)| s.peek(&l.limit, cost, now).allowed)
                    .collect();
                prop_assert_eq!(d.allowed, would.iter().all(|w| *w));
                for (i, each) in d.each().iter().enumerate() {
                    prop_assert_eq!(each.allowed, would[i]);
                }
                if d.allowed {
                    for (s, l) in alone.iter_mut().zip(&limits) {
                        prop_assert!(s.check(&l.limit, cost, now).allowed);
                    }
                } else {
                    prop_assert!(!d.each()[d.binding()].allowed);
                    let longest = d.each().iter().filter(|e| !e.allowed)
                        .map(|e| e.retry_after).max();
                    prop_assert_eq!(Some(d.retry_after), longest);
                }
                // Nothing else moved: every limit reports what its lone twin does.
                let seen = states.clone().evaluate(&limits, now, 0, Mode::Peek);
                for ((s, l), e) in alone.iter_mut().zip(&limits).zip(seen.each()) {
                    prop_assert_eq!(s.peek(&l.limit, 0, now).remaining, e.remaining);
                }
            }
        }
    }

    proptest! {
        /// A refund undoes a consumption as if it had not been made: a state that took
        /// and gave back units (at a later step, as a request refused by another key's
        /// limits does) decides every later check exactly as a twin that never saw them,
        /// including across window ends and a leap day's midnight. A token bucket gives
        /// back only what has not dripped back in meanwhile: never more generous than
        /// the twin, so it admits only what the twin admits.
        #[test]
        fn a_refund_undoes_its_consumption(
            limits in limits(),
            steps in prop::collection::vec((0u64..700_000_000, 0u64..4, any::<bool>()), 1..100),
        ) {
            let exact = !limits.iter().any(|l| matches!(l.limit, Limit::TokenBucket(_)));
            let mut states = States::new(&limits);
            let mut twin = States::new(&limits);
            let mut now = 1_835_481_590 * NANOS_PER_SEC;
            // A consumption to give back at the next step: (its time, its cost).
            let mut held: Option<(Nanos, u64)> = None;
            for (gap, cost, phantom) in steps {
                now += gap;
                if let Some((at, cost)) = held.take() {
                    states.evaluate(&limits, now, cost, Mode::Refund(at));
                }
                let seen = states.clone().evaluate(&limits, now, 1, Mode::Peek);
                let ideal = twin.clone().evaluate(&limits, now, 1, Mode::Peek);
                if exact {
                    prop_assert_eq!(&seen, &ideal);
                }
                for (s, i) in seen.each().iter().zip(ideal.each()) {
                    prop_assert!(s.remaining <= i.remaining, "{:?} > {:?}", s, i);
                }
                let d = states.evaluate(&limits, now, cost, Mode::Consume);
                if phantom {
                    if d.allowed {
                        held = Some((d.at(), cost));
                    }
                } else if exact {
                    prop_assert_eq!(&d, &twin.evaluate(&limits, now, cost, Mode::Consume));
                } else if d.allowed {
                    prop_assert!(twin.evaluate(&limits, now, cost, Mode::Consume).allowed);
                }
            }
        }
    }

    #[test]
    fn a_token_bucket_gives_back_only_what_has_not_dripped_back_in() {
        // 1 token a millisecond, 10 of them: A takes one, B (on a bucket A's token has
        // dripped back into) takes another, then A's is given back 2 ms late.
        let mut limits = [named("b", Algorithm::TokenBucket, 1, 1)];
        limits[0].limit = Limit::TokenBucket(super::super::TokenBucketLimit {
            burst: 1,
            refill_interval: 1_000_000,
        });
        let mut states = States::new(&limits);
        let t0 = 1_800_000_000 * NANOS_PER_SEC;
        let a = states.evaluate(&limits, t0, 1, Mode::Consume);
        assert!(a.allowed);
        let b = states.evaluate(&limits, t0 + 1_500_000, 1, Mode::Consume);
        assert!(b.allowed);
        // Nothing of A's is still owed: nothing is given back, and B's token stays taken.
        states.evaluate(&limits, t0 + 2_000_000, 1, Mode::Refund(a.at()));
        assert!(
            !states
                .evaluate(&limits, t0 + 2_000_000, 1, Mode::Consume)
                .allowed
        );
    }

    #[test]
    fn the_binding_limit_is_the_tightest() {
        let limits = [
            named("burst", Algorithm::TokenBucket, 10, 1),
            named("daily", Algorithm::FixedWindow, 3, 86_400),
        ];
        let mut states = States::new(&limits);
        let d = states.evaluate(&limits, 0, 1, Mode::Consume);
        // 9 of 10 left against 2 of 3: the daily quota binds.
        assert_eq!((d.binding(), d.remaining), (1, 2));
        states.evaluate(&limits, 0, 2, Mode::Consume);
        let d = states.evaluate(&limits, 0, 1, Mode::Consume);
        assert!(!d.allowed);
        assert_eq!((d.binding(), d.each()[0].allowed), (1, true));
        // Refused by the daily limit: the bucket kept its 7 tokens.
        assert_eq!(d.each()[0].remaining, 7);
    }

    #[test]
    fn states_follow_their_names_across_changes() {
        let two = [
            named("a", Algorithm::FixedWindow, 5, 60),
            named("b", Algorithm::FixedWindow, 5, 60),
        ];
        let mut states = States::new(&two);
        states.evaluate(&two, 0, 2, Mode::Consume);
        // Reordered and grown: `a` and `b` keep their counts, `c` starts fresh.
        let three = [
            two[1].clone(),
            named("c", Algorithm::FixedWindow, 5, 60),
            two[0].clone(),
        ];
        let d = states.evaluate(&three, 0, 1, Mode::Consume);
        let left: Vec<u64> = d.each().iter().map(|d| d.remaining).collect();
        assert_eq!(left, [2, 4, 2]);
        // Down to one: the one named keeps its state.
        let d = states.evaluate(&three[1..2], 0, 1, Mode::Consume);
        assert_eq!(d.remaining, 3);
        assert!(matches!(states, States::One(_)));
        // And a single `default` state goes on as `default` among several.
        let mut one = States::new(&[named(DEFAULT_LIMIT, Algorithm::FixedWindow, 5, 60)]);
        one.evaluate(
            &[named(DEFAULT_LIMIT, Algorithm::FixedWindow, 5, 60)],
            0,
            4,
            Mode::Consume,
        );
        let grown = [
            named("x", Algorithm::FixedWindow, 5, 60),
            named(DEFAULT_LIMIT, Algorithm::FixedWindow, 5, 60),
        ];
        let d = one.evaluate(&grown, 0, 0, Mode::Peek);
        assert_eq!((d.each()[0].remaining, d.each()[1].remaining), (5, 1));
    }

    #[test]
    fn a_single_limit_keeps_its_state_under_its_name_when_the_config_grows() {
        let daily = named("daily", Algorithm::FixedWindow, 5, 60);
        let mut states = States::new(std::slice::from_ref(&daily));
        states.evaluate(std::slice::from_ref(&daily), 0, 4, Mode::Consume);
        let grown = [named("burst", Algorithm::FixedWindow, 5, 60), daily.clone()];
        states.grow("daily", &grown);
        let d = states.evaluate(&grown, 0, 0, Mode::Peek);
        assert_eq!((d.each()[0].remaining, d.each()[1].remaining), (5, 1));
    }

    #[test]
    fn a_single_state_named_other_than_default_is_stored_with_its_name() {
        let monthly = named("monthly", Algorithm::FixedWindow, 5, 60);
        let mut states = States::new(std::slice::from_ref(&monthly));
        states.evaluate(std::slice::from_ref(&monthly), 0, 4, Mode::Consume);
        let (algorithm, bytes) = states.stored(Some("monthly"));
        let mut back = States::decode(algorithm, &bytes).unwrap();
        // Read back after the config gained a limit: `monthly` keeps its count.
        let grown = [
            named("burst", Algorithm::FixedWindow, 5, 60),
            monthly.clone(),
        ];
        let d = back.evaluate(&grown, 0, 0, Mode::Peek);
        assert_eq!((d.each()[0].remaining, d.each()[1].remaining), (5, 1));
        // Under `default`, the encoding is the bare state's, as before.
        let bare = (Some(Algorithm::FixedWindow), states.encode());
        assert_eq!(states.stored(Some(DEFAULT_LIMIT)), bare);
        assert_eq!(states.stored(None), bare);
    }

    #[test]
    fn several_states_round_trip_and_reject_garbage() {
        let limits = [
            named("burst", Algorithm::TokenBucket, 10, 1),
            named("day", Algorithm::SlidingWindow, 3, 86_400),
            named("month", Algorithm::FixedWindow, 3, 86_400),
        ];
        let mut states = States::new(&limits);
        for i in 0..3 {
            states.evaluate(&limits, i * NANOS_PER_SEC, 1, Mode::Consume);
        }
        let bytes = states.encode();
        assert_eq!(
            States::decode(states.algorithm(), &bytes),
            Some(states.clone())
        );
        for cut in [1, bytes.len() / 2, bytes.len() - 1] {
            assert_eq!(States::decode(None, &bytes[..cut]), None);
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(States::decode(None, &longer), None);
        // Written by no encoder: no state as "several", a count that does not match what
        // follows, or a name twice.
        let mut one = bytes.clone();
        one[0] = 1;
        assert_eq!(States::decode(None, &one[..]), None);
        assert_eq!(States::decode(None, &[0]), None);
        let a = named("a", Algorithm::FixedWindow, 1, 1);
        let twice = States::new(&[a.clone(), a]).encode();
        assert_eq!(States::decode(None, &twice), None);
        let one = States::new(&limits[..1]);
        assert_eq!(States::decode(one.algorithm(), &one.encode()), Some(one));
    }
}

#[cfg(test)]
mod size {
    use super::*;

    /// A config of one limit costs no more per client than a bare state would.
    #[test]
    fn one_limit_is_held_inline_at_no_extra_size() {
        assert_eq!(std::mem::size_of::<States>(), std::mem::size_of::<State>());
    }
}
