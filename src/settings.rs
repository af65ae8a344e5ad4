//! Every flag and environment variable, in one place. A bad value exits non-zero with one
//! line that names it (see `main`).

use crate::http::client_id::Cidr;
use crate::store::redis::RedisUrl;
use crate::store::sqlite::DatabaseUrl;
use clap::Parser;
use std::net::SocketAddr;
use std::num::NonZeroUsize;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "ratewarden",
    version,
    about = "A rate-limiting HTTP server: sliding window, fixed window and token bucket \
             limits per endpoint, managed live through an admin API."
)]
pub struct Settings {
    /// A command other than serving (none: serve).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to listen on.
    #[arg(long, env = "RATEWARDEN_BIND", default_value = "127.0.0.1:8000")]
    pub bind: SocketAddr,

    /// SQLite database: a path, sqlite://path, or :memory:.
    #[arg(long, env = "DATABASE_URL", default_value = "ratewarden.db", value_parser = DatabaseUrl::parse)]
    pub database: DatabaseUrl,

    /// Configs as code: a TOML file that declares every config. Applied at start, on
    /// SIGHUP and on POST /admin/reload (as one change; an invalid file changes
    /// nothing); while it is set, the admin API's config writes answer 409. With
    /// --redis-url it is applied to the configs every instance shares.
    #[arg(long, env = "RATEWARDEN_CONFIG_FILE")]
    pub config_file: Option<std::path::PathBuf>,

    /// Bearer token required by the admin API. Without one, only loopback peers may use it.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub admin_token: Option<String>,

    /// Bearer token for the decision API (`/v1/*`), so a proxy needs no admin token; the
    /// admin token works there too. With neither, only loopback peers may use it.
    #[arg(long, env = "DECISION_TOKEN", hide_env_values = true, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub decision_token: Option<String>,

    /// Which headers name the original request at /v1/forward-auth: `original`
    /// (X-Original-URI / X-Original-Method: nginx auth_request) or `forwarded`
    /// (X-Forwarded-Uri / X-Forwarded-Method: Caddy forward_auth, Traefik ForwardAuth).
    /// Only that family is read, so a client cannot choose its config with the other.
    #[arg(long, env = "RATEWARDEN_FORWARD_AUTH_HEADERS", value_enum, default_value_t = ForwardAuthHeaders::Original)]
    pub forward_auth_headers: ForwardAuthHeaders,

    /// Status of a refusal at /v1/forward-auth (400 to 599). nginx's auth_request turns
    /// anything but 2xx, 401 and 403 into a 500: set 403 there and map it back to 429.
    #[arg(long, env = "RATEWARDEN_FORWARD_AUTH_DENY_STATUS", default_value_t = 429, value_parser = clap::value_parser!(u16).range(400..=599))]
    pub forward_auth_deny_status: u16,

    /// Reverse-proxy mode: forward every request outside ratewarden's own paths (`/admin`,
    /// `/v1`, `/openapi.json`, `/ws`, `/events`, `/dashboard`, `/static`, `/metrics`,
    /// `/health`, `/livez`, `/readyz`) to this `http://host:port` once it is allowed; the
    /// demo routes are not served.
    #[arg(long, env = "RATEWARDEN_UPSTREAM", value_parser = parse_upstream)]
    pub upstream: Option<String>,

    /// Serve Envoy's rate-limit service (`envoy.service.ratelimit.v3`, gRPC over
    /// HTTP/2 without TLS) on this address, e.g. `127.0.0.1:8081` [default: off].
    #[arg(long, env = "RATEWARDEN_GRPC_BIND")]
    pub grpc_bind: Option<SocketAddr>,

    /// Longest the upstream may take to answer a forwarded request (connecting, sending
    /// the body and its response head) before the client gets a 504; a response's body
    /// then streams for as long as it lasts.
    #[arg(long, env = "RATEWARDEN_UPSTREAM_TIMEOUT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub upstream_timeout_ms: u64,

    /// Largest request body forwarded to the upstream, in bytes (a larger one gets a 413)
    /// [default: no limit; bodies are streamed, never held whole].
    #[arg(long, env = "RATEWARDEN_MAX_PROXY_BODY", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_proxy_body: Option<u64>,

    /// HTTP worker threads [default: the number of CPUs].
    #[arg(long, env = "RATEWARDEN_WORKERS")]
    pub workers: Option<NonZeroUsize>,

