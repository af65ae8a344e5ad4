//! A real ratewarden on a free loopback port, in this test's actix system, with a manual
//! clock; and a small client for it.
#![allow(dead_code)] // each test binary uses its own part of this module

pub mod binary;
pub mod link;
pub mod nodes;
pub mod proxy;
pub mod redis;
pub mod ws;

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::http::header::HeaderMap;
use ratewarden::actors::registry::Registries;
use ratewarden::app;
use ratewarden::clock::{ManualClock, NANOS_PER_SEC};
use ratewarden::settings::Settings;
use serde_json::Value;
use std::net::TcpListener;
use std::sync::Arc;

/// The configs a `GET /admin/configs` body lists: (endpoint, requests_per_window),
/// sorted.
pub fn endpoints(configs: &Value) -> Vec<(String, u64)> {
    let mut all: Vec<(String, u64)> = configs
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["endpoint"].as_str().unwrap().to_owned(),
                c["requests_per_window"].as_u64().unwrap(),
            )
        })
        .collect();
    all.sort();
    all
}

pub fn owned(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(e, n)| (e.to_string(), *n)).collect()
}

/// 2027-01-15T08:00:00Z: a fixed start for the manual clock.
pub const T0: u64 = 1_800_000_000 * NANOS_PER_SEC;

/// When a sliding window of `window_secs` starts counting an admission made at `at`: the
/// end of its granule (see `limiter::sliding_window`).
pub fn counted_from(at: u64, window_secs: u64) -> u64 {
    let granule = ratewarden::limiter::granule_ms(window_secs * NANOS_PER_SEC) * 1_000_000;
    at.div_ceil(granule) * granule
}

pub struct TestServer {
    pub url: String,
    pub clock: Arc<ManualClock>,
    pub registries: Registries,
    /// The gRPC server's address, when the settings asked for one.
    pub grpc_addr: Option<std::net::SocketAddr>,
    handle: ServerHandle,
    http: Http,
}

/// A small JSON client for one server (in-process or the real binary).
pub struct Http {
    pub url: String,
    client: awc::Client,
}

impl std::ops::Deref for TestServer {
    type Target = Http;
    fn deref(&self) -> &Http {
        &self.http
    }
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn header_u64(&self, name: &str) -> u64 {
        self.header(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("header {name} missing or not a number: {:?}", self.headers))
    }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    /// A server with settings adjusted by `f` (the database is `:memory:` unless set).
    pub async fn with(f: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = Settings::for_tests();
        f(&mut settings);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let clock = ManualClock::new(T0);
        let running = app::start_with_clock(&settings, listener, clock.clone()).unwrap();
        let url = format!("http://{}", running.addr);
        let handle = running.handle();
        let registries = running.registries.clone();
        let grpc_addr = running.grpc_addr();
        actix_rt::spawn(running.serve_until(futures_util::stream::pending()));
        Self {
            http: Http::new(&url),
            url,
            clock,
            registries,
            grpc_addr,
            handle,
        }
    }

    pub async fn stop(self) {
        self.handle.stop(true).await;
    }
}

impl Http {
    pub fn new(url: &str) -> Self {
        let client = awc::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .finish();
        Self {
            url: url.to_owned(),
            client,
        }
    }

    /// Sends a request; `body` is sent as JSON when given.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        self.send_bytes(method, path, headers, body.map(str::as_bytes))
            .await
    }

    /// Like [`Http::send`], with any bytes as the body.
    pub async fn send_bytes(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        let method = actix_web::http::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.client.request(method, format!("{}{path}", self.url));
        let mut has_type = false;
        for (k, v) in headers {
            has_type |= k.eq_ignore_ascii_case("content-type");
            req = req.append_header((*k, *v));
        }
        if body.is_some() && !has_type {
            req = req.insert_header(("content-type", "application/json"));
        }
        let mut res = match body {
            Some(b) => req.send_body(b.to_vec()).await,
            None => req.send().await,
        }
        .expect("request failed");
        let bytes = res.body().limit(1 << 20).await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!(
                    "not JSON ({}): {}",
                    res.status(),
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Resp {
            status: res.status(),
            headers: res.headers().clone(),
            body,
        }
    }

    /// A GET whose body is text (`/metrics`).
    pub async fn text(&self, path: &str) -> (StatusCode, String) {
        let (status, _, text) = self.raw(path).await;
        (status, text)
    }

    /// A GET whose body is any text, with its headers (static files).
    pub async fn raw(&self, path: &str) -> (StatusCode, HeaderMap, String) {
        let mut res = self
            .client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("request failed");
        let bytes = res.body().limit(1 << 22).await.expect("body");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        (res.status(), res.headers().clone(), text)
    }

    /// The value of the metric sample named exactly `series` (name and labels) in
    /// `/metrics`, or 0 when it has not been counted yet.
    pub async fn metric(&self, series: &str) -> f64 {
        let (status, text) = self.text("/metrics").await;
        assert_eq!(status, 200, "{text}");
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send("GET", path, &[], None).await
    }

    pub async fn get_as(&self, client: &str, path: &str) -> Resp {
        self.send("GET", path, &[("X-Client-ID", client)], None)
            .await
    }

    pub async fn post(&self, path: &str, body: &str) -> Resp {
        self.send("POST", path, &[], Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &str) -> Resp {
        self.send("PUT", path, &[], Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send("DELETE", path, &[], None).await
    }

    /// Creates a config and asserts it was created.
    pub async fn config(&self, endpoint: &str, limit: u64, window: u64, algorithm: &str) {
        let body = serde_json::json!({
            "endpoint": endpoint, "requests_per_window": limit,
            "window_seconds": window, "algorithm": algorithm,
        });
        let r = self.post("/admin/configs", &body.to_string()).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }

    /// Returns once the server reports its Redis connection up (distributed mode).
    pub async fn until_redis_connected(&self) {
        let started = std::time::Instant::now();
        while self.get("/health").await.body["redis"] != "connected" {
            assert!(started.elapsed().as_secs() < 10, "never connected to Redis");
            actix_rt::task::yield_now().await;
        }
    }

    /// Status codes of `n` sequential requests by `client` to `path`.
    pub async fn statuses(&self, client: &str, path: &str, n: usize) -> Vec<u16> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.get_as(client, path).await.status.as_u16());
        }
        out
    }
}
