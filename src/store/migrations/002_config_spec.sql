-- Version 1 → 2: a config's fields move into one JSON column, `spec`, so that adding a
-- field needs no migration; config changes get their own history table (before/after).
-- Run in one transaction by store::sqlite::migrate.

-- Kept across the table rebuild, so that ids of deleted configs are never handed out again.
CREATE TEMP TABLE config_id_high_water AS
    SELECT seq FROM sqlite_sequence WHERE name = 'configs';

CREATE TABLE configs_v2 (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint   TEXT    NOT NULL UNIQUE,
    spec       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
INSERT INTO configs_v2 (id, endpoint, spec, created_at, updated_at)
    SELECT id, endpoint,
           json_object(
               'endpoint', endpoint,
               'requests_per_window', requests_per_window,
               'window_seconds', window_seconds,
               'algorithm', algorithm,
               'burst_limit', burst_limit,
               'refill_rate', refill_rate,
               'is_active', json(CASE WHEN is_active THEN 'true' ELSE 'false' END)),
           created_at, updated_at
    FROM configs;
DROP TABLE configs;
ALTER TABLE configs_v2 RENAME TO configs;
UPDATE sqlite_sequence
    SET seq = max(seq, coalesce((SELECT seq FROM config_id_high_water), 0))
    WHERE name = 'configs';
DROP TABLE config_id_high_water;

CREATE TABLE config_history (
    version  INTEGER PRIMARY KEY AUTOINCREMENT,
    at       INTEGER NOT NULL,
    endpoint TEXT    NOT NULL,
    action   TEXT    NOT NULL,
    source   TEXT    NOT NULL,
    before   TEXT,
    after    TEXT
);
CREATE INDEX config_history_by_endpoint ON config_history (endpoint, version);
