//! Config JSON as the admin API reads it: any bytes, parsed, turned into a config and
//! validated. Never panics; whatever is accepted is within the documented ranges.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratewarden::config::ConfigSpec;
use ratewarden::limiter::Limit;

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
    let limits = spec.limit_specs();
    assert!((1..=8).contains(&limits.len()));
    // Either form, never both.
    assert!(spec.limits.is_empty() || spec.requests_per_window.is_none());
    // At least one limit counts per the config's key (which picks overrides and keeps
    // the request's statistics).
    assert!(limits.iter().any(|l| l.key.is_none()));
    for (i, l) in limits.iter().enumerate() {
        let held = l.max_in_flight.is_some();
        assert!(held || (l.requests_per_window >= 1 && l.window_seconds >= 1));
        assert!(l.refill_rate.is_none_or(|r| r.is_finite() && r > 0.0));
        assert!(limits[..i].iter().all(|o| o.name != l.name), "names are unique");
        // Every accepted limit has numbers the algorithms can use.
        match l.limit() {
            Limit::TokenBucket(b) => assert!(b.refill_interval >= 1 && b.burst >= 1),
            Limit::SlidingWindow(w) => assert!(w.window >= 1 && w.limit >= 1),
            Limit::Concurrency(c) => assert!(c.lease >= 1 && c.max_in_flight >= 1),
            Limit::FixedWindow(w) => {
                assert!(w.window >= 1 && w.limit >= 1);
                if let Some(c) = w.calendar {
                    assert_eq!(l.window_seconds, c.nominal_seconds());
                }
            }
        }
    }
}
