//! The composition root: the one place that knows the concrete types. It opens the
//! database, starts the actors, builds the HTTP server on a given listener, and on stop
//! flushes every limiter's state.

use crate::actors::EventSink;
use crate::actors::broadcaster::{Broadcaster, EndFeeds, FeedInterest};
use crate::actors::db::{Checkpoint, Cleanup, Db, DbStatus};
use crate::actors::registry::{Registries, RegistryConfig, client_hash};
use crate::clock::{NANOS_PER_SEC, SharedClock, SystemClock};
use crate::cluster::{self, Cluster, ClusterParts};
use crate::config::file;
use crate::config::writer::{Committer, ConfigStore, ConfigWriter, LocalConfigs, WriteError};
use crate::config::{Config, Source};
use crate::decide::Decider;
use crate::envoy::grpc::GrpcServer;
use crate::http::client_id::Identity;
use crate::http::connection::OpenConnections;
use crate::http::decision::ForwardAuth;
use crate::http::ops::Draining;
use crate::http::proxy::Upstream;
use crate::http::realtime::FeedLimits;
use crate::http::{AppState, dashboard, routes};
use crate::metrics::{Metrics, ReloadResult};
use crate::policy::{Policies, PolicyTable};
use crate::report::Reporter;
use crate::settings::Settings;
use crate::stats::{GlobalStats, Peers};
use crate::store::quota::{Memory, QuotaBackend};
use crate::store::redis::{Redis, RedisConfig};
use crate::store::sqlite;
use actix::{AsyncContext, Context};
use actix_web::dev::{Server, ServerHandle};
use actix_web::http::StatusCode;
use actix_web::{App, HttpServer, web};
use futures_util::future::{Either, join, select};
use futures_util::{Stream, StreamExt};
use std::net::{SocketAddr, TcpListener};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

/// How long a stop waits for gRPC calls in flight.
const GRPC_GRACE: Duration = Duration::from_secs(5);

/// How often the retention cleanup runs.
const CLEANUP_EVERY: Duration = Duration::from_secs(600);

/// A started server: its address, and what is needed to stop it cleanly.
pub struct Running {
    pub addr: SocketAddr,
    pub server: Server,
    pub registries: Registries,
    /// Ends the live feeds at shutdown, which would otherwise hold their connections.
    broadcaster: actix::Addr<Broadcaster>,
    /// Tells a graceful stop when the last connection has closed.
    connections: Arc<OpenConnections>,
    /// Envoy's rate-limit service, with `--grpc-bind`.
    grpc: Option<GrpcServer>,
    /// Turns `/readyz` to 503 when a stop begins.
    draining: Arc<Draining>,
    /// Folds the WAL into the database file after the final flush.
    db: actix::Addr<Db>,
    /// How long requests are still served after that (`--shutdown-delay-ms`).
    shutdown_delay: Duration,
}

