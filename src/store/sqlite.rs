//! SQLite: the schema, configs, limiter snapshots, statistics, events and retention.
//! Every function takes the connection it works on; none keeps state of its own.

use crate::clock::{NANOS_PER_SEC, Nanos};
use crate::limiter::Algorithm;
use crate::policy::{Config, ConfigSpec, DEFAULT_ENDPOINT};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;
use std::fmt;
use std::sync::Arc;

pub const SCHEMA: &str = include_str!("../../schema.sql");
/// Bumped by every change to `schema.sql` that needs a migration step.
pub const SCHEMA_VERSION: i64 = 1;

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
    // design already accepts for one flush interval.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Only another process (a backup, the sqlite3 shell) can hold the lock; waiting
    // longer would stall the DB actor's queue behind one write.
    conn.busy_timeout(BUSY_TIMEOUT)?;
    migrate(&conn)?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew(version));
    }
    conn.execute_batch(SCHEMA)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(())
}

const CONFIG_COLUMNS: &str = "id, endpoint, requests_per_window, window_seconds, algorithm, \
     burst_limit, refill_rate, is_active, created_at, updated_at";

fn config_from_row(row: &Row) -> rusqlite::Result<Option<Config>> {
    let algorithm: String = row.get(4)?;
    let Some(algorithm) = Algorithm::parse(&algorithm) else {
        log::warn!(
            "config {:?} names an unknown algorithm {algorithm:?}; skipped",
            row.get::<_, String>(1)?
        );
        return Ok(None);
    };
    Ok(Some(Config {
        id: row.get(0)?,
        endpoint: row.get(1)?,
        requests_per_window: row.get(2)?,
        window_seconds: row.get(3)?,
        algorithm,
        burst_limit: row.get(5)?,
        refill_rate: row.get(6)?,
        is_active: row.get(7)?,
        created_at: row.get::<_, i64>(8)? as Nanos,
        updated_at: row.get::<_, i64>(9)? as Nanos,
    }))
}

/// All configs; the default `"*"` is created first if it is missing.
pub fn load_configs(conn: &Connection, now: Nanos) -> Result<Vec<Config>> {
    if get_config(conn, DEFAULT_ENDPOINT)?.is_none() {
        insert_config(conn, &ConfigSpec::default_policy(), now)?;
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

/// What an admin write did, for the events table and the live feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
}

/// `?1` to `?8` of the insert and the update: endpoint, the writable fields, the time.
#[allow(clippy::type_complexity)]
fn spec_params(
    spec: &ConfigSpec,
    now: Nanos,
) -> (
    &str,
    u64,
    u64,
    &'static str,
    Option<u64>,
    Option<f64>,
    bool,
    i64,
) {
    (
        &spec.endpoint,
        spec.requests_per_window,
        spec.window_seconds,
        spec.algorithm.as_str(),
        spec.burst_limit,
        spec.refill_rate,
        spec.is_active,
        now as i64,
    )
}

pub fn insert_config(conn: &Connection, spec: &ConfigSpec, now: Nanos) -> Result<Config> {
    let tx = conn.unchecked_transaction()?;
    tx.execute(
        "INSERT INTO configs (endpoint, requests_per_window, window_seconds, algorithm, \
         burst_limit, refill_rate, is_active, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
        spec_params(spec, now),
    )?;
    let config = get_config(&tx, &spec.endpoint)?
        .ok_or(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))?;
    record_config_event(&tx, ConfigAction::Created, &config, now)?;
    tx.commit()?;
    Ok(config)
}

