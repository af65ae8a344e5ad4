//! The DB actor: the one owner of the SQLite connection, on its own thread
//! (`SyncArbiter` with one thread, so messages are handled in the order they were sent:
//! a snapshot written on eviction is always visible to the restore that follows it).
//!
//! Messages:
//! - [`Persist`]: queue a batch of client snapshots and write everything queued in one
//!   transaction (write-behind; kept and retried while the database fails).
//! - [`LoadClient`]: read a client's last snapshot, to restore an evicted limiter.
//! - [`WriteConfigs`]: config changes (from [`crate::config::writer`]), durable before
//!   they take effect, and never attempted once their [`WriteTicket`] expired or the
//!   writer gave up; [`ReplaceConfigs`]: the copy of the shared configs.
//! - [`ClientEvents`]: recent events of one client.
//! - [`ConfigHistory`]: recorded config changes.
//! - [`Cleanup`]: delete what is older than the retention.
//! - [`Ping`]: the health check.

use crate::clock::Nanos;
use crate::config::{Change, Config, Source};
use crate::metrics::{DbOperation, Metrics, RestoreSource};
use crate::snapshot::{ClientSnapshot, PendingSnapshots, StoredClient, merge_snapshot};
use crate::store::sqlite::{self, Cleaned, DatabaseUrl, EventRow, HistoryEntry, StoreError};
use actix::prelude::*;
use rusqlite::Connection;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Whether the database is failing, for `/health`: set by a failed write or read,
/// cleared by the next write that succeeds.
#[derive(Default)]
pub struct DbStatus {
    failure: Mutex<Option<String>>,
}

impl DbStatus {
    /// Why the database is failing, if it is.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Records an outcome; returns whether that changed the status.
    fn record(&self, failure: Option<String>) -> bool {
        let Ok(mut current) = self.failure.lock() else {
            return false;
        };
        let changed = current.is_some() != failure.is_some();
        *current = failure;
        changed
    }
}

pub struct Db {
    conn: Connection,
    /// The write-behind queue: snapshots not yet committed (they stay here while the
    /// database fails, newest state per client, oldest client first).
    pending: PendingSnapshots,
    max_pending: usize,
    metrics: Arc<Metrics>,
    status: Arc<DbStatus>,
    /// While failing, no write is tried before this: batches arriving meanwhile are only
    /// queued, so a stalled file cannot pile up one busy timeout per flush interval in
    /// front of reads and admin writes.
    retry_at: Option<Instant>,
}

/// How long the DB actor waits after a failed write before it tries again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

impl Actor for Db {
    type Context = SyncContext<Self>;
}

impl Db {
    /// Starts the actor on its thread with a connection opened (and migrated) by the
    /// caller, so that start-up errors are reported before anything runs.
    pub fn start(
        conn: Connection,
        url: DatabaseUrl,
        max_pending: usize,
        metrics: Arc<Metrics>,
        status: Arc<DbStatus>,
    ) -> Addr<Db> {
        let first = Mutex::new(Some(conn));
        SyncArbiter::start(1, move || {
            super::name_thread("rw-db");
            let conn = first
                .lock()
                .ok()
                .and_then(|mut c| c.take())
                .map(Ok)
                .unwrap_or_else(|| sqlite::open(&url));
            // Only reached again if the actor's thread died; the file opened a moment
            // ago, so failing now means the machine lost it: nothing sensible is left.
            let conn = conn.unwrap_or_else(|e| panic!("reopening the database {url}: {e}"));
            Db {
                conn,
                pending: PendingSnapshots::new(),
                max_pending,
                metrics: metrics.clone(),
                status: status.clone(),
                retry_at: None,
            }
        })
    }

    /// Notes a failed operation: counted, and `/health` reports it.
    fn failed(&self, operation: DbOperation, e: &StoreError) {
        self.metrics.db_error(operation);
        if self.status.record(Some(e.to_string())) {
            log::warn!("the database is failing ({e}); decisions go on from memory");
        }
    }

