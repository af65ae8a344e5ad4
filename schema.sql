-- ratewarden's schema at its current version. A new database gets this file as it is.
-- Times are INTEGER nanoseconds since the Unix epoch unless named `minute`
-- (minutes since the epoch). The version lives in PRAGMA user_version: this file is the
-- schema of the current version, given to a new database; an older database is brought
-- here by the steps in src/store/migrations/ (see store/sqlite.rs).

-- One row per config. `spec` is the config's writable part as JSON (the serde form of
-- `config::ConfigSpec`), so a new config field needs no column; `endpoint` is repeated
-- as a column for its uniqueness and lookups.
CREATE TABLE IF NOT EXISTS configs (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint   TEXT    NOT NULL UNIQUE,
    spec       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- Every config change, kept until deleted by hand (changes are rare): what the config
-- was and became (a `Config` as JSON, NULL for absent), when, and who made it (`api`,
-- `cluster`, `start`). `version` orders the changes across all configs.
CREATE TABLE IF NOT EXISTS config_history (
    version  INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    endpoint TEXT    NOT NULL,
    action   TEXT    NOT NULL,
    source   TEXT    NOT NULL,
    before   TEXT,
    after    TEXT
);
CREATE INDEX IF NOT EXISTS config_history_by_endpoint ON config_history (endpoint, version);

-- One row per client: its lifetime totals and its limiter state, written together by one
-- upsert. `version` orders snapshots of the same client, so a late write of an older
-- snapshot never overwrites a newer one. A row is rewritten whenever its client's state
-- is, so the table has no secondary index to update on each write: the retention cleanup
-- (every 10 minutes) scans it.
-- `states`: the state per config endpoint, each as endpoint (2-byte big-endian length,
-- UTF-8), algorithm (1-byte length, its name; `several` for a config of several limits,
-- or of one limit not named `default`, whose state holds each limit's name, algorithm
-- and state, see `limiter::States::encode`), state (4-byte big-endian length, the
-- algorithm's compact binary form) and expiry (8-byte big-endian nanoseconds: when the
-- state is as good as fresh). `expires_at`: the latest of them (0 for none), when the
-- row holds nothing a restore needs beyond the totals.
CREATE TABLE IF NOT EXISTS clients (
    client_id        TEXT    PRIMARY KEY,
    total_requests   INTEGER NOT NULL,
    blocked_requests INTEGER NOT NULL,
    last_request     INTEGER NOT NULL,
    version          INTEGER NOT NULL,
    states           BLOB    NOT NULL,
    expires_at       INTEGER NOT NULL
) WITHOUT ROWID;

-- Allowed and blocked counts per minute and endpoint, over all clients (a client's own
-- are its totals in `clients` and its blocked events): grows with minutes and endpoints,
-- not with clients or requests.
CREATE TABLE IF NOT EXISTS request_stats (
    minute    INTEGER NOT NULL,
    endpoint  TEXT    NOT NULL,
    allowed   INTEGER NOT NULL,
    blocked   INTEGER NOT NULL,
    PRIMARY KEY (minute, endpoint)
) WITHOUT ROWID;

-- Notable events: blocked requests (coalesced per client, endpoint and minute, `at` is
-- the minute's start). Config changes are in `config_history` (before version 2, they
-- were here, with `detail` holding the config as JSON).
CREATE TABLE IF NOT EXISTS events (
    id        INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    kind      TEXT    NOT NULL,
    client_id TEXT,
    endpoint  TEXT,
    count     INTEGER NOT NULL DEFAULT 1,
    detail    TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS events_coalesced ON events (kind, client_id, endpoint, at);
CREATE INDEX IF NOT EXISTS events_by_client ON events (client_id, at);
CREATE INDEX IF NOT EXISTS events_by_time ON events (at);
