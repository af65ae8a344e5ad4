//! What the server tells an operator: Prometheus metrics (OpenMetrics text, encoded by
//! `prometheus-client`), served by `GET /metrics`. The parts of the server that do the
//! work hold an `Arc<Metrics>` and count as they go; gauges that mirror other state
//! (live limiters) are set when scraped.

use crate::config::ConfigAction;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    allowed,
    limited,
    /// Over the limit of a config in shadow mode: let through.
    shadow_limited,
    /// Decided by `--on-error` because the limiter could not answer in time.
    on_error_allowed,
    on_error_denied,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// The config's endpoint (bounded by the configs, never the raw path).
    pub endpoint: Arc<str>,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// The config's endpoint.
    pub endpoint: Arc<str>,
    /// The limit's name (at most 8 per config).
    pub limit: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ErrorReason {
    /// No answer within `--decision-timeout-ms`.
    timeout,
    /// The limiter stopped (or its shard is gone) before answering.
    unavailable,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: ErrorReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RestoreSource {
    /// From a snapshot still waiting to be written.
    memory,
    database,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestoreLabels {
    pub source: RestoreSource,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DbOperation {
    persist,
    restore,
    config_write,
    health,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DbOperationLabels {
    pub operation: DbOperation,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Transport {
    websocket,
    sse,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    pub transport: Transport,
}

/// `action` of `ratewarden_config_changes_total`: the verb (`create`, `update`, `delete`).
impl prometheus_client::encoding::EncodeLabelValue for ConfigAction {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.verb())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RedisFailure {
    /// No answer within `--redis-timeout-ms`.
    timeout,
    /// The connection broke or could not be made.
    connection,
    /// Redis answered with an error.
    server,
    /// Not sent: the circuit breaker is open.
    breaker_open,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedisFailureLabels {
    pub kind: RedisFailure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum UpstreamFailure {
    /// No connection could be made, or it broke before a response head (answered 502).
    unreachable,
    /// No response head within `--upstream-timeout-ms` (answered 504).
    timeout,
    /// An answer this proxy cannot pass on: a 101 no upgrade asked for (answered 502).
    invalid_response,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReloadResult {
    /// The file was valid and the configs now equal it.
    applied,
    /// The file was refused (unreadable or invalid); nothing changed.
    invalid,
    /// The file was valid but storing it failed; nothing changed.
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: ReloadResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamFailureLabels {
    pub reason: UpstreamFailure,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: ConfigAction,
}

fn seconds_histogram() -> Histogram {
    // 10 µs to about 10 s.
    Histogram::new(exponential_buckets(1e-5, 4.0, 11))
}

pub struct Metrics {
    registry: Registry,
    pub decisions: Family<DecisionLabels, Counter>,
    pub limit_refusals: Family<LimitLabels, Counter>,
    pub units_charged: Family<LimitLabels, Counter>,
    pub cost_header_missing: Family<LimitLabels, Counter>,
    pub decision_seconds: Histogram,
    pub decision_errors: Family<ReasonLabels, Counter>,
    pub live_limiters: Gauge,
    pub evictions: Counter,
    pub restores: Family<RestoreLabels, Counter>,
    pub flush_batch_size: Histogram,
    pub flush_seconds: Histogram,
    pub db_errors: Family<DbOperationLabels, Counter>,
    pub write_queue_depth: Gauge,
    pub write_queue_dropped: Counter,
    pub feed_events_dropped: Counter,
    pub subscribers: Family<TransportLabels, Gauge>,
    pub subscribers_refused: Counter,
    pub config_changes: Family<ActionLabels, Counter>,
    pub config_reloads: Family<ReloadLabels, Counter>,
    pub redis_errors: Family<RedisFailureLabels, Counter>,
    pub redis_breaker_open: Gauge,
    pub redis_reconnects: Counter,
    pub redis_refused_locally: Counter,
    pub redis_seconds: Histogram,
    pub cluster_messages: Counter,
    pub upstream_errors: Family<UpstreamFailureLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("ratewarden"),
            decisions: Family::default(),
            limit_refusals: Family::default(),
            units_charged: Family::default(),
            cost_header_missing: Family::default(),
            decision_seconds: seconds_histogram(),
            decision_errors: Family::default(),
            live_limiters: Gauge::default(),
            evictions: Counter::default(),
            restores: Family::default(),
            flush_batch_size: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            flush_seconds: seconds_histogram(),
            db_errors: Family::default(),
            write_queue_depth: Gauge::default(),
            write_queue_dropped: Counter::default(),
            feed_events_dropped: Counter::default(),
            subscribers: Family::default(),
            subscribers_refused: Counter::default(),
            config_changes: Family::default(),
            config_reloads: Family::default(),
            redis_errors: Family::default(),
            redis_breaker_open: Gauge::default(),
            redis_reconnects: Counter::default(),
            redis_refused_locally: Counter::default(),
            redis_seconds: seconds_histogram(),
            cluster_messages: Counter::default(),
            upstream_errors: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "decisions",
            "Rate-limit decisions by config endpoint and outcome",
            m.decisions.clone(),
        );
        r.register(
            "limit_refusals",
            "Refusals by config endpoint and the limit that refused (a request refused by \
             several limits counts under each; shadow mode included)",
            m.limit_refusals.clone(),
        );
        r.register(
            "units_charged",
            "Units of tokens or bytes charged after the fact (a report, a response's cost \
             header, a proxied body's bytes, what a reconciliation charged beyond its \
             estimate), by config endpoint and limit",
            m.units_charged.clone(),
        );
        r.register(
            "cost_header_missing",
            "Responses whose cost header (a limit's cost_from) was missing or not a whole \
             number: each was charged 1 unit, by config endpoint and limit",
            m.cost_header_missing.clone(),
        );
        r.register(
            "decision_duration_seconds",
            "Time from sending a check to its client's limiter to the answer",
            m.decision_seconds.clone(),
        );
        r.register(
            "decision_errors",
            "Checks decided by --on-error because the limiter could not answer",
            m.decision_errors.clone(),
        );
        r.register(
            "live_limiters",
            "Client limiter actors alive now",
            m.live_limiters.clone(),
        );
        r.register(
            "evictions",
            "Limiters stopped for being idle or least recently used (state persisted)",
            m.evictions.clone(),
        );
        r.register(
            "restores",
            "Limiters restored from a snapshot, by where the snapshot was",
            m.restores.clone(),
        );
        r.register(
            "db_flush_batch_size",
            "Client snapshots per write-behind transaction",
            m.flush_batch_size.clone(),
        );
        r.register(
            "db_flush_duration_seconds",
            "Time to write one write-behind batch",
            m.flush_seconds.clone(),
        );
        r.register(
            "db_errors",
            "Database operations that failed, by operation",
            m.db_errors.clone(),
        );
        r.register(
            "write_behind_queue_depth",
            "Client snapshots waiting to be written (grows while the database fails)",
            m.write_queue_depth.clone(),
        );
        r.register(
            "write_behind_dropped",
            "Client snapshots dropped because the write-behind queue was full",
            m.write_queue_dropped.clone(),
        );
        r.register(
            "feed_events_dropped",
            "Live-feed messages dropped for subscribers that did not keep up",
            m.feed_events_dropped.clone(),
        );
        r.register(
            "feed_subscribers",
            "Connected live-feed subscribers, by transport",
            m.subscribers.clone(),
        );
        r.register(
            "feed_subscribers_refused",
            "Feed subscriptions refused by the per-IP cap",
            m.subscribers_refused.clone(),
        );
        r.register(
            "config_changes",
            "Config changes this instance made (admin API, config file, rollback), by action",
            m.config_changes.clone(),
        );
        r.register(
            "config_reloads",
            "Config file loads (at start, SIGHUP, POST /admin/reload), by result",
            m.config_reloads.clone(),
        );
        r.register(
            "redis_errors",
            "Redis calls that failed (or were not sent while the breaker is open), by kind",
            m.redis_errors.clone(),
        );
        r.register(
            "redis_breaker_open",
            "Redis connections whose circuit breaker is open (decisions follow --on-error)",
            m.redis_breaker_open.clone(),
        );
        r.register(
            "redis_reconnects",
            "Redis connections re-established after a failure",
            m.redis_reconnects.clone(),
        );
        r.register(
            "redis_refused_locally",
            "Checks refused without asking Redis: their quota was refused lately, until it could admit",
            m.redis_refused_locally.clone(),
        );
        r.register(
            "redis_decision_duration_seconds",
            "Round trip of one decision script in Redis",
            m.redis_seconds.clone(),
        );
        r.register(
            "cluster_messages_received",
            "Messages from other instances received over Redis pub/sub",
            m.cluster_messages.clone(),
        );
        r.register(
            "upstream_errors",
            "Reverse-proxy mode: forwarded requests the upstream did not answer, by reason",
            m.upstream_errors.clone(),
        );
        m
    }
}

impl Metrics {
    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn decision(&self, endpoint: &Arc<str>, outcome: Outcome) {
        self.decisions
            .get_or_create(&DecisionLabels {
                endpoint: endpoint.clone(),
                outcome,
            })
            .inc();
    }

    /// A refusal by the limit `limit` of the config `endpoint`.
    pub fn limit_refusal(&self, endpoint: &Arc<str>, limit: &Arc<str>) {
        self.limit_refusals
            .get_or_create(&LimitLabels {
                endpoint: endpoint.clone(),
                limit: limit.clone(),
            })
            .inc();
    }

    /// `units` charged to `limit` of the config `endpoint`.
    pub fn charged(&self, endpoint: &Arc<str>, limit: &Arc<str>, units: u64) {
        self.units_charged
            .get_or_create(&LimitLabels {
                endpoint: endpoint.clone(),
                limit: limit.clone(),
            })
            .inc_by(units);
    }

    /// A response without a usable cost header for `limit` of `endpoint`.
    pub fn cost_header_missing(&self, endpoint: &Arc<str>, limit: &Arc<str>) {
        self.cost_header_missing
            .get_or_create(&LimitLabels {
                endpoint: endpoint.clone(),
                limit: limit.clone(),
            })
            .inc();
    }

    pub fn decision_error(&self, reason: ErrorReason) {
        self.decision_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn db_error(&self, operation: DbOperation) {
        self.db_errors
            .get_or_create(&DbOperationLabels { operation })
            .inc();
    }

    pub fn restored(&self, source: RestoreSource) {
        self.restores.get_or_create(&RestoreLabels { source }).inc();
    }

    pub fn config_reloaded(&self, result: ReloadResult) {
        self.config_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
    }

    pub fn config_changed(&self, action: ConfigAction) {
        self.config_changes
            .get_or_create(&ActionLabels { action })
            .inc();
    }

    pub fn redis_error(&self, kind: RedisFailure) {
        self.redis_errors
            .get_or_create(&RedisFailureLabels { kind })
            .inc();
    }

    pub fn upstream_error(&self, reason: UpstreamFailure) {
        self.upstream_errors
            .get_or_create(&UpstreamFailureLabels { reason })
            .inc();
    }

    pub fn subscribers(&self, transport: Transport) -> Gauge {
        self.subscribers
            .get_or_create_owned(&TransportLabels { transport })
    }

    pub fn observe(histogram: &Histogram, d: Duration) {
        histogram.observe(d.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_with_labels_and_prefix() {
        let m = Metrics::default();
        let ep: Arc<str> = Arc::from("/api/*");
        m.decision(&ep, Outcome::allowed);
        m.decision(&ep, Outcome::allowed);
        m.decision(&ep, Outcome::limited);
        m.decision_error(ErrorReason::timeout);
        let text = m.encode();
        assert!(
            text.contains(
                "ratewarden_decisions_total{endpoint=\"/api/*\",outcome=\"allowed\"} 2\n"
            ),
            "{text}"
        );
        assert!(text.contains("outcome=\"limited\"} 1\n"), "{text}");
        assert!(text.contains("ratewarden_decision_errors_total{reason=\"timeout\"} 1\n"));
        assert!(text.ends_with("# EOF\n"));
    }
}
