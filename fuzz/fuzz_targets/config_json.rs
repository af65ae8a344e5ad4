//! Config JSON as the admin API reads it: any bytes, parsed, turned into a config and
//! validated. Never panics; whatever is accepted is within the documented ranges.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratewarden::config::ConfigSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(data) else {
        return;
    };
    // As a PUT: merged into the default and validated as a whole.
    if let Ok(merged) = ConfigSpec::default_policy().merged(map.clone()) {
        merged.validate().expect("a merged spec is validated");
        check(&merged);
    }
    // As a POST.
    if let Ok(spec) = ConfigSpec::from_create(map) {
        spec.validate().expect("a new spec is validated");
        check(&spec);
    }
});

fn check(spec: &ConfigSpec) {
    assert!(spec.requests_per_window >= 1 && spec.window_seconds >= 1);
    assert!(spec.refill_rate.is_none_or(|r| r.is_finite() && r > 0.0));
    let limits = spec.limits();
    assert!(limits.refill_interval >= 1);
}
