//! Configs (what an operator writes through the admin API) and policies (what the hot
//! path reads): validation of config input, and the in-memory table that resolves a
//! request path to its policy without allocating.

use crate::clock::{NANOS_PER_SEC, Nanos, rfc3339};
use crate::limiter::{Algorithm, Limits};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

pub const DEFAULT_ENDPOINT: &str = "*";
pub const MAX_REQUESTS_PER_WINDOW: u64 = 1_000_000_000;
pub const MAX_WINDOW_SECONDS: u64 = 31_536_000;
pub const MAX_ENDPOINT_BYTES: usize = 256;
/// One token a year: slower refill rates would make the bucket never refill in practice
/// and overflow the refill interval.
pub const MIN_REFILL_RATE: f64 = 1.0 / MAX_WINDOW_SECONDS as f64;
pub const MAX_REFILL_RATE: f64 = 1e9;

/// The writable part of a config, validated as a whole.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigSpec {
    pub endpoint: String,
    pub requests_per_window: u64,
    pub window_seconds: u64,
    pub algorithm: Algorithm,
    pub burst_limit: Option<u64>,
    pub refill_rate: Option<f64>,
    pub is_active: bool,
}

impl ConfigSpec {
    /// The default policy present from the first start: 100 requests per hour.
    pub fn default_policy() -> Self {
        Self {
            endpoint: DEFAULT_ENDPOINT.to_owned(),
            requests_per_window: 100,
            window_seconds: 3600,
            algorithm: Algorithm::SlidingWindow,
            burst_limit: None,
            refill_rate: None,
            is_active: true,
        }
    }

    pub fn limits(&self) -> Limits {
        let mut limits = Limits::new(
            self.algorithm,
            self.requests_per_window,
            self.window_seconds,
        );
        if let Some(burst) = self.burst_limit {
            limits.burst = burst;
        }
        if let Some(rate) = self.refill_rate {
            // Rounded up: the bucket never refills faster than configured. `validate`
            // bounds the rate, so the interval fits in a u64 and is at least 1 ns.
            limits.refill_interval = ((NANOS_PER_SEC as f64 / rate).ceil() as Nanos).max(1);
        }
        limits
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_endpoint(&self.endpoint)?;
        in_range(
            "requests_per_window",
            self.requests_per_window,
            MAX_REQUESTS_PER_WINDOW,
        )?;
        in_range("window_seconds", self.window_seconds, MAX_WINDOW_SECONDS)?;
        if let Some(burst) = self.burst_limit {
            in_range("burst_limit", burst, MAX_REQUESTS_PER_WINDOW)?;
        }
        if let Some(rate) = self.refill_rate
            && !(rate.is_finite() && (MIN_REFILL_RATE..=MAX_REFILL_RATE).contains(&rate))
        {
            return Err(ValidationError::new(
                "refill_rate",
                format!(
                    "must be a number of tokens per second from {MIN_REFILL_RATE:e} to {MAX_REFILL_RATE:e}"
                ),
            ));
        }
        Ok(())
    }

    /// Applies a partial update; the result still needs [`ConfigSpec::validate`].
    pub fn merge(&mut self, patch: ConfigPatch) {
        let ConfigPatch {
            endpoint,
            requests_per_window,
            window_seconds,
            algorithm,
            burst_limit,
            refill_rate,
            is_active,
        } = patch;
        if let Some(v) = endpoint {
            self.endpoint = v;
        }
        if let Some(v) = requests_per_window {
            self.requests_per_window = v;
        }
        if let Some(v) = window_seconds {
            self.window_seconds = v;
        }
        if let Some(v) = algorithm {
            self.algorithm = v;
        }
        if let Some(v) = burst_limit {
            self.burst_limit = v;
        }
        if let Some(v) = refill_rate {
            self.refill_rate = v;
        }
        if let Some(v) = is_active {
            self.is_active = v;
        }
    }
}

fn in_range(field: &'static str, v: u64, max: u64) -> Result<(), ValidationError> {
    if (1..=max).contains(&v) {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!("must be an integer from 1 to {max}"),
        ))
    }
}

