//! Distributed mode under real faults: a Redis Sentinel failover and a Redis Cluster
//! failover under load, and a link to Redis that is slow, drops everything, resets or
//! reaches a Redis restarted empty (through a fault-injecting TCP proxy in this test).
//! Real ratewarden processes and real Redis processes, on free loopback ports. Each
//! test prints its figures (`cargo test --test redis_faults -- --nocapture`); the
//! guarantee table of docs/distributed.md is filled from them.

mod common;

use common::binary::Binary;
use common::link::Link;
use common::nodes::{
    PATIENT, POLL, burst, eventually, instances, until_connected, until_relayed, until_served, warm,
};
use common::redis::{RedisCluster, RedisSentinels, RedisServer};
use common::ws::WAIT;
use futures_util::future::join_all;
use serde_json::json;
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// Taken by every test of this file for its whole run: their timings mean something
/// only with the machine to themselves (the two cores are shared by load, instances and
/// Redis processes).
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a test waits for a fault to be over (a failover, a link healed).
const RECOVERY: Duration = Duration::from_secs(30);

/// What a stream of requests of one client saw.
#[derive(Debug, Default)]
struct Tally {
    sent: usize,
    admitted: usize,
    limited: usize,
    /// 503 `limiter_unavailable`: `--on-error deny` while Redis could not be reached.
    unavailable: usize,
    /// Admitted while Redis could not be reached (`--on-error allow`).
    admitted_unavailable: usize,
    /// Anything else (never expected).
    other: Vec<String>,
    slowest: Duration,
    /// When the first and the last request answered without Redis were sent.
    failed_at: Option<Instant>,
    last_failed_at: Option<Instant>,
    /// When the first request sent after the last failure was answered by Redis.
    recovered_at: Option<Instant>,
    /// Answers from Redis since it recovered.
    since_recovery: usize,
}

impl Tally {
    fn outage(&self) -> Option<Duration> {
        Some(self.recovered_at? - self.failed_at?)
    }

    /// One line of the figures the docs' guarantee table shows; `since`: when the fault
    /// ended (else from the first failure).
    fn report(&self, fault: &str, limit: usize, since: Option<Instant>) {
        let exact_after = match (self.recovered_at, since.or(self.failed_at)) {
            (Some(r), Some(s)) => format!("{:.2} s", r.saturating_duration_since(s).as_secs_f64()),
            _ => "-".to_owned(),
        };
        println!(
            "FIGURES {fault}: {} requests; by --on-error: {} refused, {} admitted; \
             slowest {:.0} ms; exact again after {exact_after}; admitted by Redis {} \
             (limit {limit}), refused {}",
            self.sent,
            self.unavailable,
            self.admitted_unavailable,
            self.slowest.as_secs_f64() * 1e3,
            self.admitted,
            self.limited,
        );
    }
}

/// Requests of `client` to `/api/data` from `workers` concurrent loops, spread over the
/// nodes, until `stop` says so (at most [`RECOVERY`] plus [`WAIT`]). After each answer
/// `fault` sees the tally (to break something at a chosen moment).
async fn under_load(
    nodes: &[Binary],
    client: &str,
    workers: usize,
    stop: impl Fn(&Tally) -> bool,
    fault: impl FnMut(&Tally),
) -> Tally {
    let tally = RefCell::new(Tally::default());
    let fault = RefCell::new(fault);
    let started = Instant::now();
    let worker = |w: usize| {
        let (tally, fault, stop) = (&tally, &fault, &stop);
        async move {
            let mut i = w;
            while !stop(&tally.borrow()) {
                assert!(
                    started.elapsed() < RECOVERY + WAIT,
                    "the load never ended: {:?}",
                    tally.borrow()
                );
                let node = &nodes[i % nodes.len()];
                i += 1;
                tally.borrow_mut().sent += 1;
                let sent = Instant::now();
                let r = node.get_as(client, "/api/data").await;
                let took = sent.elapsed();
                let mut t = tally.borrow_mut();
                t.slowest = t.slowest.max(took);
                // Admitted requests of an endpoint nothing serves are answered 404; one
                // admitted by `--on-error allow` has no rate-limit headers (nothing decided).
                let fallback = r.header("x-ratelimit-remaining").is_none();
                let from_redis = match r.status.as_u16() {
                    200 | 404 if fallback => {
                        t.admitted_unavailable += 1;
                        false
                    }
                    200 | 404 => {
                        t.admitted += 1;
                        true
                    }
                    429 => {
                        t.limited += 1;
                        true
                    }
                    503 if r.body["error"] == "limiter_unavailable" => {
                        t.unavailable += 1;
                        false
                    }
                    s => {
                        t.other.push(format!("{s} {:?}", r.body));
                        false
                    }
                };
                if !from_redis {
                    t.failed_at.get_or_insert(sent);
                    if t.last_failed_at.is_none_or(|last| last < sent) {
                        t.last_failed_at = Some(sent);
                    }
                    // Failing again: not recovered yet.
                    t.recovered_at = None;
                    t.since_recovery = 0;
                } else if t.last_failed_at.is_some_and(|last| last < sent) {
                    t.recovered_at.get_or_insert_with(Instant::now);
                    t.since_recovery += 1;
                }
                drop(t);
                (fault.borrow_mut())(&tally.borrow());
            }
        }
    };
    join_all((0..workers).map(worker)).await;
    tally.into_inner()
}

