//! The Redis backend of distributed mode: every instance on the same Redis decides with
//! the same counters, and reads the same configs.
//!
//! - **Decisions** run as one Lua script per algorithm (loaded once, run with EVALSHA):
//!   check-and-consume in one round trip, atomic in Redis, timed by the Redis server's
//!   clock (`TIME`) so that instance clocks cannot disagree. The scripts keep exactly the
//!   arithmetic of [`crate::limiter`]; `tests/backends.rs` runs one suite against both.
//!   A test's manual clock is passed in instead of `TIME` ([`crate::clock::Clock::is_system`]).
//! - **Keys** are `rw:{<client>}:<endpoint>:<kind>`: the hash tag keeps one client's keys
//!   in one Redis Cluster slot, and every key expires once its state is as good as fresh.
//! - **Failures**: each call waits at most `--redis-timeout-ms`; three failures in a row,
//!   or a broken connection, open a circuit breaker, so that while Redis is down
//!   decisions follow `--on-error` at once instead of waiting for a timeout each. A probe
//!   reconnects with backoff and closes the breaker.
//! - **Configs** live in one hash (`rw:{config}:all`, endpoint → [`Config`] JSON)
//!   with a version counter; writes are compare-and-set scripts that also announce the new
//!   version on the `rw:config` channel (see `crate::cluster`).

mod connection;

pub use connection::RedisUrl;

use super::over_limit::OverLimit;
use super::quota::{Quota, QuotaBackend, Unavailable, Verdict};
use crate::clock::{NANOS_PER_SEC, Nanos, SharedClock};
use crate::config::Config;
use crate::limiter::{
    Algo, Algorithm, DEFAULT_LIMIT, Decision, Decisions, FixedWindowLimit, Limit, Mode, Named,
    SlidingWindowLimit, States, TokenBucketLimit,
};
use crate::metrics::{Metrics, RedisFailure};
use connection::{Conn, Target};
use futures_util::future::BoxFuture;
use redis::{RedisError, Script};
use smallvec::SmallVec;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

/// Channel on which config versions are announced.
pub const CONFIG_CHANNEL: &str = "rw:config";
/// Channel on which instances share their per-second statistics and decision events.
pub const FEED_CHANNEL: &str = "rw:feed";
/// Channel on which an instance announces a client it reset (the client's key value).
pub const RESET_CHANNEL: &str = "rw:reset";
const CONFIGS_KEY: &str = "rw:{config}:all";
const CONFIG_VERSION_KEY: &str = "rw:{config}:version";
const CONFIG_ID_KEY: &str = "rw:{config}:next_id";

/// Failures in a row (timeouts or server errors) that open the breaker.
const BREAKER_FAILURES: u32 = 3;
/// First and longest wait between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The prelude of every decision script: the time, and helpers.
const PRELUDE: &str = include_str!("redis/prelude.lua");

/// How a decision script answers (see [`parse_answer`]).
const ANSWER: &str = include_str!("redis/answer.lua");

/// The driver of the script of several limits (see [`several_script`]).
const SEVERAL: &str = include_str!("redis/several.lua");

/// The shared-config scripts (see `crate::cluster`); each file says what it takes.
const CONFIG_CAS: &str = include_str!("redis/config_cas.lua");
const CONFIG_SEED: &str = include_str!("redis/config_seed.lua");
const CONFIG_ALL: &str = include_str!("redis/config_all.lua");

/// Why a Redis call gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisUnavailable {
    /// The breaker is open (or no connection exists yet): not even tried.
    Open,
    Failed(String),
}

impl std::fmt::Display for RedisUnavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            RedisUnavailable::Open => f.write_str("Redis is unreachable (circuit breaker open)"),
            RedisUnavailable::Failed(e) => write!(f, "Redis failed: {e}"),
        }
    }
}

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

struct Scripts {
    fixed: Script,
    sliding: Script,
    bucket: Script,
    /// The limits of a config of several, decided all or nothing in one call.
    several: Script,
    cas: Script,
    seed: Script,
    all: Script,
}

