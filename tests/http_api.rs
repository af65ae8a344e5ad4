//! Black-box tests of the HTTP contract (DESIGN.md section 4) over a real server on a
//! free port: demo endpoints, rate-limit headers, resolution, live config changes,
//! concurrency, the admin API and its statistics.

mod common;

use common::{T0, TestServer, counted_from};
use futures_util::future::join_all;
use ratewarden::clock::NANOS_PER_SEC;
use serde_json::json;

#[actix_rt::test]
async fn demo_endpoints_answer_with_their_json() {
    let s = TestServer::start().await;
    let r = s.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(r.body["timestamp"], "2027-01-15T08:00:00Z");
    assert!(r.body["message"].is_string());

    let r = s.get("/api/data").await;
    assert_eq!(r.status, 200);
    assert!(r.body["data"].is_object());

    let r = s.post("/api/submit", r#"{"a": [1, 2]}"#).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["received_data"], json!({"a": [1, 2]}));
    assert!(r.body["message"].is_string());

    let r = s.get("/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "healthy");
    assert_eq!(r.body["database"], "connected");
    // The health check is never limited.
    assert!(r.header("x-ratelimit-limit").is_none());
}

#[actix_rt::test]
async fn the_probes_answer_anyone_and_are_never_limited() {
    let s = TestServer::with(|s| s.admin_token = Some("s3cret".to_owned())).await;
    // The admin token guards /metrics, but a probe needs none.
    assert_eq!(s.get("/metrics").await.status, 401);
    for (path, status) in [("/livez", "alive"), ("/readyz", "ready")] {
        for _ in 0..3 {
            let r = s.get_as("prober", path).await;
            assert_eq!(r.status, 200, "{path}: {:?}", r.body);
            assert_eq!(r.body["status"], status);
            assert_eq!(r.body["timestamp"], "2027-01-15T08:00:00Z");
            assert!(r.body.get("reasons").is_none(), "{:?}", r.body);
            assert!(r.header("x-ratelimit-limit").is_none(), "{path} is limited");
        }
        assert_eq!(s.post(path, "").await.status, 405);
    }
    // Probing used none of the prober's budget.
    let r = s.get_as("prober", "/api/data").await;
    assert_eq!(r.header_u64("x-ratelimit-remaining"), 99);
}

#[actix_rt::test]
async fn allowed_responses_carry_every_rate_limit_header() {
    let s = TestServer::start().await;
    let r = s.get_as("alice", "/api/data").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header_u64("x-ratelimit-limit"), 100);
    assert_eq!(r.header_u64("x-ratelimit-remaining"), 99);
    // Sliding window of an hour: fully restored an hour after this request is counted
    // from (the end of its 7.032 s granule, 5.304 s after T0), rounded up.
    let restored = counted_from(T0, 3600) + 3600 * NANOS_PER_SEC;
    assert_eq!(restored - T0, 3_605_304_000_000);
    assert_eq!(r.header_u64("x-ratelimit-reset"), T0 / NANOS_PER_SEC + 3606);
    assert_eq!(r.header("ratelimit-policy"), Some("\"*\";q=100;w=3600"));
    assert_eq!(r.header("ratelimit"), Some("\"*\";r=99;t=3606"));
    assert!(r.header("retry-after").is_none());
}

#[actix_rt::test]
async fn blocks_the_101st_request_of_the_default_policy_with_a_clear_429() {
    let s = TestServer::start().await;
    let statuses = s.statuses("bob", "/api/data", 100).await;
    assert!(statuses.iter().all(|&c| c == 200));
    s.clock.advance(60 * NANOS_PER_SEC);
    let r = s.get_as("bob", "/api/data").await;
    assert_eq!(r.status, 429);
    // The 100 requests count from the end of their granule, 5.304 s after T0: the next
    // is allowed 3545.304 s from now, rounded up.
    let allowed_in = counted_from(T0, 3600) + 3600 * NANOS_PER_SEC - (T0 + 60 * NANOS_PER_SEC);
    assert_eq!(allowed_in, 3_545_304_000_000);
    assert_eq!(r.header_u64("retry-after"), 3546);
    assert_eq!(r.header_u64("x-ratelimit-remaining"), 0);
    assert_eq!(r.header("ratelimit"), Some("\"*\";r=0;t=3546"));
    let b = &r.body;
    assert_eq!(b["error"], "rate_limit_exceeded");
    assert_eq!(b["client_id"], "bob");
    assert_eq!(b["endpoint"], "*");
    assert_eq!(
        (b["limit"].as_u64(), b["remaining"].as_u64()),
        (Some(100), Some(0))
    );
    assert_eq!(b["retry_after"], 3546);
    // The instant rounded up, as X-RateLimit-Reset: never earlier than the truth.
    assert_eq!(b["reset_time"], "2027-01-15T09:00:06Z");
    assert!(b["message"].as_str().unwrap().contains("Retry in 3546 s"));

    // Another client has its own budget; the same client is allowed once the oldest
    // request leaves the window, exactly when the decision said.
    assert_eq!(s.get_as("carol", "/api/data").await.status, 200);
    s.clock.advance(allowed_in - 1);
    assert_eq!(s.get_as("bob", "/api/data").await.status, 429);
    s.clock.advance(1);
    assert_eq!(s.get_as("bob", "/api/data").await.status, 200);
}

#[actix_rt::test]
async fn a_monthly_quota_resets_at_midnight_utc_on_the_first() {
    let s = TestServer::start().await;
    // 2028-02-29T23:00:00Z, the leap day's last hour: one left in February.
    s.clock.set(1_835_478_000 * NANOS_PER_SEC);
    let body = r#"{"endpoint": "/api/*", "requests_per_window": 2,
                   "algorithm": "fixed_window", "calendar": "month"}"#;
    let created = s.post("/admin/configs", body).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.body["calendar"], "month");
    assert_eq!(created.body["window_seconds"], 2_592_000);
    assert_eq!(s.statuses("maud", "/api/data", 2).await, [200, 200]);
    let r = s.get_as("maud", "/api/data").await;
    assert_eq!(r.status, 429);
    // Exactly until March 1st, 00:00 UTC: an hour.
    assert_eq!(r.header_u64("retry-after"), 3600);
    assert_eq!(r.header("ratelimit"), Some("\"/api/*\";r=0;t=3600"));
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"/api/*\";q=2;w=2592000")
    );
    assert_eq!(r.header_u64("x-ratelimit-reset"), 1_835_481_600);
    assert_eq!(r.body["reset_time"], "2028-03-01T00:00:00Z");
    let message = r.body["message"].as_str().unwrap();
    assert!(message.contains("2 requests per month (UTC)"), "{message}");
    s.clock.advance(3600 * NANOS_PER_SEC - 1);
    assert_eq!(s.get_as("maud", "/api/data").await.status, 429);
    s.clock.advance(1);
    let r = s.get_as("maud", "/api/data").await;
    assert_eq!(r.status, 200);
    // March has 31 days: the next reset is April 1st.
    assert_eq!(r.header_u64("x-ratelimit-remaining"), 1);
    assert_eq!(r.header_u64("x-ratelimit-reset"), 1_838_160_000);
    assert_eq!(r.header("ratelimit"), Some("\"/api/*\";r=1;t=2678400"));
}