/// Polls `node`'s `/health` while `during` runs (every [`POLL`]: the failover happens in
/// the Redis processes' own time): whether it ever said Redis was unreachable, and
/// whether it said connected again afterwards.
async fn watching_health<T>(node: &Binary, during: impl Future<Output = T>) -> (T, bool, bool) {
    let (mut down, mut up_again) = (false, false);
    let done = std::cell::Cell::new(false);
    let poll = async {
        while !done.get() {
            let h = node.get("/health").await;
            match h.body["redis"].as_str() {
                Some("unreachable") => down = true,
                Some("connected") if down => up_again = true,
                _ => {}
            }
            actix_rt::time::sleep(POLL).await;
        }
    };
    let run = async {
        let out = during.await;
        done.set(true);
        out
    };
    let ((), out) = futures_util::join!(poll, run);
    (out, down, up_again)
}

/// How many of the log lines of `node` so far contain each of `needles`.
fn logged<const N: usize>(node: &mut Binary, needles: [&str; N]) -> [usize; N] {
    let lines = node.lines_so_far();
    needles.map(|needle| lines.iter().filter(|l| l.contains(needle)).count())
}

/// Two instances on the Redis at `url` (`cluster`: seed nodes), each with `args`, and a
/// limit of `limit` an hour on `/api/data`, served by both and warmed.
async fn limited(
    url: &str,
    cluster: bool,
    args: &[&str],
    limit: usize,
) -> (tempfile::TempDir, Vec<Binary>) {
    let (dir, nodes) = instances(2, url, cluster, args);
    until_connected(&nodes).await;
    nodes[0]
        .config("/api/data", limit as u64, 3600, "fixed_window")
        .await;
    for node in &nodes {
        until_served(node, "/api/data", "requests_per_window", &json!(limit)).await;
    }
    warm(&nodes).await;
    (dir, nodes)
}

/// For the failovers: `--on-error deny`, two shards, a 1 s Redis timeout.
fn failover_args() -> Vec<&'static str> {
    [&["--on-error", "deny", "--shards", "2"][..], &PATIENT].concat()
}

const LIMIT: usize = 1000;
const WORKERS: usize = 8;

