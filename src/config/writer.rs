//! The one path by which a config change takes effect, whoever asks (the admin API, the
//! shared configs of a cluster, a start): **validate → persist → swap the table →
//! announce**.
//!
//! - [`Edit::apply`] holds the rules of a write (conflict, not found, the merge of a
//!   partial update, the default policy kept) for every backend.
//! - [`Committer`] persists changes, swaps them into the live table and tells the feeds.
//! - [`ConfigWriter`] runs one write (an admin API edit, or a config file's reload) to
//!   its end through a [`ConfigStore`]: [`LocalConfigs`] (SQLite alone) or, in
//!   distributed mode, the configs every instance shares (a compare-and-set in Redis
//!   whose sync then commits it, see [`crate::cluster`]). The writer does not know which:
//!   the store is chosen once, in the composition root.

use super::file::{self, FileError};
use super::{Change, Config, ConfigSpec, DEFAULT_ENDPOINT, Source, ValidationError};
use crate::actors::broadcaster::{Broadcaster, ConfigChanged};
use crate::actors::db::{Db, ReplaceConfigs, WriteConfigs, WriteTicket};
use crate::clock::{Nanos, SharedClock};
use crate::metrics::{Metrics, ReloadResult};
use crate::policy::Policies;
use crate::store::sqlite::StoreError;
use actix::Addr;
use futures_util::future::BoxFuture;
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a write may wait (for other writes, then for the database) before it gives
/// up, changing nothing; see [`Committer::persist`].
const WRITE_DEADLINE: Duration = Duration::from_secs(2);

/// One config write, as asked.
#[derive(Debug, Clone)]
pub enum Edit {
    /// A new config; refused if its endpoint has one.
    Create(ConfigSpec),
    /// A partial update of an existing config (see [`ConfigSpec::merged`]).
    Update {
        endpoint: String,
        patch: Map<String, Value>,
    },
    Delete(String),
    /// Make the config exactly `spec` (created if absent, replaced if present): a
    /// rollback.
    Put(ConfigSpec),
}

impl Edit {
    pub fn endpoint(&self) -> &str {
        match self {
            Edit::Create(spec) | Edit::Put(spec) => &spec.endpoint,
            Edit::Update { endpoint, .. } | Edit::Delete(endpoint) => endpoint,
        }
    }

    /// The config after this edit, given the one there now (`None`: absent, and as an
    /// answer: delete). A created config gets `id` (0: the database assigns one).
    pub fn apply(
        &self,
        current: Option<&Config>,
        id: i64,
        now: Nanos,
    ) -> Result<Option<Config>, WriteError> {
        let endpoint = self.endpoint();
        let not_found = || WriteError::NotFound(format!("There is no config for {endpoint:?}."));
        match self {
            Edit::Create(spec) => match current {
                Some(_) => Err(WriteError::Conflict(
                    "A config for that endpoint exists already.".to_owned(),
                )),
                None => Ok(Some(Config {
                    id,
                    spec: spec.clone(),
                    created_at: now,
                    updated_at: now,
                })),
            },
            Edit::Update { patch, .. } => {
                let current = current.ok_or_else(not_found)?;
                let spec = current.spec.merged(patch.clone())?;
                if spec.endpoint != endpoint {
                    return Err(ValidationError::new(
                        "endpoint",
                        "cannot be changed; create a config for the new endpoint and delete this one"
                            .to_owned(),
                    )
                    .into());
                }
                Ok(Some(Config {
                    id: current.id,
                    spec,
                    created_at: current.created_at,
                    updated_at: now,
                }))
            }
            Edit::Put(spec) => Ok(Some(match current {
                Some(c) => Config {
                    spec: spec.clone(),
                    updated_at: now,
                    ..c.clone()
                },
                None => Config {
                    id,
                    spec: spec.clone(),
                    created_at: now,
                    updated_at: now,
                },
            })),
            Edit::Delete(_) if endpoint == DEFAULT_ENDPOINT => Err(WriteError::Conflict(
                "The default policy \"*\" cannot be deleted; update or deactivate it instead."
                    .to_owned(),
            )),
            Edit::Delete(_) => current.map(|_| None).ok_or_else(not_found),
        }
    }
}

/// Why a write changed nothing; each message is a sentence for the caller.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteError {
    /// The result would break a rule (422).
    Invalid(ValidationError),
    /// An update or delete of a config that does not exist.
    NotFound(String),
    /// A create of an existing config, a delete of the default, or other instances kept
    /// writing the same config.
    Conflict(String),
    /// The database or Redis could not be reached in time, or holds something unreadable.
    Unavailable(String),
    /// The config file was refused.
    InvalidFile(FileError),
}

