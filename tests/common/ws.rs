//! A WebSocket client for the live feeds: connect, then read JSON messages.

use actix_codec::Framed;
use awc::BoxedSocket;
use awc::ws::{Codec, Frame};
use futures_util::StreamExt;
use serde_json::Value;
use std::time::Duration;

pub type Socket = Framed<BoxedSocket, Codec>;

/// How long a test waits for a message it expects.
pub const WAIT: Duration = Duration::from_secs(10);

/// A WebSocket to `path` on the server at `base` (`http://127.0.0.1:port`).
pub async fn connect(base: &str, path: &str) -> Socket {
    let url = format!("{}{path}", base.replacen("http", "ws", 1));
    let (res, socket) = awc::Client::new()
        .ws(url)
        .connect()
        .await
        .expect("websocket connects");
    assert_eq!(res.status(), 101);
    socket
}

/// The next JSON message (pings and pongs skipped).
pub async fn next(socket: &mut Socket) -> Value {
    loop {
        let frame = actix_rt::time::timeout(WAIT, socket.next())
            .await
            .expect("a message within the wait")
            .expect("the socket is open")
            .expect("a valid frame");
        if let Frame::Text(bytes) = frame {
            return serde_json::from_slice(&bytes).unwrap();
        }
    }
}

/// The next message of the given type.
pub async fn next_of(socket: &mut Socket, kind: &str) -> Value {
    loop {
        let m = next(socket).await;
        if m["type"] == kind {
            return m;
        }
    }
}
