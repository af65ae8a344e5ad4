//! The live feeds over a real server: first messages, topic isolation, `/ws/global`
//! routing, SSE framing, config changes, and a subscriber that never reads.

mod common;

use common::TestServer;
use common::ws::{WAIT, connect, next, next_of};
use futures_util::future::join_all;
use serde_json::{Value, json};
use std::time::Instant;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[actix_rt::test]
async fn a_client_socket_starts_with_its_stats_and_sees_only_its_own_events() {
    let s = TestServer::start().await;
    s.statuses("alice", "/api/data", 2).await;
    let mut alice = connect(&s.url, "/ws/alice").await;
    let first = next(&mut alice).await;
    assert_eq!(first["type"], "client_stats");
    assert_eq!(first["client_id"], "alice");
    assert_eq!(first["data"]["status"]["total_requests"], 2);
    assert!(first["timestamp"].is_string());

    s.statuses("bob", "/api/data", 3).await;
    s.statuses("alice", "/api/data", 1).await;
    let event = next_of(&mut alice, "request_processed").await;
    assert_eq!(event["client_id"], "alice");
    assert_eq!(event["endpoint"], "*");
    assert_eq!(
        (&event["path"], &event["via"]),
        (&json!("/api/data"), &json!("route"))
    );
    assert_eq!(event["remaining"], 97);
    assert_eq!(event["limit"], 100);
    // A refreshed client_stats follows, and nothing about bob ever arrives.
    let stats = next_of(&mut alice, "client_stats").await;
    assert_eq!(stats["data"]["status"]["total_requests"], 3);
    s.statuses("alice", "/api/data", 1).await;
    for _ in 0..2 {
        let m = next(&mut alice).await;
        assert_eq!(m["client_id"], "alice", "{m}");
    }
}

#[actix_rt::test]
async fn the_global_socket_is_not_taken_for_a_client_and_sees_everything() {
    let s = TestServer::start().await;
    s.config("/tight", 1, 60, "fixed_window").await;
    let mut global = connect(&s.url, "/ws/global").await;
    s.statuses("carol", "/tight", 2).await;
    s.statuses("dave", "/api/data", 1).await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let m = next(&mut global).await;
        assert_ne!(
            m["type"], "client_stats",
            "/ws/global must not be a client feed"
        );
        if m["type"] == "request_processed" || m["type"] == "rate_limit_exceeded" {
            seen.push(m);
        }
    }
    assert_eq!(seen[0]["client_id"], "carol");
    assert_eq!(seen[1]["type"], "rate_limit_exceeded");
    assert_eq!(seen[1]["endpoint"], "/tight");
    assert_eq!(seen[1]["limit"], 1);
    assert!(seen[1]["retry_after"].as_u64().unwrap() >= 1);
    assert_eq!(seen[2]["client_id"], "dave");

    let stats = next_of(&mut global, "global_stats").await;
    assert_eq!(stats["data"]["total_requests_24h"], 3);
    assert_eq!(stats["data"]["blocked_requests_24h"], 1);

    s.config("/new", 5, 10, "token_bucket").await;
    let change = next_of(&mut global, "config_updated").await;
    assert_eq!(change["action"], "created");
    assert_eq!(change["config"]["endpoint"], "/new");
}

#[actix_rt::test]
async fn sse_streams_frame_each_message_as_an_event() {
    let s = TestServer::start().await;
    let addr = s.url.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let request = format!("GET /events/erin HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        reader.read_line(&mut head).await.unwrap();
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );

    s.statuses("erin", "/api/data", 1).await;
    let body = read_until(&mut reader, "event: request_processed").await;
    // Chunked framing aside, each message is `event: <type>` then `data: <json>`.
    let frames: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("event:") || l.starts_with("data:"))
        .collect();
    assert_eq!(frames[0], "event: client_stats");
    let stats: Value = serde_json::from_str(frames[1].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(stats["type"], "client_stats");
    assert_eq!(stats["client_id"], "erin");
    assert_eq!(frames[2], "event: request_processed");
}

/// Reads the stream until a line equal to `needle` and the data line after it have
/// arrived; returns everything read.
async fn read_until(reader: &mut (impl AsyncBufRead + Unpin), needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut text = String::new();
    let mut found = false;
    loop {
        let mut line = String::new();
        let read = tokio::time::timeout_at(deadline, reader.read_line(&mut line))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} within the wait; read {} bytes", text.len()))
            .unwrap();
        assert!(read > 0, "stream ended before {needle:?}");
        let done = found && line.starts_with("data:");
        found |= line.trim_end() == needle;
        text.push_str(&line);
        if done {
            return text;
        }
    }
}

/// Against the real binary, so that the server's threads are not this test's.
#[actix_rt::test]
async fn a_subscriber_that_never_reads_does_not_slow_decisions_and_hears_what_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::binary::Binary::start(
        &dir.path().join("f.db"),
        &["--feed-max-events-per-sec", "1000000"],
    );
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut stalled = TcpStream::connect(&addr).await.unwrap();
    let request = format!("GET /events/global HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stalled.write_all(request.as_bytes()).await.unwrap();
    let mut first = [0u8; 12];
    stalled.read_exact(&mut first).await.unwrap(); // the status line has started: subscribed

    let client = awc::Client::new();
    let url = format!("{}/api/data", server.url);
    // Enough events (about 7 MB) to overflow the kernel's socket buffers as well as the
    // subscriber's own.
    let total = 40_000;
    let started = Instant::now();
    for _ in 0..total / 100 {
        let batch = (0..100).map(|_| {
            client
                .get(&url)
                .insert_header(("X-Client-ID", "slow"))
                .send()
        });
        for res in join_all(batch).await {
            let status = res.expect("every decision completes").status();
            assert!(status == 200 || status == 429, "{status}");
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{total} decisions completed in {elapsed:?} ({:.0}/s) while a subscriber stalled",
        total as f64 / elapsed.as_secs_f64()
    );

    // Now it reads: behind what fitted in its buffers comes the count of what it missed.
    let mut reader = BufReader::new(stalled);
    let text = read_until(&mut reader, "event: events_dropped").await;
    let data = text.lines().last().unwrap().trim_start_matches("data: ");
    let dropped: Value = serde_json::from_str(data).unwrap();
    assert!(dropped["count"].as_u64().unwrap() > 0, "{dropped}");
}

#[actix_rt::test]
async fn feeds_follow_the_admin_rule_and_the_dashboard_page_needs_no_token() {
    let s = TestServer::with(|c| c.admin_token = Some("feed-token".into())).await;
    for path in ["/ws/global", "/events/global", "/events/someone"] {
        let r = s.get(path).await;
        assert_eq!(r.status, 401, "{path}");
        assert_eq!(r.body["error"], "unauthorized");
    }
    let mut socket = connect(&s.url, "/ws/global?token=feed-token").await;
    s.statuses("tok", "/api/data", 1).await;
    assert_eq!(
        next_of(&mut socket, "request_processed").await["client_id"],
        "tok"
    );

    // The page and its assets load without a token; the page knows one is required.
    let page = awc::Client::new()
        .get(format!("{}/dashboard", s.url))
        .send()
        .await
        .unwrap()
        .body()
        .await
        .unwrap();
    let html = String::from_utf8(page.to_vec()).unwrap();
    assert!(html.contains(r#"data-token-required="true""#));
    for asset in [
        "/static/dashboard.js",
        "/static/dashboard.css",
        "/static/vendor/uplot/uPlot.iife.min.js",
    ] {
        let res = awc::Client::new()
            .get(format!("{}{asset}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{asset}");
    }
}
