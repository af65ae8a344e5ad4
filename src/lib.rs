//! ratewarden: a rate-limiting HTTP server.
//!
//! A request passes the rate-limit middleware (`http::middleware`), which resolves the
//! config for its path ([`policy`]), names the client ([`http::client_id`]) and asks the
//! decision core ([`decide`]), which sends one `Check` to the client's registry shard
//! ([`actors::registry`]) within the decision timeout. The shard hands the check to the
//! client's own limiter ([`actors::client_limiter`]), which runs the algorithm
//! ([`limiter`], pure code over `now`) and answers with a `Decision`. Every other
//! surface (`/v1/check`, forward-auth, Envoy's service in [`envoy`]) is an adapter over
//! the same core.
//! State reaches SQLite ([`store`]) write-behind, in batches, through the DB actor
//! ([`actors::db`]); nothing on the request path waits for it.
//!
//! In distributed mode (`--redis-url`) the limiters decide through Redis instead
//! ([`store::redis`]: one Lua script per algorithm), and [`cluster`] shares configs and
//! live feeds between the instances.
//!
//! Envoy's rate-limit service ([`envoy`]: gRPC with `--grpc-bind`, and protojson on
//! `/v1/envoy/json`) matches request descriptors against descriptor rules and decides
//! through the same core; it knows nothing of the HTTP layer.
//!
//! [`app`] is the composition root, [`settings`] holds every flag, [`metrics`] counts
//! what happens for `/metrics`, and [`clock`] is the only reader of the system time.

pub(crate) mod access;
pub mod actors;
pub mod app;
pub mod clock;
pub(crate) mod cluster;
pub mod config;
pub mod decide;
pub mod envoy;
pub(crate) mod error;
pub mod http;
pub mod limiter;
pub mod metrics;
pub mod policy;
pub(crate) mod report;
pub mod settings;
pub mod snapshot;
pub(crate) mod stats;
pub mod store;
pub(crate) mod top;

/// Whether a count is 0: what serde leaves out of a body (`skip_serializing_if`).
pub(crate) fn is_zero(n: &u64) -> bool {
    *n == 0
}
