//! Third-party processes in front of ratewarden (nginx, Caddy, Envoy): a free loopback
//! port, the process killed when dropped, and a raw HTTP/1.1 client that connects from a
//! chosen loopback address (so each test client has its own address).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A proxy process, killed when dropped.
pub struct Proxy {
    pub child: Child,
    pub port: u16,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// Waits until the proxy accepts connections (it has just been started), failing at
    /// once with its log if it exits.
    pub async fn ready(mut self, log: &Path) -> Self {
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return self;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("the proxy exited ({status}): {log}");
            }
            tokio::task::yield_now().await;
            std::thread::park_timeout(std::time::Duration::from_millis(10));
        }
        panic!(
            "the proxy did not listen: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

/// One answer, as a client sees it.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        let found = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name));
        found.map(|(_, v)| v.as_str())
    }
}

/// `GET path` sent to `port` from the loopback address `source`, with `extra` headers.
pub async fn get_from(source: &str, port: u16, path: &str, extra: &[(&str, &str)]) -> Answer {
    send_from(source, port, "GET", path, extra, None).await
}

/// A request sent to `port` from the loopback address `source`, with `extra` headers
/// and, when given, a body (with its `Content-Length`).
pub async fn send_from(
    source: &str,
    port: u16,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Answer {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str("Host: 127.0.0.1\r\n");
    }
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = body {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&bytes).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    let head = text.split("\r\n\r\n").next().unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Answer { status, headers }
}

pub fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}
