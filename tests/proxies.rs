//! Forward-auth behind real proxies from Debian's packages, started here on free loopback
//! ports: nginx with `auth_request` and Caddy with `forward_auth`, each in front of an
//! upstream, asking `/v1/forward-auth` of a ratewarden on a manual clock. Clients connect
//! from their own loopback addresses (127.0.0.2, 127.0.0.3) so each has its own key.

mod common;

use common::TestServer;
use common::proxy::{Proxy, free_port, get_from, port_of, send_from};
use ratewarden::http::client_id::Cidr;
use ratewarden::settings::ForwardAuthHeaders;
use std::process::{Command, Stdio};

async fn ratewarden(headers: ForwardAuthHeaders, deny_status: u16) -> TestServer {
    let s = TestServer::with(|c| {
        c.trusted_proxies = vec![Cidr::parse("127.0.0.1/32").unwrap()];
        c.forward_auth_headers = headers;
        c.forward_auth_deny_status = deny_status;
    })
    .await;
    s.config("/app/*", 2, 60, "fixed_window").await;
    s
}

#[actix_rt::test]
async fn nginx_auth_request_limits_each_client_address_and_ignores_forged_headers() {
    let s = ratewarden(ForwardAuthHeaders::Original, 403).await;
    let dir = tempfile::tempdir().unwrap();
    let (port, upstream) = (free_port(), free_port());
    let d = dir.path().display();
    let conf = format!(
        r#"
worker_processes 1;
error_log {d}/error.log;
pid {d}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            auth_request /_ratewarden;
            auth_request_set $rl $upstream_http_ratelimit;
            auth_request_set $rlp $upstream_http_ratelimit_policy;
            auth_request_set $retry $upstream_http_retry_after;
            add_header RateLimit $rl always;
            add_header RateLimit-Policy $rlp always;
            error_page 403 = @limited;
            proxy_pass http://127.0.0.1:{upstream};
        }}
        location = /_ratewarden {{
            internal;
            proxy_pass http://127.0.0.1:{rw}/v1/forward-auth;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Original-Content-Length $content_length;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Client-ID "";
        }}
        location @limited {{
            add_header Retry-After $retry always;
            add_header RateLimit $rl always;
            add_header RateLimit-Policy $rlp always;
            default_type application/json;
            return 429 '{{"error": "rate_limit_exceeded"}}';
        }}
    }}
    server {{
        listen 127.0.0.1:{upstream};
        location / {{ return 200 "upstream\n"; }}
    }}
}}
"#,
        rw = port_of(&s.url)
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new("nginx")
        .args(["-p", &d.to_string(), "-c"])
        .arg(&conf_path)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx is installed (scripts/test installs nginx-light)");
    let nginx = Proxy { child, port }
        .ready(&dir.path().join("error.log"))
        .await;

    let a = "127.0.0.2";
    assert_eq!(get_from(a, nginx.port, "/app/x", &[]).await.status, 200);
    let second = get_from(a, nginx.port, "/app/x?page=2", &[]).await;
    assert_eq!(second.status, 200, "the query string counts against /app/*");
    assert_eq!(second.header("RateLimit"), Some("\"/app/*\";r=0;t=60"));
    let third = get_from(a, nginx.port, "/app/y", &[]).await;
    assert_eq!(third.status, 429);
    assert_eq!(third.header("Retry-After"), Some("60"));
    assert_eq!(third.header("RateLimit"), Some("\"/app/*\";r=0;t=60"));
    assert_eq!(
        third.header("RateLimit-Policy"),
        Some("\"/app/*\";q=2;w=60")
    );

    // Forged headers change nothing: nginx appends the real address to a client's
    // X-Forwarded-For and ratewarden keys by the rightmost untrusted hop; nginx sets
    // X-Original-URI itself and clears X-Client-ID; X-Forwarded-Uri and X-Real-IP are
    // not read.
    for forged in [
        ("X-Forwarded-For", "10.9.9.9"),
        ("X-Real-IP", "10.9.9.9"),
        ("X-Client-ID", "someone-else"),
        ("X-Original-URI", "/free"),
        ("X-Forwarded-Uri", "/free"),
    ] {
        let r = get_from(a, nginx.port, "/app/z", &[forged]).await;
        assert_eq!(r.status, 429, "{forged:?} escaped the limit");
    }
    // Another address has its own budget.
    let b = "127.0.0.3";
    assert_eq!(get_from(b, nginx.port, "/app/x", &[]).await.status, 200);
    assert_eq!(get_from(b, nginx.port, "/app/x", &[]).await.status, 200);
    assert_eq!(get_from(b, nginx.port, "/app/x", &[]).await.status, 429);
    let stats = s.get("/admin/stats/127.0.0.2").await.body;
    assert_eq!(stats["status"]["total_requests"], 8, "{stats}");
    assert_eq!(stats["status"]["blocked_requests"], 6, "{stats}");

    // A limit of bytes takes the upload's length, which nginx passes on, up front: 60
    // of 100 pass, another 60 do not fit the 40 left, 40 do.
    let body = serde_json::json!({"endpoint": "/upload/*", "limits": [{"name": "bytes",
        "unit": "bytes", "algorithm": "fixed_window", "requests_per_window": 100,
        "window_seconds": 60}]});
    assert_eq!(
        s.post("/admin/configs", &body.to_string()).await.status,
        201
    );
    let c = "127.0.0.4";
    let upload = |n: usize| {
        send_from(
            c,
            nginx.port,
            "POST",
            "/upload/f",
            &[],
            Some(&[b'x'; 100][..n]),
        )
    };
    assert_eq!(upload(60).await.status, 200);
    assert_eq!(upload(60).await.status, 429);
    assert_eq!(upload(40).await.status, 200);
    drop(nginx);
    s.stop().await;
}

