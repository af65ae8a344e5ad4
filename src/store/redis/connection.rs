//! Where distributed mode's connections to Redis are made, and nowhere else: one server,
//! the seed nodes of a Redis Cluster, or the primary that Redis Sentinel names; and
//! [`Redis`], a handle on a connection with its circuit breaker. The decision scripts
//! (`decisions`), the shared configs (`configs`) and the feed relay (`crate::cluster`)
//! call through a handle and do not know which topology runs.
//!
//! - **Failures**: each call waits at most `--redis-timeout-ms`; three failures in a row,
//!   or a broken connection, open the circuit breaker, so that while Redis is down
//!   decisions follow `--on-error` at once instead of waiting for a timeout each. A probe
//!   reconnects with backoff and closes the breaker.

use super::{Inner, Redis, RedisConfig};
use crate::metrics::RedisFailure;
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSub};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

/// Failures in a row (timeouts or server errors) that open the breaker.
const BREAKER_FAILURES: u32 = 3;
/// First and longest wait between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

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

/// What `--redis-url` names (with `--redis-cluster`): parsed once, at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisUrl {
    /// `redis://` URLs: one server, or with `--redis-cluster` the seed nodes of a
    /// Redis Cluster (comma-separated).
    Nodes(Vec<String>),
    /// `redis+sentinel://host:port[,host:port...]/<service>`: the sentinels (each as a
    /// `redis://` URL) and the name of the primary they monitor.
    Sentinel {
        sentinels: Vec<String>,
        service: String,
    },
}

/// The port Redis Sentinel listens on unless told otherwise.
const SENTINEL_PORT: u16 = 26379;

impl std::str::FromStr for RedisUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("redis+sentinel://") {
            return sentinel_url(rest).map_err(|why| format!("{s:?}: {why}"));
        }
        let nodes: Vec<String> = s.split(',').map(|u| u.trim().to_owned()).collect();
        for url in &nodes {
            redis::parse_redis_url(url)
                .filter(|u| matches!(u.scheme(), "redis" | "rediss" | "redis+unix" | "unix"))
                .ok_or_else(|| format!("{url:?} is not a redis:// or redis+sentinel:// URL"))?;
        }
        Ok(RedisUrl::Nodes(nodes))
    }
}

/// `host:port[,host:port...]/<service>`, after the scheme.
fn sentinel_url(rest: &str) -> Result<RedisUrl, String> {
    let (hosts, service) = rest
        .split_once('/')
        .ok_or("name the monitored service: redis+sentinel://host:port/<service>")?;
    if hosts.contains('@') {
        return Err("credentials in a Sentinel URL are not supported".to_owned());
    }
    let service_ok = !service.is_empty()
        && service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !service_ok {
        return Err(format!(
            "the service name {service:?} must be letters, digits, '.', '_' or '-'"
        ));
    }
    let mut sentinels = Vec::new();
    for host in hosts.split(',').map(str::trim) {
        let url = match host.rsplit_once(':') {
            Some((h, port)) if !h.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                format!("redis://{host}")
            }
            None if !host.is_empty() => format!("redis://{host}:{SENTINEL_PORT}"),
            _ => return Err(format!("{host:?} is not a sentinel's host[:port]")),
        };
        redis::parse_redis_url(&url).ok_or_else(|| format!("{host:?} is not a host[:port]"))?;
        sentinels.push(url);
    }
    Ok(RedisUrl::Sentinel {
        sentinels,
        service: service.to_owned(),
    })
}

/// Where to connect.
#[derive(Clone)]
pub(super) enum Target {
    Single(redis::Client),
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        /// The seed nodes, for pub/sub (a PUBLISH on any node reaches every node).
        seeds: Vec<redis::Client>,
    },
    /// Asked of the sentinels at every connection, so that a promoted replica is
    /// followed by the next connection made after the old primary failed.
    Sentinel {
        sentinels: Vec<String>,
        service: String,
        /// The sentinel that answered last, asked first next time.
        first: Arc<AtomicUsize>,
    },
}

