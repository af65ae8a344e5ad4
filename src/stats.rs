//! Server-wide request counters for `/admin/stats`: per second for the last five minutes
//! and per minute for the last day, in fixed rings (constant memory). The per-minute ring
//! is seeded from SQLite at start, so the 24-hour totals survive a restart.

use crate::clock::{NANOS_PER_SEC, Nanos};
use std::sync::Mutex;

const SECONDS: usize = 300;
const MINUTES: usize = 1440;
/// `requests_per_second` averages this many complete seconds.
const RATE_SECONDS: u64 = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Which second or minute the counts belong to; a slot with an older index is stale.
    index: u64,
    allowed: u64,
    blocked: u64,
}

impl Slot {
    fn add(&mut self, index: u64, allowed: u64, blocked: u64) {
        if self.index != index {
            *self = Slot {
                index,
                ..Slot::default()
            };
        }
        self.allowed += allowed;
        self.blocked += blocked;
    }
}

#[derive(Debug)]
struct Rings {
    seconds: Box<[Slot; SECONDS]>,
    minutes: Box<[Slot; MINUTES]>,
}

/// Totals over the last 24 hours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayTotals {
    pub total: u64,
    pub blocked: u64,
}

/// One second of traffic, for charts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SecondCounts {
    pub second: u64,
    pub allowed: u64,
    pub blocked: u64,
}

#[derive(Debug)]
pub struct GlobalStats {
    rings: Mutex<Rings>,
}

impl Default for GlobalStats {
    fn default() -> Self {
        Self {
            rings: Mutex::new(Rings {
                seconds: Box::new([Slot::default(); SECONDS]),
                minutes: Box::new([Slot::default(); MINUTES]),
            }),
        }
    }
}

impl GlobalStats {
    fn rings(&self) -> std::sync::MutexGuard<'_, Rings> {
        // A panic while holding this lock can only leave counts half-added; they are
        // still counts, so a poisoned lock is used as it is.
        self.rings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one decision.
    pub fn record(&self, now: Nanos, allowed: bool) {
        let (a, b) = if allowed { (1, 0) } else { (0, 1) };
        let second = now / NANOS_PER_SEC;
        let minute = second / 60;
        let mut r = self.rings();
        r.seconds[second as usize % SECONDS].add(second, a, b);
        r.minutes[minute as usize % MINUTES].add(minute, a, b);
    }

    /// Seeds a minute from the database (at start).
    pub fn seed_minute(&self, minute: u64, allowed: u64, blocked: u64) {
        self.rings().minutes[minute as usize % MINUTES].add(minute, allowed, blocked);
    }

    pub fn last_24h(&self, now: Nanos) -> DayTotals {
        let minute = now / NANOS_PER_SEC / 60;
        let oldest = minute.saturating_sub(MINUTES as u64 - 1);
        let r = self.rings();
        r.minutes
            .iter()
            .filter(|s| (oldest..=minute).contains(&s.index))
            .fold(DayTotals::default(), |t, s| DayTotals {
                total: t.total + s.allowed + s.blocked,
                blocked: t.blocked + s.blocked,
            })
    }

    /// Per-second counts of the last `n` complete seconds (at most five minutes), oldest
    /// first; seconds without traffic are zeros.
    pub fn recent_seconds(&self, now: Nanos, n: usize) -> Vec<SecondCounts> {
        let current = now / NANOS_PER_SEC;
        let n = n.min(SECONDS - 1) as u64;
        let r = self.rings();
        (current.saturating_sub(n)..current)
            .map(|second| {
                let slot = r.seconds[second as usize % SECONDS];
                if slot.index == second {
                    SecondCounts {
                        second,
                        allowed: slot.allowed,
                        blocked: slot.blocked,
                    }
                } else {
                    SecondCounts {
                        second,
                        ..SecondCounts::default()
                    }
                }
            })
            .collect()
    }

    /// Decisions per second, averaged over the last ten complete seconds.
    pub fn requests_per_second(&self, now: Nanos) -> f64 {
        let sum: u64 = self
            .recent_seconds(now, RATE_SECONDS as usize)
            .iter()
            .map(|s| s.allowed + s.blocked)
            .sum();
        sum as f64 / RATE_SECONDS as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = NANOS_PER_SEC;

    #[test]
    fn counts_the_last_day_and_forgets_older_minutes() {
        let stats = GlobalStats::default();
        let t = 1_000_000 * S;
        stats.record(t, true);
        stats.record(t, false);
        stats.seed_minute(t / S / 60 - 10, 5, 1);
        assert_eq!(
            stats.last_24h(t),
            DayTotals {
                total: 8,
                blocked: 2
            }
        );
        // A day and a minute later, all of it has left the window.
        assert_eq!(stats.last_24h(t + 86_460 * S), DayTotals::default());
    }

    #[test]
    fn averages_requests_per_second_over_complete_seconds() {
        let stats = GlobalStats::default();
        let t = 2_000_000 * S;
        for i in 0..10 {
            for _ in 0..=i {
                stats.record(t + i * S, true);
            }
        }
        // The current second does not count yet.
        assert_eq!(stats.requests_per_second(t + 9 * S), 4.5);
        assert_eq!(stats.requests_per_second(t + 10 * S), 5.5);
        let recent = stats.recent_seconds(t + 10 * S, 3);
        assert_eq!(
            recent.iter().map(|s| s.allowed).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
    }
}
