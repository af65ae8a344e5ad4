//! The DB actor: the one owner of the SQLite connection, on its own thread
//! (`SyncArbiter` with one thread, so messages are handled in the order they were sent:
//! a snapshot written on eviction is always visible to the restore that follows it).
//!
//! Messages:
//! - [`Persist`]: write a batch of client snapshots in one transaction (write-behind).
//! - [`LoadClient`]: read a client's last snapshot, to restore an evicted limiter.
//! - [`CreateConfig`], [`UpdateConfig`], [`DeleteConfig`]: admin writes, durable before
//!   they take effect.
//! - [`ClientEvents`]: recent events of one client.
//! - [`Cleanup`]: delete what is older than the retention.
//! - [`Ping`]: the health check.

use crate::clock::Nanos;
use crate::policy::{Config, ConfigSpec};
use crate::store::{
    self, Cleaned, ClientSnapshot, DatabaseUrl, EventRow, StoreError, StoredClient,
};
use actix::prelude::*;
use rusqlite::Connection;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

pub struct Db {
    conn: Connection,
}

impl Actor for Db {
    type Context = SyncContext<Self>;
}

impl Db {
    /// Starts the actor on its thread with a connection opened (and migrated) by the
    /// caller, so that start-up errors are reported before anything runs.
    pub fn start(conn: Connection, url: DatabaseUrl) -> Addr<Db> {
        let first = Mutex::new(Some(conn));
        SyncArbiter::start(1, move || {
            let conn = first
                .lock()
                .ok()
                .and_then(|mut c| c.take())
                .map(Ok)
                .unwrap_or_else(|| store::open(&url));
            // Only reached again if the actor's thread died; the file opened a moment
            // ago, so failing now means the machine lost it: nothing sensible is left.
            let conn = conn.unwrap_or_else(|e| panic!("reopening the database {url}: {e}"));
            Db { conn }
        })
    }
}

/// Writes a batch; `done` (if any) learns how it went. Sent with `do_send`, so it is
/// queued at once even when the mailbox is busy, keeping the write-before-restore order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Persist {
    pub batch: Vec<ClientSnapshot>,
    pub done: Option<oneshot::Sender<Result<usize, String>>>,
}

impl Handler<Persist> for Db {
    type Result = ();
    fn handle(&mut self, msg: Persist, _: &mut SyncContext<Self>) {
        let n = msg.batch.len();
        let result = store::persist(&self.conn, &msg.batch).map(|()| n);
        match &result {
            Ok(_) => log::debug!("persisted {n} client snapshots"),
            Err(e) => log::error!("persisting {n} client snapshots failed: {e}"),
        }
        if let Some(done) = msg.done {
            let _ = done.send(result.map_err(|e| e.to_string()));
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
        store::load_client(&self.conn, &msg.client, msg.now)
    }
}

#[derive(Message)]
#[rtype(result = "Result<Config, StoreError>")]
pub struct CreateConfig {
    pub spec: ConfigSpec,
    pub now: Nanos,
}

impl Handler<CreateConfig> for Db {
    type Result = Result<Config, StoreError>;
    fn handle(&mut self, msg: CreateConfig, _: &mut SyncContext<Self>) -> Self::Result {
        store::insert_config(&self.conn, &msg.spec, msg.now)
    }
}

#[derive(Message)]
#[rtype(result = "Result<Option<Config>, StoreError>")]
pub struct UpdateConfig {
    pub spec: ConfigSpec,
    pub now: Nanos,
}

impl Handler<UpdateConfig> for Db {
    type Result = Result<Option<Config>, StoreError>;
    fn handle(&mut self, msg: UpdateConfig, _: &mut SyncContext<Self>) -> Self::Result {
        store::update_config(&self.conn, &msg.spec, msg.now)
    }
}

#[derive(Message)]
#[rtype(result = "Result<Option<Config>, StoreError>")]
pub struct DeleteConfig {
    pub endpoint: String,
    pub now: Nanos,
}

impl Handler<DeleteConfig> for Db {
    type Result = Result<Option<Config>, StoreError>;
    fn handle(&mut self, msg: DeleteConfig, _: &mut SyncContext<Self>) -> Self::Result {
        store::delete_config(&self.conn, &msg.endpoint, msg.now)
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
        store::client_events(&self.conn, &msg.client, msg.limit)
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
        store::cleanup(&self.conn, msg.now, msg.retention)
    }
}

#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct Ping;

impl Handler<Ping> for Db {
    type Result = Result<(), StoreError>;
    fn handle(&mut self, _: Ping, _: &mut SyncContext<Self>) -> Self::Result {
        self.conn.query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }
}