/// `"*"`, an exact path `"/a/b"`, or a prefix `"/a/*"`.
pub fn validate_endpoint(endpoint: &str) -> Result<(), ValidationError> {
    let err = |message: &str| Err(ValidationError::new("endpoint", message.to_owned()));
    if endpoint == DEFAULT_ENDPOINT {
        return Ok(());
    }
    if !endpoint.starts_with('/') {
        return err("must be \"*\" or start with \"/\"");
    }
    if endpoint.len() > MAX_ENDPOINT_BYTES {
        return err("must be at most 256 bytes");
    }
    if endpoint
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return err("must not contain whitespace or control characters");
    }
    let body = endpoint.strip_suffix("/*").unwrap_or(endpoint);
    if body.contains('*') {
        return err("\"*\" is only allowed as a final \"/*\" segment");
    }
    Ok(())
}

/// What a new config's endpoint must also satisfy: no empty, `.` or `..` segments.
/// Clients and proxies resolve dot segments and may merge empty ones, so a config naming
/// them could never be relied on. (Checked on creation only, so that a config stored
/// before this rule can still be read, updated and deleted.)
pub fn validate_new_endpoint(endpoint: &str) -> Result<(), ValidationError> {
    validate_endpoint(endpoint)?;
    let body = endpoint.strip_suffix("/*").unwrap_or(endpoint);
    if endpoint.contains("//") || body.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(ValidationError::new(
            "endpoint",
            "must not contain empty, \".\" or \"..\" segments".to_owned(),
        ));
    }
    Ok(())
}

/// A rule a config broke: answered as 422 with the field's name.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: String) -> Self {
        Self {
            field: field.into(),
            message,
        }
    }
}

/// The fields a client may send, each optional (a `PUT` is a partial update).
/// `Some(None)` is an explicit `null`, which resets a token-bucket field to its default.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ConfigPatch {
    pub endpoint: Option<String>,
    pub requests_per_window: Option<u64>,
    pub window_seconds: Option<u64>,
    pub algorithm: Option<Algorithm>,
    pub burst_limit: Option<Option<u64>>,
    pub refill_rate: Option<Option<f64>>,
    pub is_active: Option<bool>,
}

impl ConfigPatch {
    /// Reads a JSON object field by field, so that every type error names its field.
    /// Unknown and read-only fields are rejected rather than ignored.
    pub fn from_json(object: Map<String, Value>) -> Result<Self, ValidationError> {
        let mut patch = ConfigPatch::default();
        for (key, value) in object {
            match key.as_str() {
                "endpoint" => patch.endpoint = Some(string(&key, value)?),
                "requests_per_window" => patch.requests_per_window = Some(integer(&key, &value)?),
                "window_seconds" => patch.window_seconds = Some(integer(&key, &value)?),
                "algorithm" => {
                    let name = string(&key, value)?;
                    let algorithm = Algorithm::parse(&name).ok_or_else(|| {
                        ValidationError::new(
                            key.clone(),
                            format!(
                                "must be one of {}",
                                Algorithm::names().collect::<Vec<_>>().join(", ")
                            ),
                        )
                    })?;
                    patch.algorithm = Some(algorithm);
                }
                "burst_limit" => {
                    patch.burst_limit = Some(nullable(&value, |v| integer(&key, v))?);
                }
                "refill_rate" => {
                    let rate = nullable(&value, |v| {
                        v.as_f64().ok_or_else(|| {
                            ValidationError::new(key.clone(), "must be a number".to_owned())
                        })
                    })?;
                    patch.refill_rate = Some(rate);
                }
                "is_active" => {
                    let b = value.as_bool().ok_or_else(|| {
                        ValidationError::new(key.clone(), "must be true or false".to_owned())
                    })?;
                    patch.is_active = Some(b);
                }
                "id" | "created_at" | "updated_at" => {
                    return Err(ValidationError::new(key, "is read-only".to_owned()));
                }
                _ => return Err(ValidationError::new(key, "is not a known field".to_owned())),
            }
        }
        Ok(patch)
    }

    /// A new config from a create request: `endpoint`, `requests_per_window` and
    /// `window_seconds` are required; the algorithm defaults to `sliding_window`.
    pub fn into_new_spec(self) -> Result<ConfigSpec, ValidationError> {
        let missing = |field: &str| ValidationError::new(field, "is required".to_owned());
        let mut spec = ConfigSpec {
            endpoint: self.endpoint.clone().ok_or_else(|| missing("endpoint"))?,
            requests_per_window: self
                .requests_per_window
                .ok_or_else(|| missing("requests_per_window"))?,
            window_seconds: self
                .window_seconds
                .ok_or_else(|| missing("window_seconds"))?,
            ..ConfigSpec::default_policy()
        };
        spec.merge(self);
        spec.validate()?;
        validate_new_endpoint(&spec.endpoint)?;
        Ok(spec)
    }
}

