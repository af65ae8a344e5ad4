-- Version 3 → 4: one row per client, and statistics per minute and endpoint.
-- A flush wrote three rows per client it found changed: its totals (`clients`), its
-- state per endpoint (`snapshots`) and its minute of statistics (`request_stats`, per
-- client). Now it writes one: `clients` holds the states too, in one blob (the format is
-- in schema.sql, built here from the `snapshots` rows), and statistics are summed over
-- all clients per minute and endpoint (nothing read them per client: the dashboard sums
-- them per minute).
-- Run in one transaction by store::sqlite::migrate.
CREATE TABLE clients_v4 (
    client_id        TEXT    PRIMARY KEY,
    total_requests   INTEGER NOT NULL,
    blocked_requests INTEGER NOT NULL,
    last_request     INTEGER NOT NULL,
    version          INTEGER NOT NULL,
    states           BLOB    NOT NULL,
    expires_at       INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO clients_v4
    SELECT c.client_id, c.total_requests, c.blocked_requests, c.last_request, c.version,
           coalesce((SELECT unhex(group_concat(
                         printf('%04x', length(CAST(s.endpoint AS BLOB))) || hex(s.endpoint) ||
                         printf('%02x', length(CAST(s.algorithm AS BLOB))) || hex(s.algorithm) ||
                         printf('%08x', length(s.state)) || hex(s.state) ||
                         printf('%016x', s.expires_at), ''))
                     FROM snapshots s WHERE s.client_id = c.client_id), x''),
           coalesce((SELECT max(s.expires_at) FROM snapshots s
                     WHERE s.client_id = c.client_id), 0)
    FROM clients c;
DROP TABLE snapshots;
DROP TABLE clients;
ALTER TABLE clients_v4 RENAME TO clients;

CREATE TABLE request_stats_v4 (
    minute    INTEGER NOT NULL,
    endpoint  TEXT    NOT NULL,
    allowed   INTEGER NOT NULL,
    blocked   INTEGER NOT NULL,
    PRIMARY KEY (minute, endpoint)
) WITHOUT ROWID;
INSERT INTO request_stats_v4 (minute, endpoint, allowed, blocked)
    SELECT minute, endpoint, SUM(allowed), SUM(blocked) FROM request_stats
    GROUP BY minute, endpoint;
DROP TABLE request_stats;
ALTER TABLE request_stats_v4 RENAME TO request_stats;
