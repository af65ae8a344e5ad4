//! Memory stays bounded without losing a limit: limiters beyond `--max-clients` or idle
//! past `--client-idle-secs` are persisted and stopped, and come back from their snapshot.

mod common;

use common::redis::RedisServer;
use common::{T0, TestServer, counted_from};
use ratewarden::clock::NANOS_PER_SEC;
use std::num::NonZeroUsize;

async fn active_clients(s: &TestServer) -> u64 {
    s.get("/admin/stats").await.body["active_clients"]
        .as_u64()
        .unwrap()
}

#[actix_rt::test]
async fn the_least_recently_used_client_is_evicted_and_restored_still_limited() {
    let s = TestServer::with(|c| {
        c.max_clients = NonZeroUsize::new(2).unwrap();
        c.shards = NonZeroUsize::new(1);
    })
    .await;
    s.config("/e", 2, 60, "fixed_window").await;
    assert_eq!(s.statuses("a", "/e", 3).await, vec![404, 404, 429]);
    s.statuses("b", "/e", 1).await;
    s.statuses("c", "/e", 1).await; // evicts a, the least recently used
    assert_eq!(active_clients(&s).await, 2);
    // a comes back (from the registry's unsent snapshot) and is still limited.
    assert_eq!(s.statuses("a", "/e", 1).await, vec![429]);
    // Now b was evicted; after a flush its state comes back from SQLite.
    s.registries.flush_all().await.unwrap();
    assert_eq!(s.statuses("b", "/e", 2).await, vec![404, 429]);
    let stats = s.get("/admin/stats/a").await.body;
    assert_eq!(stats["status"]["total_requests"], 4);
    assert_eq!(stats["status"]["blocked_requests"], 2);
}

#[actix_rt::test]
async fn idle_clients_stop_and_come_back_from_sqlite() {
    let s = TestServer::with(|c| c.client_idle_secs = 10).await;
    s.config("/i", 2, 3600, "sliding_window").await;
    assert_eq!(s.statuses("idle", "/i", 3).await, vec![404, 404, 429]);
    assert_eq!(active_clients(&s).await, 1);

    s.clock.advance(9 * NANOS_PER_SEC);
    s.registries.flush_all().await.unwrap();
    assert_eq!(active_clients(&s).await, 1, "not idle yet");

    s.clock.advance(2 * NANOS_PER_SEC);
    s.registries.flush_all().await.unwrap();
    assert_eq!(active_clients(&s).await, 0);
    // Stats of a stopped client are read from its snapshot.
    let st = s.get("/admin/stats/idle").await.body;
    assert_eq!(st["status"]["endpoints"][0]["remaining"], 0);

    let r = s.get_as("idle", "/i").await;
    assert_eq!(r.status, 429);
    // The first admission counts from the end of its granule (7.032 s for an hour).
    let expires = counted_from(T0, 3600) + 3600 * NANOS_PER_SEC;
    let retry_after = (expires - (T0 + 11 * NANOS_PER_SEC)).div_ceil(NANOS_PER_SEC);
    assert_eq!(r.header_u64("retry-after"), retry_after);
    assert_eq!(active_clients(&s).await, 1);
}

/// Resident memory of a process, from `/proc`.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// Sends one request for each client id, on 8 connections; returns the statuses.
async fn one_each(url: &str, ids: impl Iterator<Item = String>) -> Vec<u16> {
    let ids: Vec<String> = ids.collect();
    let chunks = ids.chunks(ids.len().div_ceil(8)).map(|chunk| async move {
        let http = awc::Client::new();
        let mut out = Vec::with_capacity(chunk.len());
        for id in chunk {
            let res = http
                .get(format!("{url}/api/data"))
                .insert_header(("X-Client-ID", id.as_str()))
                .send()
                .await
                .unwrap();
            out.push(res.status().as_u16());
        }
        out
    });
    futures_util::future::join_all(chunks).await.concat()
}