fn string(key: &str, value: Value) -> Result<String, ValidationError> {
    match value {
        Value::String(s) => Ok(s),
        _ => Err(ValidationError::new(key, "must be a string".to_owned())),
    }
}

fn integer(key: &str, value: &Value) -> Result<u64, ValidationError> {
    // A float such as 10.0 is not an integer here: "10.5 requests" is a mistake to report.
    value.as_u64().ok_or_else(|| {
        ValidationError::new(key, "must be a positive integer within range".to_owned())
    })
}

fn nullable<T>(
    value: &Value,
    parse: impl FnOnce(&Value) -> Result<T, ValidationError>,
) -> Result<Option<T>, ValidationError> {
    if value.is_null() {
        Ok(None)
    } else {
        parse(value).map(Some)
    }
}

/// A stored config, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub id: i64,
    pub endpoint: String,
    pub requests_per_window: u64,
    pub window_seconds: u64,
    pub algorithm: Algorithm,
    pub burst_limit: Option<u64>,
    pub refill_rate: Option<f64>,
    pub is_active: bool,
    #[serde(serialize_with = "as_rfc3339")]
    pub created_at: Nanos,
    #[serde(serialize_with = "as_rfc3339")]
    pub updated_at: Nanos,
}

fn as_rfc3339<S: Serializer>(at: &Nanos, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*at))
}

impl Config {
    /// A stored config from its writable part, its id and its times.
    pub fn from_spec(id: i64, spec: ConfigSpec, created_at: Nanos, updated_at: Nanos) -> Self {
        Self {
            id,
            endpoint: spec.endpoint,
            requests_per_window: spec.requests_per_window,
            window_seconds: spec.window_seconds,
            algorithm: spec.algorithm,
            burst_limit: spec.burst_limit,
            refill_rate: spec.refill_rate,
            is_active: spec.is_active,
            created_at,
            updated_at,
        }
    }

    pub fn spec(&self) -> ConfigSpec {
        ConfigSpec {
            endpoint: self.endpoint.clone(),
            requests_per_window: self.requests_per_window,
            window_seconds: self.window_seconds,
            algorithm: self.algorithm,
            burst_limit: self.burst_limit,
            refill_rate: self.refill_rate,
            is_active: self.is_active,
        }
    }
}

/// What the hot path needs of a config.
#[derive(Debug, PartialEq)]
pub struct Policy {
    /// The config's endpoint: the second half of the rate-limit key and the policy name
    /// in the `RateLimit-Policy` header.
    pub endpoint: Arc<str>,
    pub limits: Limits,
    pub window_seconds: u64,
    pub active: bool,
}

impl Policy {
    pub fn from_spec(spec: &ConfigSpec) -> Self {
        Self {
            endpoint: Arc::from(spec.endpoint.as_str()),
            limits: spec.limits(),
            window_seconds: spec.window_seconds,
            active: spec.is_active,
        }
    }
}

/// The configs of the moment, indexed for resolution. Immutable: a change builds a new
/// table and swaps it in, so readers never wait on writers for longer than an `Arc` clone.
#[derive(Debug)]
pub struct PolicyTable {
    configs: Vec<Config>,
    exact: HashMap<String, Arc<Policy>>,
    /// `"/api/*"` is stored under `"/api"`, and `"/*"` under `""`.
    prefixes: HashMap<String, Arc<Policy>>,
    default: Arc<Policy>,
}

impl PolicyTable {
    /// Builds the table; `configs` must contain the default `"*"`.
    pub fn new(mut configs: Vec<Config>) -> Option<Self> {
        configs.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
        let mut exact = HashMap::new();
        let mut prefixes = HashMap::new();
        let mut default = None;
        for config in &configs {
            let policy = Arc::new(Policy::from_spec(&config.spec()));
            if config.endpoint == DEFAULT_ENDPOINT {
                default = Some(policy);
            } else if let Some(prefix) = config.endpoint.strip_suffix("/*") {
                prefixes.insert(prefix.to_owned(), policy);
            } else {
                exact.insert(config.endpoint.clone(), policy);
            }
        }
        Some(Self {
            configs,
            exact,
            prefixes,
            default: default?,
        })
    }

