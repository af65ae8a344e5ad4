//! The config model: what an operator writes (a [`ConfigSpec`]), what is stored and
//! shared (a [`Config`]: the spec with its id and times), how input becomes a spec, and
//! what a change is ([`Change`]). Every form derives from `ConfigSpec` through serde:
//! the admin API's JSON, the SQLite row's `spec` column and Redis's shared JSON.
//!
//! Adding a config field means: the field on [`ConfigSpec`] (with its serde default and
//! its rule in [`ConfigSpec::validate`]), and the code it changes the behaviour of.
//! Nothing else lists the fields.
//!
//! [`writer`] is the one path by which a change takes effect.

pub mod descriptor;
pub mod file;
pub mod key;
pub mod writer;

use crate::clock::{NANOS_PER_SEC, Nanos, rfc3339};
use crate::limiter::{Algorithm, Calendar, DEFAULT_LIMIT, Limit, MAX_LIMITS, Named, Unit};
use descriptor::DescriptorEntry;
pub use key::Key;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt::Write;
use std::sync::Arc;

pub const DEFAULT_ENDPOINT: &str = "*";
pub const MAX_REQUESTS_PER_WINDOW: u64 = 1_000_000_000;
pub const MAX_WINDOW_SECONDS: u64 = 31_536_000;
pub const MAX_ENDPOINT_BYTES: usize = 256;
/// One token a year: slower refill rates would make the bucket never refill in practice
/// and overflow the refill interval.
pub const MIN_REFILL_RATE: f64 = 1.0 / MAX_WINDOW_SECONDS as f64;
pub const MAX_REFILL_RATE: f64 = 1e9;

/// The fields a create request must name; every other field has a default. (A
/// descriptor rule names `domain` and `descriptor` instead of `endpoint`.)
const REQUIRED: [&str; 3] = ["endpoint", "requests_per_window", "window_seconds"];
/// Fields of a [`Config`] the server owns.
const READ_ONLY: [&str; 4] = ["id", "created_at", "updated_at", "warnings"];

/// The writable part of a config, validated as a whole. Its serde form is the admin
/// API's input and the stored form; a field missing from stored JSON takes its default,
/// so a field added later reads older rows and older instances' shared configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConfigSpec {
    /// `"*"`, an exact path or a `/prefix/*`: which requests the config limits. For a
    /// descriptor rule, its identity, written from `domain` and `descriptor`.
    pub endpoint: String,
    /// The limit of a config written with top-level fields, which holds one limit, named
    /// `default` (the shape of every config before `limits`): its quota. Absent with
    /// `limits`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_window: Option<u64>,
    /// The window length; with `calendar`, the calendar's nominal length, which may be
    /// left out of a create or an update that sets the calendar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<u64>,
    /// A fixed window's calendar windows (`day`, `week`, `month`, in UTC) instead of
    /// windows of `window_seconds` since the epoch. Left out of the JSON when absent, so
    /// that instances and files of versions before it still read every other config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calendar: Option<Calendar>,
    /// `sliding_window` when left out of a create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
    /// Token bucket capacity; `None` is `requests_per_window`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_limit: Option<u64>,
    /// Token bucket tokens per second; `None` is `requests_per_window / window_seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill_rate: Option<f64>,
    /// Several named limits (1 to 8), all of which must admit a request; instead of
    /// the top-level fields above. Left out of the JSON of a
    /// config written with top-level fields, so that instances and files of versions
    /// before it still read those.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub limits: Vec<LimitSpec>,
    /// An inactive config limits nothing (it does not fall back to another).
    #[serde(default = "yes")]
    pub is_active: bool,
    /// `enforce` refuses what is over the limit; `shadow` decides, counts and reports
    /// the same way but lets every request through.
    #[serde(default)]
    pub mode: Enforcement,
    /// What the limit counts per: `client` (the default), `global`, `ip` or
    /// `header:<Name>` (see [`key`]). Left out of the JSON when `client`, so that
    /// instances and files of versions before keys still read every other config.
    #[serde(default, skip_serializing_if = "Key::is_client")]
    #[schema(value_type = Option<String>, example = "ip")]
    pub key: Key,
    /// Per-client limits under this config; the most specific match wins (see
    /// [`Override`]).
    #[serde(default)]
    pub overrides: Vec<Override>,
    /// A descriptor rule's Envoy rate-limit domain (with `descriptor`; see
    /// [`descriptor`]). Left out of a path config's JSON, so that instances and files
    /// of versions before descriptor rules still read every path config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// A descriptor rule's pattern: the keys of the request descriptors it limits, in
    /// order, each with a fixed value or any value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptor: Option<Vec<DescriptorEntry>>,
}

/// What a config does with a request over its limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    #[default]
    Enforce,
    Shadow,
}

/// Most overrides one config may carry.
pub const MAX_OVERRIDES: usize = 1000;

/// A per-client limit within a config: for the client named (`"key-42"`) or for every
/// client whose id starts with a prefix (`"partner-*"`), the fields given replace the
/// config's. An exact name beats any prefix, and a longer prefix a shorter one. The
/// algorithm, the mode and the rate-limit key (client, config endpoint) stay the
/// config's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Override {
    pub client: String,
    /// The name of the limit it changes; may be left out when the config has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    pub requests_per_window: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill_rate: Option<f64>,
}

impl Override {
    /// The prefix of a `"prefix*"` pattern, `None` for an exact client id.
    pub fn prefix(&self) -> Option<&str> {
        self.client.strip_suffix('*')
    }

    /// The limit this override gives its clients in place of `base`: `base` with its own
    /// numbers. The window is the limit's unless given; a token bucket's capacity and
    /// rate follow the override's own numbers unless given (the limit's were set for its
    /// own quota).
    pub fn apply_to(&self, base: &LimitSpec) -> LimitSpec {
        if base.algorithm == Algorithm::Concurrency {
            // Its number is the units held at once; its lease stays the limit's.
            return LimitSpec {
                max_in_flight: Some(self.requests_per_window),
                window_seconds: self.window_seconds.unwrap_or(0),
                burst_limit: self.burst_limit,
                refill_rate: self.refill_rate,
                ..base.clone()
            };
        }
        LimitSpec {
            requests_per_window: self.requests_per_window,
            window_seconds: self.window_seconds.unwrap_or(base.window_seconds),
            burst_limit: self.burst_limit,
            refill_rate: self.refill_rate,
            ..base.clone()
        }
    }

    /// Whether it changes the limit named `name` of a config whose limits are `all`.
    pub fn changes(&self, name: &str, all: &[LimitSpec]) -> bool {
        match &self.limit {
            Some(limit) => limit == name,
            None => all.len() == 1,
        }
    }
}

/// One named limit of a config: an algorithm and its numbers. A config written with
/// top-level fields holds one, named `default`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    /// `[a-z0-9_-]{1,32}`, unique within the config: the IETF policy name, and what a
    /// refusal names.
    #[schema(pattern = "^[a-z0-9_-]{1,32}$")]
    pub name: String,
    /// `sliding_window` when left out.
    #[serde(default = "default_algorithm")]
    pub algorithm: Algorithm,
    /// Every algorithm's but `concurrency`'s (left out of its JSON, 0 here).
    #[serde(default, skip_serializing_if = "crate::is_zero")]
    pub requests_per_window: u64,
    /// With `calendar`, the calendar's nominal length (which may be left out). Every
    /// algorithm's but `concurrency`'s.
    #[serde(default, skip_serializing_if = "crate::is_zero")]
    pub window_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calendar: Option<Calendar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill_rate: Option<f64>,
    /// What this limit counts per, when not the config's `key` (see [`key`]); left out
    /// when it is the config's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "global")]
    pub key: Option<Key>,
    /// A `concurrency` limit's units held at once (requests in flight).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u64>,
    /// How long a `concurrency` limit's unit is held at most, in seconds (default 60):
    /// a unit never given back (a crashed instance's, a lease never released) comes
    /// back then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<u64>,
    /// What it counts: `requests` (the default; left out of the JSON), `tokens` (any
    /// quantity a caller reports) or `bytes`. A limit of tokens or bytes admits a
    /// request while its balance is positive and is charged what the request used.
    #[serde(default, skip_serializing_if = "Unit::is_requests")]
    pub unit: Unit,
    /// Where a limit of tokens or bytes finds what a proxied request used:
    /// `response_header:<Name>`, the value of that header of the upstream's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "response_header:X-Usage-Tokens")]
    pub cost_from: Option<String>,
}