impl Target {
    /// Checks the URLs; connects nothing yet. `timeout`: each call's; a cluster's
    /// client is built with it.
    pub(super) fn new(url: &RedisUrl, cluster: bool, timeout: Duration) -> Result<Self, String> {
        let open = |url: &str| redis::Client::open(url).map_err(|e| e.to_string());
        Ok(match (url, cluster) {
            (RedisUrl::Nodes(urls), false) => match urls.as_slice() {
                [one] => Target::Single(open(one)?),
                _ => {
                    return Err(
                        "--redis-url names several servers: add --redis-cluster for a Redis Cluster"
                            .to_owned(),
                    );
                }
            },
            (RedisUrl::Nodes(urls), true) => Target::Cluster {
                client: Box::new(
                    redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str))
                        .connection_timeout(connect_timeout(timeout))
                        .response_timeout(timeout)
                        .retries(1)
                        .build()
                        .map_err(|e| e.to_string())?,
                ),
                seeds: urls.iter().map(|u| open(u)).collect::<Result<_, _>>()?,
            },
            (RedisUrl::Sentinel { .. }, true) => {
                return Err(
                    "--redis-cluster takes redis:// seed nodes, not a redis+sentinel:// URL"
                        .to_owned(),
                );
            }
            (RedisUrl::Sentinel { sentinels, service }, false) => Target::Sentinel {
                sentinels: sentinels.clone(),
                service: service.clone(),
                first: Arc::default(),
            },
        })
    }

    /// A new connection that answered PING: the node found (see [`Target::node`]), then
    /// connected within [`connect_timeout`].
    pub(super) async fn connect(&self, timeout: Duration) -> Result<Conn, RedisError> {
        let node = match self {
            Target::Cluster { .. } => None,
            _ => Some(self.node(0, timeout).await?),
        };
        within(connect_timeout(timeout), async {
            let mut conn = match (self, node) {
                (Target::Cluster { client, .. }, _) => {
                    Conn::Cluster(client.get_async_connection().await?)
                }
                (_, node) => {
                    let settings = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(connect_timeout(timeout)))
                        .set_response_timeout(Some(timeout));
                    let node = node.expect("found above for every target but a cluster");
                    Conn::Single(
                        node.get_multiplexed_async_connection_with_config(&settings)
                            .await?,
                    )
                }
            };
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            Ok(conn)
        })
        .await
    }

    /// A subscription connection: the server, the primary the sentinels name now, or
    /// (`attempt` counting the failures since the last that worked) each seed node of a
    /// cluster in turn.
    pub(super) async fn pubsub(&self, attempt: usize, timeout: Duration) -> RedisResult<PubSub> {
        let node = self.node(attempt, timeout).await?;
        within(connect_timeout(timeout), node.get_async_pubsub()).await
    }

    /// One node to connect to directly. The sentinels are asked one at a time, from the
    /// one that answered last, each within [`connect_timeout`] (a sentinel that does not
    /// answer cannot hold up the others), and the node one names is checked with `ROLE`
    /// to be a primary.
    async fn node(&self, attempt: usize, timeout: Duration) -> RedisResult<redis::Client> {
        match self {
            Target::Single(client) => Ok(client.clone()),
            Target::Cluster { seeds, .. } => Ok(seeds[attempt % seeds.len()].clone()),
            Target::Sentinel {
                sentinels,
                service,
                first,
            } => {
                let start = first.load(Ordering::Relaxed);
                let mut failed = None;
                for k in (0..sentinels.len()).map(|i| (start + i) % sentinels.len()) {
                    let ask = async {
                        let mut one = redis::sentinel::Sentinel::build(vec![&*sentinels[k]])?;
                        one.async_master_for(service, None).await
                    };
                    match within(connect_timeout(timeout), ask).await {
                        Ok(client) => {
                            first.store(k, Ordering::Relaxed);
                            return Ok(client);
                        }
                        Err(e) => failed = Some(e),
                    }
                }
                Err(failed.expect("a Sentinel URL names at least one sentinel"))
            }
        }
    }
}