impl From<ValidationError> for WriteError {
    fn from(e: ValidationError) -> Self {
        WriteError::Invalid(e)
    }
}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => {
                WriteError::Conflict("A config for that endpoint exists already.".to_owned())
            }
            e => WriteError::Unavailable(format!(
                "The database could not store the change ({e}); nothing changed."
            )),
        }
    }
}

/// Persists changes, swaps them into the live table, and tells the feeds.
pub struct Committer {
    pub policies: Arc<Policies>,
    pub db: Addr<Db>,
    pub broadcaster: Addr<Broadcaster>,
    pub clock: SharedClock,
}

impl Committer {
    /// Writes `changes` to SQLite in one transaction, with their history; answers them as
    /// stored. Gives up at the ticket's deadline unless the DB actor has started the
    /// write by then: its outcome is awaited, so a change the database made is never
    /// reported as failed, and a failure always means nothing changed.
    pub async fn persist(
        &self,
        changes: Vec<Change>,
        source: Source,
        ticket: &WriteTicket,
    ) -> Result<Vec<Change>, WriteError> {
        let msg = WriteConfigs {
            changes,
            source,
            now: self.clock.now(),
            ticket: ticket.clone(),
        };
        let mut reply = std::pin::pin!(self.db.send(msg));
        let left = ticket.deadline.saturating_duration_since(Instant::now());
        let answer = match actix_web::rt::time::timeout(left, reply.as_mut()).await {
            Ok(answer) => answer,
            Err(_) if ticket.abandon() => {
                return Err(StoreError::Unavailable(
                    "the database did not get to the change in time",
                )
                .into());
            }
            Err(_) => reply.await,
        };
        let stored = answer.map_err(|e| {
            WriteError::Unavailable(format!(
                "The database did not answer ({e}); nothing changed."
            ))
        })?;
        Ok(stored?)
    }

    /// Distributed mode: makes this instance's SQLite copy equal to the shared configs
    /// (`mine`: the endpoints this instance wrote and its source, for the history), or
    /// fails within the write deadline.
    pub async fn copy(
        &self,
        configs: Vec<Config>,
        mine: Vec<(String, Source)>,
    ) -> Result<(), String> {
        let msg = ReplaceConfigs {
            configs,
            now: self.clock.now(),
            mine,
        };
        match actix_web::rt::time::timeout(WRITE_DEADLINE, self.db.send(msg)).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the database did not answer in time".to_owned()),
        }
    }

    /// Serves `changes` from the next request on and announces them; `false`, changing
    /// nothing, if they would remove the default policy. The caller holds the write lock.
    pub fn publish(&self, changes: &[Change], source: Source) -> bool {
        if !self.policies.apply(changes) {
            return false;
        }
        for change in changes {
            let action = change.action();
            log::info!(
                "config {} for {} ({})",
                action.as_str(),
                change.endpoint(),
                source.as_str()
            );
            if let Some(config) = change.shown() {
                self.broadcaster.do_send(ConfigChanged {
                    action,
                    config: config.clone(),
                });
            }
        }
        true
    }
}

/// What a write changes: given the configs the store holds now, the changes to make
/// (a created config with id 0 gets one from the store).
pub type Plan<'a> = dyn Fn(&[Config]) -> Result<Vec<Change>, WriteError> + Send + Sync + 'a;

/// Where config writes are stored and from where they take effect.
pub trait ConfigStore: Send + Sync {
    /// Stores what `plan` makes of the configs held now, as one change, then serves and
    /// announces it here before answering it as stored. Should another writer change the
    /// configs in between, `plan` is asked again. An empty plan changes nothing. The
    /// caller holds the write lock.
    fn change<'a>(
        &'a self,
        plan: &'a Plan<'a>,
        source: Source,
    ) -> BoxFuture<'a, Result<Vec<Change>, WriteError>>;
}

/// This instance's SQLite file alone: the configs it serves are the ones it holds.
pub struct LocalConfigs(pub Arc<Committer>);

impl ConfigStore for LocalConfigs {
    fn change<'a>(
        &'a self,
        plan: &'a Plan<'a>,
        source: Source,
    ) -> BoxFuture<'a, Result<Vec<Change>, WriteError>> {
        Box::pin(async move {
            let c = &self.0;
            let changes = plan(c.policies.current().configs())?;
            if changes.is_empty() {
                return Ok(changes);
            }
            // Persisted in one transaction, then served and announced.
            let ticket = WriteTicket::new(Instant::now() + WRITE_DEADLINE);
            let stored = c.persist(changes, source, &ticket).await?;
            c.publish(&stored, source);
            Ok(stored)
        })
    }
}

