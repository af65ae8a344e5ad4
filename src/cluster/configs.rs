//! The configs instances share: Redis holds the truth, each instance's SQLite its durable
//! copy. A sync reads the whole shared table, stores it in SQLite and swaps it in; the
//! first instance on an empty Redis seeds it with its own. As the [`ConfigStore`] of
//! config writes, the shared table is changed by one compare-and-set of its version.

use super::Cluster;
use crate::config::writer::{ConfigStore, Plan, WriteError};
use crate::config::{Change, Config, DEFAULT_ENDPOINT, Source, diff};
use crate::store::redis::RedisUnavailable;
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Compare-and-set attempts of one write before it answers 409.
const WRITE_ATTEMPTS: usize = 8;

impl Cluster {
    /// Runs a config sync now, or right after the one running.
    pub(super) fn request_sync(self: Arc<Self>) {
        self.again.store(true, Ordering::SeqCst);
        if self.syncing.swap(true, Ordering::SeqCst) {
            return;
        }
        actix_web::rt::spawn(async move {
            loop {
                while self.again.swap(false, Ordering::SeqCst) {
                    let _writing = self.policies.lock_writes().await;
                    if let Err(e) = self.sync(Vec::new()).await {
                        log::debug!("config sync failed: {e}");
                    }
                }
                self.syncing.store(false, Ordering::SeqCst);
                // A request that came after the last round but before `syncing` was
                // cleared found it set and only marked `again`: run for it, unless
                // another task took over.
                if !self.again.load(Ordering::SeqCst) || self.syncing.swap(true, Ordering::SeqCst) {
                    break;
                }
            }
        });
    }

