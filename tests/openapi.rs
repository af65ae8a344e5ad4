//! `/openapi.json` over a real server: an OpenAPI 3.1 document, never limited, whose every
//! operation the server serves, and whose input schemas the server accepts. (The
//! document against every answer is schemathesis's job: `tests/openapi/run`.)

mod common;

use common::TestServer;
use serde_json::{Map, Value, json};

#[actix_rt::test]
async fn every_documented_operation_is_served_and_the_document_is_never_limited() {
    let s = TestServer::start().await;
    let doc = s.get("/openapi.json").await;
    assert_eq!(doc.status, 200);
    assert!(doc.header("x-ratelimit-limit").is_none(), "never limited");
    let doc = doc.body;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for family in [
        "/admin/configs",
        "/admin/top",
        "/v1/check",
        "/api/data",
        "/health",
        "/livez",
        "/readyz",
        "/ws/{topic}",
    ] {
        assert!(paths.contains_key(family), "{family} is documented");
    }
    let sample = |path: &str| {
        path.replace("{endpoint}", "*")
            .replace("{client_id}", "someone")
            .replace("{topic}", "global")
            .replace("{file}", "dashboard.js")
    };
    let mut tried = 0;
    for (path, item) in paths {
        // A feed streams until closed; that it is routed is the feeds' tests' matter.
        if path.starts_with("/events/") {
            continue;
        }
        for (method, op) in item.as_object().unwrap() {
            let method = method.to_uppercase();
            if method == "HEAD" {
                continue;
            }
            let target = sample(path);
            let json = op["responses"]["200"]["content"]
                .as_object()
                .is_none_or(|c| c.contains_key("application/json"));
            let (status, text) = if json {
                let body = matches!(method.as_str(), "POST" | "PUT").then_some("{}");
                let r = s.send(&method, &target, &[], body).await;
                (r.status, r.body.to_string())
            } else {
                // Pages, files and metrics: all GETs.
                s.text(&target).await
            };
            assert!(
                !(status == 404 && text.contains("Nothing is served")),
                "{method} {target} is documented but not served"
            );
            assert!(status != 405, "{method} {target}: {text}");
            tried += 1;
        }
    }
    assert!(tried >= 25, "{tried} operations tried");
    // Every static file the document lists is served with a content type it documents.
    let file = &paths["/static/{file}"]["get"];
    let types = file["responses"]["200"]["content"].as_object().unwrap();
    let names = file["parameters"][0]["schema"]["enum"].as_array().unwrap();
    assert!(names.iter().any(|n| n == "favicon.svg"), "{names:?}");
    for name in names {
        let (status, headers, _) = s.raw(&format!("/static/{}", name.as_str().unwrap())).await;
        assert_eq!(status, 200, "{name}");
        let served = headers
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap();
        assert!(
            types.contains_key(served),
            "{name}: {served} is not documented"
        );
    }
}

/// A value for a property of an input schema, by its type.
fn sample(name: &str, schema: &Value) -> Value {
    match (name, schema["type"].as_str()) {
        ("client_id", _) => json!("from-the-schema"),
        ("path", _) => json!("/api/data"),
        ("method", _) => json!("GET"),
        ("ip", _) => json!("192.0.2.7"),
        // An estimate is for limits of tokens or bytes, which /api/data has none of.
        ("estimate", _) => json!(0),
        (_, Some("object")) => json!({"x-tenant": "from-the-schema"}),
        (_, Some("boolean")) => json!(false),
        (_, Some("integer")) => json!(1),
        _ => match schema["type"].as_array() {
            Some(types) if types.contains(&json!("integer")) => json!(1),
            Some(types) if types.contains(&json!("boolean")) => json!(false),
            _ => json!("GET"),
        },
    }
}

#[actix_rt::test]
async fn a_check_built_from_its_schema_is_accepted() {
    let s = TestServer::start().await;
    let doc = s.get("/openapi.json").await.body;
    let props = doc["components"]["schemas"]["CheckRequest"]["properties"]
        .as_object()
        .unwrap();
    let check: Map<String, Value> = props
        .iter()
        .map(|(name, schema)| (name.clone(), sample(name, schema)))
        .collect();
    assert_eq!(check.len(), 8, "{check:?}");
    let r = s
        .post("/v1/check", &Value::Object(check.clone()).to_string())
        .await;
    assert_eq!(r.status, 200, "{check:?}: {:?}", r.body);
    assert_eq!(r.body["allowed"], true);
    let batch = json!({"checks": [check]});
    let r = s.post("/v1/check", &batch.to_string()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["results"][0]["allowed"], true);
    // And a config from ConfigCreate's required fields.
    let create = &doc["components"]["schemas"]["ConfigCreate"];
    assert_eq!(create["additionalProperties"], false);
    // `endpoint` names a path config, `domain` and `descriptor` a descriptor rule; the
    // top-level numbers a config of one limit, `limits` one of several: the schema
    // requires none, and each kind is created from it.
    assert!(
        create["required"].as_array().is_none_or(Vec::is_empty),
        "{create}"
    );
    let properties = create["properties"].as_object().unwrap();
    assert!(
        [
            "endpoint",
            "domain",
            "descriptor",
            "limits",
            "requests_per_window"
        ]
        .iter()
        .all(|p| properties.contains_key(*p))
    );
    for config in [
        json!({"endpoint": "/from-schema", "requests_per_window": 1, "window_seconds": 1}),
        json!({"domain": "d", "descriptor": [{"key": "k"}], "requests_per_window": 1, "window_seconds": 1}),
        json!({"endpoint": "/from-schema-limits", "limits": [
            {"name": "a", "requests_per_window": 1, "window_seconds": 1},
            {"name": "b", "algorithm": "fixed_window", "requests_per_window": 5, "calendar": "day"}]}),
    ] {
        let r = s.post("/admin/configs", &config.to_string()).await;
        assert_eq!(r.status, 201, "{config}: {:?}", r.body);
    }
}