    /// Registry shards, each on its own thread [default: half the CPUs, at least one].
    #[arg(long, env = "RATEWARDEN_SHARDS")]
    pub shards: Option<NonZeroUsize>,

    /// How often changed limiter state is written to the database: a change of a client
    /// not written within `--client-write-interval-ms` waits at most this long.
    #[arg(long, env = "RATEWARDEN_FLUSH_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub flush_interval_ms: u64,

    /// Least time between two writes of one client's state: a client that stays busy is
    /// written once per this, not at every flush. A crash (not a stop) loses at most
    /// this plus `--flush-interval-ms` of a client's consumption.
    #[arg(long, env = "RATEWARDEN_CLIENT_WRITE_INTERVAL_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub client_write_interval_ms: u64,

    /// Days of statistics and events to keep.
    #[arg(long, env = "RATEWARDEN_RETENTION_DAYS", default_value_t = 7,
          value_parser = clap::value_parser!(u64).range(1..=3650))]
    pub retention_days: u64,

    /// Seconds without a request after which a client's limiter is persisted and stopped.
    #[arg(long, env = "RATEWARDEN_CLIENT_IDLE_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub client_idle_secs: u64,

    /// Most live client limiters; beyond it the least recently used is persisted and stopped.
    #[arg(long, env = "RATEWARDEN_MAX_CLIENTS", default_value = "100000")]
    pub max_clients: NonZeroUsize,

    /// Comma-separated CIDRs of proxies whose X-Forwarded-For is trusted.
    #[arg(long, env = "RATEWARDEN_TRUSTED_PROXIES", value_delimiter = ',', value_parser = Cidr::parse)]
    pub trusted_proxies: Vec<Cidr>,

    /// Header that names the client; "none" keys every client by IP address only.
    #[arg(long, env = "RATEWARDEN_CLIENT_ID_HEADER", default_value = "X-Client-ID",
          value_parser = parse_header_name)]
    pub client_id_header: ClientIdHeader,

    /// Decision events each live feed forwards per second at most (a sample beyond it;
    /// the per-second totals in `global_stats` stay exact).
    #[arg(long, env = "RATEWARDEN_FEED_MAX_EVENTS_PER_SEC", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub feed_max_events_per_sec: u32,

    /// What a request gets when its limiter cannot answer in time (stopped, stalled on the
    /// database, mailbox full): `allow` passes it unlimited, `deny` answers 503.
    #[arg(long, env = "RATEWARDEN_ON_ERROR", value_enum, default_value_t = OnError::Allow)]
    pub on_error: OnError,

    /// Longest a request waits for its limiter's decision before `--on-error` decides.
    #[arg(long, env = "RATEWARDEN_DECISION_TIMEOUT_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub decision_timeout_ms: u64,

    /// Most client snapshots kept for writing while the database fails; beyond it the
    /// oldest are dropped (counted in /metrics and logged).
    #[arg(long, env = "RATEWARDEN_WRITE_QUEUE_MAX", default_value = "100000")]
    pub write_queue_max: NonZeroUsize,

    /// Most live-feed subscriptions (WebSocket and SSE) open at once from one IP address.
    #[arg(long, env = "RATEWARDEN_MAX_SUBSCRIBERS_PER_IP", default_value = "32")]
    pub max_subscribers_per_ip: NonZeroUsize,

    /// Comma-separated origins (scheme://host[:port]) whose pages may open the WebSocket
    /// feeds, besides the server's own; "*" allows any.
    #[arg(long, env = "RATEWARDEN_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Comma-separated host names (or IP addresses) that, without an admin token, the
    /// admin API, /metrics, the feeds and /v1 answer besides loopback names (localhost,
    /// 127.0.0.0/8, [::1]): a request whose `Host` names anything else is refused, so a
    /// web page cannot reach them through DNS rebinding. With a token, `Host` is not checked.
    #[arg(long, env = "RATEWARDEN_ALLOWED_HOSTS", value_delimiter = ',', value_parser = crate::access::host_name)]
    pub allowed_hosts: Vec<String>,

    /// Time a client has to send a request's head, and to close after the response, in
    /// milliseconds (slow clients are cut off; see actix's client request timeout).
    #[arg(long, env = "RATEWARDEN_CLIENT_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(100..=300_000))]
    pub client_timeout_ms: u64,

    /// Redis for distributed mode: counters, token buckets and configs are shared by every
    /// instance on the same Redis. A `redis://` URL; for Redis Cluster a comma-separated
    /// list of seed nodes with `--redis-cluster`; for Redis Sentinel
    /// `redis+sentinel://host:port[,host:port...]/<service>`. Without it, state stays in
    /// this process and its SQLite file.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<RedisUrl>,

    /// Treat `--redis-url` as the seed nodes of a Redis Cluster.
    #[arg(long, env = "REDIS_CLUSTER")]
    pub redis_cluster: bool,

    /// Longest a decision waits for Redis before `--on-error` decides; after three such
    /// failures in a row the circuit breaker opens and decisions stop waiting at all until
    /// a probe reconnects.
    #[arg(long, env = "RATEWARDEN_REDIS_TIMEOUT_MS", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub redis_timeout_ms: u64,

    /// This instance's name in the cluster's live feeds and statistics
    /// [default: the host name and the port].
    #[arg(long, env = "RATEWARDEN_INSTANCE_ID", value_parser = parse_instance_id)]
    pub instance_id: Option<String>,

    /// On SIGTERM or SIGINT, how long to keep serving while `/readyz` answers 503, so
    /// that load balancers stop sending traffic before the graceful stop begins (for
    /// Kubernetes, a few seconds; see docs/deploy.md).
    #[arg(long, env = "RATEWARDEN_SHUTDOWN_DELAY_MS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub shutdown_delay_ms: u64,

    /// Log level (error, warn, info, debug, trace); RUST_LOG, if set, takes precedence.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// What the binary does instead of serving.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Validates a config file exactly as a reload would, prints each error with its line
    /// and field, and exits 0 (valid) or 1; starts nothing and opens no database.
    CheckConfig {
        /// The TOML config file (the format of `--config-file`).
        file: std::path::PathBuf,
    },
}

