//! The actors: a sharded [`registry`] owns the [`client_limiter`] of each of its clients
//! and hands it the client's checks one at a time; the [`db`] actor owns SQLite and
//! writes behind, in batches; the [`broadcaster`] feeds the live subscribers.
//!
//! ```text
//! middleware ── Check ──▶ Registry shard (actix actor, hash(client) % N, one arbiter each)
//!                            │ owns, in one LRU map: ClientLimiter entities (one per client,
//!                            │ no task or mailbox of their own), evicted LRU / idle
//!                            │ snapshots per flush, taken directly    │ DecisionEvent
//!                            ▼                                       ▼
//!                      Db (SyncArbiter, 1 thread)        event sink (the broadcaster)
//! ```

pub mod broadcaster;
pub(crate) mod client_limiter;
pub(crate) mod db;
pub mod registry;
pub mod ws_session;

use crate::clock::Nanos;
use crate::limiter::Decision;
use actix::{Message, Recipient};
use std::sync::Arc;

/// One decision, as the live feeds will carry it. Every check produces one and hands it
/// to the event sink, if one is plugged in; sending never waits.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct DecisionEvent {
    pub client: Arc<str>,
    pub endpoint: Arc<str>,
    /// Who asked and for what path, when someone was watching as the request arrived.
    pub asked: Option<Asked>,
    /// The binding limit's decision (see `limiter::Decisions::binding`).
    pub decision: Decision,
    /// Under a config of several limits: the name of the binding one (on a refusal, the
    /// limit that refused).
    pub limit: Option<Arc<str>>,
    /// Under a config of several limits: each one's name, remaining and quota, in the
    /// config's order (empty otherwise), so that a view of every limit stays current.
    pub each: Vec<LimitSeen>,
    /// Decided under a config in shadow mode: a refusal was let through.
    pub shadow: bool,
    pub at: Nanos,
    /// The instance that decided, for events heard from other instances over Redis;
    /// `None` for this instance's own.
    pub origin: Option<Arc<str>>,
    /// Units of tokens or bytes charged after the fact: the event is that charge (to
    /// the limits in `each`), not a request.
    pub charged: Option<u64>,
}

/// One limit of a config of several, as a decision left it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LimitSeen {
    pub name: String,
    pub remaining: u64,
    pub limit: u64,
    /// Units used past the limit (see `limiter::Decision::debt`); absent while 0, and
    /// from instances that predate it.
    #[serde(default, skip_serializing_if = "crate::is_zero")]
    pub debt: u64,
}

impl LimitSeen {
    /// Each limit of `policy` as `d` (decided under it) left it, in its order.
    pub fn each(policy: &crate::policy::Policy, d: &crate::limiter::Decisions) -> Vec<Self> {
        (policy.each(d))
            .map(|(l, d)| LimitSeen {
                name: l.name.to_string(),
                remaining: d.remaining,
                limit: d.limit,
                debt: d.debt,
            })
            .collect()
    }
}

/// Where a decision was asked for, as the live feeds tell it: by whom, and for which
/// path (a route's or a proxied request's path, the path a program asked about, or an
/// Envoy descriptor). Made only while a feed would show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    pub via: Via,
    pub path: Arc<str>,
}

/// Who asked for a decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// A request to one of this server's own routes.
    #[default]
    Route,
    /// A request forwarded to the upstream (reverse-proxy mode).
    Proxy,
    /// `POST /v1/check`.
    Check,
    /// `/v1/forward-auth`, from nginx, Caddy or Traefik.
    ForwardAuth,
    /// Envoy's rate-limit service (gRPC or `/v1/envoy/json`).
    Envoy,
    /// An asker this instance does not know, named by a newer instance of a cluster:
    /// its events still arrive (with their counts) instead of failing to read.
    #[serde(other)]
    Other,
}

/// Where limiters send their decision events: the broadcaster, but only while someone
/// watches that client or the global feed.
#[derive(Clone)]
pub struct EventSink {
    pub recipient: Recipient<DecisionEvent>,
    pub interest: Arc<broadcaster::FeedInterest>,
}

impl EventSink {
    /// Sends the event built by `event` if anyone will receive it; never waits.
    pub fn offer(&self, client: &str, event: impl FnOnce() -> DecisionEvent) {
        if self.interest.wants(client) {
            self.recipient.do_send(event());
        }
    }
}

/// Names the calling thread (as `top -H`, `ps -L` and `/proc/<pid>/task/*/comm` show
/// it, at most 15 bytes), so an operator and `scripts/bench` can tell the DB's and the
/// shards' threads from the HTTP workers. Only Linux has the file; elsewhere, or if it
/// fails, the thread keeps its name.
pub fn name_thread(name: &str) {
    let _ = std::fs::write("/proc/thread-self/comm", name);
}
