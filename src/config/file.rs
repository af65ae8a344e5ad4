//! Configs as code: `--config-file ratewarden.toml` declares every config. The file is
//! read and validated as a whole; [`plan`] turns it into the changes that make the live
//! configs equal to it, which the writer applies as one change. An invalid file changes
//! nothing and is reported with its line and field.
//!
//! TOML rather than YAML: it is what Rust projects already write (Cargo.toml), it has
//! comments, integers and floats that cannot be mistaken for each other, no indentation
//! rules, and no implicit typing (YAML's `no` is a boolean, `1e3` a string or a float
//! depending on the parser).
//!
//! ```toml
//! [[config]]
//! endpoint = "/api/*"
//! requests_per_window = 100
//! window_seconds = 60
//! algorithm = "sliding_window"
//! overrides = [{ client = "partner-*", requests_per_window = 1000 }]
//! ```
//!
//! Each `[[config]]` takes exactly the fields of `POST /admin/configs`. The default
//! `"*"` cannot be deleted: a file that does not declare it leaves it as it is.

use super::writer::Edit;
use super::{Change, Config, ConfigSpec, DEFAULT_ENDPOINT, diff};
use crate::clock::Nanos;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashSet;
use std::fmt;
use std::path::Path;

/// The file's shape: a list of `[[config]]` tables and nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    config: Vec<toml::Spanned<toml::Table>>,
}

/// Why a config file was refused, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct FileError {
    pub path: String,
    /// 1-based; the line of the entry for a rule a field broke.
    pub line: Option<usize>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)?;
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ", field {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Reads and validates the whole file; the first error refuses it.
pub fn load(path: &Path) -> Result<Vec<ConfigSpec>, FileError> {
    load_all(path).map_err(first)
}

/// Reads and validates the whole file as [`load`] does, reporting every error it finds
/// (each entry's first), in the order of the file: what `ratewarden check-config` prints.
pub fn load_all(path: &Path) -> Result<Vec<ConfigSpec>, Vec<FileError>> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![FileError {
            path: shown.clone(),
            line: None,
            field: None,
            message: format!("cannot be read ({e})"),
        }]
    })?;
    parse_all(&text).map_err(|mut errors| {
        for e in &mut errors {
            e.path.clone_from(&shown);
        }
        errors
    })
}

/// The configs a file's text declares, each validated as `POST /admin/configs` would,
/// with no endpoint twice.
pub fn parse(text: &str) -> Result<Vec<ConfigSpec>, FileError> {
    parse_all(text).map_err(first)
}

/// [`parse`], reporting every entry's error rather than the first of the file's.
pub fn parse_all(text: &str) -> Result<Vec<ConfigSpec>, Vec<FileError>> {
    let error = |line, field, message| FileError {
        path: String::new(),
        line,
        field,
        message,
    };
    let file: File = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        vec![error(line, None, e.message().trim().to_owned())]
    })?;
    // An empty file is more likely a save caught half-way than a wish to delete every
    // config: refused. (Declaring only "*" deletes the others.)
    if file.config.is_empty() {
        return Err(vec![error(
            None,
            None,
            "declares no [[config]]; declare at least \"*\" to remove every other config"
                .to_owned(),
        )]);
    }
    let mut seen = HashSet::new();
    let mut specs = Vec::with_capacity(file.config.len());
    let mut errors = Vec::new();
    for entry in file.config {
        let start = entry.span().start;
        let line = Some(line_of(text, start));
        // A field's error points at the field's own line when the entry writes it.
        let error_at = |field: Option<String>, message| {
            let at = field.as_deref().and_then(|f| field_line(text, start, f));
            error(at.or(line), field, message)
        };
        // JSON has no infinity or NaN: they would become null, a default, unnoticed.
        if let Some(field) = non_finite(entry.get_ref()) {
            errors.push(error_at(Some(field), "must be a finite number".to_owned()));
            continue;
        }
        let object = match serde_json::to_value(entry.get_ref()) {
            Ok(Value::Object(map)) => map,
            _ => {
                errors.push(error_at(None, "is not a table of fields".to_owned()));
                continue;
            }
        };
        // As written, so that an entry refused for another field still counts when a
        // later one declares the same endpoint.
        let written = object
            .get("endpoint")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let spec = match ConfigSpec::from_create(object) {
            Ok(spec) => spec,
            Err(e) => {
                errors.push(error_at(Some(e.field), e.message));
                seen.extend(written);
                continue;
            }
        };
        if !seen.insert(spec.endpoint.clone()) {
            errors.push(error_at(
                Some("endpoint".to_owned()),
                format!("{:?} is declared twice", spec.endpoint),
            ));
            continue;
        }
        specs.push(spec);
    }
    if errors.is_empty() {
        Ok(specs)
    } else {
        Err(errors)
    }
}