/// Which headers describe the original request to `/v1/forward-auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ForwardAuthHeaders {
    /// `X-Original-URI` and `X-Original-Method`, as nginx's `auth_request` is told to set.
    Original,
    /// `X-Forwarded-Uri` and `X-Forwarded-Method`, as Caddy's `forward_auth` and
    /// Traefik's `ForwardAuth` set.
    Forwarded,
}

/// The policy applied when a limiter cannot decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnError {
    Allow,
    Deny,
}

/// The header that names the client, or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdHeader(pub Option<actix_web::http::header::HeaderName>);

fn parse_header_name(s: &str) -> Result<ClientIdHeader, String> {
    if s.is_empty() || s.eq_ignore_ascii_case("none") {
        return Ok(ClientIdHeader(None));
    }
    actix_web::http::header::HeaderName::try_from(s)
        .map(|h| ClientIdHeader(Some(h)))
        .map_err(|_| format!("{s:?} is not a valid header name"))
}

/// `http://host[:port]`, with no path but `/`, no query and no user: the origin every
/// forwarded request's own path is appended to. (Plain HTTP only: TLS to the upstream
/// is not built.)
fn parse_upstream(s: &str) -> Result<String, String> {
    let uri: actix_web::http::Uri = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a URL"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(a))
            if !a.as_str().contains('@')
                && !a.host().is_empty()
                && matches!(uri.path(), "" | "/")
                && uri.query().is_none() =>
        {
            Ok(format!("http://{a}"))
        }
        (Some("https"), _) => Err(format!(
            "{s:?}: TLS to the upstream is not supported; give an http:// address"
        )),
        _ => Err(format!(
            "{s:?} is not http://host[:port] (no path, query or user)"
        )),
    }
}

fn parse_instance_id(s: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b));
    ok.then(|| s.to_owned())
        .ok_or_else(|| "must be 1 to 64 characters of A-Z a-z 0-9 . _ : @ -".to_owned())
}