    pub fn configs(&self) -> &[Config] {
        &self.configs
    }

    pub fn get(&self, endpoint: &str) -> Option<&Config> {
        self.configs
            .binary_search_by(|c| c.endpoint.as_str().cmp(endpoint))
            .ok()
            .map(|i| &self.configs[i])
    }

    pub fn active_count(&self) -> usize {
        self.configs.iter().filter(|c| c.is_active).count()
    }

    pub fn policy(&self, endpoint: &str) -> Option<&Arc<Policy>> {
        if endpoint == DEFAULT_ENDPOINT {
            return Some(&self.default);
        }
        match endpoint.strip_suffix("/*") {
            Some(prefix) => self.prefixes.get(prefix),
            None => self.exact.get(endpoint),
        }
    }

    /// The policy for a request path: exact match, else the longest matching prefix
    /// (`"/api/*"` matches `/api` and everything below `/api/`), else the default.
    /// An inactive winner is returned as such: it limits nothing, it does not fall back.
    pub fn resolve(&self, path: &str) -> &Arc<Policy> {
        if let Some(p) = self.exact.get(path) {
            return p;
        }
        if !self.prefixes.is_empty() {
            if let Some(p) = self.prefixes.get(path) {
                return p;
            }
            let mut rest = path;
            while let Some(slash) = rest.rfind('/') {
                rest = &path[..slash];
                if let Some(p) = self.prefixes.get(rest) {
                    return p;
                }
            }
        }
        &self.default
    }
}

/// The live policy table, shared by the middleware (readers, on every request) and the
/// admin API (writers, one at a time). Writers hold `write` across the database write and
/// the swap, so the table always matches the database's order of changes.
#[derive(Debug)]
pub struct Policies {
    table: RwLock<Arc<PolicyTable>>,
    write: tokio::sync::Mutex<()>,
}

impl Policies {
    pub fn new(table: PolicyTable) -> Self {
        Self {
            table: RwLock::new(Arc::new(table)),
            write: tokio::sync::Mutex::new(()),
        }
    }

    pub fn current(&self) -> Arc<PolicyTable> {
        // The lock only guards an `Arc` swap; a poisoned lock still holds a whole table.
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Serialises admin writes; hold the guard until [`Policies::apply`] is done.
    pub async fn lock_writes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.write.lock().await
    }

    /// Swaps in a whole new set of configs (distributed mode: the shared ones); `false`,
    /// changing nothing, if the default policy is missing.
    pub fn replace(&self, configs: Vec<Config>) -> bool {
        match PolicyTable::new(configs) {
            Some(table) => {
                *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
                true
            }
            None => false,
        }
    }

