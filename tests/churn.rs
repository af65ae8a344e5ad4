//! 10,000 WebSocket connect/disconnect cycles (and SSE ones) against the real binary
//! leave no session actor, subscriber slot or file descriptor behind.

mod common;

use common::binary::Binary;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CYCLES: usize = 10_000;

fn open_fds(server: &Binary) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.child.id()))
        .unwrap()
        .count()
}

/// One request on its own connection, read to the end (`Connection: close`).
async fn raw(addr: &str, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Open feed subscribers by transport, from `/metrics`.
async fn subscribers(addr: &str) -> f64 {
    let text = raw(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    text.lines()
        .filter(|l| l.starts_with("ratewarden_feed_subscribers{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Opens a WebSocket (or an SSE stream) and closes it at once, abruptly or not.
async fn cycle(addr: &str, i: usize) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = if i % 4 == 3 {
        "GET /events/global HTTP/1.1\r\nHost: localhost\r\n\r\n".to_owned()
    } else {
        format!(
            "GET /ws/c{} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            i % 50
        )
    };
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).await.unwrap();
    assert!(
        buf.starts_with(b"HTTP/1.1 101") || buf.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    if i.is_multiple_of(2) && i % 4 != 3 {
        // A clean close: a masked close frame with no payload.
        s.write_all(&[0x88, 0x80, 1, 2, 3, 4]).await.unwrap();
    }
    // Otherwise the connection just drops.
}

#[actix_rt::test]
async fn ten_thousand_feed_connections_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(
        &dir.path().join("c.db"),
        &["--max-subscribers-per-ip", "100000", "--log-level", "warn"],
    );
    let addr = server.url.trim_start_matches("http://").to_owned();
    assert_eq!(subscribers(&addr).await, 0.0);
    let before = open_fds(&server);

    for i in 0..CYCLES {
        cycle(&addr, i).await;
    }

    // Sessions end as the server notices each closed connection.
    let deadline = Instant::now() + Duration::from_secs(30);
    while subscribers(&addr).await > 0.0 {
        assert!(Instant::now() < deadline, "feed sessions leaked");
    }
    let after = open_fds(&server);
    assert!(
        after <= before + 2,
        "file descriptors: {before} before, {after} after"
    );
    assert_eq!(server.get("/health").await.status, 200);
}