/// The largest quota of a limit of tokens or bytes (a petabyte): Redis's Lua counts
/// exactly below 2^53.
pub const MAX_UNITS: u64 = 1_000_000_000_000_000;
/// The largest quota of a sliding window of tokens or bytes: its runs count in 32 bits.
pub const MAX_SLIDING_UNITS: u64 = u32::MAX as u64;
/// What `cost_from` may name.
const COST_FROM_HEADER: &str = "response_header:";

/// The header `cost_from` names (as given), if it is well formed.
pub fn cost_header(cost_from: &str) -> Option<&str> {
    let name = cost_from.strip_prefix(COST_FROM_HEADER)?;
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    (!name.is_empty() && name.len() <= 128 && name.bytes().all(token)).then_some(name)
}

/// A concurrency limit's lease when not given.
pub const DEFAULT_LEASE_SECONDS: u64 = 60;
/// The longest lease.
pub const MAX_LEASE_SECONDS: u64 = 86_400;

/// The fields of a [`LimitSpec`], in its order: what a `limits` entry may hold.
const LIMIT_FIELDS: [&str; 12] = [
    "name",
    "algorithm",
    "requests_per_window",
    "window_seconds",
    "calendar",
    "burst_limit",
    "refill_rate",
    "key",
    "max_in_flight",
    "lease_seconds",
    "unit",
    "cost_from",
];

impl LimitSpec {
    /// The limit these numbers describe: only the algorithm's own parameters are read (a
    /// token bucket's `burst_limit` and `refill_rate`, defaulting to the window's numbers).
    pub fn limit(&self) -> Limit {
        if self.algorithm == Algorithm::Concurrency {
            return Limit::new(
                self.algorithm,
                self.max_in_flight.unwrap_or(0),
                self.lease_seconds(),
            );
        }
        let mut limit = Limit::new(
            self.algorithm,
            self.requests_per_window,
            self.window_seconds,
        );
        if let Limit::FixedWindow(window) = &mut limit {
            window.calendar = self.calendar;
        }
        if let Limit::TokenBucket(bucket) = &mut limit {
            if let Some(burst) = self.burst_limit {
                bucket.burst = burst;
            }
            if let Some(rate) = self.refill_rate {
                // Rounded up: the bucket never refills faster than configured. `validate`
                // bounds the rate, so the interval fits in a u64 and is at least 1 ns.
                bucket.refill_interval = ((NANOS_PER_SEC as f64 / rate).ceil() as Nanos).max(1);
            }
        }
        limit
    }

    /// A `concurrency` limit's lease, in seconds.
    fn lease_seconds(&self) -> u64 {
        self.lease_seconds.unwrap_or(DEFAULT_LEASE_SECONDS)
    }

    /// The limit as the decision core takes it.
    pub fn named(&self) -> Named {
        Named {
            name: Arc::from(self.name.as_str()),
            limit: self.limit(),
            window_seconds: match self.algorithm {
                Algorithm::Concurrency => self.lease_seconds(),
                _ => self.window_seconds,
            },
            unit: self.unit,
            cost_header: (self.cost_from.as_deref())
                .and_then(cost_header)
                .map(|h| Arc::from(h.to_ascii_lowercase())),
        }
    }

    /// The largest quota of its unit and algorithm.
    fn max_quota(&self) -> u64 {
        match (self.unit, self.algorithm) {
            (Unit::Requests, _) => MAX_REQUESTS_PER_WINDOW,
            (_, Algorithm::SlidingWindow) => MAX_SLIDING_UNITS,
            _ => MAX_UNITS,
        }
    }

    /// `unit` and `cost_from`: tokens and bytes are for the windows and the token
    /// bucket, and only they are charged from a response header.
    fn validate_unit(&self, at: &dyn Fn(&str) -> String) -> Result<(), ValidationError> {
        let err = |field: &str, message: String| Err(ValidationError::new(at(field), message));
        if self.unit != Unit::Requests && self.algorithm == Algorithm::Concurrency {
            return err(
                "unit",
                "is requests for a concurrency limit (it counts requests in flight)".to_owned(),
            );
        }
        if let Some(from) = &self.cost_from {
            if self.unit == Unit::Requests {
                return err(
                    "cost_from",
                    "is for a limit of tokens or bytes (set \"unit\")".to_owned(),
                );
            }
            if cost_header(from).is_none() {
                return err(
                    "cost_from",
                    format!(
                        "must be \"{COST_FROM_HEADER}<Name>\", the response header whose \
                         value is the cost (a header name of 1 to 128 token characters)"
                    ),
                );
            }
        }
        Ok(())
    }

    /// A `concurrency` limit's fields: `max_in_flight` and `lease_seconds`, and none of
    /// a window's.
    fn validate_concurrency(&self, at: &dyn Fn(&str) -> String) -> Result<(), ValidationError> {
        let err = |field: &str, message: String| Err(ValidationError::new(at(field), message));
        let window_fields = [
            ("requests_per_window", self.requests_per_window != 0),
            ("window_seconds", self.window_seconds != 0),
            ("calendar", self.calendar.is_some()),
            ("burst_limit", self.burst_limit.is_some()),
            ("refill_rate", self.refill_rate.is_some()),
        ];
        if let Some((field, _)) = window_fields.iter().find(|(_, given)| *given) {
            return err(
                field,
                "is not a field of a concurrency limit, which takes max_in_flight (and \
                 lease_seconds)"
                    .to_owned(),
            );
        }
        let Some(max) = self.max_in_flight else {
            return err(
                "max_in_flight",
                "is required by a concurrency limit".to_owned(),
            );
        };
        if let Err(e) = in_range("max_in_flight", max, MAX_REQUESTS_PER_WINDOW)
            .and_then(|()| in_range("lease_seconds", self.lease_seconds(), MAX_LEASE_SECONDS))
        {
            return err(&e.field, e.message);
        }
        Ok(())
    }

