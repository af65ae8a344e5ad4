//! `X-Forwarded-For` behind trusted proxies: never panics, and the client is the peer
//! when the peer is untrusted, else the rightmost hop that is not a trusted proxy (or
//! the last parseable one) — always an address that appears in the request.
#![no_main]

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use ratewarden::http::client_id::{Cidr, Identity};
use std::net::{IpAddr, SocketAddr};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // First byte picks the peer; the rest is the header (split on newlines into lines).
    let peer: SocketAddr = match data[0] % 3 {
        0 => "10.0.0.1:1".parse().unwrap(),
        1 => "[::1]:1".parse().unwrap(),
        _ => "203.0.113.9:1".parse().unwrap(),
    };
    let identity = Identity {
        header: None,
        trusted_proxies: vec![
            Cidr::parse("10.0.0.0/8").unwrap(),
            Cidr::parse("::1/128").unwrap(),
        ],
    };
    let mut headers = HeaderMap::new();
    for line in data[1..].split(|b| *b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            headers.append(HeaderName::from_static("x-forwarded-for"), v);
        }
    }
    let client = identity
        .client_ip(&headers, Some(peer))
        .expect("a peer was given");
    let peer_ip = peer.ip().to_canonical();
    if peer_ip == "203.0.113.9".parse::<IpAddr>().unwrap() {
        assert_eq!(client, peer_ip, "an untrusted peer is the client");
        return;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|h| h.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect();
    assert!(
        client == peer_ip || hops.contains(&client),
        "{client} came from nowhere"
    );
});