impl Scripts {
    fn new() -> Self {
        // The decision scripts, one per algorithm, each in its module (`crate::limiter`).
        // The algorithm's script, which returns its numbers, as the body of a function.
        let decision = |body: &str| {
            Script::new(&format!(
                "{ANSWER}{PRELUDE}local function decide()\n{body}\nend\nreturn answer(decide())\n"
            ))
        };
        Self {
            fixed: decision(FixedWindowLimit::REDIS_SCRIPT),
            sliding: decision(SlidingWindowLimit::REDIS_SCRIPT),
            bucket: decision(TokenBucketLimit::REDIS_SCRIPT),
            several: Script::new(&several_script()),
            cas: Script::new(CONFIG_CAS),
            seed: Script::new(CONFIG_SEED),
            all: Script::new(CONFIG_ALL),
        }
    }
}

impl Scripts {
    /// The script that decides `limits`.
    fn decision(&self, limits: &[Limit]) -> &Script {
        match limits {
            [one] => match one.algorithm() {
                Algorithm::FixedWindow => &self.fixed,
                // A concurrency limit is a sliding window of leases: the same script.
                Algorithm::SlidingWindow | Algorithm::Concurrency => &self.sliding,
                Algorithm::TokenBucket => &self.bucket,
            },
            _ => &self.several,
        }
    }
}

/// The script of several limits: each algorithm's script as a function of its own keys
/// and arguments (in the order of [`Algorithm::ALL`]), then `redis/several.lua`, which
/// peeks every limit and consumes from all only if all admit.
fn several_script() -> String {
    let mut script = String::from(ANSWER);
    script.push_str("local algorithms = {\n");
    for algorithm in Algorithm::ALL {
        script.push_str("function(KEYS, ARGV)\n");
        script.push_str(PRELUDE);
        script.push_str(algorithm.redis_script());
        script.push_str("\nend,\n");
    }
    script.push_str("}\n");
    script.push_str(SEVERAL);
    script
}

/// What every handle shares: where to connect, the scripts, the settings.
pub struct RedisConfig {
    target: Target,
    scripts: Scripts,
    timeout: Duration,
    /// `None`: Redis server time; otherwise a test's clock.
    clock: Option<SharedClock>,
    metrics: Arc<Metrics>,
    /// Counts the reconnections of any handle (after a failure): a thread's own
    /// connection opened before the last of them is opened again, as Redis may have
    /// restarted under it.
    generation: AtomicU64,
}

