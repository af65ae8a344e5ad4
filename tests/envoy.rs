//! Envoy's rate-limit service: descriptor rules managed through the admin API, and
//! `ShouldRateLimit` answered over real gRPC (a tonic client over HTTP/2) and as
//! protojson on `POST /v1/envoy/json`. Each test runs its own in-process server.

mod common;

use common::TestServer;
use ratewarden::envoy::proto::{
    Code, Entry, RateLimitDescriptor, RateLimitOverride, RateLimitRequest, RateLimitResponse,
};
use serde_json::{Value, json};
use tonic::transport::Channel;

const OK: i32 = Code::Ok as i32;
const OVER: i32 = Code::OverLimit as i32;
const MINUTE: i32 = 2;
const HOUR: i32 = 3;
const API_RULE: &str = "rw: generic_key=api, remote_address";

/// A server with its gRPC service on, and a client channel to it.
async fn server() -> (TestServer, Channel) {
    server_with(|_| {}).await
}

/// [`server`] with settings adjusted by `f`.
async fn server_with(f: impl FnOnce(&mut ratewarden::settings::Settings)) -> (TestServer, Channel) {
    let s = TestServer::with(|s| {
        s.grpc_bind = Some("127.0.0.1:0".parse().unwrap());
        f(s);
    })
    .await;
    let addr = s.grpc_addr.expect("the gRPC server is on");
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the gRPC server");
    (s, channel)
}

/// Creates a descriptor rule; answers its endpoint.
async fn rule(s: &TestServer, body: Value) -> String {
    let r = s.post("/admin/configs", &body.to_string()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.body["endpoint"].as_str().unwrap().to_owned()
}

/// `rw: generic_key=api, remote_address`, 2 a minute in fixed windows.
async fn api_rule(s: &TestServer) {
    let endpoint = rule(
        s,
        json!({"domain": "rw", "descriptor": [{"key": "generic_key", "value": "api"},
            {"key": "remote_address"}], "requests_per_window": 2, "window_seconds": 60,
            "algorithm": "fixed_window"}),
    )
    .await;
    assert_eq!(endpoint, API_RULE);
}

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).to_owned(),
                value: (*v).to_owned(),
            })
            .collect(),
        ..Default::default()
    }
}

fn api(ip: &str) -> RateLimitDescriptor {
    descriptor(&[("generic_key", "api"), ("remote_address", ip)])
}

fn request(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: "rw".to_owned(),
        descriptors,
        hits_addend: 0,
    }
}

async fn call(ch: &Channel, req: RateLimitRequest) -> Result<RateLimitResponse, tonic::Status> {
    ratewarden::envoy::grpc::call(ch.clone(), req, None).await
}

async fn ok(ch: &Channel, req: RateLimitRequest) -> RateLimitResponse {
    call(ch, req).await.expect("ShouldRateLimit answered")
}

fn header<'a>(res: &'a RateLimitResponse, name: &str) -> Option<&'a str> {
    res.response_headers_to_add
        .iter()
        .find(|h| h.key == name)
        .map(|h| h.value.as_str())
}

fn codes(res: &RateLimitResponse) -> Vec<i32> {
    res.statuses.iter().map(|s| s.code).collect()
}

