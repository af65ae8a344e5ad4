//! The live feeds: `WS /ws/global`, `WS /ws/{client_id}`, `GET /events/global` and
//! `GET /events/{client_id}` (Server-Sent Events). Both carry the same JSON messages;
//! access follows the admin rule (see `middleware::admin_access`).

use super::AppState;
use super::client_id::validate_client_id;
use crate::actors::broadcaster::{FeedMessage, Subscribe, Subscription, Topic};
use crate::actors::ws_session::WsSession;
use crate::error::ApiError;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::{StreamExt, stream};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// SSE keep-alive comment interval, so proxies do not close an idle stream.
pub const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `global`, or a valid client id.
fn topic(req: &HttpRequest) -> Result<Topic, ApiError> {
    match req.match_info().query("client_id") {
        "" | "global" => Ok(Topic::Global),
        id => {
            validate_client_id(id)?;
            Ok(Topic::Client(Arc::from(id)))
        }
    }
}

async fn subscribe(state: &AppState, topic: Topic) -> Result<Subscription, ApiError> {
    state
        .broadcaster
        .send(Subscribe { topic })
        .await
        .map_err(|e| ApiError::Unavailable(format!("The live feed is not available ({e}).")))
}

pub async fn websocket(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, actix_web::Error> {
    let subscription = subscribe(&state, topic(&req)?).await?;
    WsSession::new(state.broadcaster.clone(), subscription).start(&req, payload)
}

/// One SSE frame: `event: <type>` and `data: <json>` (the JSON has no newlines).
fn frame(msg: FeedMessage) -> Bytes {
    Bytes::from(format!("event: {}\ndata: {}\n\n", msg.kind, msg.json))
}

pub async fn events(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let subscription = subscribe(&state, topic(&req)?).await?;
    let messages = stream::unfold(subscription.receiver, |mut rx| async move {
        rx.recv().await.map(|m| (frame(m), rx))
    });
    let start = actix_web::rt::time::Instant::now() + SSE_KEEP_ALIVE;
    let keep_alive = stream::unfold(
        actix_web::rt::time::interval_at(start, SSE_KEEP_ALIVE),
        |mut every| async move {
            every.tick().await;
            Some((Bytes::from_static(b": keep-alive\n\n"), every))
        },
    );
    // A first comment sends the headers at once, so the client knows it is subscribed.
    let body = stream::once(async { Bytes::from_static(b": subscribed\n\n") })
        .chain(stream::select(messages, keep_alive))
        .map(Ok::<_, Infallible>);
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}
