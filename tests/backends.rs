//! One suite, two backends: the in-memory algorithms (`limiter::State`) and their Lua
//! scripts in a real Redis (started by this test) must reach the same decisions, to the
//! nanosecond, for the same requests at the same times, charge usage known after the
//! fact alike (overdrawing past the limit), and give back refunded admissions (a
//! request refused by another key's limit, an estimate reconciled down) alike. Time is a manual clock, which the Redis scripts are given instead
//! of `TIME`.

mod common;

use common::redis::RedisServer;
use ratewarden::clock::{Clock, ManualClock, NANOS_PER_SEC, SharedClock};
use ratewarden::limiter::{
    Algorithm, Calendar, DEFAULT_LIMIT, Decisions, FixedWindowLimit, Limit, Mode, Named, States,
    TokenBucketLimit, granule_ms,
};
use ratewarden::metrics::Metrics;
use ratewarden::store::redis::{Redis, RedisConfig};
use std::sync::Arc;
use std::time::Duration;

/// A backend that decides one request at the clock's time.
enum Backend {
    Memory(States),
    Redis(Redis, &'static str),
}

impl Backend {
    fn memory() -> Self {
        Backend::Memory(States::new(&[one(Limit::new(
            Algorithm::FixedWindow,
            1,
            1,
        ))]))
    }

    /// Decides under one limit.
    async fn check(&mut self, limit: &Limit, now: u64, cost: u64, mode: Mode) -> Decisions {
        self.check_all(&[one(*limit)], now, cost, mode).await
    }

    /// Decides under every limit of a config.
    async fn check_all(&mut self, limits: &[Named], now: u64, cost: u64, mode: Mode) -> Decisions {
        match self {
            Backend::Memory(states) => states.evaluate(limits, now, cost, mode),
            Backend::Redis(redis, client) => redis
                .check(client, "/api/*", limits, cost, mode)
                .await
                .expect("Redis answers"),
        }
    }
}

/// The one limit of a config written with top-level fields.
fn one(limit: Limit) -> Named {
    Named::requests(DEFAULT_LIMIT, limit, 1)
}

async fn redis_with(clock: &Arc<ManualClock>, server: &RedisServer) -> Redis {
    let shared: SharedClock = clock.clone();
    let config = RedisConfig::new(
        &server.url().parse().unwrap(),
        false,
        Duration::from_secs(2),
        &shared,
        Arc::new(Metrics::default()),
    )
    .unwrap();
    let redis = Redis::new(config);
    redis.connect_now().await.unwrap();
    redis
}

/// A small deterministic generator, so a failure replays.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // The high 53 bits: gaps of days and limits of millions need more than 31.
        (self.0 >> 11) % below
    }
}

