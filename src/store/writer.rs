//! The single writer: every command is applied here, one after another, so
//! each sees the state the previous one left and sequence numbers follow one
//! another. Commands that arrive together share one flush (group commit);
//! each is answered only after that flush.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::sync::{mpsc, oneshot, watch};

use super::commit::Commit;
use super::disk::Disk;
use super::prefetch::{Freshness, Prefetch};
use super::series_cache::SeriesCache;
use super::view::{self, View};
use crate::core::{self, Watches};
use crate::domain::{Command, Outcome};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Most commands applied before one shared flush.
const MAX_GROUP: usize = 512;

/// Work for the writer.
enum Job {
    Apply {
        command: Box<Command>,
        prefetch: Option<Prefetch>,
        reply: oneshot::Sender<Result<Outcome>>,
        queued: std::time::Instant,
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
    /// Every watch with the state of its series, as on disk.
    watches: Watches,
    commit: Commit,
    metrics: Arc<Metrics>,
    /// The data dir's disk: refuses writes it has no room for or cannot
    /// take, and syncs each group (see [`Disk`]).
    disk: Disk,
    freshness: Freshness,
}

/// What the writer shares with the store's readers.
pub struct Shared {
    /// The oldest event the log retains.
    pub oldest: Arc<AtomicU64>,
    /// Commits applied so far (see [`Prefetch`]).
    pub applied: Arc<AtomicU64>,
    pub series: Arc<SeriesCache>,
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
        prefetch: Option<Prefetch>,
    ) -> Result<impl Future<Output = Result<Outcome>> + use<>> {
        let (reply, rx) = oneshot::channel();
        let job = Job::Apply {
            command: Box::new(command),
            prefetch,
            reply,
            queued: std::time::Instant::now(),
        };
        let closed = || Error::Unavailable("the store is closed (server shutting down)".into());
        self.jobs.send(job).await.map_err(|_| closed())?;
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
    /// the thread, and a receiver of the durable head sequence.
    pub fn spawn(
        db: sled::Db,
        dir: &std::path::Path,
        head: u64,
        retain_events: u64,
        shared: Shared,
    ) -> Result<(WriterHandle, std::thread::JoinHandle<()>, watch::Receiver<u64>)> {
        let Shared {
            oldest,
            applied,
            series,
            metrics,
        } = shared;
        let watches = view::load_watches(&db)?;
        let disk = Disk::open(dir, &db);
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(1024);
        let (durable_tx, durable_rx) = watch::channel(head);
        let writer = Writer {
            commit: Commit {
                retain_events,
                oldest,
                series,
            },
            db,
            head,
            durable_head: durable_tx,
            watches,
            metrics,
            freshness: Freshness::new(applied),
            disk,
        };
        let thread = std::thread::Builder::new()
            .name("tradewatch-writer".into())
            .spawn(move || writer.run(jobs_rx))
            .map_err(|e| Error::Unavailable(format!("cannot start writer thread: {e}")))?;
        Ok((WriterHandle { jobs: jobs_tx }, thread, durable_rx))
    }

    fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        let mut closing = false;
        while let Some(job) = jobs.blocking_recv() {
            self.disk.check();
            let mut replies = Vec::new();
            let mut next = Some(job);
            while let Some(job) = next.take() {
                match job {
                    Job::Apply {
                        command,
                        prefetch,
                        reply,
                        queued,
                    } => {
                        let outcome = match self.disk.refused() {
                            Some(refused) => Err(refused),
                            None => self
                                .apply(&command, prefetch.as_ref())
                                .map_err(|e| self.disk.job_failed(&self.db, e)),
                        };
                        replies.push((reply, outcome, queued));
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
            if flushed.is_ok() {
                self.durable_head.send_replace(self.head);
            }
            for (reply, outcome, queued) in replies {
                self.metrics.write_acknowledged(queued.elapsed());
                let result = match (outcome, &flushed) {
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(e)) => Err(e.clone()),
                    (Ok(v), Ok(())) => Ok(v),
                };
                // The caller may have gone away; the write stands regardless.
                let _ = reply.send(result);
            }
            if closing {
                break;
            }
        }
        tracing::debug!("writer stopped");
    }

    /// Applies one command: the core decides, the commit writes.
    fn apply(&mut self, command: &Command, prefetch: Option<&Prefetch>) -> Result<Outcome> {
        let effect = {
            let mut view = View::new(&self.db, self.head, &self.watches, &command.action);
            view.fingerprint = command.request.as_ref().map(|r| r.fingerprint);
            view.prefetch = prefetch.map(|p| (p, &self.freshness));
            core::apply(&view, command)?
        };
        if effect.replayed {
            return Ok(effect.outcome);
        }
        let tally = self
            .commit
            .write(&self.db, &mut self.disk, self.head, command, &effect)?;
        self.freshness.remember(&effect.changes);
        self.metrics.write_applied(&tally);
        if let Some(last) = effect.events.last() {
            self.head = last.sequence;
        }
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
        Ok(effect.outcome)
    }
}
