-- ratewarden's one schema. Applied at every start; every statement is idempotent.
-- Times are INTEGER nanoseconds since the Unix epoch unless named `minute`
-- (minutes since the epoch). The version lives in PRAGMA user_version (see store/sqlite.rs).

CREATE TABLE IF NOT EXISTS configs (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint            TEXT    NOT NULL UNIQUE,
    requests_per_window INTEGER NOT NULL,
    window_seconds      INTEGER NOT NULL,
    algorithm           TEXT    NOT NULL,
    burst_limit         INTEGER,
    refill_rate         REAL,
    is_active           INTEGER NOT NULL DEFAULT 1,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);

-- One row per client: lifetime totals. `version` orders snapshots of the same client,
-- so a late write of an older snapshot never overwrites a newer one.
CREATE TABLE IF NOT EXISTS clients (
    client_id        TEXT    PRIMARY KEY,
    total_requests   INTEGER NOT NULL,
    blocked_requests INTEGER NOT NULL,
    last_request     INTEGER NOT NULL,
    version          INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS clients_by_last_request ON clients (last_request);

-- Limiter state per (client, config endpoint), in the algorithm's compact binary form.
-- `expires_at`: when the state is as good as fresh; the row can go after that.
CREATE TABLE IF NOT EXISTS snapshots (
    client_id  TEXT    NOT NULL,
    endpoint   TEXT    NOT NULL,
    algorithm  TEXT    NOT NULL,
    state      BLOB    NOT NULL,
    expires_at INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    PRIMARY KEY (client_id, endpoint)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS snapshots_by_expiry ON snapshots (expires_at);

-- Allowed and blocked counts per minute, client and endpoint: grows with clients and
-- minutes, not with requests.
CREATE TABLE IF NOT EXISTS request_stats (
    minute    INTEGER NOT NULL,
    client_id TEXT    NOT NULL,
    endpoint  TEXT    NOT NULL,
    allowed   INTEGER NOT NULL,
    blocked   INTEGER NOT NULL,
    PRIMARY KEY (minute, client_id, endpoint)
) WITHOUT ROWID;

-- Notable events: blocked requests (coalesced per client, endpoint and minute, `at` is
-- the minute's start) and config changes (`detail` holds the config as JSON).
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