/// Runs config writes, one at a time, each to its end.
pub struct ConfigWriter {
    committer: Arc<Committer>,
    store: Arc<dyn ConfigStore>,
    metrics: Arc<Metrics>,
    /// The config file in charge (`--config-file`): then it alone changes configs.
    file: Option<PathBuf>,
}

impl ConfigWriter {
    pub fn new(
        committer: Arc<Committer>,
        store: Arc<dyn ConfigStore>,
        metrics: Arc<Metrics>,
        file: Option<PathBuf>,
    ) -> Self {
        Self {
            committer,
            store,
            metrics,
            file,
        }
    }

    /// Makes `edit` and answers what changed (the config before and after). Runs on a
    /// task of its own: if the caller goes away while the database works, a change that
    /// was stored still takes effect, so the table served never differs from the file.
    /// Refused while a config file is in charge.
    pub async fn write(self: &Arc<Self>, edit: Edit, source: Source) -> Result<Change, WriteError> {
        if let Some(path) = &self.file {
            return Err(WriteError::Conflict(format!(
                "Configs are managed by the file {} (--config-file): edit it, then reload it \
                 (SIGHUP or POST /admin/reload).",
                path.display()
            )));
        }
        let this = self.clone();
        actix_web::rt::spawn(async move { this.write_now(edit, source).await })
            .await
            .map_err(|e| {
                WriteError::Unavailable(format!("The config write did not finish ({e})."))
            })?
    }

    async fn write_now(&self, edit: Edit, source: Source) -> Result<Change, WriteError> {
        let _writing = self.lock_in_time().await?;
        let now = self.committer.clock.now();
        let plan = |configs: &[Config]| {
            let before = (configs.iter()).find(|c| c.endpoint() == edit.endpoint());
            let after = edit.apply(before, 0, now)?;
            let before = before.cloned();
            Ok(vec![Change { before, after }])
        };
        let stored = self.store.change(&plan, source).await?;
        let change = stored
            .into_iter()
            .next()
            .ok_or_else(|| WriteError::Unavailable("The store answered no change.".to_owned()))?;
        self.metrics.config_changed(change.action());
        Ok(change)
    }

    /// The write lock, or a 503 when other writes hold it past the write deadline.
    async fn lock_in_time(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, WriteError> {
        let lock = self.committer.policies.lock_writes();
        actix_web::rt::time::timeout(WRITE_DEADLINE, lock)
            .await
            .map_err(|_| {
                WriteError::Unavailable(
                    "Other config writes took too long; nothing changed, try again.".to_owned(),
                )
            })
    }

    /// Reads the config file and makes the configs equal to it, as one change. An
    /// invalid file changes nothing: logged with its line and field, counted, and the
    /// running configs keep serving.
    pub async fn reload(self: &Arc<Self>) -> Result<Vec<Change>, WriteError> {
        let this = self.clone();
        actix_web::rt::spawn(async move { this.reload_now().await })
            .await
            .map_err(|e| WriteError::Unavailable(format!("The reload did not finish ({e}).")))?
    }

    async fn reload_now(&self) -> Result<Vec<Change>, WriteError> {
        let Some(path) = &self.file else {
            return Err(WriteError::Conflict(
                "No config file is in charge (--config-file): there is nothing to reload."
                    .to_owned(),
            ));
        };
        let desired = match file::load(path) {
            Ok(specs) => specs,
            Err(e) => {
                log::error!("config file refused, the running configs keep serving: {e}");
                self.metrics.config_reloaded(ReloadResult::invalid);
                return Err(WriteError::InvalidFile(e));
            }
        };
        let _writing = self.lock_in_time().await?;
        let now = self.committer.clock.now();
        // Planned against the configs the store holds (in distributed mode the shared
        // ones): applying a file twice, or on every instance, changes nothing the second
        // time.
        let plan = |configs: &[Config]| Ok(file::plan(configs, &desired, now));
        let applied = self.store.change(&plan, Source::File).await;
        let changes =
            applied.inspect_err(|_| self.metrics.config_reloaded(ReloadResult::failed))?;
        for change in &changes {
            self.metrics.config_changed(change.action());
        }
        self.metrics.config_reloaded(ReloadResult::applied);
        log::info!(
            "config file {} applied: {} configs, {} changed",
            path.display(),
            desired.len(),
            changes.len()
        );
        Ok(changes)
    }
}
