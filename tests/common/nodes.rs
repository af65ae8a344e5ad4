//! Several real ratewarden processes in distributed mode, on one Redis (or Redis Cluster,
//! or Redis Sentinel), and what the distributed-mode tests ask of them.

use super::binary::Binary;
use super::ws::{WAIT, connect, next};
use futures_util::future::join_all;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The pause between two looks at what other processes change in their own time (an
/// announcement heard, a connection closed, a failover): no test clock moves it, so it is
/// polled, and the pause keeps the polling from taking the CPU the processes need.
pub const POLL: Duration = Duration::from_millis(20);

/// Waits until `done` says so, asking every [`POLL`], at most [`WAIT`]; `what` names
/// what was awaited when it never comes.
pub async fn eventually<F: Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < WAIT, "never: {what}");
        actix_rt::time::sleep(POLL).await;
    }
}

/// `n` instances on the Redis at `url` (`cluster`: seed nodes of a Redis Cluster).
pub fn instances(
    n: usize,
    url: &str,
    cluster: bool,
    extra: &[&str],
) -> (tempfile::TempDir, Vec<Binary>) {
    let dir = tempfile::tempdir().unwrap();
    let nodes = (0..n)
        .map(|i| {
            let name = format!("node-{i}");
            let mut args = vec!["--redis-url", url, "--instance-id", &name];
            if cluster {
                args.push("--redis-cluster");
            }
            args.extend_from_slice(extra);
            Binary::start(&dir.path().join(format!("{name}.db")), &args)
        })
        .collect();
    (dir, nodes)
}

/// Waits until `node` serves a config for `endpoint` whose `field` is `value`; returns
/// how long that took.
pub async fn until_served(node: &Binary, endpoint: &str, field: &str, value: &Value) -> Duration {
    let started = Instant::now();
    loop {
        let r = node.get(&format!("/admin/configs{endpoint}")).await;
        if r.status == 200 && r.body[field] == *value {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < WAIT,
            "{} never served {endpoint} with {field}={value}: {:?}",
            node.url,
            r.body
        );
        actix_rt::task::yield_now().await;
    }
}

/// Waits until every node's health says Redis is connected.
pub async fn until_connected(nodes: &[Binary]) {
    for node in nodes {
        node.until_redis_connected().await;
    }
}

/// `n` concurrent requests of one client, spread over the nodes: (admitted, limited).
pub async fn burst(nodes: &[Binary], client: &str, path: &str, n: usize) -> (usize, usize) {
    let statuses = join_all((0..n).map(|i| nodes[i % nodes.len()].get_as(client, path))).await;
    // Admitted requests of an endpoint nothing serves are answered 404.
    let ok = statuses
        .iter()
        .filter(|r| r.status == 200 || r.status == 404)
        .count();
    let limited = statuses.iter().filter(|r| r.status == 429).count();
    (ok, limited)
}

/// For the exactness tests: Redis decides every check. Under the default 50 ms a debug
/// build answering hundreds of concurrent requests on a loaded machine now and then
/// waits longer, and `--on-error allow` (tested on its own) then admits.
pub const PATIENT: [&str; 2] = ["--redis-timeout-ms", "1000"];

/// Under a 50 ms Redis timeout a node's first decisions can miss it on a loaded machine
/// (the script loaded into Redis, the threads' connections opened): one request of a
/// client of its own on each node admitted by the limiter first (with its headers, not
/// by `--on-error allow`), so that a burst measures the limit, not the start-up.
pub async fn warm(nodes: &[Binary]) {
    for node in nodes {
        let started = Instant::now();
        loop {
            let r = node.get_as("warm-up", "/api/data").await;
            let decided = r.header("x-ratelimit-remaining").is_some();
            if matches!(r.status.as_u16(), 200 | 404) && decided {
                break;
            }
            assert!(
                started.elapsed() < WAIT,
                "{} never admitted a request",
                node.url
            );
            actix_rt::task::yield_now().await;
        }
    }
}

/// Waits until `node` admits `client` on `path` (asked again and again, as
/// [`until_served`] asks: what it waits for is another instance's announcement).
pub async fn until_admitted(node: &Binary, client: &str, path: &str) {
    let started = Instant::now();
    loop {
        let r = node.get_as(client, path).await;
        if r.status == 200 || r.status == 404 {
            return;
        }
        assert_eq!(r.status, 429, "{:?}", r.body);
        assert!(
            started.elapsed() < WAIT,
            "{} never admitted {client}",
            node.url
        );
        actix_rt::task::yield_now().await;
    }
}

/// Waits until a subscriber of `to`'s global feed hears of a decision made on `from`
/// (whose instance id is `from_id`) for `client`: the feed relay works between them.
pub async fn until_relayed(from: &Binary, from_id: &str, to: &Binary, client: &str) {
    let mut socket = connect(&to.url, "/ws/global").await;
    let started = Instant::now();
    loop {
        // `from` sends its events once it has heard that `to` has a subscriber (within a
        // second); the feed's statistics come every second meanwhile.
        from.get_as(client, "/api/data").await;
        let m = next(&mut socket).await;
        if m["client_id"] == client && m["instance"] == from_id {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "{} never relayed {client} to {}",
            from.url,
            to.url
        );
    }
}