impl Running {
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// The gRPC server's address, with `--grpc-bind`.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().map(|g| g.addr)
    }

    /// Serves until the first of `stops` (or a handle's `stop`); then reports not ready
    /// and keeps serving for the shutdown delay (load balancers drain it meanwhile;
    /// a second of `stops` cuts it short), ends every live feed, lets in-flight requests
    /// finish, then writes every limiter's state. The actors are still running at that
    /// point: the server owns no signal handling that could stop the system first.
    pub async fn serve_until(self, stops: impl Stream<Item = ()>) -> std::io::Result<()> {
        let handle = self.server.handle();
        let mut server = self.server;
        let grpc = self.grpc;
        let mut stops = pin!(stops);
        let served = match select(&mut server, stops.next()).await {
            Either::Left((served, _)) => served,
            Either::Right(_) => {
                self.draining.begin();
                let stopped = drain(&mut server, self.shutdown_delay, stops.next()).await;
                // Feeds never finish by themselves: end them (WebSocket Close 1001, SSE
                // end of stream), or the graceful stop would wait out its timeout.
                match self.broadcaster.send(EndFeeds).await {
                    Ok(n) => log::info!("{n} live feeds ended"),
                    Err(e) => log::warn!("ending the live feeds: {e}"),
                }
                match stopped {
                    // Stopped through a handle while draining.
                    Some(served) => served,
                    None => {
                        // The graceful stop refuses new connections, closes idle ones and
                        // lets requests in flight finish; its workers look for the last
                        // connection only once a second, so this side watches for it
                        // and, once it has closed, drops the server (stopping the idle
                        // workers) at once. The server future handles the stop command:
                        // poll it meanwhile.
                        let stopped = join(handle.stop(true), &mut server);
                        match select(pin!(stopped), pin!(self.connections.all_closed())).await {
                            Either::Left(((_, served), _)) => served,
                            Either::Right(((), _)) => Ok(()),
                        }
                    }
                }
            }
        };
        // Stops the workers (idle by now) and the gRPC server before the final flush, so
        // that nothing can decide after it.
        drop(server);
        if let Some(grpc) = grpc {
            grpc.stop(GRPC_GRACE).await;
        }
        flush_on_stop(&self.registries, &self.db).await;
        served
    }
}

/// Keeps serving for `delay` once a stop has begun (not ready meanwhile), so that load
/// balancers stop sending traffic before connections are refused, unless `hurry`
/// resolves first (a second signal); `Some` when the server stopped meanwhile.
async fn drain(
    server: &mut Server,
    delay: Duration,
    hurry: impl Future + Unpin,
) -> Option<std::io::Result<()>> {
    if delay.is_zero() {
        return None;
    }
    log::info!(
        "not ready; still serving for {} ms (--shutdown-delay-ms) before stopping",
        delay.as_millis()
    );
    let sleep = pin!(actix_web::rt::time::sleep(delay));
    let waited = select(sleep, hurry);
    // The server serves only while its future is polled.
    match select(server, waited).await {
        Either::Left((served, _)) => Some(served),
        Either::Right((Either::Left(_), _)) => None,
        Either::Right((Either::Right(_), _)) => {
            log::info!("stop asked again: the shutdown delay is cut short");
            None
        }
    }
}

/// SIGINT (Ctrl-C) or SIGTERM, each time one arrives: the first stops the server, a
/// second cuts the shutdown delay short.
pub fn shutdown_signals() -> impl Stream<Item = ()> {
    use actix_web::rt::signal::unix::{SignalKind, signal};
    let listeners = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => Some((term, int)),
        _ => {
            log::warn!("cannot listen for SIGTERM; stopping on Ctrl-C only");
            None
        }
    };
    futures_util::stream::unfold(listeners, |mut listeners| async move {
        match &mut listeners {
            Some((term, int)) => {
                select(pin!(term.recv()), pin!(int.recv())).await;
            }
            None => {
                let _ = actix_web::rt::signal::ctrl_c().await;
            }
        }
        log::info!("shutdown signal received; finishing requests and writing state");
        Some(((), listeners))
    })
}

/// Writes every limiter's state, then folds the write-ahead log into the database file,
/// so that after a clean stop the file alone holds everything.
async fn flush_on_stop(registries: &Registries, db: &actix::Addr<Db>) {
    match registries.flush_all().await {
        Ok(n) => log::info!(
            "stopped; {n} client snapshots written now (the rest were already): every client's state is saved"
        ),
        Err(e) => log::error!("stopped, but the final flush failed: {e}"),
    }
    match db.send(Checkpoint).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            log::warn!("the final checkpoint failed ({e}); the WAL file holds the last writes")
        }
        Err(e) => log::warn!(
            "the final checkpoint was not made ({e}); the WAL file holds the last writes"
        ),
    }
}

/// Starts everything on `listener` with the system clock.
pub fn start(settings: &Settings, listener: TcpListener) -> Result<Running, String> {
    start_with_clock(settings, listener, Arc::new(SystemClock))
}

