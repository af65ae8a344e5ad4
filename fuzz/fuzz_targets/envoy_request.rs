//! Envoy's rate-limit requests from any bytes, as protobuf and as protojson: decoding
//! never panics; and for each descriptor that could be a rule (fixed values, or open
//! ones), the identity written for it is recognised as one and can never be a path, the
//! pattern matches the descriptor, and the client it names is never empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use ratewarden::config::descriptor::{self, DescriptorEntry, Pattern};
use ratewarden::config::validate_endpoint;
use ratewarden::envoy::proto::RateLimitRequest;

fuzz_target!(|data: &[u8]| {
    let requests = [
        RateLimitRequest::decode(data).ok(),
        serde_json::from_slice::<RateLimitRequest>(data).ok(),
    ];
    for req in requests.into_iter().flatten() {
        for d in &req.descriptors {
            let entries = || d.entries.iter().map(|e| (e.key.as_str(), e.value.as_str()));
            let as_rule = |fixed: bool| -> Vec<DescriptorEntry> {
                d.entries
                    .iter()
                    .map(|e| DescriptorEntry {
                        key: e.key.clone(),
                        value: fixed.then(|| e.value.clone()),
                    })
                    .collect()
            };
            for fixed in [true, false] {
                let pattern = as_rule(fixed);
                if descriptor::validate(&req.domain, &pattern).is_err() {
                    continue;
                }
                let id = descriptor::identity(&req.domain, &pattern);
                assert!(descriptor::is_identity(&id), "{id:?}");
                assert!(validate_endpoint(&id).is_err(), "{id:?} reads as a path");
                let p = Pattern::new(&pattern);
                assert!(p.matches(entries()), "{id:?}");
                assert!(!p.client(&req.domain, entries()).is_empty(), "{id:?}");
            }
        }
    }
});