#[actix_rt::test]
async fn caddy_forward_auth_passes_the_429_and_its_headers_through() {
    let s = ratewarden(ForwardAuthHeaders::Forwarded, 429).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let caddyfile = format!(
        r#"{{
    admin off
    auto_https off
}}
http://app.example:{port} {{
    bind 127.0.0.1
    forward_auth 127.0.0.1:{rw} {{
        uri /v1/forward-auth
        header_up -X-Client-ID
        header_up Host {{upstream_hostport}}
    }}
    respond "upstream" 200
}}
http://public.example:{port} {{
    bind 127.0.0.1
    forward_auth 127.0.0.1:{rw} {{
        uri /v1/forward-auth
    }}
    respond "upstream" 200
}}
"#,
        rw = port_of(&s.url)
    );
    let path = dir.path().join("Caddyfile");
    std::fs::write(&path, caddyfile).unwrap();
    let log = dir.path().join("caddy.log");
    let child = Command::new("caddy")
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("caddy is installed (scripts/test installs it)");
    let caddy = Proxy { child, port }.ready(&log).await;

    // Caddy passes the public Host on to ratewarden unless told otherwise, and a
    // tokenless ratewarden answers only requests addressed to a loopback name: the
    // refusal reaches the client, and nothing is counted.
    let public = [("Host", "public.example")];
    let r = get_from("127.0.0.2", caddy.port, "/app/x", &public).await;
    assert_eq!(r.status, 403, "{:?}", r.headers);
    assert!(
        r.header("Content-Type")
            .unwrap()
            .starts_with("application/json")
    );
    let a = "127.0.0.2";
    let site = ("Host", "app.example");
    assert_eq!(get_from(a, caddy.port, "/app/x", &[site]).await.status, 200);
    assert_eq!(get_from(a, caddy.port, "/app/x", &[site]).await.status, 200);
    let forged = [
        site,
        ("X-Original-URI", "/free"),
        ("X-Client-ID", "someone-else"),
    ];
    let refused = get_from(a, caddy.port, "/app/x", &forged).await;
    assert_eq!(refused.status, 429, "{forged:?} escaped the limit");
    assert_eq!(refused.header("Retry-After"), Some("60"));
    assert_eq!(refused.header("RateLimit"), Some("\"/app/*\";r=0;t=60"));
    assert_eq!(
        refused.header("RateLimit-Policy"),
        Some("\"/app/*\";q=2;w=60")
    );
    assert_eq!(refused.header("X-RateLimit-Remaining"), Some("0"));
    assert!(
        refused
            .header("Content-Type")
            .unwrap()
            .starts_with("application/json")
    );
    // Caddy writes X-Forwarded-Uri itself: a client's own one does not pick the config.
    let r = get_from(
        "127.0.0.3",
        caddy.port,
        "/other",
        &[site, ("X-Forwarded-Uri", "/app/x")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("RateLimit"),
        None,
        "upstream answers carry no headers of ours"
    );
    let stats = s.get("/admin/stats/127.0.0.3").await.body;
    assert_eq!(stats["status"]["endpoints"][0]["endpoint"], "*", "{stats}");
    drop(caddy);
    s.stop().await;
}

#[actix_rt::test]
async fn forward_auth_refuses_a_call_without_the_original_uri_and_consumes_nothing() {
    let s = ratewarden(ForwardAuthHeaders::Original, 429).await;
    let r = s
        .send("GET", "/v1/forward-auth", &[("X-Client-ID", "fa-1")], None)
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"], "invalid_forward_auth");
    let r = s
        .send(
            "GET",
            "/v1/forward-auth",
            &[("X-Client-ID", "fa-1"), ("X-Forwarded-Uri", "/app/x")],
            None,
        )
        .await;
    assert_eq!(r.status, 400, "the other family is not read");
    for uri in ["app/x", "/app/../free", "/app/..%2Ffree"] {
        let h = [("X-Client-ID", "fa-1"), ("X-Original-URI", uri)];
        let r = s.send("GET", "/v1/forward-auth", &h, None).await;
        assert_eq!(r.status, 400, "{uri}");
    }
    let h = [("X-Client-ID", "fa-1"), ("X-Original-URI", "/app/%78")];
    for expected in [200, 200, 429] {
        let r = s.send("POST", "/v1/forward-auth", &h, None).await;
        assert_eq!(r.status, expected, "any method is accepted");
    }
    // With no token set, the caller itself must be on loopback: here a trusted proxy
    // on loopback asking for a client elsewhere (its X-Forwarded-For) is let in.
    let h = [
        ("X-Forwarded-For", "10.1.1.1"),
        ("X-Original-URI", "/app/x"),
    ];
    let r = s.send("GET", "/v1/forward-auth", &h, None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let h = [
        ("X-Forwarded-For", "10.1.1.1"),
        ("Content-Type", "application/json"),
    ];
    let r = s
        .send(
            "POST",
            "/v1/check",
            &h,
            Some(r#"{"client_id": "x", "path": "/"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // The admin API still judges the client the proxy names.
    let r = s
        .send(
            "GET",
            "/admin/configs",
            &[("X-Forwarded-For", "10.1.1.1")],
            None,
        )
        .await;
    assert_eq!(r.status, 403);
    s.stop().await;
}