#[actix_rt::test]
async fn answers_ok_until_the_limit_then_over_limit_with_headers() {
    let (s, ch) = server().await;
    api_rule(&s).await;
    let first = ok(&ch, request(vec![api("10.0.0.1")])).await;
    assert_eq!(first.overall_code, OK);
    let st = &first.statuses[0];
    assert_eq!(st.code, OK);
    let limit = st.current_limit.as_ref().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit, limit.name.as_str()),
        (2, MINUTE, API_RULE)
    );
    assert_eq!(st.limit_remaining, 1);
    // The fixed window started at the last whole minute; T0 is on one.
    assert_eq!(st.duration_until_reset.unwrap().seconds, 60);
    assert_eq!(
        header(&first, "ratelimit-policy"),
        Some(format!("\"{API_RULE}\";q=2;w=60").as_str())
    );
    assert_eq!(
        header(&first, "ratelimit"),
        Some(format!("\"{API_RULE}\";r=1;t=60").as_str())
    );
    assert_eq!(header(&first, "retry-after"), None);

    let second = ok(&ch, request(vec![api("10.0.0.1")])).await;
    assert_eq!(
        (second.overall_code, second.statuses[0].limit_remaining),
        (OK, 0)
    );
    let third = ok(&ch, request(vec![api("10.0.0.1")])).await;
    assert_eq!(third.overall_code, OVER);
    assert_eq!(codes(&third), [OVER]);
    assert_eq!(header(&third, "retry-after"), Some("60"));
    assert_eq!(
        header(&third, "ratelimit"),
        Some(format!("\"{API_RULE}\";r=0;t=60").as_str())
    );

    // Another address is another client; the window's end restores the first.
    assert_eq!(
        ok(&ch, request(vec![api("10.0.0.2")])).await.overall_code,
        OK
    );
    s.clock.advance(60 * 1_000_000_000);
    assert_eq!(
        ok(&ch, request(vec![api("10.0.0.1")])).await.overall_code,
        OK
    );

    // Counted and shown like any other decision: the client's stats list the rule.
    let stats = s.get("/admin/stats/10.0.0.1").await;
    assert_eq!(stats.status, 200, "{:?}", stats.body);
    assert_eq!(stats.body["status"]["total_requests"], 4);
    assert_eq!(stats.body["status"]["blocked_requests"], 1);
    assert_eq!(stats.body["status"]["endpoints"][0]["endpoint"], API_RULE);
    s.stop().await;
}

#[actix_rt::test]
async fn statuses_follow_the_descriptors_in_order() {
    let (s, ch) = server().await;
    api_rule(&s).await;
    rule(
        &s,
        json!({"domain": "rw", "descriptor": [{"key": "user"}], "requests_per_window": 5,
            "window_seconds": 3600}),
    )
    .await;
    for _ in 0..2 {
        ok(&ch, request(vec![api("10.0.0.9")])).await;
    }
    let res = ok(
        &ch,
        request(vec![
            descriptor(&[("nothing", "matches")]),
            descriptor(&[("user", "ann")]),
            api("10.0.0.9"),
            descriptor(&[("generic_key", "api")]),
        ]),
    )
    .await;
    assert_eq!(res.overall_code, OVER);
    assert_eq!(codes(&res), [OK, OK, OVER, OK]);
    // No rule: OK with no limit.
    assert!(res.statuses[0].current_limit.is_none());
    assert!(res.statuses[3].current_limit.is_none());
    let user = &res.statuses[1];
    assert_eq!(
        user.current_limit
            .as_ref()
            .map(|l| (l.requests_per_unit, l.unit)),
        Some((5, 3))
    );
    assert_eq!(user.limit_remaining, 4);
    // The headers are those of the descriptor over its limit.
    assert_eq!(header(&res, "retry-after"), Some("60"));
    assert!(
        header(&res, "ratelimit-policy")
            .unwrap()
            .contains("remote_address")
    );
    // The user's descriptor was counted although another was over its limit.
    let again = ok(&ch, request(vec![descriptor(&[("user", "ann")])])).await;
    assert_eq!(again.statuses[0].limit_remaining, 3);
    s.stop().await;
}

#[actix_rt::test]
async fn a_zero_hits_addend_only_looks_and_hits_addend_takes_units() {
    let (s, ch) = server().await;
    rule(
        &s,
        json!({"domain": "rw", "descriptor": [{"key": "user"}], "requests_per_window": 10,
            "window_seconds": 60, "algorithm": "sliding_window"}),
    )
    .await;
    let mut peek = descriptor(&[("user", "bo")]);
    peek.hits_addend = Some(0);
    for _ in 0..3 {
        let res = ok(&ch, request(vec![peek.clone()])).await;
        assert_eq!(
            (res.overall_code, res.statuses[0].limit_remaining),
            (OK, 10)
        );
    }
    let mut req = request(vec![descriptor(&[("user", "bo")])]);
    req.hits_addend = 4;
    assert_eq!(ok(&ch, req.clone()).await.statuses[0].limit_remaining, 6);
    // A descriptor's own hits_addend wins over the request's.
    let mut three = descriptor(&[("user", "bo")]);
    three.hits_addend = Some(3);
    req.descriptors = vec![three];
    assert_eq!(ok(&ch, req.clone()).await.statuses[0].limit_remaining, 3);
    // More than is left: over the limit, and nothing taken.
    req.hits_addend = 5;
    req.descriptors = vec![descriptor(&[("user", "bo")])];
    let res = ok(&ch, req).await;
    assert_eq!(
        (res.overall_code, res.statuses[0].limit_remaining),
        (OVER, 3)
    );
    let res = ok(&ch, request(vec![peek])).await;
    assert_eq!((res.overall_code, res.statuses[0].limit_remaining), (OK, 3));
    s.stop().await;
}