    /// Checks the numbers; an error names its field through `at` (`limits[2].` before
    /// it, or nothing for a config's top-level fields).
    fn validate(&self, at: &dyn Fn(&str) -> String) -> Result<(), ValidationError> {
        let err = |field: &str, message: String| Err(ValidationError::new(at(field), message));
        self.validate_unit(at)?;
        if self.algorithm == Algorithm::Concurrency {
            return self.validate_concurrency(at);
        }
        for (field, given) in [
            ("max_in_flight", self.max_in_flight.is_some()),
            ("lease_seconds", self.lease_seconds.is_some()),
        ] {
            if given {
                return err(
                    field,
                    format!(
                        "is a field of a concurrency limit (this limit's algorithm is {})",
                        self.algorithm.as_str()
                    ),
                );
            }
        }
        if let Err(e) = in_range(
            "requests_per_window",
            self.requests_per_window,
            self.max_quota(),
        )
        .and_then(|()| in_range("window_seconds", self.window_seconds, MAX_WINDOW_SECONDS))
        {
            return err(&e.field, e.message);
        }
        if let Some(calendar) = self.calendar {
            if self.algorithm != Algorithm::FixedWindow {
                return err(
                    "calendar",
                    format!(
                        "is for the fixed_window algorithm only (this limit's is {}); \
                         send \"calendar\": null to use another",
                        self.algorithm.as_str()
                    ),
                );
            }
            let nominal = calendar.nominal_seconds();
            if self.window_seconds != nominal {
                return err(
                    "window_seconds",
                    format!(
                        "is set by calendar: {nominal} for {:?} (leave it out, or send \
                         {nominal})",
                        calendar.as_str()
                    ),
                );
            }
        }
        if let Some(burst) = self.burst_limit
            && let Err(e) = in_range("burst_limit", burst, self.max_quota())
        {
            return err(&e.field, e.message);
        }
        // A token bucket's default rate, one window's quota per window, has the bounds of
        // a given one (a bucket of 10^12 bytes a second refills no faster than 10^9).
        if self.algorithm == Algorithm::TokenBucket
            && self.refill_rate.is_none()
            && self.window_seconds > 0
            && self.requests_per_window as f64 / self.window_seconds as f64 > MAX_REFILL_RATE
        {
            return err(
                "refill_rate",
                format!(
                    "is requests_per_window / window_seconds when left out, here above \
                     {MAX_REFILL_RATE:e} per second: give a refill_rate of at most that"
                ),
            );
        }
        if let Some(rate) = self.refill_rate
            && !(rate.is_finite() && (MIN_REFILL_RATE..=MAX_REFILL_RATE).contains(&rate))
        {
            return err(
                "refill_rate",
                format!(
                    "must be a number of tokens per second from {MIN_REFILL_RATE:e} to {MAX_REFILL_RATE:e}"
                ),
            );
        }
        Ok(())
    }

    /// One `limits` entry from JSON, every error naming its field (`limits[2].window_seconds`):
    /// unknown fields are refused, `algorithm` defaults to `sliding_window`, and a
    /// calendar without a window takes its nominal length.
    fn parse(i: usize, value: &Value) -> Result<Self, ValidationError> {
        let at = |field: &str| format!("limits[{i}].{field}");
        let Value::Object(object) = value else {
            return Err(ValidationError::new(
                format!("limits[{i}]"),
                "must be an object: {\"name\", \"algorithm\", \"requests_per_window\", ...}"
                    .to_owned(),
            ));
        };
        if let Some(unknown) = object.keys().find(|k| !LIMIT_FIELDS.contains(&k.as_str())) {
            return Err(ValidationError::new(
                at(unknown),
                format!(
                    "is not a field of a limit (those are: {})",
                    LIMIT_FIELDS.join(", ")
                ),
            ));
        }
        let mut object = object.clone();
        object
            .entry("algorithm")
            .or_insert_with(|| Value::from(Algorithm::SlidingWindow.as_str()));
        if let Some(calendar) = given_calendar(&object) {
            object
                .entry("window_seconds")
                .or_insert_with(|| Value::from(calendar.nominal_seconds()));
        }
        let required: &[&str] = match object.get("algorithm").and_then(Value::as_str) {
            Some("concurrency") => &["name", "max_in_flight"],
            _ => &["name", "requests_per_window", "window_seconds"],
        };
        for field in required {
            if object.get(*field).is_none_or(Value::is_null) {
                return Err(ValidationError::new(at(field), "is required".to_owned()));
            }
        }
        // Each field alone against a valid entry, so a wrong type names its field.
        let valid = serde_json::json!({"name": "x", "algorithm": "fixed_window",
            "requests_per_window": 1, "window_seconds": 1, "unit": "tokens",
            "cost_from": "response_header:X-Usage"});
        for (key, v) in &object {
            let mut one = valid.clone();
            one[key] = v.clone();
            if let Err(e) = Self::deserialize(&one) {
                let example = valid.get(key).cloned().unwrap_or(Value::Null);
                return Err(ValidationError::new(at(key), type_message(&e, &example)));
            }
        }
        Self::deserialize(&Value::Object(object))
            .map_err(|e| ValidationError::new(format!("limits[{i}]"), e.to_string()))
    }
}

/// A limit's name: 1 to 32 of `a-z 0-9 _ -`.
pub fn is_limit_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A client id: 1 to 128 bytes of `A-Z a-z 0-9 . _ : @ -`.
/// Appends `s` to `out` with every byte outside `keep` percent-encoded (`%2F`): a
/// config's admin path and a descriptor rule's identity.
pub fn percent_encode_into(out: &mut String, s: &str, keep: impl Fn(u8) -> bool) {
    for b in s.bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

pub fn is_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CLIENT_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'))
}

pub const MAX_CLIENT_ID_BYTES: usize = 128;

/// A list that may also be given as `null`, for empty (an absent optional field).
fn null_as_empty<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

fn default_algorithm() -> Algorithm {
    Algorithm::SlidingWindow
}

fn yes() -> bool {
    true
}

impl ConfigSpec {
    /// The default policy present from the first start: 100 requests per hour.
    pub fn default_policy() -> Self {
        Self {
            endpoint: DEFAULT_ENDPOINT.to_owned(),
            requests_per_window: Some(100),
            window_seconds: Some(3600),
            calendar: None,
            algorithm: Some(default_algorithm()),
            burst_limit: None,
            refill_rate: None,
            limits: Vec::new(),
            is_active: true,
            mode: Enforcement::Enforce,
            key: Key::Client,
            overrides: Vec::new(),
            domain: None,
            descriptor: None,
        }
    }

    /// The domain and pattern of a descriptor rule; `None` for a path config.
    pub fn rule(&self) -> Option<(&str, &[DescriptorEntry])> {
        Some((self.domain.as_deref()?, self.descriptor.as_deref()?))
    }

    /// The config's limits, in its order: `limits`, or the one limit `default` of the
    /// top-level fields.
    pub fn limit_specs(&self) -> Vec<LimitSpec> {
        if !self.limits.is_empty() {
            return self.limits.clone();
        }
        vec![LimitSpec {
            name: DEFAULT_LIMIT.to_owned(),
            algorithm: self.algorithm.unwrap_or_else(default_algorithm),
            requests_per_window: self.requests_per_window.unwrap_or(0),
            window_seconds: self.window_seconds.unwrap_or(0),
            calendar: self.calendar,
            burst_limit: self.burst_limit,
            refill_rate: self.refill_rate,
            key: None,
            max_in_flight: None,
            lease_seconds: None,
            unit: Unit::Requests,
            cost_from: None,
        }]
    }

    /// What limit `l` (one of [`ConfigSpec::limit_specs`]) counts per.
    pub fn key_of<'a>(&'a self, l: &'a LimitSpec) -> &'a Key {
        l.key.as_ref().unwrap_or(&self.key)
    }

    /// What it does not do everywhere (see [`ConfigView::warnings`]).
    fn warnings(&self) -> Vec<String> {
        let (surface, others) = match self.domain {
            Some(_) => ("Envoy's rate-limit service", "its other limits apply there"),
            None => (
                "/v1/forward-auth",
                "routes, the reverse proxy and /v1/check (with its lease) enforce it",
            ),
        };
        (self.limits.iter())
            .filter(|l| l.algorithm == Algorithm::Concurrency)
            .map(|l| {
                format!(
                    "limit {:?} (concurrency) is not enforced through {surface}, which sees \
                     no end of the request; {others}",
                    l.name
                )
            })
            .collect()
    }

