//! SQLite: the schema, configs, limiter snapshots, statistics, events and retention.
//! Every function takes the connection it works on; none keeps state of its own.

use crate::clock::{NANOS_PER_SEC, Nanos};
use crate::config::{Change, Config, ConfigSpec, DEFAULT_ENDPOINT, Source, diff};
use crate::snapshot::{ClientSnapshot, EndpointSnapshot, StoredClient, Totals};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;

pub const SCHEMA: &str = include_str!("../../schema.sql");
/// Bumped by every change to `schema.sql` that needs a migration step.
pub const SCHEMA_VERSION: i64 = 4;

/// Where the database lives, from `--database` / `DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Memory,
    File(String),
}

impl DatabaseUrl {
    /// Accepts a path, `sqlite://path`, `sqlite:path` or `:memory:`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let path = s
            .strip_prefix("sqlite://")
            .or_else(|| s.strip_prefix("sqlite:"))
            .unwrap_or(s);
        match path {
            "" => Err("the database path is empty".to_owned()),
            ":memory:" => Ok(DatabaseUrl::Memory),
            _ if s.contains("://") && !s.starts_with("sqlite://") => Err(format!(
                "unsupported database URL {s:?}: use a path, sqlite://path or :memory:"
            )),
            p => Ok(DatabaseUrl::File(p.to_owned())),
        }
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Memory => f.write_str(":memory:"),
            DatabaseUrl::File(p) => f.write_str(p),
        }
    }
}

#[derive(Debug)]
pub enum StoreError {
    /// A config with that endpoint exists already.
    Conflict,
    Sqlite(rusqlite::Error),
    /// The file was written by a newer ratewarden.
    TooNew(i64),
    /// The operation was not attempted: the database did not get to it in time.
    Unavailable(&'static str),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Conflict => f.write_str("a config for that endpoint exists already"),
            StoreError::Sqlite(e) => write!(f, "sqlite: {e}"),
            StoreError::Unavailable(why) => f.write_str(why),
            StoreError::TooNew(v) => write!(
                f,
                "the database has schema version {v}, newer than this ratewarden ({SCHEMA_VERSION})"
            ),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
            {
                StoreError::Conflict
            }
            e => StoreError::Sqlite(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How long a statement waits for a lock held by another connection.
pub const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Opens (creating if needed) the database, in WAL mode, with the schema applied.
pub fn open(url: &DatabaseUrl) -> Result<Connection> {
    let conn = match url {
        DatabaseUrl::Memory => Connection::open_in_memory()?,
        DatabaseUrl::File(path) => Connection::open(path)?,
    };
    // WAL: readers never block the writer; NORMAL sync is durable across process
    // crashes (only an OS crash can lose the last transactions), which the write-behind
    // design already accepts for a client write interval.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Only another process (a backup, the sqlite3 shell) can hold the lock; waiting
    // longer would stall the DB actor's queue behind one write.
    conn.busy_timeout(BUSY_TIMEOUT)?;
    migrate(&conn)?;
    Ok(conn)
}

/// The schema steps, in order: `MIGRATIONS[i]` takes a database from version `i + 1` to
/// `i + 2`. Each runs in one transaction with the version bump, so a failed step leaves
/// the file as it was. A new database gets `schema.sql` (the schema after every step)
/// directly.
const MIGRATIONS: [&str; 3] = [
    include_str!("migrations/002_config_spec.sql"),
    include_str!("migrations/003_no_write_indexes.sql"),
    include_str!("migrations/004_one_row_per_client.sql"),
];

/// Brings the file to [`SCHEMA_VERSION`]: creates the schema in a new database, or runs
/// the steps from the file's version on.
fn migrate(conn: &Connection) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew(version));
    }
    let has_tables: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'configs')",
        [],
        |r| r.get(0),
    )?;
    if !has_tables {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(SCHEMA)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
        return Ok(());
    }
    // Version 1 was the first schema; a file with tables and no version predates the
    // version stamp and has that schema.
    for (from, step) in
        (version.max(1)..SCHEMA_VERSION).zip(&MIGRATIONS[(version.max(1) - 1) as usize..])
    {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", from + 1)?;
        tx.commit()?;
        log::info!(
            "database migrated from schema version {from} to {}",
            from + 1
        );
    }
    Ok(())
}

