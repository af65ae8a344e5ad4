//! A WebSocket session: an actor per connection that forwards its subscription's feed
//! messages as text frames and keeps the peer honest with ping/pong heartbeats.
//! This is the only module that uses `actix-web-actors` (deprecated upstream in favour of
//! `actix-ws`), so moving off it touches one file.

use super::broadcaster::{Broadcaster, FeedMessage, Subscription, Unsubscribe};
use actix::prelude::*;
use actix_web::{HttpRequest, HttpResponse, web};
use actix_web_actors::ws;
use futures_util::stream;
use std::any::Any;
use std::time::Duration;

pub use actix_web_actors::ws::HandshakeError;

/// How often the server pings.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Pings left unanswered before the peer counts as dead: it is dropped within
/// `HEARTBEAT_INTERVAL * (MAX_MISSED + 1)` = 25 s of its last sign of life, inside the
/// 30 s the contract allows.
pub const MAX_MISSED: u32 = 4;

pub struct WsSession {
    broadcaster: Addr<Broadcaster>,
    subscription: Option<Subscription>,
    id: u64,
    /// Heartbeats since the peer last said anything.
    missed: u32,
    /// Whatever the caller keeps for as long as the session lives (the HTTP layer's
    /// subscriber slot in the per-IP cap), dropped when it ends.
    _held: Box<dyn Any>,
}

impl WsSession {
    pub fn new(broadcaster: Addr<Broadcaster>, subscription: Subscription, held: impl Any) -> Self {
        WsSession {
            broadcaster,
            id: subscription.id,
            subscription: Some(subscription),
            missed: 0,
            _held: Box::new(held),
        }
    }

    /// Checks that `req` is a valid WebSocket handshake, before anything is subscribed.
    pub fn check_handshake(req: &HttpRequest) -> Result<(), HandshakeError> {
        ws::handshake(req).map(|_| ())
    }

    /// Upgrades the request and runs this session over the peer's frames in `payload`.
    pub fn start<S>(self, req: &HttpRequest, payload: S) -> Result<HttpResponse, actix_web::Error>
    where
        S: futures_util::Stream<Item = Result<web::Bytes, actix_web::error::PayloadError>>
            + 'static,
    {
        // The dashboard offers "ratewarden" (and its token as "bearer.<hex>"); a browser
        // only accepts the upgrade if one offered protocol is selected.
        ws::WsResponseBuilder::new(self, req, payload)
            .protocols(&["ratewarden"])
            .start()
    }
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(sub) = self.subscription.take() {
            let messages = stream::unfold(sub.receiver, |mut rx| async move {
                rx.recv().await.map(|m| (m, rx))
            });
            ctx.add_stream(messages);
        }
        ctx.run_interval(HEARTBEAT_INTERVAL, |act, ctx| {
            if act.missed >= MAX_MISSED {
                log::debug!("websocket peer missed {} heartbeats; dropped", act.missed);
                ctx.stop();
                return;
            }
            act.missed += 1;
            ctx.ping(b"");
        });
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.broadcaster.do_send(Unsubscribe { id: self.id });
    }
}

/// Feed messages from the broadcaster.
impl StreamHandler<FeedMessage> for WsSession {
    fn handle(&mut self, msg: FeedMessage, ctx: &mut Self::Context) {
        ctx.text(&*msg.json);
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The broadcaster went away: nothing more will come.
        ctx.close(Some(ws::CloseCode::Away.into()));
        ctx.stop();
    }
}

/// Frames from the peer. Any frame proves it is alive; text and binary are ignored (the
/// feeds are one-way).
impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.missed = 0;
        match msg {
            Ok(ws::Message::Ping(p)) => ctx.pong(&p),
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Ok(_) => {}
            Err(e) => {
                log::debug!("websocket protocol error: {e}");
                ctx.stop();
            }
        }
    }
}
