//! Database faults on the real binary: the file is locked by another process (the DB
//! actor stalls), the disk fills up, the file turns read-only. In each, decisions go on
//! from memory, `/health` says `degraded`, admin writes answer 503 and change nothing,
//! `/metrics` counts the failures, and once the fault clears persistence resumes by
//! itself, without a restart.
//!
//! The disk-full and read-only cases mount a small tmpfs and set the immutable
//! attribute, so they need root (CI runs as root; `.ci/run` installs e2fsprogs).

mod common;

use common::Http;
use common::binary::Binary;
use std::path::{Path, PathBuf};
use std::process::Command;

const FAST: [&str; 4] = ["--flush-interval-ms", "100", "--decision-timeout-ms", "300"];

fn config(endpoint: &str) -> String {
    serde_json::json!({
        "endpoint": endpoint, "requests_per_window": 5, "window_seconds": 3600,
        "algorithm": "fixed_window",
    })
    .to_string()
}

fn persisted_clients(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT client_id FROM clients ORDER BY client_id")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Waits (on the server's log) until `client` is in the file.
fn wait_persisted(server: &mut Binary, db: &Path, client: &str) {
    while !persisted_clients(db).iter().any(|c| c == client) {
        server.wait_for("persisted");
    }
}

/// 5 requests an hour on `/api/*`.
async fn limit_api(http: &Http) {
    let r = http.post("/admin/configs", &config("/api/*")).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
}

/// The binary with a config for `/api/*`, once a first client's state is in the file.
async fn started_and_persisting(db: &Path, extra: &[&str]) -> Binary {
    let mut server = Binary::start(db, &[&FAST[..], extra].concat());
    limit_api(&server).await;
    assert_eq!(remaining(&server, "before").await, (200, Some(4)));
    wait_persisted(&mut server, db, "before");
    server
}

async fn remaining(http: &Http, client: &str) -> (u16, Option<u64>) {
    let r = http.get_as(client, "/api/data").await;
    let left = r
        .header("x-ratelimit-remaining")
        .and_then(|v| v.parse().ok());
    (r.status.as_u16(), left)
}

/// Decisions go on: a new client is decided from memory, and its snapshot is what the
/// next write-behind batch fails to write.
async fn decide_fresh(server: &mut Binary) {
    assert_eq!(remaining(server, "fresh").await, (200, Some(4)));
    server.wait_for("the database is failing");
}

/// While the fault lasts: admin writes are refused without a change, health is
/// degraded, and the failures are counted.
async fn assert_degraded(server: &Binary, reason: &str) {
    let health = server.get("/health").await;
    assert_eq!(health.status, 200, "{:?}", health.body);
    assert_eq!(health.body["status"], "degraded");
    let why = health.body["reason"].as_str().unwrap();
    assert!(why.contains(reason), "{why}");
    // Not ready (its state cannot be kept), yet alive: no restart would mend the disk.
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, 503, "{:?}", ready.body);
    assert_eq!(ready.body["status"], "not_ready");
    let reasons = ready.body["reasons"].to_string();
    assert!(
        reasons.contains("database: ") && reasons.contains(reason),
        "{reasons}"
    );
    assert_eq!(server.get("/livez").await.status, 200);

    let r = server.post("/admin/configs", &config("/api/extra")).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body["error"], "service_unavailable");
    let configs = server.get("/admin/configs").await.body;
    assert!(!configs.to_string().contains("/api/extra"), "{configs}");

    let failed = server
        .metric(r#"ratewarden_db_errors_total{operation="persist"}"#)
        .await;
    assert!(failed >= 1.0, "persist failures counted: {failed}");
}

/// After the fault: everything decided meanwhile reaches the file, health is back, and
/// the refused config never appeared.
async fn assert_recovered(server: &mut Binary, db: &Path, newest: &str) {
    server.wait_for("the database works again");
    wait_persisted(server, db, newest);
    let health = server.get("/health").await;
    assert_eq!(health.body["status"], "healthy", "{:?}", health.body);
    let ready = server.get("/readyz").await;
    assert_eq!(
        (ready.status.as_u16(), &ready.body["status"]),
        (200, &"ready".into())
    );
    let configs = server.get("/admin/configs").await.body;
    assert!(!configs.to_string().contains("/api/extra"), "{configs}");
    let r = server.post("/admin/configs", &config("/api/later")).await;
    assert_eq!(r.status, 201, "admin writes work again: {:?}", r.body);
    assert_eq!(
        server.metric("ratewarden_write_behind_queue_depth").await,
        0.0
    );
}