/// Starts everything on `listener`. Must run inside an actix system.
pub fn start_with_clock(
    settings: &Settings,
    listener: TcpListener,
    clock: SharedClock,
) -> Result<Running, String> {
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let state = build_state_on(settings, clock, addr.port())?;
    if settings.config_file.is_some() {
        reload_on_sighup(state.configs.clone());
        if let Some(cluster) = &state.cluster {
            apply_file_once_synced(cluster.clone(), state.configs.clone());
        }
    }
    let grpc_decider = state.decider.clone();
    let grpc_tokens = state.decision_tokens().map(Clone::clone);
    let registries = state.registries.clone();
    let broadcaster = state.broadcaster.clone();
    let draining = state.draining.clone();
    let db = state.db.clone();
    let connections = Arc::new(OpenConnections::default());
    let counted = connections.clone();
    let upstream = settings.upstream.as_ref().map(|origin| Upstream {
        origin: origin.clone(),
        timeout: Duration::from_millis(settings.upstream_timeout_ms),
        max_body: settings.max_proxy_body,
    });
    if let Some(u) = &upstream {
        log::info!("reverse-proxy mode: allowed requests go to {}", u.origin);
    }
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(routes(upstream.clone()))
    })
    .workers(settings.workers())
    // Slow clients (slowloris) get this long for a request's head, and for closing.
    .client_request_timeout(Duration::from_millis(settings.client_timeout_ms))
    .client_disconnect_timeout(Duration::from_millis(settings.client_timeout_ms))
    // A client that closes its side has gone: its response (an SSE stream above all,
    // which may have nothing to write for a long time) ends at once and frees what
    // it held. HTTP/1.1 clients do not half-close to wait for an answer.
    .h1_allow_half_closed(false)
    // A handle to each socket, so a closed WebSocket ends its connection at once, and
    // a count of them, so a stop ends as soon as the last one has closed.
    .on_connect(move |io, ext| counted.on_connect(io, ext))
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)
    .map_err(|e| format!("listening on {addr}: {e}"))?
    .run();
    // Started last: a start that fails leaves nothing serving.
    let grpc = match settings.grpc_bind {
        Some(at) => {
            let listener = TcpListener::bind(at)
                .map_err(|e| format!("binding the gRPC server to {at}: {e}"))?;
            Some(GrpcServer::start(grpc_decider, grpc_tokens, listener)?)
        }
        None => None,
    };
    log::info!(
        "ratewarden listening on http://{addr} (database {})",
        settings.database
    );
    Ok(Running {
        addr,
        server,
        registries,
        broadcaster,
        connections,
        grpc,
        draining,
        db,
        shutdown_delay: Duration::from_millis(settings.shutdown_delay_ms),
    })
}

/// Opens the database, loads configs, statistics and known clients, and starts the
/// actors: everything the routes need, without the HTTP server.
pub fn build_state(settings: &Settings, clock: SharedClock) -> Result<web::Data<AppState>, String> {
    build_state_on(settings, clock, settings.bind.port())
}

