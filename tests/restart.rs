//! End-to-end checks of the real binary: restarts keep configs and consumption (graceful
//! stop flushes everything; `kill -9` loses at most one flush interval), and the command
//! line reports bad values in one line.

mod common;

use common::binary::{BIN, Binary};
use std::path::Path;
use std::process::Command;

async fn get(url: &str, client: &str) -> u16 {
    awc::Client::new()
        .get(url)
        .insert_header(("X-Client-ID", client))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn create_config(url: &str) {
    let res = awc::Client::new()
        .post(format!("{url}/admin/configs"))
        .send_json(&serde_json::json!({
            "endpoint": "/api/*", "requests_per_window": 3, "window_seconds": 3600
        }))
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
}

fn persisted_total(db: &Path, client: &str) -> u64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(
        "SELECT total_requests FROM clients WHERE client_id = ?1",
        [client],
        |r| r.get::<_, i64>(0),
    )
    .map_or(0, |n| n as u64)
}

#[actix_rt::test]
async fn sigterm_then_restart_keeps_configs_and_consumption() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let mut server = Binary::start(&db, &["--flush-interval-ms", "100"]);
    create_config(&server.url).await;
    let url = format!("{}/api/data", server.url);
    for expected in [200, 200, 200, 429] {
        assert_eq!(get(&url, "term").await, expected);
    }
    server.signal("-TERM");
    assert!(server.wait_exit().success());

    let server = Binary::start(&db, &["--flush-interval-ms", "100"]);
    let configs: serde_json::Value = awc::Client::new()
        .get(format!("{}/admin/configs/api/*", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(configs["requests_per_window"], 3);
    let url = format!("{}/api/data", server.url);
    assert_eq!(
        get(&url, "term").await,
        429,
        "a restart must not reset the limit"
    );
    assert_eq!(get(&url, "other").await, 200);
}

#[actix_rt::test]
async fn kill_9_after_a_flush_interval_keeps_consumption() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    let mut server = Binary::start(&db, &["--flush-interval-ms", "100"]);
    create_config(&server.url).await;
    let url = format!("{}/api/data", server.url);
    for _ in 0..3 {
        assert_eq!(get(&url, "killed").await, 200);
    }
    // Wait for the write-behind flush that holds all three requests.
    while persisted_total(&db, "killed") < 3 {
        server.wait_for("persisted");
    }
    server.signal("-KILL");
    server.wait_exit();

    let server = Binary::start(&db, &["--flush-interval-ms", "100"]);
    let url = format!("{}/api/data", server.url);
    assert_eq!(get(&url, "killed").await, 429);
}

#[test]
fn a_bad_flag_exits_non_zero_with_one_clear_line() {
    let out = Command::new(BIN)
        .args(["--flush-interval-ms", "abc"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("ratewarden: ") && err.contains("--flush-interval-ms"),
        "{err}"
    );
}

#[test]
fn help_lists_every_flag() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--bind",
        "--database",
        "--admin-token",
        "--workers",
        "--flush-interval-ms",
        "--retention-days",
        "--client-idle-secs",
        "--max-clients",
        "--trusted-proxies",
        "--client-id-header",
        "--log-level",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}