    /// Swaps in the table with `config` created or replaced (`Some`) or `endpoint`
    /// removed (`None`).
    pub fn apply(&self, endpoint: &str, config: Option<Config>) {
        let mut configs: Vec<Config> = self
            .current()
            .configs()
            .iter()
            .filter(|c| c.endpoint != endpoint)
            .cloned()
            .collect();
        configs.extend(config);
        match PolicyTable::new(configs) {
            Some(table) => *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table),
            // The admin API refuses to delete the default, so this is never reached.
            None => log::error!("refused a config change that would remove the default policy"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(endpoint: &str, limit: u64) -> Config {
        Config {
            id: 0,
            endpoint: endpoint.to_owned(),
            requests_per_window: limit,
            window_seconds: 60,
            algorithm: Algorithm::FixedWindow,
            burst_limit: None,
            refill_rate: None,
            is_active: true,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn patch(v: Value) -> Result<ConfigPatch, ValidationError> {
        ConfigPatch::from_json(v.as_object().cloned().unwrap_or_default())
    }

    #[test]
    fn resolves_exact_then_longest_prefix_then_default() {
        let table = PolicyTable::new(vec![
            config("*", 1),
            config("/api/*", 2),
            config("/api/v1/*", 3),
            config("/api/v1/data", 4),
            config("/*", 5),
        ])
        .unwrap();
        let limit = |path| table.resolve(path).limits.limit;
        assert_eq!(limit("/api/v1/data"), 4);
        assert_eq!(limit("/api/v1/other"), 3);
        assert_eq!(limit("/api/v1"), 3);
        assert_eq!(limit("/api/x/y"), 2);
        assert_eq!(limit("/api"), 2);
        assert_eq!(limit("/apix"), 5);
        assert_eq!(limit("/"), 5);
        let table = PolicyTable::new(vec![config("*", 1), config("/api/*", 2)]).unwrap();
        assert_eq!(table.resolve("/other").limits.limit, 1);
        assert_eq!(table.resolve("/apix").limits.limit, 1);
    }

    #[test]
    fn a_table_needs_the_default() {
        assert!(PolicyTable::new(vec![config("/a", 1)]).is_none());
    }

    #[test]
    fn validates_endpoints() {
        for ok in [
            "*",
            "/",
            "/api/data",
            "/api/*",
            "/*",
            "/a%20b",
            "/api/",
            "/a.b/..c",
        ] {
            assert!(validate_endpoint(ok).is_ok(), "{ok}");
        }
        let long = format!("/{}", "a".repeat(256));
        for bad in [
            "",
            "api",
            "/a b",
            "/a\u{7}",
            "/a*",
            "/*/b",
            "**",
            long.as_str(),
        ] {
            assert_eq!(
                validate_endpoint(bad).unwrap_err().field,
                "endpoint",
                "{bad}"
            );
        }
    }

    #[test]
    fn new_endpoints_have_no_empty_or_dot_segments() {
        for ok in ["*", "/", "/api/", "/api/*", "/a.b/..c"] {
            assert!(validate_new_endpoint(ok).is_ok(), "{ok}");
        }
        for bad in ["//a", "/a//b", "/a/../b", "/./a", "/a/..", "/../*", "//*"] {
            assert_eq!(
                validate_new_endpoint(bad).unwrap_err().field,
                "endpoint",
                "{bad}"
            );
            // Still a valid name to read, update or delete an older config by.
            assert!(validate_endpoint(bad).is_ok(), "{bad}");
        }
    }

    #[test]
    fn rejects_bad_numbers_with_the_field_name() {
        let cases = [
            (json!({"requests_per_window": -1}), "requests_per_window"),
            (json!({"requests_per_window": 1.5}), "requests_per_window"),
            (json!({"requests_per_window": "10"}), "requests_per_window"),
            (json!({"window_seconds": 1e30}), "window_seconds"),
            (json!({"burst_limit": true}), "burst_limit"),
            (json!({"refill_rate": "fast"}), "refill_rate"),
            (json!({"algorithm": "leaky"}), "algorithm"),
            (json!({"is_active": 1}), "is_active"),
            (json!({"id": 3}), "id"),
            (json!({"colour": "red"}), "colour"),
        ];
        for (body, field) in cases {
            assert_eq!(patch(body.clone()).unwrap_err().field, field, "{body}");
        }
        let spec = |body: Value| patch(body).unwrap().into_new_spec();
        let base = json!({"endpoint": "/x", "requests_per_window": 5, "window_seconds": 10});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        assert!(spec(base.clone()).is_ok());
        for (k, v) in [
            ("requests_per_window", json!(0)),
            ("requests_per_window", json!(1_000_000_001u64)),
            ("window_seconds", json!(31_536_001)),
            ("burst_limit", json!(0)),
            ("refill_rate", json!(0.0)),
            ("refill_rate", json!(-2.0)),
            ("refill_rate", json!(1e10)),
            ("endpoint", json!("x")),
        ] {
            assert_eq!(spec(with(k, v.clone())).unwrap_err().field, k, "{k}={v}");
        }
        assert_eq!(
            spec(json!({"endpoint": "/x", "window_seconds": 1}))
                .unwrap_err()
                .field,
            "requests_per_window"
        );
    }

    #[test]
    fn token_bucket_defaults_follow_the_window() {
        let mut spec = ConfigSpec::default_policy();
        spec.algorithm = Algorithm::TokenBucket;
        spec.requests_per_window = 10;
        spec.window_seconds = 5;
        let limits = spec.limits();
        assert_eq!(limits.burst, 10);
        assert_eq!(limits.refill_interval, 500_000_000);
        spec.merge(patch(json!({"burst_limit": 3, "refill_rate": 4.0})).unwrap());
        let limits = spec.limits();
        assert_eq!((limits.burst, limits.refill_interval), (3, 250_000_000));
        spec.merge(patch(json!({"burst_limit": null})).unwrap());
        assert_eq!(spec.limits().burst, 10);
    }
}
