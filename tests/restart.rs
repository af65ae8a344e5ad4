//! End-to-end checks of the real binary: restarts keep configs and consumption (graceful
//! stop flushes everything; `kill -9` is `tests/crash.rs`'s), a stop first
//! turns not ready and keeps serving for the shutdown delay, and the command line
//! reports bad values in one line, its version, and checks a config file.

mod common;

use common::binary::{BIN, Binary};
use ratewarden::snapshot::EndpointSnapshot;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

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
    // A config of several limits keeps each one's state too.
    let layered = json!({"endpoint": "/", "limits": [
        {"name": "a", "algorithm": "fixed_window", "requests_per_window": 2, "window_seconds": 3600},
        {"name": "b", "algorithm": "sliding_window", "requests_per_window": 9, "window_seconds": 3600}]});
    let res = awc::Client::new()
        .post(format!("{}/admin/configs", server.url))
        .send_json(&layered)
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let root = format!("{}/", server.url);
    for expected in [200, 200, 429] {
        assert_eq!(get(&root, "term").await, expected);
    }
    // A limit every caller shares keeps its state under the global key's value.
    let shared = json!({"endpoint": "/shared/*", "limits": [
        {"name": "own", "algorithm": "fixed_window", "requests_per_window": 9, "window_seconds": 3600},
        {"name": "all", "algorithm": "fixed_window", "requests_per_window": 2, "window_seconds": 3600, "key": "global"}]});
    let res = awc::Client::new()
        .post(format!("{}/admin/configs", server.url))
        .send_json(&shared)
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let shared = format!("{}/shared/x", server.url);
    // Admitted requests of a path nothing serves are answered 404.
    for (client, expected) in [("s1", 404), ("s2", 404), ("s3", 429)] {
        assert_eq!(get(&shared, client).await, expected, "{client}");
    }
    server.signal("-TERM");
    assert!(server.wait_exit().success());
    // The write-ahead log was folded in: the database file alone holds everything, as
    // a copy of it (a backup, a volume snapshot) would.
    let copy = dir.path().join("copy.db");
    std::fs::copy(&db, &copy).unwrap();
    assert_eq!(persisted_total(&copy, "term"), 7);

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
    let root = format!("{}/", server.url);
    assert_eq!(
        get(&root, "term").await,
        429,
        "each limit's state is restored"
    );
    assert_eq!(get(&root, "other").await, 200);
    let conn = rusqlite::Connection::open(&db).unwrap();
    // Each client's states, as its one row holds them.
    let stored = |client: &str| -> Vec<EndpointSnapshot> {
        let states: Vec<u8> = conn
            .query_row(
                "SELECT states FROM clients WHERE client_id = ?1",
                [client],
                |r| r.get(0),
            )
            .unwrap();
        EndpointSnapshot::decode_all(&states, 0).unwrap()
    };
    let term = stored("term");
    let layered = term.iter().find(|e| &*e.endpoint == "/").unwrap();
    assert_eq!(layered.algorithm, None, "stored as several limits");
    assert!(term.iter().any(|e| &*e.endpoint == "/api/*"));
    let shared = format!("{}/shared/x", server.url);
    assert_eq!(
        get(&shared, "s4").await,
        429,
        "the shared budget is restored"
    );
    let kept: Vec<String> = stored("(global)")
        .iter()
        .map(|e| e.endpoint.to_string())
        .collect();
    assert_eq!(kept, ["/shared/* [key:global]"]);
}

#[actix_rt::test]
async fn sigterm_turns_not_ready_at_once_and_serves_for_the_shutdown_delay() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("d.db");
    let delay = Duration::from_millis(5000);
    let mut server = Binary::start(&db, &["--shutdown-delay-ms", "5000"]);
    let ready = server.get("/readyz").await;
    assert_eq!(
        (ready.status.as_u16(), &ready.body["status"]),
        (200, &json!("ready"))
    );
    assert_eq!(server.get_as("drained", "/api/data").await.status, 200);

    let signalled = Instant::now();
    server.signal("-TERM");
    // The signal is handled asynchronously: poll (with a deadline) until it has been.
    let ready = loop {
        let r = server.get("/readyz").await;
        if r.status != 200 {
            break r;
        }
        assert!(signalled.elapsed() < delay, "/readyz never turned 503");
        actix_rt::task::yield_now().await;
    };
    assert_eq!(ready.status, 503, "{:?}", ready.body);
    assert_eq!(ready.body["status"], "not_ready");
    assert_eq!(ready.body["reasons"], json!(["shutting down"]));
    // Still serving, limiting and alive while load balancers drain it.
    let r = server.get_as("drained", "/api/data").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header_u64("x-ratelimit-remaining"), 98);
    assert_eq!(server.get("/livez").await.status, 200);
    server.wait_for("still serving for 5000 ms");
    assert!(
        signalled.elapsed() < delay,
        "the checks above ran after the delay"
    );

    assert!(server.wait_exit().success());
    assert!(
        signalled.elapsed() >= delay,
        "stopped {:?} after SIGTERM, before the delay",
        signalled.elapsed()
    );
    // The requests served while draining were flushed like any other.
    assert_eq!(persisted_total(&db, "drained"), 2);
}