/// A scaled-down flood on the real binary (`scripts/memory` runs the full 1,000,000 in
/// release mode): 30,000 distinct clients against `--max-clients 1000`. Live limiters
/// stay within the cap, memory stops growing with the number of clients, and early
/// clients, long evicted, are still limited when they return.
#[actix_rt::test]
async fn a_flood_of_distinct_clients_stays_within_the_cap_and_every_client_stays_limited() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::binary::Binary::start(
        &dir.path().join("flood.db"),
        &["--max-clients", "1000", "--log-level", "warn"],
    );
    let body = r#"{"endpoint": "/api/*", "requests_per_window": 1, "window_seconds": 3600}"#;
    assert_eq!(server.post("/admin/configs", body).await.status, 201);
    let pid = server.child.id();

    let first = one_each(&server.url, (0..10_000).map(|i| format!("f{i}"))).await;
    assert!(first.iter().all(|s| *s == 200));
    let rss_10k = rss_kib(pid);
    let rest = one_each(&server.url, (10_000..30_000).map(|i| format!("f{i}"))).await;
    assert!(rest.iter().all(|s| *s == 200));
    let rss_30k = rss_kib(pid);

    assert!(server.metric("ratewarden_live_limiters").await <= 1000.0);
    assert!(server.metric("ratewarden_evictions_total").await >= 29_000.0);
    // Three times the clients grow memory by less than half (about 22 to 26 MiB when
    // measured): it is bounded by the cap, not by the number of clients seen.
    assert!(
        rss_30k < rss_10k + rss_10k / 2,
        "RSS {rss_10k} KiB after 10,000 clients, {rss_30k} KiB after 30,000"
    );

    let back = one_each(
        &server.url,
        (0..10_000).step_by(50).map(|i| format!("f{i}")),
    )
    .await;
    assert_eq!(back, vec![429; 200], "evicted clients come back limited");
    let restored = server
        .metric(r#"ratewarden_restores_total{source="database"}"#)
        .await;
    assert!(restored >= 200.0, "{restored}");
}

#[actix_rt::test]
async fn in_redis_mode_an_idle_client_still_shows_the_quota_redis_holds() {
    let redis = RedisServer::start();
    let s = TestServer::with(|c| {
        c.client_idle_secs = 1;
        c.redis_url = Some(redis.url().parse().unwrap());
    })
    .await;
    s.until_redis_connected().await;
    s.config("/r", 10, 3600, "fixed_window").await;
    assert_eq!(s.statuses("gone", "/r", 3).await, vec![404, 404, 404]);
    s.clock.advance(2 * NANOS_PER_SEC);
    s.registries.flush_all().await.unwrap();
    assert_eq!(active_clients(&s).await, 0);
    let st = s.get("/admin/stats/gone").await.body;
    let endpoints = st["status"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1, "{st}");
    assert_eq!(endpoints[0]["endpoint"], "/r");
    assert_eq!(endpoints[0]["remaining"], 7, "{st}");
    assert_eq!(st["status"]["total_requests"], 3);
}

#[actix_rt::test]
async fn concurrent_checks_of_a_client_being_restored_admit_exactly_what_was_left() {
    let s = TestServer::with(|c| {
        c.client_idle_secs = 1;
        c.shards = NonZeroUsize::new(1);
    })
    .await;
    s.config("/w", 5, 3600, "fixed_window").await;
    assert_eq!(s.statuses("w", "/w", 2).await, vec![404, 404]);
    s.clock.advance(2 * NANOS_PER_SEC);
    // Evicted, and its snapshot written: the next request reads it back from SQLite,
    // and the checks that arrive meanwhile wait for it, in order.
    s.registries.flush_all().await.unwrap();
    assert_eq!(active_clients(&s).await, 0);
    let replies = futures_util::future::join_all((0..10).map(|_| s.get_as("w", "/w"))).await;
    let allowed = replies.iter().filter(|r| r.status == 404).count();
    let limited = replies.iter().filter(|r| r.status == 429).count();
    assert_eq!((allowed, limited), (3, 7));
    assert_eq!(active_clients(&s).await, 1);
}
