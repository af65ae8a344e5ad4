//! The admin API's endpoint paths (`/admin/configs/{endpoint}`): any bytes after the
//! prefix decode at most once (`%2F`, `%252F`, `..`, empty segments), never panic, and
//! whatever decodes is a valid config name (a path config's endpoint or a descriptor
//! rule's identity) whose `Location` decodes back to itself (names a new config may not
//! take, like `/a/../b`, still address older ones).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratewarden::config::validate_name;
use ratewarden::http::admin::{decode_endpoint, location};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(endpoint) = decode_endpoint(raw) else {
        return;
    };
    assert!(validate_name(&endpoint).is_ok(), "{endpoint:?}");
    let again = location(&endpoint);
    let rest = again
        .strip_prefix("/admin/configs/")
        .expect("a config location");
    assert_eq!(decode_endpoint(rest).expect("a location decodes"), endpoint);
});