/// Runs the same random requests against both backends and compares every decision:
/// windows of 1 to 4 s with limits up to 6, or (`long`) windows of an hour to a week
/// with limits up to a million, where a sliding window records at granules of 7 s to
/// 20 min.
async fn same_decisions(algorithm: Algorithm, seed: u64, server: &RedisServer, long: bool) {
    let clock = ManualClock::new(1_800_000_000 * NANOS_PER_SEC + 123_456_789);
    let redis = redis_with(&clock, server).await;
    let client: &'static str = Box::leak(format!("c-{algorithm:?}-{seed}").into_boxed_str());
    let mut rng = Lcg(seed);
    let (mut quota, window_secs) = match long {
        false => (1 + rng.next(6), 1 + rng.next(4)),
        true => {
            let limit = [1 + rng.next(6), 1 + rng.next(1_000_000)][rng.next(2) as usize];
            (limit, 3600 * (1 + rng.next(168)))
        }
    };
    let window = window_secs * NANOS_PER_SEC;
    // A token bucket's own numbers: its capacity (the quota) and a random refill interval.
    let refill_interval = 1 + rng.next(2 * NANOS_PER_SEC);
    if algorithm == Algorithm::TokenBucket {
        quota = 1 + rng.next(6);
    }
    let limit_of = |quota: u64| match Limit::new(algorithm, quota, window_secs) {
        Limit::TokenBucket(_) => Limit::TokenBucket(TokenBucketLimit {
            burst: quota,
            refill_interval,
        }),
        other => other,
    };
    let mut limits = limit_of(quota);
    let mut memory = Backend::memory();
    let mut shared = Backend::Redis(redis, client);
    let mut allowed = 0;
    let mut held = None;
    for step in 0..150 {
        // Bursts within a millisecond, gaps of a fraction of the window, and long idles.
        let gap = match rng.next(10) {
            0..=3 => rng.next(1_000_000),
            4..=8 => rng.next(window / 2),
            _ => rng.next(window * 2),
        };
        clock.advance(gap);
        if step % 40 == 39 {
            // A config change of the numbers keeps what was consumed.
            limits = limit_of(1 + rng.next(6));
        }
        let now = clock.now();
        // Now and then a charge (usage known after the fact), which may overdraw.
        let mode = match rng.next(8) {
            0 => Mode::Peek,
            1 => Mode::Charge,
            _ => Mode::Consume,
        };
        // Mostly 1, sometimes any cost up to the quota, a cost of 0, or one that never
        // fits.
        let quota = limits.quota();
        let cost = match rng.next(10) {
            0..=5 => 1,
            6 | 7 => rng.next(quota + 1),
            8 => 0,
            _ => quota + 1 + rng.next(3),
        };
        // Now and then, late in the trace (a long window stays overdrawn), a charge far
        // past any limit: both backends stop counting at the same point, and Redis
        // keeps the key usable (its expiry in range).
        let cost = match (mode, rng.next(12)) {
            (Mode::Charge, 0) if step >= 100 => 1_000_000_000_000_000,
            _ => cost,
        };
        // An admission given back a step later (as a request refused by a limit of
        // another key gives back what it took): both backends forget it alike.
        if let Some((at, cost)) = held.take() {
            memory.check(&limits, now, cost, Mode::Refund(at)).await;
            shared.check(&limits, now, cost, Mode::Refund(at)).await;
        }
        let expected = memory.check(&limits, now, cost, mode).await;
        let got = shared.check(&limits, now, cost, mode).await;
        assert_eq!(
            got, expected,
            "{algorithm:?} seed {seed} step {step} at {now}, cost {cost} {mode:?}, {limits:?}"
        );
        allowed += u64::from(expected.allowed && mode == Mode::Consume && cost > 0);
        if expected.allowed && mode == Mode::Consume && rng.next(5) == 0 {
            held = Some((expected.at(), cost));
        }
    }
    assert!(allowed > 0, "the trace admitted something");
}

#[actix_rt::test]
async fn redis_scripts_decide_exactly_like_the_in_memory_algorithms() {
    let server = RedisServer::start();
    for algorithm in Algorithm::ALL {
        for seed in 1..=8 {
            same_decisions(algorithm, seed, &server, false).await;
        }
    }
}

#[actix_rt::test]
async fn redis_scripts_decide_alike_for_long_windows_and_huge_limits() {
    let server = RedisServer::start();
    for algorithm in Algorithm::ALL {
        for seed in 1..=4 {
            same_decisions(algorithm, 100 + seed, &server, true).await;
        }
    }
}