    /// The first top-level limit field this spec gives, if any.
    fn top_level_given(&self) -> Option<&'static str> {
        // In the order of `TOP_LEVEL_LIMIT_FIELDS`.
        let given = [
            self.requests_per_window.is_some(),
            self.window_seconds.is_some(),
            self.calendar.is_some(),
            self.algorithm.is_some(),
            self.burst_limit.is_some(),
            self.refill_rate.is_some(),
        ];
        TOP_LEVEL_LIMIT_FIELDS
            .into_iter()
            .zip(given)
            .find_map(|(field, given)| given.then_some(field))
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        match (&self.domain, &self.descriptor) {
            (None, None) => validate_endpoint(&self.endpoint)?,
            (Some(domain), Some(pattern)) => {
                descriptor::validate(domain, pattern)?;
                let identity = descriptor::identity(domain, pattern);
                if self.endpoint != identity {
                    return Err(ValidationError::new(
                        "endpoint",
                        format!(
                            "must be {identity:?}: a descriptor rule's endpoint is written \
                             from its domain and descriptor, which cannot change (create a \
                             new rule instead)"
                        ),
                    ));
                }
            }
            (None, Some(_)) => {
                return Err(ValidationError::new(
                    "domain",
                    "is required with descriptor".to_owned(),
                ));
            }
            (Some(_), None) => {
                return Err(ValidationError::new(
                    "descriptor",
                    "is required with domain".to_owned(),
                ));
            }
        }
        self.validate_limits()?;
        if self.domain.is_some() && self.key.needs_http() {
            return Err(ValidationError::new(
                "key",
                format!(
                    "{} needs an HTTP request; a descriptor rule counts per its descriptor \
                     (client) or for every caller (global)",
                    self.key
                ),
            ));
        }
        if matches!(self.key, Key::Global | Key::Header(_)) && !self.overrides.is_empty() {
            return Err(ValidationError::new(
                "overrides",
                format!(
                    "must be empty with key \"{}\": overrides name clients or addresses \
                     (keys \"client\" and \"ip\"); change the config's own numbers",
                    self.key
                ),
            ));
        }
        self.validate_overrides()
    }

    /// Either the top-level fields of one limit, or `limits`: 1 to 8 limits, each valid,
    /// with distinct names.
    fn validate_limits(&self) -> Result<(), ValidationError> {
        if self.limits.is_empty() {
            for (field, given) in [
                ("requests_per_window", self.requests_per_window.is_some()),
                ("window_seconds", self.window_seconds.is_some()),
            ] {
                if !given {
                    return Err(ValidationError::new(
                        field,
                        "is required (or give the config's limits as a list in \"limits\")"
                            .to_owned(),
                    ));
                }
            }
            if self.algorithm == Some(Algorithm::Concurrency) {
                return Err(ValidationError::new(
                    "algorithm",
                    "concurrency: a concurrency limit is given in \"limits\": [{\"name\": \
                     \"exports\", \"algorithm\": \"concurrency\", \"max_in_flight\": 4}]"
                        .to_owned(),
                ));
            }
            return self.limit_specs()[0].validate(&|f| f.to_owned());
        }
        if let Some(field) = self.top_level_given() {
            return Err(ValidationError::new(
                field,
                "is a field of a limit: this config's limits are in \"limits\" (change \
                 them there, or send \"limits\": null with the top-level fields of one limit)"
                    .to_owned(),
            ));
        }
        if self.limits.len() > MAX_LIMITS {
            return Err(ValidationError::new(
                "limits",
                format!("must hold 1 to {MAX_LIMITS} limits"),
            ));
        }
        for (i, l) in self.limits.iter().enumerate() {
            let at = |field: &str| format!("limits[{i}].{field}");
            if !is_limit_name(&l.name) {
                return Err(ValidationError::new(
                    at("name"),
                    "must be 1 to 32 characters of a-z 0-9 _ -".to_owned(),
                ));
            }
            if self.limits[..i].iter().any(|o| o.name == l.name) {
                return Err(ValidationError::new(
                    at("name"),
                    format!("names {:?} a second time", l.name),
                ));
            }
            l.validate(&at)?;
            // Limits of one unit counted per one key are charged together: one cost.
            if let Some(o) = self.limits[..i].iter().find(|o| {
                o.unit == l.unit && o.unit != Unit::Requests && self.key_of(o) == self.key_of(l)
            }) && o.named().cost_header != l.named().cost_header
            {
                return Err(ValidationError::new(
                    at("cost_from"),
                    format!(
                        "must be limit {:?}'s ({}): limits of {} counted per one key are \
                         charged the same units",
                        o.name,
                        o.cost_from.as_deref().unwrap_or("none"),
                        l.unit.as_str()
                    ),
                ));
            }
            if let Some(key) = &l.key
                && self.domain.is_some()
                && key.needs_http()
            {
                return Err(ValidationError::new(
                    at("key"),
                    format!(
                        "{key} needs an HTTP request; a descriptor rule's limits count per \
                         its descriptor (client) or for every caller (global)"
                    ),
                ));
            }
        }
        if self.limits.iter().all(|l| l.key.is_some()) {
            return Err(ValidationError::new(
                "limits",
                format!(
                    "must hold at least one limit that counts per the config's key ({}): \
                     leave out that limit's \"key\", or set the config's \"key\" to one \
                     its limits count per",
                    self.key
                ),
            ));
        }
        Ok(())
    }

    fn validate_overrides(&self) -> Result<(), ValidationError> {
        if self.overrides.len() > MAX_OVERRIDES {
            return Err(ValidationError::new(
                "overrides",
                format!("must hold at most {MAX_OVERRIDES} entries"),
            ));
        }
        let limits = self.limit_specs();
        let names = || {
            let names: Vec<&str> = limits.iter().map(|l| l.name.as_str()).collect();
            names.join(", ")
        };
        let mut seen = std::collections::HashSet::new();
        for (i, o) in self.overrides.iter().enumerate() {
            let at = |field: &str| format!("overrides[{i}].{field}");
            let name = o.prefix().unwrap_or(&o.client);
            if !is_client_id(name) {
                return Err(ValidationError::new(
                    at("client"),
                    "must be a client id (1 to 128 characters of A-Z a-z 0-9 . _ : @ -), \
                     or a prefix of one followed by \"*\""
                        .to_owned(),
                ));
            }
            let Some(target) = limits.iter().find(|l| o.changes(&l.name, &limits)) else {
                let message = match &o.limit {
                    Some(limit) => format!(
                        "names no limit of this config ({limit:?}; its limits: {})",
                        names()
                    ),
                    None => format!(
                        "is required: this config has several limits ({}); name the one \
                         this override changes",
                        names()
                    ),
                };
                return Err(ValidationError::new(at("limit"), message));
            };
            if let Some(key) = &target.key {
                return Err(ValidationError::new(
                    at("limit"),
                    format!(
                        "names {:?}, which counts per key \"{key}\", not per the clients \
                         overrides name: change its own numbers",
                        target.name
                    ),
                ));
            }
            if !seen.insert((o.client.as_str(), target.name.as_str())) {
                return Err(ValidationError::new(
                    at("client"),
                    format!(
                        "names {:?} a second time for limit {:?}",
                        o.client, target.name
                    ),
                ));
            }
            o.apply_to(target).validate(&at)?;
        }
        Ok(())
    }

    /// A spec as SQLite stores it, if it is one this server accepts (no unknown field,
    /// valid).
    pub fn from_stored(json: &str) -> Result<Self, String> {
        let spec = from_stored::<ConfigSpec>(json)?.normalized();
        spec.validate()
            .map_err(|e| format!("{}: {}", e.field, e.message))?;
        Ok(spec)
    }

    /// A new config from a create request's JSON object: the required fields must be
    /// there, the others take their defaults; validated as a whole, endpoint included.
    ///
    /// A descriptor rule names `domain` and `descriptor` and no `endpoint`: its endpoint
    /// is written from them.
    pub fn from_create(mut object: Map<String, Value>) -> Result<Self, ValidationError> {
        let given = |k: &str| object.get(k).is_some_and(|v| !v.is_null());
        let rule = given("domain") || given("descriptor");
        // With `limits`, the limits' own fields are required there.
        let listed = given("limits");
        if rule {
            if object.contains_key("endpoint") {
                return Err(ValidationError::new(
                    "endpoint",
                    "is written by the server for a descriptor rule (from domain and \
                     descriptor); leave it out"
                        .to_owned(),
                ));
            }
            let domain = object
                .get("domain")
                .and_then(|v| String::deserialize(v).ok());
            let pattern = object
                .get("descriptor")
                .and_then(|v| Vec::<DescriptorEntry>::deserialize(v).ok());
            let identity = domain
                .zip(pattern)
                .map(|(d, p)| descriptor::identity(&d, &p));
            // Without an identity, the checks below name the field at fault.
            object.insert(
                "endpoint".to_owned(),
                Value::String(identity.unwrap_or_default()),
            );
        }
        // A calendar sets the window (`merged` writes it; a wrong calendar is named there).
        let calendar = object.get("calendar").is_some_and(|v| !v.is_null());
        if let Some(missing) = REQUIRED
            .iter()
            .filter(|f| !(calendar && **f == "window_seconds"))
            .filter(|f| !(listed && **f != "endpoint"))
            .find(|f| !object.contains_key(**f))
        {
            return Err(ValidationError::new(*missing, "is required".to_owned()));
        }
        let spec = Self::default_policy().merged(object)?;
        if !rule {
            validate_new_endpoint(&spec.endpoint)?;
        }
        Ok(spec)
    }

    /// This spec with the fields of `patch` replaced (a partial update: an explicit
    /// `null` resets an optional field to its default), validated as a whole. Unknown and
    /// read-only fields are refused, and every error names its field.
    pub fn merged(&self, mut patch: Map<String, Value>) -> Result<Self, ValidationError> {
        let Value::Object(mut merged) = to_value(self) else {
            unreachable!("a struct serialises to an object")
        };
        // An absent optional field is a known field, at its default.
        for name in field_names() {
            merged.entry(name.clone()).or_insert(Value::Null);
        }
        one_shape(self, &mut patch);
        let listed = patch.get("limits").is_some_and(|v| !v.is_null());
        // Whether the result has the top-level fields of one limit (it has, or the patch
        // goes back to them with `"limits": null`).
        let unlisted = patch.get("limits").is_some_and(Value::is_null);
        let top_level = !listed && (unlisted || merged.get("limits").is_none_or(Value::is_null));
        if listed {
            // The list replaces the one limit of the top-level fields, unless the patch
            // also gives some (which validation then refuses, naming them).
            for field in TOP_LEVEL_LIMIT_FIELDS {
                if !patch.contains_key(field) {
                    merged.insert(field.to_owned(), Value::Null);
                }
            }
        }
        // A calendar set without a window takes its own (as when it is created).
        if let Some(calendar) = given_calendar(&patch)
            && !patch.contains_key("window_seconds")
            && top_level
        {
            merged.insert(
                "window_seconds".to_owned(),
                Value::from(calendar.nominal_seconds()),
            );
        }
        for (key, value) in patch {
            if READ_ONLY.contains(&key.as_str()) {
                return Err(ValidationError::new(key, "is read-only".to_owned()));
            }
            let Some(slot) = merged.get_mut(&key) else {
                return Err(ValidationError::new(key, "is not a known field".to_owned()));
            };
            if key == "limits" && listed {
                *slot = to_value(&parse_limits(&value)?);
                continue;
            }
            if key == "algorithm" && value.is_null() && top_level {
                let names: Vec<&str> = Algorithm::names().collect();
                return Err(ValidationError::new(
                    key,
                    format!("must be one of {}", names.join(", ")),
                ));
            }
            // Tried alone against this (valid) spec first, so a wrong type is reported
            // under the field that has it.
            let was = std::mem::replace(slot, value);
            let one = Self::deserialize(&Value::Object(merged.clone()));
            if let Err(e) = one {
                return Err(ValidationError::new(key, type_message(&e, &was)));
            }
        }
        let spec = Self::deserialize(&Value::Object(merged))
            .map_err(|e| ValidationError::new("body", e.to_string()))?
            .normalized();
        spec.validate()?;
        Ok(spec)
    }

    /// Writes `l`'s numbers as the top-level fields (its name is not one of them).
    fn set_top_level(&mut self, l: LimitSpec) {
        self.requests_per_window = Some(l.requests_per_window);
        self.window_seconds = Some(l.window_seconds);
        self.calendar = l.calendar;
        self.algorithm = Some(l.algorithm);
        self.burst_limit = l.burst_limit;
        self.refill_rate = l.refill_rate;
    }

    /// This spec as the API shows it: a config of one limit both ways, as top-level
    /// fields and as `limits`, so that clients of either shape read it; others as they
    /// are.
    fn shown(&self) -> std::borrow::Cow<'_, Self> {
        use std::borrow::Cow;
        match self.limits.as_slice() {
            [] => Cow::Owned(Self {
                limits: self.limit_specs(),
                ..self.clone()
            }),
            // A limit of tokens or bytes is shown in `limits` only: top-level fields
            // would say requests.
            [only] if only.unit == Unit::Requests => {
                let mut both = self.clone();
                both.set_top_level(only.clone());
                Cow::Owned(both)
            }
            _ => Cow::Borrowed(self),
        }
    }

    /// The one shape of each config: a list of one limit named `default` is written with
    /// top-level fields (as every version reads it), and an override of a config of one
    /// limit does not name it.
    fn normalized(mut self) -> Self {
        // A limit's key is written only where it is not the config's; limits that all
        // count per one other key make it the config's.
        let config_key = self.key.clone();
        for l in &mut self.limits {
            if l.key.as_ref() == Some(&config_key) {
                l.key = None;
            }
        }
        if let Some(Some(k)) = self.limits.first().map(|l| l.key.clone())
            && self.limits.iter().all(|l| l.key.as_ref() == Some(&k))
        {
            self.key = k;
            for l in &mut self.limits {
                l.key = None;
            }
        }
        if let [only] = self.limits.as_slice()
            && only.name == DEFAULT_LIMIT
            && only.algorithm != Algorithm::Concurrency
            && only.unit == Unit::Requests
            && self.top_level_given().is_none()
        {
            let only = self.limits.remove(0);
            self.set_top_level(only);
        }
        if self.limits.is_empty() {
            self.algorithm.get_or_insert_with(default_algorithm);
            for o in &mut self.overrides {
                if o.limit.as_deref() == Some(DEFAULT_LIMIT) {
                    o.limit = None;
                }
            }
        }
        self
    }
}

