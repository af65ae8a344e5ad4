//! Client identification from a header value: never panics, and an accepted id is
//! exactly 1 to 128 bytes of the documented alphabet (so it is safe in logs, headers,
//! JSON and SQL parameters alike).
#![no_main]

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use ratewarden::http::client_id::{Identity, validate_client_id};

fuzz_target!(|data: &[u8]| {
    let identity = Identity {
        header: Some(HeaderName::from_static("x-client-id")),
        trusted_proxies: Vec::new(),
    };
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(data) {
        headers.insert(HeaderName::from_static("x-client-id"), v);
    }
    let peer = Some("192.0.2.1:4000".parse().unwrap());
    if let Ok(id) = identity.client_id(&headers, peer) {
        let from_header = headers.contains_key("x-client-id");
        if from_header {
            assert!(!id.is_empty() && id.len() <= 128);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".:_@-".contains(&b))
            );
            assert_eq!(id.as_bytes(), data);
        } else {
            assert_eq!(&*id, "192.0.2.1");
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = validate_client_id(s);
    }
});