    /// Reads the shared configs and serves them (the caller holds the write lock). The
    /// first instance on an empty Redis seeds it with its own. `mine`: the endpoints this
    /// instance just wrote and who asked, for its history; other changes are recorded as
    /// the cluster's.
    async fn sync(&self, mine: Mine) -> Result<(), RedisUnavailable> {
        let mut shared = self.redis.shared_configs().await?;
        if shared.version.is_none() {
            self.seed().await?;
            shared = self.redis.shared_configs().await?;
        }
        let Some(version) = shared.version else {
            return Ok(());
        };
        let current = self.policies.current();
        let mut configs = Vec::with_capacity(shared.configs.len());
        for (endpoint, _, parsed) in shared.configs {
            match parsed {
                Ok(c) if c.endpoint() == endpoint => configs.push(c),
                refused => {
                    let why = refused
                        .err()
                        .unwrap_or_else(|| "its endpoint differs".to_owned());
                    log::error!(
                        "shared config for {endpoint:?} refused ({why}); keeping this instance's"
                    );
                    configs.extend(current.get(&endpoint).cloned());
                }
            }
        }
        if !configs.iter().any(|c| c.endpoint() == DEFAULT_ENDPOINT) {
            log::error!("the shared configs have no default policy \"*\"; keeping this instance's");
            configs.extend(current.get(DEFAULT_ENDPOINT).cloned());
        }
        let changes = diff(current.configs(), &configs);
        if changes.is_empty() {
            self.applied.store(version, Ordering::Relaxed);
            if self.copy_stale.load(Ordering::Relaxed) || !mine.is_empty() {
                self.store_copy(configs, mine).await;
            }
            return Ok(());
        }
        self.store_copy(configs, mine).await;
        if self.committer.publish(&changes, Source::Cluster) {
            self.applied.store(version, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes the shared configs to this instance's SQLite copy; on failure they are still
    /// served from memory, and every later sync tries again (with this instance's own
    /// changes not yet stored, so that the history still names their source).
    async fn store_copy(&self, configs: Vec<Config>, mine: Mine) {
        let mut all = std::mem::take(&mut *self.unstored());
        merge(&mut all, mine);
        let failed = self.committer.copy(configs, all.clone()).await.err();
        if failed.is_some() {
            merge(&mut self.unstored(), all);
        }
        if let Some(e) = &failed {
            log::error!(
                "storing the shared configs in SQLite failed ({e}); retrying at the next sync"
            );
        }
        self.copy_stale.store(failed.is_some(), Ordering::Relaxed);
    }

    /// This instance's own changes not yet stored in its SQLite copy.
    fn unstored(&self) -> std::sync::MutexGuard<'_, Mine> {
        self.unstored.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Seeds an empty Redis with this instance's configs (no-op once any instance has).
    pub(super) async fn seed(&self) -> Result<(), RedisUnavailable> {
        let mine = self.policies.current().configs().to_vec();
        if self.redis.seed_configs(&mine).await? {
            log::info!("seeded Redis with this instance's {} configs", mine.len());
        }
        Ok(())
    }
}

/// The endpoints this instance wrote, each with who asked: its history records them so.
pub(super) type Mine = Vec<(String, Source)>;

/// Adds `newer` to `into`, an endpoint's newer source replacing its older.
fn merge(into: &mut Mine, newer: Mine) {
    into.retain(|(e, _)| !newer.iter().any(|(n, _)| n == e));
    into.extend(newer);
}

/// The shared configs as the store of config writes: a plan is made against the table
/// Redis holds and written back as one compare-and-set of its version (retried when
/// another instance wrote in between); this instance's sync then stores, serves and
/// announces it before the write answers.
impl ConfigStore for Cluster {
    fn change<'a>(
        &'a self,
        plan: &'a Plan<'a>,
        source: Source,
    ) -> BoxFuture<'a, Result<Vec<Change>, WriteError>> {
        Box::pin(async move {
            let unavailable = |e: RedisUnavailable| {
                WriteError::Unavailable(format!(
                    "The shared configs could not be changed ({e}); nothing changed."
                ))
            };
            for _ in 0..WRITE_ATTEMPTS {
                // A write must never be the first shared config: the others would lack
                // the rest.
                self.seed().await.map_err(unavailable)?;
                let shared = self.redis.shared_configs().await.map_err(unavailable)?;
                let Some(read) = shared.version else {
                    continue;
                };
                let mut configs = Vec::with_capacity(shared.configs.len());
                for (endpoint, _, parsed) in shared.configs {
                    match parsed {
                        Ok(c) if c.endpoint() == endpoint => configs.push(c),
                        // Planned without it, a write could not see it (a 404, a file
                        // that cannot delete it): no write until it is readable.
                        _ => {
                            return Err(WriteError::Unavailable(format!(
                                "The shared config for {endpoint:?} is unreadable here \
                                 (written by a newer version?); nothing changed."
                            )));
                        }
                    }
                }
                let mut changes = plan(&configs)?;
                if changes.is_empty() {
                    return Ok(changes);
                }
                // A created config gets an id no other instance will use.
                for change in &mut changes {
                    if let Some(after) = change.after.as_mut().filter(|a| a.id == 0) {
                        after.id = self.redis.next_config_id().await.map_err(unavailable)?;
                    }
                }
                let writes: Vec<(String, Option<String>)> = (changes.iter())
                    .map(|c| {
                        (
                            c.endpoint().to_owned(),
                            c.after.as_ref().map(Config::to_json),
                        )
                    })
                    .collect();
                let swapped = self.redis.swap_configs(read, &writes).await;
                let swapped = swapped.map_err(|e| match e {
                    // Sent, then no answer: the script may have run.
                    RedisUnavailable::Failed(e) => WriteError::Unavailable(format!(
                        "Redis did not confirm the change ({e}); it may have been made: \
                         read the configs to see."
                    )),
                    open => unavailable(open),
                })?;
                if swapped.is_err() {
                    continue;
                }
                // The sync serves them here, stores them in SQLite (recorded with their
                // source) and tells the feeds; should Redis fail in between, they are
                // served from memory at once and stored by the next sync.
                let mine: Mine = writes.into_iter().map(|(e, _)| (e, source)).collect();
                if let Err(e) = self.sync(mine.clone()).await {
                    log::warn!("configs stored in Redis, local sync deferred: {e}");
                    self.committer.publish(&changes, source);
                    self.copy_stale.store(true, Ordering::Relaxed);
                    merge(&mut self.unstored(), mine);
                }
                return Ok(changes);
            }
            Err(WriteError::Conflict(
                "Other instances kept changing the configs; nothing changed, try again.".to_owned(),
            ))
        })
    }
}
