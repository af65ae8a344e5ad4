//! The live feeds: `WS /ws/global`, `WS /ws/{client_id}`, `GET /events/global` and
//! `GET /events/{client_id}` (Server-Sent Events). Both carry the same JSON messages;
//! access follows the admin rule (see `middleware::admin_access`), WebSocket upgrades
//! must come from an allowed `Origin`, and one IP address may hold at most
//! `--max-subscribers-per-ip` feeds at once.

use super::AppState;
use super::client_id::validate_key_value;
use super::connection::Connection;
use crate::actors::broadcaster::{FeedMessage, Subscribe, Subscription, Topic};
use crate::actors::ws_session::WsSession;
use crate::error::ApiError;
use crate::metrics::{Metrics, Transport};
use actix_web::body::BoxBody;
use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::future::{Either, select};
use futures_util::{StreamExt, stream};
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// SSE keep-alive comment interval, so proxies do not close an idle stream.
pub const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `global`, or a valid client id.
fn topic(req: &HttpRequest) -> Result<Topic, ApiError> {
    match req.match_info().query("client_id") {
        "" | "global" => Ok(Topic::Global),
        id => {
            validate_key_value(id)?;
            Ok(Topic::Client(Arc::from(id)))
        }
    }
}

/// Who may open feeds: at most `max_per_ip` at once from one IP address, and WebSocket
/// upgrades only from the server's own origin or an allowed one.
pub struct FeedLimits {
    pub max_per_ip: usize,
    /// Origins besides the server's own ("*" allows any).
    pub allowed_origins: Vec<String>,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    metrics: Arc<Metrics>,
}

impl FeedLimits {
    pub fn new(max_per_ip: usize, allowed_origins: Vec<String>, metrics: Arc<Metrics>) -> Self {
        Self {
            max_per_ip,
            allowed_origins,
            open: Arc::default(),
            metrics,
        }
    }

    /// Takes a subscriber slot for `ip`, released when the returned guard drops.
    pub fn take(&self, ip: IpAddr, transport: Transport) -> Result<Slot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= self.max_per_ip {
            self.metrics.subscribers_refused.inc();
            log::warn!("feed subscription from {ip} refused: {n} open already");
            return Err(ApiError::TooManySubscribers(self.max_per_ip));
        }
        *n += 1;
        let gauge = self.metrics.subscribers(transport);
        gauge.inc();
        Ok(Slot {
            ip,
            open: self.open.clone(),
            gauge,
        })
    }

    /// Feeds open from `ip` now.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&ip).copied().unwrap_or(0)
    }

    /// A browser sends `Origin` with every WebSocket upgrade and every request that
    /// changes something, and `Sec-Fetch-Site` with every request; a page on another
    /// site must not ride on the admin's cookies or loopback access. Clients that are not
    /// browsers send neither and are judged by the admin rule alone.
    ///
    /// For a change (`write`), more holds: a browser's own word that the page is this
    /// server's (`Sec-Fetch-Site: same-origin`, which no page can forge) is enough, even
    /// behind a proxy that hides the public host; and `*` in `--allowed-origins` opens
    /// feeds, never changes. (A page whose own host name was rebound to 127.0.0.1 is
    /// same-origin to the browser: the access rule's `Host` check refuses it before this.)
    pub fn check_origin(
        &self,
        headers: &actix_web::http::header::HeaderMap,
        conn: &actix_web::dev::ConnectionInfo,
        write: bool,
    ) -> Result<(), ApiError> {
        let fetch_site = headers
            .get("sec-fetch-site")
            .map(|v| v.as_bytes().to_ascii_lowercase());
        let origin = headers.get(header::ORIGIN);
        if origin.is_none() && fetch_site.is_none() {
            return Ok(());
        }
        if write && fetch_site.as_deref() == Some(b"same-origin") {
            return Ok(());
        }
        let Some(origin) = origin else {
            return match fetch_site.as_deref() {
                Some(b"cross-site" | b"same-site") => Err(ApiError::ForbiddenOrigin),
                _ => Ok(()),
            };
        };
        let origin = origin.to_str().unwrap_or("");
        let own = format!("{}://{}", conn.scheme(), conn.host());
        let allowed = origin.eq_ignore_ascii_case(&own)
            || self.allowed_origins.iter().any(|o| {
                (o == "*" && !write) || o.trim_end_matches('/').eq_ignore_ascii_case(origin)
            });
        if allowed {
            return Ok(());
        }
        log::warn!("request from origin {origin:?} refused (own origin {own})");
        Err(ApiError::ForbiddenOrigin)
    }
}

