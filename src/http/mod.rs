//! The HTTP surface: the route table (shared by the binary and the tests), the
//! rate-limit and admin-access middleware, and the handlers.

pub mod admin;
pub mod client_id;
pub(crate) mod connection;
pub(crate) mod dashboard;
pub(crate) mod decision;
pub mod demo;
pub(crate) mod middleware;
pub(crate) mod openapi;
pub(crate) mod ops;
pub(crate) mod proxy;
pub(crate) mod realtime;
mod upstream;
pub(crate) mod usage;

use crate::actors::broadcaster::{Broadcaster, FeedInterest};
use crate::actors::db::{Db, DbStatus};
use crate::actors::registry::Registries;
use crate::clock::SharedClock;
use crate::decide::Decider;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::policy::Policies;
use crate::report::Reporter;
use actix::Addr;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use client_id::Identity;
use futures_util::StreamExt;
use std::sync::Arc;

/// Largest request body accepted anywhere (64 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler and the middleware share.
pub struct AppState {
    pub policies: Arc<Policies>,
    pub registries: Registries,
    pub db: Addr<Db>,
    pub clock: SharedClock,
    pub reporter: Reporter,
    pub broadcaster: Addr<Broadcaster>,
    /// Who watches the feeds, so the request path is only copied when shown.
    pub interest: Arc<FeedInterest>,
    pub templates: tera::Tera,
    pub identity: Identity,
    pub admin_token: Option<String>,
    /// Host names answered without a token besides loopback (`--allowed-hosts`).
    pub allowed_hosts: crate::access::AllowedHosts,
    /// Accepted by the decision API besides the admin token.
    pub decision_token: Option<String>,
    pub forward_auth: decision::ForwardAuth,
    pub metrics: Arc<Metrics>,
    pub db_status: Arc<DbStatus>,
    /// The decision core every limited surface asks.
    pub decider: Arc<Decider>,
    pub feeds: realtime::FeedLimits,
    /// The one way configs change.
    pub configs: Arc<crate::config::writer::ConfigWriter>,
    /// Set when a stop begins: `/readyz` turns 503 while requests are still served.
    pub draining: Arc<ops::Draining>,
    /// Distributed mode: configs and feeds shared with the other instances.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl AppState {
    /// The tokens every decision surface (`/v1/*` and the gRPC service) accepts: the
    /// decision token and the admin token.
    pub fn decision_tokens(&self) -> [&Option<String>; 2] {
        [&self.decision_token, &self.admin_token]
    }

    /// The policy of an HTTP request to `path` (a protected route, the reverse proxy,
    /// forward-auth's original request) and the values it is counted under, by the
    /// keys of the config and its limits.
    pub fn resolve_request(
        &self,
        path: &str,
        headers: &actix_web::http::header::HeaderMap,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<(crate::policy::KeyValues, Arc<crate::policy::Policy>), ApiError> {
        self.policies
            .current()
            .resolve_keyed(path, |key| self.identity.key_value(key, headers, peer))
    }
}

/// The route table, shared by the binary and the tests: everything sits in one root
/// scope behind the request log and the rate-limit middleware (which lets the exempt
/// prefixes through), and `/admin`, `/metrics` and the feeds behind the admin-access
/// middleware. With an `upstream` (reverse-proxy mode), every other path is forwarded
/// to it, through this worker's own connections, instead of the demo routes being
/// served. Called once per worker.
pub fn routes(upstream: Option<proxy::Upstream>) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg| {
        let root = web::scope("")
            .wrap(actix_web::middleware::from_fn(middleware::rate_limit))
            .service(
                web::scope("/admin")
                    .wrap(actix_web::middleware::from_fn(middleware::admin_access))
                    .service(
                        resource("/configs")
                            .get(admin::list_configs)
                            .post(admin::create_config),
                    )
                    .service(
                        resource("/configs/{endpoint:.*}")
                            .get(admin::get_config)
                            .put(admin::update_config)
                            .delete(admin::delete_config)
                            .post(admin::rollback),
                    )
                    .service(resource("/clients/{client_id}/state").delete(admin::reset_client))
                    .service(resource("/stats").get(admin::global_stats))
                    .service(resource("/top").get(admin::top))
                    .service(resource("/reload").post(admin::reload))
                    .service(resource("/traffic").get(admin::traffic))
                    .service(resource("/stats/{client_id}").get(admin::client_stats))
                    .default_service(web::to(not_found)),
            )
            .service(
                web::scope("/v1")
                    .wrap(actix_web::middleware::from_fn(middleware::decision_access))
                    .service(resource("/check").post(decision::check))
                    .service(resource("/release").post(decision::release))
                    .service(resource("/report").post(decision::report))
                    .service(web::resource("/forward-auth").to(decision::forward_auth))
                    .service(resource("/envoy/json").post(decision::envoy_json))
                    .default_service(web::to(not_found)),
            )
            .service(
                web::scope("/ws")
                    .wrap(actix_web::middleware::from_fn(middleware::admin_access))
                    // Registered before `{client_id}`, so it is never taken for a client.
                    .service(resource("/global").get(realtime::websocket))
                    .service(resource("/{client_id}").get(realtime::websocket)),
            )
            .service(
                web::scope("/events")
                    .wrap(actix_web::middleware::from_fn(middleware::admin_access))
                    .service(resource("/global").get(realtime::events))
                    .service(resource("/{client_id}").get(realtime::events)),
            )
            .service(resource("/dashboard").get(dashboard::page))
            .service(resource("/openapi.json").get(openapi::openapi_json))
            // In a scope of its own, so that no other path is matched against its
            // pattern.
            .service(
                web::scope("/static")
                    .service(resource("/{file:.*}").get(dashboard::asset))
                    .default_service(web::to(not_found)),
            )
            .service(resource("/health").get(ops::health))
            .service(resource("/livez").get(ops::livez))
            .service(resource("/readyz").get(ops::readyz))
            .service(
                web::scope("/metrics")
                    .wrap(actix_web::middleware::from_fn(middleware::admin_access))
                    .service(resource("").get(ops::metrics)),
            );
        let root = match &upstream {
            Some(u) => root
                .app_data(proxy::Forwarder::new(u.clone()))
                .default_service(web::to(proxy::forward)),
            None => root
                .service(resource("/").get(demo::index))
                .service(resource("/api/data").get(demo::data))
                .service(resource("/api/submit").post(demo::submit))
                .default_service(web::to(not_found)),
        };
        cfg.service(root.wrap(actix_web::middleware::from_fn(middleware::log_request)));
    }
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(nothing_served(&req))
}

