//! A WebSocket peer that stops answering is dropped within 30 s, measured on tokio's
//! paused clock (the test takes no real time).

mod common;

use actix_web::test::TestRequest;
use futures_util::stream;
use ratewarden::actors::broadcaster::{Subscribe, Topic};
use ratewarden::actors::ws_session::WsSession;
use ratewarden::app::build_state;
use ratewarden::clock::ManualClock;
use ratewarden::metrics::Transport;
use ratewarden::settings::Settings;
use std::time::Duration;

/// An unmasked server ping frame with an empty payload.
const PING: [u8; 2] = [0x89, 0x00];

#[actix_rt::test]
async fn a_silent_websocket_peer_is_dropped_within_thirty_seconds() {
    let state = build_state(&Settings::for_tests(), ManualClock::new(common::T0)).unwrap();
    let subscription = state
        .broadcaster
        .send(Subscribe {
            topic: Topic::Client("quiet".into()),
        })
        .await
        .unwrap();
    let req = TestRequest::get()
        .uri("/ws/quiet")
        .insert_header(("upgrade", "websocket"))
        .insert_header(("connection", "upgrade"))
        .insert_header(("sec-websocket-version", "13"))
        .insert_header(("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="))
        .to_http_request();
    // A peer that stays connected and never sends a frame, not even a pong.
    let silent = stream::pending::<Result<actix_web::web::Bytes, actix_web::error::PayloadError>>();
    let ip = "127.0.0.1".parse().unwrap();
    let slot = state.feeds.take(ip, Transport::websocket).unwrap();
    assert_eq!(state.feeds.open_from(ip), 1);
    let res = WsSession::new(state.broadcaster.clone(), subscription, slot)
        .start(&req, silent)
        .unwrap();
    assert_eq!(res.status(), 101);

    tokio::time::pause();
    let start = tokio::time::Instant::now();
    // The body ends when the session stops; the paused clock jumps from timer to timer.
    let sent = actix_web::body::to_bytes(res.into_body()).await.unwrap();
    let silent_for = start.elapsed();
    assert!(
        silent_for <= Duration::from_secs(30),
        "dropped after {silent_for:?}"
    );
    assert!(
        silent_for >= Duration::from_secs(20),
        "dropped too early: {silent_for:?}"
    );
    let pings = sent.windows(2).filter(|w| *w == PING).count();
    assert_eq!(pings, 4, "four unanswered pings before the drop");
    assert_eq!(state.feeds.open_from(ip), 0, "the session freed its slot");
}