/// A config of one limit is shown both ways (see [`Config::view`]) and may be changed
/// either way, so that a body read back, edited and sent again works:
/// - top-level fields sent to a config whose one limit is in `limits` (named other than
///   `default`) change that limit;
/// - a patch that carries the limit both ways keeps the form that differs from the
///   config's limit (the edited one), else either: they agree.
///
/// Two forms that both differ from the config's limit are left for validation to
/// refuse. The result is written as `limits`; [`ConfigSpec::normalized`] gives a
/// `default` limit back its top-level fields.
fn one_shape(current: &ConfigSpec, patch: &mut Map<String, Value>) {
    let specs = current.limit_specs();
    let [current] = specs.as_slice() else {
        return;
    };
    let given: Vec<&str> = TOP_LEVEL_LIMIT_FIELDS
        .into_iter()
        .filter(|f| patch.contains_key(*f))
        .collect();
    if given.is_empty() {
        return;
    }
    // The config's limit with the top-level fields of the patch.
    let Value::Object(mut top) = to_value(current) else {
        return;
    };
    for f in &given {
        match &patch[*f] {
            Value::Null => top.remove(*f),
            v => top.insert((*f).to_owned(), v.clone()),
        };
    }
    if patch.get("calendar").is_some_and(|v| !v.is_null()) && !given.contains(&"window_seconds") {
        // A calendar sets its window (as for a config's own calendar).
        top.remove("window_seconds");
    }
    let Ok(top) = LimitSpec::parse(0, &Value::Object(top)) else {
        return;
    };
    let chosen = match patch.get("limits") {
        // Going back to top-level fields, or the list of a config of several: as sent.
        Some(Value::Null) => return,
        None if current.name == DEFAULT_LIMIT => return,
        None => top,
        Some(Value::Array(list)) => {
            let [entry] = list.as_slice() else {
                return;
            };
            let Ok(listed) = LimitSpec::parse(0, entry) else {
                return;
            };
            match (top == *current, listed == *current) {
                (false, true) => top,
                (true, _) => listed,
                (false, false) => return,
            }
        }
        Some(_) => return,
    };
    for f in TOP_LEVEL_LIMIT_FIELDS {
        patch.remove(f);
    }
    patch.insert("limits".to_owned(), to_value(&[chosen]));
}