#[actix_rt::test]
async fn a_refusal_is_problem_details_when_the_client_asks_for_them() {
    let s = TestServer::start().await;
    s.config("/api/*", 1, 60, "fixed_window").await;
    assert_eq!(s.statuses("pd", "/api/data", 1).await, [200]);
    let problem = [
        ("X-Client-ID", "pd"),
        ("Accept", "application/json;q=0.5, application/problem+json"),
    ];
    let r = s.send("GET", "/api/data", &problem, None).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let b = &r.body;
    assert_eq!(
        b["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(
        (&b["status"], &b["violated-policies"]),
        (&json!(429), &json!(["/api/*"]))
    );
    assert!(
        b["detail"]
            .as_str()
            .unwrap()
            .contains("1 requests per 60 s"),
        "{b}"
    );
    // The plain answer's fields are there too, and its headers.
    assert_eq!(
        (&b["error"], &b["client_id"]),
        (&json!("rate_limit_exceeded"), &json!("pd"))
    );
    assert!(r.header("retry-after").is_some() && r.header("ratelimit").is_some());
    // Not asked (or refused with q=0): the plain JSON error.
    for accept in [
        "application/json",
        "application/problem+json;q=0",
        "application/problem+json; Q = 0",
        "*/*",
    ] {
        let r = s
            .send(
                "GET",
                "/api/data",
                &[("X-Client-ID", "pd"), ("Accept", accept)],
                None,
            )
            .await;
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "{accept}"
        );
        assert!(r.body.get("type").is_none(), "{accept}");
    }
}