#[actix_rt::test]
async fn a_rule_of_tokens_is_charged_what_each_call_carries_past_its_limit() {
    let (s, ch) = server().await;
    rule(
        &s,
        json!({"domain": "rw", "descriptor": [{"key": "api_key"}], "limits": [{"name":
            "tokens", "unit": "tokens", "algorithm": "fixed_window",
            "requests_per_window": 1000, "window_seconds": 60}]}),
    )
    .await;
    let key = || descriptor(&[("api_key", "k1")]);
    // At a request's start: only looking, admitted while a token is left.
    let mut look = key();
    look.hits_addend = Some(0);
    let res = ok(&ch, request(vec![look.clone()])).await;
    assert_eq!(
        (res.overall_code, res.statuses[0].limit_remaining),
        (OK, 1000)
    );
    // When the stream is done (Envoy's apply_on_stream_done): 700, then 700 more,
    // charged past the limit.
    let mut used = request(vec![key()]);
    used.hits_addend = 700;
    let res = ok(&ch, used.clone()).await;
    assert_eq!(
        (res.overall_code, res.statuses[0].limit_remaining),
        (OK, 300)
    );
    let res = ok(&ch, used).await;
    assert_eq!(
        (res.overall_code, res.statuses[0].limit_remaining),
        (OVER, 0)
    );
    // Overdrawn: the next request's look is refused until the window repays the debt.
    let res = ok(&ch, request(vec![look.clone()])).await;
    assert_eq!(res.overall_code, OVER);
    s.clock.advance(60 * ratewarden::clock::NANOS_PER_SEC);
    let res = ok(&ch, request(vec![look])).await;
    assert_eq!(
        (res.overall_code, res.statuses[0].limit_remaining),
        (OK, 1000)
    );
    s.stop().await;
}

#[actix_rt::test]
async fn a_rule_of_tokens_counted_per_two_keys_is_charged_under_both() {
    let (s, ch) = server().await;
    rule(
        &s,
        json!({"domain": "rw", "descriptor": [{"key": "api_key"}], "limits": [
            {"name": "per-key", "unit": "tokens", "algorithm": "fixed_window",
             "requests_per_window": 1000, "window_seconds": 60},
            {"name": "all", "unit": "tokens", "algorithm": "fixed_window",
             "requests_per_window": 1500, "window_seconds": 60, "key": "global"}]}),
    )
    .await;
    let used = |key: &str| {
        let mut d = descriptor(&[("api_key", key)]);
        d.hits_addend = Some(700);
        request(vec![d])
    };
    assert_eq!(ok(&ch, used("k1")).await.overall_code, OK);
    assert_eq!(ok(&ch, used("k2")).await.overall_code, OK);
    // 100 left of all keys' 1,500: the third is charged past it.
    assert_eq!(ok(&ch, used("k3")).await.overall_code, OVER);
    // So a fourth key finds nothing left of the shared budget.
    let mut look = descriptor(&[("api_key", "k4")]);
    look.hits_addend = Some(0);
    assert_eq!(ok(&ch, request(vec![look])).await.overall_code, OVER);
    s.stop().await;
}

#[actix_rt::test]
async fn the_most_specific_rule_wins_and_overrides_apply_to_descriptor_clients() {
    let (s, ch) = server().await;
    rule(
        &s,
        json!({"domain": "rw", "descriptor": [{"key": "path"}, {"key": "user"}],
            "requests_per_window": 100, "window_seconds": 60,
            "overrides": [{"client": "_2flogin__vip", "requests_per_window": 1}]}),
    )
    .await;
    rule(
        &s,
        json!({"domain": "rw", "descriptor": [{"key": "path", "value": "/login"}, {"key": "user"}],
            "requests_per_window": 3, "window_seconds": 60, "overrides": [{"client": "vip", "requests_per_window": 7}]}),
    )
    .await;
    let login = |user: &str| request(vec![descriptor(&[("path", "/login"), ("user", user)])]);
    let res = ok(&ch, login("ann")).await;
    let limit = res.statuses[0].current_limit.clone().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.name.as_str()),
        (3, "rw: path=%2Flogin, user")
    );
    // The client is the open value: an override names it.
    let res = ok(&ch, login("vip")).await;
    assert_eq!(
        res.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        7
    );
    let other = request(vec![descriptor(&[("path", "/home"), ("user", "ann")])]);
    let res = ok(&ch, other).await;
    let limit = res.statuses[0].current_limit.clone().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.name.as_str()),
        (100, "rw: path, user")
    );
    // Another domain has no rules.
    let mut elsewhere = login("ann");
    elsewhere.domain = "other".to_owned();
    assert!(ok(&ch, elsewhere).await.statuses[0].current_limit.is_none());
    s.stop().await;
}

