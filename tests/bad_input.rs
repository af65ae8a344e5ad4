//! Bad input gets a clear 4xx JSON error, changes nothing, and the server keeps serving.

mod common;

use actix_web::App;
use actix_web::test::{TestRequest, call_service, init_service};
use common::TestServer;
use ratewarden::app::build_state;
use ratewarden::clock::ManualClock;
use ratewarden::http::routes;
use ratewarden::settings::Settings;

const VALID: &str = r#"{"endpoint": "/v", "requests_per_window": 5, "window_seconds": 10}"#;

#[actix_rt::test]
async fn malformed_configs_are_refused_and_change_nothing() {
    let s = TestServer::start().await;
    s.config("/keep", 3, 30, "fixed_window").await;
    let before = s.get("/admin/configs").await.body;

    let huge_array = format!("[{}]", vec!["1"; 20_000].join(","));
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("POST", r#"{"endpoint": "/a", "requests_per_window": -1, "window_seconds": 10}"#.into(), 422, "requests_per_window"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 0, "window_seconds": 10}"#.into(), 422, "requests_per_window"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 1e40, "window_seconds": 10}"#.into(), 422, "requests_per_window"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 99999999999999999999999, "window_seconds": 10}"#.into(), 422, "requests_per_window"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": "ten", "window_seconds": 10}"#.into(), 422, "requests_per_window"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 2.5, "window_seconds": 10}"#.into(), 422, "requests_per_window"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 5, "window_seconds": 0}"#.into(), 422, "window_seconds"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 5, "window_seconds": 31536001}"#.into(), 422, "window_seconds"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 5, "window_seconds": 10, "algorithm": "leaky_bucket"}"#.into(), 422, "algorithm"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 5, "algorithm": "fixed_window", "calendar": "year"}"#.into(), 422, "calendar"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 5, "window_seconds": 10, "key": "header:"}"#.into(), 422, "key"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 5, "window_seconds": 10, "key": "header:X Tenant"}"#.into(), 422, "key"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 5, "window_seconds": 10, "key": "cookie:session"}"#.into(), 422, "key"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 5, "window_seconds": 10, "key": "header:Authorization"}"#.into(), 422, "key"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 5, "window_seconds": 10, "key": "IP"}"#.into(), 422, "key"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 5, "window_seconds": 10, "key": 5}"#.into(), 422, "key"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 5, "window_seconds": 10, "key": "global", "overrides": [{"client": "a", "requests_per_window": 9}]}"#.into(), 422, "overrides"),
        ("POST", r#"{"domain": "d", "descriptor": [{"key": "k"}], "requests_per_window": 5, "window_seconds": 10, "key": "ip"}"#.into(), 422, "key"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 5, "window_seconds": 10, "key": "header:x-t", "overrides": [{"client": "a", "requests_per_window": 9}]}"#.into(), 422, "overrides"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 5, "algorithm": "fixed_window", "calendar": ["month"]}"#.into(), 422, "calendar"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 5, "calendar": "month"}"#.into(), 422, "calendar"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 5, "algorithm": "fixed_window", "calendar": "month", "window_seconds": 60}"#.into(), 422, "window_seconds"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 5, "algorithm": "fixed_window", "calendar": null}"#.into(), 422, "window_seconds"),
        ("POST", r#"{"endpoint": "/a", "limits": [{"name": "x", "requests_per_window": 5, "window_seconds": 0}]}"#.into(), 422, "limits[0].window_seconds"),
        ("POST", r#"{"endpoint": "/a", "limits": [{"name": "x", "requests_per_window": 5, "window_seconds": 10}], "requests_per_window": 5}"#.into(), 422, "requests_per_window"),
        ("POST", r#"{"endpoint": "/a", "limits": [{"name": "x y", "requests_per_window": 5, "window_seconds": 10}]}"#.into(), 422, "limits[0].name"),
        ("POST", r#"{"endpoint": "/a", "limits": [{"name": "x", "requests_per_window": 5, "window_seconds": 10, "algorithm": "leaky"}]}"#.into(), 422, "limits[0].algorithm"),
        ("POST", r#"{"endpoint": "/a", "limits": [{"name": "x", "requests_per_window": 5, "window_seconds": 10, "key": "header:Cookie"}]}"#.into(), 422, "limits[0].key"),
        ("POST", r#"{"endpoint": "/a", "limits": [{"name": "x", "requests_per_window": 5, "window_seconds": 10, "key": 7}]}"#.into(), 422, "limits[0].key"),
        ("POST", r#"{"endpoint": "/a", "limits": [{"name": "x", "requests_per_window": 5, "window_seconds": 10, "key": "ip"}, {"name": "y", "requests_per_window": 5, "window_seconds": 10, "key": "global"}]}"#.into(), 422, "limits"),
        ("POST", r#"{"endpoint": "/a", "limits": [{"name": "x", "requests_per_window": 5, "window_seconds": 10}, {"name": "y", "requests_per_window": 5, "window_seconds": 10, "key": "global"}], "overrides": [{"client": "c", "limit": "y", "requests_per_window": 1}]}"#.into(), 422, "overrides[0].limit"),
        ("POST", r#"{"domain": "rw", "descriptor": [{"key": "k", "value": "v"}], "limits": [{"name": "x", "requests_per_window": 5, "window_seconds": 10}, {"name": "y", "requests_per_window": 5, "window_seconds": 10, "key": "ip"}]}"#.into(), 422, "limits[1].key"),
        ("POST", r#"{"endpoint": "/a", "limits": [{"name": "a", "requests_per_window": 5, "window_seconds": 10}, {"name": "b", "requests_per_window": 5, "window_seconds": 10}], "overrides": [{"client": "c", "requests_per_window": 1}]}"#.into(), 422, "overrides[0].limit"),
        ("POST", r#"{"endpoint": "/a", "limits": [5]}"#.into(), 422, "limits[0]"),
        ("POST", r#"{"endpoint": "/a", "limits": {}}"#.into(), 422, "limits"),
        ("POST", r#"{"endpoint": "/a", "limits": null}"#.into(), 422, "requests_per_window"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 5, "window_seconds": 10, "colour": 1}"#.into(), 422, "colour"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 5, "window_seconds": 10, "id": 9}"#.into(), 422, "id"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 5, "window_seconds": 10, "refill_rate": 0}"#.into(), 422, "refill_rate"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 5, "window_seconds": 10, "burst_limit": -4}"#.into(), 422, "burst_limit"),
        ("POST", r#"{"endpoint": "api/data", "requests_per_window": 5, "window_seconds": 10}"#.into(), 422, "endpoint"),
        ("POST", r#"{"endpoint": "/a b", "requests_per_window": 5, "window_seconds": 10}"#.into(), 422, "endpoint"),
        ("POST", format!(r#"{{"endpoint": "/{}", "requests_per_window": 5, "window_seconds": 10}}"#, "a".repeat(300)), 422, "endpoint"),
        ("POST", r#"{"requests_per_window": 5, "window_seconds": 10}"#.into(), 422, "endpoint"),
        ("POST", r#"{"endpoint": "/a", "requests_per_window": 5"#.into(), 400, ""),
        ("POST", "not json".into(), 400, ""),
        ("POST", "[1, 2]".into(), 400, ""),
        ("POST", huge_array, 400, ""),
        ("POST", format!(r#"{{"endpoint": "/a", "pad": "{}"}}"#, "x".repeat(1 << 20)), 413, ""),
        ("PUT", r#"{"requests_per_window": 0}"#.into(), 422, "requests_per_window"),
        ("PUT", r#"{"endpoint": "/other"}"#.into(), 422, "endpoint"),
        ("PUT", r#"{"is_active": "yes"}"#.into(), 422, "is_active"),
        ("PUT", r#"{"algorithm": null}"#.into(), 422, "algorithm"),
        ("PUT", "{".into(), 400, ""),
        ("PUT", r#"{"mode": "loud"}"#.into(), 422, "mode"),
        ("PUT", r#"{"mode": null}"#.into(), 422, "mode"),
        ("PUT", r#"{"overrides": {"client": "a"}}"#.into(), 422, "overrides"),
        ("PUT", r#"{"overrides": [{"client": "a", "requests_per_window": 5, "colour": 1}]}"#.into(), 422, "overrides"),
        ("PUT", r#"{"overrides": [{"requests_per_window": 5}]}"#.into(), 422, "overrides"),
        ("PUT", r#"{"overrides": [{"client": "a b", "requests_per_window": 5}]}"#.into(), 422, "overrides[0].client"),
        ("PUT", r#"{"overrides": [{"client": "*", "requests_per_window": 5}]}"#.into(), 422, "overrides[0].client"),
        ("PUT", r#"{"overrides": [{"client": "a**", "requests_per_window": 5}]}"#.into(), 422, "overrides[0].client"),
        ("PUT", r#"{"overrides": [{"client": "a", "requests_per_window": 5}, {"client": "a", "requests_per_window": 6}]}"#.into(), 422, "overrides[1].client"),
        ("PUT", r#"{"overrides": [{"client": "a*", "requests_per_window": 0}]}"#.into(), 422, "overrides[0].requests_per_window"),
        ("PUT", r#"{"overrides": [{"client": "a", "limit": "nope", "requests_per_window": 5}]}"#.into(), 422, "overrides[0].limit"),
        ("PUT", r#"{"limits": [{"name": "x", "requests_per_window": 5, "window_seconds": 10}], "window_seconds": 5}"#.into(), 422, "window_seconds"),
        ("PUT", r#"{"limits": [{"name": "x", "requests_per_window": 5, "window_seconds": 10}, {"name": "x", "requests_per_window": 6, "window_seconds": 10}]}"#.into(), 422, "limits[1].name"),
        ("PUT", r#"{"overrides": [{"client": "a*", "requests_per_window": 5, "window_seconds": 31536001}]}"#.into(), 422, "overrides[0].window_seconds"),
        ("PUT", r#"{"overrides": [{"client": "a*", "requests_per_window": 5, "refill_rate": -1}]}"#.into(), 422, "overrides[0].refill_rate"),
        ("PUT", format!(r#"{{"overrides": [{}]}}"#, vec![r#"{"client": "x", "requests_per_window": 1}"#; 1001].join(",")), 422, "overrides"),
    ];
    for (method, body, status, field) in &cases {
        let path = if *method == "POST" {
            "/admin/configs"
        } else {
            "/admin/configs/keep"
        };
        let r = s.send(method, path, &[], Some(body)).await;
        let shown = &body[..body.len().min(80)];
        assert_eq!(r.status.as_u16(), *status, "{method} {shown}: {:?}", r.body);
        assert!(
            r.body["error"].is_string() && r.body["message"].is_string(),
            "{shown}"
        );
        if !field.is_empty() {
            assert_eq!(r.body["error"], "validation_failed", "{shown}");
            assert_eq!(r.body["field"], *field, "{shown}");
        }
    }

    let wrong_type = s
        .send(
            "POST",
            "/admin/configs",
            &[("content-type", "text/plain")],
            Some(VALID),
        )
        .await;
    assert_eq!(wrong_type.status, 415);
    assert_eq!(wrong_type.body["error"], "unsupported_media_type");
    let bad_path = s.get("/admin/configs/a%zz").await;
    assert_eq!(bad_path.status, 400);

    assert_eq!(
        s.get("/admin/configs").await.body,
        before,
        "nothing changed"
    );
    assert_eq!(s.get("/health").await.status, 200);
    assert_eq!(
        s.post("/admin/configs", VALID).await.status,
        201,
        "still serving"
    );
}

#[actix_rt::test]
async fn bad_client_ids_and_bodies_on_protected_routes_get_json_errors() {
    let s = TestServer::start().await;
    let long = "a".repeat(10 * 1024);
    for id in [long.as_str(), "", "has space", "semi;colon", "slash/"] {
        let r = s
            .send("GET", "/api/data", &[("X-Client-ID", id)], None)
            .await;
        assert_eq!(r.status, 400, "{id:.20}");
        assert_eq!(r.body["error"], "invalid_client_id");
    }
    // Non-ASCII bytes in the header.
    let r = s
        .send("GET", "/api/data", &[("X-Client-ID", "caf\u{e9}")], None)
        .await;
    assert_eq!(r.status, 400);

    let megabyte = format!(r#"{{"pad": "{}"}}"#, "x".repeat(1 << 20));
    let r = s.post("/api/submit", &megabyte).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.body["error"], "payload_too_large");
    let r = s.post("/api/submit", "{oops").await;
    assert_eq!(
        (r.status.as_u16(), r.body["error"].as_str()),
        (400, Some("invalid_json"))
    );
    let r = s
        .send(
            "POST",
            "/api/submit",
            &[("content-type", "text/plain")],
            Some("{}"),
        )
        .await;
    assert_eq!(r.status, 415);
    assert_eq!(s.send("GET", "/api/submit", &[], None).await.status, 405);
    assert_eq!(s.get("/api/data").await.status, 200, "still serving");
}

#[actix_rt::test]
async fn without_a_token_the_admin_api_only_answers_loopback_peers() {
    let mut settings = Settings::for_tests();
    settings.admin_token = None;
    let state = build_state(&settings, ManualClock::new(common::T0)).unwrap();
    let app = init_service(App::new().app_data(state).configure(routes(None))).await;

    let remote = TestRequest::get()
        .uri("/admin/configs")
        .peer_addr("192.0.2.7:5000".parse().unwrap())
        .to_request();
    let res = call_service(&app, remote).await;
    assert_eq!(res.status(), 403);
    let body: serde_json::Value = actix_web::test::read_body_json(res).await;
    assert_eq!(body["error"], "forbidden");

    let local = TestRequest::get()
        .uri("/admin/configs")
        .peer_addr("127.0.0.1:5000".parse().unwrap())
        .to_request();
    assert_eq!(call_service(&app, local).await.status(), 200);
}

/// One hostile request: method, path, headers, body, and the 4xx it must get.
struct Hostile {
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    status: u16,
}

fn hostile(method: &'static str, path: &str, status: u16) -> Hostile {
    Hostile {
        method,
        path: path.to_owned(),
        headers: Vec::new(),
        body: None,
        status,
    }
}

impl Hostile {
    fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// The table of the issue: bad JSON, wrong types, overflows, non-finite numbers,
/// duplicate keys, huge arrays, invalid UTF-8, header injection in client ids, and odd
/// paths, across every route.
fn hostile_requests() -> Vec<Hostile> {
    let cfg = |extra: &str| {
        format!(r#"{{"endpoint": "/h", "requests_per_window": 5, "window_seconds": 10{extra}}}"#)
    };
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let wide = format!("[{}]", vec!["{}"; 20_000].join(","));
    let mut t = vec![
        // Config bodies.
        hostile("POST", "/admin/configs", 400).body("{"),
        hostile("POST", "/admin/configs", 400).body(""),
        hostile("POST", "/admin/configs", 400).body("null"),
        hostile("POST", "/admin/configs", 400).body("\"a string\""),
        hostile("POST", "/admin/configs", 400).body(r#"{"endpoint": "/h", "requests_per_window": NaN, "window_seconds": 10}"#),
        hostile("POST", "/admin/configs", 400).body(r#"{"endpoint": "/h", "requests_per_window": Infinity, "window_seconds": 10}"#),
        hostile("POST", "/admin/configs", 400).body(r#"{"endpoint": "/h", "requests_per_window": -Infinity, "window_seconds": 10}"#),
        hostile("POST", "/admin/configs", 400).body(r#"{"endpoint": "/h", "requests_per_window": 1e400, "window_seconds": 10}"#),
        hostile("POST", "/admin/configs", 400).body(cfg(r#", "window_seconds": 3600"#)),
        hostile("POST", "/admin/configs", 400).body(r#"{"endpoint": "/h", "endpoint": "/i", "requests_per_window": 5, "window_seconds": 10}"#),
        hostile("POST", "/admin/configs", 400).body(deep.clone()),
        hostile("POST", "/admin/configs", 400).body(wide),
        hostile("POST", "/admin/configs", 400).body(b"{\"endpoint\": \"/\xff\xfe\", \"requests_per_window\": 5, \"window_seconds\": 10}".to_vec()),
        hostile("POST", "/admin/configs", 400).body(b"\xef\xbb\xbf{}".to_vec()),
        hostile("POST", "/admin/configs", 400).body(cfg("} trailing")),
        hostile("POST", "/admin/configs", 422).body(cfg(r#", "burst_limit": 18446744073709551616"#)),
        hostile("POST", "/admin/configs", 422).body(r#"{"endpoint": "/h", "requests_per_window": 5, "window_seconds": -0.5}"#),
        hostile("POST", "/admin/configs", 422).body(r#"{"endpoint": "/h", "requests_per_window": true, "window_seconds": 10}"#),
        hostile("POST", "/admin/configs", 422).body(r#"{"endpoint": "/h", "requests_per_window": [5], "window_seconds": 10}"#),
        hostile("POST", "/admin/configs", 422).body(r#"{"endpoint": "/h", "requests_per_window": {"n": 5}, "window_seconds": 10}"#),
        hostile("POST", "/admin/configs", 422).body(r#"{"endpoint": 7, "requests_per_window": 5, "window_seconds": 10}"#),
        hostile("POST", "/admin/configs", 422).body(r#"{"endpoint": "/h/../admin", "requests_per_window": 5, "window_seconds": 10}"#),
        hostile("POST", "/admin/configs", 422).body(r#"{"endpoint": "//h", "requests_per_window": 5, "window_seconds": 10}"#),
        hostile("POST", "/admin/configs", 422).body(r#"{"endpoint": "/h\u0000", "requests_per_window": 5, "window_seconds": 10}"#),
        hostile("POST", "/admin/configs", 422).body(r#"{"endpoint": "/h\r\nX-Evil: 1", "requests_per_window": 5, "window_seconds": 10}"#),
        hostile("POST", "/admin/configs", 422).body(cfg(r#", "refill_rate": 1e308"#)),
        hostile("POST", "/admin/configs", 422).body(cfg(r#", "algorithm": "SLIDING_WINDOW""#)),
        hostile("POST", "/admin/configs", 422).body(cfg(r#", "is_active": 1"#)),
        hostile("POST", "/admin/configs", 415).body(cfg("")).header("content-type", "application/x-www-form-urlencoded"),
        hostile("POST", "/admin/configs", 415).body(cfg("")).header("content-type", "text/json; charset=utf-8"),
        hostile("POST", "/admin/configs", 413).body(format!(r#"{{"pad": "{}"}}"#, "x".repeat(70_000))),
        hostile("PUT", "/admin/configs/keep", 400).body(deep),
        hostile("PUT", "/admin/configs/keep", 400).body(r#"{"is_active": false, "is_active": true}"#),
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"window_seconds": 1.5}"#),
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"requests_per_window": 9223372036854775808}"#),
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"algorithm": "token_bucket", "refill_rate": -1}"#),
        // Shadow mode and overrides.
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"mode": 1}"#),
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"mode": "SHADOW"}"#),
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"overrides": "partner-*"}"#),
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"overrides": [{"client": "a\r\nX-Evil: 1", "requests_per_window": 1}]}"#),
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"overrides": [{"client": "a*b*", "requests_per_window": 1}]}"#),
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"overrides": [{"client": "a", "requests_per_window": 18446744073709551616}]}"#),
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"overrides": [[[[[{"client": "a"}]]]]]}"#),
        // Several limits.
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"limits": [[[[[{"name": "a"}]]]]]}"#),
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"limits": [{"name": "a\r\nX-Evil: 1", "requests_per_window": 1, "window_seconds": 1}]}"#),
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"limits": [{"name": "a", "requests_per_window": 18446744073709551616, "window_seconds": 1}]}"#),
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"limits": [{"name": "a", "requests_per_window": 1, "window_seconds": 1, "refill_rate": 1e308}]}"#),
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"limits": "burst"}"#),
        // Limits of other keys and concurrency limits.
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"limits": [{"name": "a", "requests_per_window": 1, "window_seconds": 1}, {"name": "b", "requests_per_window": 1, "window_seconds": 1, "key": "header:a\r\nb"}]}"#),
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"limits": [{"name": "a", "requests_per_window": 1, "window_seconds": 1}, {"name": "b", "requests_per_window": 1, "window_seconds": 1, "key": ["global"]}]}"#),
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"limits": [{"name": "a", "algorithm": "concurrency", "max_in_flight": 18446744073709551616}]}"#),
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"limits": [{"name": "a", "algorithm": "concurrency", "max_in_flight": -1}]}"#),
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"limits": [{"name": "a", "algorithm": "concurrency", "max_in_flight": 2, "lease_seconds": 1e9}]}"#),
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"limits": [{"name": "a", "algorithm": "concurrency", "max_in_flight": 2, "lease_seconds": 86401}]}"#),
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"limits": [{"name": "a", "algorithm": "concurrency", "max_in_flight": "4"}]}"#),
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"warnings": []}"#),
        // Releases of what was never leased.
        hostile("POST", "/v1/release", 422).body(r#"{"lease": "eyJlIjoiLyIsInYiOlsiYVxyXG5iIl0sInQiOlsxXSwiYyI6MX0"}"#),
        hostile("POST", "/v1/release", 422).body(format!(r#"{{"lease": "{}"}}"#, "A".repeat(5000))),
        hostile("POST", "/v1/release", 422).body(r#"{"lease": "%%%%"}"#),
        hostile("POST", "/v1/release", 422).body(r#"{"lease": "x", "extra": 1}"#),
        hostile("POST", "/v1/release", 400).body("[1, 2,]"),
        hostile("GET", "/v1/release", 405),
        // History, rollback, reload.
        hostile("GET", "/admin/configs/history?limit=abc", 400),
        hostile("GET", "/admin/configs/history?limit=18446744073709551616", 400),
        hostile("GET", "/admin/configs/history?endpoint=%00", 400),
        hostile("GET", "/admin/configs/history?endpoint=/a&endpoint=/b", 400),
        hostile("POST", "/admin/configs/keep/rollback?to=1e3", 400),
        hostile("POST", "/admin/configs/keep/rollback?to=99999999999999999999", 400),
        hostile("POST", "/admin/configs/keep/rollback?to=-1", 404),
        hostile("POST", "/admin/configs/keep/rollback?to=1&to=2", 400),
        hostile("POST", "/admin/configs/%FF/rollback?to=1", 400),
        hostile("POST", "/admin/configs/keep/rollbackx?to=1", 405),
        hostile("POST", "/admin/reload", 409),
        hostile("GET", "/admin/reload", 405),
        // Resets and top clients.
        hostile("DELETE", "/admin/clients/a%20b/state", 400),
        hostile("DELETE", &format!("/admin/clients/{}/state", "a".repeat(129)), 400),
        hostile("DELETE", "/admin/clients/probe/state?endpoint=%FF", 400),
        hostile("DELETE", "/admin/clients/probe/state?endpoint=/nope", 404),
        hostile("DELETE", "/admin/clients/probe/state?endpoint=/keep&endpoint=*", 400),
        hostile("POST", "/admin/clients/probe/state", 405).body("{}"),
        hostile("GET", "/admin/top?by=loud", 400),
        hostile("GET", "/admin/top?window=-1m", 400),
        hostile("GET", "/admin/top?window=%E2%80%AE5m", 400),
        hostile("GET", "/admin/top?limit=18446744073709551616", 400),
        hostile("POST", "/admin/top", 405).body("{}"),
        hostile("POST", "/openapi.json", 405).body("{}"),
        // Descriptor rules (Envoy): no endpoint beside them, both halves, sane sizes.
        hostile("POST", "/admin/configs", 422).body(r#"{"domain": "rw", "descriptor": [{"key": "k"}], "endpoint": "rw: k", "requests_per_window": 5, "window_seconds": 10}"#),
        hostile("POST", "/admin/configs", 422).body(r#"{"domain": "rw", "requests_per_window": 5, "window_seconds": 10}"#),
        hostile("POST", "/admin/configs", 422).body(r#"{"domain": "rw\u0000", "descriptor": [{"key": "k"}], "requests_per_window": 5, "window_seconds": 10}"#),
        hostile("POST", "/admin/configs", 422).body(format!(r#"{{"domain": "{}", "descriptor": [{{"key": "k"}}], "requests_per_window": 5, "window_seconds": 10}}"#, "d".repeat(129))),
        hostile("POST", "/admin/configs", 422).body(format!(r#"{{"domain": "rw", "descriptor": [{}], "requests_per_window": 5, "window_seconds": 10}}"#, vec![r#"{"key": "k"}"#; 17].join(","))),
        hostile("POST", "/admin/configs", 422).body(format!(r#"{{"domain": "rw", "descriptor": [{{"key": "k", "value": "{}"}}], "requests_per_window": 5, "window_seconds": 10}}"#, "v".repeat(1025))),
        hostile("POST", "/admin/configs", 422).body(r#"{"domain": "rw", "descriptor": [{"value": "v"}], "requests_per_window": 5, "window_seconds": 10}"#),
        hostile("POST", "/admin/configs", 422).body(r#"{"domain": "rw", "descriptor": "k", "requests_per_window": 5, "window_seconds": 10}"#),
        hostile("PUT", "/admin/configs/keep", 422).body(r#"{"domain": "rw", "descriptor": [{"key": "k"}]}"#),
        hostile("GET", "/admin/configs/rw%3A%20nothing", 404),
        hostile("GET", "/admin/configs/rw%3A%20a%00", 400),
        hostile("GET", "/admin/configs/history?endpoint=a%20b", 400),
        // Envoy's protocol as JSON: protojson or nothing.
        hostile("POST", "/v1/envoy/json", 400).body("{"),
        hostile("POST", "/v1/envoy/json", 400).body(r#"{"domain": "", "descriptors": [{"entries": [{"key": "k", "value": "v"}]}]}"#),
        hostile("POST", "/v1/envoy/json", 400).body(r#"{"domain": "rw", "descriptors": []}"#),
        hostile("POST", "/v1/envoy/json", 400).body(r#"{"domain": "rw", "descriptors": [{"entries": []}]}"#),
        hostile("POST", "/v1/envoy/json", 400).body(r#"{"domain": "rw", "descriptors": [{"entries": [{"key": "", "value": "v"}]}]}"#),
        hostile("POST", "/v1/envoy/json", 413).body(format!(r#"{{"domain": "rw", "descriptors": [{{"entries": [{{"key": "k", "value": "{}"}}]}}]}}"#, "v".repeat(64 * 1024 + 1))),
        hostile("POST", "/v1/envoy/json", 400).body(r#"{"domain": "rw", "hitsAddend": 4294967296, "descriptors": [{"entries": [{"key": "k", "value": "v"}]}]}"#),
        hostile("POST", "/v1/envoy/json", 400).body(r#"{"domain": "rw", "hitsAddend": -1, "descriptors": [{"entries": [{"key": "k", "value": "v"}]}]}"#),
        hostile("POST", "/v1/envoy/json", 400).body(r#"{"domain": "rw", "descriptors": [{"entries": [{"key": "k", "value": "v"}], "limit": {"requestsPerUnit": 1, "unit": "FORTNIGHT"}}]}"#),
        hostile("POST", "/v1/envoy/json", 400).body(r#"{"domain": "rw", "descriptors": [{"entries": [{"key": "k", "value": "v"}], "limit": {"requestsPerUnit": 0, "unit": "SECOND"}}]}"#),
        hostile("POST", "/v1/envoy/json", 400).body(r#"{"domain": "rw", "descriptors": [{"entries": [{"key": "k", "value": "v"}], "limit": {"requestsPerUnit": 1, "unit": 99}}]}"#),
        hostile("POST", "/v1/envoy/json", 400).body(r#"{"domain": "rw", "descriptors": [{"entries": [{"key": "k", "value": "v"}]}], "extra": 1}"#),
        hostile("POST", "/v1/envoy/json", 415).body("{}").header("content-type", "text/plain"),
        hostile("GET", "/v1/envoy/json", 405),
        // Config paths: encodings, dot and empty segments.
        hostile("PUT", "/admin/configs/nope", 404).body(r#"{"is_active": false}"#),
        hostile("GET", "/admin/configs/a%2", 400),
        hostile("GET", "/admin/configs/%C3%28", 400),
        hostile("GET", "/admin/configs/a%00b", 400),
        hostile("GET", "/admin/configs/keep%2F..%2F..", 404),
        hostile("DELETE", "/admin/configs/..", 404),
        hostile("DELETE", "/admin/configs/a//b", 404),
        hostile("DELETE", "/admin/configs/*", 409),
        hostile("DELETE", "/admin/configs/never", 404),
        hostile("PATCH", "/admin/configs/keep", 405).body("{}"),
        // Statistics and feeds: client ids in paths.
        hostile("GET", "/admin/stats/a%20b", 400),
        hostile("GET", &format!("/admin/stats/{}", "a".repeat(129)), 400),
        hostile("GET", "/admin/stats/%3Cscript%3E", 400),
        hostile("POST", "/admin/stats", 405).body("{}"),
        hostile("DELETE", "/admin/traffic", 405),
        hostile("GET", "/admin/nothing", 404),
        hostile("GET", "/ws/a%0D%0Ab", 400),
        // Without a token, a guarded path addressed to a host that is not this machine's
        // (DNS rebinding, a proxy's public name) is refused before anything is read.
        hostile("GET", "/admin/configs", 403).header("Host", "evil.example:8000"),
        hostile("GET", "/admin/stats", 403).header("Host", "127.0.0.1.evil.example"),
        hostile("GET", "/admin/top", 403).header("Host", "localhost@evil.example"),
        hostile("GET", "/admin/stats/probe", 403).header("Host", "[::2]:8000"),
        hostile("GET", "/events/global", 403).header("Host", "evil.example"),
        hostile("GET", "/ws/global", 403).header("Host", "evil.example"),
        hostile("POST", "/admin/configs", 403).header("Host", "evil.example").body(cfg("")),
        hostile("DELETE", "/admin/configs/keep", 403).header("Host", "0x7f000001"),
        hostile("DELETE", "/admin/clients/probe/state", 403).header("Host", ""),
        hostile("POST", "/v1/check", 403).header("Host", "evil.example").body(r#"{"client_id": "probe", "path": "/api/data"}"#),
        hostile("GET", "/events/%E2%80%AE", 400),
        hostile("POST", "/events/global", 405),
        hostile("GET", "/ws/global", 400),
        // Client ids in headers: injection and smuggling attempts.
        hostile("GET", "/api/data", 400).header("X-Client-ID", "a%0D%0AX-Evil: 1"),
        hostile("GET", "/api/data", 400).header("X-Client-ID", "a\tb"),
        hostile("GET", "/api/data", 400).header("X-Client-ID", "<script>alert(1)</script>"),
        hostile("GET", "/api/data", 400).header("X-Client-ID", "a,b"),
        hostile("GET", "/api/data", 400).header("X-Client-ID", "\"quoted\""),
        hostile("GET", "/api/data", 400).header("X-Client-ID", "a").header("X-Client-ID", "b"),
        hostile("GET", "/api/data", 400).header("X-Client-ID", "x".repeat(129)),
        // Demo, dashboard and the rest.
        hostile("POST", "/api/submit", 400).body(b"\xff\xff".to_vec()),
        hostile("POST", "/api/submit", 400).body(r#"{"a": 1, "a": 2}"#),
        hostile("POST", "/api/submit", 400).body("[1, 2,]"),
        hostile("PUT", "/api/submit", 405).body("{}"),
        hostile("DELETE", "/", 405),
        hostile("POST", "/health", 405),
        hostile("PUT", "/livez", 405).body("{}"),
        hostile("DELETE", "/readyz", 405),
        hostile("POST", "/metrics", 405),
        hostile("POST", "/dashboard", 405),
        hostile("GET", "/static/..%2F..%2FCargo.toml", 404),
        hostile("GET", "/static/dashboard.js%00.png", 404),
        hostile("GET", "/nowhere/%FF", 404),
    ];
    for h in &mut t {
        if h.body.is_some() && !h.headers.iter().any(|(k, _)| *k == "content-type") {
            h.headers
                .push(("content-type", "application/json".to_owned()));
        }
    }
    t
}

#[actix_rt::test]
async fn hostile_requests_across_every_route_get_json_errors_and_change_nothing() {
    let s = TestServer::start().await;
    s.config("/keep", 3, 30, "fixed_window").await;
    s.config("/api/data", 3, 30, "fixed_window").await;
    assert_eq!(s.statuses("probe", "/api/data", 1).await, [200]);
    let configs = s.get("/admin/configs").await.body;
    let probe = s.get("/admin/stats/probe").await.body;

    let table = hostile_requests();
    assert!(table.len() >= 50, "{} cases", table.len());
    for h in &table {
        let headers: Vec<(&str, &str)> = h.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = s
            .send_bytes(h.method, &h.path, &headers, h.body.as_deref())
            .await;
        let what = format!(
            "{} {:.60} {:?} {:.60}",
            h.method,
            h.path,
            h.headers,
            String::from_utf8_lossy(h.body.as_deref().unwrap_or_default())
        );
        assert_eq!(r.status.as_u16(), h.status, "{what}: {:?}", r.body);
        assert!(
            r.body["error"].is_string() && r.body["message"].is_string(),
            "{what}: {:?}",
            r.body
        );
    }

    assert_eq!(
        s.get("/admin/configs").await.body,
        configs,
        "no config changed"
    );
    let after = s.get("/admin/stats/probe").await.body;
    assert_eq!(after["total_requests"], probe["total_requests"], "{after}");
    assert_eq!(s.get("/health").await.body["status"], "healthy");
    assert_eq!(s.statuses("probe", "/api/data", 3).await, [200, 200, 429]);
}