#[actix_rt::test]
async fn a_second_sigterm_cuts_the_shutdown_delay_short() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    // Ten minutes: the test would time out long before the delay ends by itself.
    let mut server = Binary::start(&db, &["--shutdown-delay-ms", "600000"]);
    assert_eq!(server.get_as("hurried", "/api/data").await.status, 200);
    server.signal("-TERM");
    server.wait_for("still serving for 600000 ms");
    assert_eq!(server.get("/readyz").await.status, 503);
    server.signal("-TERM");
    server.wait_for("the shutdown delay is cut short");
    assert!(server.wait_exit().success());
    // The graceful stop ran in full: the state was written.
    assert_eq!(persisted_total(&db, "hurried"), 1);
}

#[actix_rt::test]
async fn kill_9_after_a_flush_interval_keeps_consumption() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    // A busy client is written at most once per --client-write-interval-ms (60 s by
    // default): short here too, so that a flush that fell between the requests is
    // followed by one that writes all three.
    let fast = [
        "--flush-interval-ms",
        "100",
        "--client-write-interval-ms",
        "100",
    ];
    let mut server = Binary::start(&db, &fast);
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

    let server = Binary::start(&db, &fast);
    let url = format!("{}/api/data", server.url);
    assert_eq!(get(&url, "killed").await, 429);
}

#[test]
fn a_bad_flag_exits_non_zero_with_one_clear_line() {
    for (flag, value, says) in [
        ("--flush-interval-ms", "abc", "--flush-interval-ms"),
        (
            "--allowed-hosts",
            "ops.internal,https://ops.internal:8000",
            "no scheme, port or path",
        ),
    ] {
        let out = Command::new(BIN).args([flag, value]).output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("ratewarden: ") && err.contains(flag) && err.contains(says),
            "{err}"
        );
    }
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
        "--allowed-hosts",
        "--workers",
        "--flush-interval-ms",
        "--retention-days",
        "--client-idle-secs",
        "--max-clients",
        "--trusted-proxies",
        "--client-id-header",
        "--log-level",
        "--shutdown-delay-ms",
        "check-config",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn version_prints_the_package_version() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("ratewarden {}\n", env!("CARGO_PKG_VERSION"))
    );
}

/// `ratewarden check-config FILE` in an empty directory, with no database given.
fn check_config(text: &str) -> (Option<i32>, String, String, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("limits.toml"), text).unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "limits.toml"])
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let files = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        files,
    )
}

#[test]
fn check_config_accepts_a_valid_file_and_touches_nothing() {
    let (code, out, err, files) = check_config(
        "[[config]]\nendpoint = \"*\"\nrequests_per_window = 50\nwindow_seconds = 60\n\n\
         [[config]]\nendpoint = \"/api/*\"\nrequests_per_window = 10\nwindow_seconds = 1\n\
         algorithm = \"token_bucket\"\nburst_limit = 20\n",
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "limits.toml: 2 configs OK\n");
    assert_eq!(err, "");
    // No database was created (the default would be ./ratewarden.db), nothing served.
    assert_eq!(files, ["limits.toml"]);
}

#[test]
fn check_config_prints_every_error_with_its_line_and_field() {
    let (code, out, err, files) = check_config(
        "[[config]]\nendpoint = \"/a\"\nrequests_per_window = 0\nwindow_seconds = 60\n\n\
         [[config]]\nendpoint = \"/b\"\nrequests_per_window = 5\nwindow_seconds = 60\n\n\
         [[config]]\nendpoint = \"/c\"\nrequests_per_window = 5\nwindow_seconds = 60\n\
         algorithm = \"leaky\"\n",
    );
    assert_eq!(code, Some(1));
    assert_eq!(out, "");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].starts_with("limits.toml, line 3, field requests_per_window: "),
        "{err}"
    );
    assert!(
        lines[1].starts_with("limits.toml, line 15, field algorithm: ")
            && lines[1].contains("sliding_window"),
        "{err}"
    );
    assert_eq!(lines[2], "limits.toml: 2 errors; the file would be refused");
    assert_eq!(files, ["limits.toml"]);

    let (code, _, err, _) = check_config("[[config]]\nendpoint = \n");
    assert_eq!(code, Some(1));
    assert!(err.starts_with("limits.toml, line 2: "), "{err}");
    let out = Command::new(BIN)
        .args(["check-config", "/nonexistent/limits.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("/nonexistent/limits.toml: cannot be read"),
        "{err}"
    );
}
