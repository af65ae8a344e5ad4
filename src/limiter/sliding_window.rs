//! Sliding window: never more than `limit` admitted requests in any half-open interval
//! of `window`, in memory that does not grow with the limit.
//!
//! Admitted requests are kept as `(millisecond, count)` runs, oldest first. A request's
//! time is rounded *up* to the next multiple of the window's granule (`window / 512`,
//! at least 1 ms, aligned to the epoch), so it is counted slightly longer than its true
//! time: the window can only be stricter than exact, never looser, and a refused request
//! waits at most one granule longer than the exact answer. All requests admitted within
//! one granule share one 12-byte run, so a key holds at most `GRANULES + 2` = 514 runs
//! (about 6 KiB) whatever the limit: the runs of one window fit in `window / granule` + 2
//! granules. (A window shortened by a config change keeps the runs recorded under the
//! old granule until they expire.)

use super::{Algo, Decision, Limit, Reader, State, Take, fits};
use crate::clock::{NANOS_PER_SEC, Nanos};
use std::collections::VecDeque;

/// A sliding window's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingWindowLimit {
    /// Units in any window.
    pub limit: u64,
    /// The window length; at least one second.
    pub window: Nanos,
}

impl From<SlidingWindowLimit> for Limit {
    fn from(p: SlidingWindowLimit) -> Self {
        Limit::SlidingWindow(p)
    }
}

impl Algo for SlidingWindowLimit {
    type State = SlidingWindow;
    const REDIS_KINDS: &'static [&'static str] = &["sw", "swn"];
    const REDIS_SCRIPT: &'static str = include_str!("sliding_window.lua");

    fn evaluate(&self, state: &mut SlidingWindow, now: Nanos, cost: u64, take: Take) -> Decision {
        state.evaluate(self, now, cost, take)
    }

    fn refund(&self, state: &mut SlidingWindow, at: Nanos, _now: Nanos, cost: u64) {
        // The check recorded its units in the run of its granule (with time going
        // forward): take them from that run only. A run gone (expired, so nothing is
        // left to give back) is never confused with a later one; units recorded in a
        // later run (a clock stepped back) stay until they expire, never shorter.
        let granule = granule_ms(self.window);
        let from = at.div_ceil(NANOS_PER_MS).div_ceil(granule) * granule;
        let Ok(i) = state.runs.binary_search_by_key(&from, |&(ms, _)| ms) else {
            return;
        };
        let count = &mut state.runs[i].1;
        let take = cost.min(*count as u64);
        *count -= take as u32;
        state.total -= take;
        if *count == 0 {
            state.runs.remove(i);
        }
    }

    fn quota(&self) -> u64 {
        self.limit
    }

    fn fresh_after(&self) -> Nanos {
        self.window
            .saturating_add(granule_ms(self.window) * NANOS_PER_MS)
    }

    fn redis_args(&self) -> Vec<u64> {
        vec![
            self.limit,
            self.window / NANOS_PER_SEC,
            granule_ms(self.window),
        ]
    }

    fn encode(state: &SlidingWindow, out: &mut Vec<u8>) {
        out.extend_from_slice(&(state.runs.len() as u32).to_le_bytes());
        for &(ms, count) in &state.runs {
            out.extend_from_slice(&ms.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
        }
    }

    fn decode(r: &mut Reader) -> Option<SlidingWindow> {
        let n = r.u32()? as usize;
        // Never trust a length prefix with an allocation: cap it by the bytes present.
        let mut runs = VecDeque::with_capacity(n.min(r.0.len() / 12));
        let mut total = 0u64;
        for _ in 0..n {
            let run = (r.u64()?, r.u32()?);
            if runs.back().is_some_and(|&(ms, _)| ms >= run.0) || run.1 == 0 {
                return None;
            }
            total += run.1 as u64;
            runs.push_back(run);
        }
        Some(SlidingWindow { runs, total })
    }

    fn state_of(state: &mut State) -> Option<&mut SlidingWindow> {
        match state {
            State::Sliding(s) => Some(s),
            _ => None,
        }
    }

    fn wrap(state: SlidingWindow) -> State {
        State::Sliding(state)
    }
}

const NANOS_PER_MS: Nanos = 1_000_000;
/// Granules per window.
pub const GRANULES: u64 = 512;

