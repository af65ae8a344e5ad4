//! The admin API's endpoint paths (`/admin/configs/{endpoint}`): any bytes after the
//! prefix decode at most once (`%2F`, `%252F`, `..`, empty segments), never panic, and
//! whatever decodes is a valid endpoint name whose `Location` decodes back to itself
//! (names a new config may not take, like `/a/../b`, still address older ones).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratewarden::http::admin::{decode_endpoint, location};
use ratewarden::config::validate_endpoint;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(endpoint) = decode_endpoint(raw) else {
        return;
    };
    assert!(validate_endpoint(&endpoint).is_ok(), "{endpoint:?}");
    let again = location(&endpoint);
    let rest = again
        .strip_prefix("/admin/configs/")
        .expect("a config location");
    assert_eq!(decode_endpoint(rest).expect("a location decodes"), endpoint);
});