#[actix_rt::test]
async fn a_global_rule_is_one_budget_whatever_the_open_values() {
    let (s, ch) = server().await;
    rule(
        &s,
        json!({"domain": "rw", "descriptor": [{"key": "generic_key", "value": "search"},
            {"key": "remote_address"}], "requests_per_window": 3, "window_seconds": 60,
            "algorithm": "fixed_window", "key": "global"}),
    )
    .await;
    let search = |ip: &str| {
        request(vec![descriptor(&[
            ("generic_key", "search"),
            ("remote_address", ip),
        ])])
    };
    let mut seen = Vec::new();
    for ip in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"] {
        seen.push(codes(&ok(&ch, search(ip)).await)[0]);
    }
    assert_eq!(seen, [1, 1, 1, 2], "OK, OK, OK, OVER_LIMIT");
    s.stop().await;
}

#[actix_rt::test]
async fn a_limit_sent_by_the_caller_is_a_budget_of_its_own() {
    let (s, ch) = server().await;
    api_rule(&s).await;
    let mut d = api("10.0.0.3");
    d.limit = Some(RateLimitOverride {
        requests_per_unit: 3,
        unit: 1,
    });
    let res = ok(
        &ch,
        request(vec![d.clone(), d.clone(), d.clone(), d.clone()]),
    )
    .await;
    assert_eq!(codes(&res), [OK, OK, OK, OVER]);
    let limit = res.statuses[0].current_limit.clone().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit, limit.name.as_str()),
        (3, 1, "rw: generic_key=api, remote_address (3/SECOND)")
    );
    // The rule's own budget is untouched, and its window is not reset by the other.
    let plain = ok(&ch, request(vec![api("10.0.0.3")])).await;
    assert_eq!(
        (plain.overall_code, plain.statuses[0].limit_remaining),
        (OK, 1)
    );
    ok(&ch, request(vec![d.clone()])).await;
    let plain = ok(&ch, request(vec![api("10.0.0.3")])).await;
    assert_eq!(
        (plain.overall_code, plain.statuses[0].limit_remaining),
        (OK, 0)
    );
    assert_eq!(
        ok(&ch, request(vec![api("10.0.0.3")])).await.overall_code,
        OVER
    );
    // With no rule, a caller's limit limits nothing: only an operator's rule makes a
    // budget.
    let mut free = descriptor(&[("tenant", "t1")]);
    free.limit = Some(RateLimitOverride {
        requests_per_unit: 1,
        unit: 2,
    });
    let res = ok(&ch, request(vec![free.clone(), free])).await;
    assert_eq!(codes(&res), [OK, OK]);
    assert!(res.statuses.iter().all(|st| st.current_limit.is_none()));
    s.stop().await;
}

#[actix_rt::test]
async fn with_a_decision_token_calls_must_carry_it() {
    let (s, ch) = server_with(|s| s.decision_token = Some("d-secret".to_owned())).await;
    api_rule(&s).await;
    use ratewarden::envoy::grpc::call as call_with;
    let refused = call_with(ch.clone(), request(vec![api("10.0.0.8")]), None).await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::Unauthenticated);
    let wrong = call_with(ch.clone(), request(vec![api("10.0.0.8")]), Some("guess")).await;
    assert_eq!(wrong.unwrap_err().code(), tonic::Code::Unauthenticated);
    let res = call_with(ch.clone(), request(vec![api("10.0.0.8")]), Some("d-secret"))
        .await
        .unwrap();
    assert_eq!(
        res.statuses[0].limit_remaining, 1,
        "the refused calls took nothing"
    );
    s.stop().await;
}