/// The granule of a window, in milliseconds: `window / GRANULES` rounded up, at least 1.
pub fn granule_ms(window: Nanos) -> u64 {
    (window / NANOS_PER_MS).div_ceil(GRANULES).max(1)
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlidingWindow {
    /// Admissions as (millisecond since the epoch, count), strictly increasing in time.
    runs: VecDeque<(u64, u32)>,
    /// Sum of the counts in `runs`.
    total: u64,
}

impl SlidingWindow {
    pub(super) fn evaluate(
        &mut self,
        limits: &SlidingWindowLimit,
        now: Nanos,
        cost: u64,
        take: Take,
    ) -> Decision {
        let window = limits.window;
        // A run recorded at `ms` stops counting once `now >= ms + window`.
        let expires = |ms: u64| (ms * NANOS_PER_MS).saturating_add(window);
        while let Some(&(ms, count)) = self.runs.front() {
            if expires(ms) > now {
                break;
            }
            self.runs.pop_front();
            self.total -= count as u64;
        }

        let (allowed, need) = take.decide(self.total, cost, limits.limit);
        // A consumed cost fits the limit, which fits a u32 (see `config::max_limit`). A
        // charge may not: one of more than 2^32 - 1 units counts as that many, which
        // refuses as long (the limit is below it) and expires alike.
        let n = u32::try_from(take.taken(allowed, cost)).unwrap_or(u32::MAX);
        if n > 0 {
            let granule = granule_ms(window);
            let at = now.div_ceil(NANOS_PER_MS).div_ceil(granule) * granule;
            let added = match self.runs.back_mut() {
                // A clock that stepped back still records at the newest run: time never
                // runs backwards inside the window. A charge fills a run up to 2^32 - 1
                // (which refuses as long as more would), so runs stay bounded.
                Some((ms, count))
                    if *ms >= at && (count.checked_add(n).is_some() || take == Take::Always) =>
                {
                    let added = n.min(u32::MAX - *count);
                    *count += added;
                    added
                }
                // A full run: the next millisecond, counted longer, never shorter.
                Some(&mut (ms, _)) if ms >= at => {
                    self.runs.push_back((ms + 1, n));
                    n
                }
                _ => {
                    self.runs.push_back((at, n));
                    n
                }
            };
            self.total += added as u64;
        }

        let remaining = limits.limit.saturating_sub(self.total);
        let reset_after = self.runs.back().map_or(0, |&(ms, _)| expires(ms) - now);
        let retry_after = if fits(self.total, need, limits.limit) {
            0
        } else if need > limits.limit {
            // Never fits: the best it gets is the whole quota back.
            reset_after
        } else {
            // A request of `need` fits once `total + need - limit` admissions expired.
            let mut to_expire = self.total + need - limits.limit;
            let mut at = now;
            for &(ms, count) in &self.runs {
                at = expires(ms);
                if count as u64 >= to_expire {
                    break;
                }
                to_expire -= count as u64;
            }
            at - now
        };
        Decision {
            allowed,
            limit: limits.limit,
            remaining,
            retry_after,
            reset_after,
            debt: self.total.saturating_sub(limits.limit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Algorithm;
    use super::*;
    use proptest::prelude::*;

    /// The most runs one key holds (see the module doc).
    const MAX_RUNS: usize = GRANULES as usize + 2;

    fn limits(limit: u64, window_secs: u64) -> SlidingWindowLimit {
        SlidingWindowLimit {
            limit,
            window: window_secs * NANOS_PER_SEC,
        }
    }

    #[test]
    fn blocks_the_request_after_the_limit_until_the_oldest_expires() {
        let l = limits(3, 10);
        let mut s = SlidingWindow::default();
        let t0 = 1_000 * NANOS_PER_SEC;
        for (i, remaining) in [2, 1, 0].into_iter().enumerate() {
            let d = s.evaluate(&l, t0 + i as u64 * NANOS_PER_SEC, 1, Take::IfFits);
            assert!(d.allowed);
            assert_eq!(d.remaining, remaining);
        }
        let d = s.evaluate(&l, t0 + 5 * NANOS_PER_SEC, 1, Take::IfFits);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, 5 * NANOS_PER_SEC);
        assert_eq!(d.reset_after, 7 * NANOS_PER_SEC);
        assert!(
            !s.evaluate(&l, t0 + 10 * NANOS_PER_SEC - 1, 1, Take::IfFits)
                .allowed
        );
        assert!(
            s.evaluate(&l, t0 + 10 * NANOS_PER_SEC, 1, Take::IfFits)
                .allowed
        );
    }

    #[test]
    fn a_lowered_limit_keeps_recorded_requests() {
        let mut s = SlidingWindow::default();
        for i in 0..5 {
            assert!(s.evaluate(&limits(10, 60), i, 1, Take::IfFits).allowed);
        }
        // Five recorded, new limit two: four must expire before one more fits.
        let d = s.evaluate(&limits(2, 60), 10, 1, Take::IfFits);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
    }

    #[test]
    fn holds_a_bounded_number_of_runs_whatever_the_limit() {
        // One hot client under a million a day, one request every 100 ms for a day:
        // exact runs would be 864,000 (10 MB).
        let l = limits(1_000_000, 86_400);
        let mut s = SlidingWindow::default();
        let t0 = 1_700_000_000 * NANOS_PER_SEC;
        let mut admitted = 0u64;
        for i in 0..864_000u64 {
            admitted += s
                .evaluate(&l, t0 + i * 100 * NANOS_PER_MS, 1, Take::IfFits)
                .allowed as u64;
            assert!(s.runs.len() <= MAX_RUNS);
        }
        assert_eq!(admitted, 864_000);
        assert_eq!(granule_ms(l.window), 168_750);
        assert!(s.runs.len() >= GRANULES as usize, "{}", s.runs.len());
    }

    #[test]
    fn a_refused_request_waits_at_most_one_granule_longer_than_exact() {
        let l = limits(2, 3600); // a granule of 7,032 ms
        let g = granule_ms(l.window) * NANOS_PER_MS;
        let mut s = SlidingWindow::default();
        let t0 = 1_700_000_000 * NANOS_PER_SEC + 1;
        assert!(s.evaluate(&l, t0, 1, Take::IfFits).allowed);
        assert!(s.evaluate(&l, t0 + NANOS_PER_SEC, 1, Take::IfFits).allowed);
        let d = s.evaluate(&l, t0 + 2 * NANOS_PER_SEC, 1, Take::IfFits);
        let exact = l.window - 2 * NANOS_PER_SEC;
        assert!(!d.allowed);
        assert!(d.retry_after >= exact && d.retry_after < exact + g, "{d:?}");
    }

    #[test]
    fn coalesces_requests_within_one_millisecond() {
        let l = limits(1000, 60);
        let mut s = SlidingWindow::default();
        for i in 0..500 {
            s.evaluate(&l, 5 * NANOS_PER_SEC + 1 + i, 1, Take::IfFits);
        }
        assert_eq!(s.runs.len(), 1);
        assert_eq!(s.total, 500);
    }

    proptest! {
        /// Long windows and huge limits: never more than the limit in any window, never
        /// more than `MAX_RUNS` runs, and `retry_after` exact.
        #[test]
        fn long_windows_and_huge_limits_stay_exact_and_bounded(
            limit in 1u64..5_000,
            window_secs in 60u64..31_536_000,
            gaps in prop::collection::vec(0u64..20 * NANOS_PER_SEC, 1..400),
        ) {
            let l = limits(limit, window_secs);
            let mut state = SlidingWindow::default();
            let mut now = 1_700_000_000 * NANOS_PER_SEC;
            let mut admitted: Vec<Nanos> = Vec::new();
            for gap in gaps {
                now += gap;
                let d = state.evaluate(&l, now, 1, Take::IfFits);
                prop_assert!(state.runs.len() <= MAX_RUNS);
                if d.allowed {
                    admitted.push(now);
                    let in_window = admitted.iter().filter(|&&t| t + l.window > now).count() as u64;
                    prop_assert!(in_window <= limit);
                } else {
                    let mut probe = state.clone();
                    prop_assert!(!probe.evaluate(&l, now + d.retry_after - 1, 1, Take::IfFits).allowed);
                    let mut probe = state.clone();
                    prop_assert!(probe.evaluate(&l, now + d.retry_after, 1, Take::IfFits).allowed);
                }
            }
        }

        /// Never more than `limit` admissions in any half-open window, and a blocked
        /// request's `retry_after` is exactly when the next one is allowed.
        #[test]
        fn never_exceeds_the_limit_in_any_window(
            limit in 1u64..8,
            window_secs in 1u64..4,
            gaps in prop::collection::vec(0u64..700_000_000, 1..200),
        ) {
            let l = limits(limit, window_secs);
            let mut state = State::new(Algorithm::SlidingWindow);
            let mut now = 1_700_000_000 * NANOS_PER_SEC;
            let mut admitted: Vec<Nanos> = Vec::new();
            for gap in gaps {
                now += gap;
                let d = state.check(&l.into(), 1, now);
                if d.allowed {
                    admitted.push(now);
                    let in_window = admitted.iter().filter(|&&t| t + l.window > now).count() as u64;
                    prop_assert!(in_window <= limit);
                } else {
                    prop_assert!(d.retry_after > 0);
                    let mut probe = state.clone();
                    prop_assert!(!probe.check(&l.into(), 1, now + d.retry_after - 1).allowed);
                    let mut probe = state.clone();
                    prop_assert!(probe.check(&l.into(), 1, now + d.retry_after).allowed);
                }
                prop_assert_eq!(d.remaining == 0, d.retry_after > 0);
            }
        }

        #[test]
        fn reset_after_restores_the_full_quota(
            limit in 1u64..6,
            gaps in prop::collection::vec(0u64..300_000_000, 1..30),
        ) {
            let l = limits(limit, 1);
            let mut state = State::new(Algorithm::SlidingWindow);
            let mut now = 0;
            let mut last = None;
            for gap in gaps {
                now += gap;
                last = Some(state.check(&l.into(), 1, now));
            }
            let d = last.unwrap(); // the vector is never empty (1..30)
            prop_assert_eq!(state.peek(&l.into(), 1, now + d.reset_after).remaining, limit);
        }
    }
}