/// [`build_state`] for a server listening on `port` (its default instance name).
pub fn build_state_on(
    settings: &Settings,
    clock: SharedClock,
    port: u16,
) -> Result<web::Data<AppState>, String> {
    let now = clock.now();
    let conn = sqlite::open(&settings.database)
        .map_err(|e| format!("opening the database {}: {e}", settings.database))?;
    let metrics = Arc::new(Metrics::default());
    let mut configs =
        sqlite::load_configs(&conn, now).map_err(|e| format!("loading configs: {e}"))?;
    if let Some(path) = &settings.config_file {
        configs = apply_file_at_start(&conn, path, configs, now, &metrics)?;
    }
    let table = PolicyTable::new(configs).ok_or("the default config is missing")?;

    let global = Arc::new(GlobalStats::default());
    let day_ago = (now / NANOS_PER_SEC / 60).saturating_sub(24 * 60);
    for (minute, allowed, blocked) in
        sqlite::minute_totals(&conn, day_ago).map_err(|e| format!("loading statistics: {e}"))?
    {
        global.seed_minute(minute, allowed, blocked);
    }
    let mut known = Vec::new();
    sqlite::for_each_client(&conn, |c| known.push(client_hash(c)))
        .map_err(|e| format!("loading clients: {e}"))?;

    let instance: Arc<str> = Arc::from(settings.instance_id(port));
    let sharing = Sharing::new(settings, &clock, &metrics, instance)?;
    let db_status = Arc::new(DbStatus::default());
    let db = Db::start(
        conn,
        settings.database.clone(),
        settings.write_queue_max.get(),
        metrics.clone(),
        db_status.clone(),
    );
    // The broadcaster needs the registries (for client statistics) and the limiters need
    // the broadcaster: take its address first, run it once the registries exist.
    let broadcaster_ctx = Context::<Broadcaster>::new();
    let broadcaster = broadcaster_ctx.address();
    let interest = Arc::new(FeedInterest::default());
    // The quota backend: one per shard (each shard's own connection to a remote store).
    let backends = (0..settings.shards()).map(|_| sharing.backend()).collect();
    let registries = Registries::start(
        backends,
        RegistryConfig {
            clock: clock.clone(),
            db: db.clone(),
            global: global.clone(),
            events: Some(EventSink {
                recipient: broadcaster.clone().recipient(),
                interest: interest.clone(),
            }),
            max_clients: settings.max_clients.get(),
            idle: settings.client_idle_secs * NANOS_PER_SEC,
            flush_interval: Duration::from_millis(settings.flush_interval_ms),
            write_interval: Duration::from_millis(settings.client_write_interval_ms),
            live_total: Arc::new(AtomicUsize::new(0)),
            metrics: metrics.clone(),
        },
        known,
    );
    let policies = Arc::new(Policies::new(table));
    let reporter = Reporter {
        clock: clock.clone(),
        global: global.clone(),
        policies: policies.clone(),
        registries: registries.clone(),
        db: db.clone(),
        started_at: now,
        cluster: sharing.peers(),
    };
    let feeds = Broadcaster::new(
        reporter.clone(),
        interest.clone(),
        settings.feed_max_events_per_sec,
        metrics.feed_events_dropped.clone(),
    );
    broadcaster_ctx.run(sharing.feeds(feeds, settings));
    let committer = Arc::new(Committer {
        policies: policies.clone(),
        db: db.clone(),
        broadcaster: broadcaster.clone(),
        clock: clock.clone(),
    });
    let (cluster, store) = sharing.start(Shared {
        committer: committer.clone(),
        interest: interest.clone(),
        global,
        clock: clock.clone(),
        metrics: metrics.clone(),
        registries: registries.clone(),
    });
    spawn_cleanup(
        db.clone(),
        clock.clone(),
        settings.retention_days * 86_400 * NANOS_PER_SEC,
    );

    if settings.admin_token.is_none() {
        log::warn!(
            "no admin token is set (--admin-token / ADMIN_TOKEN): the admin API, /metrics and the feeds answer loopback clients only, addressed as localhost, 127.0.0.1 or [::1]{}",
            settings
                .allowed_hosts
                .iter()
                .map(|h| format!(" or {h}"))
                .collect::<String>()
        );
    }
    let decider = Arc::new(Decider::new(
        policies.clone(),
        registries.clone(),
        interest.clone(),
        metrics.clone(),
        clock.clone(),
        settings.on_error,
        sharing.decision_timeout(settings),
    ));
    Ok(web::Data::new(AppState {
        policies,
        registries,
        db,
        clock,
        reporter,
        broadcaster,
        interest,
        templates: dashboard::templates()?,
        identity: Identity {
            header: settings.client_id_header.0.clone(),
            trusted_proxies: settings.trusted_proxies.clone(),
        },
        admin_token: settings.admin_token.clone(),
        allowed_hosts: crate::access::AllowedHosts::new(settings.allowed_hosts.clone()),
        decision_token: settings.decision_token.clone(),
        forward_auth: ForwardAuth {
            headers: settings.forward_auth_headers,
            // The parser admits 400 to 599 only, every one a valid status.
            deny_status: StatusCode::from_u16(settings.forward_auth_deny_status)
                .unwrap_or(StatusCode::TOO_MANY_REQUESTS),
        },
        feeds: FeedLimits::new(
            settings.max_subscribers_per_ip.get(),
            settings.allowed_origins.clone(),
            metrics.clone(),
        ),
        metrics: metrics.clone(),
        db_status,
        decider,
        configs: Arc::new(ConfigWriter::new(
            committer,
            store,
            metrics.clone(),
            settings.config_file.clone(),
        )),
        draining: Arc::new(Draining::default()),
        cluster,
    }))
}

