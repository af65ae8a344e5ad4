//! The quota backend of distributed mode: one Lua script per algorithm (loaded once, run
//! with EVALSHA) decides a check in one round trip, atomic in Redis, timed by the Redis
//! server's clock (`TIME`) so that instance clocks cannot disagree. The scripts keep
//! exactly the arithmetic of [`crate::limiter`]; `tests/backends.rs` runs one suite
//! against both. A test's manual clock is passed in instead of `TIME`
//! ([`crate::clock::Clock::is_system`]). Keys are `rw:{<client>}:<endpoint>:<kind>`: the
//! hash tag keeps one client's keys in one Redis Cluster slot, and every key expires once
//! its state is as good as fresh.

use super::{Redis, RedisUnavailable};
use crate::clock::{NANOS_PER_SEC, Nanos};
use crate::limiter::{Algorithm, DEFAULT_LIMIT, Decision, Decisions, Limit, Mode, Named, States};
use crate::metrics::Metrics;
use crate::store::over_limit::OverLimit;
use crate::store::quota::{Quota, QuotaBackend, Unavailable, Verdict};
use futures_util::future::BoxFuture;
use redis::RedisError;
use smallvec::SmallVec;
use std::sync::MutexGuard;
use std::time::Instant;

impl QuotaBackend for Redis {
    /// A consuming check of a quota refused lately, until it could admit, is refused
    /// here without a round trip (see [`OverLimit`]).
    fn check(
        &self,
        _local: &mut States,
        quota: Quota<'_>,
        cost: u64,
        mode: Mode,
        now: Nanos,
    ) -> Verdict {
        let (client, policy) = (quota.client, quota.policy);
        let (endpoint, limits) = (&*policy.endpoint, &*policy.limits);
        // What a refusal of this check will be remembered with: when it was sent (so
        // never later than Redis decided it), and what had been forgotten by then.
        let mut sent = None;
        match mode {
            Mode::Consume if !policy.refundable => {
                let over = self.over_limit();
                if let Some(d) = over.refusal(client, endpoint, limits, cost, now) {
                    self.inner.config.metrics.redis_refused_locally.inc();
                    return Verdict::Now(d);
                }
                sent = Some((now, over.generation()));
            }
            Mode::Reset | Mode::Refund(_) => self.over_limit().forget_quota(client, endpoint),
            // A charge only moves a quota's next admission later: a refusal remembered
            // until an earlier moment is still true until then.
            Mode::Consume | Mode::Peek | Mode::Charge => {}
        }
        let ask = Redis::check(self, client, endpoint, limits, cost, mode);
        let remember = sent.map(|sent| (self.clone(), client.clone(), policy.clone(), sent));
        Verdict::Later(Box::pin(async move {
            let d = ask.await.map_err(|_| Unavailable)?;
            if let Some((this, client, policy, sent)) = remember
                && !d.allowed
            {
                this.over_limit().remember(
                    &client,
                    &policy.endpoint,
                    &policy.limits,
                    cost,
                    sent,
                    &d,
                );
            }
            Ok(d)
        }))
    }

    fn forget(&self, client: Option<&str>) {
        let mut over = self.over_limit();
        match client {
            Some(client) => over.forget_client(client),
            None => over.clear(),
        }
    }

    /// The exact reset is in Redis: the longest a quota can take to be fresh again.
    fn fresh_at(&self, _local: &mut States, limits: &[Named], now: Nanos) -> Nanos {
        let longest = limits.iter().map(|l| l.limit.fresh_after()).max();
        now.saturating_add(longest.unwrap_or(0))
    }

    fn start(&self) {
        self.connect();
    }

    fn reachable(&self) -> Option<(&'static str, bool)> {
        Some(("redis", self.is_up()))
    }

    /// `SET NX` with the lease's time to live, in the client's slot.
    fn first_use(
        &self,
        client: &str,
        id: u64,
        ttl: Nanos,
        _now: Nanos,
    ) -> BoxFuture<'static, Result<bool, Unavailable>> {
        let conn = self.conn();
        let this = self.clone();
        let key = format!("rw:{{{client}}}:released:{id:016x}");
        let ms = ttl.div_ceil(1_000_000).max(1);
        Box::pin(async move {
            let mut conn = conn.map_err(|_| Unavailable)?;
            let set: Result<Option<String>, RedisError> = redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .query_async(&mut conn)
                .await;
            this.observe(set)
                .map(|v| v.is_some())
                .map_err(|_| Unavailable)
        })
    }
}