/// 10,000 requests of one client against its limit of [`LIMIT`] from [`WORKERS`]
/// concurrent loops over both instances; `kill` is called once half the limit is spent
/// (and the load goes on until 500 answers have come from Redis after the outage).
/// Asserts what every failover must keep, and returns the tally.
async fn failover(nodes: &[Binary], what: &str, kill: impl FnOnce()) -> Tally {
    let mut kill = Some(kill);
    let t = under_load(
        nodes,
        "steady",
        WORKERS,
        |t| t.sent >= 10_000 && t.since_recovery >= 500,
        |t| {
            if t.admitted >= LIMIT / 2
                && let Some(kill) = kill.take()
            {
                kill();
            }
        },
    )
    .await;
    println!("{t:?}");
    t.report(what, LIMIT, None);
    assert!(t.other.is_empty(), "{:?}", t.other);
    assert_eq!(t.admitted_unavailable, 0, "--on-error deny admits nothing");
    assert!(t.unavailable > 0, "{t:?}");
    let outage = t.outage().expect("the failover was seen");
    assert!(outage < RECOVERY, "{outage:?}");
    // No request waits longer than the Redis timeout (1 s here), plus a margin.
    assert!(t.slowest < Duration::from_millis(1500), "{:?}", t.slowest);
    // Exact again after the failover, but for the calls in flight when the primary died
    // (at most one per worker): one counted whose answer was lost is refused by `deny`
    // (fewer admitted), and one answered but not yet replicated is lost with the primary
    // (asynchronous replication), its unit spent again (more admitted).
    assert!(t.admitted.abs_diff(LIMIT) <= WORKERS, "{t:?}");
    assert!(t.limited > 0, "{t:?}");
    // Configs and feeds keep flowing through the new primary (once the coordination's
    // own connection is back too: it reconnects on its own schedule).
    until_connected(nodes).await;
    let r = (nodes[0].put("/admin/configs/api/data", r#"{"requests_per_window": 7}"#)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    until_served(&nodes[1], "/api/data", "requests_per_window", &json!(7)).await;
    until_relayed(&nodes[0], "node-0", &nodes[1], "after-failover").await;
    t
}

#[actix_rt::test]
async fn a_sentinel_failover_under_load_is_followed_without_a_restart() {
    let _alone = ALONE.lock().await;
    let mut redis = RedisSentinels::start();
    let (_dir, mut nodes) = limited(&redis.url(), false, &failover_args(), LIMIT).await;
    assert_eq!(redis.primary_named(), Some(redis.primary.port));
    let primary = &mut redis.primary;
    let load = failover(
        &nodes,
        "Sentinel primary killed (2 instances, 8 workers)",
        || primary.kill(),
    );
    let (_, down, up_again) = watching_health(&nodes[1], load).await;
    assert!(down && up_again, "/health said the outage and the recovery");
    // Ratewarden followed the replica the sentinels promoted.
    assert_eq!(redis.primary_named(), Some(redis.replica.port));
    for node in &mut nodes {
        assert!(node.metric("ratewarden_redis_reconnects_total").await >= 1.0);
        // Said once per connection that broke (each shard's and the coordination's),
        // not once per request.
        let [warned, panics] = logged(node, ["] Redis failed (", "panicked"]);
        assert!((1..=3).contains(&warned), "{warned} warnings");
        assert_eq!(panics, 0);
    }
}

/// The Redis timeout of the link tests, and how much longer than it a request may take
/// (the deadline's tick, a debug build on a loaded two-core machine).
const TIMEOUT_MS: u64 = 200;
const MARGIN: Duration = Duration::from_millis(300);

/// Two instances on `redis` through a new [`Link`], each with `on_error`, one shard and
/// [`TIMEOUT_MS`], and a limit of 100 an hour on `/api/data`, ready.
async fn through_link(
    redis: &RedisServer,
    on_error: &str,
) -> (Link, tempfile::TempDir, Vec<Binary>) {
    let link = Link::to(redis.port);
    let timeout = TIMEOUT_MS.to_string();
    let args = [
        "--on-error",
        on_error,
        "--redis-timeout-ms",
        &timeout,
        "--shards",
        "1",
    ];
    let (dir, nodes) = limited(&link.url(), false, &args, 100).await;
    // Every thread that decides has opened its own connection by now.
    under_load(&nodes, "warm-up", 8, |t| t.sent >= 200, |_| {}).await;
    (link, dir, nodes)
}

/// Waits until the connections through `link` are at most `before` again (none
/// leaked); answers how many there are.
async fn until_settled(link: &Link, before: usize) -> usize {
    let what = format!("at most {before} connections through the link");
    eventually(&what, || async { link.open_connections() <= before }).await;
    link.open_connections()
}

#[actix_rt::test]
async fn a_slow_link_keeps_decisions_exact_and_one_slower_than_the_timeout_follows_on_error() {
    let _alone = ALONE.lock().await;
    let redis = RedisServer::start();
    let (link, _dir, nodes) = through_link(&redis, "deny").await;
    let timeout = Duration::from_millis(TIMEOUT_MS);
    for (rtt, client) in [(5, "rtt-5ms"), (50, "rtt-50ms")] {
        link.set_latency(Duration::from_millis(rtt));
        let t = under_load(&nodes, client, 8, |t| t.sent >= 300, |_| {}).await;
        t.report(&format!("{rtt} ms added to each round trip"), 100, None);
        assert_eq!(
            (t.admitted, t.limited, t.unavailable),
            (100, 200, 0),
            "{t:?}"
        );
        assert!(t.slowest < timeout + MARGIN, "{:?}", t.slowest);
    }
    // Slower than the timeout: every decision by --on-error, none waiting much past it.
    link.set_latency(Duration::from_millis(2 * TIMEOUT_MS));
    let t = under_load(&nodes, "too-slow", 8, |t| t.sent >= 100, |_| {}).await;
    t.report(
        &format!("{} ms added (timeout {TIMEOUT_MS} ms)", 2 * TIMEOUT_MS),
        100,
        None,
    );
    assert_eq!((t.admitted, t.unavailable), (0, 100), "{t:?}");
    assert!(t.slowest < timeout + MARGIN, "{:?}", t.slowest);
    // Fast again: exact again once the probe has reconnected.
    link.set_latency(Duration::ZERO);
    let healed = Instant::now();
    let t = under_load(&nodes, "fast-again", 8, |t| t.since_recovery >= 150, |_| {}).await;
    let recovery = t.recovered_at.unwrap() - healed;
    t.report("the added latency taken away", 100, Some(healed));
    // The probe's backoff (at most 1 s) plus its attempt.
    assert!(recovery < Duration::from_millis(2500), "{recovery:?}");
    assert!(t.admitted <= 100 && t.limited >= 50, "{t:?}");
    assert!(t.other.is_empty(), "{:?}", t.other);
    assert_eq!(burst(&nodes, "after", "/api/data", 300).await, (100, 200));
}

#[actix_rt::test]
async fn a_link_that_drops_everything_for_ten_seconds_follows_on_error_then_is_exact_again() {
    let _alone = ALONE.lock().await;
    let redis = RedisServer::start();
    let (link, _dir, mut nodes) = through_link(&redis, "allow").await;
    let before = link.open_connections();
    let cut_at = std::cell::Cell::new(None::<Instant>);
    let healed_at = std::cell::Cell::new(None::<Instant>);
    let t = under_load(
        &nodes,
        "cut",
        8,
        |t| healed_at.get().is_some() && t.since_recovery >= 200,
        |t| match (cut_at.get(), healed_at.get()) {
            (None, _) if t.admitted >= 50 => {
                link.cut();
                cut_at.set(Some(Instant::now()));
            }
            (Some(at), None) if at.elapsed() >= Duration::from_secs(10) => {
                link.heal();
                healed_at.set(Some(Instant::now()));
            }
            _ => {}
        },
    )
    .await;
    let healed = healed_at.get().unwrap();
    let recovery = t.recovered_at.unwrap().saturating_duration_since(healed);
    t.report(
        "link cut for 10 s, then healed (--on-error allow)",
        100,
        Some(healed),
    );
    assert!(t.other.is_empty(), "{:?}", t.other);
    // --on-error allow: admitted, never refused, while Redis was out of reach.
    assert!(t.admitted_unavailable > 0 && t.unavailable == 0, "{t:?}");
    assert!(
        t.slowest < Duration::from_millis(TIMEOUT_MS) + MARGIN,
        "{:?}",
        t.slowest
    );
    assert!(recovery < Duration::from_secs(5), "{recovery:?}");
    // Exact again, and no connection left behind.
    assert_eq!(burst(&nodes, "after", "/api/data", 300).await, (100, 200));
    let after = until_settled(&link, before).await;
    println!("connections through the link: {before} before, {after} after");
    for node in &mut nodes {
        assert!(
            node.metric("ratewarden_redis_errors_total{kind=\"timeout\"}")
                .await
                > 0.0
        );
        // Said once per handle whose breaker opened, not once per request; and that
        // --on-error decided, once a second at most over the 10 s.
        let [warned, undecided, panics] =
            logged(node, ["] Redis failed (", "no decision for", "panicked"]);
        assert!((1..=2).contains(&warned), "{warned} warnings");
        assert_eq!(panics, 0);
        assert!((1..=15).contains(&undecided), "{undecided} warnings");
    }
}

#[actix_rt::test]
async fn connections_reset_mid_call_never_admit_more_and_reconnect_at_once() {
    let _alone = ALONE.lock().await;
    let redis = RedisServer::start();
    let (link, _dir, nodes) = through_link(&redis, "deny").await;
    let before = link.open_connections();
    let resets = std::cell::Cell::new(0);
    let last_reset = std::cell::Cell::new(None::<Instant>);
    let t = under_load(
        &nodes,
        "reset",
        8,
        |t| resets.get() == 3 && t.since_recovery >= 100,
        |t| {
            // A reset at 20, 40 and 60 admitted, each with calls in flight.
            if t.admitted >= 20 * (resets.get() + 1) && resets.get() < 3 {
                link.reset();
                resets.set(resets.get() + 1);
                last_reset.set(Some(Instant::now()));
            }
        },
    )
    .await;
    t.report(
        "3 resets of every connection mid-call",
        100,
        last_reset.get(),
    );
    // A broken connection opens the breaker and its probe reconnects at once.
    let reconnected = t.recovered_at.unwrap() - last_reset.get().unwrap();
    assert!(reconnected < Duration::from_secs(1), "{reconnected:?}");
    assert!(t.other.is_empty(), "{:?}", t.other);
    assert!(t.unavailable > 0, "{t:?}");
    // A call whose answer was lost may have been counted: never more admitted.
    assert!(t.admitted <= 100 && t.limited > 0, "{t:?}");
    assert!(
        t.slowest < Duration::from_millis(TIMEOUT_MS) + MARGIN,
        "{:?}",
        t.slowest
    );
    assert_eq!(burst(&nodes, "after", "/api/data", 300).await, (100, 200));
    until_settled(&link, before).await;
}

#[actix_rt::test]
async fn a_redis_restarted_empty_starts_its_windows_afresh_and_gets_the_configs_back() {
    let _alone = ALONE.lock().await;
    let mut redis = RedisServer::start();
    let args = [&["--on-error", "deny"][..], &PATIENT].concat();
    let (_dir, nodes) = limited(&redis.url(), false, &args, 100).await;
    assert_eq!(burst(&nodes, "half", "/api/data", 60).await, (60, 0));

    redis.kill();
    redis.restart();
    until_connected(&nodes).await;
    // The shared configs are seeded again by the instances (once the coordination's own
    // connection has found Redis restarted and reconnected), and shared again: a change
    // on one reaches the other.
    eventually("the configs seeded again", || async {
        redis.cli(&["hlen", "rw:{config}:all"]).trim() == "2"
    })
    .await;
    let r = (nodes[0].put("/admin/configs/api/data", r#"{"requests_per_window": 90}"#)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    until_served(&nodes[1], "/api/data", "requests_per_window", &json!(90)).await;
    // The window Redis held is gone: the client gets the whole limit again (over the
    // window, the 60 it had spent before are admitted twice), exactly.
    // (Counted from Redis's answers: a call on a connection the restart broke follows
    // --on-error deny once.)
    let restarted = Instant::now();
    let t = under_load(&nodes, "half", 8, |t| t.limited >= 110, |_| {}).await;
    assert_eq!(t.admitted, 90, "{t:?}");
    assert!(t.other.is_empty(), "{:?}", t.other);
    println!(
        "FIGURES Redis restarted empty: 60 admitted before, 90 after (limit 90): the \
         window's 60 admitted again; configs seeded again and shared ({:.2} s for the burst)",
        restarted.elapsed().as_secs_f64()
    );
}

#[actix_rt::test]
async fn a_cluster_failover_under_load_moves_the_slots_and_the_limit_holds() {
    let _alone = ALONE.lock().await;
    let mut cluster = RedisCluster::with_replicas();
    let (_dir, nodes) = limited(&cluster.urls(), true, &failover_args(), LIMIT).await;
    // The master of the client's slot is killed.
    let victim = cluster.master_of("steady");
    let doomed = &mut cluster.nodes[victim];
    let what = "Cluster master killed (2 instances, 8 workers)";
    failover(&nodes, what, || doomed.kill()).await;
    // The slot moved to the replica, and ratewarden followed it.
    assert_ne!(cluster.master_of("steady"), victim);
}

#[actix_rt::test]
async fn connections_gone_silent_without_closing_are_replaced_and_the_feeds_resume() {
    let _alone = ALONE.lock().await;
    let redis = RedisServer::start();
    let (link, _dir, nodes) = through_link(&redis, "deny").await;
    // Every connection open now (decisions, configs, the subscriptions) goes silent for
    // good, as when a server vanishes without closing them; new ones work.
    link.freeze();
    let frozen = Instant::now();
    let t = under_load(&nodes, "frozen", 8, |t| t.since_recovery >= 50, |_| {}).await;
    t.report("every connection silenced for good", 100, Some(frozen));
    assert!(t.other.is_empty(), "{:?}", t.other);
    assert!(
        t.slowest < Duration::from_millis(TIMEOUT_MS) + MARGIN,
        "{:?}",
        t.slowest
    );
    // The subscriptions are asked for a PING after 3 s of silence, and made again.
    until_relayed(&nodes[0], "node-0", &nodes[1], "after-freeze").await;
    until_relayed(&nodes[1], "node-1", &nodes[0], "after-freeze").await;
    println!(
        "FIGURES feeds relayed again {:.2} s after the freeze",
        frozen.elapsed().as_secs_f64()
    );
}