#[actix_rt::test]
async fn calendar_windows_decide_alike_across_month_ends_and_the_leap_day() {
    let server = RedisServer::start();
    // 2028-02-27T22:00:00Z (a leap year's February, then March, April...) and
    // 2027-12-30T22:00:00Z (the year's end, and an ISO week across it).
    let starts = [1_835_301_600 * NANOS_PER_SEC, 1_830_204_000 * NANOS_PER_SEC];
    for calendar in Calendar::ALL {
        for seed in 1..=4 {
            let start = starts[seed as usize % 2];
            let clock = ManualClock::new(start);
            let redis = redis_with(&clock, &server).await;
            let client: &'static str =
                Box::leak(format!("cal-{calendar:?}-{seed}").into_boxed_str());
            let mut rng = Lcg(seed);
            let quota = 1 + rng.next(6);
            let limit = Limit::FixedWindow(FixedWindowLimit {
                limit: quota,
                window: calendar.nominal_seconds() * NANOS_PER_SEC,
                calendar: Some(calendar),
            });
            let mut memory = Backend::memory();
            let mut shared = Backend::Redis(redis, client);
            let mut windows = std::collections::HashSet::new();
            for step in 0..150 {
                // Bursts, hours, and days: the trace crosses many windows' ends.
                let gap = match rng.next(4) {
                    0 => rng.next(1_000_000),
                    1 => rng.next(3 * 3600 * NANOS_PER_SEC),
                    _ => rng.next(2 * 86_400 * NANOS_PER_SEC),
                };
                clock.advance(gap);
                let now = clock.now();
                let cost = [1, 1, 0, rng.next(quota + 2)][rng.next(4) as usize];
                let mode =
                    [Mode::Consume, Mode::Consume, Mode::Peek, Mode::Charge][rng.next(4) as usize];
                let expected = memory.check(&limit, now, cost, mode).await;
                let got = shared.check(&limit, now, cost, mode).await;
                assert_eq!(
                    got, expected,
                    "{calendar:?} seed {seed} step {step} at {now}, cost {cost} {mode:?}"
                );
                windows.insert(calendar.bounds(now).0);
            }
            assert!(windows.len() > 2, "{calendar:?}: {} windows", windows.len());
        }
    }
}

/// Configs of several limits: random sets of 2 to 4 limits of any algorithms and
/// windows (a calendar month among them), decided all or nothing, alike in memory and in
/// Redis (one script for all), with the binding limit and every limit's numbers equal.
#[actix_rt::test]
async fn several_limits_decide_alike_all_or_nothing() {
    let server = RedisServer::start();
    for seed in 1..=12u64 {
        let clock = ManualClock::new(1_835_301_600 * NANOS_PER_SEC + seed * 7_919);
        let redis = redis_with(&clock, &server).await;
        let client: &'static str = Box::leak(format!("several-{seed}").into_boxed_str());
        let mut rng = Lcg(seed);
        let n = 2 + rng.next(3);
        let limits: Vec<Named> = (0..n)
            .map(|i| {
                let algorithm = Algorithm::ALL[rng.next(3) as usize];
                let window = 1 + rng.next(5);
                let mut limit = Limit::new(algorithm, 1 + rng.next(8), window);
                if let Limit::FixedWindow(w) = &mut limit
                    && rng.next(3) == 0
                {
                    w.calendar = Some(Calendar::Month);
                }
                Named::requests(&format!("l{i}"), limit, window)
            })
            .collect();
        let mut memory = Backend::memory();
        let mut shared = Backend::Redis(redis, client);
        let (mut allowed, mut refused) = (0, 0);
        let mut held = None;
        for step in 0..150 {
            let gap = match rng.next(10) {
                0..=5 => rng.next(1_000_000),
                6..=8 => rng.next(2 * NANOS_PER_SEC),
                _ => rng.next(6 * NANOS_PER_SEC),
            };
            clock.advance(gap);
            let now = clock.now();
            // Charges in the last fifth only: a limit of a calendar month stays
            // overdrawn for the rest of the trace.
            let mode = [
                Mode::Consume,
                Mode::Consume,
                Mode::Consume,
                Mode::Peek,
                Mode::Charge,
            ][rng.next(if step < 120 { 4 } else { 5 }) as usize];
            let cost = [1, 1, 1, 0, 2, 3][rng.next(6) as usize];
            if let Some((at, cost)) = held.take() {
                memory.check_all(&limits, now, cost, Mode::Refund(at)).await;
                shared.check_all(&limits, now, cost, Mode::Refund(at)).await;
            }
            let expected = memory.check_all(&limits, now, cost, mode).await;
            let got = shared.check_all(&limits, now, cost, mode).await;
            assert_eq!(
                got, expected,
                "seed {seed} step {step}, cost {cost} {mode:?}, {limits:?}"
            );
            if expected.allowed && mode == Mode::Consume && rng.next(4) == 0 {
                held = Some((expected.at(), cost));
            }
            if mode == Mode::Consume {
                match expected.allowed {
                    true => allowed += 1,
                    false => refused += 1,
                }
            }
        }
        assert!(
            allowed > 0 && refused > 0,
            "seed {seed}: {allowed} allowed, {refused} refused"
        );
    }
}

