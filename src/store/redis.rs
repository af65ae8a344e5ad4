//! Distributed mode's Redis: every instance on the same Redis decides with the same
//! counters and reads the same configs. One concern per module, all through one handle
//! ([`Redis`]):
//!
//! - `connection`: where connections are made (one server, a Cluster's seed nodes, or
//!   the primary Sentinel names: the one place topologies differ), and the handle's
//!   circuit breaker and probe;
//! - `decisions`: the quota backend, one Lua script per algorithm;
//! - `configs`: the shared configs, read and compare-and-set;
//! - the feed relay and the config sync between instances are `crate::cluster`'s.

mod configs;
mod connection;
mod decisions;

pub use configs::SharedTable;
pub use connection::{RedisUnavailable, RedisUrl};

use super::over_limit::OverLimit;
use crate::clock::SharedClock;
use crate::limiter::{
    Algo, Algorithm, FixedWindowLimit, Limit, SlidingWindowLimit, TokenBucketLimit,
};
use crate::metrics::Metrics;
use connection::{Conn, Target};
use redis::Script;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

/// Channel on which config versions are announced.
pub const CONFIG_CHANNEL: &str = "rw:config";
/// Channel on which instances share their per-second statistics and decision events.
pub const FEED_CHANNEL: &str = "rw:feed";
/// Channel on which an instance announces a client it reset (the client's key value).
pub const RESET_CHANNEL: &str = "rw:reset";
const CONFIGS_KEY: &str = "rw:{config}:all";
const CONFIG_VERSION_KEY: &str = "rw:{config}:version";
const CONFIG_ID_KEY: &str = "rw:{config}:next_id";

/// The prelude of every decision script: the time, and helpers.
const PRELUDE: &str = include_str!("redis/prelude.lua");

/// How a decision script answers (see `decisions::parse_answer`).
const ANSWER: &str = include_str!("redis/answer.lua");

/// The driver of the script of several limits (see [`several_script`]).
const SEVERAL: &str = include_str!("redis/several.lua");

/// The shared-config scripts (see `configs`); each file says what it takes.
const CONFIG_CAS: &str = include_str!("redis/config_cas.lua");
const CONFIG_SEED: &str = include_str!("redis/config_seed.lua");
const CONFIG_ALL: &str = include_str!("redis/config_all.lua");

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
