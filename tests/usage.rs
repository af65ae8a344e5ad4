//! Limits of what requests use (tokens, bytes), charged after the fact: a config's
//! limits with a `unit`, `/v1/check` with an `estimate` and its `check_id`, and
//! `POST /v1/report`, which charges past the limit (the limit is then overdrawn until
//! its debt is repaid) or reconciles an estimate both ways. Each test runs its own
//! in-process server on a manual clock.

mod common;

use common::ws::{connect, next_of};
use common::{Resp, TestServer};
use ratewarden::clock::NANOS_PER_SEC;
use serde_json::{Value, json};

/// A server with `/llm/*`: 1,000 tokens a minute per client (a fixed window, so the
/// debt's repayment falls on the minute), and 100 requests a minute.
async fn server() -> TestServer {
    let s = TestServer::start().await;
    let body = json!({"endpoint": "/llm/*", "limits": [
        {"name": "requests", "algorithm": "fixed_window", "requests_per_window": 100, "window_seconds": 60},
        {"name": "tokens", "unit": "tokens", "algorithm": "fixed_window", "requests_per_window": 1000, "window_seconds": 60}]});
    let r = s.post("/admin/configs", &body.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    s
}

async fn check(s: &TestServer, body: Value) -> Resp {
    s.post("/v1/check", &body.to_string()).await
}

async fn report(s: &TestServer, body: Value) -> Resp {
    s.post("/v1/report", &body.to_string()).await
}

/// The remaining units of the limit named `name` in a check's or report's `limits`.
fn left(r: &Resp, name: &str) -> u64 {
    let limits = r.body["limits"].as_array().expect("limits");
    let l = limits.iter().find(|l| l["name"] == name).expect(name);
    l["remaining"].as_u64().unwrap()
}

#[actix_rt::test]
async fn reports_charge_past_the_limit_and_the_debt_refuses_until_the_window_repays_it() {
    let s = server().await;
    let c = "llm-1";
    // 700 tokens each: the first two are admitted (the second with 300 left), the
    // third is refused until the minute is over.
    for (i, after) in [(0, 300), (1, 0)] {
        let r = check(&s, json!({"client_id": c, "path": "/llm/chat"})).await;
        assert_eq!(r.body["allowed"], true, "request {i}: {:?}", r.body);
        let r = report(
            &s,
            json!({"client_id": c, "path": "/llm/chat", "cost": 700}),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body["charged"], 700);
        assert_eq!(r.body["endpoint"], "/llm/*");
        assert_eq!(left(&r, "tokens"), after);
        // Only the limits of tokens are charged, and shown with their unit.
        assert_eq!(r.body["limits"].as_array().unwrap().len(), 1);
        assert_eq!(r.body["limits"][0]["unit"], "tokens");
    }
    let r = check(&s, json!({"client_id": c, "path": "/llm/chat"})).await;
    assert_eq!(r.body["allowed"], false, "{:?}", r.body);
    assert_eq!(
        left(&r, "tokens"),
        0,
        "an overdrawn limit shows 0, never less"
    );
    assert_eq!(r.body["limits"][1]["allowed"], false);
    // The requests limit took nothing of the refused request.
    assert_eq!(left(&r, "requests"), 98);
    // The window (2027-01-15T08:00:00Z, a whole minute) repays the 400 owed.
    let retry = r.body["retry_after"].as_f64().unwrap();
    assert_eq!(retry, 60.0);
    s.clock.advance(60 * NANOS_PER_SEC - 1);
    let r = check(
        &s,
        json!({"client_id": c, "path": "/llm/chat", "peek": true}),
    )
    .await;
    assert_eq!(r.body["allowed"], false);
    s.clock.advance(1);
    let r = check(&s, json!({"client_id": c, "path": "/llm/chat"})).await;
    assert_eq!(r.body["allowed"], true, "{:?}", r.body);
    assert_eq!(left(&r, "tokens"), 1000);
}

#[actix_rt::test]
async fn an_estimate_is_taken_up_front_and_a_report_reconciles_it_both_ways() {
    let s = server().await;
    let c = "llm-2";
    let r = check(
        &s,
        json!({"client_id": c, "path": "/llm/a", "estimate": 500}),
    )
    .await;
    assert_eq!(r.body["allowed"], true, "{:?}", r.body);
    assert_eq!(left(&r, "tokens"), 500);
    let id = r.body["check_id"].as_str().expect("a check id").to_owned();
    // It used 200: 300 come back.
    let r = report(
        &s,
        json!({"client_id": c, "path": "/llm/a", "cost": 200, "check_id": id}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        (&r.body["charged"], &r.body["refunded"]),
        (&json!(0), &json!(300))
    );
    assert_eq!(left(&r, "tokens"), 800);
    // Once only.
    let again = report(
        &s,
        json!({"client_id": c, "path": "/llm/a", "cost": 200, "check_id": id}),
    )
    .await;
    assert_eq!(again.status, 422, "{:?}", again.body);
    assert_eq!(again.body["field"], "check_id");
    let r = check(&s, json!({"client_id": c, "path": "/llm/a", "peek": true})).await;
    assert_eq!(left(&r, "tokens"), 800, "a second report charged nothing");

    // An estimate of 100 that turned out 900: 800 more are charged, past nothing yet.
    let r = check(
        &s,
        json!({"client_id": c, "path": "/llm/a", "estimate": 100}),
    )
    .await;
    let id = r.body["check_id"].as_str().unwrap().to_owned();
    assert_eq!(left(&r, "tokens"), 700);
    let r = report(
        &s,
        json!({"client_id": c, "path": "/llm/a", "cost": 900, "check_id": id}),
    )
    .await;
    assert_eq!(
        (&r.body["charged"], &r.body["refunded"]),
        (&json!(800), &json!(0))
    );
    assert_eq!(left(&r, "tokens"), 0);
    assert_eq!(r.body["allowed"], false, "overdrawn by 100");

    // An estimate that does not fit is refused and takes nothing, and gets no id.
    let r = check(
        &s,
        json!({"client_id": "llm-3", "path": "/llm/a", "estimate": 600}),
    )
    .await;
    let id = r.body["check_id"].as_str().unwrap().to_owned();
    let r = check(
        &s,
        json!({"client_id": "llm-3", "path": "/llm/a", "estimate": 600}),
    )
    .await;
    assert_eq!(r.body["allowed"], false);
    assert!(r.body.get("check_id").is_none(), "{:?}", r.body);
    assert_eq!(left(&r, "tokens"), 400);
    assert_eq!(left(&r, "requests"), 99);
    // A reconciliation to 0 gives all of it back, never more.
    let r = report(
        &s,
        json!({"client_id": "llm-3", "path": "/llm/a", "cost": 0, "check_id": id}),
    )
    .await;
    assert_eq!(r.body["refunded"], 600);
    assert_eq!(left(&r, "tokens"), 1000);
}

#[actix_rt::test]
async fn concurrent_reports_lose_nothing() {
    let s = server().await;
    let c = "llm-many";
    let reports =
        (0..1000).map(|_| report(&s, json!({"client_id": c, "path": "/llm/x", "cost": 1})));
    let answers = futures_util::future::join_all(reports).await;
    assert!(answers.iter().all(|r| r.status == 200));
    let r = check(&s, json!({"client_id": c, "path": "/llm/x", "peek": true})).await;
    assert_eq!(left(&r, "tokens"), 0);
    // 1,000 charged: one more overdraws by exactly one, repaid with the window.
    let r = report(&s, json!({"client_id": c, "path": "/llm/x", "cost": 1})).await;
    assert_eq!(r.body["allowed"], false);
    // A batch charges in order, each on its own.
    let r = report(
        &s,
        json!({"reports": [
        {"client_id": "llm-b", "path": "/llm/x", "cost": 10},
        {"client_id": "llm-b", "path": "/llm/x", "cost": 20}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(left_of(&r.body["results"][0], "tokens"), 990);
    assert_eq!(left_of(&r.body["results"][1], "tokens"), 970);
}

fn left_of(answer: &Value, name: &str) -> u64 {
    let l = answer["limits"].as_array().unwrap();
    l.iter().find(|l| l["name"] == name).unwrap()["remaining"]
        .as_u64()
        .unwrap()
}

#[actix_rt::test]
async fn bad_reports_name_the_field_and_charge_nothing() {
    let s = server().await;
    s.config("/plain", 5, 60, "fixed_window").await;
    let c = "llm-bad";
    let bad = [
        (json!({"client_id": c, "path": "/llm/a"}), "cost"),
        (
            json!({"client_id": c, "path": "/llm/a", "cost": -1}),
            "cost",
        ),
        (
            json!({"client_id": c, "path": "/llm/a", "cost": 1.5}),
            "cost",
        ),
        (
            json!({"client_id": c, "path": "/llm/a", "cost": "7"}),
            "cost",
        ),
        (
            json!({"client_id": c, "path": "/llm/a", "cost": 2_000_000_000_000_000u64}),
            "cost",
        ),
        (
            json!({"client_id": c, "path": "/llm/a", "cost": 1, "check_id": "nope"}),
            "check_id",
        ),
        (
            json!({"client_id": c, "path": "/llm/a", "cost": 1, "check_id": 5}),
            "check_id",
        ),
        (
            json!({"client_id": c, "path": "/llm/a", "cost": 1, "extra": 5}),
            "extra",
        ),
        (json!({"path": "/llm/a", "cost": 1}), "client_id"),
        (json!({"client_id": c, "path": "/plain", "cost": 1}), "path"),
        (
            json!({"reports": [{"client_id": c, "path": "/llm/a", "cost": 1}, {"client_id": c, "path": "/llm/a"}]}),
            "reports[1].cost",
        ),
        (json!({"reports": []}), "reports"),
    ];
    for (body, field) in bad {
        let r = report(&s, body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {:?}", r.body);
        assert_eq!(r.body["field"], field, "{body}");
    }
    // A check id that claims more than any check could take is not one.
    let r = check(&s, json!({"client_id": c, "path": "/llm/a", "estimate": 1})).await;
    let id = r.body["check_id"].as_str().unwrap().to_owned();
    let engine = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let json = base64::Engine::decode(engine, &id).unwrap();
    let mut lease: Value = serde_json::from_slice(&json).unwrap();
    lease["c"] = json!(1_000_000u64);
    let forged = base64::Engine::encode(engine, lease.to_string());
    let body = json!({"client_id": c, "path": "/llm/a", "cost": 0, "check_id": forged});
    let r = report(&s, body).await;
    assert_eq!(
        (r.status.as_u16(), &r.body["field"]),
        (422, &json!("check_id"))
    );
    // A check id names its own client and path.
    let r = check(&s, json!({"client_id": c, "path": "/llm/a", "estimate": 5})).await;
    let id = r.body["check_id"].as_str().unwrap().to_owned();
    let r = report(
        &s,
        json!({"client_id": "other", "path": "/llm/a", "cost": 1, "check_id": id}),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), &r.body["field"]),
        (422, &json!("check_id"))
    );
    // Checks: an estimate needs limits of tokens; a cost is for limits of requests.
    let r = check(&s, json!({"client_id": c, "path": "/plain", "estimate": 1})).await;
    assert_eq!(
        (r.status.as_u16(), &r.body["field"]),
        (422, &json!("estimate"))
    );
    let r = check(
        &s,
        json!({"client_id": c, "path": "/llm/a", "estimate": 1001}),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), &r.body["field"]),
        (422, &json!("estimate"))
    );
    // Nothing was charged by any of them (the checks took their estimates, 5 and 1).
    let r = check(&s, json!({"client_id": c, "path": "/llm/a", "peek": true})).await;
    assert_eq!(left(&r, "tokens"), 994);
}

#[actix_rt::test]
async fn units_are_validated_per_limit() {
    let s = TestServer::start().await;
    let s = &s;
    let post = |limit: Value| {
        let body = json!({"endpoint": "/u/*", "limits": [limit]});
        async move { s.post("/admin/configs", &body.to_string()).await }
    };
    let bad = [
        (
            json!({"name": "a", "unit": "pages", "requests_per_window": 1, "window_seconds": 60}),
            "limits[0].unit",
        ),
        (
            json!({"name": "a", "unit": "tokens", "algorithm": "concurrency", "max_in_flight": 2}),
            "limits[0].unit",
        ),
        (
            json!({"name": "a", "cost_from": "response_header:X-Usage", "requests_per_window": 1, "window_seconds": 60}),
            "limits[0].cost_from",
        ),
        (
            json!({"name": "a", "unit": "tokens", "cost_from": "header:X", "requests_per_window": 1, "window_seconds": 60}),
            "limits[0].cost_from",
        ),
        (
            json!({"name": "a", "unit": "tokens", "cost_from": "response_header:", "requests_per_window": 1, "window_seconds": 60}),
            "limits[0].cost_from",
        ),
        (
            json!({"name": "a", "unit": "bytes", "requests_per_window": 5_000_000_000u64, "window_seconds": 60}),
            "limits[0].requests_per_window",
        ),
        (
            json!({"name": "a", "requests_per_window": 2_000_000_000u64, "window_seconds": 60}),
            "limits[0].requests_per_window",
        ),
        // A bucket whose default rate (quota / window) is above 10^9 a second.
        (
            json!({"name": "a", "unit": "bytes", "algorithm": "token_bucket",
                "requests_per_window": 2_000_000_000u64, "window_seconds": 1}),
            "limits[0].refill_rate",
        ),
    ];
    for (limit, field) in bad {
        let r = post(limit.clone()).await;
        assert_eq!(r.status, 422, "{limit}: {:?}", r.body);
        assert_eq!(r.body["field"], field, "{limit}");
    }
    // 2 GiB a day of a fixed window of bytes; a config of one limit of tokens keeps the
    // `limits` form (its top-level fields would say requests).
    let r = post(json!({"name": "downloads", "unit": "bytes", "algorithm": "fixed_window", "requests_per_window": 2_147_483_648u64, "window_seconds": 86400})).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["limits"][0]["unit"], "bytes");
    assert!(r.body.get("requests_per_window").is_none(), "{:?}", r.body);
    let r = s.get("/admin/configs/u/*").await;
    assert_eq!(r.body["limits"][0]["requests_per_window"], 2_147_483_648u64);
    // Header names are case-insensitive: these two limits name one header.
    let body = json!({"endpoint": "/v/*", "limits": [
        {"name": "a", "unit": "tokens", "requests_per_window": 5, "window_seconds": 60,
         "cost_from": "response_header:X-Used"},
        {"name": "b", "unit": "tokens", "requests_per_window": 50, "window_seconds": 3600,
         "cost_from": "response_header:x-used"}]});
    let r = s.post("/admin/configs", &body.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
}

const MIB: usize = 1024 * 1024;

/// An upstream on a free loopback port: `/llm/*` answers `X-Usage-Tokens: 700`
/// (`/llm/none`: no such header, `/llm/bad`: not a number); `/files/<n>` answers `n` MiB,
/// streamed in 64 KiB chunks.
fn upstream() -> String {
    use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
    async fn handler(req: HttpRequest) -> HttpResponse {
        let path = req.path().to_owned();
        if let Some(n) = path.strip_prefix("/files/") {
            let chunks = n.parse::<usize>().unwrap_or(0) * 16;
            let body = futures_util::stream::iter(
                (0..chunks)
                    .map(|_| Ok::<_, actix_web::Error>(web::Bytes::from_static(&[7; 64 * 1024]))),
            );
            return HttpResponse::Ok().streaming(body);
        }
        match path.as_str() {
            "/llm/none" => HttpResponse::Ok().json(json!({"tokens": "unknown"})),
            "/llm/failed" => HttpResponse::BadGateway().json(json!({"error": "model down"})),
            "/llm/huge" => HttpResponse::Ok()
                .insert_header(("X-Usage-Tokens", "99999999999999999999"))
                .json(json!({})),
            "/llm/bad" => HttpResponse::Ok()
                .insert_header(("X-Usage-Tokens", "lots"))
                .json(json!({})),
            _ => HttpResponse::Ok()
                .insert_header(("X-Usage-Tokens", "700"))
                .json(json!({"answer": 42})),
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = HttpServer::new(|| App::new().default_service(web::to(handler)))
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
    actix_rt::spawn(server);
    url
}

async fn proxied() -> TestServer {
    let up = upstream();
    TestServer::with(|c| c.upstream = Some(up)).await
}

#[actix_rt::test]
async fn the_proxy_charges_the_upstreams_usage_header_and_refuses_once_overdrawn() {
    let s = proxied().await;
    let body = json!({"endpoint": "/llm/*", "limits": [{"name": "tokens", "unit": "tokens",
        "algorithm": "fixed_window", "requests_per_window": 1000, "window_seconds": 60,
        "cost_from": "response_header:X-Usage-Tokens"}]});
    assert_eq!(
        s.post("/admin/configs", &body.to_string()).await.status,
        201
    );
    // 700 each: two admitted, the third refused until the window repays the debt.
    let statuses = s.statuses("u1", "/llm/chat", 3).await;
    assert_eq!(statuses, [200, 200, 429]);
    let r = s.get_as("u1", "/llm/chat").await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"/llm/*\";q=1000;w=60;qu=\"ratewarden-tokens\"")
    );
    s.clock.advance(60 * NANOS_PER_SEC);
    assert_eq!(s.statuses("u1", "/llm/chat", 1).await, [200]);
    // A missing or malformed header charges 1, and is counted.
    let series = "ratewarden_cost_header_missing_total{endpoint=\"/llm/*\",limit=\"tokens\"}";
    assert_eq!(s.metric(series).await, 0.0);
    assert_eq!(s.statuses("u2", "/llm/none", 1).await, [200]);
    assert_eq!(s.statuses("u2", "/llm/bad", 1).await, [200]);
    assert_eq!(s.metric(series).await, 2.0);
    let r = check(
        &s,
        json!({"client_id": "u2", "path": "/llm/x", "peek": true}),
    )
    .await;
    assert_eq!(r.body["remaining"], 998, "{:?}", r.body);
    let charged = "ratewarden_units_charged_total{endpoint=\"/llm/*\",limit=\"tokens\"}";
    assert_eq!(s.metric(charged).await, (3 * 700 + 2) as f64);
    let peek = |client: &str| json!({"client_id": client, "path": "/llm/x", "peek": true});
    // An upstream that failed said nothing of what was used: nothing charged, and not
    // a missing header.
    assert_eq!(s.statuses("u2", "/llm/failed", 1).await, [502]);
    assert_eq!(s.metric(series).await, 2.0);
    assert_eq!(check(&s, peek("u2")).await.body["remaining"], 998);
    // More digits than any quota: charged the most a charge takes, not 1.
    assert_eq!(s.statuses("u3", "/llm/huge", 1).await, [200]);
    assert_eq!(check(&s, peek("u3")).await.body["remaining"], 0);
    assert_eq!(s.metric(series).await, 2.0);
}

#[actix_rt::test]
async fn a_download_is_delivered_whole_and_its_bytes_refuse_the_next_one() {
    let s = proxied().await;
    let body = json!({"endpoint": "/files/*", "limits": [{"name": "downloads", "unit": "bytes",
        "algorithm": "sliding_window", "requests_per_window": 4 * MIB, "window_seconds": 60}]});
    assert_eq!(
        s.post("/admin/configs", &body.to_string()).await.status,
        201
    );
    let client = awc::Client::new();
    let get = |n: usize| {
        client
            .get(format!("{}/files/{n}", s.url))
            .insert_header(("X-Client-ID", "d1"))
            .send()
    };
    // 5 MiB under 4 MiB a minute: admitted with the balance positive, delivered whole.
    let mut res = get(5).await.unwrap();
    assert_eq!(res.status(), 200);
    let bytes = res.body().limit(16 * MIB).await.unwrap();
    assert_eq!(bytes.len(), 5 * MIB);
    // Charged as it streamed: 1 MiB overdrawn, and the next download is refused.
    let r = check(
        &s,
        json!({"client_id": "d1", "path": "/files/1", "peek": true}),
    )
    .await;
    assert_eq!(r.body["remaining"], 0, "{:?}", r.body);
    let res = get(1).await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(
        res.headers().get("ratelimit-policy").unwrap(),
        "\"/files/*\";q=4194304;w=60;qu=\"content-bytes\""
    );
    // Until the window has passed.
    s.clock.advance(61 * NANOS_PER_SEC);
    let mut res = get(1).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.body().limit(16 * MIB).await.unwrap().len(), MIB);
}

#[actix_rt::test]
async fn charges_reach_the_feeds_and_the_inspector_shows_the_debt() {
    let s = server().await;
    let c = "llm-seen";
    let mut feed = connect(&s.url, &format!("/ws/{c}")).await;
    let r = report(&s, json!({"client_id": c, "path": "/llm/a", "cost": 1300})).await;
    assert_eq!(r.body["limits"][0]["debt"], 300, "{:?}", r.body);
    let m = next_of(&mut feed, "usage_charged").await;
    assert_eq!(
        (&m["client_id"], &m["endpoint"]),
        (&json!(c), &json!("/llm/*"))
    );
    assert_eq!(
        (&m["charged"], &m["remaining"], &m["debt"]),
        (&json!(1300), &json!(0), &json!(300))
    );
    assert_eq!(m["limits"][0]["name"], "tokens");
    assert_eq!(m["retry_after"], 60);
    // The client's statistics (the dashboard's inspector) show the unit and the debt.
    let stats = s.get(&format!("/admin/stats/{c}")).await;
    let endpoint = &stats.body["status"]["endpoints"][0];
    let tokens = (endpoint["limits"].as_array().unwrap().iter())
        .find(|l| l["name"] == "tokens")
        .expect("the limit of tokens");
    assert_eq!(
        (&tokens["unit"], &tokens["debt"], &tokens["remaining"]),
        (&json!("tokens"), &json!(300), &json!(0))
    );
    assert_eq!(tokens["retry_after"], 60);
}

#[actix_rt::test]
async fn forward_auth_takes_the_declared_length_for_limits_of_bytes() {
    let s = TestServer::start().await;
    let body = json!({"endpoint": "/up/*", "limits": [{"name": "bytes", "unit": "bytes",
        "algorithm": "fixed_window", "requests_per_window": 100, "window_seconds": 60}]});
    assert_eq!(
        s.post("/admin/configs", &body.to_string()).await.status,
        201
    );
    let ask = |length: &'static str| {
        let headers = [
            ("X-Original-URI", "/up/file"),
            ("X-Client-ID", "fa"),
            ("X-Original-Content-Length", length),
        ];
        let s = &s;
        async move {
            s.send("GET", "/v1/forward-auth", &headers, None)
                .await
                .status
                .as_u16()
        }
    };
    // 60 of 100, then 60 more do not fit: taken up front, all or nothing.
    assert_eq!(ask("60").await, 200);
    assert_eq!(ask("60").await, 429);
    // No length (a request without a body): admitted while a byte is left.
    assert_eq!(ask("").await, 200);
    assert_eq!(ask("40").await, 200);
    assert_eq!(ask("").await, 429);
    assert_eq!(ask("lots").await, 400);
    // More than the quota could never pass: answered with the refusal's status (the
    // proxy maps it), not a 413 a proxy would turn into a 500.
    assert_eq!(ask("101").await, 429);
}

#[actix_rt::test]
async fn a_routes_limit_of_bytes_takes_the_declared_length_and_refuses_what_never_fits() {
    let s = TestServer::start().await;
    let body = json!({"endpoint": "/api/*", "limits": [{"name": "bytes", "unit": "bytes",
        "algorithm": "fixed_window", "requests_per_window": 100, "window_seconds": 60}]});
    assert_eq!(
        s.post("/admin/configs", &body.to_string()).await.status,
        201
    );
    let post = |n: usize| {
        let s = &s;
        async move {
            let headers = [
                ("X-Client-ID", "up"),
                ("Content-Type", "application/octet-stream"),
            ];
            let body = vec![b'x'; n];
            let r = s
                .send_bytes("POST", "/api/data", &headers, Some(&body))
                .await;
            r.status.as_u16()
        }
    };
    // Whatever the route answers (it serves GET), the limit took 60 of 100.
    assert_ne!(post(60).await, 429);
    assert_eq!(post(60).await, 429, "60 more do not fit the 40 left");
    // The refusal's body says what is left, as its headers do.
    let headers = [
        ("X-Client-ID", "up"),
        ("Content-Type", "application/octet-stream"),
    ];
    let r = s
        .send_bytes("POST", "/api/data", &headers, Some(&[b'x'; 60]))
        .await;
    assert_eq!((r.status.as_u16(), &r.body["remaining"]), (429, &json!(40)));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("40"));
    // More than the whole quota could never pass: a 413, not a 429 to wait out.
    assert_eq!(post(101).await, 413);
    assert_ne!(post(40).await, 429);
}
