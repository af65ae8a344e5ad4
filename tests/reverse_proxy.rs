//! Reverse-proxy mode (`--upstream`) in front of a real upstream, an actix-web server
//! started here on a free loopback port: bodies streamed both ways (a 50 MiB upload and
//! download through the real binary, whose peak memory is read from /proc), an SSE
//! response passed on event by event, hop-by-hop headers dropped both ways, the
//! `X-Forwarded-*` headers, 502 and 504, and the 200-against-50 race through the proxy.

mod common;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use common::TestServer;
use common::binary::Binary;
use futures_util::StreamExt;
use serde_json::json;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const MIB: u64 = 1024 * 1024;
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
/// How long a streaming step may wait for the other side before the test fails (only
/// reached when the proxy holds a body back).
const STALL: Duration = Duration::from_secs(30);

/// What the upstream has seen, shared with the test.
#[derive(Clone)]
struct Seen {
    /// Requests that reached `/count/*`.
    counted: Arc<AtomicU64>,
    /// Bytes of the upload received so far.
    uploaded: watch::Sender<u64>,
    /// Set by the test once it has read the first SSE event.
    first_event_read: watch::Sender<bool>,
    /// How many `/held/<n>` bodies the test has let end: `n` ends once it reaches `n`.
    ended: watch::Sender<u64>,
}

/// `/echo/*`: the headers it was sent. `/count/*`: counted. `/upload`: the body's size,
/// counted as it arrives. `/download`: 50 MiB. `/sse`: one event, then a second once the
/// test says it read the first. `/held/<n>`: a first chunk, the rest once the test lets
/// `n` bodies end. `/hang`: never answers. `/not-modified`: a 304 with the
/// Content-Length of a representation it does not send.
async fn upstream_handler(
    req: HttpRequest,
    mut body: web::Payload,
    seen: web::Data<Seen>,
) -> HttpResponse {
    let path = req.path();
    if path.starts_with("/echo") {
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_owned()))
            .collect();
        return HttpResponse::Ok().json(json!({"path": req.uri().to_string(), "headers": headers}));
    }
    if path.starts_with("/count") {
        seen.counted.fetch_add(1, Ordering::SeqCst);
        return HttpResponse::Ok().json(json!({"counted": true}));
    }
    match path {
        "/upload" => {
            let mut n = 0u64;
            while let Some(chunk) = body.next().await {
                n += chunk.unwrap().len() as u64;
                seen.uploaded.send_replace(n);
            }
            HttpResponse::Ok().json(json!({"bytes": n}))
        }
        "/download" => {
            let chunks = (50 * MIB / ZEROS.len() as u64) as usize;
            let stream = futures_util::stream::iter(
                (0..chunks).map(|_| Ok::<_, actix_web::Error>(web::Bytes::from_static(&ZEROS))),
            );
            HttpResponse::Ok().streaming(stream)
        }
        "/sse" => {
            let mut read = seen.first_event_read.subscribe();
            let second = async move {
                let _ = read.wait_for(|r| *r).await;
                Ok::<_, actix_web::Error>(web::Bytes::from_static(b"data: two\n\n"))
            };
            let first = futures_util::stream::once(async {
                Ok::<_, actix_web::Error>(web::Bytes::from_static(b"data: one\n\n"))
            });
            HttpResponse::Ok()
                .content_type("text/event-stream")
                .streaming(first.chain(futures_util::stream::once(second)))
        }
        "/hang" => std::future::pending().await,
        held if held.starts_with("/held/") => {
            // A first chunk at once, the rest once the test lets body `n` end.
            let n: u64 = held["/held/".len()..].parse().unwrap_or(0);
            let mut ended = seen.ended.subscribe();
            let rest = async move {
                let _ = ended.wait_for(|e| *e >= n).await;
                Ok::<_, actix_web::Error>(web::Bytes::from_static(b"end"))
            };
            let first = futures_util::stream::once(async {
                Ok::<_, actix_web::Error>(web::Bytes::from_static(b"start "))
            });
            HttpResponse::Ok().streaming(first.chain(futures_util::stream::once(rest)))
        }
        "/not-modified" => HttpResponse::NotModified()
            .insert_header(("content-length", "1234"))
            .finish(),
        _ => HttpResponse::NotFound().json(json!({"upstream": "not found"})),
    }
}

