//! Crash consistency: the real binary is killed with SIGKILL 20 times during sustained
//! load from many clients. Every restart succeeds, `PRAGMA integrity_check` says ok,
//! every acknowledged config is there, and no client regains more quota than it was
//! granted in the last client write interval plus flush interval before the kill (plus
//! the time the write-behind batch takes to be collected and committed): a busy client
//! is written once per write interval, at the first flush after it.

mod common;

use common::binary::Binary;
use futures_util::future::join_all;
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

const KILLS: usize = 20;
const CLIENTS: usize = 50;
const CONNECTIONS: usize = 8;
const FLUSH: Duration = Duration::from_millis(100);
/// Three flushes apart: every client is busy, so each is written every third flush.
const WRITE: Duration = Duration::from_millis(300);
/// Time to collect the snapshots and commit them, on top of the flush interval.
const COMMIT_SLACK: Duration = Duration::from_millis(150);
/// High enough never to block: what is measured is how much consumption survives.
const LIMIT: u64 = 1_000_000;

fn integrity(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// Quota the server counts as used by `client` (a sliding window over a day).
async fn used(server: &Binary, client: &str) -> u64 {
    let r = server.get(&format!("/admin/stats/{client}")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let endpoints = r.body["status"]["endpoints"].as_array().unwrap();
    endpoints
        .iter()
        .find(|e| e["endpoint"] == "/api/*")
        .map_or(0, |e| LIMIT - e["remaining"].as_u64().unwrap())
}

/// Sends requests round-robin over the clients on `CONNECTIONS` connections, recording
/// when each admission was received, per client. The first connection to see `until`
/// pass kills the server with SIGKILL while the others have requests in flight; the
/// returned instant is when the kill was sent.
async fn load_then_kill(
    server: &Binary,
    until: Instant,
    admitted: &Rc<RefCell<Vec<Vec<Instant>>>>,
) -> Instant {
    let killed_at = Rc::new(RefCell::new(None));
    let pid = server.child.id().to_string();
    let workers = (0..CONNECTIONS).map(|w| {
        let admitted = admitted.clone();
        let killed_at = killed_at.clone();
        let pid = pid.clone();
        let url = format!("{}/api/data", server.url);
        async move {
            let http = awc::Client::new();
            let mut n = w;
            loop {
                if killed_at.borrow().is_some() {
                    return;
                }
                if Instant::now() >= until {
                    *killed_at.borrow_mut() = Some(Instant::now());
                    let status = std::process::Command::new("kill")
                        .args(["-KILL", &pid])
                        .status()
                        .unwrap();
                    assert!(status.success());
                    return;
                }
                let client = n % CLIENTS;
                n += CONNECTIONS;
                let sent = http
                    .get(&url)
                    .insert_header(("X-Client-ID", format!("c{client}")))
                    .send()
                    .await;
                match sent {
                    Ok(res) if res.status() == 200 => {
                        admitted.borrow_mut()[client].push(Instant::now())
                    }
                    Ok(res) => panic!("unexpected {}", res.status()),
                    // The server was killed under this request.
                    Err(_) => return,
                }
            }
        }
    });
    join_all(workers).await;
    let at = *killed_at.borrow();
    at.expect("the server was killed")
}

#[actix_rt::test]
async fn twenty_kills_under_load_lose_at_most_one_write_interval_and_one_flush() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let (flush, write) = (FLUSH.as_millis().to_string(), WRITE.as_millis().to_string());
    let args = [
        "--flush-interval-ms",
        flush.as_str(),
        "--client-write-interval-ms",
        write.as_str(),
        "--log-level",
        "warn",
    ];
    let mut server = Binary::start(&db, &args);
    let limit = serde_json::json!({
        "endpoint": "/api/*", "requests_per_window": LIMIT, "window_seconds": 86_400,
    });
    assert_eq!(
        server
            .post("/admin/configs", &limit.to_string())
            .await
            .status,
        201
    );
    let mut acknowledged = vec!["*".to_owned(), "/api/*".to_owned()];
    let admitted = Rc::new(RefCell::new(vec![Vec::new(); CLIENTS]));
    // Per client: admissions the server has forgotten so far (admitted - used).
    let mut forgotten = vec![0u64; CLIENTS];

    for kill in 0..KILLS {
        // A config acknowledged during the run must survive the crash.
        let endpoint = format!("/cfg/{kill}");
        let body = serde_json::json!({
            "endpoint": endpoint, "requests_per_window": 5, "window_seconds": 60,
        });
        let r = server.post("/admin/configs", &body.to_string()).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        acknowledged.push(endpoint);

        // Load for 0.6-1.2 s, so the kill lands at different points of a flush.
        let run = Duration::from_millis(600 + (kill as u64 * 137) % 600);
        let killed_at = load_then_kill(&server, Instant::now() + run, &admitted).await;
        server.wait_exit();

        assert_eq!(integrity(&db), "ok", "after kill {kill}");
        server = Binary::start(&db, &args);
        let configs = server.get("/admin/configs").await.body;
        for e in &acknowledged {
            assert!(
                configs
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["endpoint"] == e.as_str()),
                "config {e} lost after kill {kill}"
            );
        }
        let seen = admitted.borrow().clone();
        for (client, times) in seen.iter().enumerate() {
            let used = used(&server, &format!("c{client}")).await;
            let total = times.len() as u64;
            let now_forgotten = total.saturating_sub(used);
            let lost = now_forgotten.saturating_sub(forgotten[client]);
            let window = WRITE + FLUSH + COMMIT_SLACK;
            let recent = times
                .iter()
                .filter(|t| killed_at.duration_since(**t) <= window)
                .count() as u64;
            assert!(
                lost <= recent,
                "kill {kill}, client c{client}: {lost} admissions forgotten, but only \
                 {recent} were granted in the last {window:?} (admitted {total}, used {used})"
            );
            forgotten[client] = now_forgotten;
        }
    }
    let total: usize = admitted.borrow().iter().map(Vec::len).sum();
    assert!(total > KILLS * CLIENTS, "the load ran: {total} admissions");
}