#[actix_rt::test]
async fn a_changed_algorithm_starts_fresh_state_in_both_backends() {
    let server = RedisServer::start();
    let clock = ManualClock::new(1_800_000_000 * NANOS_PER_SEC);
    let mut backends = [
        Backend::memory(),
        Backend::Redis(redis_with(&clock, &server).await, "switcher"),
    ];
    for b in &mut backends {
        let sliding = Limit::new(Algorithm::SlidingWindow, 2, 60);
        let fixed = Limit::new(Algorithm::FixedWindow, 2, 60);
        let now = clock.now();
        assert!(b.check(&sliding, now, 1, Mode::Consume).await.allowed);
        assert!(b.check(&sliding, now, 1, Mode::Consume).await.allowed);
        assert!(!b.check(&sliding, now, 1, Mode::Consume).await.allowed);
        let d = b.check(&fixed, now, 1, Mode::Consume).await;
        assert!(d.allowed);
        assert_eq!(d.remaining, 1);
        // And back: the sliding window's state was dropped with the switch.
        assert_eq!(b.check(&sliding, now, 1, Mode::Consume).await.remaining, 1);
    }
}

#[actix_rt::test]
async fn redis_keys_expire_once_their_state_is_fresh() {
    let server = RedisServer::start();
    let clock = ManualClock::new(1_800_000_000 * NANOS_PER_SEC);
    let redis = redis_with(&clock, &server).await;
    for (algorithm, client) in [
        (Algorithm::FixedWindow, "ttl-fw"),
        (Algorithm::SlidingWindow, "ttl-sw"),
        (Algorithm::TokenBucket, "ttl-tb"),
    ] {
        let limits = Limit::new(algorithm, 10, 30);
        // Twice at one instant: the second check adds to the state the first made (a
        // sliding window's newest run, a fixed window's count), which must keep its
        // expiry.
        for _ in 0..2 {
            redis
                .check(client, "/e", &[one(limits)], 1, Mode::Consume)
                .await
                .unwrap();
        }
        let keys = server.cli(&["--scan", "--pattern", &format!("rw:{{{client}}}:*")]);
        assert!(!keys.trim().is_empty(), "{algorithm:?} wrote no key");
        for key in keys.lines() {
            let ttl: i64 = server.cli(&["pttl", key]).trim().parse().unwrap();
            // Fresh within the window (30 s) and the granule a sliding window rounds up
            // to, plus a second of slack; never unbounded.
            let bound = 31_000 + granule_ms(30 * NANOS_PER_SEC) as i64;
            assert!((1..=bound).contains(&ttl), "{key}: pttl {ttl}");
        }
    }
}

/// Redis lost its scripts (a restart without persistence, `SCRIPT FLUSH`): the next
/// check loads its script again and is decided once, not refused and not counted twice.
#[actix_rt::test]
async fn a_check_after_redis_lost_its_scripts_loads_them_and_counts_once() {
    let server = RedisServer::start();
    let clock = ManualClock::new(1_800_000_000 * NANOS_PER_SEC);
    let redis = redis_with(&clock, &server).await;
    for algorithm in [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket,
    ] {
        let limits = [one(Limit::new(algorithm, 10, 60))];
        let client = format!("flushed-{}", algorithm.as_str());
        let first = redis
            .check(&client, "/e", &limits, 1, Mode::Consume)
            .await
            .unwrap();
        assert_eq!(first.remaining, 9);
        assert_eq!(server.cli(&["script", "flush"]).trim(), "OK");
        let second = redis
            .check(&client, "/e", &limits, 1, Mode::Consume)
            .await
            .unwrap();
        assert_eq!(second.remaining, 8, "{algorithm:?}");
    }
}

