//! Distributed mode end to end: real ratewarden processes sharing a real Redis (and a
//! real three-master Redis Cluster), both started by this test on free loopback ports.

mod common;

use common::binary::Binary;
use common::nodes::{
    PATIENT, burst, eventually, instances, until_admitted, until_connected, until_served, warm,
};
use common::redis::{RedisCluster, RedisServer};
use common::ws::{WAIT, connect, next};
use common::{endpoints, owned};
use futures_util::future::join_all;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn exact_limit_across(nodes: &[Binary]) {
    until_connected(nodes).await;
    for (i, algorithm) in ["sliding_window", "fixed_window", "token_bucket"]
        .iter()
        .enumerate()
    {
        let endpoint = format!("/api/exact{i}");
        let body = json!({"endpoint": endpoint, "requests_per_window": 100,
                          "window_seconds": 3600, "algorithm": algorithm});
        let r = nodes[i % nodes.len()]
            .post("/admin/configs", &body.to_string())
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        for node in nodes {
            until_served(node, &endpoint, "algorithm", &json!(algorithm)).await;
        }
        let (ok, limited) = burst(nodes, &format!("shared-{algorithm}"), &endpoint, 300).await;
        assert_eq!(
            (ok, limited),
            (100, 200),
            "{algorithm} over {} instances",
            nodes.len()
        );
    }
    // Several limits, decided in one script: exactly the tighter one's budget, whichever
    // instance asks, and no refusal takes from the looser one.
    let body = json!({"endpoint": "/api/layered", "limits": [
        {"name": "loose", "algorithm": "token_bucket", "requests_per_window": 120, "window_seconds": 3600},
        {"name": "tight", "algorithm": "sliding_window", "requests_per_window": 70, "window_seconds": 3600}]});
    let r = nodes[0].post("/admin/configs", &body.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    for node in nodes {
        until_served(node, "/api/layered", "limits", &body["limits"]).await;
    }
    let (ok, limited) = burst(nodes, "layered", "/api/layered", 300).await;
    assert_eq!(
        (ok, limited),
        (70, 230),
        "several limits over {} instances",
        nodes.len()
    );
    let r = nodes[1].get_as("layered", "/api/layered").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.body["violated"], json!(["tight"]));
    // The bucket kept what the refusals did not take (it refills one every 30 s).
    let fields = r.header("ratelimit").unwrap();
    let loose: u64 = fields["\"loose\";r=".len()..]
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((50..=52).contains(&loose), "{fields}");
    assert!(fields.contains("\"tight\";r=0;"), "{fields}");
    // A global key on a calendar quota: every caller on every instance shares one budget.
    let body = json!({"endpoint": "/api/global", "requests_per_window": 100,
                      "algorithm": "fixed_window", "calendar": "month", "key": "global"});
    let r = nodes[0].post("/admin/configs", &body.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    for node in nodes {
        until_served(node, "/api/global", "key", &json!("global")).await;
    }
    let callers: Vec<String> = (0..300).map(|i| format!("caller-{i}")).collect();
    let statuses = join_all(
        callers
            .iter()
            .enumerate()
            .map(|(i, c)| nodes[i % nodes.len()].get_as(c, "/api/global")),
    )
    .await;
    let ok = statuses
        .iter()
        .filter(|r| r.status == 200 || r.status == 404)
        .count();
    assert_eq!(ok, 100, "global over {} instances", nodes.len());
    // Limits of two keys (in a cluster, keys in different slots): each client's own
    // limit, then the budget every caller shares. Exactly the shared budget is admitted,
    // and each refusal by the shared limit gave back what it took of its client's own.
    let body = json!({"endpoint": "/api/mixed", "limits": [
        {"name": "own", "algorithm": "fixed_window", "requests_per_window": 30, "window_seconds": 3600},
        {"name": "shared", "algorithm": "sliding_window", "requests_per_window": 50, "window_seconds": 3600, "key": "global"}]});
    let r = nodes[0].post("/admin/configs", &body.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    for node in nodes {
        until_served(node, "/api/mixed", "limits", &body["limits"]).await;
    }
    let clients = ["mixed-0", "mixed-1", "mixed-2", "mixed-3"];
    let statuses =
        join_all((0..300).map(|i| nodes[i % nodes.len()].get_as(clients[i % 4], "/api/mixed")))
            .await;
    let admitted = |r: &&common::Resp| r.status == 200 || r.status == 404;
    assert_eq!(
        statuses.iter().filter(admitted).count(),
        50,
        "two keys over {} instances",
        nodes.len()
    );
    for (i, client) in clients.iter().enumerate() {
        let own = statuses.iter().skip(i).step_by(4).filter(admitted).count() as u64;
        assert!(own <= 30, "{client}: {own}");
        // Asked of an instance the client used (its status lists what it used there).
        let stats = nodes[i % nodes.len()]
            .get(&format!("/admin/stats/{client}"))
            .await;
        let ep = &stats.body["status"]["endpoints"][0];
        assert_eq!(
            ep["remaining"],
            json!(30 - own),
            "{client}: {:?}",
            stats.body
        );
    }
    // Requests in flight, counted in Redis: exactly the cap is admitted whichever
    // instance asks, and a lease given back on another instance lets one more in.
    let body = json!({"endpoint": "/api/exports", "limits": [
        {"name": "exports", "algorithm": "concurrency", "max_in_flight": 5}]});
    let r = nodes[0].post("/admin/configs", &body.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    for node in nodes {
        until_served(node, "/api/exports", "limits", &r.body["limits"]).await;
    }
    let ask = json!({"client_id": "exporter", "path": "/api/exports"}).to_string();
    let answers = join_all((0..60).map(|i| nodes[i % nodes.len()].post("/v1/check", &ask))).await;
    let leases: Vec<&str> = answers
        .iter()
        .filter(|r| r.body["allowed"] == true)
        .map(|r| r.body["lease"].as_str().unwrap())
        .collect();
    assert_eq!(leases.len(), 5, "in flight over {} instances", nodes.len());
    let last = nodes.len() - 1;
    let released = nodes[last]
        .post("/v1/release", &json!({"lease": leases[0]}).to_string())
        .await;
    assert_eq!(released.body["released"], true, "{:?}", released.body);
    // Once: a retry on another instance gives nothing back.
    let again = nodes[0]
        .post("/v1/release", &json!({"lease": leases[0]}).to_string())
        .await;
    assert_eq!(again.body["released"], false, "{:?}", again.body);
    assert_eq!(nodes[0].post("/v1/check", &ask).await.body["allowed"], true);
    assert_eq!(
        nodes[0].post("/v1/check", &ask).await.body["allowed"],
        false
    );
}

#[actix_rt::test]
async fn instances_on_one_redis_admit_exactly_the_shared_limit() {
    let redis = RedisServer::start();
    let (_dir, nodes) = instances(3, &redis.url(), false, &PATIENT);
    exact_limit_across(&nodes).await;
}

/// Each thread that decides keeps one connection of its own, whatever the number of
/// shards: under steady load, and after Redis restarted, the connections Redis accepts
/// stop growing once every thread has reopened its own.
#[actix_rt::test]
async fn connections_stay_few_with_several_shards_and_after_a_restart() {
    let mut redis = RedisServer::start();
    let (_dir, nodes) = instances(1, &redis.url(), false, &["--shards", "3", "--workers", "2"]);
    until_connected(&nodes).await;
    let node = &nodes[0];
    node.config("/api/data", 1_000_000, 3600, "fixed_window")
        .await;
    until_served(node, "/api/data", "requests_per_window", &json!(1_000_000)).await;
    // The connections Redis accepted, less this question's own (redis-cli's).
    let received = |redis: &RedisServer| -> u64 {
        let info = redis.cli(&["info", "stats"]);
        let line = info
            .lines()
            .find(|l| l.starts_with("total_connections_received:"))
            .expect("INFO stats names the connections received");
        let n: u64 = line.split(':').nth(1).unwrap().trim().parse().unwrap();
        n - 1
    };
    let load = |round: usize| async move {
        let clients: Vec<String> = (0..60).map(|i| format!("c{round}-{i}")).collect();
        join_all(clients.iter().map(|c| node.get_as(c, "/api/data"))).await;
    };
    for restarted in [false, true] {
        if restarted {
            redis.kill();
            redis.restart();
            until_connected(&nodes).await;
        }
        // Every thread opens its own while these are decided (again as each handle's
        // connection comes up); then the count settles.
        let mut round = 0;
        let mut last = received(&redis);
        let settled = loop {
            for _ in 0..5 {
                load(round).await;
                round += 1;
            }
            let now = received(&redis);
            // (The question before this one was a connection too.)
            if now == last + 1 || round >= 100 {
                break now == last + 1;
            }
            last = now;
        };
        assert!(settled, "connections kept opening (restarted: {restarted})");
        if !restarted {
            for _ in 0..20 {
                load(round).await;
                round += 1;
            }
            assert_eq!(received(&redis), last + 2, "connections kept opening");
        }
        // One per shard, one per deciding thread, one for the configs, one to subscribe,
        // and this question's.
        let connected = redis.cli(&["info", "clients"]);
        let connected: u64 = (connected.lines())
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            connected <= 3 + (2 + 3) + 2 + 1 + 1,
            "{connected} connections"
        );
    }
}

#[actix_rt::test]
async fn instances_on_a_redis_cluster_admit_exactly_the_shared_limit() {
    let cluster = RedisCluster::start();
    let (_dir, nodes) = instances(2, &cluster.urls(), true, &PATIENT);
    exact_limit_across(&nodes).await;
    // The clients' keys really are spread over the masters.
    let holding = cluster
        .nodes
        .iter()
        .filter(|n| n.cli(&["dbsize"]).trim() != "0")
        .count();
    assert!(holding >= 2, "keys on {holding} of 3 masters");
}

#[actix_rt::test]
async fn a_config_change_on_one_instance_limits_the_other_within_a_second() {
    let redis = RedisServer::start();
    let (_dir, nodes) = instances(2, &redis.url(), false, &[]);
    let (a, b) = (&nodes[0], &nodes[1]);
    until_connected(&nodes).await;
    a.config("/api/data", 50, 60, "fixed_window").await;
    until_served(b, "/api/data", "requests_per_window", &json!(50)).await;
    assert_eq!(b.statuses("bob", "/api/data", 3).await, [200, 200, 200]);

    let r = a
        .put("/admin/configs/api/data", r#"{"requests_per_window": 4}"#)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let took = until_served(b, "/api/data", "requests_per_window", &json!(4)).await;
    assert!(
        took < Duration::from_secs(1),
        "B applied the change after {took:?}"
    );
    // The consumption recorded before the change still counts: one more, then 429.
    assert_eq!(b.statuses("bob", "/api/data", 2).await, [200, 429]);
    let limited = b.get_as("bob", "/api/data").await;
    assert_eq!(limited.header("x-ratelimit-limit"), Some("4"));

    // Both SQLite copies hold it, and a delete on B reaches A.
    let r = b.delete("/admin/configs/api/data").await;
    assert_eq!(r.status, 204);
    let started = Instant::now();
    while a.get("/admin/configs/api/data").await.status != 404 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "A kept the deleted config"
        );
        actix_rt::task::yield_now().await;
    }
    // A create racing on both instances: one wins, the other hears 409.
    let body =
        json!({"endpoint": "/race", "requests_per_window": 1, "window_seconds": 1}).to_string();
    let (x, y) = futures_util::join!(
        a.post("/admin/configs", &body),
        b.post("/admin/configs", &body)
    );
    let mut codes = [x.status.as_u16(), y.status.as_u16()];
    codes.sort();
    assert_eq!(codes, [201, 409]);
    // Ids are allocated cluster-wide: both instances show the same.
    until_served(a, "/race", "requests_per_window", &json!(1)).await;
    until_served(b, "/race", "requests_per_window", &json!(1)).await;
    assert_eq!(
        a.get("/admin/configs/race").await.body["id"],
        b.get("/admin/configs/race").await.body["id"]
    );
}

#[actix_rt::test]
async fn a_subscriber_on_one_instance_sees_the_decisions_of_the_others() {
    let redis = RedisServer::start();
    let (_dir, nodes) = instances(2, &redis.url(), false, &[]);
    let (a, b) = (&nodes[0], &nodes[1]);
    until_connected(&nodes).await;
    a.config("/api/data", 3, 60, "sliding_window").await;
    until_served(b, "/api/data", "requests_per_window", &json!(3)).await;
    let mut socket = connect(&b.url, "/ws/global").await;
    // Keep asking on A until B's subscriber hears about it (A only forwards events once
    // it has heard that B has a subscriber, within a second).
    let mut seen = (false, false, false);
    let started = Instant::now();
    let mut sent = 0;
    while !(seen.0 && seen.1 && seen.2) {
        assert!(started.elapsed() < WAIT, "saw {seen:?}");
        if sent < 6 {
            a.get_as("alice", "/api/data").await;
            sent += 1;
        }
        let m = next(&mut socket).await;
        match m["type"].as_str() {
            Some("request_processed") if m["client_id"] == "alice" && m["instance"] == "node-0" => {
                seen.0 = true
            }
            Some("rate_limit_exceeded")
                if m["client_id"] == "alice" && m["instance"] == "node-0" =>
            {
                seen.1 = true
            }
            // B's statistics count A's traffic and list both instances.
            Some("global_stats") => {
                let rows = m["data"]["instances"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if rows.len() == 2 && m["data"]["total_requests_24h"].as_u64() > Some(0) {
                    seen.2 = true;
                }
            }
            _ => {}
        }
    }
}

#[actix_rt::test]
async fn redis_down_follows_the_on_error_policy_without_waiting_then_recovers() {
    let mut redis = RedisServer::start();
    let (_dir, nodes) = instances(
        2,
        &redis.url(),
        false,
        &["--on-error", "deny", "--redis-timeout-ms", "50"],
    );
    until_connected(&nodes).await;
    nodes[0].config("/api/data", 20, 3600, "token_bucket").await;
    for node in &nodes {
        until_served(node, "/api/data", "requests_per_window", &json!(20)).await;
    }
    warm(&nodes).await;
    let (ok, _) = burst(&nodes, "before", "/api/data", 10).await;
    assert_eq!(ok, 10);

    // Mid-load: a stream of requests keeps going while Redis dies.
    let load = async {
        let mut slowest = Duration::ZERO;
        let mut denied = 0;
        for i in 0..200 {
            let started = Instant::now();
            let r = nodes[i % 2].get_as("during", "/api/data").await;
            slowest = slowest.max(started.elapsed());
            if r.status == 503 {
                assert_eq!(r.body["error"], "limiter_unavailable", "{:?}", r.body);
                assert_eq!(r.header("retry-after"), Some("1"));
                denied += 1;
            }
        }
        (slowest, denied)
    };
    let kill = async {
        actix_rt::task::yield_now().await;
        redis.kill();
    };
    let ((slowest, denied), ()) = futures_util::join!(load, kill);
    assert!(denied > 0, "no request saw the outage");
    // The timeout is 50 ms; with the deadline tick and a loaded CI machine, well under 1 s.
    assert!(
        slowest < Duration::from_millis(1000),
        "a request waited {slowest:?}"
    );
    for node in &nodes {
        let health = node.get("/health").await;
        assert_eq!(health.body["status"], "degraded", "{:?}", health.body);
        assert_eq!(health.body["redis"], "unreachable");
        // Send it no traffic, but do not restart it: Redis is what is down.
        let ready = node.get("/readyz").await;
        assert_eq!(ready.status, 503, "{:?}", ready.body);
        assert_eq!(ready.body["status"], "not_ready");
        assert!(
            ready.body["reasons"][0]
                .as_str()
                .unwrap()
                .starts_with("redis: unreachable"),
            "{:?}",
            ready.body
        );
        assert_eq!(node.get("/livez").await.status, 200);
        assert!(
            node.metric("ratewarden_redis_errors_total{kind=\"breaker_open\"}")
                .await
                > 0.0
        );
    }

    redis.restart();
    until_connected(&nodes).await;
    for node in &nodes {
        let ready = node.get("/readyz").await;
        assert_eq!(ready.status, 200, "ready again: {:?}", ready.body);
    }
    // Redis came back empty: a fresh shared budget, exact again across both instances.
    warm(&nodes).await;
    let (ok, limited) = burst(&nodes, "after", "/api/data", 60).await;
    assert_eq!((ok, limited), (20, 40));
    assert!(nodes[0].metric("ratewarden_redis_reconnects_total").await >= 1.0);
}

#[actix_rt::test]
async fn an_instance_is_ready_only_once_redis_answers_and_the_shared_configs_are_loaded() {
    let mut redis = RedisServer::start();
    redis.kill();
    let (_dir, nodes) = instances(1, &redis.url(), false, &[]);
    let node = &nodes[0];
    // Serving (alive), but not to be sent traffic: nothing shared has been loaded.
    assert_eq!(node.get("/livez").await.status, 200);
    let ready = node.get("/readyz").await;
    assert_eq!(ready.status, 503, "{:?}", ready.body);
    let reasons = ready.body["reasons"].to_string();
    assert!(
        reasons.contains("redis: unreachable")
            && reasons.contains("the shared configs have not been loaded from Redis yet"),
        "{reasons}"
    );

    redis.restart();
    let started = Instant::now();
    loop {
        let ready = node.get("/readyz").await;
        if ready.status == 200 {
            assert_eq!(ready.body["status"], "ready");
            break;
        }
        assert!(started.elapsed() < WAIT, "never ready: {:?}", ready.body);
        actix_rt::task::yield_now().await;
    }
}

#[actix_rt::test]
async fn a_flooding_client_is_refused_without_asking_redis_until_it_is_reset_or_its_limit_raised() {
    let redis = RedisServer::start();
    let (_dir, nodes) = instances(2, &redis.url(), false, &[]);
    until_connected(&nodes).await;
    let body = json!({"endpoint": "/api/flood", "requests_per_window": 5,
                      "window_seconds": 3600, "algorithm": "fixed_window"});
    let r = nodes[0].post("/admin/configs", &body.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    for node in &nodes {
        until_served(node, "/api/flood", "algorithm", &json!("fixed_window")).await;
    }
    let local = "ratewarden_redis_refused_locally_total";
    // Exactly the limit, across both instances; then every request refused, all but each
    // instance's first refusal without a round trip, saying the same as Redis would.
    let mut statuses = Vec::new();
    for i in 0..60 {
        statuses.push(nodes[i % 2].get_as("flooder", "/api/flood").await.status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s != 429).count(),
        5,
        "{statuses:?}"
    );
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    for node in &nodes {
        assert!(
            node.metric(local).await >= 26.0,
            "{}",
            node.metric(local).await
        );
    }
    let first = nodes[0].get_as("flooder", "/api/flood").await;
    assert_eq!(first.status, 429);
    // When the fixed window ends, as both instances say.
    let retry = first.header_u64("retry-after");
    let other = nodes[1].get_as("flooder", "/api/flood").await;
    assert!((1..=3600).contains(&retry), "{retry}");
    assert!(other.header_u64("retry-after").abs_diff(retry) <= 1);
    assert_eq!(first.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(first.body["error"], "rate_limit_exceeded");
    // Reset on one instance: the other forgets its refusal once it hears, long before
    // the window ends, and counts from zero in Redis.
    let r = nodes[1].delete("/admin/clients/flooder/state").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    until_admitted(&nodes[0], "flooder", "/api/flood").await;
    for _ in 0..4 {
        let r = nodes[0].get_as("flooder", "/api/flood").await;
        assert_ne!(r.status, 429);
    }
    let r = nodes[0].get_as("flooder", "/api/flood").await;
    assert_eq!(r.status, 429, "exactly 5 again after the reset");
    let before = nodes[0].metric(local).await;
    assert_eq!(nodes[0].get_as("flooder", "/api/flood").await.status, 429);
    assert_eq!(nodes[0].metric(local).await, before + 1.0);
    // A raised limit on the other instance: this one asks Redis again as soon as it
    // serves the new config, and admits up to the new limit.
    let r = nodes[1]
        .put(
            "/admin/configs/api/flood",
            &json!({"requests_per_window": 7}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    until_served(&nodes[0], "/api/flood", "requests_per_window", &json!(7)).await;
    let admitted = {
        let mut n = 0;
        for _ in 0..5 {
            n += usize::from(nodes[0].get_as("flooder", "/api/flood").await.status != 429);
        }
        n
    };
    assert_eq!(admitted, 2, "7 - 5");
}

/// Usage reported to one instance is the balance every instance sees, and a check id
/// one instance gave is reconciled by another, once.
#[actix_rt::test]
async fn usage_reported_to_one_instance_is_the_balance_of_every_instance() {
    let redis = RedisServer::start();
    let (_dir, nodes) = instances(2, &redis.url(), false, &PATIENT);
    let (a, b) = (&nodes[0], &nodes[1]);
    until_connected(&nodes).await;
    let body = json!({"endpoint": "/llm/*", "limits": [{"name": "tokens", "unit": "tokens",
        "algorithm": "sliding_window", "requests_per_window": 1000, "window_seconds": 3600}]});
    assert_eq!(
        a.post("/admin/configs", &body.to_string()).await.status,
        201
    );
    until_served(b, "/llm/*", "endpoint", &json!("/llm/*")).await;
    let ask = |body: Value| body.to_string();
    let left = |r: &common::Resp| r.body["limits"][0]["remaining"].as_u64();

    let r = a
        .post(
            "/v1/report",
            &ask(json!({"client_id": "u", "path": "/llm/x", "cost": 700})),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), left(&r)),
        (200, Some(300)),
        "{:?}",
        r.body
    );
    let peek = json!({"client_id": "u", "path": "/llm/x", "peek": true});
    let r = b.post("/v1/check", &ask(peek.clone())).await;
    assert_eq!(r.body["remaining"], 300, "{:?}", r.body);

    let r = b
        .post(
            "/v1/check",
            &ask(json!({"client_id": "u", "path": "/llm/x", "estimate": 200})),
        )
        .await;
    assert_eq!(r.body["remaining"], 100, "{:?}", r.body);
    let id = r.body["check_id"].as_str().expect("a check id").to_owned();
    let reconcile = json!({"client_id": "u", "path": "/llm/x", "cost": 50, "check_id": id});
    let r = a.post("/v1/report", &ask(reconcile.clone())).await;
    assert_eq!(
        (r.status.as_u16(), &r.body["refunded"]),
        (200, &json!(150)),
        "{:?}",
        r.body
    );
    assert_eq!(left(&r), Some(250));
    let r = b.post("/v1/report", &ask(reconcile)).await;
    assert_eq!(
        (r.status.as_u16(), &r.body["field"]),
        (422, &json!("check_id"))
    );
    assert_eq!(b.post("/v1/check", &ask(peek)).await.body["remaining"], 250);
}

/// Waits until `node` serves exactly `want` (another instance's change is announced).
async fn until_serving(node: &Binary, want: &[(&str, u64)]) {
    let want = owned(want);
    let what = format!("{} serves {want:?}", node.url);
    eventually(&what, || async {
        endpoints(&node.get("/admin/configs").await.body) == want
    })
    .await;
}

#[actix_rt::test]
async fn instances_given_one_config_file_converge_on_it_whichever_reloads_first() {
    let redis = RedisServer::start();
    // Configs made through the API before the file takes charge: the file declares every
    // config, so the ones it does not name go.
    let (_dir, early) = instances(1, &redis.url(), false, &[]);
    until_connected(&early).await;
    early[0].config("/legacy", 5, 60, "fixed_window").await;
    drop(early);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ratewarden.toml");
    let first = "[[config]]\nendpoint = \"/api/*\"\nrequests_per_window = 2\nwindow_seconds = 60\n";
    std::fs::write(&file, first).unwrap();
    let path = file.to_str().unwrap();
    let (_dirs, mut nodes) = instances(2, &redis.url(), false, &["--config-file", path]);
    // Both apply it to the shared configs once they have read them: the first changes
    // them (/api/* created, /legacy deleted), the second finds nothing left to change.
    let mut changed: Vec<String> = (nodes.iter_mut())
        .map(|node| node.wait_for("applied: 1 configs"))
        .map(|line| line.rsplit(", ").next().unwrap().to_owned())
        .collect();
    changed.sort();
    assert_eq!(changed, ["0 changed", "2 changed"]);
    for node in &nodes {
        until_serving(node, &[("*", 100), ("/api/*", 2)]).await;
    }

    // The file changes; one instance is told (a real SIGHUP): both serve it.
    let second = "[[config]]\nendpoint = \"*\"\nrequests_per_window = 500\nwindow_seconds = 60\n\n\
                  [[config]]\nendpoint = \"/new\"\nrequests_per_window = 1\nwindow_seconds = 1\n";
    std::fs::write(&file, second).unwrap();
    nodes[1].signal("-HUP");
    nodes[1].wait_for("applied: 2 configs, 3 changed");
    for node in &nodes {
        until_serving(node, &[("*", 500), ("/new", 1)]).await;
    }
    let version = redis.cli(&["get", "rw:{config}:version"]);
    // The other reloads it too, later: nothing left to change.
    nodes[0].signal("-HUP");
    nodes[0].wait_for("applied: 2 configs, 0 changed");
    assert_eq!(redis.cli(&["get", "rw:{config}:version"]), version);
    // The history of the instance that applied it says the file made the change; the
    // other's, that it came from the cluster.
    for (node, source) in [(&nodes[1], "file"), (&nodes[0], "cluster")] {
        let history = node.get("/admin/configs/history?endpoint=/new").await;
        assert_eq!(history.body[0]["source"], source, "{:?}", history.body);
    }

    // The file is in charge on every instance: the API's writes are refused.
    let r = nodes[0]
        .put("/admin/configs/new", r#"{"requests_per_window": 9}"#)
        .await;
    assert_eq!(
        (r.status.as_u16(), &r.body["error"]),
        (409, &json!("conflict"))
    );
    // An invalid file changes nothing, anywhere.
    std::fs::write(
        &file,
        "[[config]]\nendpoint = \"/x\"\nrequests_per_window = 0\nwindow_seconds = 1\n",
    )
    .unwrap();
    nodes[0].signal("-HUP");
    nodes[0].wait_for("config file refused");
    assert_eq!(redis.cli(&["get", "rw:{config}:version"]), version);
    for node in &nodes {
        until_serving(node, &[("*", 500), ("/new", 1)]).await;
    }
}