fn config_from_row(row: &Row) -> rusqlite::Result<Option<Config>> {
    let spec: String = row.get(1)?;
    let spec = match ConfigSpec::from_stored(&spec) {
        Ok(spec) => spec,
        Err(why) => {
            log::warn!("stored config {spec} is not one this server accepts ({why}); skipped");
            return Ok(None);
        }
    };
    Ok(Some(Config {
        id: row.get(0)?,
        spec,
        created_at: row.get::<_, i64>(2)? as Nanos,
        updated_at: row.get::<_, i64>(3)? as Nanos,
    }))
}

const CONFIG_COLUMNS: &str = "id, spec, created_at, updated_at";

/// All configs; the default `"*"` is created first if it is missing.
pub fn load_configs(conn: &Connection, now: Nanos) -> Result<Vec<Config>> {
    if get_config(conn, DEFAULT_ENDPOINT)?.is_none() {
        let default = Config {
            id: 0,
            spec: ConfigSpec::default_policy(),
            created_at: now,
            updated_at: now,
        };
        let created = Change {
            before: None,
            after: Some(default),
        };
        write_configs(conn, vec![created], Source::Start, now)?;
    }
    let mut stmt = conn.prepare(&format!("SELECT {CONFIG_COLUMNS} FROM configs"))?;
    let rows = stmt.query_map([], config_from_row)?;
    let mut configs = Vec::new();
    for row in rows {
        configs.extend(row?);
    }
    Ok(configs)
}

pub fn get_config(conn: &Connection, endpoint: &str) -> Result<Option<Config>> {
    Ok(conn
        .query_row(
            &format!("SELECT {CONFIG_COLUMNS} FROM configs WHERE endpoint = ?1"),
            [endpoint],
            config_from_row,
        )
        .optional()?
        .flatten())
}

/// Makes `changes` in one transaction and records each in the history; a created config
/// without an id (0) gets the next one. Answers the changes as stored.
pub fn write_configs(
    conn: &Connection,
    mut changes: Vec<Change>,
    source: Source,
    now: Nanos,
) -> Result<Vec<Change>> {
    let tx = conn.unchecked_transaction()?;
    for change in &mut changes {
        write_change(&tx, change, source, now)?;
    }
    tx.commit()?;
    Ok(changes)
}

/// One change and its history row, inside the caller's transaction.
fn write_change(tx: &Connection, change: &mut Change, source: Source, now: Nanos) -> Result<()> {
    let endpoint = change.endpoint().to_owned();
    match &mut change.after {
        Some(c) if c.id == 0 => {
            tx.execute(
                "INSERT INTO configs (endpoint, spec, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    endpoint,
                    serde_json::to_string(&c.spec).unwrap_or_default(),
                    c.created_at as i64,
                    c.updated_at as i64
                ],
            )?;
            c.id = tx.last_insert_rowid();
        }
        Some(c) => {
            // Replaces the row with the same id or the same endpoint (in distributed
            // mode ids come from Redis, and may have moved between endpoints).
            tx.execute(
                "INSERT OR REPLACE INTO configs (id, endpoint, spec, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    c.id,
                    endpoint,
                    serde_json::to_string(&c.spec).unwrap_or_default(),
                    c.created_at as i64,
                    c.updated_at as i64
                ],
            )?;
        }
        None => {
            tx.execute("DELETE FROM configs WHERE endpoint = ?1", [&endpoint])?;
        }
    }
    tx.execute(
        "INSERT INTO config_history (at, endpoint, action, source, before, after) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            now as i64,
            endpoint,
            change.action().as_str(),
            source.as_str(),
            change.before.as_ref().map(Config::to_json),
            change.after.as_ref().map(Config::to_json)
        ],
    )?;
    Ok(())
}

