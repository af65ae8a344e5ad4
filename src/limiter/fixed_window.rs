//! Fixed window: windows aligned to multiples of the window length since the Unix epoch
//! (any length, including under a minute). Cheapest and smallest (16 bytes per key), at
//! the cost of allowing up to twice the limit across a window boundary.

use super::{Algo, Decision, Limit, Reader, State, fits};
use crate::clock::{NANOS_PER_SEC, Nanos};

/// A fixed window's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedWindowLimit {
    /// Units per window.
    pub limit: u64,
    /// The window length; at least one second.
    pub window: Nanos,
}

impl From<FixedWindowLimit> for Limit {
    fn from(p: FixedWindowLimit) -> Self {
        Limit::FixedWindow(p)
    }
}

impl Algo for FixedWindowLimit {
    type State = FixedWindow;
    const REDIS_KINDS: &'static [&'static str] = &["fw"];
    const REDIS_SCRIPT: &'static str = include_str!("fixed_window.lua");

    fn evaluate(&self, state: &mut FixedWindow, now: Nanos, cost: u64, consume: bool) -> Decision {
        state.evaluate(self, now, cost, consume)
    }

    fn quota(&self) -> u64 {
        self.limit
    }

    fn fresh_after(&self) -> Nanos {
        self.window
    }

    fn redis_args(&self) -> Vec<u64> {
        vec![self.limit, self.window / NANOS_PER_SEC]
    }

    fn encode(state: &FixedWindow, out: &mut Vec<u8>) {
        out.extend_from_slice(&state.start.to_le_bytes());
        out.extend_from_slice(&state.count.to_le_bytes());
    }

    fn decode(r: &mut Reader) -> Option<FixedWindow> {
        Some(FixedWindow {
            start: r.u64()?,
            count: r.u64()?,
        })
    }

    fn state_of(state: &mut State) -> Option<&mut FixedWindow> {
        match state {
            State::Fixed(s) => Some(s),
            _ => None,
        }
    }

    fn wrap(state: FixedWindow) -> State {
        State::Fixed(state)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FixedWindow {
    /// Start of the window `count` belongs to.
    start: Nanos,
    count: u64,
}

impl FixedWindow {
    pub(super) fn evaluate(
        &mut self,
        limits: &FixedWindowLimit,
        now: Nanos,
        cost: u64,
        consume: bool,
    ) -> Decision {
        let window = limits.window;
        let start = now - now % window;
        let end = start + window;
        // Same window if the recorded start falls inside the current one; this also keeps
        // the count when only the window length changed and the old start still lies in
        // the new window.
        if !(start..end).contains(&self.start) {
            self.count = 0;
        }
        self.start = start;

        let allowed = fits(self.count, cost, limits.limit);
        if allowed && consume {
            self.count += cost;
        }
        let remaining = limits.limit.saturating_sub(self.count);
        let until_end = end - now;
        Decision {
            allowed,
            limit: limits.limit,
            remaining,
            // The count starts again at the end of the window.
            retry_after: match fits(self.count, cost.max(1), limits.limit) {
                true => 0,
                false => until_end,
            },
            reset_after: if self.count > 0 { until_end } else { 0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Algorithm;
    use super::*;
    use proptest::prelude::*;

    fn limits(limit: u64, window_secs: u64) -> FixedWindowLimit {
        FixedWindowLimit {
            limit,
            window: window_secs * NANOS_PER_SEC,
        }
    }

    #[test]
    fn windows_align_to_the_epoch_even_under_a_minute() {
        let l = limits(2, 7);
        let mut s = FixedWindow::default();
        // 700 s is a multiple of 7 s: the window is [700, 707).
        let t = 702 * NANOS_PER_SEC;
        assert!(s.evaluate(&l, t, 1, true).allowed);
        assert!(s.evaluate(&l, t, 1, true).allowed);
        let d = s.evaluate(&l, t, 1, true);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, 5 * NANOS_PER_SEC);
        assert!(!s.evaluate(&l, 707 * NANOS_PER_SEC - 1, 1, true).allowed);
        let d = s.evaluate(&l, 707 * NANOS_PER_SEC, 1, true);
        assert!(d.allowed);
        assert_eq!(d.remaining, 1);
    }

    #[test]
    fn changing_the_window_length_keeps_the_count_within_the_new_window() {
        let mut s = FixedWindow::default();
        let t = 120 * NANOS_PER_SEC;
        for _ in 0..3 {
            s.evaluate(&limits(10, 60), t, 1, true);
        }
        // [120, 180) lies inside [0, 3600): the three requests still count.
        assert_eq!(s.evaluate(&limits(10, 3600), t, 1, false).remaining, 7);
    }

    proptest! {
        #[test]
        fn admits_at_most_the_limit_per_aligned_window(
            limit in 1u64..6,
            window_secs in 1u64..90,
            gaps in prop::collection::vec(0u64..3_000_000_000, 1..200),
        ) {
            let l = limits(limit, window_secs);
            let mut state = State::new(Algorithm::FixedWindow);
            let mut now = 1_700_000_123 * NANOS_PER_SEC;
            let mut per_window = std::collections::HashMap::<u64, u64>::new();
            for gap in gaps {
                now += gap;
                let d = state.check(&l.into(), 1, now);
                let w = now / l.window;
                let n = per_window.entry(w).or_default();
                if d.allowed {
                    *n += 1;
                } else {
                    // Blocked only when the window is really full, until exactly its end.
                    prop_assert_eq!(*n, limit);
                    prop_assert_eq!(now + d.retry_after, (w + 1) * l.window);
                    let mut probe = state.clone();
                    prop_assert!(!probe.check(&l.into(), 1, now + d.retry_after - 1).allowed);
                    prop_assert!(probe.check(&l.into(), 1, now + d.retry_after).allowed);
                }
                prop_assert!(*n <= limit);
                prop_assert_eq!(d.remaining, limit - *n);
            }
        }
    }
}
