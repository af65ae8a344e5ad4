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