/// The fields of a config written with top-level fields that describe its one limit.
const TOP_LEVEL_LIMIT_FIELDS: [&str; 6] = [
    "requests_per_window",
    "window_seconds",
    "calendar",
    "algorithm",
    "burst_limit",
    "refill_rate",
];

/// A `limits` list from JSON: 1 to 8 entries, each read by [`LimitSpec::parse`].
fn parse_limits(value: &Value) -> Result<Vec<LimitSpec>, ValidationError> {
    match value {
        Value::Array(entries) if (1..=MAX_LIMITS).contains(&entries.len()) => entries
            .iter()
            .enumerate()
            .map(|(i, v)| LimitSpec::parse(i, v))
            .collect(),
        _ => Err(ValidationError::new(
            "limits",
            format!(
                "must be a list of 1 to {MAX_LIMITS} limits, each {{\"name\", \"algorithm\", \
                 \"requests_per_window\", \"window_seconds\", ...}}"
            ),
        )),
    }
}

/// The calendar a create or an update sets, if it sets a valid one (an invalid one is
/// reported under its field by the parse that follows).
fn given_calendar(object: &Map<String, Value>) -> Option<Calendar> {
    object
        .get("calendar")
        .and_then(|v| Calendar::deserialize(v).ok())
}

/// A field's serde error as a sentence: what the field takes, shown by the value it had.
fn type_message(e: &serde_json::Error, example: &Value) -> String {
    let e_text = e.to_string();
    // A field's own validation (a key naming a credentials header) says what is wrong
    // in its own words; serde's words are about types and values.
    let serde_own = [
        "invalid type",
        "invalid value",
        "invalid length",
        "unknown variant",
    ];
    if !serde_own.iter().any(|w| e_text.starts_with(w)) {
        return e_text;
    }
    let expected = match example {
        Value::Bool(_) => "must be true or false".to_owned(),
        // An absent optional field: what serde expected says what it takes.
        Value::Null if e_text.contains("expected a string") => "must be a string".to_owned(),
        Value::Null if e_text.contains("expected a sequence") => {
            "must be a list of {\"key\", \"value\"} entries".to_owned()
        }
        Value::Number(_) | Value::Null => "must be a number within range".to_owned(),
        Value::String(_) => "must be a string".to_owned(),
        _ => "has the wrong type".to_owned(),
    };
    let e = e.to_string();
    // serde's own words name the accepted values of an enum (`algorithm`).
    match e.find("expected one of") {
        Some(at) => {
            let names = &e[at + "expected one of ".len()..];
            // serde quotes each name in backticks; the message lists them bare.
            let names = names.split(" at line").next().unwrap_or(names);
            format!("must be one of {}", names.replace('`', ""))
        }
        None => format!("{expected} ({e})"),
    }
}

/// What the dashboard draws its config form from, so that the form has exactly the
/// fields a config has: the spec's serde form with its defaults, the fields a create
/// needs, the values each choice field takes, and the top-level fields of a config's one
/// limit (which a config of several gives in `limits` instead). JSON text, so that the fields keep
/// the struct's order (a `serde_json::Value` would sort them).
pub fn form_model() -> String {
    let modes = [Enforcement::Enforce, Enforcement::Shadow].map(|m| to_value(&m));
    let choices = serde_json::json!({
        "algorithm": Algorithm::names().collect::<Vec<_>>(),
        "calendar": Calendar::ALL.map(Calendar::as_str),
        "mode": modes,
    });
    let mut defaults = serde_json::to_string(&ConfigSpec::default_policy()).unwrap_or_default();
    // The fields a default leaves out of its JSON (absent optional ones), after the
    // others, as null.
    let shown = to_value(&ConfigSpec::default_policy());
    defaults.pop();
    // `limits` as an empty list: the form edits it as JSON, and sends it only when it
    // names some (the top-level fields of one limit rule otherwise).
    for name in field_names().iter().filter(|k| shown.get(k).is_none()) {
        let empty = if name == "limits" { "[]" } else { "null" };
        defaults.push_str(&format!(",{}:{empty}", to_value(name)));
    }
    defaults.push('}');
    format!(
        r#"{{"defaults": {defaults}, "required": {}, "choices": {choices}, "limit_fields": {}}}"#,
        to_value(&REQUIRED),
        to_value(&TOP_LEVEL_LIMIT_FIELDS),
    )
}

/// Every field of a spec, from its schema (its JSON leaves absent optional fields out).
fn field_names() -> &'static [String] {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| match <ConfigSpec as utoipa::PartialSchema>::schema() {
        utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(schema)) => {
            schema.properties.keys().cloned().collect()
        }
        _ => Vec::new(),
    })
}

/// A value from JSON this server or another instance stored (SQLite, Redis, the
/// history). A field this server does not know (written by a newer version) is refused
/// rather than dropped: it might change what the config does.
fn from_stored<T: Serialize + serde::de::DeserializeOwned>(json: &str) -> Result<T, String> {
    let value: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let parsed = T::deserialize(&value).map_err(|e| e.to_string())?;
    if let (Value::Object(given), Value::Object(known)) = (&value, to_value(&parsed))
        && let Some(unknown) = given.keys().find(|k| {
            // A spec field left out at its default (absent, `client`) may also be written
            // out: null, or the default itself.
            !known.contains_key(*k) && !field_names().contains(k)
        })
    {
        return Err(format!("{unknown}: is not a known field"));
    }
    Ok(parsed)
}

/// A serialisable value as JSON; a struct of plain fields never fails.
fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
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

/// Whether `name` can name a config in a query or a path: a path config's endpoint, or
/// a descriptor rule's identity (which the rule's own checks vouch for).
pub fn validate_name(name: &str) -> Result<(), ValidationError> {
    if descriptor::is_identity(name) {
        return Ok(());
    }
    validate_endpoint(name)
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

/// A stored config: its spec, its id and its times. This serde form (times as integer
/// nanoseconds) is what SQLite and Redis hold; [`Config::view`] is what the API shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub id: i64,
    #[serde(flatten)]
    pub spec: ConfigSpec,
    pub created_at: Nanos,
    pub updated_at: Nanos,
}

/// A config as the admin API and the feeds show it: times in RFC 3339.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Config)]
pub struct ConfigView<'a> {
    pub id: i64,
    /// The spec, a config of one limit shown both ways (see `ConfigSpec::shown`).
    #[serde(flatten)]
    #[schema(inline = false, value_type = ConfigSpec)]
    pub spec: std::borrow::Cow<'a, ConfigSpec>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// What the config does not do everywhere: a concurrency limit is not enforced
    /// where no end of the request is seen (forward-auth, Envoy).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl Config {
    pub fn endpoint(&self) -> &str {
        &self.spec.endpoint
    }

    pub fn view(&self) -> ConfigView<'_> {
        ConfigView {
            id: self.id,
            spec: self.spec.shown(),
            created_at: rfc3339(self.created_at),
            updated_at: rfc3339(self.updated_at),
            warnings: self.spec.warnings(),
        }
    }

    /// The stored or shared JSON of a config, if it is one this server accepts (see
    /// [`from_stored`]).
    pub fn parse(json: &str) -> Result<Self, String> {
        let mut config: Config = from_stored(json)?;
        config.spec = config.spec.normalized();
        config
            .spec
            .validate()
            .map_err(|e| format!("{}: {}", e.field, e.message))?;
        Ok(config)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The API's view of a list of configs.
pub fn views(configs: &[Config]) -> Vec<ConfigView<'_>> {
    configs.iter().map(Config::view).collect()
}