/// One open subscription of one IP address; dropping it frees the slot.
pub struct Slot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    gauge: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The subscriber's address as the admin rule sees it (trusted proxies honoured).
fn slot(state: &AppState, req: &HttpRequest, transport: Transport) -> Result<Slot, ApiError> {
    let ip = state
        .identity
        .client_ip(req.headers(), req.peer_addr())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    state.feeds.take(ip, transport)
}

async fn subscribe(state: &AppState, topic: Topic) -> Result<Subscription, ApiError> {
    state
        .broadcaster
        .send(Subscribe { topic })
        .await
        .map_err(|e| ApiError::Unavailable(format!("The live feed is not available ({e}).")))
}

/// `GET /ws/global` and `/ws/{client_id}`: a WebSocket feed (JSON messages with `type`
/// and `timestamp`).
#[utoipa::path(
    get,
    path = "/ws/{topic}",
    tag = "feeds",
    params(("topic" = String, Path, description = "`global`, or a client id")),
    responses(
        (status = 101, description = "Switching to the WebSocket feed"),
        (status = 400, description = "Not a WebSocket upgrade, or a bad client id", body = crate::error::ErrorBody),
        (status = 403, description = "A page of another origin", body = crate::error::ErrorBody),
        (status = 429, description = "This address holds the most feeds allowed", body = crate::error::ErrorBody),
    )
)]
pub async fn websocket(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    state
        .feeds
        .check_origin(req.headers(), &req.connection_info(), false)?;
    let topic = topic(&req)?;
    // A request that is not a valid upgrade must not leave a subscriber behind.
    WsSession::check_handshake(&req).map_err(|e| {
        ApiError::bad_request(
            "invalid_websocket_handshake",
            format!("This is a WebSocket endpoint; the upgrade request is invalid ({e})."),
        )
    })?;
    let slot = slot(&state, &req, Transport::websocket)?;
    let subscription = subscribe(&state, topic).await?;
    let res = WsSession::new(state.broadcaster.clone(), subscription, slot).start(&req, payload)?;
    // Once the session has sent its Close frame, the connection closes at once.
    Ok(match req.conn_data::<Connection>() {
        Some(conn) => res.map_body(|_, body| BoxBody::new(conn.close_after(body))),
        None => res,
    })
}

/// One SSE frame: `event: <type>` and `data: <json>` (the JSON has no newlines).
fn frame(msg: FeedMessage) -> Bytes {
    Bytes::from(format!("event: {}\ndata: {}\n\n", msg.kind, msg.json))
}

/// `GET /events/global` and `/events/{client_id}`: the same feed as Server-Sent Events.
#[utoipa::path(
    get,
    path = "/events/{topic}",
    tag = "feeds",
    params(("topic" = String, Path, description = "`global`, or a client id")),
    responses(
        (status = 200, description = "`event: <type>` and `data: <json>` frames, a keep-alive comment every 15 s", body = String, content_type = "text/event-stream"),
        (status = 400, description = "A bad client id", body = crate::error::ErrorBody),
        (status = 429, description = "This address holds the most feeds allowed", body = crate::error::ErrorBody),
    )
)]
pub async fn events(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let topic = topic(&req)?;
    let slot = slot(&state, &req, Transport::sse)?;
    let subscription = subscribe(&state, topic).await?;
    let start = actix_web::rt::time::Instant::now() + SSE_KEEP_ALIVE;
    let keep_alive = actix_web::rt::time::interval_at(start, SSE_KEEP_ALIVE);
    // The stream ends when the broadcaster ends the subscription (at shutdown). The slot
    // lives as long as the stream: freed when the client goes away, which the server
    // notices at once because it does not allow half-closed connections (see `app`).
    let feed = stream::unfold(
        (subscription.receiver, keep_alive, slot),
        |(mut rx, mut keep_alive, slot)| async move {
            let next = match select(pin!(rx.recv()), pin!(keep_alive.tick())).await {
                Either::Left((Some(msg), _)) => frame(msg),
                Either::Left((None, _)) => return None,
                Either::Right(_) => Bytes::from_static(b": keep-alive\n\n"),
            };
            Some((next, (rx, keep_alive, slot)))
        },
    );
    // A first comment sends the headers at once, so the client knows it is subscribed.
    let body = stream::once(async { Bytes::from_static(b": subscribed\n\n") })
        .chain(feed)
        .map(Ok::<_, Infallible>);
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}