/// The error a reload reports: the first in the file. `parse_all` never returns an
/// empty list of errors, so there is always one.
fn first(mut errors: Vec<FileError>) -> FileError {
    errors.swap_remove(0)
}

/// The first field (`overrides[0].refill_rate` for a nested one) holding an infinite or
/// NaN float.
fn non_finite(table: &toml::Table) -> Option<String> {
    fn walk(value: &toml::Value, path: String) -> Option<String> {
        match value {
            toml::Value::Float(f) if !f.is_finite() => Some(path),
            toml::Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, v)| walk(v, format!("{path}[{i}]"))),
            toml::Value::Table(t) => t.iter().find_map(|(k, v)| walk(v, format!("{path}.{k}"))),
            _ => None,
        }
    }
    table.iter().find_map(|(k, v)| walk(v, k.clone()))
}

/// The 1-based line on which the entry that starts at byte `start` writes the top-level
/// key of `field` (`overrides` for `overrides[0].refill_rate`): the entry's own lines
/// run until the next table header. `None` when it does not write it (a missing field).
fn field_line(text: &str, start: usize, field: &str) -> Option<usize> {
    let key = field.split(['.', '[']).next()?;
    let quoted = format!("\"{key}\"");
    let first = line_of(text, start);
    text.get(start..)?
        .lines()
        .enumerate()
        .skip(1)
        .take_while(|(_, l)| !l.trim_start().starts_with('['))
        .find(|(_, l)| {
            let l = l.trim_start();
            let l = l
                .strip_prefix(key)
                .or_else(|| l.strip_prefix(quoted.as_str()));
            l.is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|(i, _)| first + i)
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The changes that make `current` equal to `desired` (by the rules of [`Edit::Put`] and
/// [`Edit::Delete`]); configs already equal are left out, and `"*"` is never deleted.
pub fn plan(current: &[Config], desired: &[ConfigSpec], now: Nanos) -> Vec<Change> {
    let mut wanted: Vec<Config> = Vec::with_capacity(desired.len() + 1);
    for spec in desired {
        let before = current.iter().find(|c| c.endpoint() == spec.endpoint);
        match before {
            Some(b) if b.spec == *spec => wanted.push(b.clone()),
            _ => wanted.extend(Edit::Put(spec.clone()).apply(before, 0, now).ok().flatten()),
        }
    }
    if !desired.iter().any(|s| s.endpoint == DEFAULT_ENDPOINT) {
        wanted.extend(
            current
                .iter()
                .find(|c| c.endpoint() == DEFAULT_ENDPOINT)
                .cloned(),
        );
    }
    diff(current, &wanted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigAction;

    #[test]
    fn reads_every_field_of_a_complete_file() {
        let specs = parse(
            r#"
# The default, tightened.
[[config]]
endpoint = "*"
requests_per_window = 50
window_seconds = 60

[[config]]
endpoint = "/api/*"
requests_per_window = 10
window_seconds = 1
algorithm = "token_bucket"
burst_limit = 20
refill_rate = 12.5
mode = "shadow"
is_active = false
overrides = [{ client = "partner-*", requests_per_window = 100, window_seconds = 2 }]
"#,
        )
        .unwrap();
        assert_eq!(specs.len(), 2);
        let api = &specs[1];
        assert_eq!(
            (api.burst_limit, api.refill_rate, api.is_active),
            (Some(20), Some(12.5), false)
        );
        assert_eq!(api.mode, crate::config::Enforcement::Shadow);
        assert_eq!(api.overrides[0].window_seconds, Some(2));
        // A calendar quota needs no window_seconds.
        let monthly = parse(
            "[[config]]\nendpoint = \"/m\"\nrequests_per_window = 9\nalgorithm = \"fixed_window\"\ncalendar = \"month\"\n",
        )
        .unwrap();
        assert_eq!(
            (monthly[0].calendar, monthly[0].window_seconds),
            (Some(crate::limiter::Calendar::Month), Some(2_592_000))
        );
        // Several limits: a `[[config.limits]]` table each, after the config's fields.
        let layered = parse(
            r#"
[[config]]
endpoint = "/api/*"
overrides = [{ client = "partner-*", limit = "daily", requests_per_window = 100000 }]

[[config.limits]]
name = "burst"
algorithm = "token_bucket"
requests_per_window = 10
window_seconds = 1
burst_limit = 20

[[config.limits]]
name = "daily"
requests_per_window = 10000
window_seconds = 86400

[[config.limits]]
name = "backend"
requests_per_window = 500
window_seconds = 1
key = "global"
"#,
        )
        .unwrap();
        let names: Vec<&str> = layered[0].limits.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["burst", "daily", "backend"]);
        assert_eq!(layered[0].limits[2].key, Some(crate::config::Key::Global));
        assert_eq!(layered[0].limits[0].burst_limit, Some(20));
        assert_eq!(layered[0].overrides[0].limit.as_deref(), Some("daily"));
        // Units and where a cost comes from, as in the admin API.
        let metered = parse(
            r#"
[[config]]
endpoint = "/llm/*"

[[config.limits]]
name = "tokens"
unit = "tokens"
requests_per_window = 100000
window_seconds = 3600
cost_from = "response_header:X-Usage-Tokens"
"#,
        )
        .unwrap();
        assert_eq!(metered[0].limits[0].unit, crate::limiter::Unit::Tokens);
        let named = metered[0].limits[0].named();
        assert_eq!(named.cost_header.as_deref(), Some("x-usage-tokens"));
        let e = parse("[[config]]\nendpoint = \"/a\"\n[[config.limits]]\nname = \"a\"\nrequests_per_window = 1\nwindow_seconds = 1\nunit = \"pages\"\n")
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("limits[0].unit"));
        let e = parse("[[config]]\nendpoint = \"/a\"\n[[config.limits]]\nname = \"a\"\nrequests_per_window = 1\nwindow_seconds = 0\n")
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("limits[0].window_seconds"));
        assert!(parse("").is_err(), "an empty file deletes nothing");
        // A descriptor rule: no endpoint, the server writes it.
        let rules = parse(
            r#"
[[config]]
domain = "messaging"
descriptor = [{ key = "message_type", value = "marketing" }, { key = "to_number" }]
requests_per_window = 5
window_seconds = 86400

[[config]]
domain = "messaging"
descriptor = [{ key = "message_type", value = "marketing" }, { key = "to_number" }]
requests_per_window = 6
window_seconds = 86400
"#,
        );
        let e = rules.unwrap_err();
        assert_eq!(
            (e.line, e.field.as_deref()),
            (Some(8), Some("endpoint")),
            "{e:?}"
        );
        let rules = parse(
            "[[config]]\ndomain = \"m\"\ndescriptor = [{ key = \"k\" }]\nrequests_per_window = 1\nwindow_seconds = 1\n",
        )
        .unwrap();
        assert_eq!(rules[0].endpoint, "m: k");
    }

    #[test]
    fn names_the_line_and_field_of_what_is_wrong() {
        let cases = [
            (
                "[[config]]\nendpoint = \"/a\"\nrequests_per_window = 1\nwindow_seconds = 1\n\n[[config]]\nendpoint = \"/b\"\nrequests_per_window = 0\nwindow_seconds = 1\n",
                Some(8),
                Some("requests_per_window"),
            ),
            (
                "[[config]]\nendpoint = \"/a\"\nwindow_seconds = 1\n",
                Some(1),
                Some("requests_per_window"),
            ),
            (
                "[[config]]\nendpoint = \"/a\"\nrequests_per_window = 1\nwindow_seconds = 1\ncolour = 2\n",
                Some(5),
                Some("colour"),
            ),
            (
                "[[config]]\nendpoint = \"/a\"\nrequests_per_window = 1\nwindow_seconds = 1\nalgorithm = \"leaky\"\n",
                Some(5),
                Some("algorithm"),
            ),
            (
                "[[config]]\nendpoint = \"/a\"\nrequests_per_window = 1\nwindow_seconds = 1\n[[config]]\nendpoint = \"/a\"\nrequests_per_window = 2\nwindow_seconds = 1\n",
                Some(6),
                Some("endpoint"),
            ),
            (
                "[[config]]\nendpoint = \"/a\"\nrequests_per_window = \n",
                Some(3),
                None,
            ),
            ("[[configs]]\nendpoint = \"/a\"\n", Some(1), None),
            (
                "[[config]]\nendpoint = \"/a\"\nrequests_per_window = 1\nwindow_seconds = 1\nrefill_rate = inf\n",
                Some(5),
                Some("refill_rate"),
            ),
            (
                "[[config]]\nendpoint = \"/a\"\nrequests_per_window = 1\nwindow_seconds = 1\noverrides = [{ client = \"a\", requests_per_window = 1, refill_rate = nan }]\n",
                Some(5),
                Some("overrides[0].refill_rate"),
            ),
            ("# nothing\n", None, None),
            (
                "[[config]]\nendpoint = \"/a\"\nrequests_per_window = 1\nwindow_seconds = 1\nupdated_at = 1979-05-27T07:32:00Z\n",
                Some(5),
                Some("updated_at"),
            ),
        ];
        for (text, line, field) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!((e.line, e.field.as_deref()), (line, field), "{text}: {e}");
        }
    }

    #[test]
    fn a_missing_field_is_reported_at_its_entry_and_a_quoted_key_at_its_line() {
        let missing = "# a comment\n[[config]]\nendpoint = \"/a\"\nwindow_seconds = 1\n\n[[config]]\nrequests_per_window = 1\n";
        let found: Vec<_> = parse_all(missing)
            .unwrap_err()
            .iter()
            .map(|e| (e.line, e.field.clone()))
            .collect();
        assert_eq!(
            found,
            [
                (Some(2), Some("requests_per_window".to_owned())),
                (Some(6), Some("endpoint".to_owned())),
            ]
        );
        let quoted = "[[config]]\n\"endpoint\" = \"/a\"\nrequests_per_window = 1\n  \"window_seconds\" = 0\n";
        let e = parse(quoted).unwrap_err();
        assert_eq!(
            (e.line, e.field.as_deref()),
            (Some(4), Some("window_seconds"))
        );
    }

    #[test]
    fn reports_every_entry_that_is_wrong_in_the_order_of_the_file() {
        let text = "[[config]]\nendpoint = \"/a\"\nrequests_per_window = 0\nwindow_seconds = 1\n\n\
                    [[config]]\nendpoint = \"/ok\"\nrequests_per_window = 1\nwindow_seconds = 1\n\n\
                    [[config]]\nendpoint = \"/c\"\nrequests_per_window = 1\nwindow_seconds = 1\nalgorithm = \"leaky\"\n\n\
                    [[config]]\nendpoint = \"/ok\"\nrequests_per_window = 2\nwindow_seconds = 1\n\n\
                    [[config]]\nendpoint = \"/a\"\nrequests_per_window = 3\nwindow_seconds = 1\n";
        let errors = parse_all(text).unwrap_err();
        let found: Vec<_> = errors
            .iter()
            .map(|e| (e.line, e.field.as_deref()))
            .collect();
        assert_eq!(
            found,
            [
                (Some(3), Some("requests_per_window")),
                (Some(15), Some("algorithm")),
                (Some(18), Some("endpoint")),
                // Twice, though its first declaration was refused for another field.
                (Some(23), Some("endpoint")),
            ]
        );
        // A reload refuses the file with the first of them.
        assert_eq!(parse(text).unwrap_err(), errors[0]);
    }

    #[test]
    fn plans_creates_updates_and_deletes_but_never_the_default() {
        let config = |endpoint: &str, limit| Config {
            id: 3,
            spec: ConfigSpec {
                endpoint: endpoint.to_owned(),
                requests_per_window: Some(limit),
                ..ConfigSpec::default_policy()
            },
            created_at: 1,
            updated_at: 1,
        };
        let current = vec![
            config("*", 100),
            config("/same", 1),
            config("/up", 1),
            config("/gone", 1),
        ];
        let desired = vec![
            config("/same", 1).spec,
            config("/up", 2).spec,
            config("/new", 3).spec,
        ];
        let changes = plan(&current, &desired, 9);
        let seen: Vec<(ConfigAction, &str)> =
            changes.iter().map(|c| (c.action(), c.endpoint())).collect();
        assert_eq!(
            seen,
            [
                (ConfigAction::Updated, "/up"),
                (ConfigAction::Created, "/new"),
                (ConfigAction::Deleted, "/gone"),
            ]
        );
        let up = changes[0].after.as_ref().unwrap();
        assert_eq!((up.id, up.created_at, up.updated_at), (3, 1, 9));
        assert!(plan(&current, &[], 9).iter().all(|c| c.endpoint() != "*"));
    }
}
