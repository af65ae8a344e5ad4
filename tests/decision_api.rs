//! The decision API, `POST /v1/check`: the same decision a protected route gets, with a
//! cost and a peek, one check or a batch decided in order; bad input consumes nothing.
//! Each test runs its own in-process server (cheap), configured by [`server`].

mod common;

use common::{Resp, TestServer};
use serde_json::{Value, json};
/// A server with `/d/*` 5 per minute (fixed window), `/s/*` 10 per minute (sliding
/// window), `/b/*` a bucket of 4, and `/off` inactive.
async fn server() -> TestServer {
    let s = TestServer::start().await;
    s.config("/d/*", 5, 60, "fixed_window").await;
    s.config("/s/*", 10, 60, "sliding_window").await;
    s.config("/b/*", 4, 60, "token_bucket").await;
    s.config("/off", 3, 60, "fixed_window").await;
    let r = s.put("/admin/configs/off", r#"{"is_active": false}"#).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    s
}

async fn check(s: &TestServer, body: Value) -> Resp {
    s.post("/v1/check", &body.to_string()).await
}

async fn remaining(s: &TestServer, client: &str, path: &str) -> u64 {
    let r = check(s, json!({"client_id": client, "path": path, "peek": true})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["remaining"].as_u64().unwrap()
}

#[actix_rt::test]
async fn a_single_check_answers_the_decision_with_the_routes_headers() {
    let s = server().await;
    let r = check(
        &s,
        json!({"client_id": "single-1", "path": "/d/x", "method": "GET"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let b = &r.body;
    assert_eq!(b["allowed"], true);
    assert_eq!(b["endpoint"], "/d/*");
    assert_eq!(b["algorithm"], "fixed_window");
    assert_eq!(
        (b["limit"].as_u64(), b["remaining"].as_u64()),
        (Some(5), Some(4))
    );
    assert_eq!(b["retry_after"], 0.0);
    assert!(b["reset_after"].as_f64().unwrap() > 0.0);
    assert!(b["reset_time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("4"));
    assert_eq!(r.header("ratelimit-policy"), Some("\"/d/*\";q=5;w=60"));
    assert!(
        r.header("ratelimit")
            .unwrap()
            .starts_with("\"/d/*\";r=4;t=")
    );
    assert!(r.header("retry-after").is_none());
    // The path is decoded as the router decodes a request's.
    let r = check(&s, json!({"client_id": "single-2", "path": "/%64/x"})).await;
    assert_eq!(r.body["endpoint"], "/d/*", "{:?}", r.body);

    // The same budget as the route itself: the route's requests and the API's add up.
    let routed = s.statuses("single-1", "/d/x", 4).await;
    assert_eq!(routed, vec![404; 4]);
    let r = check(&s, json!({"client_id": "single-1", "path": "/d/y"})).await;
    assert_eq!(r.status, 200, "a refused check is still a 200");
    assert_eq!(r.body["allowed"], false);
    assert_eq!(r.body["remaining"], 0);
    let retry = r.body["retry_after"].as_f64().unwrap();
    assert!(retry > 0.0 && retry <= 60.0, "{retry}");
    let header = r.header_u64("retry-after");
    assert_eq!(header, retry.ceil() as u64);
    assert!(
        r.header("ratelimit")
            .unwrap()
            .ends_with(&format!("t={header}"))
    );
}

#[actix_rt::test]
async fn a_cost_is_taken_whole_or_not_at_all_and_zero_or_a_peek_takes_nothing() {
    let s = server().await;
    let c = "cost-1";
    let r = check(&s, json!({"client_id": c, "path": "/s/a", "cost": 7})).await;
    assert_eq!(
        (r.body["allowed"].clone(), r.body["remaining"].clone()),
        (json!(true), json!(3))
    );
    // 4 do not fit in the 3 left: refused, and nothing of it is taken.
    let r = check(&s, json!({"client_id": c, "path": "/s/a", "cost": 4})).await;
    assert_eq!(r.body["allowed"], false);
    assert_eq!(remaining(&s, c, "/s/a").await, 3);
    let r = check(&s, json!({"client_id": c, "path": "/s/a", "cost": 0})).await;
    assert_eq!(
        (r.body["allowed"].clone(), r.body["remaining"].clone()),
        (json!(true), json!(3))
    );
    for _ in 0..3 {
        let r = check(
            &s,
            json!({"client_id": c, "path": "/s/a", "cost": 3, "peek": true}),
        )
        .await;
        assert_eq!(r.body["allowed"], true);
        assert_eq!(r.body["remaining"], 3, "a peek reports without taking");
    }
    let r = check(&s, json!({"client_id": c, "path": "/s/a", "cost": 3})).await;
    assert_eq!(
        (r.body["allowed"].clone(), r.body["remaining"].clone()),
        (json!(true), json!(0))
    );
    // Peeks are not requests: the client's counters show the three consuming checks
    // that were allowed and the one refused, nothing else.
    let stats = s.get(&format!("/admin/stats/{c}")).await.body;
    assert_eq!(stats["status"]["total_requests"], 4, "{stats}");
    assert_eq!(stats["status"]["blocked_requests"], 1, "{stats}");
}

#[actix_rt::test]
async fn a_batch_is_decided_in_order_each_check_on_its_own() {
    let s = server().await;
    let r = check(
        &s,
        json!({"checks": [
            {"client_id": "batch-1", "path": "/b/x", "cost": 3},
            {"client_id": "batch-1", "path": "/b/y", "cost": 2},
            {"client_id": "batch-1", "path": "/b/z", "cost": 1},
            {"client_id": "batch-2", "path": "/b/x", "cost": 4},
            {"client_id": "batch-1", "path": "/off"},
            {"client_id": "batch-1", "path": "/elsewhere", "peek": true},
        ]}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let results = r.body["results"].as_array().unwrap();
    let allowed: Vec<_> = results
        .iter()
        .map(|x| x["allowed"].as_bool().unwrap())
        .collect();
    // 3 of 4 taken; 2 do not fit in the 1 left; 1 does; another client has its own.
    assert_eq!(allowed, vec![true, false, true, true, true, true]);
    let left: Vec<_> = results
        .iter()
        .map(|x| x["remaining"].as_u64().unwrap())
        .collect();
    assert_eq!(&left[..4], &[1, 1, 0, 0]);
    assert_eq!(
        results[4]["active"], false,
        "an inactive config limits nothing"
    );
    assert_eq!(results[4]["endpoint"], "/off");
    assert_eq!(
        results[5]["endpoint"], "*",
        "an unconfigured path falls to the default"
    );
    assert!(
        r.header("ratelimit").is_none(),
        "headers are for a single check"
    );
    // The peek of an endpoint batch-1 never used added nothing to its status.
    let stats = s.get("/admin/stats/batch-1").await.body;
    let endpoints = stats["status"]["endpoints"].as_array().unwrap();
    let names: Vec<_> = endpoints
        .iter()
        .map(|e| e["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["/b/*"], "{stats}");
}

#[actix_rt::test]
async fn bad_input_names_the_field_and_consumes_nothing() {
    let s = server().await;
    let ok = json!({"client_id": "bad-1", "path": "/d/q"});
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!([]), 422, "body"),
        (json!({"path": "/d/q"}), 422, "client_id"),
        (
            json!({"client_id": "bad 1", "path": "/d/q"}),
            422,
            "client_id",
        ),
        (
            json!({"client_id": "x".repeat(129), "path": "/d/q"}),
            422,
            "client_id",
        ),
        (json!({"client_id": "bad-1"}), 422, "path"),
        (json!({"client_id": "bad-1", "path": "d/q"}), 422, "path"),
        (
            json!({"client_id": "bad-1", "path": "/d/../q"}),
            422,
            "path",
        ),
        (
            json!({"client_id": "bad-1", "path": "/d/%2e%2e/q"}),
            422,
            "path",
        ),
        (
            json!({"client_id": "bad-1", "path": "/d/q", "cost": -1}),
            422,
            "cost",
        ),
        (
            json!({"client_id": "bad-1", "path": "/d/q", "cost": 1.5}),
            422,
            "cost",
        ),
        (
            json!({"client_id": "bad-1", "path": "/d/q", "cost": 6}),
            422,
            "cost",
        ),
        (
            json!({"client_id": "bad-1", "path": "/d/q", "cost": "1"}),
            422,
            "cost",
        ),
        (
            json!({"client_id": "bad-1", "path": "/d/q", "peek": "yes"}),
            422,
            "peek",
        ),
        (
            json!({"client_id": "bad-1", "path": "/d/q", "method": "G T"}),
            422,
            "method",
        ),
        (
            json!({"client_id": "bad-1", "path": "/d/q", "limit": 9}),
            422,
            "limit",
        ),
        (json!({"checks": []}), 422, "checks"),
        (json!({"checks": {}}), 422, "checks"),
        (json!({"checks": vec![ok.clone(); 101]}), 422, "checks"),
        (
            json!({"checks": [ok.clone()], "client_id": "bad-1"}),
            422,
            "client_id",
        ),
        // One bad check fails the batch before any is decided.
        (
            json!({"checks": [ok.clone(), {"client_id": "bad-1", "path": "/d/q", "cost": 9}]}),
            422,
            "checks[1].cost",
        ),
        (json!({"checks": [ok.clone(), 3]}), 422, "checks[1]"),
    ];
    for (body, status, field) in cases {
        let r = check(&s, body.clone()).await;
        assert_eq!(r.status.as_u16(), status, "{body}: {:?}", r.body);
        assert_eq!(r.body["error"], "validation_failed", "{body}");
        assert_eq!(r.body["field"], field, "{body}: {:?}", r.body);
    }
    let r = s
        .send(
            "POST",
            "/v1/check",
            &[("Content-Type", "application/json")],
            Some("{\"client_id\": "),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.body["error"].as_str()),
        (400, Some("invalid_json"))
    );
    let r = s
        .send(
            "POST",
            "/v1/check",
            &[("Content-Type", "text/plain")],
            Some("{}"),
        )
        .await;
    assert_eq!(r.status, 415);
    let r = s.get("/v1/check").await;
    assert_eq!(r.status, 405);
    assert_eq!(
        remaining(&s, "bad-1", "/d/q").await,
        5,
        "nothing was consumed"
    );
}

#[actix_rt::test]
async fn decisions_made_here_are_counted_like_any_other() {
    let s = server().await;
    let before = s
        .metric("ratewarden_decisions_total{endpoint=\"/d/*\",outcome=\"allowed\"}")
        .await;
    check(
        &s,
        json!({"client_id": "counted-1", "path": "/d/c", "cost": 2}),
    )
    .await;
    check(
        &s,
        json!({"client_id": "counted-1", "path": "/d/c", "peek": true}),
    )
    .await;
    let after = s
        .metric("ratewarden_decisions_total{endpoint=\"/d/*\",outcome=\"allowed\"}")
        .await;
    assert_eq!(after - before, 1.0);
    let stats = s.get("/admin/stats/counted-1").await.body;
    assert_eq!(stats["status"]["total_requests"], 1);
    assert_eq!(stats["status"]["endpoints"][0]["remaining"], 3);
    // `/v1` is never limited itself, whatever the default policy says.
    let r = s
        .put("/admin/configs/*", r#"{"requests_per_window": 1}"#)
        .await;
    assert_eq!(r.status, 200);
    for _ in 0..3 {
        assert_eq!(
            check(
                &s,
                json!({"client_id": "counted-2", "path": "/d/c", "peek": true})
            )
            .await
            .status,
            200
        );
    }
    let r = s
        .put("/admin/configs/*", r#"{"requests_per_window": 100}"#)
        .await;
    assert_eq!(r.status, 200);
}

#[actix_rt::test]
async fn the_live_feeds_say_who_asked_for_each_decision() {
    let s = server().await;
    let mut feed = common::ws::connect(&s.url, "/ws/asker").await;
    common::ws::next_of(&mut feed, "client_stats").await;
    let r = check(&s, json!({"client_id": "asker", "path": "/d/one"})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let e = common::ws::next_of(&mut feed, "request_processed").await;
    assert_eq!((&e["path"], &e["via"]), (&json!("/d/one"), &json!("check")));
    let h = [("X-Client-ID", "asker"), ("X-Original-URI", "/d/two?x=1")];
    let r = s.send("GET", "/v1/forward-auth", &h, None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let e = common::ws::next_of(&mut feed, "request_processed").await;
    assert_eq!(
        (&e["path"], &e["via"]),
        (&json!("/d/two"), &json!("forward_auth"))
    );
    assert_eq!(e["endpoint"], "/d/*");
    drop(feed);
    s.stop().await;
}

#[actix_rt::test]
async fn a_decision_token_opens_v1_and_nothing_else() {
    let s = TestServer::with(|c| {
        c.admin_token = Some("admin-secret".into());
        c.decision_token = Some("proxy-secret".into());
    })
    .await;
    let body = r#"{"client_id": "tok", "path": "/x"}"#;
    let post = |token: &'static str| {
        let s = &s;
        async move {
            let auth = format!("Bearer {token}");
            let headers = [
                ("Content-Type", "application/json"),
                ("Authorization", auth.as_str()),
            ];
            s.send("POST", "/v1/check", &headers, Some(body))
                .await
                .status
                .as_u16()
        }
    };
    assert_eq!(post("proxy-secret").await, 200);
    assert_eq!(post("admin-secret").await, 200);
    assert_eq!(post("proxy-secret-").await, 401);
    let r = s
        .send(
            "POST",
            "/v1/check",
            &[("Content-Type", "application/json")],
            Some(body),
        )
        .await;
    assert_eq!(r.status, 401);
    let r = s
        .send(
            "GET",
            "/admin/configs",
            &[("Authorization", "Bearer proxy-secret")],
            None,
        )
        .await;
    assert_eq!(r.status, 401, "the decision token is not an admin token");
    s.stop().await;
}

#[actix_rt::test]
async fn a_check_under_several_limits_answers_each_and_takes_all_or_nothing() {
    let s = server().await;
    let body = json!({"endpoint": "/m/*", "limits": [
        {"name": "minute", "algorithm": "fixed_window", "requests_per_window": 4, "window_seconds": 60},
        {"name": "hour", "algorithm": "sliding_window", "requests_per_window": 10, "window_seconds": 3600}]});
    assert_eq!(
        s.post("/admin/configs", &body.to_string()).await.status,
        201
    );
    let r = check(&s, json!({"client_id": "multi", "path": "/m/x", "cost": 3})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let b = &r.body;
    assert_eq!(b["allowed"], true);
    let each: Vec<(&str, u64)> = b["limits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap(),
                l["remaining"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(each, [("minute", 1), ("hour", 7)]);
    // The binding limit is the minute's (1 of 4 left against 7 of 10).
    assert_eq!((&b["limit"], &b["remaining"]), (&json!(4), &json!(1)));
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"minute\";q=4;w=60, \"hour\";q=10;w=3600")
    );
    // Two more do not fit the minute: refused, and the hour keeps its 7.
    let r = check(&s, json!({"client_id": "multi", "path": "/m/x", "cost": 2})).await;
    assert_eq!(r.body["allowed"], false);
    assert_eq!(r.body["limits"][0]["allowed"], false);
    assert_eq!(r.body["limits"][1]["allowed"], true);
    assert_eq!(r.body["limits"][1]["remaining"], 7);
    // A cost above the smallest quota could never pass: refused as bad input.
    let r = check(&s, json!({"client_id": "multi", "path": "/m/x", "cost": 5})).await;
    assert_eq!((r.status.as_u16(), &r.body["field"]), (422, &json!("cost")));
    // Forward-auth decides the same way, and the feed names the limit that refused.
    let mut feed = common::ws::connect(&s.url, "/ws/fa").await;
    common::ws::next_of(&mut feed, "client_stats").await;
    let h = [("X-Client-ID", "fa"), ("X-Original-URI", "/m/y")];
    for _ in 0..4 {
        assert_eq!(
            s.send("GET", "/v1/forward-auth", &h, None).await.status,
            200
        );
    }
    let r = s.send("GET", "/v1/forward-auth", &h, None).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.body["violated"], json!(["minute"]));
    let e = common::ws::next_of(&mut feed, "rate_limit_exceeded").await;
    assert_eq!(e["limit_name"], "minute");
    assert_eq!(
        e["limits"],
        json!([{"name": "minute", "remaining": 0, "limit": 4},
               {"name": "hour", "remaining": 6, "limit": 10}])
    );
    drop(feed);
    s.stop().await;
}

#[actix_rt::test]
async fn a_check_counts_each_limit_under_its_own_key() {
    let s = server().await;
    let body = json!({"endpoint": "/k/*", "limits": [
        {"name": "own", "algorithm": "fixed_window", "requests_per_window": 2, "window_seconds": 60},
        {"name": "per-ip", "algorithm": "fixed_window", "requests_per_window": 3, "window_seconds": 60, "key": "ip"},
        {"name": "all", "algorithm": "fixed_window", "requests_per_window": 4, "window_seconds": 60, "key": "global"}]});
    assert_eq!(
        s.post("/admin/configs", &body.to_string()).await.status,
        201
    );
    let ask = |client: &str, ip: &str| json!({"client_id": client, "ip": ip, "path": "/k/x"});
    // The ip limit needs the original request's address.
    let r = check(&s, json!({"client_id": "a", "path": "/k/x"})).await;
    assert_eq!(
        (r.status.as_u16(), &r.body["field"]),
        (422, &json!("ip")),
        "{:?}",
        r.body
    );
    let mut allowed = Vec::new();
    for (client, ip) in [
        ("a", "10.0.0.1"),
        ("b", "10.0.0.1"),
        ("c", "10.0.0.1"),
        ("d", "10.0.0.1"),
    ] {
        allowed.push(check(&s, ask(client, ip)).await.body["allowed"] == true);
    }
    // The fourth id from one address: over the address's 3.
    assert_eq!(allowed, [true, true, true, false]);
    let r = check(&s, ask("e", "10.0.0.2")).await;
    assert_eq!(r.body["allowed"], true, "{:?}", r.body);
    // Four admitted in all: the shared budget is spent, whoever asks next.
    let r = check(&s, ask("f", "10.0.0.3")).await;
    assert_eq!(r.body["allowed"], false);
    let names = |b: &Value| -> Vec<(String, bool)> {
        b["limits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["name"].as_str().unwrap().to_owned(), l["allowed"] == true))
            .collect()
    };
    assert_eq!(
        names(&r.body),
        [
            ("own".into(), true),
            ("per-ip".into(), true),
            ("all".into(), false)
        ]
    );
    // The refused checks took nothing: "f" still has both its own units, and a peek
    // changes nothing either.
    let peek = check(
        &s,
        json!({"client_id": "f", "ip": "10.0.0.3", "path": "/k/x", "peek": true}),
    )
    .await;
    assert_eq!(peek.body["limits"][0]["remaining"], 2, "{:?}", peek.body);
    assert_eq!(peek.body["limits"][1]["remaining"], 3, "{:?}", peek.body);
    s.stop().await;
}

/// The issue's example of a cap on requests in flight, with a rate next to it.
const EXPORTS: &str = r#"{"endpoint": "/exports/*", "limits": [
    {"name": "minute", "algorithm": "fixed_window", "requests_per_window": 10, "window_seconds": 60},
    {"name": "exports", "algorithm": "concurrency", "max_in_flight": 5, "lease_seconds": 30}]}"#;

#[actix_rt::test]
async fn a_check_under_a_concurrency_limit_holds_a_lease_until_released_or_expired() {
    let s = server().await;
    let created = s.post("/admin/configs", EXPORTS).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let exports = &created.body["limits"][1];
    assert_eq!(
        (&exports["max_in_flight"], &exports["lease_seconds"]),
        (&json!(5), &json!(30))
    );
    assert!(exports.get("requests_per_window").is_none(), "{exports}");
    // Forward-auth cannot see a request end: the config says so.
    let warning = created.body["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("\"exports\"") && warning.contains("forward-auth"),
        "{warning}"
    );
    let ask = || json!({"client_id": "exp", "path": "/exports/x"});
    // 200 checks at once: exactly 5 are in flight, and the refused ones took nothing
    // from the minute's 10.
    let all = futures_util::future::join_all((0..200).map(|_| check(&s, ask()))).await;
    let leases: Vec<String> = all
        .iter()
        .filter(|r| r.body["allowed"] == true)
        .map(|r| r.body["lease"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(leases.len(), 5);
    let refused = all.iter().find(|r| r.body["allowed"] == false).unwrap();
    assert!(refused.body.get("lease").is_none());
    assert_eq!(refused.body["limits"][1]["allowed"], false);
    // Once all are answered (a refused answer may see another's units between their
    // taking and their giving back, as the docs say), the minute has lost 5.
    let minute = check(
        &s,
        json!({"client_id": "exp", "path": "/exports/x", "peek": true}),
    )
    .await;
    assert_eq!(
        minute.body["limits"][0]["remaining"], 5,
        "{:?}",
        minute.body
    );
    assert_eq!(refused.body["retry_after"], 1.0);
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some("\"minute\";q=10;w=60, \"exports\";q=5;qu=\"concurrent-requests\"")
    );
    // One given back: one more fits, and only one.
    let r = s
        .post("/v1/release", &json!({"lease": leases[0]}).to_string())
        .await;
    assert_eq!(
        (r.status.as_u16(), &r.body["released"]),
        (200, &json!(true)),
        "{:?}",
        r.body
    );
    assert_eq!(check(&s, ask()).await.body["allowed"], true);
    assert_eq!(check(&s, ask()).await.body["allowed"], false);
    // Given back twice (a retried call): the second gives nothing back, so the check
    // admitted meanwhile in the same instant keeps its unit.
    let again = s
        .post("/v1/release", &json!({"lease": leases[0]}).to_string())
        .await;
    assert_eq!(
        (again.status.as_u16(), &again.body["released"]),
        (200, &json!(false))
    );
    assert_eq!(check(&s, ask()).await.body["allowed"], false);
    // Not a lease: refused, nothing given back. Nor is a lease of units another
    // process holds in its memory, or one altered to give back more than it took.
    let mut foreign = ratewarden::decide::Lease::parse(&leases[1]).unwrap();
    foreign.scope ^= 2;
    let mut greedy = ratewarden::decide::Lease::parse(&leases[1]).unwrap();
    greedy.cost = u64::MAX;
    for bad in [
        json!({"lease": "x"}),
        json!({}),
        json!({"lease": 3}),
        json!({"lease": "eyJlIjoxfQ"}),
        json!({"lease": foreign.token()}),
        json!({"lease": greedy.token()}),
    ] {
        let r = s.post("/v1/release", &bad.to_string()).await;
        assert_eq!(
            (r.status.as_u16(), &r.body["field"]),
            (422, &json!("lease")),
            "{bad}"
        );
    }
    assert_eq!(check(&s, ask()).await.body["allowed"], false);
    // Leases never given back end by themselves after lease_seconds.
    s.clock.advance(31 * ratewarden::clock::NANOS_PER_SEC);
    let r = check(&s, ask()).await;
    assert_eq!(r.body["allowed"], true, "{:?}", r.body);
    assert_eq!(r.body["limits"][1]["remaining"], 4);
    // A peek holds nothing.
    let peek = check(
        &s,
        json!({"client_id": "exp", "path": "/exports/x", "peek": true}),
    )
    .await;
    assert!(peek.body.get("lease").is_none());
    s.stop().await;
}

#[actix_rt::test]
async fn concurrency_limits_are_validated() {
    let s = server().await;
    for (body, field) in [
        (
            json!({"endpoint": "/c", "limits": [{"name": "c", "algorithm": "concurrency"}]}),
            "limits[0].max_in_flight",
        ),
        (
            json!({"endpoint": "/c", "limits": [{"name": "c", "algorithm": "concurrency", "max_in_flight": 2, "requests_per_window": 3}]}),
            "limits[0].requests_per_window",
        ),
        (
            json!({"endpoint": "/c", "limits": [{"name": "c", "algorithm": "concurrency", "max_in_flight": 0}]}),
            "limits[0].max_in_flight",
        ),
        (
            json!({"endpoint": "/c", "limits": [{"name": "c", "algorithm": "concurrency", "max_in_flight": 2, "lease_seconds": 0}]}),
            "limits[0].lease_seconds",
        ),
        (
            json!({"endpoint": "/c", "limits": [{"name": "c", "requests_per_window": 2, "window_seconds": 9, "max_in_flight": 2}]}),
            "limits[0].max_in_flight",
        ),
        (
            json!({"endpoint": "/c", "algorithm": "concurrency", "requests_per_window": 2, "window_seconds": 9}),
            "algorithm",
        ),
    ] {
        let r = s.post("/admin/configs", &body.to_string()).await;
        assert_eq!(r.status, 422, "{body}: {:?}", r.body);
        assert_eq!(r.body["field"], field, "{body}: {:?}", r.body);
    }
    // A list of one concurrency limit named default stays a list (it has no top-level
    // form), and an override changes its max_in_flight.
    let one = json!({"endpoint": "/c", "limits": [{"name": "default", "algorithm": "concurrency", "max_in_flight": 1}],
        "overrides": [{"client": "vip", "requests_per_window": 3}]});
    let r = s.post("/admin/configs", &one.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["limits"][0]["max_in_flight"], 1);
    let leased = |client: &str| check(&s, json!({"client_id": client, "path": "/c"}));
    let mut vip = Vec::new();
    for _ in 0..4 {
        vip.push(leased("vip").await.body["allowed"] == true);
    }
    assert_eq!(vip, [true, true, true, false]);
    assert_eq!(leased("pleb").await.body["allowed"], true);
    assert_eq!(leased("pleb").await.body["allowed"], false);
    s.stop().await;
}