impl Redis {
    /// The quotas it refused lately (locked for a lookup or an update only).
    fn over_limit(&self) -> MutexGuard<'_, OverLimit> {
        (self.inner.over_limit.lock()).unwrap_or_else(|e| e.into_inner())
    }

    /// Checks a request of `cost` units of `client` under the `limits` of the config
    /// `endpoint`, consuming them when `mode` says so and they all fit under every limit:
    /// the same decision as `limiter::States::evaluate`.
    pub fn check(
        &self,
        client: &str,
        endpoint: &str,
        limits: &[Named],
        cost: u64,
        mode: Mode,
    ) -> impl Future<Output = Result<Decisions, RedisUnavailable>> + use<> {
        // This thread's own connection (and its id), else the handle's.
        let conn = self.conn().map(|shared| match self.local_conn() {
            Some((conn, id)) => (conn, Some(id)),
            None => (shared, None),
        });
        let this = self.clone();
        let several = limits.len() > 1;
        let limits_only: SmallVec<[Limit; 1]> = limits.iter().map(|l| l.limit).collect();
        let script = self.inner.config.scripts.decision(&limits_only);
        // The call is written here, once, into one buffer: `EVALSHA`, each limit's keys
        // in turn (as many for each: every algorithm's kinds), then the arguments.
        let per_limit: usize = Algorithm::ALL.iter().map(|a| a.redis_kinds().len()).sum();
        let mut call = redis::cmd("EVALSHA");
        call.arg(script.get_hash()).arg(per_limit * limits.len());
        let mut del = (mode == Mode::Reset).then(|| redis::cmd("DEL"));
        for l in limits {
            for_each_key(client, endpoint, &l.name, l.limit.algorithm(), |key| {
                call.arg(key);
                if let Some(del) = &mut del {
                    del.arg(key);
                }
            });
        }
        match self.inner.config.clock.as_ref().map(|c| c.now()) {
            Some(now) => call.arg(now / NANOS_PER_SEC).arg(now % NANOS_PER_SEC),
            None => call.arg("").arg(""),
        };
        match mode {
            Mode::Consume => call.arg("1"),
            Mode::Peek | Mode::Reset => call.arg("0"),
            Mode::Charge => call.arg("3"),
            // Given back for the check made at `at`.
            Mode::Refund(at) => {
                call.arg(format!("2:{}:{}", at / NANOS_PER_SEC, at % NANOS_PER_SEC))
            }
        };
        call.arg(cost);
        if several {
            // How to cut KEYS and ARGV into each limit's (see `redis/several.lua`).
            call.arg(limits.len());
            for l in limits {
                let args = l.limit.redis_args();
                call.arg(l.limit.algorithm().index() + 1)
                    .arg(per_limit)
                    .arg(args.len())
                    .arg(args);
            }
        } else {
            call.arg(limits[0].limit.redis_args());
        }
        let limits = limits_only;
        async move {
            let (mut conn, local) = conn?;
            if let Some(del) = del {
                // Every key of the quota, whatever the algorithm: one hash slot (the
                // client's tag), so one command even in a Redis Cluster.
                let deleted: Result<u64, RedisError> = del.query_async(&mut conn).await;
                this.outcome(local, deleted)?;
            }
            let script = this.inner.config.scripts.decision(&limits);
            let started = Instant::now();
            let reply: Result<Vec<u8>, RedisError> = match call.query_async(&mut conn).await {
                // Redis lost its scripts (restarted, or `SCRIPT FLUSH`): loaded again.
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    match script.prepare_invoke().load_async(&mut conn).await {
                        Ok(_) => call.query_async(&mut conn).await,
                        Err(e) => Err(e),
                    }
                }
                reply => reply,
            };
            Metrics::observe(&this.inner.config.metrics.redis_seconds, started.elapsed());
            let reply = this.outcome(local, reply)?;
            let reply = parse_answer(&reply).ok_or_else(|| {
                RedisUnavailable::Failed("a decision script's answer is not its numbers".to_owned())
            })?;
            let nanos = |s: u64, ns: u64| s.saturating_mul(NANOS_PER_SEC).saturating_add(ns);
            // Seven numbers per limit, then the time of the decision.
            let Some((each, &[s, ns])) = reply
                .split_last_chunk::<2>()
                .filter(|(each, _)| each.len() == 7 * limits.len())
            else {
                return Err(RedisUnavailable::Failed(format!(
                    "a decision script answered {} numbers for {} limits",
                    reply.len(),
                    limits.len()
                )));
            };
            let each = each.chunks_exact(7).zip(&limits).map(|(r, limit)| {
                limit.settle(Decision {
                    allowed: r[0] == 1,
                    limit: limit.quota(),
                    remaining: r[1],
                    retry_after: nanos(r[2], r[3]),
                    reset_after: nanos(r[4], r[5]),
                    debt: r[6],
                })
            });
            Ok(Decisions::of(each.collect()).decided_at(nanos(s, ns)))
        }
    }
}

