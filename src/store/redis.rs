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

use super::over_limit::OverLimit;
use super::quota::{Quota, QuotaBackend, Unavailable, Verdict};
use crate::clock::{NANOS_PER_SEC, Nanos, SharedClock};
use crate::config::Config;
use crate::limiter::{
    Algo, Algorithm, DEFAULT_LIMIT, Decision, Decisions, FixedWindowLimit, Limit, Mode, Named,
    SlidingWindowLimit, States, TokenBucketLimit,
};
use crate::metrics::{Metrics, RedisFailure};
use futures_util::future::BoxFuture;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Script, Value};
use smallvec::SmallVec;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
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
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The prelude of every decision script: the time, and helpers.
const PRELUDE: &str = include_str!("redis/prelude.lua");

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
        let (client, endpoint, limits) = (quota.client, quota.endpoint, quota.limits);
        // What a refusal of this check will be remembered with: when it was sent (so
        // never later than Redis decided it), and what had been forgotten by then.
        let mut sent = None;
        match mode {
            Mode::Consume if !quota.refundable => {
                let over = self.over_limit();
                if let Some(d) = over.refusal(client, endpoint, limits, cost, now) {
                    self.inner.config.metrics.redis_refused_locally.inc();
                    return Verdict::Now(d);
                }
                sent = Some((now, over.generation()));
            }
            Mode::Reset | Mode::Refund(_) => self.over_limit().forget_quota(client, endpoint),
            Mode::Consume | Mode::Peek => {}
        }
        let ask = Redis::check(self, client, endpoint, limits, cost, mode);
        let remember = sent.map(|sent| {
            let quota: (Box<str>, Box<str>, Box<[Named]>) =
                (client.into(), endpoint.into(), limits.into());
            (self.clone(), quota, sent)
        });
        Verdict::Later(Box::pin(async move {
            let d = ask.await.map_err(|_| Unavailable)?;
            if let Some((this, (client, endpoint, limits), sent)) = remember
                && !d.allowed
            {
                this.over_limit()
                    .remember(&client, &endpoint, &limits, cost, sent, &d);
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

/// Where to connect: one server, or the seed nodes of a cluster.
#[derive(Clone)]
enum Target {
    Single(redis::Client),
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// A live connection; both kinds multiplex every concurrent call over their sockets,
/// which pipelines the checks of many requests without waiting for each answer.
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
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
        let decision = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
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

/// The script of several limits: each algorithm's script as a function of its own keys
/// and arguments (in the order of [`Algorithm::ALL`]), then `redis/several.lua`, which
/// peeks every limit and consumes from all only if all admit.
fn several_script() -> String {
    let mut script = String::from("local algorithms = {\n");
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
    /// For pub/sub: the first node (in a cluster, PUBLISH reaches every node).
    pubsub: redis::Client,
    scripts: Scripts,
    timeout: Duration,
    /// `None`: Redis server time; otherwise a test's clock.
    clock: Option<SharedClock>,
    metrics: Arc<Metrics>,
}

impl RedisConfig {
    /// Checks the URLs (one server, or seed nodes with `cluster`); connects nothing yet.
    pub fn new(
        urls: &[String],
        cluster: bool,
        timeout: Duration,
        clock: &SharedClock,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, String> {
        let first = urls.first().ok_or("no Redis URL")?;
        let pubsub = redis::Client::open(first.as_str()).map_err(|e| e.to_string())?;
        let target = match (cluster, urls) {
            (false, [url]) => {
                Target::Single(redis::Client::open(url.as_str()).map_err(|e| e.to_string())?)
            }
            (false, _) => {
                return Err(
                    "--redis-url names several servers: add --redis-cluster for a Redis Cluster"
                        .to_owned(),
                );
            }
            (true, urls) => Target::Cluster(Box::new(
                redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str))
                    .connection_timeout(timeout.max(Duration::from_millis(200)))
                    .response_timeout(timeout)
                    .retries(1)
                    .build()
                    .map_err(|e| e.to_string())?,
            )),
        };
        Ok(Arc::new(Self {
            target,
            pubsub,
            scripts: Scripts::new(),
            timeout,
            clock: (!clock.is_system()).then(|| clock.clone()),
            metrics,
        }))
    }

    /// A client for pub/sub: the first node (in a cluster, PUBLISH reaches every node).
    pub fn pubsub_client(&self) -> &redis::Client {
        &self.pubsub
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// One connection to Redis with its circuit breaker. Each registry shard holds its own,
/// connected on its own thread, so the connection's driver runs where its checks are sent.
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
        let conn = self.conn();
        let this = self.clone();
        let several = limits.len() > 1;
        // Each limit's keys in turn, as many for each (every algorithm's kinds).
        let keys: Vec<String> = limits
            .iter()
            .flat_map(|l| keys(client, endpoint, &l.name, l.limit.algorithm()))
            .collect();
        let limits: SmallVec<[Limit; 1]> = limits.iter().map(|l| l.limit).collect();
        let now = self.inner.config.clock.as_ref().map(|c| c.now());
        async move {
            let mut conn = conn?;
            if mode == Mode::Reset {
                // Every key of the quota, whatever the algorithm: one hash slot (the
                // client's tag), so one command even in a Redis Cluster.
                let mut del = redis::cmd("DEL");
                for k in &keys {
                    del.arg(k);
                }
                let deleted: Result<u64, RedisError> = del.query_async(&mut conn).await;
                this.observe(deleted)?;
            }
            let s = &this.inner.config.scripts;
            let script = match (several, limits[0].algorithm()) {
                (true, _) => &s.several,
                (false, Algorithm::FixedWindow) => &s.fixed,
                // A concurrency limit is a sliding window of leases: the same script.
                (false, Algorithm::SlidingWindow | Algorithm::Concurrency) => &s.sliding,
                (false, Algorithm::TokenBucket) => &s.bucket,
            };
            let mut call = script.prepare_invoke();
            for k in &keys {
                call.key(k);
            }
            match now {
                Some(now) => call.arg(now / NANOS_PER_SEC).arg(now % NANOS_PER_SEC),
                None => call.arg("").arg(""),
            };
            let consume = match mode {
                Mode::Consume => "1".to_owned(),
                Mode::Peek | Mode::Reset => "0".to_owned(),
                // Given back for the check made at `at`.
                Mode::Refund(at) => format!("2:{}:{}", at / NANOS_PER_SEC, at % NANOS_PER_SEC),
            };
            call.arg(consume).arg(cost);
            if several {
                // How to cut KEYS and ARGV into each limit's (see `redis/several.lua`).
                call.arg(limits.len());
                for limit in &limits {
                    let args = limit.redis_args();
                    call.arg(limit.algorithm().index() + 1)
                        .arg(keys.len() / limits.len())
                        .arg(args.len());
                    call.arg(args);
                }
            } else {
                call.arg(limits[0].redis_args());
            }
            let started = Instant::now();
            let reply: Result<Vec<u64>, RedisError> = call.invoke_async(&mut conn).await;
            Metrics::observe(&this.inner.config.metrics.redis_seconds, started.elapsed());
            let reply = this.observe(reply)?;
            let nanos = |s: u64, ns: u64| s.saturating_mul(NANOS_PER_SEC).saturating_add(ns);
            // Six numbers per limit, then the time of the decision.
            let Some((each, &[s, ns])) = reply
                .split_last_chunk::<2>()
                .filter(|(each, _)| each.len() == 6 * limits.len())
            else {
                return Err(RedisUnavailable::Failed(format!(
                    "a decision script answered {} numbers for {} limits",
                    reply.len(),
                    limits.len()
                )));
            };
            let each = each.chunks_exact(6).zip(&limits).map(|(r, limit)| {
                limit.settle(Decision {
                    allowed: r[0] == 1,
                    limit: limit.quota(),
                    remaining: r[1],
                    retry_after: nanos(r[2], r[3]),
                    reset_after: nanos(r[4], r[5]),
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

    /// The JSON Redis holds for one endpoint.
    pub async fn shared_config(&self, endpoint: &str) -> Result<Option<String>, RedisUnavailable> {
        let mut conn = self.conn()?;
        let reply = redis::cmd("HGET")
            .arg(CONFIGS_KEY)
            .arg(endpoint)
            .query_async(&mut conn)
            .await;
        self.observe(reply)
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

    /// Replaces `expected` (None: absent) by `new` (None: delete). `Ok(Ok(version))` when
    /// written; `Ok(Err(current))` when another writer changed it first.
    pub async fn swap_config(
        &self,
        endpoint: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> Result<Result<u64, Option<String>>, RedisUnavailable> {
        let s = &self.inner.config.scripts;
        let mut call = s.cas.prepare_invoke();
        call.key(CONFIGS_KEY)
            .key(CONFIG_VERSION_KEY)
            .arg(endpoint)
            .arg(expected.unwrap_or(""))
            .arg(new.unwrap_or(""))
            .arg(CONFIG_CHANNEL);
        let mut conn = self.conn()?;
        let (written, value): (u64, String) = self.observe(call.invoke_async(&mut conn).await)?;
        Ok(match written {
            1 => Ok(value.parse().unwrap_or(0)),
            _ => Err((!value.is_empty()).then_some(value)),
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

    /// Counts the outcome of one call for the breaker.
    fn observe<T>(&self, reply: Result<T, RedisError>) -> Result<T, RedisUnavailable> {
        let e = match reply {
            Ok(v) => {
                self.inner.failures.store(0, Ordering::Relaxed);
                return Ok(v);
            }
            Err(e) => e,
        };
        let (kind, trip) = if e.is_timeout() {
            (RedisFailure::timeout, false)
        } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            (RedisFailure::connection, true)
        } else {
            (RedisFailure::server, false)
        };
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
        actix_web::rt::spawn(async move {
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
        });
    }

    async fn open_connection(&self) -> Result<Conn, RedisError> {
        let config = &self.inner.config;
        let connect_timeout = config.timeout.max(Duration::from_millis(200));
        let mut conn = match &config.target {
            Target::Single(client) => {
                let settings = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(config.timeout));
                Conn::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&settings)
                        .await?,
                )
            }
            Target::Cluster(client) => Conn::Cluster(client.get_async_connection().await?),
        };
        let ping = redis::cmd("PING");
        let probe = ping.query_async::<String>(&mut conn);
        actix_web::rt::time::timeout(connect_timeout, probe)
            .await
            .map_err(|_| RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
        Ok(conn)
    }
}

/// The shared configs as read from Redis.
pub struct SharedTable {
    /// `None` until the first instance seeds them.
    pub version: Option<u64>,
    /// Endpoint, the stored JSON, and the config or why it was refused.
    pub configs: Vec<(String, String, Result<Config, String>)>,
}

/// The keys of one (client, endpoint) for one limit: the algorithm's own first, then the
/// others' (a changed algorithm starts fresh state, as in memory). A limit is named after
/// the endpoint (`rw:{alice}:/api/* #daily:fw`: a path config has no whitespace, a
/// descriptor rule's identity no `#`), except `default`, the limit of a config written
/// with top-level fields, which keeps the keys such configs have always had.
pub fn keys(client: &str, endpoint: &str, limit: &str, algorithm: Algorithm) -> Vec<String> {
    let others = Algorithm::ALL.into_iter().filter(|a| *a != algorithm);
    let named = match limit {
        DEFAULT_LIMIT => endpoint.to_owned(),
        name => format!("{endpoint} #{name}"),
    };
    std::iter::once(algorithm)
        .chain(others)
        .flat_map(Algorithm::redis_kinds)
        .map(|kind| format!("rw:{{{client}}}:{named}:{kind}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