/// Replaces the writable fields of an existing config; `None` if there is none.
pub fn update_config(conn: &Connection, spec: &ConfigSpec, now: Nanos) -> Result<Option<Config>> {
    let tx = conn.unchecked_transaction()?;
    let changed = tx.execute(
        "UPDATE configs SET requests_per_window = ?2, window_seconds = ?3, algorithm = ?4, \
         burst_limit = ?5, refill_rate = ?6, is_active = ?7, updated_at = ?8 WHERE endpoint = ?1",
        spec_params(spec, now),
    )?;
    if changed == 0 {
        return Ok(None);
    }
    let config = get_config(&tx, &spec.endpoint)?;
    if let Some(c) = &config {
        record_config_event(&tx, ConfigAction::Updated, c, now)?;
    }
    tx.commit()?;
    Ok(config)
}

/// Deletes a config and returns it; `None` if there is none.
pub fn delete_config(conn: &Connection, endpoint: &str, now: Nanos) -> Result<Option<Config>> {
    let tx = conn.unchecked_transaction()?;
    let Some(config) = get_config(&tx, endpoint)? else {
        return Ok(None);
    };
    tx.execute("DELETE FROM configs WHERE endpoint = ?1", [endpoint])?;
    record_config_event(&tx, ConfigAction::Deleted, &config, now)?;
    tx.commit()?;
    Ok(Some(config))
}

/// Makes the configs table equal to `configs` (distributed mode: the shared configs
/// heard from Redis), ids and times included, recording an event for each change.
pub fn replace_configs(conn: &Connection, configs: &[Config], now: Nanos) -> Result<()> {
    let tx = conn.unchecked_transaction()?;
    let mut old = std::collections::HashMap::new();
    for c in load_configs(&tx, now)? {
        old.insert(c.endpoint.clone(), c);
    }
    for c in configs {
        let before = old.remove(&c.endpoint);
        if before.as_ref() == Some(c) {
            continue;
        }
        // Replaces a row with the same id or the same endpoint.
        tx.execute(
            "INSERT OR REPLACE INTO configs (id, endpoint, requests_per_window, window_seconds, \
             algorithm, burst_limit, refill_rate, is_active, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                c.id,
                c.endpoint,
                c.requests_per_window,
                c.window_seconds,
                c.algorithm.as_str(),
                c.burst_limit,
                c.refill_rate,
                c.is_active,
                c.created_at as i64,
                c.updated_at as i64
            ],
        )?;
        let action = match before {
            Some(_) => ConfigAction::Updated,
            None => ConfigAction::Created,
        };
        record_config_event(&tx, action, c, now)?;
    }
    for (endpoint, c) in old {
        tx.execute("DELETE FROM configs WHERE endpoint = ?1", [&endpoint])?;
        record_config_event(&tx, ConfigAction::Deleted, &c, now)?;
    }
    tx.commit()?;
    Ok(())
}

fn record_config_event(
    conn: &Connection,
    action: ConfigAction,
    config: &Config,
    now: Nanos,
) -> Result<()> {
    conn.execute(
        "INSERT INTO events (at, kind, endpoint, detail) VALUES (?1, ?2, ?3, ?4)",
        params![
            now as i64,
            format!("config_{}", action.as_str()),
            config.endpoint,
            serde_json::to_string(config).unwrap_or_default()
        ],
    )?;
    Ok(())
}

/// A client's lifetime counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub total_requests: u64,
    pub blocked_requests: u64,
    /// Nanoseconds since the epoch; 0 for never.
    pub last_request: Nanos,
}

/// The state of one client's limiter for one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSnapshot {
    pub endpoint: Arc<str>,
    pub algorithm: Algorithm,
    pub state: Vec<u8>,
    pub expires_at: Nanos,
}

/// Requests counted for one endpoint in one minute, not yet written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatDelta {
    pub minute: u64,
    pub endpoint: Arc<str>,
    pub allowed: u64,
    pub blocked: u64,
}

/// Everything one flush writes for one client.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSnapshot {
    pub client: Arc<str>,
    /// Orders snapshots of the same client: the limiter counts its checks.
    pub version: u64,
    pub totals: Totals,
    pub endpoints: Vec<EndpointSnapshot>,
    /// Counts since the previous snapshot; added, never overwritten.
    pub stats: Vec<StatDelta>,
}