/// A decision script's numbers (see `redis/answer.lua`), or `None` for anything but
/// non-negative 64-bit integers.
fn parse_answer(reply: &[u8]) -> Option<SmallVec<[u64; 8]>> {
    let (numbers, []) = reply.as_chunks::<8>() else {
        return None;
    };
    (numbers.iter())
        .map(|n| u64::try_from(i64::from_be_bytes(*n)).ok())
        .collect()
}

/// Hands each key of one (client, endpoint) for one limit to `each`, written into one
/// buffer: the algorithm's own first, then the others' (a changed algorithm starts
/// fresh state, as in memory). A limit is named after
/// the endpoint (`rw:{alice}:/api/* #daily:fw`: a path config has no whitespace, a
/// descriptor rule's identity no `#`), except `default`, the limit of a config written
/// with top-level fields, which keeps the keys such configs have always had.
fn for_each_key(
    client: &str,
    endpoint: &str,
    limit: &str,
    algorithm: Algorithm,
    mut each: impl FnMut(&str),
) {
    let mut key = String::with_capacity(client.len() + endpoint.len() + limit.len() + 12);
    key.push_str("rw:{");
    key.push_str(client);
    key.push_str("}:");
    key.push_str(endpoint);
    if limit != DEFAULT_LIMIT {
        key.push_str(" #");
        key.push_str(limit);
    }
    key.push(':');
    let stem = key.len();
    let others = Algorithm::ALL.into_iter().filter(|a| *a != algorithm);
    for kind in std::iter::once(algorithm)
        .chain(others)
        .flat_map(Algorithm::redis_kinds)
    {
        key.truncate(stem);
        key.push_str(kind);
        each(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key [`for_each_key`] names, in its order.
    fn keys(client: &str, endpoint: &str, limit: &str, algorithm: Algorithm) -> Vec<String> {
        let mut all = Vec::new();
        for_each_key(client, endpoint, limit, algorithm, |k| {
            all.push(k.to_owned())
        });
        all
    }

    #[test]
    fn keys_share_the_clients_hash_tag_and_name_the_algorithm_first() {
        let k = keys("alice", "/api/{x}", DEFAULT_LIMIT, Algorithm::SlidingWindow);
        assert_eq!(k[0], "rw:{alice}:/api/{x}:sw");
        assert_eq!(k[1], "rw:{alice}:/api/{x}:swn");
        // Then every other algorithm's, which a changed algorithm deletes.
        let all: usize = Algorithm::ALL.iter().map(|a| a.redis_kinds().len()).sum();
        assert_eq!(k.len(), all);
        // Redis Cluster hashes the first {...}: the client, whatever the endpoint holds.
        assert!(k.iter().all(|k| k.starts_with("rw:{alice}:")));
        assert_eq!(
            keys("a", "/", DEFAULT_LIMIT, Algorithm::TokenBucket)[0],
            "rw:{a}:/:tb"
        );
        let named = keys("a", "/x", "daily", Algorithm::FixedWindow);
        assert_eq!(named[0], "rw:{a}:/x #daily:fw");
    }
}