impl RedisConfig {
    /// Checks the URL (one server, seed nodes with `cluster`, or sentinels); connects
    /// nothing yet.
    pub fn new(
        url: &RedisUrl,
        cluster: bool,
        timeout: Duration,
        clock: &SharedClock,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, String> {
        Ok(Arc::new(Self {
            target: Target::new(url, cluster, timeout)?,
            scripts: Scripts::new(),
            timeout,
            clock: (!clock.is_system()).then(|| clock.clone()),
            metrics,
            generation: AtomicU64::new(0),
        }))
    }

    /// A subscription connection (see [`connection`]); `attempt` counts the failures
    /// since the last one that worked.
    pub async fn pubsub(&self, attempt: usize) -> Result<redis::aio::PubSub, RedisError> {
        self.target.pubsub(attempt, self.timeout).await
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// One connection to Redis with its circuit breaker. Each registry shard holds its own,
/// connected on its own thread. Decisions go through a connection of the thread that
/// makes them (see [`Redis::local_conn`]), so that a check, its connection's driver and
/// the answer stay on the request's thread: no hop to another thread and back.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<RedisConfig>,
    conn: RwLock<Option<Conn>>,
    /// Open: calls fail at once; the probe closes it.
    open: AtomicBool,
    failures: AtomicU32,
    /// A probe task is running.
    probing: AtomicBool,
    /// Quotas refused lately (a decision backend's; unused by the cluster's handle).
    over_limit: Mutex<OverLimit>,
    /// The thread [`Redis::connect`] ran on (a shard's), where probes run.
    home: OnceLock<actix::ArbiterHandle>,
    /// Connected at least once (a later connection is a reconnection).
    connected: AtomicBool,
}

/// A thread's own connection to the Redis of one [`RedisConfig`], with its own health:
/// timeouts on it are counted in the metrics, not in its handle's breaker (whose count
/// the other threads' answers would reset): three in a row drop it, and the thread uses
/// the handle's connection while it opens another. A broken one trips the handle's
/// breaker, as a broken handle's connection does; any handle's reconnection replaces
/// every thread's own.
struct LocalConn {
    config: Weak<RedisConfig>,
    /// Which opening made `conn` (see [`NEXT_LOCAL`]), so that the outcome of a call on
    /// a connection since replaced is not held against its successor.
    id: u64,
    /// The config's generation when it was opened.
    generation: u64,
    /// `None` until it is open, or once it failed.
    conn: Option<Conn>,
    /// Being opened.
    opening: bool,
    /// Not opened again before this, after an opening failed.
    retry_at: Option<Instant>,
    /// Calls on it that timed out in a row.
    timeouts: u32,
}

impl LocalConn {
    fn of(&self, config: &Arc<RedisConfig>) -> bool {
        std::ptr::eq(self.config.as_ptr(), Arc::as_ptr(config))
    }
}

/// After an opening of a thread's own connection failed, the least wait before another.
const LOCAL_RETRY: Duration = Duration::from_secs(1);

/// Numbers the openings of threads' own connections.
static NEXT_LOCAL: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's own connections, one per Redis it decides with (one, but for tests).
    static LOCAL: RefCell<Vec<LocalConn>> = const { RefCell::new(Vec::new()) };
}

impl Redis {
    /// A handle, with the breaker open until [`Redis::connect`] succeeds.
    pub fn new(config: Arc<RedisConfig>) -> Self {
        config.metrics.redis_breaker_open.inc();
        Self {
            inner: Arc::new(Inner {
                config,
                conn: RwLock::new(None),
                open: AtomicBool::new(true),
                failures: AtomicU32::new(0),
                probing: AtomicBool::new(false),
                over_limit: Mutex::default(),
                home: OnceLock::new(),
                connected: AtomicBool::new(false),
            }),
        }
    }

    /// The quotas it refused lately (locked for a lookup or an update only).
    fn over_limit(&self) -> MutexGuard<'_, OverLimit> {
        (self.inner.over_limit.lock()).unwrap_or_else(|e| e.into_inner())
    }

    /// Starts connecting on the current thread's runtime, retrying with backoff until it
    /// works. Must run inside an actix system.
    pub fn connect(&self) {
        if let Some(home) = actix::Arbiter::try_current() {
            let _ = self.inner.home.set(home);
        }
        self.probe();
    }

    /// Connects now and closes the breaker, or says why it could not (for tools and
    /// tests that want a connection before their first call).
    pub async fn connect_now(&self) -> Result<(), String> {
        let conn = self.open_connection().await.map_err(|e| e.to_string())?;
        self.use_connection(conn);
        Ok(())
    }