#[actix_rt::test]
async fn a_config_counts_per_its_key_global_ip_or_header() {
    let s = TestServer::start().await;
    let create = |endpoint: &str, key: &str, limit: u64| {
        format!(
            r#"{{"endpoint": "{endpoint}", "requests_per_window": {limit}, "window_seconds": 60, "key": "{key}"}}"#
        )
    };
    // Global: one budget shared by every caller.
    let r = s
        .post("/admin/configs", &create("/api/data", "global", 3))
        .await;
    assert_eq!(
        (r.status.as_u16(), &r.body["key"]),
        (201, &json!("global")),
        "{:?}",
        r.body
    );
    assert_eq!(s.statuses("alice", "/api/data", 2).await, [200, 200]);
    let r = s.get_as("bob", "/api/data").await;
    assert_eq!(
        (r.status.as_u16(), r.header_u64("x-ratelimit-remaining")),
        (200, 0)
    );
    assert_eq!(s.statuses("carol", "/api/data", 1).await, [429]);
    assert_eq!(
        s.get_as("carol", "/api/data").await.body["client_id"],
        "(global)"
    );

    // The global budget is looked at, and reset, under its key value.
    let r = s.get("/admin/stats/(global)").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(s.delete("/admin/clients/(global)/state").await.status, 200);
    assert_eq!(s.statuses("carol", "/api/data", 1).await, [200]);
    s.delete("/admin/clients/(global)/state").await;

    // IP: a forged or changing X-Client-ID does not escape it (a malformed one is still
    // a 400 that counts nothing).
    s.put(
        "/admin/configs/api/data",
        r#"{"key": "ip", "requests_per_window": 2}"#,
    )
    .await;
    let mut seen = Vec::new();
    for id in ["a", "c d", "b", "c"] {
        let r = s
            .send("GET", "/api/data", &[("X-Client-ID", id)], None)
            .await;
        seen.push(r.status.as_u16());
    }
    assert_eq!(seen, [200, 400, 200, 429]);
    let r = s
        .send("GET", "/api/data", &[("X-Client-ID", "z")], None)
        .await;
    assert_eq!(r.body["client_id"], "127.0.0.1");

    // A header: each tenant has its own budget; no header is the empty tenant; a value
    // that cannot be a key is a 400 that counts nothing.
    s.put(
        "/admin/configs/api/data",
        r#"{"key": "header:X-Tenant", "requests_per_window": 2}"#,
    )
    .await;
    let tenant = |t: &'static str| [("X-Tenant", t), ("X-Client-ID", "same")];
    for (headers, expected) in [
        (&tenant("acme")[..], 200),
        (&tenant("acme")[..], 200),
        (&tenant("acme")[..], 429),
        (&tenant("beta")[..], 200),
        (&[][..], 200),
        (&[][..], 200),
        (&[][..], 429),
    ] {
        let r = s.send("GET", "/api/data", headers, None).await;
        assert_eq!(r.status.as_u16(), expected, "{headers:?}");
    }
    let r = s
        .send("GET", "/api/data", &[("X-Tenant", &"x".repeat(129))], None)
        .await;
    assert_eq!(
        (r.status.as_u16(), &r.body["error"]),
        (400, &json!("invalid_key"))
    );
    // A tenant's budget is looked at under its key value.
    let r = s.get("/admin/stats/(x-tenant)acme").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = s.get("/admin/configs/api/data").await;
    assert_eq!(r.body["key"], "header:x-tenant");

    // The decision API is told the address and headers of the original request.
    let check = |body: &'static str| s.post("/v1/check", body);
    let r =
        check(r#"{"client_id": "u", "path": "/api/data", "headers": {"x-tenant": "beta"}}"#).await;
    assert_eq!(
        (r.status.as_u16(), &r.body["allowed"]),
        (200, &json!(true)),
        "{:?}",
        r.body
    );
    let r =
        check(r#"{"client_id": "u", "path": "/api/data", "headers": {"X-TENANT": "beta"}}"#).await;
    assert_eq!(
        r.body["allowed"], false,
        "beta's second of 2 was the route's"
    );
    s.put("/admin/configs/api/data", r#"{"key": "ip"}"#).await;
    let r = check(r#"{"client_id": "u", "path": "/api/data"}"#).await;
    assert_eq!(
        (r.status.as_u16(), &r.body["field"]),
        (422, &json!("ip")),
        "{:?}",
        r.body
    );
    let r = check(r#"{"client_id": "u", "path": "/api/data", "ip": "192.0.2.9"}"#).await;
    assert_eq!(r.body["allowed"], true, "{:?}", r.body);
    let r = check(r#"{"client_id": "u", "path": "/api/data", "ip": "nope"}"#).await;
    assert_eq!((r.status.as_u16(), &r.body["field"]), (422, &json!("ip")));
    // Counted per address: a check needs no client id (one given is still checked).
    let r = check(r#"{"path": "/api/data", "ip": "192.0.2.9"}"#).await;
    assert_eq!(
        (r.status.as_u16(), &r.body["allowed"]),
        (200, &json!(true)),
        "{:?}",
        r.body
    );
    let r = check(r#"{"client_id": "a b", "path": "/api/data", "ip": "192.0.2.9"}"#).await;
    assert_eq!(
        (r.status.as_u16(), &r.body["field"]),
        (422, &json!("client_id"))
    );
    // Under a config that counts per client, it is required, and named.
    let r = check(r#"{"path": "/other", "ip": "192.0.2.9"}"#).await;
    assert_eq!(
        (r.status.as_u16(), &r.body["field"]),
        (422, &json!("client_id")),
        "{:?}",
        r.body
    );
    let r =
        check(r#"{"client_id": "u", "path": "/api/data", "headers": {"a": "1", "A": "2"}}"#).await;
    assert_eq!(
        (r.status.as_u16(), &r.body["field"]),
        (422, &json!("headers"))
    );
    // Under an ip key, an override names an address prefix.
    let r = s
        .put(
            "/admin/configs/api/data",
            r#"{"overrides": [{"client": "127.0.0.*", "requests_per_window": 7}]}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = s.get_as("anyone", "/api/data").await;
    assert_eq!(r.header_u64("x-ratelimit-limit"), 7);
}

#[actix_rt::test]
async fn keys_by_peer_ip_without_a_client_header() {
    let s = TestServer::start().await;
    s.config("/ip", 1, 60, "fixed_window").await;
    assert_eq!(s.get("/ip").await.status, 404);
    let r = s.get("/ip").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.body["client_id"], "127.0.0.1");
    // Unknown paths are limited, then answered 404 with a JSON error.
    assert_eq!(s.get_as("x", "/ip").await.body["error"], "not_found");
}

#[actix_rt::test]
async fn the_client_header_can_be_ignored() {
    let s = TestServer::with(|c| {
        c.client_id_header = ratewarden::settings::ClientIdHeader(None);
    })
    .await;
    s.config("/x", 1, 60, "fixed_window").await;
    assert_eq!(s.get_as("a", "/x").await.status, 404);
    let r = s.get_as("b", "/x").await;
    assert_eq!(r.status, 429, "a spoofed id must not buy a new budget");
    assert_eq!(r.body["client_id"], "127.0.0.1");
}

#[actix_rt::test]
async fn resolves_exact_then_prefix_then_default_and_shares_prefix_budgets() {
    let s = TestServer::start().await;
    s.config("/api/*", 2, 60, "fixed_window").await;
    s.config("/api/data", 5, 60, "sliding_window").await;
    let r = s.get_as("c", "/api/data").await;
    assert_eq!(r.header("ratelimit-policy"), Some("\"/api/data\";q=5;w=60"));
    // /api/x and /api/y share the /api/* budget of two.
    assert_eq!(
        s.get_as("c", "/api/x")
            .await
            .header_u64("x-ratelimit-remaining"),
        1
    );
    assert_eq!(
        s.get_as("c", "/api/y")
            .await
            .header_u64("x-ratelimit-remaining"),
        0
    );
    assert_eq!(s.get_as("c", "/api/x").await.status, 429);
    assert_eq!(s.get_as("c", "/api").await.status, 429);
    // Elsewhere the default applies.
    assert_eq!(
        s.get_as("c", "/other")
            .await
            .header_u64("x-ratelimit-limit"),
        100
    );
    assert_eq!(
        s.get_as("c", "/apix").await.header_u64("x-ratelimit-limit"),
        100
    );
}

#[actix_rt::test]
async fn config_changes_apply_to_the_very_next_request() {
    let s = TestServer::start().await;
    s.config("/api/data", 3, 60, "sliding_window").await;
    assert_eq!(s.statuses("d", "/api/data", 2).await, vec![200, 200]);
    // Lower the limit: the two recorded requests still count.
    let r = s
        .put("/admin/configs/api/data", r#"{"requests_per_window": 2}"#)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["requests_per_window"], 2);
    assert_eq!(r.body["window_seconds"], 60, "a PUT merges");
    assert_eq!(s.get_as("d", "/api/data").await.status, 429);
    // Raise it: allowed again at once.
    s.put("/admin/configs/api/data", r#"{"requests_per_window": 10}"#)
        .await;
    assert_eq!(
        s.get_as("d", "/api/data")
            .await
            .header_u64("x-ratelimit-remaining"),
        7
    );
    // A new algorithm starts fresh state.
    s.put(
        "/admin/configs/api/data",
        r#"{"algorithm": "token_bucket", "burst_limit": 4}"#,
    )
    .await;
    let r = s.get_as("d", "/api/data").await;
    assert_eq!(
        (
            r.header_u64("x-ratelimit-limit"),
            r.header_u64("x-ratelimit-remaining")
        ),
        (4, 3)
    );
    // Deactivated: not limited at all, no headers.
    s.put("/admin/configs/api/data", r#"{"is_active": false}"#)
        .await;
    let r = s.get_as("d", "/api/data").await;
    assert_eq!(r.status, 200);
    assert!(r.header("x-ratelimit-limit").is_none());
    // Deleted: the default applies again.
    assert_eq!(s.delete("/admin/configs/api/data").await.status, 204);
    assert_eq!(
        s.get_as("d", "/api/data")
            .await
            .header_u64("x-ratelimit-limit"),
        100
    );
}

#[actix_rt::test]
async fn two_hundred_concurrent_requests_against_a_limit_of_fifty_admit_exactly_fifty() {
    let s = TestServer::start().await;
    for algorithm in ["sliding_window", "fixed_window", "token_bucket"] {
        s.put(
            "/admin/configs/*",
            &json!({"algorithm": algorithm, "requests_per_window": 50, "window_seconds": 3600})
                .to_string(),
        )
        .await;
        let client = format!("crowd-{algorithm}");
        let all = join_all((0..200).map(|_| s.get_as(&client, "/api/data"))).await;
        let ok = all.iter().filter(|r| r.status == 200).count();
        let limited = all.iter().filter(|r| r.status == 429).count();
        assert_eq!((ok, limited), (50, 150), "{algorithm}");
    }
}

#[actix_rt::test]
async fn token_bucket_refills_at_its_rate() {
    let s = TestServer::start().await;
    let body = json!({"endpoint": "/tb", "requests_per_window": 10, "window_seconds": 10,
                      "algorithm": "token_bucket", "burst_limit": 2, "refill_rate": 0.5});
    assert_eq!(
        s.post("/admin/configs", &body.to_string()).await.status,
        201
    );
    assert_eq!(s.statuses("e", "/tb", 3).await, vec![404, 404, 429]);
    let r = s.get_as("e", "/tb").await;
    assert_eq!(r.header_u64("retry-after"), 2);
    s.clock.advance(2 * NANOS_PER_SEC);
    assert_eq!(s.statuses("e", "/tb", 2).await, vec![404, 429]);
}

#[actix_rt::test]
async fn admin_crud_follows_the_contract() {
    let s = TestServer::start().await;
    let list = s.get("/admin/configs").await;
    assert_eq!(list.status, 200);
    let default = &list.body[0];
    assert_eq!(default["endpoint"], "*");
    assert_eq!(default["requests_per_window"], 100);
    assert_eq!(default["window_seconds"], 3600);
    assert_eq!(default["algorithm"], "sliding_window");
    assert_eq!(default["is_active"], true);
    assert!(default["id"].is_i64());
    assert!(default["created_at"].as_str().unwrap().ends_with('Z'));

    let body = r#"{"endpoint": "/api/*", "requests_per_window": 5, "window_seconds": 10,
                   "algorithm": "token_bucket", "burst_limit": 8, "refill_rate": 2.5}"#;
    let r = s.post("/admin/configs", body).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("location"), Some("/admin/configs/api/*"));
    assert_eq!(r.body["burst_limit"], 8);
    assert_eq!(r.body["refill_rate"], 2.5);
    assert_eq!(s.post("/admin/configs", body).await.status, 409);

    let r = s.get("/admin/configs/api/*").await;
    assert_eq!(
        (r.status.as_u16(), &r.body["endpoint"]),
        (200, &json!("/api/*"))
    );
    assert_eq!(
        s.get("/admin/configs/api%2F%2A").await.body["endpoint"],
        "/api/*"
    );
    assert_eq!(s.get("/admin/configs/nope").await.status, 404);
    assert_eq!(s.get("/admin/configs/*").await.body["endpoint"], "*");

    let r = s
        .put("/admin/configs/api/*", r#"{"refill_rate": null}"#)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["refill_rate"], json!(null));
    assert_eq!(r.body["burst_limit"], 8);
    assert_eq!(
        s.put("/admin/configs/nope", r#"{"is_active": false}"#)
            .await
            .status,
        404
    );
    assert_eq!(
        s.put("/admin/configs/*", r#"{"is_active": false}"#)
            .await
            .body["is_active"],
        false
    );

    assert_eq!(s.delete("/admin/configs/*").await.status, 409);
    assert_eq!(s.delete("/admin/configs/api/*").await.status, 204);
    assert_eq!(s.delete("/admin/configs/api/*").await.status, 404);
    assert_eq!(
        s.get("/admin/configs").await.body.as_array().unwrap().len(),
        1
    );
    assert_eq!(
        s.send("PATCH", "/admin/configs", &[], None).await.status,
        405
    );
}

#[actix_rt::test]
async fn statistics_report_totals_and_per_client_state() {
    let s = TestServer::start().await;
    s.config("/api/*", 2, 60, "fixed_window").await;
    s.statuses("f", "/api/data", 3).await;
    s.statuses("g", "/", 1).await;

    let r = s.get("/admin/stats").await;
    assert_eq!(r.status, 200);
    let b = &r.body;
    assert_eq!(b["total_requests_24h"], 4);
    assert_eq!(b["blocked_requests_24h"], 1);
    assert_eq!(b["success_rate"], 75.0);
    assert_eq!(b["active_configs"], 2);
    assert_eq!(b["active_clients"], 2);
    assert!(b["requests_per_second"].is_number());
    assert_eq!(b["uptime_seconds"], 0);
    assert!(b["timestamp"].is_string());

    let r = s.get("/admin/stats/f").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["client_id"], "f");
    let st = &r.body["status"];
    assert_eq!(
        (
            st["total_requests"].as_u64(),
            st["blocked_requests"].as_u64()
        ),
        (Some(3), Some(1))
    );
    assert_eq!(st["last_request"], "2027-01-15T08:00:00Z");
    let e = &st["endpoints"][0];
    assert_eq!(e["endpoint"], "/api/*");
    assert_eq!(e["algorithm"], "fixed_window");
    assert_eq!(
        (e["limit"].as_u64(), e["remaining"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(e["reset_time"], "2027-01-15T08:01:00Z");
    assert!(r.body["recent_events"].is_array());

    // The blocked request becomes a coalesced event once flushed.
    s.registries.flush_all().await.unwrap();
    let events = s.get("/admin/stats/f").await.body["recent_events"].clone();
    assert_eq!(events[0]["type"], "rate_limit_exceeded");
    assert_eq!(events[0]["count"], 1);
    assert_eq!(events[0]["endpoint"], "/api/*");

    let r = s.get("/admin/stats/nobody").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"]["total_requests"], 0);
    assert_eq!(r.body["status"]["last_request"], json!(null));
    assert_eq!(r.body["recent_events"], json!([]));
    assert_eq!(s.get("/admin/stats/bad%20id").await.status, 400);
}

#[actix_rt::test]
async fn an_admin_token_is_required_when_configured() {
    let s = TestServer::with(|c| c.admin_token = Some("s3cret".into())).await;
    let r = s.get("/admin/configs").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(r.body["error"], "unauthorized");
    let wrong = s
        .send(
            "GET",
            "/admin/stats",
            &[("Authorization", "Bearer s3creT")],
            None,
        )
        .await;
    assert_eq!(wrong.status, 401);
    let basic = s
        .send(
            "GET",
            "/admin/stats",
            &[("Authorization", "Basic s3cret")],
            None,
        )
        .await;
    assert_eq!(basic.status, 401);
    let ok = s
        .send(
            "GET",
            "/admin/stats",
            &[("Authorization", "Bearer s3cret")],
            None,
        )
        .await;
    assert_eq!(ok.status, 200);
    // Refused writes change nothing.
    let r = s
        .post(
            "/admin/configs",
            r#"{"endpoint": "/z", "requests_per_window": 1, "window_seconds": 1}"#,
        )
        .await;
    assert_eq!(r.status, 401);
    let list = s
        .send(
            "GET",
            "/admin/configs",
            &[("Authorization", "Bearer s3cret")],
            None,
        )
        .await;
    assert_eq!(list.body.as_array().unwrap().len(), 1);
}

#[actix_rt::test]
async fn percent_encoded_paths_count_against_the_config_that_serves_them() {
    let s = TestServer::start().await;
    s.config("/api/*", 2, 60, "fixed_window").await;
    let r = s.get_as("enc", "/%61pi/d%61ta").await;
    assert_eq!(r.status, 200, "served by /api/data");
    assert_eq!(r.header("ratelimit-policy"), Some("\"/api/*\";q=2;w=60"));
    assert_eq!(
        s.get_as("enc", "/api/data")
            .await
            .header_u64("x-ratelimit-remaining"),
        0
    );
    assert_eq!(s.get_as("enc", "/%61pi/data").await.status, 429);
    // Exempt prefixes are judged on the decoded path too.
    assert!(
        s.get("/%68ealth")
            .await
            .header("x-ratelimit-limit")
            .is_none()
    );
}

#[actix_rt::test]
async fn a_clock_stepped_back_reopens_no_window() {
    let s = TestServer::start().await;
    s.config("/c", 2, 60, "fixed_window").await;
    s.clock.advance(30 * NANOS_PER_SEC);
    assert_eq!(s.statuses("ntp", "/c", 3).await, vec![404, 404, 429]);
    // The wall clock steps back into the previous window: still limited.
    s.clock.set(T0 - NANOS_PER_SEC);
    assert_eq!(s.statuses("ntp", "/c", 1).await, vec![429]);
}

#[actix_rt::test]
async fn wrong_methods_get_a_json_405_everywhere() {
    let s = TestServer::start().await;
    for (method, path) in [
        ("POST", "/api/data"),
        ("DELETE", "/"),
        ("PUT", "/admin/stats"),
        ("POST", "/health"),
    ] {
        let r = s.send(method, path, &[], None).await;
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.body["error"], "method_not_allowed", "{method} {path}");
    }
}

#[actix_rt::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let s = TestServer::with(|c| c.admin_token = Some("t0k".into())).await;
    let r = s
        .send(
            "GET",
            "/admin/stats",
            &[("Authorization", "bearer t0k")],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    let r = s.get("/admin/stats?token=t0k").await;
    assert_eq!(
        r.status, 200,
        "the token query parameter, for browsers' feeds"
    );
}

/// The issue's example, less what needs a connection's end: a burst bucket, a sliding
/// daily quota and a calendar month, all of which must admit each request.
const LAYERED: &str = r#"{"endpoint": "/api/*", "limits": [
    {"name": "burst", "algorithm": "token_bucket", "requests_per_window": 3, "window_seconds": 1},
    {"name": "daily", "algorithm": "sliding_window", "requests_per_window": 5, "window_seconds": 86400},
    {"name": "monthly", "algorithm": "fixed_window", "requests_per_window": 100, "calendar": "month"}]}"#;

#[actix_rt::test]
async fn several_limits_admit_only_what_every_one_allows() {
    let s = TestServer::start().await;
    let created = s.post("/admin/configs", LAYERED).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let limits = created.body["limits"].as_array().expect("limits listed");
    assert_eq!(limits.len(), 3);
    assert_eq!(limits[2]["window_seconds"], 2_592_000);
    assert!(created.body.get("requests_per_window").is_none());
    // Three in a burst, then the bucket is empty: refused, and nothing else consumed.
    assert_eq!(s.statuses("lay", "/api/data", 3).await, [200, 200, 200]);
    let r = s.get_as("lay", "/api/data").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.body["violated"], json!(["burst"]));
    assert_eq!(r.header_u64("retry-after"), 1);
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"burst\";q=3;w=1, \"daily\";q=5;w=86400, \"monthly\";q=100;w=2592000")
    );
    // The daily and monthly quotas still have the 3 taken, not 4: "daily" has 2 left.
    let t = r.header("ratelimit").unwrap();
    assert!(t.starts_with("\"burst\";r=0;t=1, \"daily\";r=2;t="), "{t}");
    assert!(t.contains("\"monthly\";r=97;t="), "{t}");
    // The bucket refills: two more, which end the day's quota.
    s.clock.advance(NANOS_PER_SEC);
    let r = s.get_as("lay", "/api/data").await;
    assert_eq!(r.status, 200);
    // The binding limit of an allowed request: the fewest left relative to its quota.
    assert_eq!(
        (
            r.header_u64("x-ratelimit-limit"),
            r.header_u64("x-ratelimit-remaining")
        ),
        (5, 1)
    );
    assert_eq!(s.statuses("lay", "/api/data", 1).await, [200]);
    s.clock.advance(NANOS_PER_SEC);
    let r = s.get_as("lay", "/api/data").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.body["violated"], json!(["daily"]));
    // The longest wait: until the first of the day's requests leaves the window.
    assert!(r.header_u64("retry-after") > 86_000, "{:?}", r.headers);
    assert_eq!(r.body["limit"], 5);
    let message = r.body["message"].as_str().unwrap();
    assert!(
        message.contains("limit \"daily\": 5 requests per 86400 s"),
        "{message}"
    );
    // As problem details: the violated policies by name.
    let problem = [
        ("X-Client-ID", "lay"),
        ("Accept", "application/problem+json"),
    ];
    let r = s.send("GET", "/api/data", &problem, None).await;
    assert_eq!(r.body["violated-policies"], json!(["daily"]));
    // Counted by the limit that refused.
    let refused = |limit: &str| {
        format!("ratewarden_limit_refusals_total{{endpoint=\"/api/*\",limit=\"{limit}\"}}")
    };
    assert_eq!(s.metric(&refused("burst")).await, 1.0);
    assert_eq!(s.metric(&refused("daily")).await, 2.0);
    // Another client has its own budget under every limit.
    assert_eq!(s.get_as("other", "/api/data").await.status, 200);
    // The client's status lists every limit.
    let stats = s.get("/admin/stats/lay").await;
    let ep = &stats.body["status"]["endpoints"][0];
    let names: Vec<&str> = ep["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["burst", "daily", "monthly"]);
    assert_eq!(ep["limits"][1]["remaining"], 0);
    assert_eq!(ep["limits"][2]["remaining"], 95);
}

#[actix_rt::test]
async fn two_hundred_concurrent_requests_admit_exactly_what_the_tighter_limit_allows() {
    let s = TestServer::start().await;
    let body = json!({"endpoint": "/api/*", "limits": [
        {"name": "minute", "algorithm": "fixed_window", "requests_per_window": 10, "window_seconds": 60},
        {"name": "hour", "algorithm": "sliding_window", "requests_per_window": 7, "window_seconds": 3600}]});
    assert_eq!(
        s.post("/admin/configs", &body.to_string()).await.status,
        201
    );
    let all = join_all((0..200).map(|_| s.get_as("race", "/api/data"))).await;
    let ok = all.iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, 7);
    // Nothing was taken by the refusals: the minute's budget has exactly 3 left.
    let stats = s.get("/admin/stats/race").await;
    let limits = &stats.body["status"]["endpoints"][0]["limits"];
    assert_eq!(
        (&limits[0]["remaining"], &limits[1]["remaining"]),
        (&json!(3), &json!(0))
    );
}

/// The issue's shared limit: each client's own budget, and one for every caller.
const SHARED: &str = r#"{"endpoint": "/api/*", "limits": [
    {"name": "per-client", "algorithm": "fixed_window", "requests_per_window": 3, "window_seconds": 60},
    {"name": "backend", "algorithm": "fixed_window", "requests_per_window": 5, "window_seconds": 60, "key": "global"}]}"#;

#[actix_rt::test]
async fn a_limit_keyed_globally_is_shared_by_every_client_and_a_refusal_takes_nothing() {
    let s = TestServer::start().await;
    let created = s.post("/admin/configs", SHARED).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.body["limits"][1]["key"], "global");
    assert!(created.body["limits"][0].get("key").is_none());
    // Alice's own limit refuses her 4th: the shared budget is not touched by it.
    assert_eq!(
        s.statuses("alice", "/api/data", 4).await,
        [200, 200, 200, 429]
    );
    // Bob has his own 3, but only 2 are left of the shared 5.
    assert_eq!(s.statuses("bob", "/api/data", 2).await, [200, 200]);
    let r = s.get_as("bob", "/api/data").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.body["violated"], json!(["backend"]));
    let t = r.header("ratelimit").unwrap();
    assert!(t.starts_with("\"per-client\";r=1;t="), "{t}");
    assert!(t.contains("\"backend\";r=0;t="), "{t}");
    // Bob's refused request gave its unit of his own limit back: 1 left, not 0.
    let bob = s.get("/admin/stats/bob").await;
    let ep = &bob.body["status"]["endpoints"][0];
    assert_eq!(
        (&ep["endpoint"], &ep["remaining"]),
        (&json!("/api/*"), &json!(1))
    );
    assert_eq!(bob.body["status"]["blocked_requests"], 1);
    // The shared budget's state is kept under the global key's value.
    let global = s.get("/admin/stats/(global)").await;
    assert_eq!(global.status, 200, "{:?}", global.body);
    let ep = &global.body["status"]["endpoints"][0];
    assert_eq!((&ep["limit"], &ep["remaining"]), (&json!(5), &json!(0)));
    let refused = |limit: &str| {
        format!("ratewarden_limit_refusals_total{{endpoint=\"/api/*\",limit=\"{limit}\"}}")
    };
    assert_eq!(s.metric(&refused("backend")).await, 1.0);
    assert_eq!(s.metric(&refused("per-client")).await, 1.0);
    // A new window: everyone's budgets are back.
    s.clock.advance(60 * NANOS_PER_SEC);
    assert_eq!(s.statuses("carol", "/api/data", 3).await, [200; 3]);
    // Resetting the global value gives the shared budget back.
    assert_eq!(s.statuses("dave", "/api/data", 3).await, [200, 200, 429]);
    assert_eq!(s.delete("/admin/clients/(global)/state").await.status, 200);
    assert_eq!(s.statuses("dave", "/api/data", 1).await, [200]);
}

#[actix_rt::test]
async fn two_hundred_concurrent_requests_of_four_clients_admit_exactly_the_shared_limit() {
    let s = TestServer::start().await;
    let body = json!({"endpoint": "/api/*", "limits": [
        {"name": "own", "algorithm": "sliding_window", "requests_per_window": 10, "window_seconds": 60},
        {"name": "shared", "algorithm": "fixed_window", "requests_per_window": 25, "window_seconds": 60, "key": "global"}]});
    assert_eq!(
        s.post("/admin/configs", &body.to_string()).await.status,
        201
    );
    let clients = ["c0", "c1", "c2", "c3"];
    let all = join_all((0..200).map(|i| s.get_as(clients[i % 4], "/api/data"))).await;
    assert_eq!(all.iter().filter(|r| r.status == 200).count(), 25);
    for (i, c) in clients.iter().enumerate() {
        let admitted = (all.iter().skip(i).step_by(4)).filter(|r| r.status == 200);
        let admitted = admitted.count() as u64;
        assert!(admitted <= 10, "{c}: {admitted}");
        // Every refusal gave back what it took of the client's own limit.
        let stats = s.get(&format!("/admin/stats/{c}")).await;
        assert_eq!(
            stats.body["status"]["endpoints"][0]["remaining"],
            json!(10 - admitted),
            "{c}"
        );
    }
}

#[actix_rt::test]
async fn ip_and_header_keyed_limits_count_what_a_client_id_cannot_escape() {
    let s = TestServer::start().await;
    let body = json!({"endpoint": "/api/data", "limits": [
        {"name": "own", "requests_per_window": 100, "window_seconds": 60},
        {"name": "per-ip", "algorithm": "fixed_window", "requests_per_window": 3, "window_seconds": 60, "key": "ip"}]});
    assert_eq!(
        s.post("/admin/configs", &body.to_string()).await.status,
        201
    );
    // A new X-Client-ID per request: the address still counts every one.
    for (i, want) in [200, 200, 200, 429].into_iter().enumerate() {
        let r = s.get_as(&format!("forged-{i}"), "/api/data").await;
        assert_eq!(r.status, want, "{i}");
        if want == 429 {
            assert_eq!(r.body["violated"], json!(["per-ip"]));
        }
    }
    // Without an id the client is its address, which the ip limit counts apart.
    assert_eq!(s.send("GET", "/api/data", &[], None).await.status, 429);
    let body = json!({"limits": [
        {"name": "own", "requests_per_window": 100, "window_seconds": 60},
        {"name": "tenant", "algorithm": "sliding_window", "requests_per_window": 2, "window_seconds": 60, "key": "header:X-Tenant"}]});
    let r = s.put("/admin/configs/api/data", &body.to_string()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let mut seen = Vec::new();
    for (client, tenant) in [
        ("a", Some("acme")),
        ("b", Some("acme")),
        ("c", Some("acme")),
        ("c", Some("other")),
        // No header: counted under the empty value, one budget for all who send none.
        ("d", None),
        ("e", None),
        ("f", None),
    ] {
        let mut headers = vec![("X-Client-ID", client)];
        headers.extend(tenant.map(|t| ("X-Tenant", t)));
        seen.push(
            s.send("GET", "/api/data", &headers, None)
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(seen, [200, 200, 429, 200, 200, 200, 429]);
}

/// The issue's example, whole: a burst bucket, a sliding day, a calendar month, a budget
/// every caller shares, and a cap on requests in flight.
const EXAMPLE: &str = r#"{"endpoint": "/api/*", "limits": [
    {"name": "burst",   "algorithm": "token_bucket",   "requests_per_window": 10, "window_seconds": 1, "burst_limit": 20},
    {"name": "daily",   "algorithm": "sliding_window", "requests_per_window": 10000, "window_seconds": 86400},
    {"name": "monthly", "algorithm": "fixed_window",   "requests_per_window": 200000, "calendar": "month"},
    {"name": "backend", "algorithm": "sliding_window", "requests_per_window": 500, "window_seconds": 1, "key": "global"},
    {"name": "exports", "algorithm": "concurrency",    "max_in_flight": 4}]}"#;

#[actix_rt::test]
async fn the_issues_example_works_through_routes_checks_and_forward_auth() {
    let s = TestServer::start().await;
    let created = s.post("/admin/configs", EXAMPLE).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.body["limits"].as_array().unwrap().len(), 5);
    assert_eq!(created.body["warnings"].as_array().unwrap().len(), 1);
    // Four checks hold the four units of "exports" (each taking one of every rate).
    let ask = json!({"client_id": "ex", "path": "/api/data"}).to_string();
    let mut leases = Vec::new();
    for _ in 0..4 {
        let r = s.post("/v1/check", &ask).await;
        assert_eq!(r.body["allowed"], true, "{:?}", r.body);
        assert_eq!(r.body["limits"].as_array().unwrap().len(), 5);
        leases.push(r.body["lease"].as_str().unwrap().to_owned());
    }
    let refused = s.post("/v1/check", &ask).await;
    assert_eq!(refused.body["allowed"], false);
    // A route is refused for the same reason, naming it.
    let r = s.get_as("ex", "/api/data").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.body["violated"], json!(["exports"]));
    assert_eq!(
        r.header("ratelimit-policy"),
        Some(
            "\"burst\";q=20;w=1, \"daily\";q=10000;w=86400, \"monthly\";q=200000;w=2592000, \
             \"backend\";q=500;w=1, \"exports\";q=4;qu=\"concurrent-requests\""
        )
    );
    // Forward-auth sees no end of a request: every limit but "exports" applies there.
    let fa = [("X-Client-ID", "ex"), ("X-Original-URI", "/api/data")];
    let r = s.send("GET", "/v1/forward-auth", &fa, None).await;
    assert_eq!(r.status, 200);
    let announced = r.header("ratelimit-policy").unwrap();
    assert!(
        !announced.contains("exports") && announced.contains("\"backend\""),
        "{announced}"
    );
    // One lease given back: the route is admitted, and every limit counted it (4
    // checks, the forward-auth request and this one: 6; the refusals took nothing).
    let r = s
        .post("/v1/release", &json!({"lease": leases[0]}).to_string())
        .await;
    assert_eq!(r.body["released"], true);
    let r = s.get_as("ex", "/api/data").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let t = r.header("ratelimit").unwrap();
    for each in [
        "\"burst\";r=14;",
        "\"daily\";r=9994;",
        "\"monthly\";r=199994;",
        "\"backend\";r=494;",
        "\"exports\";r=0",
    ] {
        assert!(t.contains(each), "{each} in {t}");
    }
    // The shared budget is kept under the global key's value.
    let global = s.get("/admin/stats/(global)").await;
    let ep = &global.body["status"]["endpoints"][0];
    assert_eq!(
        (&ep["limits"][0]["name"], &ep["limits"][0]["remaining"]),
        (&json!("backend"), &json!(494))
    );
}

#[actix_rt::test]
async fn limit_keys_are_validated_and_written_only_where_they_differ() {
    let s = TestServer::start().await;
    assert_eq!(s.post("/admin/configs", SHARED).await.status, 201);
    for (body, field) in [
        (
            json!({"limits": [
                {"name": "a", "requests_per_window": 1, "window_seconds": 1, "key": "global"},
                {"name": "b", "requests_per_window": 1, "window_seconds": 1, "key": "ip"}]}),
            "limits",
        ),
        (
            json!({"limits": [{"name": "a", "requests_per_window": 1, "window_seconds": 1},
                {"name": "b", "requests_per_window": 1, "window_seconds": 1, "key": "header:Cookie"}]}),
            "limits[1].key",
        ),
        (
            json!({"limits": [{"name": "a", "requests_per_window": 1, "window_seconds": 1},
                {"name": "b", "requests_per_window": 1, "window_seconds": 1, "key": "tenant"}]}),
            "limits[1].key",
        ),
        (
            json!({"overrides": [{"client": "vip", "limit": "backend", "requests_per_window": 50}]}),
            "overrides[0].limit",
        ),
    ] {
        let r = s.put("/admin/configs/api/*", &body.to_string()).await;
        assert_eq!(r.status, 422, "{body}: {:?}", r.body);
        assert_eq!(r.body["field"], field, "{body}: {:?}", r.body);
    }
    // An override of the client's own limit is fine.
    let vip =
        json!({"overrides": [{"client": "vip", "limit": "per-client", "requests_per_window": 50}]});
    assert_eq!(
        s.put("/admin/configs/api/*", &vip.to_string()).await.status,
        200
    );
    // A key equal to the config's is left out; limits that all name one key make it the
    // config's.
    let same = json!({"overrides": [], "limits": [
        {"name": "a", "requests_per_window": 1, "window_seconds": 1, "key": "client"},
        {"name": "b", "requests_per_window": 1, "window_seconds": 1}]});
    let r = s.put("/admin/configs/api/*", &same.to_string()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.body["limits"][0].get("key").is_none(), "{:?}", r.body);
    let all_ip = json!({"limits": [
        {"name": "a", "requests_per_window": 1, "window_seconds": 1, "key": "ip"},
        {"name": "b", "requests_per_window": 1, "window_seconds": 1, "key": "ip"}]});
    let r = s.put("/admin/configs/api/*", &all_ip.to_string()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["key"], "ip");
    assert!(r.body["limits"][1].get("key").is_none(), "{:?}", r.body);
}

#[actix_rt::test]
async fn configs_of_several_limits_are_validated_and_edited_by_name() {
    let s = TestServer::start().await;
    assert_eq!(s.post("/admin/configs", LAYERED).await.status, 201);
    // Each field's error names it.
    for (body, field) in [
        (
            json!({"limits": [{"name": "a", "requests_per_window": 1, "window_seconds": 1},
            {"name": "b", "requests_per_window": 1, "window_seconds": 1},
            {"name": "c", "requests_per_window": 1, "window_seconds": 0}]}),
            "limits[2].window_seconds",
        ),
        (
            json!({"limits": [{"name": "a", "requests_per_window": 1, "window_seconds": 1},
            {"name": "a", "requests_per_window": 2, "window_seconds": 1}]}),
            "limits[1].name",
        ),
        (
            json!({"limits": [{"name": "Big", "requests_per_window": 1, "window_seconds": 1}]}),
            "limits[0].name",
        ),
        (
            json!({"limits": [{"name": "a", "requests_per_window": "1", "window_seconds": 1}]}),
            "limits[0].requests_per_window",
        ),
        (
            json!({"limits": [{"name": "a", "window_seconds": 1}]}),
            "limits[0].requests_per_window",
        ),
        (
            json!({"limits": [{"name": "a", "requests_per_window": 1, "window_seconds": 1, "colour": 1}]}),
            "limits[0].colour",
        ),
        (
            json!({"limits": [{"name": "a", "algorithm": "token_bucket", "requests_per_window": 1, "calendar": "day"}]}),
            "limits[0].calendar",
        ),
        (json!({"limits": []}), "limits"),
        (json!({"limits": 3}), "limits"),
        (json!({"requests_per_window": 9}), "requests_per_window"),
        (
            json!({"overrides": [{"client": "vip", "requests_per_window": 50}]}),
            "overrides[0].limit",
        ),
        (
            json!({"overrides": [{"client": "vip", "limit": "yearly", "requests_per_window": 50}]}),
            "overrides[0].limit",
        ),
        (
            json!({"overrides": [{"client": "vip", "limit": "daily", "requests_per_window": 0}]}),
            "overrides[0].requests_per_window",
        ),
    ] {
        let r = s.put("/admin/configs/api/*", &body.to_string()).await;
        assert_eq!(r.status, 422, "{body}: {:?}", r.body);
        assert_eq!(r.body["field"], field, "{body}: {:?}", r.body);
    }
    let nine: Vec<_> = (0..9)
        .map(|i| json!({"name": format!("l{i}"), "requests_per_window": 1, "window_seconds": 1}))
        .collect();
    let r = s
        .put("/admin/configs/api/*", &json!({"limits": nine}).to_string())
        .await;
    assert_eq!(
        (r.status.as_u16(), &r.body["field"]),
        (422, &json!("limits"))
    );
    // An override changes the limit it names, for its clients only.
    let vip = json!({"overrides": [
        {"client": "vip", "limit": "daily", "requests_per_window": 1000},
        {"client": "vip", "limit": "burst", "requests_per_window": 50}]});
    let r = s.put("/admin/configs/api/*", &vip.to_string()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(s.statuses("vip", "/api/data", 6).await, [200; 6]);
    assert_eq!(
        s.statuses("pleb", "/api/data", 4).await,
        [200, 200, 200, 429]
    );
    // Back to one limit (top-level fields), then to a list of one: each shown both ways.
    let one =
        json!({"limits": null, "requests_per_window": 4, "window_seconds": 60, "overrides": []});
    let r = s.put("/admin/configs/api/*", &one.to_string()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["requests_per_window"], 4);
    assert_eq!(r.body["algorithm"], "sliding_window");
    assert_eq!(
        r.body["limits"],
        json!([{"name": "default", "algorithm": "sliding_window",
        "requests_per_window": 4, "window_seconds": 60}])
    );
    let listed = json!({"limits": [{"name": "hourly", "algorithm": "fixed_window",
        "requests_per_window": 2, "window_seconds": 3600}]});
    let r = s.put("/admin/configs/api/*", &listed.to_string()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        (&r.body["requests_per_window"], &r.body["algorithm"]),
        (&json!(2), &json!("fixed_window"))
    );
    assert_eq!(r.body["limits"][0]["name"], "hourly");
    // Read back and sent again, a config of one limit (shown both ways) is unchanged,
    // whichever shape it is in.
    for body in [&listed, &one] {
        let r = s.put("/admin/configs/api/*", &body.to_string()).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let mut view = s.get("/admin/configs/api/*").await.body;
        for read_only in ["id", "created_at", "updated_at"] {
            view.as_object_mut().unwrap().remove(read_only);
        }
        let again = s.put("/admin/configs/api/*", &view.to_string()).await;
        assert_eq!(again.status, 200, "{view}: {:?}", again.body);
        assert_eq!(again.body["limits"], view["limits"]);
        assert_eq!(
            again.body["requests_per_window"],
            view["requests_per_window"]
        );
        // Edited either way and sent whole: the edit applies, the limit keeps its name.
        let name = view["limits"][0]["name"].clone();
        let mut top = view.clone();
        top["requests_per_window"] = json!(7);
        let r = s.put("/admin/configs/api/*", &top.to_string()).await;
        assert_eq!(r.status, 200, "{top}: {:?}", r.body);
        assert_eq!(
            (
                &r.body["limits"][0]["requests_per_window"],
                &r.body["limits"][0]["name"]
            ),
            (&json!(7), &name)
        );
        let mut list = r.body.clone();
        for read_only in ["id", "created_at", "updated_at"] {
            list.as_object_mut().unwrap().remove(read_only);
        }
        list["limits"][0]["requests_per_window"] = json!(8);
        let r = s.put("/admin/configs/api/*", &list.to_string()).await;
        assert_eq!(r.status, 200, "{list}: {:?}", r.body);
        assert_eq!(
            (&r.body["requests_per_window"], &r.body["limits"][0]["name"]),
            (&json!(8), &name)
        );
        // And a plain partial update of a top-level field.
        let r = s
            .put("/admin/configs/api/*", r#"{"requests_per_window": 9}"#)
            .await;
        assert_eq!(
            (&r.body["requests_per_window"], &r.body["limits"][0]["name"]),
            (&json!(9), &name)
        );
    }
    // A list of one limit named "default" is the top-level shape.
    let default =
        json!({"limits": [{"name": "default", "requests_per_window": 3, "window_seconds": 9}]});
    let r = s.put("/admin/configs/api/*", &default.to_string()).await;
    assert_eq!(
        (&r.body["requests_per_window"], &r.body["limits"][0]["name"]),
        (&json!(3), &json!("default"))
    );
    let listed = json!({"limits": [{"name": "hourly", "algorithm": "fixed_window",
        "requests_per_window": 2, "window_seconds": 3600}]});
    s.put("/admin/configs/api/*", &listed.to_string()).await;
    // A config of one limit keeps its single-policy headers, whatever its limit's name.
    let r = s.get_as("solo", "/api/data").await;
    assert_eq!(r.header("ratelimit-policy"), Some("\"/api/*\";q=2;w=3600"));
    assert!(r.body.get("limits").is_none());
}
