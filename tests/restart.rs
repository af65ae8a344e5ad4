//! End-to-end checks of the real binary: restarts keep configs and consumption (graceful
//! stop flushes everything; `kill -9` loses at most one flush interval), and the command
//! line reports bad values in one line.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ratewarden");
const WAIT: Duration = Duration::from_secs(20);

/// A running ratewarden process and its log lines.
struct Binary {
    child: Child,
    url: String,
    lines: Receiver<String>,
}

impl Binary {
    fn start(db: &Path) -> Self {
        let mut child = Command::new(BIN)
            .args([
                "--bind",
                "127.0.0.1:0",
                "--flush-interval-ms",
                "100",
                "--database",
            ])
            .arg(db)
            .env("RUST_LOG", "ratewarden=debug,actix_server=warn")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut b = Binary {
            child,
            url: String::new(),
            lines,
        };
        let line = b.wait_for("listening on http://");
        let addr = line
            .split("http://")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        b.url = format!("http://{addr}");
        b
    }

    /// Blocks until a log line contains `needle` (or fails after a generous deadline).
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line with {needle:?}: {e}"),
            }
        }
    }

    fn signal(&mut self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    let mut server = Binary::start(&db);
    create_config(&server.url).await;
    let url = format!("{}/api/data", server.url);
    for expected in [200, 200, 200, 429] {
        assert_eq!(get(&url, "term").await, expected);
    }
    server.signal("-TERM");
    assert!(server.wait_exit().success());

    let server = Binary::start(&db);
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
    let mut server = Binary::start(&db);
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

    let server = Binary::start(&db);
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