impl Settings {
    /// This instance's name in cluster feeds: `--instance-id`, or the host name and port.
    pub fn instance_id(&self, port: u16) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| parse_instance_id(h).is_ok())
                .unwrap_or_else(|| "ratewarden".to_owned());
            format!("{host}:{port}")
        })
    }

    pub fn workers(&self) -> usize {
        self.workers.map_or_else(cpus, NonZeroUsize::get)
    }

    /// Half the CPUs by default: the HTTP workers need the other half, and on a small
    /// machine an extra shard thread costs more in cross-thread wake-ups than it adds
    /// (measured with `scripts/bench`: on 2 cores one shard keeps 86 % of the unlimited
    /// route's throughput with 10,000 clients, two shards 77 %).
    pub fn shards(&self) -> usize {
        self.shards
            .map_or_else(|| (cpus() / 2).max(1), NonZeroUsize::get)
    }

    /// Settings for tests and embedding: defaults, an in-memory database, port 0.
    pub fn for_tests() -> Self {
        // The arguments are fixed and valid, so parsing cannot fail.
        Self::try_parse_from([
            "ratewarden",
            "--database",
            ":memory:",
            "--bind",
            "127.0.0.1:0",
        ])
        .expect("fixed test arguments parse")
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, clap::Error> {
        Settings::try_parse_from(std::iter::once("ratewarden").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_documentation() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.bind.to_string(), "127.0.0.1:8000");
        assert_eq!(s.database, DatabaseUrl::File("ratewarden.db".into()));
        assert_eq!(s.flush_interval_ms, 1000);
        assert_eq!(s.client_write_interval_ms, 60_000);
        assert_eq!(s.retention_days, 7);
        assert_eq!(s.client_id_header.0.unwrap().as_str(), "x-client-id");
        assert_eq!(s.on_error, OnError::Allow);
        assert_eq!(s.decision_timeout_ms, 1000);
        assert_eq!(s.client_timeout_ms, 5000);
        assert!(s.redis_url.is_none());
        assert_eq!(s.redis_timeout_ms, 50);
        assert_eq!(s.shutdown_delay_ms, 0);
        assert_eq!(s.command, None);
        let s = parse(&[
            "--redis-url",
            "redis://127.0.0.1:7000,redis://127.0.0.1:7001",
        ])
        .unwrap();
        assert!(matches!(s.redis_url, Some(RedisUrl::Nodes(n)) if n.len() == 2));
        let s = parse(&[
            "--on-error",
            "deny",
            "--allowed-origins",
            "https://a.example,*",
        ])
        .unwrap();
        assert_eq!(s.on_error, OnError::Deny);
        assert_eq!(s.allowed_origins, ["https://a.example", "*"]);
    }

    #[test]
    fn rejects_bad_values() {
        for args in [
            &["--bind", "nowhere"][..],
            &["--workers", "0"],
            &["--flush-interval-ms", "5"],
            &["--client-write-interval-ms", "5"],
            &["--max-clients", "-3"],
            &["--trusted-proxies", "10.0.0.0/33"],
            &["--database", "mysql://x"],
            &["--client-id-header", "bad header"],
            &["--on-error", "maybe"],
            &["--decision-timeout-ms", "0"],
            &["--max-subscribers-per-ip", "0"],
            &["--redis-url", "http://localhost:6379"],
            &["--redis-url", "not a url"],
            &["--redis-timeout-ms", "0"],
            &["--instance-id", "a b"],
            &["--upstream", "https://example.com"],
            &["--upstream", "http://example.com/base"],
            &["--upstream", "http://u:p@example.com"],
            &["--upstream", "example.com:80"],
            &["--upstream", "http://example.com/?a=1"],
            &["--upstream-timeout-ms", "0"],
            &["--max-proxy-body", "0"],
            &["--shutdown-delay-ms", "-1"],
            &["--shutdown-delay-ms", "600001"],
            &["check-config"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn the_upstream_is_an_origin() {
        for (given, origin) in [
            ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
            ("http://backend/", "http://backend"),
            ("http://[::1]:81", "http://[::1]:81"),
        ] {
            let s = parse(&["--upstream", given]).unwrap();
            assert_eq!(s.upstream.as_deref(), Some(origin));
        }
        let s = parse(&[]).unwrap();
        assert_eq!((s.upstream, s.upstream_timeout_ms), (None, 60_000));
        assert_eq!(s.max_proxy_body, None);
    }

    #[test]
    fn check_config_is_a_command_with_a_file() {
        let s = parse(&["check-config", "ratewarden.toml"]).unwrap();
        assert_eq!(
            s.command,
            Some(Command::CheckConfig {
                file: "ratewarden.toml".into()
            })
        );
        assert_eq!(
            parse(&["--shutdown-delay-ms", "5000"])
                .unwrap()
                .shutdown_delay_ms,
            5000
        );
    }

    #[test]
    fn empty_tokens_are_refused() {
        assert!(parse(&["--decision-token", ""]).is_err());
        assert!(parse(&["--admin-token", ""]).is_err());
        assert!(parse(&["--decision-token", "x", "--admin-token", "y"]).is_ok());
    }

    #[test]
    fn the_client_id_header_can_be_turned_off() {
        assert_eq!(
            parse(&["--client-id-header", "none"])
                .unwrap()
                .client_id_header
                .0,
            None
        );
    }
}
