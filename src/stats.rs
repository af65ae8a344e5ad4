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
        // Saturating: other instances' counts arrive over the network.
        self.allowed = self.allowed.saturating_add(allowed);
        self.blocked = self.blocked.saturating_add(blocked);
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
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
        self.add_second(now / NANOS_PER_SEC, a, b);
    }

    /// Counts the decisions of one second (another instance's, in distributed mode).
    pub fn add_second(&self, second: u64, allowed: u64, blocked: u64) {
        let minute = second / 60;
        let mut r = self.rings();
        r.seconds[second as usize % SECONDS].add(second, allowed, blocked);
        r.minutes[minute as usize % MINUTES].add(minute, allowed, blocked);
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

/// Distributed mode: what the other instances reported over Redis, once a second each.
#[derive(Debug, Default)]
pub struct Peers {
    /// The other instances' decisions, by second and minute, as for this instance.
    pub remote: GlobalStats,
    instances: Mutex<std::collections::HashMap<String, Peer>>,
}

#[derive(Debug, Clone, Default)]
struct Peer {
    last_seen: Nanos,
    /// The last reported seconds, newest last (at most `RATE_SECONDS`).
    seconds: std::collections::VecDeque<SecondCounts>,
    watching: bool,
}

/// One instance's row in `global_stats`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct InstanceRow {
    pub instance: String,
    /// This instance (the one answering).
    pub local: bool,
    pub requests_per_second: f64,
    pub last_second: SecondCounts,
    pub last_seen: String,
}

/// Instances not heard from for this long are dropped from the rows.
const PEER_TIMEOUT: Nanos = 5 * NANOS_PER_SEC;

impl Peers {
    fn instances(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Peer>> {
        self.instances.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one instance's second of traffic, heard at `now`.
    pub fn heard(&self, instance: &str, counts: SecondCounts, watching: bool, now: Nanos) {
        let mut all = self.instances();
        let peer = all.entry(instance.to_owned()).or_default();
        peer.last_seen = now;
        peer.watching = watching;
        // A second reported twice (a delayed tick catching up) counts once.
        if peer
            .seconds
            .back()
            .is_some_and(|s| s.second >= counts.second)
        {
            return;
        }
        self.remote
            .add_second(counts.second, counts.allowed, counts.blocked);
        peer.seconds.push_back(counts);
        while peer.seconds.len() > RATE_SECONDS as usize {
            peer.seconds.pop_front();
        }
    }

    /// Forgets instances gone quiet; whether any remaining one has feed subscribers.
    pub fn sweep(&self, now: Nanos) -> bool {
        let mut all = self.instances();
        all.retain(|_, p| p.last_seen + PEER_TIMEOUT > now);
        all.values().any(|p| p.watching)
    }

    /// The other instances' rows, by name.
    pub fn rows(&self, now: Nanos) -> Vec<InstanceRow> {
        let all = self.instances();
        let mut rows: Vec<InstanceRow> = all
            .iter()
            .filter(|(_, p)| p.last_seen + PEER_TIMEOUT > now)
            .map(|(name, p)| InstanceRow {
                instance: name.clone(),
                local: false,
                requests_per_second: p.seconds.iter().fold(0u64, |n, s| {
                    n.saturating_add(s.allowed).saturating_add(s.blocked)
                }) as f64
                    / RATE_SECONDS as f64,
                last_second: p.seconds.back().copied().unwrap_or_default(),
                last_seen: crate::clock::rfc3339(p.last_seen),
            })
            .collect();
        rows.sort_by(|a, b| a.instance.cmp(&b.instance));
        rows
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
    fn peers_are_counted_listed_and_forgotten_when_quiet() {
        let peers = Peers::default();
        let t = 3_000_000 * S;
        for i in 0..12 {
            let counts = SecondCounts {
                second: t / S + i,
                allowed: 10,
                blocked: 1,
            };
            peers.heard("b:1", counts, i == 11, t + (i + 1) * S);
        }
        // A second reported twice counts once.
        let again = SecondCounts {
            second: t / S + 11,
            allowed: 10,
            blocked: 1,
        };
        peers.heard("b:1", again, true, t + 12 * S);
        let now = t + 12 * S;
        let rows = peers.rows(now);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].requests_per_second, 11.0);
        assert_eq!(rows[0].last_second.allowed, 10);
        assert_eq!(peers.remote.last_24h(now).total, 132);
        assert!(peers.sweep(now), "the last report said it was watched");
        assert!(!peers.sweep(now + PEER_TIMEOUT));
        assert!(peers.rows(now + PEER_TIMEOUT).is_empty());
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