/// What a change did, for the feeds, the metrics and the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConfigAction {
    Created,
    Updated,
    Deleted,
}

impl ConfigAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigAction::Created => "created",
            ConfigAction::Updated => "updated",
            ConfigAction::Deleted => "deleted",
        }
    }

    /// The metric label: the verb (`create`, `update`, `delete`).
    pub fn verb(self) -> &'static str {
        let s = self.as_str();
        &s[..s.len() - 1]
    }
}

/// Who made a change, as the history records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The admin API.
    Api,
    /// Another instance, through the shared configs (distributed mode).
    Cluster,
    /// A rollback to an earlier version, through the admin API.
    Rollback,
    /// The config file (`--config-file`).
    File,
    /// The first start: the default policy.
    Start,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Cluster => "cluster",
            Source::Rollback => "rollback",
            Source::File => "file",
            Source::Start => "start",
        }
    }
}

/// One config before and after a change; `None` for absent. At least one is `Some`.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub before: Option<Config>,
    pub after: Option<Config>,
}

impl Change {
    pub fn endpoint(&self) -> &str {
        match (&self.after, &self.before) {
            (Some(c), _) | (None, Some(c)) => c.endpoint(),
            (None, None) => "",
        }
    }

    pub fn action(&self) -> ConfigAction {
        match (&self.before, &self.after) {
            (None, _) => ConfigAction::Created,
            (Some(_), Some(_)) => ConfigAction::Updated,
            (Some(_), None) => ConfigAction::Deleted,
        }
    }

    /// The config the feeds show: the new one, or the one deleted.
    pub fn shown(&self) -> Option<&Config> {
        self.after.as_ref().or(self.before.as_ref())
    }
}