#[actix_rt::test]
async fn concurrent_calls_never_admit_more_than_the_limit() {
    let (s, ch) = server().await;
    rule(
        &s,
        json!({"domain": "rw", "descriptor": [{"key": "generic_key", "value": "burst"}],
            "requests_per_window": 100, "window_seconds": 3600, "algorithm": "sliding_window"}),
    )
    .await;
    let calls = (0..300).map(|_| {
        let ch = ch.clone();
        async move {
            ok(&ch, request(vec![descriptor(&[("generic_key", "burst")])]))
                .await
                .overall_code
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let admitted = answers.iter().filter(|c| **c == OK).count();
    let refused = answers.iter().filter(|c| **c == OVER).count();
    assert_eq!((admitted, refused), (100, 200));
    s.stop().await;
}

#[actix_rt::test]
async fn bad_requests_are_invalid_arguments_and_take_nothing() {
    let (s, ch) = server().await;
    api_rule(&s).await;
    let huge = "x".repeat(64 * 1024 + 1);
    let mut empty_domain = request(vec![api("10.0.0.4")]);
    empty_domain.domain.clear();
    let mut zero_limit = api("10.0.0.4");
    zero_limit.limit = Some(RateLimitOverride {
        requests_per_unit: 0,
        unit: 2,
    });
    let mut week = api("10.0.0.4");
    week.limit = Some(RateLimitOverride {
        requests_per_unit: 1,
        unit: 7,
    });
    let cases = [
        empty_domain,
        request(vec![]),
        request(vec![api("10.0.0.4"), descriptor(&[])]),
        request(vec![api("10.0.0.4"), descriptor(&[("", "v")])]),
        request(vec![api("10.0.0.4"), descriptor(&[("k", &huge)])]),
        request(vec![api("10.0.0.4"); 65]),
        request(vec![zero_limit]),
        request(vec![week]),
    ];
    for req in cases {
        let e = call(&ch, req.clone()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{req:?}: {e:?}");
        assert!(!e.message().is_empty());
    }
    // Nothing was taken by the refused calls.
    let res = ok(&ch, request(vec![api("10.0.0.4")])).await;
    assert_eq!(res.statuses[0].limit_remaining, 1);
    // A long or empty value (a client's header) is a client like any other, never a
    // refused call that Envoy would let through.
    let long = "u".repeat(8 * 1024);
    for value in [long.as_str(), ""] {
        let res = ok(&ch, request(vec![api(value), api(value), api(value)])).await;
        assert_eq!(codes(&res), [OK, OK, OVER], "{:.10}", value);
    }
    s.stop().await;
}

#[actix_rt::test]
async fn the_json_form_answers_protojson_with_200_and_429() {
    let s = TestServer::start().await;
    api_rule(&s).await;
    let body = json!({"domain": "rw", "descriptors": [{"entries": [
        {"key": "generic_key", "value": "api"}, {"key": "remote_address", "value": "10.1.1.1"}]}]})
    .to_string();
    let r = s.post("/v1/envoy/json", &body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body,
        json!({"overallCode": "OK", "statuses": [{"code": "OK",
            "currentLimit": {"name": API_RULE, "requestsPerUnit": 2, "unit": "MINUTE"},
            "limitRemaining": 1, "durationUntilReset": "60s"}],
            "responseHeadersToAdd": r.body["responseHeadersToAdd"].clone()})
    );
    assert_eq!(
        r.header("ratelimit-policy"),
        Some(format!("\"{API_RULE}\";q=2;w=60").as_str())
    );
    s.post("/v1/envoy/json", &body).await;
    let r = s.post("/v1/envoy/json", &body).await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    assert_eq!(r.body["overallCode"], "OVER_LIMIT");
    assert_eq!(r.body["statuses"][0]["code"], "OVER_LIMIT");
    assert!(r.body["statuses"][0].get("limitRemaining").is_none());
    assert_eq!(r.header("retry-after"), Some("60"));
    // The proto's own field names are read too.
    let snake = json!({"domain": "rw", "hits_addend": 1, "descriptors": [{"entries": [
        {"key": "generic_key", "value": "api"}, {"key": "remote_address", "value": "10.1.1.2"}],
        "hits_addend": 0}]});
    let r = s.post("/v1/envoy/json", &snake.to_string()).await;
    assert_eq!(
        (r.status.as_u16(), &r.body["statuses"][0]["limitRemaining"]),
        (200, &json!(2))
    );
    for bad in [
        json!({"domain": "rw"}),
        json!({"domain": "rw", "descriptors": [{"entries": [{"key": "k", "value": 1}]}]}),
        json!({"domian": "rw", "descriptors": []}),
        json!([1]),
    ] {
        let r = s.post("/v1/envoy/json", &bad.to_string()).await;
        assert_eq!(r.status, 400, "{bad}: {:?}", r.body);
        assert_eq!(r.body["error"], "invalid_request", "{bad}");
    }
    s.stop().await;
}

#[actix_rt::test]
async fn descriptor_rules_are_configs_like_any_other() {
    let s = TestServer::start().await;
    let r = s
        .post(
            "/admin/configs",
            &json!({"domain": "rw", "descriptor": [{"key": "generic_key", "value": "a b"},
                {"key": "remote_address"}], "requests_per_window": 2, "window_seconds": 90})
            .to_string(),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let endpoint = "rw: generic_key=a%20b, remote_address";
    assert_eq!(r.body["endpoint"], endpoint);
    assert_eq!(r.body["domain"], "rw");
    let location = r.header("location").unwrap().to_owned();
    assert_eq!(
        location,
        "/admin/configs/rw%3A%20generic_key%3Da%2520b%2C%20remote_address"
    );
    assert_eq!(s.get(&location).await.body["requests_per_window"], 2);
    let r = s.put(&location, r#"{"requests_per_window": 5}"#).await;
    assert_eq!(
        (r.status.as_u16(), &r.body["requests_per_window"]),
        (200, &json!(5))
    );
    // The identity cannot change, and a path config cannot become a rule.
    let r = s.put(&location, r#"{"domain": "other"}"#).await;
    assert_eq!(
        (r.status.as_u16(), &r.body["field"]),
        (422, &json!("endpoint"))
    );
    let r = s.put(&location, r#"{"domain": null}"#).await;
    assert_eq!(
        (r.status.as_u16(), &r.body["field"]),
        (422, &json!("domain"))
    );
    let r = s.put("/admin/configs/*", r#"{"domain": "rw"}"#).await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    // A second rule with the same pattern conflicts.
    let again = json!({"domain": "rw", "descriptor": [{"key": "generic_key", "value": "a b"},
        {"key": "remote_address"}], "requests_per_window": 1, "window_seconds": 1});
    assert_eq!(
        s.post("/admin/configs", &again.to_string()).await.status,
        409
    );
    for (bad, field) in [
        (
            json!({"domain": "rw", "requests_per_window": 1, "window_seconds": 1}),
            "descriptor",
        ),
        (
            json!({"descriptor": [{"key": "k"}], "requests_per_window": 1, "window_seconds": 1}),
            "domain",
        ),
        (
            json!({"domain": "", "descriptor": [{"key": "k"}], "requests_per_window": 1, "window_seconds": 1}),
            "domain",
        ),
        (
            json!({"domain": "rw", "descriptor": [], "requests_per_window": 1, "window_seconds": 1}),
            "descriptor",
        ),
        (
            json!({"domain": "rw", "descriptor": [{"key": ""}], "requests_per_window": 1, "window_seconds": 1}),
            "descriptor[0].key",
        ),
        (
            json!({"domain": "rw", "descriptor": [{"key": "k", "colour": 1}], "requests_per_window": 1, "window_seconds": 1}),
            "descriptor",
        ),
        (
            json!({"domain": "rw", "descriptor": [{"key": "k"}], "endpoint": "/x", "requests_per_window": 1, "window_seconds": 1}),
            "endpoint",
        ),
        (
            json!({"domain": 5, "descriptor": [{"key": "k"}], "requests_per_window": 1, "window_seconds": 1}),
            "domain",
        ),
    ] {
        let r = s.post("/admin/configs", &bad.to_string()).await;
        assert_eq!(r.status, 422, "{bad}: {:?}", r.body);
        assert_eq!(r.body["field"], field, "{bad}: {:?}", r.body);
    }
    // In the list, the history, and deleted by its encoded identity.
    let list = s.get("/admin/configs").await;
    assert!(
        list.body
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["endpoint"] == endpoint)
    );
    let history = s
        .get("/admin/configs/history?endpoint=rw%3A%20generic_key%3Da%2520b%2C%20remote_address")
        .await;
    assert_eq!(
        history.body.as_array().map(Vec::len),
        Some(2),
        "{:?}",
        history.body
    );
    assert_eq!(s.delete(&location).await.status, 204);
    assert_eq!(s.get(&location).await.status, 404);
    // A path still names the path config: a space never reads as a path.
    assert_eq!(s.get("/admin/configs/a%20b").await.status, 400);
    s.stop().await;
}

#[actix_rt::test]
async fn descriptor_decisions_are_streamed_with_the_descriptor() {
    let (s, ch) = server().await;
    api_rule(&s).await;
    let mut feed = common::ws::connect(&s.url, "/ws/10.0.0.7").await;
    common::ws::next_of(&mut feed, "client_stats").await;
    for _ in 0..3 {
        ok(&ch, request(vec![api("10.0.0.7")])).await;
    }
    let first = common::ws::next_of(&mut feed, "request_processed").await;
    assert_eq!(first["client_id"], "10.0.0.7");
    assert_eq!(first["endpoint"], API_RULE);
    assert_eq!(
        first["path"],
        "rw: generic_key=api, remote_address=10.0.0.7"
    );
    assert_eq!(first["via"], "envoy");
    assert_eq!(
        (first["limit"].as_u64(), first["remaining"].as_u64()),
        (Some(2), Some(1))
    );
    let refused = common::ws::next_of(&mut feed, "rate_limit_exceeded").await;
    assert_eq!(refused["endpoint"], API_RULE);
    drop(feed);
    s.stop().await;
}

#[actix_rt::test]
async fn a_rule_may_share_one_of_its_limits_among_every_descriptor() {
    let (s, ch) = server().await;
    rule(
        &s,
        json!({"domain": "rw", "descriptor": [{"key": "user"}], "limits": [
            {"name": "own", "algorithm": "fixed_window", "requests_per_window": 2, "window_seconds": 60},
            {"name": "all", "algorithm": "fixed_window", "requests_per_window": 3, "window_seconds": 60, "key": "global"},
            {"name": "flight", "algorithm": "concurrency", "max_in_flight": 1}]}),
    )
    .await;
    // Envoy never says when a request is done: the concurrency limit is not enforced
    // here (held units would never come back), and the rule says so.
    let shown = s.get("/admin/configs").await;
    let rule = shown
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["domain"] == "rw")
        .unwrap();
    let warning = rule["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("\"flight\"") && warning.contains("Envoy"),
        "{warning}"
    );
    let user = |u: &str| request(vec![descriptor(&[("user", u)])]);
    let mut seen = Vec::new();
    for u in ["u1", "u1", "u1", "u2", "u2"] {
        seen.push(codes(&ok(&ch, user(u)).await)[0]);
    }
    // u1's own 2 (one in flight at most would refuse the second), u1 over its own (the
    // shared budget untouched), u2's first (the shared third), then the shared budget
    // is spent.
    assert_eq!(seen, [1, 1, 2, 1, 2], "OK, OK, OVER, OK, OVER");
    s.stop().await;
}

#[actix_rt::test]
async fn a_rule_of_several_limits_reports_its_most_constraining_one() {
    let (s, ch) = server().await;
    rule(
        &s,
        json!({"domain": "rw", "descriptor": [{"key": "user"}], "limits": [
            {"name": "second", "algorithm": "fixed_window", "requests_per_window": 5, "window_seconds": 1},
            {"name": "hour", "algorithm": "fixed_window", "requests_per_window": 3, "window_seconds": 3600}]}),
    )
    .await;
    let user = || request(vec![descriptor(&[("user", "u1")])]);
    let first = ok(&ch, user()).await;
    let st = &first.statuses[0];
    // 2 of 3 left an hour against 4 of 5 a second: the hour binds.
    let limit = st.current_limit.as_ref().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit, st.limit_remaining),
        (3, HOUR, 2)
    );
    assert_eq!(
        header(&first, "ratelimit-policy"),
        Some("\"second\";q=5;w=1, \"hour\";q=3;w=3600")
    );
    ok(&ch, user()).await;
    ok(&ch, user()).await;
    let over = ok(&ch, user()).await;
    assert_eq!(over.overall_code, OVER);
    assert_eq!(over.statuses[0].current_limit.as_ref().unwrap().unit, HOUR);
    assert_eq!(header(&over, "retry-after"), Some("3600"));
    s.stop().await;
}