    fn recovered(&self) {
        if self.status.record(None) {
            log::info!("the database works again");
        }
    }

    /// Drops the oldest pending snapshots beyond `max_pending` (counted and logged), and
    /// publishes the queue's depth.
    fn enforce_cap(&mut self) {
        let excess = self.pending.len().saturating_sub(self.max_pending);
        let mut dropped = Vec::new();
        for _ in 0..excess {
            dropped.extend(self.pending.pop_front().map(|(client, _)| client));
        }
        if !dropped.is_empty() {
            // One line per cap, naming the first clients concerned.
            let named: Vec<&str> = dropped.iter().take(5).map(|c| &**c).collect();
            log::warn!(
                "write-behind queue full: {} client snapshots dropped (least recently \
                 updated first: {named:?}{})",
                dropped.len(),
                if dropped.len() > named.len() {
                    ", ..."
                } else {
                    ""
                }
            );
        }
        self.metrics.write_queue_dropped.inc_by(excess as u64);
        self.metrics
            .write_queue_depth
            .set(self.pending.len() as i64);
    }

    /// Writes a batch directly, with nothing pending; queues it if that fails.
    fn write_batch(&mut self, mut batch: Vec<ClientSnapshot>) -> Result<usize, String> {
        // In key order, each upsert finds its B-tree pages where the last one left them.
        batch.sort_unstable_by(|a, b| a.client.cmp(&b.client));
        let result = self.persist(&batch, batch.len());
        if result.is_err() {
            for snapshot in batch {
                merge_snapshot(&mut self.pending, snapshot);
            }
        }
        self.settle(result)
    }

    /// Writes every pending snapshot in one transaction (while failing, at most once per
    /// [`RETRY_EVERY`] unless `force`d by a flush someone waits for). On failure they
    /// stay pending; beyond `max_pending`, the least recently updated are dropped.
    fn write_pending(&mut self, force: bool) -> Result<usize, String> {
        let n = self.pending.len();
        if !force && self.retry_at.is_some_and(|at| Instant::now() < at) {
            self.enforce_cap();
            return Err(format!(
                "the database is failing; {} client snapshots wait",
                self.pending.len()
            ));
        }
        let result = if n == 0 {
            // Nothing to write: while failing, probe whether writing works again.
            match self.status.failure() {
                Some(_) => sqlite::probe_write(&self.conn).map(|()| 0),
                None => Ok(0),
            }
        } else {
            self.persist(self.pending.values(), n)
                .inspect(|_| self.pending.clear())
        };
        self.settle(result)
    }

    /// Writes `n` snapshots in one transaction, timed and counted.
    fn persist<'a>(
        &self,
        batch: impl IntoIterator<Item = &'a ClientSnapshot>,
        n: usize,
    ) -> Result<usize, StoreError> {
        let started = Instant::now();
        log::debug!("writing {n} client snapshots");
        sqlite::persist(&self.conn, batch)?;
        Metrics::observe(&self.metrics.flush_seconds, started.elapsed());
        self.metrics.flush_batch_size.observe(n as f64);
        log::debug!("persisted {n} client snapshots");
        Ok(n)
    }

    /// Records a write's outcome: on failure, the pending snapshots wait (beyond
    /// `max_pending`, the least recently updated are dropped) and no write is tried
    /// before [`RETRY_EVERY`].
    fn settle(&mut self, result: Result<usize, StoreError>) -> Result<usize, String> {
        let result = match result {
            Ok(n) => {
                self.retry_at = None;
                self.recovered();
                Ok(n)
            }
            Err(e) => {
                self.retry_at = Some(Instant::now() + RETRY_EVERY);
                self.failed(DbOperation::persist, &e);
                self.enforce_cap();
                Err(format!(
                    "persisting client snapshots failed ({e}); {} kept for the next try",
                    self.pending.len()
                ))
            }
        };
        self.metrics
            .write_queue_depth
            .set(self.pending.len() as i64);
        result
    }

    /// Refuses an admin write the caller has given up on (or is about to: its deadline
    /// passed), so that a 503 it answered can never turn into a change later.
    fn in_time(&self, ticket: &WriteTicket) -> Result<(), StoreError> {
        if Instant::now() >= ticket.deadline || !ticket.claim(TAKEN) {
            let e = StoreError::Unavailable("the database did not get to the change in time");
            self.failed(DbOperation::config_write, &e);
            return Err(e);
        }
        Ok(())
    }

    fn config_write<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match &result {
            Err(StoreError::Conflict) | Ok(_) => {}
            Err(e) => self.failed(DbOperation::config_write, e),
        }
        result
    }
}

