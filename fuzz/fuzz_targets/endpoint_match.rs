//! Endpoint patterns and path resolution: a table built from fuzzed endpoints (those
//! that validate) resolves any path to the exact config, else the longest `/*` prefix
//! that covers it, else the default — never to a pattern that does not cover the path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ratewarden::config::{Config, ConfigSpec, validate_endpoint};
use ratewarden::policy::PolicyTable;

fn config(id: i64, spec: ConfigSpec) -> Config {
    Config {
        id,
        spec,
        created_at: 0,
        updated_at: 0,
    }
}

fn covers(pattern: &str, path: &str) -> bool {
    if pattern == "*" || pattern == path {
        return true;
    }
    match pattern.strip_suffix("/*") {
        Some(prefix) => path == prefix || path.starts_with(&format!("{prefix}/")),
        None => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Lines: the last is the path, the others are endpoints.
    let mut lines: Vec<&str> = text.split('\n').collect();
    let path = lines.pop().unwrap_or("");
    let mut configs = vec![config(0, ConfigSpec::default_policy())];
    for (i, e) in lines.iter().enumerate() {
        if validate_endpoint(e).is_ok() && !configs.iter().any(|c| c.endpoint() == *e) {
            let spec = ConfigSpec {
                endpoint: (*e).to_owned(),
                ..ConfigSpec::default_policy()
            };
            configs.push(config(i as i64 + 1, spec));
        }
    }
    let table = PolicyTable::new(configs.clone()).expect("the default is present");
    let winner = table.resolve(path, "fuzz").endpoint.to_string();
    assert!(covers(&winner, path), "{winner:?} does not cover {path:?}");
    // No covering pattern is more specific than the winner.
    for c in &configs {
        if covers(c.endpoint(), path) && c.endpoint() != winner {
            let more_specific = c.endpoint() == path
                || (winner != path
                    && c.endpoint() != "*"
                    && (winner == "*" || c.endpoint().len() > winner.len()));
            assert!(
                !more_specific,
                "{:?} beats {winner:?} for {path:?}",
                c.endpoint()
            );
        }
    }
});
