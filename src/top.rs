//! Top clients by allowed and by blocked requests over the last hour, in memory that
//! does not grow with the number of clients: one heavy-hitters sketch per minute and
//! outcome (Misra–Gries, with batched decrements).
//!
//! A sketch holds at most [`WORKING`] clients while its minute runs: when full, the
//! `KEPT + 1`-th largest count is subtracted from every count and the clients left at
//! zero are dropped, so any client with more than `1 / KEPT` of the minute's requests is
//! always kept, and every count is short of the truth by at most the sum subtracted
//! (reported as `error_bound`). When its minute ends a sketch keeps its [`KEPT`] largest.
//! Each registry shard has its own (a client always lives in the same shard), updated
//! under the shard's lock, so the hot path takes no other lock.

use crate::clock::{NANOS_PER_SEC, Nanos};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Clients a finished minute keeps, per outcome and shard.
pub const KEPT: usize = 64;
/// Clients a running minute holds before it sheds the smallest counts.
pub const WORKING: usize = 4 * KEPT;
/// Minutes kept: the longest window a query may ask for.
pub const MINUTES: u64 = 60;

/// Which requests a ranking counts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum By {
    Allowed,
    Blocked,
}

#[derive(Debug, Default)]
struct Sketch {
    /// (Hashed with the fast, randomly seeded hasher of the registry's own map: every
    /// request of a shard's clients passes here.)
    counts: HashMap<Arc<str>, u64, hashlink::DefaultHashBuilder>,
    /// Subtracted from every count so far: how far short of the truth a count may be.
    shed: u64,
}

impl Sketch {
    fn add(&mut self, client: &Arc<str>) {
        if let Some(n) = self.counts.get_mut(client) {
            *n += 1;
            return;
        }
        if self.counts.len() >= WORKING {
            self.shed_to(KEPT);
        }
        self.counts.insert(client.clone(), 1);
    }

    /// Subtracts the `keep + 1`-th largest count from all, dropping the clients that
    /// reach zero: at most `keep` remain.
    fn shed_to(&mut self, keep: usize) {
        if self.counts.len() <= keep {
            return;
        }
        let mut values: Vec<u64> = self.counts.values().copied().collect();
        let (_, cut, _) = values.select_nth_unstable_by(keep, |a, b| b.cmp(a));
        let cut = *cut;
        self.shed += cut;
        self.counts.retain(|_, n| {
            *n -= cut;
            *n > 0
        });
    }

    /// Keeps the `keep` largest as they are (a finished minute: nothing more will come,
    /// so the others are dropped and their counts bound the error instead).
    fn keep_largest(&mut self, keep: usize) {
        if self.counts.len() <= keep {
            return;
        }
        let mut entries: Vec<(Arc<str>, u64)> = self.counts.drain().collect();
        entries.select_nth_unstable_by(keep, |a, b| b.1.cmp(&a.1));
        // The largest count dropped: no dropped client had more.
        let dropped = entries[keep..].iter().map(|e| e.1).max().unwrap_or(0);
        entries.truncate(keep);
        self.shed += dropped;
        self.counts = entries.into_iter().collect();
    }
}

#[derive(Debug)]
struct Minute {
    minute: u64,
    allowed: Sketch,
    blocked: Sketch,
}

/// One shard's sketches of the last [`MINUTES`] minutes.
#[derive(Debug, Default)]
pub struct TopClients {
    minutes: VecDeque<Minute>,
}

/// One client of a ranking.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Ranked {
    #[serde(serialize_with = "as_str")]
    #[schema(value_type = String)]
    pub client_id: Arc<str>,
    /// Requests counted; short of the truth by at most the ranking's `error_bound`.
    pub count: u64,
}

fn as_str<S: serde::Serializer>(s: &Arc<str>, to: S) -> Result<S::Ok, S::Error> {
    to.serialize_str(s)
}

impl TopClients {
    /// Counts one request of `client` at `now`, allowed (let through) or blocked.
    pub fn record(&mut self, client: &Arc<str>, allowed: bool, now: Nanos) {
        let minute = now / NANOS_PER_SEC / 60;
        if self.minutes.back().is_none_or(|m| m.minute < minute) {
            if let Some(done) = self.minutes.back_mut() {
                done.allowed.keep_largest(KEPT);
                done.blocked.keep_largest(KEPT);
            }
            while self
                .minutes
                .front()
                .is_some_and(|m| m.minute + MINUTES <= minute)
            {
                self.minutes.pop_front();
            }
            self.minutes.push_back(Minute {
                minute,
                allowed: Sketch::default(),
                blocked: Sketch::default(),
            });
        }
        // A clock that stepped back counts in the newest minute.
        if let Some(m) = self.minutes.back_mut() {
            match allowed {
                true => m.allowed.add(client),
                false => m.blocked.add(client),
            }
        }
    }