/// A peek at a quota with no state makes none: the consuming check after it still
/// starts afresh, dropping what another algorithm left.
#[actix_rt::test]
async fn a_peek_before_a_changed_algorithm_still_starts_fresh_state() {
    let server = RedisServer::start();
    let clock = ManualClock::new(1_800_000_000 * NANOS_PER_SEC);
    let mut backends = [
        Backend::memory(),
        Backend::Redis(redis_with(&clock, &server).await, "peeker"),
    ];
    for b in &mut backends {
        let sliding = Limit::new(Algorithm::SlidingWindow, 2, 60);
        let bucket = Limit::new(Algorithm::TokenBucket, 2, 60);
        let now = clock.now();
        assert!(b.check(&sliding, now, 1, Mode::Consume).await.allowed);
        assert!(b.check(&sliding, now, 1, Mode::Consume).await.allowed);
        assert_eq!(b.check(&bucket, now, 1, Mode::Peek).await.remaining, 2);
        assert_eq!(b.check(&bucket, now, 1, Mode::Consume).await.remaining, 1);
        // And back: the sliding window's state was dropped with the switch.
        assert_eq!(b.check(&sliding, now, 1, Mode::Consume).await.remaining, 1);
    }
}

/// A fixed window's expiry is set once per window (not at every check), so it must
/// still move when only the window's length changed.
#[actix_rt::test]
async fn a_fixed_windows_expiry_follows_a_changed_window_length() {
    let server = RedisServer::start();
    // A multiple of both windows: the 120 s window starts where the 60 s one did.
    let clock = ManualClock::new(1_800_000_000 * NANOS_PER_SEC);
    let redis = redis_with(&clock, &server).await;
    let key = "rw:{ttl-len}:/e:fw";
    for (window, remaining, expires) in [(60, 9, 61_000), (60, 8, 61_000), (120, 7, 121_000)] {
        let limits = Limit::new(Algorithm::FixedWindow, 10, window);
        let d = redis
            .check("ttl-len", "/e", &[one(limits)], 1, Mode::Consume)
            .await
            .unwrap();
        // The count carries over: the longer window began at the same second.
        assert_eq!(d.remaining, remaining);
        let ttl: i64 = server.cli(&["pttl", key]).trim().parse().unwrap();
        assert!(
            (expires - 2_000..=expires).contains(&ttl),
            "{window} s window: pttl {ttl}, expected about {expires}"
        );
    }
}

#[actix_rt::test]
async fn a_sliding_window_whose_sum_was_evicted_recounts_its_runs() {
    let server = RedisServer::start();
    let t0 = 1_800_000_000 * NANOS_PER_SEC;
    let clock = ManualClock::new(t0);
    let redis = redis_with(&clock, &server).await;
    let limits = Limit::new(Algorithm::SlidingWindow, 3, 60);
    for _ in 0..3 {
        assert!(
            redis
                .check("evicted", "/e", &[one(limits)], 1, Mode::Consume)
                .await
                .unwrap()
                .allowed
        );
        clock.advance(NANOS_PER_SEC);
    }
    // Under a maxmemory policy Redis may evict the sum alone: the runs still count.
    server.cli(&["del", "rw:{evicted}:/e:swn"]);
    let d = redis
        .check("evicted", "/e", &[one(limits)], 1, Mode::Consume)
        .await
        .unwrap();
    assert!(!d.allowed, "{d:?}");
    // The first admission counts from the end of its granule, 60 s on.
    let granule = granule_ms(60 * NANOS_PER_SEC) * 1_000_000;
    let first = t0.div_ceil(granule) * granule;
    assert_eq!(
        d.retry_after,
        first + 60 * NANOS_PER_SEC - (t0 + 3 * NANOS_PER_SEC)
    );
}

#[actix_rt::test]
async fn a_sliding_window_whose_runs_were_evicted_forgets_their_sum() {
    let server = RedisServer::start();
    let clock = ManualClock::new(1_800_000_000 * NANOS_PER_SEC);
    let redis = redis_with(&clock, &server).await;
    let limits = Limit::new(Algorithm::SlidingWindow, 3, 60);
    for _ in 0..3 {
        redis
            .check("runs-gone", "/e", &[one(limits)], 1, Mode::Consume)
            .await
            .unwrap();
    }
    // The runs alone evicted: the sum they leave behind names nothing that could ever
    // expire, so it must not hold the client at its limit for good.
    server.cli(&["del", "rw:{runs-gone}:/e:sw"]);
    let d = redis
        .check("runs-gone", "/e", &[one(limits)], 1, Mode::Consume)
        .await
        .unwrap();
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.remaining, 2);
}