/// The database locked by another process while a returning client must be restored
/// from it: the restore cannot finish in time, and `--on-error` decides.
async fn locked_database(on_error: &str) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("locked.db");
    let args = [&FAST[..], &["--on-error", on_error, "--max-clients", "1"]].concat();
    let mut server = Binary::start(&db, &args);
    limit_api(&server).await;
    // "old" uses 2 of 5, then "other" (one live limiter at most) evicts it to the file.
    for left in [4, 3] {
        assert_eq!(remaining(&server, "old").await, (200, Some(left)));
    }
    assert_eq!(remaining(&server, "other").await, (200, Some(4)));
    wait_persisted(&mut server, &db, "old");

    // Another process holds the write lock: every write attempt (one a second while
    // failing) waits out the busy timeout and fails.
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    decide_fresh(&mut server).await;

    // The next write attempt holds the DB actor for the busy timeout (1 s); "old" must
    // be restored from the file meanwhile, which cannot happen in time.
    server.wait_for("writing");
    let r = server.get_as("old", "/api/data").await;
    let outcome = if on_error == "deny" {
        assert_eq!(r.status, 503, "{:?}", r.body);
        assert_eq!(r.body["error"], "limiter_unavailable");
        assert_eq!(r.header("retry-after"), Some("1"));
        "on_error_denied"
    } else {
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            None,
            "not decided by a limiter"
        );
        "on_error_allowed"
    };
    // "locked", or "did not answer" while an attempt waits out the lock.
    assert_degraded(&server, "database").await;
    let timeouts = server
        .metric(r#"ratewarden_decision_errors_total{reason="timeout"}"#)
        .await;
    assert!(timeouts >= 1.0, "{timeouts}");
    let series = format!(r#"ratewarden_decisions_total{{endpoint="/api/*",outcome="{outcome}"}}"#);
    assert!(server.metric(&series).await >= 1.0, "{series}");

    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    assert_recovered(&mut server, &db, "fresh").await;
    // The check that timed out consumed nothing: "old" continues from 2 used.
    assert_eq!(remaining(&server, "old").await, (200, Some(2)));
}

#[actix_rt::test]
async fn a_locked_database_stalls_restores_and_on_error_deny_answers_503() {
    locked_database("deny").await;
}

#[actix_rt::test]
async fn a_locked_database_stalls_restores_and_on_error_allow_lets_requests_through() {
    locked_database("allow").await;
}

/// A small tmpfs mounted for one test, unmounted (lazily) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "mounting a tmpfs needs root (run the tests as root, as CI does)"
        );
        Tmpfs(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `path` until a write fails.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
}

#[actix_rt::test]
async fn a_full_disk_keeps_snapshots_pending_until_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(dir.path().join("small"), "4m");
    let db = disk.0.join("full.db");
    let mut server = started_and_persisting(&db, &[]).await;

    let filler = disk.0.join("filler");
    fill(&filler);
    // New clients need new pages; a few hundred make sure the file must grow (the
    // write-ahead log may still have room for the first batches).
    for i in 0..300 {
        assert_eq!(
            server.get_as(&format!("c{i}"), "/api/data").await.status,
            200
        );
    }
    decide_fresh(&mut server).await;
    assert_degraded(&server, "full").await;
    assert!(server.metric("ratewarden_write_behind_queue_depth").await >= 1.0);

    std::fs::remove_file(&filler).unwrap();
    assert_recovered(&mut server, &db, "fresh").await;
    let stored = persisted_clients(&db);
    assert!(stored.len() >= 302, "{} clients stored", stored.len());
}

fn immutable(paths: &[PathBuf], on: bool) {
    for p in paths {
        let ok = Command::new("chattr")
            .arg(if on { "+i" } else { "-i" })
            .arg(p)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "chattr needs root and e2fsprogs");
    }
}

#[actix_rt::test]
async fn a_read_only_file_fails_writes_until_it_is_writable_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ro.db");
    let mut server = started_and_persisting(&db, &["--write-queue-max", "10"]).await;

    let files = [db.clone(), dir.path().join("ro.db-wal")];
    immutable(&files, true);
    decide_fresh(&mut server).await;
    assert_degraded(&server, "").await;
    // Beyond --write-queue-max, the oldest waiting snapshots are dropped and counted.
    for i in 0..30 {
        assert_eq!(
            server.get_as(&format!("d{i}"), "/api/data").await.status,
            200
        );
    }
    server.wait_for("write-behind queue full");
    let dropped = server.metric("ratewarden_write_behind_dropped_total").await;
    assert!(dropped >= 1.0, "{dropped}");
    assert!(server.metric("ratewarden_write_behind_queue_depth").await <= 10.0);

    immutable(&files, false);
    assert_recovered(&mut server, &db, "d29").await;
}