/// One recorded config change.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    /// Orders every change of every config; what a rollback names.
    pub version: i64,
    pub at: Nanos,
    pub endpoint: String,
    pub action: String,
    pub source: String,
    pub before: Option<Config>,
    pub after: Option<Config>,
}

/// The latest `limit` changes, newest first: of one config's endpoint, or of all; or the
/// one change numbered `version`.
pub fn config_history(
    conn: &Connection,
    endpoint: Option<&str>,
    version: Option<i64>,
    limit: usize,
) -> Result<Vec<HistoryEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT version, at, endpoint, action, source, before, after FROM config_history \
         WHERE (?1 IS NULL OR endpoint = ?1) AND (?2 IS NULL OR version = ?2) \
         ORDER BY version DESC LIMIT ?3",
    )?;
    let parse = |json: Option<String>| json.and_then(|j| Config::parse(&j).ok());
    let rows = stmt.query_map(params![endpoint, version, limit as i64], |r| {
        Ok(HistoryEntry {
            version: r.get(0)?,
            at: r.get::<_, i64>(1)? as Nanos,
            endpoint: r.get(2)?,
            action: r.get(3)?,
            source: r.get(4)?,
            before: parse(r.get(5)?),
            after: parse(r.get(6)?),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Makes the stored configs equal to `configs` (distributed mode: the shared ones), ids
/// and times included, in one transaction, recording each change in the history: as
/// `mine`'s source for the endpoints this instance wrote, as the cluster's for the others.
pub fn replace_configs(
    conn: &Connection,
    configs: &[Config],
    now: Nanos,
    mine: &[(String, Source)],
) -> Result<()> {
    let stored = load_configs(conn, now)?;
    let tx = conn.unchecked_transaction()?;
    for mut change in diff(&stored, configs) {
        let source = (mine.iter())
            .find(|(endpoint, _)| endpoint == change.endpoint())
            .map_or(Source::Cluster, |(_, source)| *source);
        write_change(&tx, &mut change, source, now)?;
    }
    tx.commit()?;
    Ok(())
}

/// Takes and releases the write lock: fails while the file cannot be written (locked by
/// another process, read-only) without changing anything.
pub fn probe_write(conn: &Connection) -> Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")?;
    Ok(())
}

/// Writes a batch of snapshots in one transaction with prepared statements. A row is
/// only replaced by a snapshot with a higher version; statistics are summed over the
/// batch's clients and added to their minute's, and blocked counts also become one
/// coalesced event per client, endpoint and minute.
pub fn persist<'a>(
    conn: &Connection,
    batch: impl IntoIterator<Item = &'a ClientSnapshot>,
) -> Result<()> {
    let tx = conn.unchecked_transaction()?;
    {
        let mut client = tx.prepare_cached(
            "INSERT INTO clients (client_id, total_requests, blocked_requests, last_request, \
             version, states, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (client_id) DO UPDATE SET \
             total_requests = excluded.total_requests, blocked_requests = excluded.blocked_requests, \
             last_request = excluded.last_request, version = excluded.version, \
             states = excluded.states, expires_at = excluded.expires_at \
             WHERE excluded.version > clients.version",
        )?;
        let mut stat = tx.prepare_cached(
            "INSERT INTO request_stats (minute, endpoint, allowed, blocked) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (minute, endpoint) DO UPDATE SET \
             allowed = allowed + excluded.allowed, blocked = blocked + excluded.blocked",
        )?;
        let mut blocked = tx.prepare_cached(
            "INSERT INTO events (at, kind, client_id, endpoint, count) \
             VALUES (?1, 'rate_limit_exceeded', ?2, ?3, ?4) \
             ON CONFLICT (kind, client_id, endpoint, at) DO UPDATE SET count = count + excluded.count",
        )?;
        // Per minute and endpoint: a few rows per batch, however many clients it holds.
        let mut stats: HashMap<(u64, &str), (u64, u64), hashlink::DefaultHashBuilder> =
            HashMap::default();
        let mut states = Vec::new();
        for s in batch {
            let id: &str = &s.client;
            states.clear();
            let expires_at = EndpointSnapshot::encode_all(&s.endpoints, &mut states);
            client.execute(params![
                id,
                s.totals.total_requests,
                s.totals.blocked_requests,
                s.totals.last_request as i64,
                s.version,
                states,
                expires_at as i64,
            ])?;
            for d in &s.stats {
                let sum = stats.entry((d.minute, &d.endpoint)).or_default();
                *sum = (sum.0 + d.allowed, sum.1 + d.blocked);
                if d.blocked > 0 {
                    let at = d.minute * 60 * NANOS_PER_SEC;
                    blocked.execute(params![at as i64, id, &*d.endpoint, d.blocked])?;
                }
            }
        }
        for ((minute, endpoint), (allowed, blocked)) in stats {
            stat.execute(params![minute, endpoint, allowed, blocked])?;
        }
    }
    tx.commit()?;
    Ok(())
}

pub fn load_client(conn: &Connection, client: &str, now: Nanos) -> Result<Option<StoredClient>> {
    let row = conn
        .prepare_cached(
            "SELECT version, total_requests, blocked_requests, last_request, states \
             FROM clients WHERE client_id = ?1",
        )?
        .query_row([client], |r| {
            let states = r.get_ref(4)?.as_blob()?;
            let endpoints = EndpointSnapshot::decode_all(states, now).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    4,
                    rusqlite::types::Type::Blob,
                    format!("client {client:?}: its stored states are not in the stored form")
                        .into(),
                )
            })?;
            Ok(StoredClient {
                version: r.get(0)?,
                totals: Totals {
                    total_requests: r.get(1)?,
                    blocked_requests: r.get(2)?,
                    last_request: r.get::<_, i64>(3)? as Nanos,
                },
                endpoints,
            })
        })
        .optional()?;
    Ok(row)
}

