//! The single writer: every command is applied here, one after another, so
//! each sees the state the previous one left and sequence numbers follow one
//! another. Commands that arrive together share one flush (group commit);
//! each is answered only after that flush.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::sync::{mpsc, oneshot, watch};

use super::commit::Commit;
use super::disk::Disk;
use super::keys;
use super::prefetch::{Freshness, Prefetch};
use super::recent::RecentEvents;
use super::series_cache::SeriesCache;
use super::view::{self, View};
use crate::core::{self, Watches};
use crate::domain::{Command, Event, Outcome};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Most commands applied before one shared flush.
const MAX_GROUP: usize = 512;

/// Where a command goes in the command log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// After the last applied (a single node numbers its own commands).
    Next,
    /// At this position of a cluster's log: applied only right after the
    /// position before it.
    Logged(u64),
}

/// A command applied (or found applied before, under its request id).
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub outcome: Outcome,
    /// The command's place in the log; for a retry answered from its
    /// request id, the place of the write it repeats.
    pub position: u64,
}

/// Why a command was not applied.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// The command itself cannot be applied to the state before it (a
    /// caller's mistake, decided the same way on every node). A logged
    /// command refused so still takes its place in the log.
    Rejected(Error),
    /// This node could not apply it (its disk, its store, a command out of
    /// order): nothing of it was stored, and nothing after it may be.
    Failed(Error),
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Error {
        match refusal {
            Refusal::Rejected(e) | Refusal::Failed(e) => e,
        }
    }
}

/// What a queued command comes to.
pub type Reply = std::result::Result<Applied, Refusal>;

/// Work for the writer.
enum Job {
    Apply {
        command: Box<Command>,
        position: Position,
        prefetch: Option<Prefetch>,
        reply: oneshot::Sender<Reply>,
        queued: std::time::Instant,
    },
    /// Copy the store as it is after the jobs before to a file (see
    /// [`super::snapshot`]); answer with the log position it holds.
    Export {
        path: std::path::PathBuf,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Stop after the jobs before.
    Close,
}

pub struct Writer {
    db: sled::Db,
    /// Last sequence assigned (applied, maybe not yet flushed).
    head: u64,
    /// Last sequence known to be on disk.
    durable_head: watch::Sender<u64>,
    /// The newest durable events, for subscribers.
    recent: Arc<RecentEvents>,
    /// The newest events applied since the last commit (at most as many as
    /// `recent` holds), handed to it once they are durable.
    undurable: VecDeque<Event>,
    /// Last command log position applied.
    position: u64,
    /// Last command log position known to be on disk.
    durable_position: watch::Sender<u64>,
    /// Every watch with the state of its series, as on disk.
    watches: Watches,
    commit: Commit,
    metrics: Arc<Metrics>,
    /// The data dir's disk: refuses writes it has no room for or cannot
    /// take, and syncs each group (see [`Disk`]).
    disk: Disk,
    freshness: Freshness,
}

/// What is on disk, as the writer last flushed it.
pub struct Durable {
    /// The last event sequence.
    pub head: watch::Receiver<u64>,
    /// The last command log position applied.
    pub position: watch::Receiver<u64>,
}

/// What the writer shares with the store's readers.
pub struct Shared {
    /// The oldest event the log retains.
    pub oldest: Arc<AtomicU64>,
    /// Commits applied so far (see [`Prefetch`]).
    pub applied: Arc<AtomicU64>,
    pub series: Arc<SeriesCache>,
    pub recent: Arc<RecentEvents>,
    pub metrics: Arc<Metrics>,
}

/// The handle through which the store submits commands.
#[derive(Clone)]
pub struct WriterHandle {
    jobs: mpsc::Sender<Job>,
}

impl WriterHandle {
    /// Queues `command` behind those already queued and returns at once;
    /// the future it gives answers once its effect is on disk. Commands
    /// queued one after another are applied in that order and can share one
    /// flush.
    pub async fn enqueue(
        &self,
        command: Command,
        position: Position,
        prefetch: Option<Prefetch>,
    ) -> Result<impl Future<Output = Reply> + use<>> {
        let (reply, rx) = oneshot::channel();
        let job = Job::Apply {
            command: Box::new(command),
            position,
            prefetch,
            reply,
            queued: std::time::Instant::now(),
        };
        let closed = || Error::Unavailable("the store is closed (server shutting down)".into());
        self.jobs.send(job).await.map_err(|_| closed())?;
        Ok(async move { rx.await.unwrap_or_else(|_| Err(Refusal::Failed(closed()))) })
    }