/// A real upstream on a free loopback port; its URL and what it sees.
fn upstream() -> (String, Seen) {
    let seen = Seen {
        counted: Arc::default(),
        uploaded: watch::Sender::new(0),
        first_event_read: watch::Sender::new(false),
        ended: watch::Sender::new(0),
    };
    let data = web::Data::new(seen.clone());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .default_service(web::to(upstream_handler))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    actix_rt::spawn(server);
    (url, seen)
}

/// The peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// A raw HTTP/1.1 request to `url` (headers exactly as given); the whole answer.
async fn raw(url: &str, request: &str) -> String {
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[actix_rt::test]
async fn streams_bodies_both_ways_without_holding_them_and_rewrites_headers() {
    let (up, seen) = upstream();
    let db = tempfile::tempdir().unwrap();
    let rw = Binary::start(
        &db.path().join("proxy.db"),
        &["--upstream", &up, "--upstream-timeout-ms", "60000"],
    );
    let client = awc::Client::builder().disable_timeout().finish();
    // Warm up the worker's connection pool and buffers before the first reading.
    assert_eq!(rw.get("/count/warm").await.status, 200);
    let before = peak_rss(rw.child.id());

    // 50 MiB up, with its Content-Length: half a MiB must reach the upstream before more
    // than the first MiB is sent, so a proxy that read the whole body before forwarding
    // it would stall here.
    let uploaded = seen.uploaded.subscribe();
    let chunks = 50 * MIB / ZEROS.len() as u64;
    let body = futures_util::stream::unfold(0u64, move |i| {
        let mut uploaded = uploaded.clone();
        async move {
            if i == chunks {
                return None;
            }
            if i == MIB / ZEROS.len() as u64 {
                let reached = tokio::time::timeout(STALL, uploaded.wait_for(|n| *n >= MIB / 2));
                if reached.await.is_err() {
                    return Some((Err(std::io::Error::other("upload held back")), i + 1));
                }
            }
            Some((Ok(web::Bytes::from_static(&ZEROS)), i + 1))
        }
    });
    let mut res = client
        .post(format!("{}/upload", rw.url))
        .insert_header(("X-Client-ID", "streamer"))
        .send_body(actix_web::body::SizedStream::new(50 * MIB, body))
        .await
        .expect("the upload streams through");
    assert_eq!(res.status(), 200);
    let answer: serde_json::Value = res.json().await.unwrap();
    assert_eq!(answer["bytes"], 50 * MIB);

    // 50 MiB down, read as it comes.
    let mut res = client
        .get(format!("{}/download", rw.url))
        .insert_header(("X-Client-ID", "streamer"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers().contains_key("ratelimit"),
        "our headers are added"
    );
    let mut received = 0u64;
    while let Some(chunk) = res.next().await {
        received += chunk.unwrap().len() as u64;
    }
    assert_eq!(received, 50 * MIB);
    let grown = peak_rss(rw.child.id()).saturating_sub(before);
    assert!(
        grown < 16 * MIB,
        "100 MiB through the proxy raised its peak memory by {} MiB",
        grown / MIB
    );

    // SSE: the first event reaches the client while the upstream still holds the second.
    let mut res = client
        .get(format!("{}/sse", rw.url))
        .insert_header(("X-Client-ID", "streamer"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers().get("content-type").unwrap(),
        "text/event-stream"
    );
    let mut events = Vec::new();
    while !events.ends_with(b"\n\n") {
        let chunk = tokio::time::timeout(STALL, res.next())
            .await
            .expect("the first event is passed on at once");
        events.extend_from_slice(&chunk.unwrap().unwrap());
    }
    assert_eq!(events, b"data: one\n\n");
    seen.first_event_read.send_replace(true);
    while let Some(chunk) = res.next().await {
        events.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(events, b"data: one\n\ndata: two\n\n");

    // Hop-by-hop headers stay on this side; X-Forwarded-For is this peer's address (a
    // client's own copy is not trusted), with X-Forwarded-Proto and -Host set.
    let answer = raw(
        &rw.url,
        "GET /echo/x?page=2 HTTP/1.1\r\nHost: app.example\r\nConnection: close, X-Hop\r\n\
         X-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\n\
         X-Forwarded-For: 10.9.9.9\r\nX-Real-IP: 10.9.9.9\r\nUpgrade: h2c\r\n\
         X-Client-ID: echo\r\nAccept: a\r\n\r\n",
    )
    .await;
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    let body = body.trim_end_matches("\r\n0\r\n\r\n");
    let json_start = body.find('{').unwrap();
    let echoed: serde_json::Value =
        serde_json::from_str(&body[json_start..body.rfind('}').unwrap() + 1]).unwrap();
    assert_eq!(echoed["path"], "/echo/x?page=2");
    let headers: Vec<(String, String)> = serde_json::from_value(echoed["headers"].clone()).unwrap();
    let get = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for gone in [
        "x-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "x-real-ip",
        "upgrade",
    ] {
        assert!(get(gone).is_empty(), "{gone} was forwarded: {headers:?}");
    }
    assert_eq!(get("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(get("x-forwarded-proto"), ["http"]);
    assert_eq!(get("x-forwarded-host"), ["app.example"]);
    assert_eq!(get("host"), ["app.example"]);
    assert_eq!(get("x-client-id"), ["echo"]);
    assert_eq!(get("accept"), ["a"]);
}

#[actix_rt::test]
async fn two_hundred_concurrent_requests_against_fifty_let_exactly_fifty_reach_the_upstream() {
    let (up, seen) = upstream();
    let s = TestServer::with(|c| c.upstream = Some(up.clone())).await;
    s.config("/count/*", 50, 60, "sliding_window").await;
    let all = futures_util::future::join_all(
        (0..200).map(|_| s.send("GET", "/count/race", &[("X-Client-ID", "racer")], None)),
    )
    .await;
    let ok = all.iter().filter(|r| r.status == 200).count();
    let limited = all.iter().filter(|r| r.status == 429).count();
    assert_eq!((ok, limited), (50, 150));
    assert_eq!(
        seen.counted.load(Ordering::SeqCst),
        50,
        "a 429 never reaches the upstream"
    );
    let refused = all.iter().find(|r| r.status == 429).unwrap();
    assert_eq!(refused.body["error"], "rate_limit_exceeded");
    assert!(refused.header("Retry-After").is_some());
    let passed = all.iter().find(|r| r.status == 200).unwrap();
    assert_eq!(passed.body["counted"], true, "the upstream's own answer");
    assert!(passed.header("RateLimit").is_some());

    // The demo routes are the upstream's now; ratewarden's own paths stay its own, and
    // what it does not serve under them is neither decided nor forwarded.
    let r = s.get_as("other", "/api/data").await;
    assert_eq!(
        (r.status.as_u16(), &r.body),
        (404, &json!({"upstream": "not found"}))
    );
    assert_eq!(s.get("/health").await.body["status"], "healthy");
    for own in ["/health/x", "/static", "/dashboard/x", "/%64ashboard/x"] {
        let r = s.get_as("other", own).await;
        assert_eq!(
            (r.status.as_u16(), &r.body["error"]),
            (404, &json!("not_found")),
            "{own}"
        );
        assert_eq!(r.header("RateLimit"), None, "{own}");
    }
    // A dot segment would let the upstream serve another path than the one decided.
    for dotted in ["/count/../admin", "/count/%2E%2E/x", "/count/..%2Fx"] {
        let answer = raw(
            &s.url,
            &format!("GET {dotted} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{dotted}: {answer}");
        assert!(answer.contains("invalid_path"), "{answer}");
    }
    assert_eq!(
        seen.counted.load(Ordering::SeqCst),
        50,
        "none of those reached it"
    );
    // Answers without a body: HEAD keeps its length, and a 304 its Content-Length
    // without being waited on for a body (nothing would ever come).
    for (method, path, length) in [
        ("HEAD", "/echo/head", None),
        ("GET", "/not-modified", Some("1234")),
    ] {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: a\r\nX-Client-ID: h\r\nConnection: close\r\n\r\n"
        );
        let answer = tokio::time::timeout(STALL, raw(&s.url, &request))
            .await
            .expect("a bodiless answer is not waited on for a body");
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(body.is_empty(), "{answer}");
        let declared = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap_or_else(|| panic!("{answer}"));
        match length {
            Some(n) => assert_eq!(declared, n),
            None => assert!(declared.parse::<u64>().unwrap() > 0, "{answer}"),
        }
    }
    let r = s
        .send(
            "GET",
            "/count/ws",
            &[("Upgrade", "websocket"), ("Connection", "Upgrade")],
            None,
        )
        .await;
    assert_eq!(r.status, 501);
    assert_eq!(r.body["error"], "not_implemented");
    // Several limits: only what every limit admits reaches the upstream.
    let layered = json!({"endpoint": "/count/layered/*", "limits": [
        {"name": "minute", "algorithm": "fixed_window", "requests_per_window": 3, "window_seconds": 60},
        {"name": "hour", "algorithm": "sliding_window", "requests_per_window": 5, "window_seconds": 3600}]});
    assert_eq!(
        s.post("/admin/configs", &layered.to_string()).await.status,
        201
    );
    let before = seen.counted.load(Ordering::SeqCst);
    let all = futures_util::future::join_all(
        (0..20).map(|_| s.send("GET", "/count/layered/x", &[("X-Client-ID", "lay")], None)),
    )
    .await;
    assert_eq!(all.iter().filter(|r| r.status == 200).count(), 3);
    assert_eq!(seen.counted.load(Ordering::SeqCst) - before, 3);
    let refused = all.iter().find(|r| r.status == 429).unwrap();
    assert_eq!(refused.body["violated"], json!(["minute"]));
    assert_eq!(
        refused.header("RateLimit-Policy"),
        Some("\"minute\";q=3;w=60, \"hour\";q=5;w=3600")
    );
    s.stop().await;
}

#[actix_rt::test]
async fn an_unreachable_upstream_is_a_502_and_a_slow_one_a_504_both_counted() {
    let (up, _seen) = upstream();
    let slow = TestServer::with(|c| {
        c.upstream = Some(up.clone());
        c.upstream_timeout_ms = 200;
    })
    .await;
    let mut feed = common::ws::connect(&slow.url, "/ws/w").await;
    common::ws::next_of(&mut feed, "client_stats").await;
    let r = slow.get_as("w", "/hang").await;
    assert_eq!(r.status, 504);
    // The live feeds say the decision was for a proxied request.
    let event = common::ws::next_of(&mut feed, "request_processed").await;
    assert_eq!(
        (&event["path"], &event["via"]),
        (&json!("/hang"), &json!("proxy"))
    );
    drop(feed);
    assert_eq!(r.body["error"], "gateway_timeout");
    assert!(
        r.header("RateLimit").is_some(),
        "the decision was made and is shown"
    );
    let timeouts = "ratewarden_upstream_errors_total{reason=\"timeout\"}";
    assert_eq!(slow.metric(timeouts).await, 1.0);
    slow.stop().await;

    // A port bound but not listening: refused, and no other test can take it meanwhile.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = format!("http://{}", reserved.local_addr().unwrap());
    let s = TestServer::with(|c| c.upstream = Some(dead)).await;
    let r = s.get_as("w", "/anything").await;
    assert_eq!(r.status, 502);
    assert_eq!(r.body["error"], "bad_gateway");
    let unreachable = "ratewarden_upstream_errors_total{reason=\"unreachable\"}";
    assert_eq!(s.metric(unreachable).await, 1.0);
    s.stop().await;
    drop(reserved);
}

#[actix_rt::test]
async fn the_upstreams_hop_by_hop_headers_stay_behind_and_a_large_body_is_refused() {
    // An upstream that writes its answers by hand, several per connection: one naming a
    // header in `Connection`, an interim answer before the final one, a 101 nobody asked
    // for, a body that ends with the connection, and an HTTP/1.0 answer after which it
    // keeps the connection open but never answers on it again.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = format!("http://{}", listener.local_addr().unwrap());
    actix_rt::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            actix_rt::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        let mut byte = [0u8; 1];
                        if conn.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let path = String::from_utf8_lossy(&head)
                        .split(' ')
                        .nth(1)
                        .unwrap_or_default()
                        .to_owned();
                    let answer: Vec<u8> = match path.as_str() {
                        "/early" => b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
                            HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
                            .to_vec(),
                        "/switch" => {
                            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n".to_vec()
                        }
                        "/close" => {
                            let _ = conn
                                .write_all(b"HTTP/1.0 200 OK\r\n\r\n{\"closed\": true}")
                                .await;
                            return;
                        }
                        "/old" => {
                            let _ = conn
                                .write_all(
                                    b"HTTP/1.0 200 OK\r\nContent-Length: 13\r\n\r\n{\"old\": true}",
                                )
                                .await;
                            std::future::pending::<()>().await;
                            return;
                        }
                        _ => {
                            let body = "{\"raw\": true}";
                            format!(
                                "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Up-Hop\r\nX-Up-Hop: 1\r\n\
                                 Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nX-Kept: yes\r\n\
                                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            )
                            .into_bytes()
                        }
                    };
                    if conn.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let s = TestServer::with(|c| {
        c.upstream = Some(up);
        c.max_proxy_body = Some(1000);
        c.upstream_timeout_ms = 5000;
    })
    .await;
    let r = s.get_as("h", "/raw").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["raw"], true);
    assert_eq!(r.header("X-Kept"), Some("yes"));
    for gone in ["X-Up-Hop", "Keep-Alive", "Proxy-Authenticate"] {
        assert_eq!(r.header(gone), None, "{gone} came through");
    }
    // An interim answer is read past: the final one is passed on.
    let r = s.get_as("h", "/early").await;
    assert_eq!((r.status.as_u16(), &r.body), (200, &json!({})));
    // A 101 that no upgrade asked for is not passed on.
    let r = s.get_as("h", "/switch").await;
    assert_eq!(r.status, 502);
    let invalid = "ratewarden_upstream_errors_total{reason=\"invalid_response\"}";
    assert_eq!(s.metric(invalid).await, 1.0);
    // A body that ends with the connection arrives whole.
    let r = s.get_as("h", "/close").await;
    assert_eq!(
        (r.status.as_u16(), &r.body),
        (200, &json!({"closed": true}))
    );
    // After an HTTP/1.0 answer the connection is not reused (that upstream would never
    // answer on it again: the next request would wait out the timeout).
    let r = s.get_as("h", "/old").await;
    assert_eq!((r.status.as_u16(), &r.body), (200, &json!({"old": true})));
    for _ in 0..3 {
        let r = s.get_as("h", "/raw").await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let timeouts = "ratewarden_upstream_errors_total{reason=\"timeout\"}";
    assert_eq!(s.metric(timeouts).await, 0.0);
    let big = vec![b'x'; 1001];
    let r = s
        .send_bytes("POST", "/raw", &[("X-Client-ID", "h")], Some(&big))
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.body["error"], "payload_too_large");
    // Without a length (chunked), the body is counted as it streams.
    let chunks = futures_util::stream::iter(
        [&ZEROS[..600], &ZEROS[..600]].map(|c| Ok::<_, std::io::Error>(web::Bytes::from_static(c))),
    );
    let mut res = awc::Client::new()
        .post(format!("{}/raw", s.url))
        .insert_header(("X-Client-ID", "h"))
        .send_stream(chunks)
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], "payload_too_large");
    s.stop().await;
}

/// Requests of `client` to `path` until one is admitted (a released unit comes back
/// just after the response that held it ends); how many were refused first.
async fn until_admitted(s: &TestServer, client: &str, path: &str) -> usize {
    let started = std::time::Instant::now();
    let mut refused = 0;
    loop {
        let r = s.get_as(client, path).await;
        if r.status != 429 {
            return refused;
        }
        refused += 1;
        assert!(started.elapsed() < STALL, "{path} never admitted again");
        actix_rt::task::yield_now().await;
    }
}

#[actix_rt::test]
async fn a_concurrency_limit_holds_each_proxied_request_until_its_body_ends() {
    let (up, seen) = upstream();
    let s = TestServer::with(|c| {
        c.upstream = Some(up.clone());
        c.upstream_timeout_ms = 300;
    })
    .await;
    let body = json!({"endpoint": "/*", "limits": [
        {"name": "exports", "algorithm": "concurrency", "max_in_flight": 2}]});
    assert_eq!(
        s.post("/admin/configs", &body.to_string()).await.status,
        201
    );
    let client = awc::Client::builder().timeout(STALL).finish();
    let open = |n: u64| {
        client
            .get(format!("{}/held/{n}", s.url))
            .insert_header(("X-Client-ID", "exp"))
            .send()
    };
    // Two bodies in flight: the third request is refused, and says why.
    let mut first = open(1).await.unwrap();
    let mut second = open(2).await.unwrap();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    assert_eq!(first.next().await.unwrap().unwrap(), "start ");
    let r = s.get_as("exp", "/count/c").await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.body["violated"],
        json!(null),
        "one limit: the 429 names the config"
    );
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"/*\";q=2;qu=\"concurrent-requests\"")
    );
    assert_eq!(r.header_u64("retry-after"), 1);
    // The upstream ends the first body: its unit comes back, and no other.
    seen.ended.send_replace(1);
    assert_eq!(first.body().await.unwrap(), "end");
    until_admitted(&s, "exp", "/count/c").await;
    // The probe's own unit comes back just after its response, as the others do.
    let started = std::time::Instant::now();
    let mut third = loop {
        let res = open(3).await.unwrap();
        if res.status() != 429 {
            break res;
        }
        assert!(
            started.elapsed() < STALL,
            "the probe's unit never came back"
        );
        actix_rt::task::yield_now().await;
    };
    assert_eq!(third.status(), 200);
    assert_eq!(s.get_as("exp", "/count/c").await.status, 429);
    // A client that goes away mid-body gives its unit back.
    drop(third.next().await);
    drop(third);
    until_admitted(&s, "exp", "/count/c").await;
    // So does a request the upstream fails (a 504 after --upstream-timeout-ms), once
    // the probe's unit is back.
    let started = std::time::Instant::now();
    let hung = loop {
        let r = s.get_as("exp", "/hang").await;
        if r.status != 429 {
            break r;
        }
        assert!(
            started.elapsed() < STALL,
            "the probe's unit never came back"
        );
        actix_rt::task::yield_now().await;
    };
    assert_eq!(hung.status, 504);
    until_admitted(&s, "exp", "/count/c").await;
    seen.ended.send_replace(u64::MAX);
    assert_eq!(second.body().await.unwrap(), "start end");
    s.stop().await;
}