    fn use_connection(&self, conn: Conn) {
        *self.inner.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(conn);
        if self.inner.connected.swap(true, Ordering::Relaxed) {
            self.inner.config.generation.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.failures.store(0, Ordering::Relaxed);
        if self.inner.open.swap(false, Ordering::Relaxed) {
            self.inner.config.metrics.redis_breaker_open.dec();
        }
    }

    /// Whether calls are being sent (the breaker is closed).
    pub fn is_up(&self) -> bool {
        !self.inner.open.load(Ordering::Relaxed)
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

    /// The version and configs Redis holds (`None` for the version when no instance has
    /// seeded them yet), each parsed or the reason it was refused.
    pub async fn shared_configs(&self) -> Result<SharedTable, RedisUnavailable> {
        let s = &self.inner.config.scripts;
        let mut call = s.all.prepare_invoke();
        call.key(CONFIGS_KEY).key(CONFIG_VERSION_KEY);
        let mut conn = self.conn()?;
        let (version, pairs): (String, Vec<(String, String)>) =
            self.observe(call.invoke_async(&mut conn).await)?;
        Ok(SharedTable {
            version: version.parse().ok(),
            configs: pairs
                .into_iter()
                .map(|(endpoint, json)| {
                    let parsed = Config::parse(&json);
                    (endpoint, json, parsed)
                })
                .collect(),
        })
    }

    /// A fresh config id, unique across the cluster.
    pub async fn next_config_id(&self) -> Result<i64, RedisUnavailable> {
        let mut conn = self.conn()?;
        let reply = redis::cmd("INCR")
            .arg(CONFIG_ID_KEY)
            .query_async(&mut conn)
            .await;
        self.observe(reply)
    }

    /// Writes `writes` (endpoint, and its JSON or `None` to delete) as one change if the
    /// shared configs' version is still `read`: `Ok(Ok(version))` when written,
    /// `Ok(Err(()))` when another writer changed them first.
    pub async fn swap_configs(
        &self,
        read: u64,
        writes: &[(String, Option<String>)],
    ) -> Result<Result<u64, ()>, RedisUnavailable> {
        let s = &self.inner.config.scripts;
        let mut call = s.cas.prepare_invoke();
        call.key(CONFIGS_KEY)
            .key(CONFIG_VERSION_KEY)
            .arg(read)
            .arg(CONFIG_CHANNEL);
        for (endpoint, json) in writes {
            call.arg(endpoint).arg(json.as_deref().unwrap_or(""));
        }
        let mut conn = self.conn()?;
        let (written, version): (u64, String) = self.observe(call.invoke_async(&mut conn).await)?;
        Ok(match written {
            1 => Ok(version.parse().unwrap_or(0)),
            _ => Err(()),
        })
    }

    /// Seeds the shared configs with `configs` unless Redis has some; whether it did.
    pub async fn seed_configs(&self, configs: &[Config]) -> Result<bool, RedisUnavailable> {
        let s = &self.inner.config.scripts;
        let mut call = s.seed.prepare_invoke();
        call.key(CONFIGS_KEY)
            .key(CONFIG_VERSION_KEY)
            .key(CONFIG_ID_KEY)
            .arg(configs.iter().map(|c| c.id).max().unwrap_or(0));
        for c in configs {
            call.arg(c.endpoint()).arg(c.to_json());
        }
        let mut conn = self.conn()?;
        let seeded: u64 = self.observe(call.invoke_async(&mut conn).await)?;
        Ok(seeded == 1)
    }

    /// The configs' current version alone (one cheap GET, for the once-a-second check).
    pub async fn config_version(&self) -> Result<Option<u64>, RedisUnavailable> {
        let mut conn = self.conn()?;
        let reply: Result<Option<u64>, _> = redis::cmd("GET")
            .arg(CONFIG_VERSION_KEY)
            .query_async(&mut conn)
            .await;
        self.observe(reply)
    }

    pub async fn publish(&self, channel: &str, payload: &str) -> Result<(), RedisUnavailable> {
        let mut conn = self.conn()?;
        let reply: Result<u64, _> = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async(&mut conn)
            .await;
        self.observe(reply).map(drop)
    }

    fn conn(&self) -> Result<Conn, RedisUnavailable> {
        if self.inner.open.load(Ordering::Relaxed) {
            self.inner
                .config
                .metrics
                .redis_error(RedisFailure::breaker_open);
            return Err(RedisUnavailable::Open);
        }
        let conn = self.inner.conn.read().unwrap_or_else(|e| e.into_inner());
        conn.clone().ok_or(RedisUnavailable::Open)
    }

    /// This thread's own connection, once it is open; until then `None` (the caller
    /// uses the handle's), and one is opened on this thread, if it runs an actix arbiter
    /// (an HTTP worker, a shard, the gRPC server's). A multiplexed connection's driver
    /// is a task of the thread that opened it, so a check sent on it is written, read
    /// and answered without leaving the thread. Answers the connection and its id.
    fn local_conn(&self) -> Option<(Conn, u64)> {
        let config = &self.inner.config;
        LOCAL.with_borrow_mut(|locals| {
            let local = match locals.iter().position(|l| l.of(config)) {
                Some(i) => &mut locals[i],
                None if actix::Arbiter::try_current().is_none() => return None,
                None => {
                    locals.retain(|l| l.config.strong_count() > 0);
                    locals.push(LocalConn {
                        config: Arc::downgrade(config),
                        id: 0,
                        generation: 0,
                        conn: None,
                        opening: false,
                        retry_at: None,
                        timeouts: 0,
                    });
                    locals.last_mut().expect("just pushed")
                }
            };
            let generation = config.generation.load(Ordering::Relaxed);
            if local.generation != generation {
                local.conn = None;
            }
            if let Some(conn) = &local.conn {
                return Some((conn.clone(), local.id));
            }
            let waiting = local.retry_at.is_some_and(|at| Instant::now() < at);
            if local.opening || waiting {
                return None;
            }
            local.opening = true;
            let this = self.clone();
            actix_web::rt::spawn(async move {
                let opened = this.open_connection().await;
                let config = &this.inner.config;
                LOCAL.with_borrow_mut(|locals| {
                    let Some(l) = locals.iter_mut().find(|l| l.of(config)) else {
                        return;
                    };
                    l.opening = false;
                    match opened {
                        Ok(conn) => {
                            l.id = NEXT_LOCAL.fetch_add(1, Ordering::Relaxed);
                            l.generation = generation;
                            l.conn = Some(conn);
                            l.timeouts = 0;
                            l.retry_at = None;
                        }
                        Err(_) => l.retry_at = Some(Instant::now() + LOCAL_RETRY),
                    }
                });
            });
            None
        })
    }

    /// Counts the outcome of a call on this thread's own connection `id` (or else on
    /// the handle's, see [`Redis::observe`]).
    fn outcome<T>(
        &self,
        local: Option<u64>,
        reply: Result<T, RedisError>,
    ) -> Result<T, RedisUnavailable> {
        match local {
            Some(id) => self.local_outcome(id, reply),
            None => self.observe(reply),
        }
    }

    /// Counts the outcome of a call on this thread's own connection `id`: a broken
    /// connection, or [`BREAKER_FAILURES`] timeouts in a row, drop it (the next check
    /// opens another), and a failure is counted in the metrics.
    fn local_outcome<T>(
        &self,
        id: u64,
        reply: Result<T, RedisError>,
    ) -> Result<T, RedisUnavailable> {
        let config = &self.inner.config;
        let failure = reply.as_ref().err().map(failure_kind);
        LOCAL.with_borrow_mut(|locals| {
            let Some(l) = locals.iter_mut().find(|l| l.of(config) && l.id == id) else {
                return;
            };
            match failure {
                None => l.timeouts = 0,
                Some((RedisFailure::timeout, _)) => {
                    l.timeouts += 1;
                    if l.timeouts >= BREAKER_FAILURES {
                        l.conn = None;
                    }
                }
                Some((_, true)) => l.conn = None,
                Some(_) => {}
            }
        });
        reply.map_err(|e| {
            let (kind, broken) = failure_kind(&e);
            config.metrics.redis_error(kind);
            // A broken connection (Redis restarted, or went away): the handle's may be
            // too; its probe reconnects it, and every thread's own is opened again.
            if broken {
                self.trip(&e);
            }
            RedisUnavailable::Failed(e.to_string())
        })
    }

    /// Counts the outcome of one call for the breaker.
    fn observe<T>(&self, reply: Result<T, RedisError>) -> Result<T, RedisUnavailable> {
        let e = match reply {
            Ok(v) => {
                self.inner.failures.store(0, Ordering::Relaxed);
                return Ok(v);
            }
            Err(e) => e,
        };
        let (kind, trip) = failure_kind(&e);
        let metrics = &self.inner.config.metrics;
        metrics.redis_error(kind);
        let failures = self.inner.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if trip || failures >= BREAKER_FAILURES {
            self.trip(&e);
        }
        Err(RedisUnavailable::Failed(e.to_string()))
    }

    /// Opens the breaker and starts the probe that will close it.
    fn trip(&self, cause: &RedisError) {
        if !self.inner.open.swap(true, Ordering::Relaxed) {
            log::warn!("Redis failed ({cause}); decisions follow --on-error until it is back");
            self.inner.config.metrics.redis_breaker_open.inc();
        }
        self.probe();
    }

    /// Reconnects with backoff until a new connection answers PING, then closes the
    /// breaker. At most one probe runs per handle.
    fn probe(&self) {
        if self.inner.probing.swap(true, Ordering::Relaxed) {
            return;
        }
        let this = self.clone();
        let probe = async move {
            let mut wait = BACKOFF_MIN;
            let mut attempts = 0u32;
            loop {
                match this.open_connection().await {
                    Ok(conn) => {
                        this.use_connection(conn);
                        if attempts > 0 {
                            this.inner.config.metrics.redis_reconnects.inc();
                            log::info!("Redis is reachable again; decisions use it");
                        }
                        break;
                    }
                    Err(e) => {
                        if attempts == 0 {
                            log::warn!("connecting to Redis failed ({e}); retrying with backoff");
                        }
                        attempts += 1;
                        actix_web::rt::time::sleep(wait).await;
                        wait = (wait * 2).min(BACKOFF_MAX);
                    }
                }
            }
            this.inner.probing.store(false, Ordering::Relaxed);
            // A call on the old connection may have tripped the breaker in between.
            if this.inner.open.load(Ordering::Relaxed) {
                this.probe();
            }
        };
        // On the shard's thread, whichever thread saw the failure: a worker may stop
        // first, and the connection's driver runs where it was opened.
        match self.inner.home.get() {
            Some(home) => {
                home.spawn(probe);
            }
            None => {
                actix_web::rt::spawn(probe);
            }
        }
    }

    async fn open_connection(&self) -> Result<Conn, RedisError> {
        let config = &self.inner.config;
        config.target.connect(config.timeout).await
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

/// What kind of failure a call's error is, and whether it means the connection is
/// broken (rather than slow, or the server refusing one command).
fn failure_kind(e: &RedisError) -> (RedisFailure, bool) {
    if e.is_timeout() {
        (RedisFailure::timeout, false)
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        (RedisFailure::connection, true)
    } else {
        (RedisFailure::server, false)
    }
}

/// The shared configs as read from Redis.
pub struct SharedTable {
    /// `None` until the first instance seeds them.
    pub version: Option<u64>,
    /// Endpoint, the stored JSON, and the config or why it was refused.
    pub configs: Vec<(String, String, Result<Config, String>)>,
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

    #[test]
    fn shared_configs_are_validated_like_input() {
        let good = r#"{"id":3,"endpoint":"/api/*","requests_per_window":5,"window_seconds":60,
            "algorithm":"token_bucket","burst_limit":null,"refill_rate":2.5,"is_active":true,
            "created_at":1800000000000000001,"updated_at":1800000000000000002}"#;
        let c = Config::parse(good).unwrap();
        assert_eq!((c.id, c.created_at), (3, 1_800_000_000_000_000_001));
        assert_eq!(Config::parse(&c.to_json()).unwrap(), c);
        let bad = good.replace("\"requests_per_window\":5", "\"requests_per_window\":0");
        assert!(Config::parse(&bad).is_err());
        assert!(Config::parse("{}").is_err());
        // A field this instance does not know (written by a newer one) is not ignored.
        let newer = good.replace("\"is_active\":true", "\"is_active\":true,\"colour\":1");
        assert!(Config::parse(&newer).is_err());
    }
}
