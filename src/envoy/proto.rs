//! The messages of Envoy's rate-limit service (`envoy.service.ratelimit.v3`), written by
//! hand from the protocol's field numbers, with only the fields ratewarden reads or
//! sends (a decoder skips the others). Each is also its protojson form (the JSON that
//! `POST /v1/envoy/json` reads and answers): fields in lowerCamelCase (the proto names
//! accepted too), enums by name, a duration as `"60s"`, fields at their default left out.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `envoy.service.ratelimit.v3.RateLimitRequest`.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitRequest {
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub domain: String,
    #[prost(message, repeated, tag = "2")]
    #[serde(default)]
    pub descriptors: Vec<RateLimitDescriptor>,
    /// Units each descriptor takes unless it says otherwise; 0 (unset) means 1.
    #[prost(uint32, tag = "3")]
    #[serde(default, alias = "hits_addend", deserialize_with = "lenient_u32")]
    pub hits_addend: u32,
}

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor`.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitDescriptor {
    #[prost(message, repeated, tag = "1")]
    #[serde(default)]
    pub entries: Vec<Entry>,
    /// A limit chosen by the caller, used instead of a rule's numbers.
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub limit: Option<RateLimitOverride>,
    /// `google.protobuf.UInt64Value`: this descriptor's units, over the request's; 0
    /// only looks.
    #[prost(message, optional, tag = "3")]
    #[serde(default, alias = "hits_addend", deserialize_with = "lenient_u64")]
    pub hits_addend: Option<u64>,
}

/// `RateLimitDescriptor.Entry`.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub key: String,
    #[prost(string, tag = "2")]
    #[serde(default)]
    pub value: String,
}

/// `RateLimitDescriptor.RateLimitOverride`.
#[derive(Clone, PartialEq, prost::Message, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitOverride {
    #[prost(uint32, tag = "1")]
    #[serde(default, alias = "requests_per_unit", deserialize_with = "lenient_u32")]
    pub requests_per_unit: u32,
    /// `envoy.type.v3.RateLimitUnit` (which has no `WEEK`).
    #[prost(int32, tag = "2")]
    #[serde(default, deserialize_with = "unit_from_json")]
    pub unit: i32,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse`.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitResponse {
    #[prost(int32, tag = "1")]
    #[serde(serialize_with = "code_to_json")]
    pub overall_code: i32,
    #[prost(message, repeated, tag = "2")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<DescriptorStatus>,
    #[prost(message, repeated, tag = "3")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_add: Vec<HeaderValue>,
}

/// `RateLimitResponse.DescriptorStatus`.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescriptorStatus {
    #[prost(int32, tag = "1")]
    #[serde(serialize_with = "code_to_json")]
    pub code: i32,
    #[prost(message, optional, tag = "2")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_limit: Option<RateLimit>,
    #[prost(uint32, tag = "3")]
    #[serde(skip_serializing_if = "is_zero")]
    pub limit_remaining: u32,
    #[prost(message, optional, tag = "4")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_until_reset: Option<Duration>,
}

/// `RateLimitResponse.RateLimit`.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    #[prost(string, tag = "3")]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[prost(uint32, tag = "1")]
    #[serde(skip_serializing_if = "is_zero")]
    pub requests_per_unit: u32,
    #[prost(int32, tag = "2")]
    #[serde(serialize_with = "unit_to_json")]
    pub unit: i32,
}

/// `envoy.config.core.v3.HeaderValue`.
#[derive(Clone, PartialEq, prost::Message, Serialize)]
pub struct HeaderValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `google.protobuf.Duration`; its JSON is `"1.5s"`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Duration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = match self.nanos {
            0 => format!("{}s", self.seconds),
            n => {
                let frac = format!("{n:09}");
                format!("{}.{}s", self.seconds, frac.trim_end_matches('0'))
            }
        };
        s.serialize_str(&text)
    }
}

/// `RateLimitResponse.Code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Code {
    Unknown = 0,
    Ok = 1,
    OverLimit = 2,
}

/// One of Envoy's units, with its length as envoyproxy/ratelimit counts it (a month is
/// 30 days, a year 365).
#[derive(Debug, PartialEq, Eq)]
pub struct Unit {
    pub number: i32,
    pub name: &'static str,
    pub seconds: u64,
}

const fn unit(number: i32, name: &'static str, seconds: u64) -> Unit {
    Unit {
        number,
        name,
        seconds,
    }
}

/// The units of `RateLimitResponse.RateLimit.Unit`.
pub const UNITS: [Unit; 7] = [
    unit(1, "SECOND", 1),
    unit(2, "MINUTE", 60),
    unit(3, "HOUR", 3_600),
    unit(4, "DAY", 86_400),
    unit(7, "WEEK", 604_800),
    unit(5, "MONTH", 2_592_000),
    unit(6, "YEAR", 31_536_000),
];