/// The 404 of a path this server does not serve.
fn nothing_served(req: &HttpRequest) -> ApiError {
    ApiError::NotFound(format!("Nothing is served at {}.", req.path()))
}

/// `Content-Length` when it is given once and is a number.
fn content_length(headers: &header::HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH);
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()?.trim().parse().ok()
}

/// A resource whose other methods get a JSON 405.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}

/// Reads a JSON body of at most [`MAX_BODY_BYTES`]: 415 for another content type, 413
/// for a larger body, 400 for malformed JSON (including a key repeated in one object).
pub async fn read_json(
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<serde_json::Value, ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            let v = v.trim();
            v.eq_ignore_ascii_case("application/json") || v.to_ascii_lowercase().ends_with("+json")
        });
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let too_large = ApiError::PayloadTooLarge {
        limit: MAX_BODY_BYTES as u64,
    };
    let declared = content_length(req.headers());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large);
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(
                "invalid_body",
                format!("The request body could not be read: {e}"),
            )
        })?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    let invalid =
        |e| ApiError::bad_request("invalid_json", format!("The body is not valid JSON: {e}."));
    serde_json::from_slice::<Checked>(&body)
        .map(|Checked(v)| v)
        .map_err(invalid)
}

/// A JSON document read in one pass that fails on an object with the same key twice,
/// at any depth: otherwise the last one would silently win (`{"window_seconds": 1,
/// "window_seconds": 3600}` means something different to every parser).
struct Checked(serde_json::Value);

impl<'de> serde::Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> serde::de::Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Checked, E> {
        Ok(Checked(v.into()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Checked, E> {
        Ok(Checked(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Checked, E> {
        Ok(Checked(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Checked, E> {
        Ok(Checked(v.into()))
    }
    fn visit_str<E>(self, v: &str) -> Result<Checked, E> {
        Ok(Checked(v.into()))
    }
    fn visit_string<E>(self, v: String) -> Result<Checked, E> {
        Ok(Checked(v.into()))
    }
    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked(serde_json::Value::Null))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        let mut all = Vec::new();
        while let Some(Checked(v)) = seq.next_element()? {
            all.push(v);
        }
        Ok(Checked(serde_json::Value::Array(all)))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            let Checked(v) = map.next_value()?;
            object.insert(key, v);
        }
        Ok(Checked(serde_json::Value::Object(object)))
    }
}

/// A JSON response with the given status.
pub fn json(status: actix_web::http::StatusCode, body: &impl serde::Serialize) -> HttpResponse {
    HttpResponse::build(status).json(body)
}
