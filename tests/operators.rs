//! Operators' features over a real server: shadow mode, per-client overrides, resetting
//! one client, top offenders, and config history with rollback.

mod common;

use common::TestServer;
use common::ws::{connect, next_of};
use futures_util::future::join_all;
use serde_json::{Value, json};

async fn create(s: &TestServer, body: Value) -> Value {
    let r = s.post("/admin/configs", &body.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.body
}

#[actix_rt::test]
async fn shadow_mode_decides_and_reports_but_never_refuses() {
    let s = TestServer::start().await;
    let made = create(
        &s,
        json!({"endpoint": "/api/*", "requests_per_window": 2, "window_seconds": 60,
               "algorithm": "fixed_window", "mode": "shadow"}),
    )
    .await;
    assert_eq!(made["mode"], "shadow");
    let mut global = connect(&s.url, "/ws/global").await;

    let mut seen = Vec::new();
    for _ in 0..5 {
        let r = s.get_as("shadowed", "/api/data").await;
        assert_eq!(r.status, 200, "shadow mode never refuses");
        assert_eq!(r.header_u64("x-ratelimit-limit"), 2);
        assert!(r.header("retry-after").is_none(), "nothing to retry");
        seen.push(r.header_u64("x-ratelimit-remaining"));
    }
    assert_eq!(seen, [1, 0, 0, 0, 0]);
    let series = |outcome: &str| {
        format!("ratewarden_decisions_total{{endpoint=\"/api/*\",outcome=\"{outcome}\"}}")
    };
    assert_eq!(s.metric(&series("allowed")).await, 2.0);
    assert_eq!(s.metric(&series("shadow_limited")).await, 3.0);
    assert_eq!(s.metric(&series("limited")).await, 0.0);

    // The feed shows a would-be block as a processed request that says so.
    let r = s.get_as("shadowed", "/api/data").await;
    assert_eq!(r.status, 200);
    let event = loop {
        let e = next_of(&mut global, "request_processed").await;
        assert_eq!(e["shadow"], true, "{e}");
        if e["would_limit"] == true {
            break e;
        }
    };
    assert_eq!(
        (&event["client_id"], &event["would_limit"], &event["shadow"]),
        (&json!("shadowed"), &json!(true), &json!(true))
    );
    // Counted as let through: nothing was blocked.
    let stats = s.get("/admin/stats/shadowed").await.body;
    assert_eq!(stats["status"]["blocked_requests"], 0);
    assert_eq!(stats["status"]["endpoints"][0]["shadow"], true);

    // The decision API and forward-auth say the same.
    let check = s
        .post(
            "/v1/check",
            &json!({"client_id": "shadowed", "path": "/api/x"}).to_string(),
        )
        .await;
    assert_eq!(
        (&check.body["allowed"], &check.body["would_limit"]),
        (&json!(true), &json!(true))
    );
    let auth = s
        .send(
            "GET",
            "/v1/forward-auth",
            &[("X-Client-ID", "shadowed"), ("X-Original-URI", "/api/x")],
            None,
        )
        .await;
    assert_eq!(auth.status, 200);

    // Enforced again, the same client is refused at once.
    let r = s
        .put("/admin/configs/api/*", r#"{"mode": "enforce"}"#)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = s.get_as("shadowed", "/api/data").await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
}

#[actix_rt::test]
async fn overrides_beat_the_base_limit_exactly_and_concurrently() {
    let s = TestServer::start().await;
    create(
        &s,
        json!({"endpoint": "/api/*", "requests_per_window": 5, "window_seconds": 3600,
               "algorithm": "sliding_window",
               "overrides": [
                   {"client": "partner-*", "requests_per_window": 50},
                   {"client": "partner-gold", "requests_per_window": 80},
                   {"client": "internal-*", "requests_per_window": 3, "window_seconds": 7200}]}),
    )
    .await;
    let count =
        |all: &[common::Resp], status: u16| all.iter().filter(|r| r.status == status).count();

    let all = join_all((0..200).map(|_| s.get_as("partner-acme", "/api/data"))).await;
    assert_eq!((count(&all, 200), count(&all, 429)), (50, 150));
    let all = join_all((0..200).map(|_| s.get_as("partner-gold", "/api/data"))).await;
    assert_eq!(count(&all, 200), 80, "the exact name beats the prefix");
    let all = join_all((0..20).map(|_| s.get_as("someone", "/api/data"))).await;
    assert_eq!(count(&all, 200), 5, "everyone else has the base limit");
    let r = s.get_as("internal-billing", "/api/data").await;
    assert_eq!(r.header_u64("x-ratelimit-limit"), 3);
    assert!(
        r.header("ratelimit-policy")
            .unwrap()
            .ends_with(";q=3;w=7200"),
        "{:?}",
        r.header("ratelimit-policy")
    );

    let stats = s.get("/admin/stats/partner-acme").await.body;
    let endpoint = &stats["status"]["endpoints"][0];
    assert_eq!(
        (
            &endpoint["endpoint"],
            &endpoint["override"],
            &endpoint["limit"],
            &endpoint["remaining"]
        ),
        (&json!("/api/*"), &json!("partner-*"), &json!(50), &json!(0))
    );
    let plain = s.get("/admin/stats/someone").await.body;
    assert!(plain["status"]["endpoints"][0].get("override").is_none());

    // Raising an override applies to the next request and keeps what was consumed.
    let r = s
        .put(
            "/admin/configs/api/*",
            r#"{"overrides": [{"client": "partner-*", "requests_per_window": 52}]}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["overrides"][0]["requests_per_window"], 52);
    assert_eq!(
        s.statuses("partner-acme", "/api/data", 3).await,
        [200, 200, 429]
    );
    // partner-gold lost its own override: the prefix now applies, and it has used 80.
    assert_eq!(s.statuses("partner-gold", "/api/data", 1).await, [429]);
}

#[actix_rt::test]
async fn a_reset_gives_one_client_its_quota_back_in_memory_and_in_redis() {
    let redis = common::redis::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = |backend: &str| {
        let path = dir.path().join(format!("{backend}.db"));
        ratewarden::store::sqlite::DatabaseUrl::File(path.to_string_lossy().into_owned())
    };
    for backend in ["memory", "redis"] {
        let url = redis.url();
        let (file, in_redis) = (file(backend), backend == "redis");
        let s = TestServer::with(move |s| {
            s.database = file;
            if in_redis {
                s.redis_url = Some(url.parse().unwrap());
            }
        })
        .await;
        if in_redis {
            s.until_redis_connected().await;
        }
        let (api, path) = ("/api/*", "/api/data");
        s.config(api, 3, 3600, "fixed_window").await;
        assert_eq!(s.statuses("heavy", path, 4).await, [200, 200, 200, 429]);
        assert_eq!(s.statuses("other", path, 1).await, [200]);
        s.registries.flush_all().await.unwrap();
        let mut feed = connect(&s.url, "/ws/heavy").await;

        // Bad requests change nothing.
        for (target, status) in [
            ("/admin/clients/has%20space/state".to_owned(), 400),
            (
                "/admin/clients/heavy/state?endpoint=/nothing".to_owned(),
                404,
            ),
            ("/admin/clients/heavy/state?endpoint=nope".to_owned(), 400),
            ("/admin/clients/heavy/state?colour=red".to_owned(), 400),
        ] {
            let r = s.delete(&target).await;
            assert_eq!(r.status, status, "{target}: {:?}", r.body);
            assert!(r.body["error"].is_string(), "{target}");
        }
        assert_eq!(s.statuses("heavy", path, 1).await, [429]);

        let r = s
            .delete(&format!("/admin/clients/heavy/state?endpoint={api}"))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(
            r.body["reset"],
            json!([{"endpoint": api, "limit": 3, "remaining": 3}])
        );
        let event = next_of(&mut feed, "client_reset").await;
        assert_eq!(event["endpoints"], json!([api]));
        let r = s.get_as("heavy", path).await;
        assert_eq!(
            (r.status.as_u16(), r.header_u64("x-ratelimit-remaining")),
            (200, 2),
            "{backend}: the whole quota is back"
        );
        // Nobody else's quota moved.
        let r = s.get_as("other", path).await;
        assert_eq!(r.header_u64("x-ratelimit-remaining"), 1, "{backend}");
        // Without `endpoint`, every config of the client is reset.
        assert_eq!(s.statuses("heavy", path, 3).await, [200, 200, 429]);
        let r = s.delete("/admin/clients/heavy/state").await;
        assert_eq!(r.status, 200);
        assert!(
            r.body["reset"].as_array().unwrap().len() >= 2,
            "{:?}",
            r.body
        );
        assert_eq!(s.statuses("heavy", path, 1).await, [200]);
        s.registries.flush_all().await.unwrap();
        s.stop().await;
    }
    // Persisted: a restart finds the reset state, not the exhausted one.
    let memory = file("memory");
    let s = TestServer::with(move |s| s.database = memory).await;
    let r = s.get_as("heavy", "/api/data").await;
    assert_eq!(
        (r.status.as_u16(), r.header_u64("x-ratelimit-remaining")),
        (200, 1)
    );
}

#[actix_rt::test]
async fn history_records_every_change_and_rollback_restores_the_exact_earlier_config() {
    let s = TestServer::start().await;
    let original = create(
        &s,
        json!({"endpoint": "/h/*", "requests_per_window": 7, "window_seconds": 70,
               "algorithm": "token_bucket", "burst_limit": 9, "refill_rate": 0.5,
               "overrides": [{"client": "vip", "requests_per_window": 70}]}),
    )
    .await;
    assert_eq!(
        s.put("/admin/configs/h/*", r#"{"requests_per_window": 8}"#)
            .await
            .status,
        200
    );
    let r = s
        .put(
            "/admin/configs/h/*",
            r#"{"algorithm": "fixed_window", "burst_limit": null, "mode": "shadow", "overrides": []}"#,
        )
        .await;
    assert_eq!(r.status, 200);
    s.config("/other", 1, 1, "fixed_window").await;

    let history = s.get("/admin/configs/history?endpoint=/h/*").await;
    assert_eq!(history.status, 200, "{:?}", history.body);
    let entries = history.body.as_array().unwrap();
    let actions: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["source"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [("updated", "api"), ("updated", "api"), ("created", "api")]
    );
    assert_eq!(entries[1]["before"]["requests_per_window"], 7);
    assert_eq!(entries[1]["after"]["requests_per_window"], 8);
    assert!(entries[2]["before"].is_null());
    let created = entries[2]["version"].as_i64().unwrap();
    assert!(entries[0]["version"].as_i64().unwrap() > created);
    let all = s.get("/admin/configs/history").await.body;
    assert_eq!(all[0]["endpoint"], "/other", "all configs, newest first");

    // Rolled back to the version its creation left: exactly that config again.
    let r = s
        .post(&format!("/admin/configs/h/*/rollback?to={created}"), "")
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let same = |v: &Value| {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("updated_at");
        v
    };
    assert_eq!(same(&r.body), same(&original));
    assert_eq!(
        same(&s.get("/admin/configs/h/*").await.body),
        same(&original)
    );
    let vip = s.get_as("vip", "/h/x").await;
    assert_eq!(
        vip.header_u64("x-ratelimit-limit"),
        70,
        "the override is back"
    );
    let latest = &s
        .get("/admin/configs/history?endpoint=/h/*&limit=1")
        .await
        .body[0];
    assert_eq!(
        (&latest["source"], &latest["action"]),
        (&json!("rollback"), &json!("updated"))
    );

    // Deleted, then rolled back: recreated as it was at that version.
    let shadow_version = entries[0]["version"].as_i64().unwrap();
    assert_eq!(s.delete("/admin/configs/h/*").await.status, 204);
    let r = s
        .post(
            &format!("/admin/configs/h/*/rollback?to={shadow_version}"),
            "",
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        (&r.body["mode"], &r.body["algorithm"]),
        (&json!("shadow"), &json!("fixed_window"))
    );
    // Rolling back to a deletion deletes.
    let deleted = s
        .get("/admin/configs/history?endpoint=/h/*&limit=2")
        .await
        .body[1]["version"]
        .as_i64()
        .unwrap();
    let r = s
        .post(&format!("/admin/configs/h/*/rollback?to={deleted}"), "")
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(s.get("/admin/configs/h/*").await.status, 404);

    // Bad input changes nothing.
    let before = s.get("/admin/configs").await.body;
    let other_version = all[0]["version"].as_i64().unwrap();
    for (target, status) in [
        (
            format!("/admin/configs/h/*/rollback?to={other_version}"),
            404,
        ),
        ("/admin/configs/h/*/rollback?to=abc".to_owned(), 400),
        ("/admin/configs/h/*/rollback".to_owned(), 400),
        ("/admin/configs/h/*/rollback?to=999999".to_owned(), 404),
        ("/admin/configs/h/*".to_owned(), 405),
    ] {
        let r = s.post(&target, "").await;
        assert_eq!(r.status, status, "{target}: {:?}", r.body);
    }
    for (target, status) in [
        ("/admin/configs/history?limit=0", 400),
        ("/admin/configs/history?limit=5000", 400),
        ("/admin/configs/history?endpoint=nope", 400),
        ("/admin/configs/history?colour=1", 400),
    ] {
        assert_eq!(s.get(target).await.status, status, "{target}");
    }
    assert_eq!(s.get("/admin/configs").await.body, before);
    // A config for the path /history is still reachable, percent-encoded.
    s.config("/history", 2, 2, "fixed_window").await;
    assert_eq!(
        s.get("/admin/configs/%68istory").await.body["endpoint"],
        "/history"
    );
}

#[actix_rt::test]
async fn top_offenders_rank_clients_by_blocked_and_by_allowed_within_the_window() {
    let s = TestServer::start().await;
    s.config("/api/*", 1, 3600, "fixed_window").await;
    s.statuses("aggressive", "/api/data", 6).await;
    s.statuses("busy", "/api/data", 3).await;
    s.statuses("calm", "/api/data", 1).await;
    let s = &s;
    let top = |q: &'static str| async move { s.get(&format!("/admin/top{q}")).await };
    let r = top("").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        (&r.body["by"], &r.body["window_minutes"]),
        (&json!("blocked"), &json!(5))
    );
    assert_eq!(
        r.body["clients"],
        json!([{"client_id": "aggressive", "count": 5}, {"client_id": "busy", "count": 2}])
    );
    assert_eq!(r.body["error_bound"], 0, "few clients: exact");
    let r = top("?by=allowed&limit=2").await;
    assert_eq!(
        r.body["clients"],
        json!([{"client_id": "aggressive", "count": 1}, {"client_id": "busy", "count": 1}])
    );
    // Ten minutes on, the last five hold nothing; the last hour still does.
    s.clock.advance(10 * 60 * ratewarden::clock::NANOS_PER_SEC);
    s.statuses("late", "/api/data", 2).await;
    assert_eq!(
        top("?window=5m").await.body["clients"],
        json!([{"client_id": "late", "count": 1}])
    );
    assert_eq!(
        top("?window=1h").await.body["clients"][0]["client_id"],
        "aggressive"
    );
    for bad in [
        "?by=loud",
        "?window=0m",
        "?window=61m",
        "?window=5",
        "?window=2h",
        "?limit=0",
        "?limit=101",
        "?colour=red",
    ] {
        let r = top(bad).await;
        assert_eq!(r.status, 400, "{bad}: {:?}", r.body);
        assert_eq!(r.body["error"], "invalid_query", "{bad}");
    }
}