const OPEN: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

/// Who decides an admin write's fate: the DB actor claims it before writing, the admin
/// request claims it when it gives up at the deadline. Whoever claims first wins, so a
/// write is either done and reported, or refused and answered 503, never both.
#[derive(Clone)]
pub struct WriteTicket {
    pub deadline: Instant,
    state: Arc<AtomicU8>,
}

impl WriteTicket {
    pub fn new(deadline: Instant) -> Self {
        Self {
            deadline,
            state: Arc::new(AtomicU8::new(OPEN)),
        }
    }

    fn claim(&self, by: u8) -> bool {
        self.state
            .compare_exchange(OPEN, by, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The request gives up; `false` if the DB actor already started the write (then
    /// its answer must be awaited).
    pub fn abandon(&self) -> bool {
        self.claim(ABANDONED)
    }
}

/// Queues a batch and writes everything pending; `done` (if any) learns how it went.
/// Sent with `do_send`, so it is queued at once even when the mailbox is busy, keeping
/// the write-before-restore order. An empty batch still retries what is pending.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Persist {
    pub batch: Vec<ClientSnapshot>,
    pub done: Option<oneshot::Sender<Result<usize, String>>>,
}

impl Handler<Persist> for Db {
    type Result = ();
    fn handle(&mut self, msg: Persist, _: &mut SyncContext<Self>) {
        let force = msg.done.is_some();
        // The common case, nothing queued: the batch is written as it came (each client
        // once: a shard sends one snapshot per client), and queued only if that fails.
        // An empty batch goes the other way: while failing, it probes the file.
        let direct = !msg.batch.is_empty() && self.pending.is_empty() && self.retry_at.is_none();
        let result = match direct {
            true => self.write_batch(msg.batch),
            false => {
                for snapshot in msg.batch {
                    merge_snapshot(&mut self.pending, snapshot);
                }
                // A flush someone waits for (shutdown, tests) always tries.
                self.write_pending(force)
            }
        };
        if let Err(e) = &result
            && self
                .retry_at
                .is_some_and(|at| at > Instant::now() + RETRY_EVERY / 2)
        {
            // Logged once per attempt, not once per queued batch.
            log::error!("{e}");
        }
        if let Some(done) = msg.done {
            let _ = done.send(result);
        }
    }
}

/// Reads a client's last persisted state (unexpired endpoint states only).
#[derive(Message)]
#[rtype(result = "Result<Option<StoredClient>, StoreError>")]
pub struct LoadClient {
    pub client: Arc<str>,
    pub now: Nanos,
}

impl Handler<LoadClient> for Db {
    type Result = Result<Option<StoredClient>, StoreError>;
    fn handle(&mut self, msg: LoadClient, _: &mut SyncContext<Self>) -> Self::Result {
        if let Some(pending) = self.pending.get(&msg.client) {
            self.metrics.restored(RestoreSource::memory);
            return Ok(Some(pending.stored()));
        }
        let loaded = sqlite::load_client(&self.conn, &msg.client, msg.now);
        match &loaded {
            Ok(Some(_)) => self.metrics.restored(RestoreSource::database),
            Ok(None) => {}
            Err(e) => self.failed(DbOperation::restore, e),
        }
        loaded
    }
}

/// Make these config changes, with their history, in one transaction; answers them as
/// stored (a new config with its id).
#[derive(Message)]
#[rtype(result = "Result<Vec<Change>, StoreError>")]
pub struct WriteConfigs {
    pub changes: Vec<Change>,
    pub source: Source,
    pub now: Nanos,
    /// Not attempted after its deadline, nor once the writer gave up.
    pub ticket: WriteTicket,
}

impl Handler<WriteConfigs> for Db {
    type Result = Result<Vec<Change>, StoreError>;
    fn handle(&mut self, msg: WriteConfigs, _: &mut SyncContext<Self>) -> Self::Result {
        self.in_time(&msg.ticket)?;
        self.config_write(sqlite::write_configs(
            &self.conn,
            msg.changes,
            msg.source,
            msg.now,
        ))
    }
}

/// Make the stored configs equal to these (distributed mode: the shared ones).
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct ReplaceConfigs {
    pub configs: Vec<Config>,
    pub now: Nanos,
    /// The endpoints this instance wrote, and who asked: recorded as such in the history.
    pub mine: Vec<(String, Source)>,
}

impl Handler<ReplaceConfigs> for Db {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, msg: ReplaceConfigs, _: &mut SyncContext<Self>) -> Self::Result {
        self.config_write(sqlite::replace_configs(
            &self.conn,
            &msg.configs,
            msg.now,
            &msg.mine,
        ))
    }
}

/// Recorded config changes, newest first (see [`sqlite::config_history`]).
#[derive(Message)]
#[rtype(result = "Result<Vec<HistoryEntry>, StoreError>")]
pub struct ConfigHistory {
    pub endpoint: Option<String>,
    pub version: Option<i64>,
    pub limit: usize,
}

impl Handler<ConfigHistory> for Db {
    type Result = Result<Vec<HistoryEntry>, StoreError>;
    fn handle(&mut self, msg: ConfigHistory, _: &mut SyncContext<Self>) -> Self::Result {
        sqlite::config_history(&self.conn, msg.endpoint.as_deref(), msg.version, msg.limit)
    }
}

#[derive(Message)]
#[rtype(result = "Result<Vec<EventRow>, StoreError>")]
pub struct ClientEvents {
    pub client: Arc<str>,
    pub limit: usize,
}

impl Handler<ClientEvents> for Db {
    type Result = Result<Vec<EventRow>, StoreError>;
    fn handle(&mut self, msg: ClientEvents, _: &mut SyncContext<Self>) -> Self::Result {
        sqlite::client_events(&self.conn, &msg.client, msg.limit)
    }
}

#[derive(Message)]
#[rtype(result = "Result<Cleaned, StoreError>")]
pub struct Cleanup {
    pub now: Nanos,
    pub retention: Nanos,
}

impl Handler<Cleanup> for Db {
    type Result = Result<Cleaned, StoreError>;
    fn handle(&mut self, msg: Cleanup, _: &mut SyncContext<Self>) -> Self::Result {
        sqlite::cleanup(&self.conn, msg.now, msg.retention)
    }
}

/// Folds the write-ahead log into the database file, after the final flush of a stop.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct Checkpoint;

impl Handler<Checkpoint> for Db {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, _: Checkpoint, _: &mut SyncContext<Self>) -> Self::Result {
        sqlite::checkpoint(&self.conn)
    }
}

#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct Ping;

impl Handler<Ping> for Db {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, _: Ping, _: &mut SyncContext<Self>) -> Self::Result {
        let result = self.conn.query_row("SELECT 1", [], |_| Ok(()));
        result.map_err(|e| {
            let e = StoreError::from(e);
            self.failed(DbOperation::health, &e);
            e
        })
    }
}
