//! Memory stays bounded without losing a limit: limiters beyond `--max-clients` or idle
//! past `--client-idle-secs` are persisted and stopped, and come back from their snapshot.

mod common;

use common::TestServer;
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
    assert_eq!(r.header_u64("retry-after"), 3600 - 11);
    assert_eq!(active_clients(&s).await, 1);
}
