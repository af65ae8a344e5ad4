//! Fixed window: windows aligned to multiples of the window length since the Unix epoch
//! (any length, including under a minute), or calendar windows (a UTC day, an ISO week
//! from Monday, a month from the 1st), whose length varies. Cheapest and smallest (16
//! bytes per key), at the cost of allowing up to twice the limit across a window
//! boundary.

use super::{Algo, Decision, Limit, Reader, State, Take, fits};
use crate::clock::{NANOS_PER_SEC, Nanos, civil_from_days, days_from_civil};
use serde::{Deserialize, Serialize};

const NANOS_PER_DAY: Nanos = 86_400 * NANOS_PER_SEC;

/// A fixed window's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedWindowLimit {
    /// Units per window.
    pub limit: u64,
    /// The window length (at least one second); with a calendar, its nominal length.
    pub window: Nanos,
    /// Calendar windows instead of windows of `window` since the epoch.
    pub calendar: Option<Calendar>,
}

/// Calendar windows, in UTC: each starts at 00:00 of its first day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Calendar {
    /// A day.
    Day,
    /// An ISO week, from Monday.
    Week,
    /// A month, from the 1st (28 to 31 days).
    Month,
}

impl Calendar {
    pub const ALL: [Calendar; 3] = [Calendar::Day, Calendar::Week, Calendar::Month];

    pub fn as_str(self) -> &'static str {
        match self {
            Calendar::Day => "day",
            Calendar::Week => "week",
            Calendar::Month => "month",
        }
    }

    /// The length a config shows as its `window_seconds` (and headers as `w`): a day, a
    /// week, or 30 days for a month.
    pub fn nominal_seconds(self) -> u64 {
        match self {
            Calendar::Day => 86_400,
            Calendar::Week => 7 * 86_400,
            Calendar::Month => 30 * 86_400,
        }
    }

    /// The longest window: a state is as good as fresh this long after its last check.
    fn longest(self) -> Nanos {
        match self {
            Calendar::Day => NANOS_PER_DAY,
            Calendar::Week => 7 * NANOS_PER_DAY,
            Calendar::Month => 31 * NANOS_PER_DAY,
        }
    }

    /// The number the Redis script knows this calendar by (0 is no calendar).
    fn code(self) -> u64 {
        match self {
            Calendar::Day => 1,
            Calendar::Week => 2,
            Calendar::Month => 3,
        }
    }

    /// The window holding `now`: its start and its end (exclusive).
    pub fn bounds(self, now: Nanos) -> (Nanos, Nanos) {
        let day = (now / NANOS_PER_DAY) as i64;
        let (first, next) = match self {
            Calendar::Day => (day, day + 1),
            // 1970-01-01 was a Thursday: Monday is 3 days before it.
            Calendar::Week => {
                let monday = day - (day + 3).rem_euclid(7);
                (monday, monday + 7)
            }
            Calendar::Month => {
                let (y, m, d) = civil_from_days(day);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (day - (d as i64 - 1), days_from_civil(ny, nm, 1))
            }
        };
        // Before the epoch (the week of 1970-01-01) is the epoch: no clock reads earlier.
        let at = |day: i64| (day.max(0) as Nanos).saturating_mul(NANOS_PER_DAY);
        (at(first), at(next))
    }
}

impl FixedWindowLimit {
    /// The window holding `now`: its start and its end (exclusive).
    pub fn bounds(&self, now: Nanos) -> (Nanos, Nanos) {
        match self.calendar {
            Some(c) => c.bounds(now),
            None => {
                let start = now - now % self.window;
                (start, start + self.window)
            }
        }
    }
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

    fn evaluate(&self, state: &mut FixedWindow, now: Nanos, cost: u64, take: Take) -> Decision {
        state.evaluate(self, now, cost, take)
    }

    fn refund(&self, state: &mut FixedWindow, at: Nanos, now: Nanos, cost: u64) {
        // Only while the window of `at` is still the one counted.
        let (start, _) = self.bounds(now);
        if at >= start && state.start == start {
            state.count = state.count.saturating_sub(cost);
        }
    }

    fn quota(&self) -> u64 {
        self.limit
    }

    fn fresh_after(&self) -> Nanos {
        self.calendar.map_or(self.window, Calendar::longest)
    }