/// The changes that turn `old` into `new`, by endpoint; configs equal in both are left out.
pub fn diff(old: &[Config], new: &[Config]) -> Vec<Change> {
    let before: std::collections::HashMap<&str, &Config> =
        old.iter().map(|c| (c.endpoint(), c)).collect();
    let after: std::collections::HashSet<&str> = new.iter().map(Config::endpoint).collect();
    let mut changes = Vec::new();
    for c in new {
        match before.get(c.endpoint()) {
            Some(b) if *b == c => {}
            b => changes.push(Change {
                before: b.map(|b| (*b).clone()),
                after: Some(c.clone()),
            }),
        }
    }
    for c in old {
        if !after.contains(c.endpoint()) {
            changes.push(Change {
                before: Some(c.clone()),
                after: None,
            });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn config(endpoint: &str, limit: u64) -> Config {
        Config {
            id: 1,
            spec: ConfigSpec {
                endpoint: endpoint.to_owned(),
                requests_per_window: Some(limit),
                ..ConfigSpec::default_policy()
            },
            created_at: 0,
            updated_at: 0,
        }
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
    fn rejects_bad_fields_by_name() {
        let base = ConfigSpec::default_policy();
        let cases = [
            (json!({"requests_per_window": -1}), "requests_per_window"),
            (json!({"requests_per_window": 1.5}), "requests_per_window"),
            (json!({"requests_per_window": "10"}), "requests_per_window"),
            (json!({"requests_per_window": null}), "requests_per_window"),
            (json!({"window_seconds": 1e30}), "window_seconds"),
            (json!({"burst_limit": true}), "burst_limit"),
            (json!({"refill_rate": "fast"}), "refill_rate"),
            (json!({"algorithm": "leaky"}), "algorithm"),
            (json!({"algorithm": null}), "algorithm"),
            (json!({"is_active": 1}), "is_active"),
            (json!({"id": 3}), "id"),
            (json!({"colour": "red"}), "colour"),
        ];
        for (body, field) in cases {
            let e = base.merged(object(body.clone())).unwrap_err();
            assert_eq!(e.field, field, "{body}: {}", e.message);
        }
        let e = base
            .merged(object(json!({"algorithm": "leaky"})))
            .unwrap_err();
        assert!(e.message.contains("token_bucket"), "{}", e.message);
        let create = |body: Value| ConfigSpec::from_create(object(body));
        let valid = json!({"endpoint": "/x", "requests_per_window": 5, "window_seconds": 10});
        let with = |k: &str, v: Value| {
            let mut b = valid.clone();
            b[k] = v;
            b
        };
        let spec = create(valid.clone()).unwrap();
        assert_eq!(
            (spec.algorithm, spec.is_active, spec.burst_limit),
            (Some(Algorithm::SlidingWindow), true, None)
        );
        for (k, v) in [
            ("requests_per_window", json!(0)),
            ("requests_per_window", json!(1_000_000_001u64)),
            ("window_seconds", json!(31_536_001)),
            ("burst_limit", json!(0)),
            ("refill_rate", json!(0.0)),
            ("refill_rate", json!(-2.0)),
            ("refill_rate", json!(1e10)),
            ("endpoint", json!("x")),
            ("endpoint", json!("/a/../b")),
        ] {
            assert_eq!(create(with(k, v.clone())).unwrap_err().field, k, "{k}={v}");
        }
        for required in REQUIRED {
            let mut body = valid.clone();
            body.as_object_mut().unwrap().remove(required);
            assert_eq!(create(body).unwrap_err().field, required);
        }
    }

    #[test]
    fn a_fields_own_validation_speaks_for_itself() {
        let e = ConfigSpec::from_create(object(json!({"endpoint": "/a",
            "requests_per_window": 1, "window_seconds": 1, "key": "header:X-API-Key"})))
        .unwrap_err();
        assert_eq!(e.field, "key");
        assert!(
            e.message
                .starts_with("names X-API-Key, which carries credentials"),
            "{}",
            e.message
        );
        // A wrong type still says what the field takes.
        let e = ConfigSpec::from_create(object(json!({"endpoint": "/a",
            "requests_per_window": "1", "window_seconds": 1})))
        .unwrap_err();
        assert!(e.message.starts_with("must be a number"), "{}", e.message);
    }

    #[test]
    fn a_descriptor_rule_is_created_without_an_endpoint() {
        let rule = |extra: Value| {
            let mut body = json!({"domain": "rw", "descriptor": [{"key": "k", "value": "v"},
                {"key": "ip"}], "requests_per_window": 2, "window_seconds": 60});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            ConfigSpec::from_create(object(body))
        };
        let spec = rule(json!({})).unwrap();
        assert_eq!(spec.endpoint, "rw: k=v, ip");
        assert_eq!(spec.rule().map(|(d, p)| (d, p.len())), Some(("rw", 2)));
        assert_eq!(
            rule(json!({"endpoint": "/x"})).unwrap_err().field,
            "endpoint"
        );
        assert_eq!(rule(json!({"domain": null})).unwrap_err().field, "domain");
        let e = rule(json!({"domain": 5})).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.starts_with("must be a string")),
            ("domain", true),
            "{e:?}"
        );
        let e = rule(json!({"descriptor": "k"})).unwrap_err();
        assert!(e.message.starts_with("must be a list"), "{e:?}");
        // A path config may name both as null (the dashboard's form sends every field).
        let path = ConfigSpec::from_create(object(json!({"endpoint": "/p", "domain": null,
            "descriptor": null, "requests_per_window": 1, "window_seconds": 1})))
        .unwrap();
        assert!(path.rule().is_none());
        // The identity follows the rule: changing either is refused.
        let e = spec.merged(object(json!({"domain": "other"}))).unwrap_err();
        assert_eq!(e.field, "endpoint");
        assert!(
            spec.merged(object(json!({"requests_per_window": 9})))
                .is_ok()
        );
    }

    #[test]
    fn a_calendar_sets_the_window_and_is_for_fixed_windows_only() {
        let monthly = ConfigSpec::from_create(object(json!({
            "endpoint": "/m", "requests_per_window": 200000,
            "algorithm": "fixed_window", "calendar": "month"})))
        .unwrap();
        assert_eq!(monthly.window_seconds, Some(30 * 86_400));
        match monthly.limit_specs()[0].limit() {
            Limit::FixedWindow(w) => assert_eq!(w.calendar, Some(Calendar::Month)),
            other => panic!("{other:?}"),
        }
        // Its JSON round-trips, window included, and reads back as it was.
        let json = serde_json::to_value(&monthly).unwrap();
        assert_eq!(json["calendar"], "month");
        let Value::Object(again) = json else { panic!() };
        assert_eq!(ConfigSpec::from_create(again).unwrap(), monthly);
        // An update that sets a calendar takes its window; one that removes it keeps the
        // window as it was.
        let weekly = monthly.merged(object(json!({"calendar": "week"}))).unwrap();
        assert_eq!(
            (weekly.window_seconds, weekly.calendar),
            (Some(604_800), Some(Calendar::Week))
        );
        let plain = weekly.merged(object(json!({"calendar": null}))).unwrap();
        assert_eq!(
            (plain.window_seconds, plain.calendar),
            (Some(604_800), None)
        );
        // Refused, naming the field.
        for (body, field) in [
            (
                json!({"calendar": "month", "algorithm": "sliding_window"}),
                "calendar",
            ),
            (
                json!({"calendar": "month", "window_seconds": 60}),
                "window_seconds",
            ),
            (json!({"calendar": "year"}), "calendar"),
            (json!({"calendar": 30}), "calendar"),
            (json!({"algorithm": "token_bucket"}), "calendar"),
        ] {
            let e = monthly.merged(object(body.clone())).unwrap_err();
            assert_eq!(e.field, field, "{body}: {}", e.message);
        }
        let e = monthly
            .merged(object(json!({"calendar": "year"})))
            .unwrap_err();
        assert!(e.message.contains("day, week, month"), "{}", e.message);
        // An override may not give its own window to a calendar config.
        let e = monthly
            .merged(object(json!({"overrides": [
                {"client": "big", "requests_per_window": 5, "window_seconds": 60}]})))
            .unwrap_err();
        assert_eq!(e.field, "overrides[0].window_seconds");
    }

    #[test]
    fn a_config_goes_from_one_limit_to_several_and_back() {
        let one = ConfigSpec::default_policy();
        let several = one
            .merged(object(json!({"limits": [
                {"name": "burst", "algorithm": "token_bucket", "requests_per_window": 5, "window_seconds": 1},
                {"name": "month", "algorithm": "fixed_window", "requests_per_window": 9, "calendar": "month"}]})))
            .unwrap();
        assert_eq!(several.top_level_given(), None);
        let names: Vec<_> = several.limit_specs().into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["burst", "month"]);
        assert_eq!(several.limits[1].window_seconds, 2_592_000);
        // A calendar without the list's context is a top-level field: refused as such.
        let e = several
            .merged(object(json!({"calendar": "day"})))
            .unwrap_err();
        assert_eq!(e.field, "calendar", "{}", e.message);
        // Back to one limit, a calendar's window written for it.
        let back = several
            .merged(object(json!({"limits": null, "requests_per_window": 3,
                "algorithm": "fixed_window", "calendar": "week"})))
            .unwrap();
        assert!(back.limits.is_empty());
        assert_eq!(back.window_seconds, Some(604_800));
        // A list of one `default` is the top-level shape; its overrides name no limit.
        let default = one
            .merged(object(
                json!({"limits": [{"name": "default", "requests_per_window": 4,
                "window_seconds": 8}], "overrides": [{"client": "a", "limit": "default",
                "requests_per_window": 1}]}),
            ))
            .unwrap();
        assert_eq!(
            (default.requests_per_window, default.limits.len()),
            (Some(4), 0)
        );
        assert_eq!(default.overrides[0].limit, None);
    }

    #[test]
    fn a_partial_update_keeps_the_other_fields_and_null_resets() {
        let mut spec = ConfigSpec::default_policy();
        spec.algorithm = Some(Algorithm::TokenBucket);
        spec.requests_per_window = Some(10);
        spec.window_seconds = Some(5);
        let bucket = |spec: &ConfigSpec| match spec.limit_specs()[0].limit() {
            Limit::TokenBucket(b) => (b.burst, b.refill_interval),
            other => panic!("{other:?}"),
        };
        assert_eq!(bucket(&spec), (10, 500_000_000));
        let spec = spec
            .merged(object(json!({"burst_limit": 3, "refill_rate": 4})))
            .unwrap();
        assert_eq!(bucket(&spec), (3, 250_000_000));
        assert_eq!(spec.requests_per_window, Some(10));
        let spec = spec.merged(object(json!({"burst_limit": null}))).unwrap();
        assert_eq!(bucket(&spec).0, 10);
        assert_eq!(spec.refill_rate, Some(4.0));
    }

    #[test]
    fn the_stored_form_round_trips_and_reads_older_json() {
        let mut c = config("/a", 7);
        c.spec.refill_rate = Some(0.5);
        c.created_at = 12;
        c.updated_at = 34;
        assert_eq!(Config::parse(&c.to_json()).unwrap(), c);
        // Written by an instance that knew fewer fields: the rest take their defaults.
        let old = r#"{"id": 4, "endpoint": "/b", "requests_per_window": 3, "window_seconds": 9,
            "algorithm": "fixed_window", "created_at": 1, "updated_at": 2}"#;
        let parsed = Config::parse(old).unwrap();
        assert_eq!(parsed.spec.algorithm, Some(Algorithm::FixedWindow));
        assert!(parsed.spec.is_active);
        assert!(
            Config::parse(&old.replace("\"requests_per_window\": 3", "\"requests_per_window\": 0"))
                .is_err()
        );
        assert!(Config::parse("{}").is_err());
        let view = to_value(&c.view());
        assert_eq!(view["endpoint"], "/a");
        assert_eq!(view["created_at"], rfc3339(12));
        assert!(view.get("spec").is_none());
    }

    #[test]
    fn the_form_model_has_every_field_in_order_and_every_choice() {
        let model: Value = serde_json::from_str(&form_model()).unwrap();
        let spec = ConfigSpec::deserialize(&model["defaults"]).unwrap();
        assert_eq!(spec, ConfigSpec::default_policy());
        // Every field, those a default leaves out included.
        let mut rule = ConfigSpec::default_policy();
        rule.domain = Some("d".into());
        rule.descriptor = Some(vec![]);
        let all = to_value(&rule);
        let fields = model["defaults"].as_object().unwrap();
        assert!(
            all.as_object()
                .unwrap()
                .keys()
                .all(|k| fields.contains_key(k))
        );
        assert_eq!(fields["domain"], Value::Null);
        let text = form_model();
        let at = |k: &str| text.find(&format!("\"{k}\"")).unwrap();
        assert!(at("endpoint") < at("requests_per_window") && at("is_active") < at("overrides"));
        assert_eq!(
            model["choices"]["algorithm"].as_array().unwrap().len(),
            Algorithm::ALL.len()
        );
        assert_eq!(
            model["choices"]["mode"],
            serde_json::json!(["enforce", "shadow"])
        );
    }

    #[test]
    fn diffs_by_endpoint() {
        let old = vec![config("*", 1), config("/a", 1), config("/b", 1)];
        let new = vec![config("*", 1), config("/a", 2), config("/c", 1)];
        let changes: Vec<(ConfigAction, String)> = diff(&old, &new)
            .iter()
            .map(|c| (c.action(), c.endpoint().to_owned()))
            .collect();
        assert_eq!(
            changes,
            vec![
                (ConfigAction::Updated, "/a".to_owned()),
                (ConfigAction::Created, "/c".to_owned()),
                (ConfigAction::Deleted, "/b".to_owned()),
            ]
        );
        assert_eq!(ConfigAction::Deleted.verb(), "delete");
    }
}