/// Snapshots waiting to be written, keyed by client, least recently updated first.
pub type PendingSnapshots = hashlink::LinkedHashMap<Arc<str>, ClientSnapshot>;

/// Keeps `new` among the pending snapshots: the newest state wins, statistics add up.
pub fn merge_snapshot(pending: &mut PendingSnapshots, mut new: ClientSnapshot) {
    if let Some(old) = pending.get_mut(&new.client) {
        if old.version > new.version {
            old.stats.append(&mut new.stats);
            return;
        }
        new.stats.append(&mut old.stats);
    }
    // `insert` moves an updated client to the back: when the queue is capped, the clients
    // that went quiet longest are dropped, never the busiest ones' newest state.
    pending.insert(new.client.clone(), new);
}

/// Takes and releases the write lock: fails while the file cannot be written (locked by
/// another process, read-only) without changing anything.
pub fn probe_write(conn: &Connection) -> Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")?;
    Ok(())
}

impl ClientSnapshot {
    /// The state this snapshot restores (its statistics stay with it, to be written).
    pub fn stored(&self) -> StoredClient {
        StoredClient {
            version: self.version,
            totals: self.totals,
            endpoints: self.endpoints.clone(),
        }
    }
}

/// Writes a batch of snapshots in one transaction with prepared statements. A row is
/// only replaced by a snapshot with a higher version; statistics are added up, and
/// blocked counts also become one coalesced event per client, endpoint and minute.
pub fn persist<'a>(
    conn: &Connection,
    batch: impl IntoIterator<Item = &'a ClientSnapshot>,
) -> Result<()> {
    let tx = conn.unchecked_transaction()?;
    {
        let mut client = tx.prepare_cached(
            "INSERT INTO clients (client_id, total_requests, blocked_requests, last_request, version) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (client_id) DO UPDATE SET \
             total_requests = excluded.total_requests, blocked_requests = excluded.blocked_requests, \
             last_request = excluded.last_request, version = excluded.version \
             WHERE excluded.version > clients.version",
        )?;
        let mut snapshot = tx.prepare_cached(
            "INSERT INTO snapshots (client_id, endpoint, algorithm, state, expires_at, version) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (client_id, endpoint) DO UPDATE SET \
             algorithm = excluded.algorithm, state = excluded.state, \
             expires_at = excluded.expires_at, version = excluded.version \
             WHERE excluded.version > snapshots.version",
        )?;
        let mut stat = tx.prepare_cached(
            "INSERT INTO request_stats (minute, client_id, endpoint, allowed, blocked) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (minute, client_id, endpoint) DO UPDATE SET \
             allowed = allowed + excluded.allowed, blocked = blocked + excluded.blocked",
        )?;
        let mut blocked = tx.prepare_cached(
            "INSERT INTO events (at, kind, client_id, endpoint, count) \
             VALUES (?1, 'rate_limit_exceeded', ?2, ?3, ?4) \
             ON CONFLICT (kind, client_id, endpoint, at) DO UPDATE SET count = count + excluded.count",
        )?;
        for s in batch {
            let id: &str = &s.client;
            client.execute(params![
                id,
                s.totals.total_requests,
                s.totals.blocked_requests,
                s.totals.last_request as i64,
                s.version
            ])?;
            for e in &s.endpoints {
                snapshot.execute(params![
                    id,
                    &*e.endpoint,
                    e.algorithm.as_str(),
                    e.state,
                    e.expires_at.min(i64::MAX as u64) as i64,
                    s.version
                ])?;
            }
            for d in &s.stats {
                stat.execute(params![d.minute, id, &*d.endpoint, d.allowed, d.blocked])?;
                if d.blocked > 0 {
                    let at = d.minute * 60 * NANOS_PER_SEC;
                    blocked.execute(params![at as i64, id, &*d.endpoint, d.blocked])?;
                }
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// A client as it was last persisted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredClient {
    pub version: u64,
    pub totals: Totals,
    /// Only states that have not expired by `now`.
    pub endpoints: Vec<EndpointSnapshot>,
}

pub fn load_client(conn: &Connection, client: &str, now: Nanos) -> Result<Option<StoredClient>> {
    let Some((version, totals)) = conn
        .prepare_cached(
            "SELECT version, total_requests, blocked_requests, last_request FROM clients WHERE client_id = ?1",
        )?
        .query_row([client], |r| {
            Ok((
                r.get::<_, u64>(0)?,
                Totals {
                    total_requests: r.get(1)?,
                    blocked_requests: r.get(2)?,
                    last_request: r.get::<_, i64>(3)? as Nanos,
                },
            ))
        })
        .optional()?
    else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT endpoint, algorithm, state, expires_at FROM snapshots \
         WHERE client_id = ?1 AND expires_at > ?2",
    )?;
    let rows = stmt.query_map(params![client, now as i64], |r| {
        let algorithm: String = r.get(1)?;
        let Some(algorithm) = Algorithm::parse(&algorithm) else {
            return Ok(None);
        };
        Ok(Some(EndpointSnapshot {
            endpoint: Arc::from(r.get::<_, String>(0)?),
            algorithm,
            state: r.get(2)?,
            expires_at: r.get::<_, i64>(3)? as Nanos,
        }))
    })?;
    let mut endpoints = Vec::new();
    for row in rows {
        endpoints.extend(row?);
    }
    Ok(Some(StoredClient {
        version,
        totals,
        endpoints,
    }))
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
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    pub snapshots: usize,
    pub clients: usize,
}

/// Deletes statistics and events older than `retention`, expired snapshots, and clients
/// with neither a request within the retention nor a snapshot left.
pub fn cleanup(conn: &Connection, now: Nanos, retention: Nanos) -> Result<Cleaned> {
    let cutoff = now.saturating_sub(retention);
    let tx = conn.unchecked_transaction()?;
    let cleaned = Cleaned {
        stats: tx.execute(
            "DELETE FROM request_stats WHERE minute < ?1",
            [cutoff / (60 * NANOS_PER_SEC)],
        )?,
        events: tx.execute("DELETE FROM events WHERE at < ?1", [cutoff as i64])?,
        snapshots: tx.execute("DELETE FROM snapshots WHERE expires_at <= ?1", [now as i64])?,
        clients: tx.execute(
            "DELETE FROM clients WHERE last_request < ?1 AND NOT EXISTS \
             (SELECT 1 FROM snapshots s WHERE s.client_id = clients.client_id)",
            [cutoff as i64],
        )?,
    };
    tx.commit()?;
    Ok(cleaned)
}

#[cfg(test)]
mod tests {
    use super::*;

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
                algorithm: Algorithm::FixedWindow,
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

    #[test]
    fn creates_the_default_config_once_and_detects_conflicts() {
        let (_dir, conn) = temp_db();
        assert_eq!(load_configs(&conn, 1).unwrap().len(), 1);
        assert_eq!(load_configs(&conn, 2).unwrap().len(), 1);
        let mut spec = ConfigSpec::default_policy();
        spec.endpoint = "/a".into();
        insert_config(&conn, &spec, 3).unwrap();
        assert!(matches!(
            insert_config(&conn, &spec, 4),
            Err(StoreError::Conflict)
        ));
        spec.requests_per_window = 7;
        let updated = update_config(&conn, &spec, 5).unwrap().unwrap();
        assert_eq!(
            (
                updated.requests_per_window,
                updated.created_at,
                updated.updated_at
            ),
            (7, 3, 5)
        );
        assert!(delete_config(&conn, "/a", 6).unwrap().is_some());
        assert!(delete_config(&conn, "/a", 7).unwrap().is_none());
        spec.endpoint = "/b".into();
        assert!(update_config(&conn, &spec, 8).unwrap().is_none());
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
                snapshots: 2,
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