/// The config file at start, before anything serves: planned and stored as a reload
/// plans and stores it (the same plan, the same storage function), with no one to tell
/// yet. An invalid file is logged and counted, and the stored configs serve, as they
/// would after a reload refused it.
fn apply_file_at_start(
    conn: &rusqlite::Connection,
    path: &std::path::Path,
    stored: Vec<Config>,
    now: u64,
    metrics: &Metrics,
) -> Result<Vec<Config>, String> {
    let desired = match file::load(path) {
        Ok(desired) => desired,
        Err(e) => {
            log::error!("config file refused at start, serving the stored configs: {e}");
            metrics.config_reloaded(ReloadResult::invalid);
            return Ok(stored);
        }
    };
    let planned = file::plan(&stored, &desired, now);
    for change in &planned {
        metrics.config_changed(change.action());
    }
    let changed = planned.len();
    sqlite::write_configs(conn, planned, Source::File, now)
        .map_err(|e| format!("storing the configs of {}: {e}", path.display()))?;
    metrics.config_reloaded(ReloadResult::applied);
    log::info!(
        "config file {} applied at start: {} configs, {changed} changed",
        path.display(),
        desired.len()
    );
    sqlite::load_configs(conn, now).map_err(|e| format!("loading configs: {e}"))
}

/// Distributed mode: the config file applied to the shared configs once they have been
/// read from Redis (the start applied it to this instance's copy only): every instance
/// given the same file converges on it, whichever applies it first. Tried again every
/// second while Redis cannot take it; a file refused as invalid is not (logged by the
/// writer: the shared configs serve).
fn apply_file_once_synced(cluster: Arc<Cluster>, writer: Arc<ConfigWriter>) {
    actix_web::rt::spawn(async move {
        let mut every = actix_web::rt::time::interval(Duration::from_millis(100));
        while !cluster.synced() {
            every.tick().await;
        }
        loop {
            match writer.reload().await {
                Ok(_) | Err(WriteError::InvalidFile(_) | WriteError::Invalid(_)) => return,
                Err(e) => {
                    log::warn!(
                        "applying the config file to the shared configs failed ({e:?}); retrying in a second"
                    );
                    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
}

/// Reloads the config file on every SIGHUP (a refused file is logged and counted by
/// the writer).
fn reload_on_sighup(writer: Arc<ConfigWriter>) {
    use actix_web::rt::signal::unix::{SignalKind, signal};
    actix_web::rt::spawn(async move {
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("cannot listen for SIGHUP ({e}); reload with POST /admin/reload");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            log::info!("SIGHUP: reloading the config file");
            let _ = writer.reload().await;
        }
    });
}

/// Whether this instance limits alone or shares its limits, configs and feeds with
/// others through Redis: chosen once, from `--redis-url`, and asked by every part that
/// differs between the two (and nothing else asks which Redis topology runs: that is
/// `store::redis`'s connection's).
enum Sharing {
    Alone,
    Redis {
        config: Arc<RedisConfig>,
        instance: Arc<str>,
        peers: Arc<Peers>,
    },
}

/// What the coordination between instances needs from the rest.
struct Shared {
    committer: Arc<Committer>,
    interest: Arc<FeedInterest>,
    global: Arc<GlobalStats>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    registries: Registries,
}

impl Sharing {
    fn new(
        settings: &Settings,
        clock: &SharedClock,
        metrics: &Arc<Metrics>,
        instance: Arc<str>,
    ) -> Result<Self, String> {
        let Some(url) = &settings.redis_url else {
            return Ok(Sharing::Alone);
        };
        let timeout = Duration::from_millis(settings.redis_timeout_ms);
        let config =
            RedisConfig::new(url, settings.redis_cluster, timeout, clock, metrics.clone())?;
        Ok(Sharing::Redis {
            config,
            instance,
            peers: Arc::new(Peers::default()),
        })
    }

    /// A registry shard's quota backend: the entities' own state, or the shard's own
    /// handle on Redis.
    fn backend(&self) -> Arc<dyn QuotaBackend> {
        match self {
            Sharing::Alone => Arc::new(Memory),
            Sharing::Redis { config, .. } => Arc::new(Redis::new(config.clone())),
        }
    }

    /// This instance's name and the others it hears from, for the statistics.
    fn peers(&self) -> Option<(Arc<str>, Arc<Peers>)> {
        match self {
            Sharing::Alone => None,
            Sharing::Redis {
                instance, peers, ..
            } => Some((instance.clone(), peers.clone())),
        }
    }

    /// The broadcaster, which with others also collects the events to relay to them.
    fn feeds(&self, feeds: Broadcaster, settings: &Settings) -> Broadcaster {
        match self {
            Sharing::Alone => feeds,
            Sharing::Redis { instance, .. } => {
                let max = cluster::events_per_second(settings.feed_max_events_per_sec);
                feeds.in_cluster(instance.clone(), max)
            }
        }
    }

    /// How long a request waits for its decision: `--decision-timeout-ms`, and with Redis
    /// no longer than `--redis-timeout-ms`.
    fn decision_timeout(&self, settings: &Settings) -> Duration {
        let ms = match self {
            Sharing::Alone => settings.decision_timeout_ms,
            Sharing::Redis { .. } => settings.decision_timeout_ms.min(settings.redis_timeout_ms),
        };
        Duration::from_millis(ms)
    }

    /// Starts the coordination with the others, if any; answers it and where config
    /// writes go (this instance's SQLite file, or the configs every instance shares).
    fn start(&self, p: Shared) -> (Option<Arc<Cluster>>, Arc<dyn ConfigStore>) {
        let Sharing::Redis {
            config,
            instance,
            peers,
        } = self
        else {
            return (None, Arc::new(LocalConfigs(p.committer)));
        };
        log::info!("distributed mode: instance {instance} shares limits through Redis");
        let cluster = Cluster::start(ClusterParts {
            instance: instance.clone(),
            redis: Redis::new(config.clone()),
            committer: p.committer,
            interest: p.interest,
            global: p.global,
            peers: peers.clone(),
            clock: p.clock,
            metrics: p.metrics,
            registries: p.registries,
        });
        (Some(cluster.clone()), cluster)
    }
}

fn spawn_cleanup(db: actix::Addr<Db>, clock: SharedClock, retention: u64) {
    actix_web::rt::spawn(async move {
        let mut every = actix_web::rt::time::interval(CLEANUP_EVERY);
        loop {
            every.tick().await;
            match db
                .send(Cleanup {
                    now: clock.now(),
                    retention,
                })
                .await
            {
                Ok(Ok(c)) => log::debug!("retention cleanup: {c:?}"),
                Ok(Err(e)) => log::warn!("retention cleanup failed: {e}"),
                Err(_) => return,
            }
        }
    });
}