/// A unit a caller may send in an override, by number: those of
/// `envoy.type.v3.RateLimitUnit`, which has no `WEEK`.
pub fn override_unit(number: i32) -> Option<&'static Unit> {
    UNITS
        .iter()
        .find(|u| u.number == number && u.name != "WEEK")
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn code_to_json<S: Serializer>(code: &i32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match code {
        1 => "OK",
        2 => "OVER_LIMIT",
        _ => "UNKNOWN",
    })
}

fn unit_to_json<S: Serializer>(unit: &i32, s: S) -> Result<S::Ok, S::Error> {
    let name = UNITS.iter().find(|u| u.number == *unit);
    s.serialize_str(name.map_or("UNKNOWN", |u| u.name))
}

/// A unit by name (`"MINUTE"`) or number, as protojson reads an enum.
fn unit_from_json<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(name) if name == "UNKNOWN" => Ok(0),
        serde_json::Value::String(name) => UNITS
            .iter()
            .find(|u| u.name == name)
            .and_then(|u| override_unit(u.number))
            .map(|u| u.number)
            .ok_or_else(|| D::Error::custom(format!("unknown unit {name:?}"))),
        serde_json::Value::Number(n) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| D::Error::custom("unit must be a name or an enum number")),
        _ => Err(D::Error::custom("unit must be a name such as \"MINUTE\"")),
    }
}

/// A number, or a string holding one (protojson writes 64-bit integers as strings).
fn lenient<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| D::Error::custom("must be a whole number, 0 or more"))
}

fn lenient_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    u32::try_from(lenient(d)?).map_err(|_| D::Error::custom("must fit in 32 bits"))
}

fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    lenient(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn encodes_with_the_protocols_field_numbers() {
        // A request as Envoy sends it, field by field: domain (1), one descriptor (2)
        // with one entry (1: key 1, value 2) and hits_addend (3, a UInt64Value: field 1).
        let wire = [
            0x0a, 2, b'r', b'w', // domain = "rw"
            0x12, 12, // descriptors[0], 12 bytes
            0x0a, 6, 0x0a, 1, b'k', 0x12, 1, b'v', // entries[0] = {k, v}
            0x1a, 2, 0x08, 5, // hits_addend = 5
            0x18, 3, // hits_addend = 3
        ];
        let req = RateLimitRequest::decode(&wire[..]).unwrap();
        assert_eq!(req.domain, "rw");
        assert_eq!(req.hits_addend, 3);
        let d = &req.descriptors[0];
        assert_eq!(
            (d.entries[0].key.as_str(), d.entries[0].value.as_str()),
            ("k", "v")
        );
        assert_eq!(d.hits_addend, Some(5));
        assert_eq!(req.encode_to_vec(), wire);
    }

    #[test]
    fn speaks_protojson() {
        let req: RateLimitRequest = serde_json::from_str(
            r#"{"domain": "rw", "descriptors": [{"entries": [{"key": "k", "value": "v"}],
                "limit": {"requestsPerUnit": 2, "unit": "MINUTE"}, "hitsAddend": "0"}],
                "hits_addend": 2}"#,
        )
        .unwrap();
        let d = &req.descriptors[0];
        assert_eq!(
            d.limit.as_ref().map(|l| (l.requests_per_unit, l.unit)),
            Some((2, 2))
        );
        assert_eq!((d.hits_addend, req.hits_addend), (Some(0), 2));
        assert!(serde_json::from_str::<RateLimitRequest>(r#"{"domian": "x"}"#).is_err());
        assert!(
            serde_json::from_str::<RateLimitRequest>(
                r#"{"descriptors": [{"entries": [], "limit": {"unit": "WEEK"}}]}"#
            )
            .is_err()
        );
        let res = RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            statuses: vec![DescriptorStatus {
                code: Code::OverLimit as i32,
                current_limit: Some(RateLimit {
                    name: "n".into(),
                    requests_per_unit: 2,
                    unit: 2,
                }),
                limit_remaining: 0,
                duration_until_reset: Some(Duration {
                    seconds: 1,
                    nanos: 500_000_000,
                }),
            }],
            response_headers_to_add: vec![],
        };
        assert_eq!(
            serde_json::to_value(&res).unwrap(),
            serde_json::json!({"overallCode": "OVER_LIMIT", "statuses": [{"code": "OVER_LIMIT",
                "currentLimit": {"name": "n", "requestsPerUnit": 2, "unit": "MINUTE"},
                "durationUntilReset": "1.5s"}]})
        );
    }
}
