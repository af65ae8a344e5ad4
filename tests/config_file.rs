//! Configs as code (`--config-file`): applied at start, on POST /admin/reload and on a
//! real SIGHUP to the real binary, as one change; an invalid file changes nothing.

mod common;

use common::binary::Binary;
use common::{TestServer, endpoints, owned};
use serde_json::json;
use std::path::Path;

const FIRST: &str = r#"
# Two configs; the default "*" is left as it is.
[[config]]
endpoint = "/api/*"
requests_per_window = 2
window_seconds = 60
algorithm = "fixed_window"

[[config]]
endpoint = "/old"
requests_per_window = 9
window_seconds = 9
"#;

const SECOND: &str = r#"
[[config]]
endpoint = "*"
requests_per_window = 500
window_seconds = 60

[[config]]
endpoint = "/api/*"
requests_per_window = 3
window_seconds = 60
algorithm = "fixed_window"
mode = "shadow"
overrides = [{ client = "vip-*", requests_per_window = 30 }]

[[config]]
endpoint = "/new"
requests_per_window = 1
window_seconds = 1
"#;

/// Line 7 names a limit of zero.
const INVALID: &str = r#"
[[config]]
endpoint = "/api/*"
requests_per_window = 3
window_seconds = 60

[[config]]
endpoint = "/broken"
requests_per_window = 0
window_seconds = 60
"#;

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[actix_rt::test]
async fn the_file_is_applied_as_one_change_and_an_invalid_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ratewarden.toml");
    write(&file, FIRST);
    let path = file.clone();
    let s = TestServer::with(move |c| c.config_file = Some(path)).await;
    assert_eq!(
        endpoints(&s.get("/admin/configs").await.body),
        owned(&[("*", 100), ("/api/*", 2), ("/old", 9)])
    );
    assert_eq!(s.statuses("c", "/api/data", 3).await, [200, 200, 429]);

    // The file is in charge: the API's writes are refused, naming it.
    let name = file.display().to_string();
    let old = s.get("/admin/configs/history?endpoint=/old").await.body[0]["version"].clone();
    let rollback = format!("/admin/configs/old/rollback?to={old}");
    let body = r#"{"endpoint": "/x", "requests_per_window": 1, "window_seconds": 1}"#;
    for (method, path, body) in [
        ("POST", "/admin/configs", Some(body)),
        (
            "PUT",
            "/admin/configs/api/*",
            Some(r#"{"requests_per_window": 7}"#),
        ),
        ("DELETE", "/admin/configs/old", None),
        ("POST", rollback.as_str(), None),
    ] {
        let r = s.send(method, path, &[], body).await;
        assert_eq!(r.status, 409, "{method} {path}: {:?}", r.body);
        assert!(
            r.body["message"].as_str().unwrap().contains(&name),
            "{:?}",
            r.body
        );
    }

    // Reloaded: created, updated and deleted as one change, "*" updated too.
    write(&file, SECOND);
    let r = s.post("/admin/reload", "").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let mut changes: Vec<String> = r.body["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                c["action"].as_str().unwrap(),
                c["endpoint"].as_str().unwrap()
            )
        })
        .collect();
    changes.sort();
    assert_eq!(
        changes,
        [
            "created /new",
            "deleted /old",
            "updated *",
            "updated /api/*"
        ]
    );
    let configs = s.get("/admin/configs").await.body;
    assert_eq!(
        endpoints(&configs),
        owned(&[("*", 500), ("/api/*", 3), ("/new", 1)])
    );
    let history = s.get("/admin/configs/history?limit=4").await.body;
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["source"] == "file")
    );
    // A reload of the same file changes nothing.
    let r = s.post("/admin/reload", "").await;
    assert_eq!(r.body["changes"], json!([]));

    // An invalid file: refused with its line and field, counted, and nothing changes.
    write(&file, INVALID);
    let r = s.post("/admin/reload", "").await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert_eq!(
        (&r.body["error"], &r.body["line"], &r.body["field"]),
        (
            &json!("invalid_config_file"),
            &json!(9),
            &json!("requests_per_window")
        )
    );
    assert_eq!(s.get("/admin/configs").await.body, configs);
    assert_eq!(
        s.metric("ratewarden_config_reloads_total{result=\"invalid\"}")
            .await,
        1.0
    );
    // Unreadable TOML is refused the same way.
    write(&file, "[[config]\nendpoint = ");
    let r = s.post("/admin/reload", "").await;
    assert_eq!((r.status.as_u16(), &r.body["line"]), (422, &json!(1)));
    std::fs::remove_file(&file).unwrap();
    let r = s.post("/admin/reload", "").await;
    assert_eq!(r.status, 422);
    assert!(r.body["line"].is_null() && r.body.as_object().unwrap().contains_key("line"));
    assert_eq!(s.get("/admin/configs").await.body, configs);
    assert_eq!(
        s.metric("ratewarden_config_reloads_total{result=\"applied\"}")
            .await,
        3.0,
        "at start, then twice"
    );
}

#[actix_rt::test]
async fn without_a_file_reload_is_a_conflict() {
    let s = TestServer::start().await;
    let r = s.post("/admin/reload", "").await;
    assert_eq!(r.status, 409);
    assert_eq!(r.body["error"], "conflict");
}

#[actix_rt::test]
async fn the_binary_applies_its_file_at_start_and_reloads_it_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ratewarden.toml");
    write(&file, FIRST);
    let db = dir.path().join("r.db");
    let mut b = Binary::start(&db, &["--config-file", file.to_str().unwrap()]);
    assert_eq!(
        endpoints(&b.get("/admin/configs").await.body),
        owned(&[("*", 100), ("/api/*", 2), ("/old", 9)])
    );

    write(&file, SECOND);
    b.signal("-HUP");
    b.wait_for("applied: 3 configs, 4 changed");
    assert_eq!(
        endpoints(&b.get("/admin/configs").await.body),
        owned(&[("*", 500), ("/api/*", 3), ("/new", 1)])
    );
    let vip = b.get_as("vip-1", "/api/data").await;
    assert_eq!(vip.header_u64("x-ratelimit-limit"), 30);

    write(&file, INVALID);
    b.signal("-HUP");
    let line = b.wait_for("config file refused");
    assert!(line.contains("line 9, field requests_per_window"), "{line}");
    assert_eq!(
        endpoints(&b.get("/admin/configs").await.body),
        owned(&[("*", 500), ("/api/*", 3), ("/new", 1)]),
        "the running configs keep serving"
    );

    // Restarted on an invalid file, the stored configs serve.
    b.signal("-TERM");
    assert!(b.wait_exit().success());
    let b = Binary::start(&db, &["--config-file", file.to_str().unwrap()]);
    assert_eq!(
        b.metric("ratewarden_config_reloads_total{result=\"invalid\"}")
            .await,
        1.0
    );
    assert_eq!(
        endpoints(&b.get("/admin/configs").await.body),
        owned(&[("*", 500), ("/api/*", 3), ("/new", 1)])
    );
}
