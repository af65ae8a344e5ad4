-- Version 2 → 3: the indexes on clients.last_request and snapshots.expires_at go. Every
-- write-behind flush rewrites both columns for every client checked since the last one,
-- so each index cost a delete and an insert per client and flush (a quarter of the DB
-- thread's work per client); the retention cleanup (every 10 minutes) that used them scans instead.
-- Run in one transaction by store::sqlite::migrate.
DROP INDEX IF EXISTS clients_by_last_request;
DROP INDEX IF EXISTS snapshots_by_expiry;