    fn redis_args(&self) -> Vec<u64> {
        let calendar = self.calendar.map_or(0, Calendar::code);
        vec![self.limit, self.window / NANOS_PER_SEC, calendar]
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
        take: Take,
    ) -> Decision {
        let (start, end) = limits.bounds(now);
        // Same window if the recorded start falls inside the current one; this also keeps
        // the count when only the window length changed and the old start still lies in
        // the new window.
        if !(start..end).contains(&self.start) {
            self.count = 0;
        }
        self.start = start;

        let (allowed, need) = take.decide(self.count, cost, limits.limit);
        // A charge past the limit overdraws the window; its debt ends with it.
        // (Up to `MAX_EXACT`, as Redis's Lua counts.)
        self.count = (self.count.saturating_add(take.taken(allowed, cost))).min(super::MAX_EXACT);
        let remaining = limits.limit.saturating_sub(self.count);
        let until_end = end - now;
        Decision {
            allowed,
            limit: limits.limit,
            remaining,
            // The count starts again at the end of the window.
            retry_after: match fits(self.count, need, limits.limit) {
                true => 0,
                false => until_end,
            },
            reset_after: if self.count > 0 { until_end } else { 0 },
            debt: self.count.saturating_sub(limits.limit),
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
            calendar: None,
        }
    }

    fn calendar_limit(limit: u64, calendar: Calendar) -> FixedWindowLimit {
        FixedWindowLimit {
            limit,
            window: calendar.nominal_seconds() * NANOS_PER_SEC,
            calendar: Some(calendar),
        }
    }

    /// Seconds since the epoch of 00:00 UTC on that day.
    fn midnight(y: i64, m: u32, d: u32) -> Nanos {
        days_from_civil(y, m, d) as Nanos * NANOS_PER_DAY
    }

    #[test]
    fn calendar_windows_start_at_midnight_utc_on_their_first_day() {
        let at = |y, m, d, secs: Nanos| midnight(y, m, d) + secs * NANOS_PER_SEC;
        // A day.
        let noon = at(2027, 3, 14, 12 * 3600);
        assert_eq!(
            Calendar::Day.bounds(noon),
            (midnight(2027, 3, 14), midnight(2027, 3, 15))
        );
        // An ISO week: 2027-03-14 is a Sunday, so its week began on Monday the 8th; a
        // Monday at 00:00 begins the next.
        assert_eq!(
            Calendar::Week.bounds(noon),
            (midnight(2027, 3, 8), midnight(2027, 3, 15))
        );
        assert_eq!(
            Calendar::Week.bounds(midnight(2027, 3, 15)).0,
            midnight(2027, 3, 15)
        );
        // 1970-01-01 was a Thursday: its week began on Monday 1969-12-29 (clamped to
        // the epoch, which no clock reads).
        assert_eq!(Calendar::Week.bounds(0).1, midnight(1970, 1, 5));
        // Months of every length, the leap day, and the year's end.
        for (y, m, next) in [
            (2027, 1, (2027, 2)),
            (2027, 2, (2027, 3)),
            (2028, 2, (2028, 3)),
            (2027, 4, (2027, 5)),
            (2027, 12, (2028, 1)),
            (2100, 2, (2100, 3)),
            (2000, 2, (2000, 3)),
        ] {
            let (start, end) = (midnight(y, m, 1), midnight(next.0, next.1, 1));
            for now in [start, start + 1, end - 1] {
                assert_eq!(Calendar::Month.bounds(now), (start, end), "{y}-{m}");
            }
        }
        let days = |y, m| {
            (Calendar::Month.bounds(midnight(y, m, 1)).1 - midnight(y, m, 1)) / NANOS_PER_DAY
        };
        assert_eq!(
            [
                days(2027, 2),
                days(2028, 2),
                days(2100, 2),
                days(2000, 2),
                days(2027, 4),
                days(2027, 12)
            ],
            [28, 29, 28, 29, 30, 31]
        );
    }

