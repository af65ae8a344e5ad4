//! Who may reach what: `/metrics` follows the admin rule, the admin API sends no CORS
//! grants, WebSocket upgrades are checked against `Origin`, one address may hold only so
//! many feeds, the admin token never reaches the log, and slow or oversized requests are
//! cut off. Identification against spoofing is covered in `http_api.rs` and
//! `src/http/client_id.rs`.

mod common;

use common::TestServer;
use common::binary::Binary;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

#[actix_rt::test]
async fn metrics_follow_the_admin_rule_and_count_decisions() {
    let s = TestServer::with(|c| c.admin_token = Some("m-token".into())).await;
    let r = s.get("/metrics").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));

    let body = r#"{"endpoint": "/api/*", "requests_per_window": 2, "window_seconds": 60}"#;
    let auth = ("Authorization", "Bearer m-token");
    let created = s.send("POST", "/admin/configs", &[auth], Some(body)).await;
    assert_eq!(created.status, 201);
    assert_eq!(s.statuses("m", "/api/data", 3).await, [200, 200, 429]);
    let mut res = awc::Client::new()
        .get(format!("{}/metrics", s.url))
        .bearer_auth("m-token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let kind = res.headers().get("content-type").unwrap().to_str().unwrap();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let text = String::from_utf8(res.body().await.unwrap().to_vec()).unwrap();
    for line in [
        "ratewarden_decisions_total{endpoint=\"/api/*\",outcome=\"allowed\"} 2",
        "ratewarden_decisions_total{endpoint=\"/api/*\",outcome=\"limited\"} 1",
        "ratewarden_live_limiters 1",
        "ratewarden_config_changes_total{action=\"create\"} 1",
        "ratewarden_decision_duration_seconds_count 3",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    // Scrapes are never limited.
    for _ in 0..5 {
        s.send("GET", "/metrics", &[("X-Client-ID", "m")], None)
            .await;
    }
    assert_eq!(s.statuses("other", "/api/data", 1).await, [200]);
}

#[actix_rt::test]
async fn the_admin_api_grants_no_cross_origin_access() {
    let s = TestServer::start().await;
    let origin = ("Origin", "https://evil.example");
    let preflight = s
        .send(
            "OPTIONS",
            "/admin/configs",
            &[origin, ("Access-Control-Request-Method", "POST")],
            None,
        )
        .await;
    assert!(preflight.status.is_client_error(), "{}", preflight.status);
    let get = s.send("GET", "/admin/configs", &[origin], None).await;
    for r in [&preflight, &get] {
        assert!(
            !r.headers
                .keys()
                .any(|k| k.as_str().starts_with("access-control-")),
            "{:?}",
            r.headers
        );
    }
}

#[actix_rt::test]
async fn a_page_of_another_site_cannot_change_anything_through_the_admin_api() {
    // Without a token the admin API trusts loopback: a page the operator opens elsewhere
    // could send a simple POST (no preflight) from the operator's own browser.
    let s = TestServer::start().await;
    s.config("/keep", 3, 30, "fixed_window").await;
    let before = s.get("/admin/configs").await.body;
    let version = s.get("/admin/configs/history?endpoint=/keep").await.body[0]["version"].clone();
    let rollback = format!("/admin/configs/keep/rollback?to={version}");
    for headers in [
        &[("Origin", "https://evil.example")][..],
        &[("Sec-Fetch-Site", "cross-site")],
        &[("Origin", "null")],
    ] {
        for (method, path) in [
            ("POST", rollback.as_str()),
            ("POST", "/admin/reload"),
            ("DELETE", "/admin/configs/keep"),
            ("DELETE", "/admin/clients/someone/state"),
        ] {
            let r = s.send(method, path, headers, None).await;
            assert_eq!(r.status, 403, "{method} {path} {headers:?}: {:?}", r.body);
            assert_eq!(r.body["error"], "forbidden");
        }
    }
    assert_eq!(
        s.get("/admin/configs").await.body,
        before,
        "nothing changed"
    );
    // Reads stay open to any caller the admin rule admits; the page's own origin and
    // clients that send no Origin (curl, programs) may write.
    let own = s.url.clone();
    let r = s
        .send(
            "GET",
            "/admin/configs",
            &[("Origin", "https://evil.example")],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    let r = s
        .send(
            "DELETE",
            "/admin/clients/someone/state",
            &[("Origin", own.as_str()), ("Sec-Fetch-Site", "same-origin")],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(s.delete("/admin/configs/keep").await.status, 204);

    // The page is this server's by the browser's own word, behind a proxy that shows
    // another host: allowed.
    let r = s
        .send(
            "DELETE",
            "/admin/clients/someone/state",
            &[
                ("Origin", "https://rw.example"),
                ("Sec-Fetch-Site", "same-origin"),
            ],
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // DNS rebinding: a page whose own name now points at 127.0.0.1 is same-origin to the
    // browser; without a token, a change through a name that is not loopback is refused.
    for headers in [
        &[
            ("Host", "evil.example:8000"),
            ("Origin", "http://evil.example:8000"),
        ][..],
        &[
            ("Host", "evil.example:8000"),
            ("Sec-Fetch-Site", "same-origin"),
        ],
    ] {
        let r = s.send("POST", "/admin/reload", headers, None).await;
        assert_eq!(r.status, 403, "{headers:?}: {:?}", r.body);
    }
    // Through localhost it is the operator's own browser.
    let r = s
        .send(
            "POST",
            "/admin/reload",
            &[
                ("Host", "localhost:8000"),
                ("Sec-Fetch-Site", "same-origin"),
            ],
            None,
        )
        .await;
    assert_eq!(
        r.status, 409,
        "no file: past the origin check, {:?}",
        r.body
    );
}

#[actix_rt::test]
async fn allowed_origins_open_feeds_and_only_named_ones_open_changes() {
    let s =
        TestServer::with(|c| c.allowed_origins = vec!["*".into(), "https://dash.example".into()])
            .await;
    let reset = "/admin/clients/someone/state";
    let r = s
        .send("DELETE", reset, &[("Origin", "https://any.example")], None)
        .await;
    assert_eq!(r.status, 403, "* opens feeds, never changes");
    let r = s
        .send("DELETE", reset, &[("Origin", "https://dash.example")], None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

/// The status line's code of a raw HTTP/1.x `request` (for feeds, which answer 200 or
/// 101 and then stream: the connection is dropped after the head).
async fn raw_status(url: &str, request: &str) -> u16 {
    let mut stream = TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        let n = actix_rt::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("an answer")
            .unwrap();
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&head).into_owned();
    line.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

/// Every path the admin rule guards, read as a page would, addressed to `host`: the
/// status of each (the feeds through a raw connection, so a stream is not waited on).
async fn guarded_reads(s: &TestServer, host: &str, auth: Option<&str>) -> Vec<(String, u16)> {
    let bearer = auth.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Host", host)];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    let mut out = Vec::new();
    for path in [
        "/admin/configs",
        "/admin/stats",
        "/admin/top",
        "/admin/stats/alice",
        "/admin/traffic",
    ] {
        let r = s.send("GET", path, &headers, None).await;
        if r.status == 403 {
            assert_eq!(r.body["error"], "forbidden_host", "{path}: {:?}", r.body);
            let message = r.body["message"].as_str().unwrap();
            assert!(
                message.contains("--allowed-hosts") && message.contains("--admin-token"),
                "{message}"
            );
        }
        out.push((format!("GET {path}"), r.status.as_u16()));
    }
    // A peek (nothing consumed), so that every admitted read answers 200.
    let check = r#"{"client_id": "alice", "path": "/api/data", "peek": true}"#;
    let r = s.send("POST", "/v1/check", &headers, Some(check)).await;
    out.push(("POST /v1/check".into(), r.status.as_u16()));
    let auth_line = bearer
        .as_ref()
        .map(|b| format!("Authorization: {b}\r\n"))
        .unwrap_or_default();
    let metrics = format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\n{auth_line}\r\n");
    out.push(("GET /metrics".into(), raw_status(&s.url, &metrics).await));
    let sse = format!("GET /events/global HTTP/1.1\r\nHost: {host}\r\n{auth_line}\r\n");
    out.push(("GET /events/global".into(), raw_status(&s.url, &sse).await));
    let ws = format!(
        "GET /ws/global HTTP/1.1\r\nHost: {host}\r\n{auth_line}Upgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    out.push(("GET /ws/global".into(), raw_status(&s.url, &ws).await));
    out
}

/// Whether every read got `status`; a WebSocket's upgrade (101) is its 200.
fn all(reads: &[(String, u16)], status: u16) -> bool {
    reads
        .iter()
        .all(|(what, got)| match (what.starts_with("GET /ws"), status) {
            (true, 200) => *got == 101,
            _ => *got == status,
        })
}

#[actix_rt::test]
async fn without_a_token_only_loopback_and_allowed_host_names_reach_guarded_paths() {
    // DNS rebinding: a page whose own name was rebound to 127.0.0.1 is same-origin to the
    // browser and sends no Origin on a GET; only `Host` tells it from the operator's.
    let s = TestServer::with(|c| c.allowed_hosts = vec!["ops.internal".into()]).await;
    s.config("/api/*", 5, 60, "fixed_window").await;
    assert_eq!(s.statuses("alice", "/api/data", 1).await, [200]);
    let port = s.url.rsplit(':').next().unwrap().to_owned();
    let before = s.get("/admin/configs").await.body;
    let sse = "ratewarden_feed_subscribers{transport=\"sse\"}";
    let ws = "ratewarden_feed_subscribers{transport=\"websocket\"}";

    for host in [
        format!("evil.example:{port}"),
        "evil.example".into(),
        format!("localhost.evil.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        format!("other.internal:{port}"),
    ] {
        let reads = guarded_reads(&s, &host, None).await;
        assert!(all(&reads, 403), "{host}: {reads:?}");
        // Nothing read, and no feed left open.
        assert_eq!(s.metric(sse).await + s.metric(ws).await, 0.0, "{host}");
        // Nothing changed: a write through that name is refused too.
        let headers = [("Host", host.as_str())];
        for (method, path, body) in [
            (
                "POST",
                "/admin/configs",
                Some(r#"{"endpoint": "/x", "requests_per_window": 1, "window_seconds": 1}"#),
            ),
            ("DELETE", "/admin/configs/api/*", None),
            ("DELETE", "/admin/clients/alice/state", None),
        ] {
            let r = s.send(method, path, &headers, body).await;
            assert_eq!(r.status, 403, "{method} {path} via {host}: {:?}", r.body);
            assert_eq!(r.body["error"], "forbidden_host");
        }
    }
    assert_eq!(
        s.get("/admin/configs").await.body,
        before,
        "nothing changed"
    );
    // Nothing was consumed: alice has 4 of 5 left.
    assert_eq!(
        s.statuses("alice", "/api/data", 5).await,
        [200, 200, 200, 200, 429]
    );

    for host in [
        format!("localhost:{port}"),
        "localhost".into(),
        format!("127.0.0.1:{port}"),
        format!("127.1.2.3:{port}"),
        format!("[::1]:{port}"),
        format!("ops.internal:{port}"),
        "OPS.INTERNAL".into(),
    ] {
        let reads = guarded_reads(&s, &host, None).await;
        assert!(all(&reads, 200), "{host}: {reads:?}");
    }
    // The dashboard's page and assets are not guarded (they hold no data).
    let page = "GET /dashboard HTTP/1.1\r\nHost: evil.example\r\n\r\n";
    assert_eq!(raw_status(&s.url, page).await, 200);

    // HTTP/1.0 with no Host: judged by the peer address alone, as before.
    let old = "GET /admin/configs HTTP/1.0\r\n\r\n";
    assert_eq!(raw_status(&s.url, old).await, 200);
}

#[actix_rt::test]
async fn with_a_token_the_token_is_the_rule_whatever_the_host() {
    let s = TestServer::with(|c| c.admin_token = Some("h-token".into())).await;
    let reads = guarded_reads(&s, "evil.example:8000", Some("h-token")).await;
    assert!(all(&reads, 200), "{reads:?}");
    let reads = guarded_reads(&s, "localhost", None).await;
    assert!(all(&reads, 401), "{reads:?}");
    // A decision token alone opens /v1 through any name, and nothing else.
    let s = TestServer::with(|c| c.decision_token = Some("d-token".into())).await;
    let check = r#"{"client_id": "alice", "path": "/api/data"}"#;
    let r = s
        .send(
            "POST",
            "/v1/check",
            &[("Host", "rw.example"), ("Authorization", "Bearer d-token")],
            Some(check),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = s
        .send("GET", "/admin/configs", &[("Host", "rw.example")], None)
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body["error"], "forbidden_host");
}

async fn upgrade(s: &TestServer, path: &str, origin: Option<&str>) -> u16 {
    let mut req = awc::Client::new().ws(format!("{}{path}", s.url.replacen("http", "ws", 1)));
    if let Some(o) = origin {
        req = req.origin(o);
    }
    match req.connect().await {
        Ok((res, _socket)) => res.status().as_u16(),
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => status.as_u16(),
        Err(e) => panic!("{e}"),
    }
}

#[actix_rt::test]
async fn websocket_upgrades_from_other_origins_are_refused() {
    let s = TestServer::with(|c| c.allowed_origins = vec!["https://dash.example".into()]).await;
    let own = s.url.clone();
    assert_eq!(upgrade(&s, "/ws/global", Some(&own)).await, 101);
    assert_eq!(upgrade(&s, "/ws/global", None).await, 101, "not a browser");
    assert_eq!(
        upgrade(&s, "/ws/global", Some("https://dash.example")).await,
        101
    );
    for evil in ["https://evil.example", "null", "http://127.0.0.1:1"] {
        assert_eq!(upgrade(&s, "/ws/alice", Some(evil)).await, 403, "{evil}");
    }
    let r = s
        .send(
            "GET",
            "/ws/global",
            &[("Origin", "https://evil.example")],
            None,
        )
        .await;
    assert_eq!(r.body["error"], "forbidden");
}

#[actix_rt::test]
async fn one_address_holds_at_most_the_configured_number_of_feeds() {
    let s = TestServer::with(|c| c.max_subscribers_per_ip = 2.try_into().unwrap()).await;
    let ws = |path: &'static str| {
        awc::Client::new()
            .ws(format!("{}{path}", s.url.replacen("http", "ws", 1)))
            .connect()
    };
    let (_, first) = ws("/ws/global").await.unwrap();
    let (_, _second) = ws("/ws/bob").await.unwrap();
    assert_eq!(upgrade(&s, "/ws/global", None).await, 429);
    let sse = s.get("/events/global").await;
    assert_eq!(sse.status, 429);
    assert_eq!(sse.body["error"], "too_many_subscribers");
    assert_eq!(
        s.metric("ratewarden_feed_subscribers_refused_total").await,
        2.0
    );

    // That a slot is freed when its session ends is checked in tests/heartbeat.rs and
    // by the connect/disconnect cycles in tests/churn.rs.
    drop(first);
}

#[actix_rt::test]
async fn the_admin_token_never_reaches_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let token = "s3cret-token-value";
    let mut server = Binary::start(&dir.path().join("t.db"), &["--admin-token", token]);
    let client = awc::Client::new();
    for path in [
        format!("/admin/configs?token={token}"),
        format!("/events/nobody?token={token}&x=1"),
        "/admin/configs?token=wrong".to_owned(),
    ] {
        let _ = client
            .get(format!("{}{path}", server.url))
            .timeout(Duration::from_secs(1))
            .send()
            .await;
    }
    let ok = client
        .get(format!("{}/admin/stats", server.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    server.signal("-TERM");
    assert!(server.wait_exit().success());
    let log = server.remaining_lines();
    assert!(
        log.iter()
            .any(|l| l.contains(r#"request method=GET path="/admin/configs" status=200"#)),
        "requests are logged at debug level: {log:?}"
    );
    assert!(!log.iter().any(|l| l.contains(token)), "{log:?}");
}

/// Reads what the server sends until it closes the connection (or `WAIT` passes).
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let read = actix_rt::time::timeout(WAIT, stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server kept the connection open");
    String::from_utf8_lossy(&out).into_owned()
}

#[actix_rt::test]
async fn slow_and_oversized_requests_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(&dir.path().join("s.db"), &["--client-timeout-ms", "1000"]);
    let addr = server.url.trim_start_matches("http://").to_owned();
    assert_eq!(server.get("/health").await.status, 200, "serving before");

    // Slowloris: a request head that never ends is answered 408 and closed.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /api/data HTTP/1.1\r\nHost: x\r\nX-Client-ID: slow\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut slow).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );

    // A head over 128 KiB, and more than 96 headers, are refused before any handler.
    let huge = format!(
        "GET /api/data HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /api/data HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    for request in [huge, many] {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        // The server may close while we are still writing.
        let _ = s.write_all(request.as_bytes()).await;
        let answer = read_to_close(&mut s).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
            "{:.80}",
            answer
        );
    }
    assert_eq!(server.get("/health").await.status, 200, "still serving");
}