/// `work`, or a timeout error once `limit` has passed.
async fn within<T>(limit: Duration, work: impl Future<Output = RedisResult<T>>) -> RedisResult<T> {
    actix_web::rt::time::timeout(limit, work)
        .await
        .map_err(|_| RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
}

/// How long opening a connection may take: a call's timeout, but never under 200 ms.
fn connect_timeout(timeout: Duration) -> Duration {
    timeout.max(Duration::from_millis(200))
}

/// A live connection; both kinds multiplex every concurrent call over their sockets,
/// which pipelines the checks of many requests without waiting for each answer.
#[derive(Clone)]
pub(super) enum Conn {
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

    /// A subscription connection, made where this handle's connections are; `attempt`
    /// counts the failures since the last one that worked.
    pub async fn pubsub(&self, attempt: usize) -> RedisResult<PubSub> {
        let config = &self.inner.config;
        config.target.pubsub(attempt, config.timeout).await
    }

    /// Whether calls are being sent (the breaker is closed).
    pub fn is_up(&self) -> bool {
        !self.inner.open.load(Ordering::Relaxed)
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

    pub(super) fn conn(&self) -> Result<Conn, RedisUnavailable> {
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
    pub(super) fn local_conn(&self) -> Option<(Conn, u64)> {
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
    pub(super) fn outcome<T>(
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
    pub(super) fn observe<T>(&self, reply: Result<T, RedisError>) -> Result<T, RedisUnavailable> {
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

/// What kind of failure a call's error is, and whether it means the connection is
/// broken (rather than slow, or the server refusing one command).
fn failure_kind(e: &RedisError) -> (RedisFailure, bool) {
    use redis::{ErrorKind, ServerErrorKind};
    if e.is_timeout() {
        (RedisFailure::timeout, false)
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        (RedisFailure::connection, true)
    } else if let ErrorKind::Server(
        ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown | ServerErrorKind::BusyLoading,
    ) = e.kind()
    {
        // Not the primary any more (demoted, or still loading): the connection is as good
        // as broken, and the next one asks again where the primary is.
        (RedisFailure::server, true)
    } else {
        (RedisFailure::server, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_one_server_seed_nodes_or_sentinels() {
        let parse = |s: &str| s.parse::<RedisUrl>();
        assert_eq!(
            parse("redis://127.0.0.1:7000, redis://127.0.0.1:7001"),
            Ok(RedisUrl::Nodes(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://127.0.0.1:7001".into()
            ]))
        );
        assert_eq!(
            parse("redis+sentinel://10.0.0.1:26380,s2,[::1]:26381/my-primary"),
            Ok(RedisUrl::Sentinel {
                sentinels: vec![
                    "redis://10.0.0.1:26380".into(),
                    "redis://s2:26379".into(),
                    "redis://[::1]:26381".into()
                ],
                service: "my-primary".into()
            })
        );
        for bad in [
            "http://localhost:6379",
            "not a url",
            "redis://a,http://b",
            "redis+sentinel://s1:26379",
            "redis+sentinel://s1:26379/",
            "redis+sentinel://s1:26379/a/b",
            "redis+sentinel://s1:0/p",
            "redis+sentinel://s1:x/p",
            "redis+sentinel://,s2/p",
            "redis+sentinel://:secret@s1/p",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let sentinel = parse("redis+sentinel://s1/p").unwrap();
        assert!(Target::new(&sentinel, true, Duration::from_millis(50)).is_err());
        assert!(Target::new(&sentinel, false, Duration::from_millis(50)).is_ok());
        let two = parse("redis://a,redis://b").unwrap();
        assert!(Target::new(&two, false, Duration::from_millis(50)).is_err());
    }
}