    #[test]
    fn a_monthly_quota_resets_on_the_first_and_says_so_exactly() {
        let l = calendar_limit(2, Calendar::Month);
        let mut s = FixedWindow::default();
        // The leap day, 2028-02-29 at 23:00: the window ends at 00:00 on March 1st.
        let t = midnight(2028, 2, 29) + 23 * 3600 * NANOS_PER_SEC;
        assert!(
            s.evaluate(&l, midnight(2028, 2, 1), 1, Take::IfFits)
                .allowed
        );
        assert!(s.evaluate(&l, t, 1, Take::IfFits).allowed);
        let d = s.evaluate(&l, t, 1, Take::IfFits);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, 3600 * NANOS_PER_SEC);
        assert_eq!(d.reset_after, 3600 * NANOS_PER_SEC);
        assert!(
            !s.evaluate(&l, midnight(2028, 3, 1) - 1, 1, Take::IfFits)
                .allowed
        );
        let d = s.evaluate(&l, midnight(2028, 3, 1), 1, Take::IfFits);
        assert!(d.allowed);
        assert_eq!(d.remaining, 1);
        // Its reset is the 1st of April: 31 days.
        assert_eq!(d.reset_after, 31 * NANOS_PER_DAY);
    }

    #[test]
    fn windows_align_to_the_epoch_even_under_a_minute() {
        let l = limits(2, 7);
        let mut s = FixedWindow::default();
        // 700 s is a multiple of 7 s: the window is [700, 707).
        let t = 702 * NANOS_PER_SEC;
        assert!(s.evaluate(&l, t, 1, Take::IfFits).allowed);
        assert!(s.evaluate(&l, t, 1, Take::IfFits).allowed);
        let d = s.evaluate(&l, t, 1, Take::IfFits);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, 5 * NANOS_PER_SEC);
        assert!(
            !s.evaluate(&l, 707 * NANOS_PER_SEC - 1, 1, Take::IfFits)
                .allowed
        );
        let d = s.evaluate(&l, 707 * NANOS_PER_SEC, 1, Take::IfFits);
        assert!(d.allowed);
        assert_eq!(d.remaining, 1);
    }

    #[test]
    fn changing_the_window_length_keeps_the_count_within_the_new_window() {
        let mut s = FixedWindow::default();
        let t = 120 * NANOS_PER_SEC;
        for _ in 0..3 {
            s.evaluate(&limits(10, 60), t, 1, Take::IfFits);
        }
        // [120, 180) lies inside [0, 3600): the three requests still count.
        assert_eq!(
            s.evaluate(&limits(10, 3600), t, 1, Take::Nothing).remaining,
            7
        );
    }

    /// The calendar window holding `now`, by walking the calendar from the epoch: an
    /// oracle that shares no arithmetic with `Calendar::bounds`.
    fn walked(calendar: Calendar, now: Nanos) -> (Nanos, Nanos) {
        let day = now / NANOS_PER_DAY;
        let (mut y, mut m) = (1970i64, 1u32);
        let mut first = 0u64;
        let month_days = |y: i64, m: u32| match m {
            2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        match calendar {
            Calendar::Day => (day * NANOS_PER_DAY, (day + 1) * NANOS_PER_DAY),
            // Day 4 (1970-01-05) was the first Monday.
            Calendar::Week => {
                let monday = if day < 4 { 0 } else { 4 + (day - 4) / 7 * 7 };
                let end = if day < 4 { 4 } else { monday + 7 };
                (monday * NANOS_PER_DAY, end * NANOS_PER_DAY)
            }
            Calendar::Month => loop {
                let next = first + month_days(y, m);
                if day < next {
                    return (first * NANOS_PER_DAY, next * NANOS_PER_DAY);
                }
                first = next;
                (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            },
        }
    }

    proptest! {
        #[test]
        fn calendar_bounds_match_the_walked_calendar(
            calendar in prop::sample::select(Calendar::ALL.to_vec()),
            now in 0u64..(4_102_444_800 * NANOS_PER_SEC),
        ) {
            let (start, end) = calendar.bounds(now);
            let walked = walked(calendar, now);
            // The week of the epoch began before it: only its end is comparable.
            if calendar == Calendar::Week && now < 4 * NANOS_PER_DAY {
                prop_assert_eq!(end, walked.1);
            } else {
                prop_assert_eq!((start, end), walked);
            }
        }

        #[test]
        fn admits_at_most_the_limit_per_calendar_window_and_retries_at_its_end(
            limit in 1u64..5,
            calendar in prop::sample::select(Calendar::ALL.to_vec()),
            gaps in prop::collection::vec(0u64..(3 * NANOS_PER_DAY), 1..120),
        ) {
            let l = calendar_limit(limit, calendar);
            let mut state = State::new(Algorithm::FixedWindow);
            let mut now = 1_800_000_123 * NANOS_PER_SEC;
            let mut per_window = std::collections::HashMap::<u64, u64>::new();
            for gap in gaps {
                now += gap;
                let d = state.check(&l.into(), 1, now);
                let (start, end) = walked(calendar, now);
                let n = per_window.entry(start).or_default();
                if d.allowed {
                    *n += 1;
                } else {
                    prop_assert_eq!(*n, limit);
                    prop_assert_eq!(now + d.retry_after, end);
                }
                prop_assert!(*n <= limit);
                prop_assert_eq!(d.remaining, limit - *n);
            }
        }

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