    /// Queues a copy of the store, as of the jobs queued before, to
    /// `path`; the future answers with the log position it holds.
    pub async fn export(
        &self,
        path: std::path::PathBuf,
    ) -> Result<impl Future<Output = Result<u64>> + use<>> {
        let (reply, rx) = oneshot::channel();
        let closed = || Error::Unavailable("the store is closed (server shutting down)".into());
        self.jobs
            .send(Job::Export { path, reply })
            .await
            .map_err(|_| closed())?;
        Ok(async move { rx.await.map_err(|_| closed())? })
    }

    /// Stops the writer after the jobs already queued; returns once it has
    /// flushed and let go of the store.
    pub async fn close(&self, thread: std::thread::JoinHandle<()>) {
        let _ = self.jobs.send(Job::Close).await;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

impl Writer {
    /// Loads the watches and starts the writer thread; returns its handle,
    /// the thread, and receivers of the durable head sequence and log
    /// position.
    pub fn spawn(
        db: sled::Db,
        dir: &std::path::Path,
        (head, position): (u64, u64),
        retain_events: u64,
        shared: Shared,
    ) -> Result<(WriterHandle, std::thread::JoinHandle<()>, Durable)> {
        let Shared {
            oldest,
            applied,
            series,
            recent,
            metrics,
        } = shared;
        let watches = view::load_watches(&db)?;
        let disk = Disk::open(dir, &db);
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(1024);
        let (durable_tx, durable_rx) = watch::channel(head);
        let (position_tx, position_rx) = watch::channel(position);
        let writer = Writer {
            commit: Commit {
                retain_events,
                oldest,
                series,
            },
            db,
            head,
            durable_head: durable_tx,
            recent,
            undurable: VecDeque::new(),
            position,
            durable_position: position_tx,
            watches,
            metrics,
            freshness: Freshness::new(applied),
            disk,
        };
        let thread = std::thread::Builder::new()
            .name("tradewatch-writer".into())
            .spawn(move || writer.run(jobs_rx))
            .map_err(|e| Error::Unavailable(format!("cannot start writer thread: {e}")))?;
        let durable = Durable {
            head: durable_rx,
            position: position_rx,
        };
        Ok((WriterHandle { jobs: jobs_tx }, thread, durable))
    }

    fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        let mut closing = false;
        while let Some(job) = jobs.blocking_recv() {
            self.disk.check();
            let mut replies = Vec::new();
            let mut exports = Vec::new();
            let mut next = Some(job);
            while let Some(job) = next.take() {
                match job {
                    Job::Apply {
                        command,
                        position,
                        mut prefetch,
                        reply,
                        queued,
                    } => {
                        let outcome = match self.disk.refused() {
                            Some(refused) => Err(Refusal::Failed(refused)),
                            None => self.apply(&command, position, prefetch.as_mut()),
                        };
                        replies.push((reply, outcome, queued));
                    }
                    Job::Export { path, reply } => {
                        // The commands before are applied: flush them
                        // first, so that the copy is of a durable state.
                        exports.push((path, reply));
                        break;
                    }
                    Job::Close => {
                        closing = true;
                        break;
                    }
                }
                if replies.len() < MAX_GROUP {
                    next = jobs.try_recv().ok();
                }
            }
            let flushed = self.disk.commit(&self.db);
            let events = self.undurable.drain(..);
            if flushed.is_ok() {
                // Before the head moves, so that a woken subscriber finds them.
                self.recent.extend(events);
                self.durable_head.send_replace(self.head);
                self.durable_position.send_replace(self.position);
                self.metrics.log_applied(self.position);
            } else {
                self.recent.clear();
            }
            for (reply, outcome, queued) in replies {
                self.metrics.write_acknowledged(queued.elapsed());
                let result = match (outcome, &flushed) {
                    (Err(e @ Refusal::Failed(_)), _) => Err(e),
                    (_, Err(e)) => Err(Refusal::Failed(e.clone())),
                    (result, Ok(())) => result,
                };
                // The caller may have gone away; the write stands regardless.
                let _ = reply.send(result);
            }
            for (path, reply) in exports {
                let copied = flushed
                    .clone()
                    .and_then(|()| super::snapshot::export(&self.db, self.position, &path));
                let _ = reply.send(copied.map(|()| self.position));
            }
            if closing {
                break;
            }
        }
        tracing::debug!("writer stopped");
    }

    /// Applies one command at `position`: the core decides, the commit
    /// writes.
    fn apply(&mut self, command: &Command, position: Position, mut prefetch: Option<&mut Prefetch>) -> Reply {
        let logged = match position {
            Position::Next => None,
            Position::Logged(p) if p == self.position + 1 => Some(p),
            Position::Logged(p) => {
                return Err(Refusal::Failed(Error::Unavailable(format!(
                    "command log position {p} cannot follow position {}, the last applied",
                    self.position
                ))));
            }
        };
        let (decided, mut blocks_read) = {
            let mut view = View::new(&self.db, self.head, &self.watches, &command.action);
            view.fingerprint = command.request.as_ref().map(|r| r.fingerprint);
            view.prefetch = prefetch.as_deref().map(|p| (p, &self.freshness));
            let decided = core::apply(&view, command);
            (decided, view.into_blocks_read())
        };
        let effect = match decided {
            Ok(effect) if effect.replayed.is_none() => effect,
            // Answered from its request id, or refused: nothing to write
            // but, for a logged command, its place in the log.
            decided => {
                let decided = decided.map_err(|e| self.refusal(e));
                if let (Some(p), Ok(_) | Err(Refusal::Rejected(_))) = (logged, &decided) {
                    self.take_position(p)?;
                }
                return decided.map(|effect| Applied {
                    position: effect.replayed.unwrap_or(self.position),
                    outcome: effect.outcome,
                });
            }
        };
        let position = logged.unwrap_or(self.position + 1);
        let freshness = &self.freshness;
        // Blocks read ahead (and not written since), or read while
        // deciding, are changed as read.
        let mut prefetched = |block: &_| {
            prefetch
                .as_deref_mut()
                .and_then(|p| p.take_block(block, freshness))
                .or_else(|| blocks_read.remove(block))
        };
        let tally = self
            .commit
            .write(
                &self.db,
                &mut self.disk,
                (self.head, position),
                (command, &effect),
                &mut prefetched,
            )
            .map_err(|e| Refusal::Failed(self.disk.job_failed(&self.db, e)))?;
        self.position = position;
        self.freshness.remember(&effect.changes);
        self.metrics.write_applied(&tally);
        if let Some(last) = effect.events.last() {
            self.head = last.sequence;
        }
        self.undurable.extend(effect.events);
        // Only the newest can stay in the ring of recent events.
        let excess = self.undurable.len().saturating_sub(super::recent::CAPACITY);
        self.undurable.drain(..excess);
        for edit in effect.watches {
            match edit {
                core::WatchEdit::Created(runtime, _) | core::WatchEdit::Followed(runtime) => {
                    self.watches.insert(runtime.def.id.clone(), runtime);
                }
                core::WatchEdit::Deleted(id) => {
                    self.watches.remove(&id);
                }
            }
        }
        Ok(Applied {
            outcome: effect.outcome,
            position,
        })
    }

    /// Records that the command at `position` changed nothing.
    fn take_position(&mut self, position: u64) -> std::result::Result<(), Refusal> {
        self.db
            .insert(keys::META_LOG_POSITION, &position.to_be_bytes())
            .map_err(|e| Refusal::Failed(self.disk.job_failed(&self.db, e.into())))?;
        self.position = position;
        Ok(())
    }

    /// A refusal from deciding a command: the command's own fault, the
    /// same on every node, unless reading the store failed.
    fn refusal(&mut self, error: Error) -> Refusal {
        match error {
            Error::Storage(_) | Error::Corrupt(_) | Error::Unavailable(_) => {
                Refusal::Failed(self.disk.job_failed(&self.db, error))
            }
            rejected => Refusal::Rejected(rejected),
        }
    }
}