    /// The counts of the last `minutes` minutes up to `now`, one entry per client and
    /// minute (a client may appear several times: see [`sum`]), and the error bound of
    /// their sum. Only copies, so that a shard's lock is held for no more than that.
    pub fn entries(&self, by: By, minutes: u64, now: Nanos) -> (Vec<(Arc<str>, u64)>, u64) {
        let current = now / NANOS_PER_SEC / 60;
        let mut entries = Vec::new();
        let mut error = 0;
        for m in self.minutes.iter().filter(|m| m.minute + minutes > current) {
            let sketch = match by {
                By::Allowed => &m.allowed,
                By::Blocked => &m.blocked,
            };
            error += sketch.shed;
            entries.extend(sketch.counts.iter().map(|(c, n)| (c.clone(), *n)));
        }
        (entries, error)
    }

    /// [`TopClients::entries`], summed per client.
    #[cfg(test)]
    fn counts(&self, by: By, minutes: u64, now: Nanos) -> (HashMap<Arc<str>, u64>, u64) {
        let (entries, error) = self.entries(by, minutes, now);
        (sum(entries), error)
    }

    /// Clients held in all sketches: what the memory bound is about.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.minutes
            .iter()
            .map(|m| m.allowed.counts.len() + m.blocked.counts.len())
            .sum()
    }
}

/// Entries of the same client added up.
pub fn sum(entries: impl IntoIterator<Item = (Arc<str>, u64)>) -> HashMap<Arc<str>, u64> {
    let mut sum: HashMap<Arc<str>, u64> = HashMap::new();
    for (client, n) in entries {
        *sum.entry(client).or_default() += n;
    }
    sum
}

/// The `limit` largest of per-client counts (gathered from every shard: a client is in
/// one shard only), largest first, ties by client id.
pub fn rank(counts: impl IntoIterator<Item = (Arc<str>, u64)>, limit: usize) -> Vec<Ranked> {
    let mut all: Vec<Ranked> = counts
        .into_iter()
        .map(|(client_id, count)| Ranked { client_id, count })
        .collect();
    all.sort_by(|a, b| b.count.cmp(&a.count).then(a.client_id.cmp(&b.client_id)));
    all.truncate(limit);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Nanos = 60 * NANOS_PER_SEC;

    #[test]
    fn finds_the_heavy_hitters_among_100_000_clients_in_bounded_memory() {
        let mut top = TopClients::default();
        let heavy: Vec<Arc<str>> = (0..5).map(|i| Arc::from(format!("heavy-{i}"))).collect();
        let mut most_held = 0;
        let t0 = 1_000 * MIN;
        for i in 0..100_000u64 {
            let now = t0 + i * (3 * MIN / 100_000);
            let one: Arc<str> = Arc::from(format!("client-{i}"));
            top.record(&one, false, now);
            // Each heavy client sends one request in 50: 2% of the traffic each.
            if i % 10 == 0 {
                top.record(&heavy[(i / 10 % 5) as usize], false, now);
            }
            most_held = most_held.max(top.held());
        }
        // At most WORKING in the running minute and KEPT in each finished one.
        assert!(most_held <= WORKING + 2 * KEPT, "{most_held}");
        let now = t0 + 3 * MIN;
        let (counts, error) = top.counts(By::Blocked, 5, now);
        let ranked = rank(counts, 5);
        let mut names: Vec<&str> = ranked.iter().map(|r| &*r.client_id).collect();
        names.sort();
        assert_eq!(
            names,
            ["heavy-0", "heavy-1", "heavy-2", "heavy-3", "heavy-4"]
        );
        for r in &ranked {
            // Each sent 2,000; the sketch is short by at most the error bound.
            assert!(
                r.count <= 2_000 && r.count + error >= 2_000,
                "{r:?} {error}"
            );
        }
        assert!(top.counts(By::Allowed, 5, now).0.is_empty());
    }

    #[test]
    fn counts_exactly_while_few_clients_and_only_within_the_window() {
        let mut top = TopClients::default();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let t0 = 1_000 * MIN;
        for _ in 0..3 {
            top.record(&a, true, t0);
        }
        top.record(&b, true, t0 + 2 * MIN);
        top.record(&b, false, t0 + 2 * MIN);
        let (counts, error) = top.counts(By::Allowed, 5, t0 + 2 * MIN);
        assert_eq!(error, 0);
        assert_eq!(
            rank(counts, 10),
            [
                Ranked {
                    client_id: a.clone(),
                    count: 3
                },
                Ranked {
                    client_id: b.clone(),
                    count: 1
                }
            ]
        );
        // One minute back from t0 + 2 min holds b only.
        let (counts, _) = top.counts(By::Allowed, 1, t0 + 2 * MIN);
        assert_eq!(rank(counts, 10).len(), 1);
        // An hour later everything has aged out.
        top.record(&a, true, t0 + 70 * MIN);
        assert_eq!(top.minutes.len(), 1);
        assert_eq!(top.counts(By::Blocked, 60, t0 + 70 * MIN).0.len(), 0);
    }
}