/// Calls `f` with every client that has a row, so the registry knows whose state to
/// restore without asking the database about clients it has never seen.
pub fn for_each_client(conn: &Connection, mut f: impl FnMut(&str)) -> Result<()> {
    let mut stmt = conn.prepare("SELECT client_id FROM clients")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        f(row.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?);
    }
    Ok(())
}

/// Allowed and blocked totals per minute since `since_minute`, over all clients.
pub fn minute_totals(conn: &Connection, since_minute: u64) -> Result<Vec<(u64, u64, u64)>> {
    let mut stmt = conn.prepare(
        "SELECT minute, SUM(allowed), SUM(blocked) FROM request_stats \
         WHERE minute >= ?1 GROUP BY minute",
    )?;
    let rows = stmt.query_map([since_minute], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// One row of the events table, as `/admin/stats/{client_id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EventRow {
    #[serde(rename = "type")]
    pub kind: String,
    pub endpoint: Option<String>,
    pub count: u64,
    pub timestamp: String,
}

pub fn client_events(conn: &Connection, client: &str, limit: usize) -> Result<Vec<EventRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT kind, endpoint, count, at FROM events WHERE client_id = ?1 ORDER BY at DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![client, limit as i64], |r| {
        Ok(EventRow {
            kind: r.get(0)?,
            endpoint: r.get(1)?,
            count: r.get(2)?,
            timestamp: crate::clock::rfc3339(r.get::<_, i64>(3)? as Nanos),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// What a retention run deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cleaned {
    pub stats: usize,
    pub events: usize,
    pub clients: usize,
}

/// Folds the write-ahead log into the database file and empties it, so that the file
/// alone holds everything (what a copy of it after a clean stop needs). A database
/// that is not in WAL mode (`:memory:`) has nothing to fold.
pub fn checkpoint(conn: &Connection) -> Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(())
}

/// Deletes statistics and events older than `retention`, and clients with neither a
/// request within the retention nor a state that has not expired.
pub fn cleanup(conn: &Connection, now: Nanos, retention: Nanos) -> Result<Cleaned> {
    let cutoff = now.saturating_sub(retention);
    let tx = conn.unchecked_transaction()?;
    let cleaned = Cleaned {
        stats: tx.execute(
            "DELETE FROM request_stats WHERE minute < ?1",
            [cutoff / (60 * NANOS_PER_SEC)],
        )?,
        events: tx.execute("DELETE FROM events WHERE at < ?1", [cutoff as i64])?,
        clients: tx.execute(
            "DELETE FROM clients WHERE last_request < ?1 AND expires_at <= ?2",
            [cutoff as i64, now as i64],
        )?,
    };
    tx.commit()?;
    Ok(cleaned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::Algorithm;
    use crate::snapshot::StatDelta;

    const MIN: Nanos = 60 * NANOS_PER_SEC;
    const DAY: Nanos = 24 * 60 * MIN;

    fn temp_db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::File(dir.path().join("t.db").to_string_lossy().into_owned());
        let conn = open(&url).unwrap();
        (dir, conn)
    }

    fn snapshot(client: &str, version: u64, at: Nanos, blocked: u64) -> ClientSnapshot {
        ClientSnapshot {
            client: client.into(),
            version,
            totals: Totals {
                total_requests: version,
                blocked_requests: blocked,
                last_request: at,
            },
            endpoints: vec![EndpointSnapshot {
                endpoint: "*".into(),
                algorithm: Some(Algorithm::FixedWindow),
                state: vec![version as u8],
                expires_at: at + MIN,
            }],
            stats: vec![StatDelta {
                minute: at / MIN,
                endpoint: "*".into(),
                allowed: 1,
                blocked,
            }],
        }
    }

    #[test]
    fn parses_database_urls() {
        assert_eq!(DatabaseUrl::parse(":memory:"), Ok(DatabaseUrl::Memory));
        assert_eq!(
            DatabaseUrl::parse("sqlite://:memory:"),
            Ok(DatabaseUrl::Memory)
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///tmp/x.db"),
            Ok(DatabaseUrl::File("/tmp/x.db".into()))
        );
        assert_eq!(
            DatabaseUrl::parse("data/r.db"),
            Ok(DatabaseUrl::File("data/r.db".into()))
        );
        assert!(DatabaseUrl::parse("postgres://x").is_err());
        assert!(DatabaseUrl::parse("").is_err());
    }

    #[test]
    fn applies_the_schema_idempotently_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::File(dir.path().join("t.db").to_string_lossy().into_owned());
        drop(open(&url).unwrap());
        let conn = open(&url).unwrap();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        assert!(matches!(open(&url), Err(StoreError::TooNew(_))));
    }

    fn change(before: Option<&Config>, spec: Option<ConfigSpec>, now: Nanos) -> Change {
        let after = spec.map(|spec| Config {
            id: before.map_or(0, |b| b.id),
            spec,
            created_at: before.map_or(now, |b| b.created_at),
            updated_at: now,
        });
        Change {
            before: before.cloned(),
            after,
        }
    }

    fn history(conn: &Connection) -> Vec<(String, String, String, bool, bool)> {
        let mut stmt = conn
            .prepare(
                "SELECT endpoint, action, source, before IS NOT NULL, after IS NOT NULL \
                 FROM config_history ORDER BY version",
            )
            .unwrap();
        stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    #[test]
    fn writes_configs_with_their_history_and_detects_conflicts() {
        let (_dir, conn) = temp_db();
        assert_eq!(load_configs(&conn, 1).unwrap().len(), 1);
        assert_eq!(load_configs(&conn, 2).unwrap().len(), 1);
        let mut spec = ConfigSpec::default_policy();
        spec.endpoint = "/a".into();
        let created = write_configs(
            &conn,
            vec![change(None, Some(spec.clone()), 3)],
            Source::Api,
            3,
        )
        .unwrap();
        let a = created[0].after.clone().unwrap();
        assert!(a.id > 1, "the default has id 1, a new config the next");
        assert!(matches!(
            write_configs(
                &conn,
                vec![change(None, Some(spec.clone()), 4)],
                Source::Api,
                4
            ),
            Err(StoreError::Conflict)
        ));
        spec.requests_per_window = Some(7);
        write_configs(&conn, vec![change(Some(&a), Some(spec), 5)], Source::Api, 5).unwrap();
        let updated = get_config(&conn, "/a").unwrap().unwrap();
        assert_eq!(
            (
                updated.id,
                updated.spec.requests_per_window,
                updated.created_at,
                updated.updated_at
            ),
            (a.id, Some(7), 3, 5)
        );
        write_configs(&conn, vec![change(Some(&updated), None, 6)], Source::Api, 6).unwrap();
        assert!(get_config(&conn, "/a").unwrap().is_none());
        let h = |e: &str, a: &str, s: &str, b, f| (e.to_owned(), a.to_owned(), s.to_owned(), b, f);
        assert_eq!(
            history(&conn),
            vec![
                h("*", "created", "start", false, true),
                h("/a", "created", "api", false, true),
                h("/a", "updated", "api", true, true),
                h("/a", "deleted", "api", true, false),
            ]
        );
        // Ids are never handed out twice, even after a delete.
        let mut b = ConfigSpec::default_policy();
        b.endpoint = "/b".into();
        let b = write_configs(&conn, vec![change(None, Some(b), 7)], Source::Api, 7).unwrap();
        assert!(b[0].after.as_ref().unwrap().id > a.id);
    }

    #[test]
    fn replacing_configs_writes_only_the_differences() {
        let (_dir, conn) = temp_db();
        let mut shared = load_configs(&conn, 1).unwrap();
        let mut spec = ConfigSpec::default_policy();
        spec.endpoint = "/s".into();
        shared.push(Config {
            id: 40,
            spec,
            created_at: 2,
            updated_at: 2,
        });
        replace_configs(&conn, &shared, 3, &[("/s".to_owned(), Source::Rollback)]).unwrap();
        replace_configs(&conn, &shared, 4, &[]).unwrap();
        let mut stored = load_configs(&conn, 5).unwrap();
        stored.sort_by_key(|c| c.id);
        assert_eq!(stored, shared);
        assert_eq!(history(&conn).len(), 2, "the default, then /s once");
        assert_eq!(
            history(&conn)[1].2,
            "rollback",
            "this instance's own change"
        );
        shared[1].spec.requests_per_window = Some(9);
        shared[1].updated_at = 5;
        replace_configs(&conn, &shared, 6, &[("/elsewhere".to_owned(), Source::Api)]).unwrap();
        assert_eq!(history(&conn)[2].2, "cluster", "another instance's");
    }

    /// A database made by version 1's schema (kept in `testdata/`), with configs of every
    /// kind, a client and a snapshot, as that version wrote them.
    fn version_1_database(path: &std::path::Path) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(include_str!("testdata/schema_v1.sql"))
            .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch(
            "INSERT INTO configs (endpoint, requests_per_window, window_seconds, algorithm, \
                burst_limit, refill_rate, is_active, created_at, updated_at) VALUES \
             ('*', 100, 3600, 'sliding_window', NULL, NULL, 1, 10, 10), \
             ('/api/*', 5, 60, 'token_bucket', 8, 0.25, 0, 11, 12), \
             ('/gone', 1, 1, 'fixed_window', NULL, NULL, 1, 13, 13), \
             ('/fixed', 3, 9, 'fixed_window', NULL, NULL, 1, 14, 15); \
             DELETE FROM configs WHERE endpoint = '/gone'; \
             INSERT INTO clients VALUES ('c1', 9, 2, 99, 4); \
             INSERT INTO snapshots VALUES ('c1', '/api/*', 'token_bucket', x'0102', 9999999999, 4); \
             INSERT INTO request_stats VALUES (5, 'c1', '/api/*', 7, 2), \
                (5, 'c2', '/api/*', 1, 0), (6, 'c2', '/api/*', 3, 1);",
        )
        .unwrap();
    }

    #[test]
    fn what_every_flush_rewrites_has_no_secondary_index_to_update() {
        // (A migrated file has exactly this schema: see the migration test.)
        let (_dir, conn) = temp_db();
        let indexes: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL \
                 AND tbl_name IN ('clients', 'snapshots')",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(indexes, Vec::<String>::new());
    }

    #[test]
    fn migrates_a_version_1_database_keeping_every_config_and_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        version_1_database(&path);
        let url = DatabaseUrl::File(path.to_string_lossy().into_owned());
        let conn = open(&url).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let mut configs = load_configs(&conn, 100).unwrap();
        configs.sort_by_key(|c| c.id);
        let spec = |endpoint: &str, limit, window, algorithm, burst, rate, active| ConfigSpec {
            endpoint: endpoint.to_owned(),
            requests_per_window: Some(limit),
            window_seconds: Some(window),
            algorithm: Some(algorithm),
            burst_limit: burst,
            refill_rate: rate,
            is_active: active,
            ..ConfigSpec::default_policy()
        };
        assert_eq!(
            configs,
            vec![
                Config {
                    id: 1,
                    spec: spec("*", 100, 3600, Algorithm::SlidingWindow, None, None, true),
                    created_at: 10,
                    updated_at: 10
                },
                Config {
                    id: 2,
                    spec: spec(
                        "/api/*",
                        5,
                        60,
                        Algorithm::TokenBucket,
                        Some(8),
                        Some(0.25),
                        false
                    ),
                    created_at: 11,
                    updated_at: 12
                },
                Config {
                    id: 4,
                    spec: spec("/fixed", 3, 9, Algorithm::FixedWindow, None, None, true),
                    created_at: 14,
                    updated_at: 15
                },
            ]
        );
        let client = load_client(&conn, "c1", 100).unwrap().unwrap();
        assert_eq!((client.version, client.totals.total_requests), (4, 9));
        assert_eq!(client.endpoints.len(), 1);
        assert_eq!(client.endpoints[0].state, vec![1, 2]);
        // Statistics per client became statistics per minute and endpoint.
        assert_eq!(minute_totals(&conn, 0).unwrap(), vec![(5, 8, 2), (6, 3, 1)]);
        // The id of the config deleted before the migration is not handed out again.
        let mut new = ConfigSpec::default_policy();
        new.endpoint = "/new".into();
        let made =
            write_configs(&conn, vec![change(None, Some(new), 101)], Source::Api, 101).unwrap();
        assert_eq!(made[0].after.as_ref().unwrap().id, 5);
        // Migrated, the file has exactly the schema a new database gets.
        drop(conn);
        let fresh_dir = tempfile::tempdir().unwrap();
        let fresh = DatabaseUrl::File(
            fresh_dir
                .path()
                .join("new.db")
                .to_string_lossy()
                .into_owned(),
        );
        let shape = |conn: &Connection| -> Vec<(String, String, String)> {
            let mut stmt = conn
                .prepare(
                    "SELECT m.name, p.name, p.type || ' ' || p.\"notnull\" || ' ' || p.pk \
                     FROM sqlite_master m, pragma_table_info(m.name) p \
                     WHERE m.type = 'table' ORDER BY m.name, p.cid",
                )
                .unwrap();
            let mut shape: Vec<_> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let mut idx = conn
                .prepare("SELECT name, tbl_name, '' FROM sqlite_master WHERE type = 'index' ORDER BY name")
                .unwrap();
            shape.extend(
                idx.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .unwrap()
                    .map(Result::unwrap),
            );
            shape
        };
        assert_eq!(shape(&open(&url).unwrap()), shape(&open(&fresh).unwrap()));
    }

    #[test]
    fn a_failed_migration_step_leaves_the_file_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        version_1_database(&path);
        // A name the step needs is taken: the step fails half-way.
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE config_history (x)")
            .unwrap();
        let url = DatabaseUrl::File(path.to_string_lossy().into_owned());
        assert!(open(&url).is_err());
        let conn = Connection::open(&path).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, 1);
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM configs WHERE requests_per_window > 0",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 3, "the version 1 table, untouched");
    }

    #[test]
    fn an_older_snapshot_never_overwrites_a_newer_one() {
        let (_dir, conn) = temp_db();
        let t = 1_000 * DAY;
        persist(&conn, &[snapshot("c", 5, t, 0)]).unwrap();
        persist(&conn, &[snapshot("c", 3, t, 0)]).unwrap();
        let stored = load_client(&conn, "c", t).unwrap().unwrap();
        assert_eq!(stored.version, 5);
        assert_eq!(stored.endpoints[0].state, vec![5]);
        // Statistics are deltas: both batches count.
        assert_eq!(minute_totals(&conn, 0).unwrap(), vec![(t / MIN, 2, 0)]);
        // An expired state is not restored.
        assert!(
            load_client(&conn, "c", t + MIN)
                .unwrap()
                .unwrap()
                .endpoints
                .is_empty()
        );
        assert_eq!(load_client(&conn, "nobody", t).unwrap(), None);
    }

    #[test]
    fn a_batch_adds_one_row_of_statistics_per_minute_and_endpoint_whatever_its_clients() {
        let (_dir, conn) = temp_db();
        let t = 1_000 * DAY;
        let batch: Vec<_> = (0..50)
            .map(|i| snapshot(&format!("c{i}"), 1, t, i % 2))
            .collect();
        persist(&conn, &batch).unwrap();
        persist(&conn, &[snapshot("c0", 2, t + 1, 1)]).unwrap();
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM request_stats", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
        assert_eq!(minute_totals(&conn, 0).unwrap(), vec![(t / MIN, 51, 26)]);
    }

    #[test]
    fn coalesces_blocked_requests_into_one_event_per_minute() {
        let (_dir, conn) = temp_db();
        let t = 1_000 * DAY;
        persist(&conn, &[snapshot("c", 1, t, 2), snapshot("c", 2, t + 1, 3)]).unwrap();
        let events = client_events(&conn, "c", 10).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].kind.as_str(), events[0].count),
            ("rate_limit_exceeded", 5)
        );
    }

    #[test]
    fn retention_cleanup_deletes_old_statistics_and_events() {
        let (_dir, conn) = temp_db();
        let now = 1_000 * DAY;
        persist(&conn, &[snapshot("old", 1, now - 8 * DAY, 1)]).unwrap();
        persist(&conn, &[snapshot("new", 1, now - DAY, 1)]).unwrap();
        let cleaned = cleanup(&conn, now, 7 * DAY).unwrap();
        assert_eq!(
            cleaned,
            Cleaned {
                stats: 1,
                events: 1,
                clients: 1
            }
        );
        assert_eq!(minute_totals(&conn, 0).unwrap().len(), 1);
        assert!(client_events(&conn, "old", 10).unwrap().is_empty());
        assert_eq!(client_events(&conn, "new", 10).unwrap().len(), 1);
        let mut clients = Vec::new();
        for_each_client(&conn, |c| clients.push(c.to_owned())).unwrap();
        assert_eq!(clients, vec!["new".to_owned()]);
    }
}
