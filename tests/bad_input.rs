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
    let app = init_service(App::new().app_data(state).configure(routes)).await;

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
