//! The single writer: every mutation runs here, one after another, so
//! sequence numbers are assigned in one place and a write can read the state
//! the previous one left. Jobs that arrive together share one flush (group
//! commit); each is answered only after that flush.

use prost::Message;
use prost_types::Timestamp;
use tokio::sync::{mpsc, oneshot, watch};

use std::collections::HashMap;

use super::codec::{self, EventKind, EventValue, RecordStoredValue};
use super::keys;
use super::rollup::RollupDeltas;
use crate::domain::{RecordKey, StoredRecord};
use crate::error::{Error, Result};

/// Most jobs applied before one shared flush.
const MAX_GROUP: usize = 512;

/// Work for the writer: runs against the store, returns the reply to send
/// once the outcome is durable.
type Job = Box<dyn FnOnce(&mut Writer) -> Reply + Send>;
type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;

/// A change to one record: the state before and after (None = absent).
pub struct Change {
    pub key: RecordKey,
    pub before: Option<StoredRecord>,
    pub after: Option<StoredRecord>,
}

/// Sequence numbers of the events one write produced, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceRange {
    pub first: u64,
    pub last: u64,
}

pub struct Writer {
    pub(super) db: sled::Db,
    /// Last sequence assigned (applied, maybe not yet flushed).
    head: u64,
    /// Last sequence known to be on disk.
    durable_head: watch::Sender<u64>,
    closing: bool,
}

/// The handle through which the rest of the store submits jobs.
#[derive(Clone)]
pub struct WriterHandle {
    jobs: mpsc::Sender<Job>,
}

impl WriterHandle {
    /// Runs `f` on the writer and answers once its effect is on disk.
    pub async fn submit<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |writer| {
            let outcome = f(writer);
            Box::new(move |flushed| {
                let result = match (outcome, flushed) {
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(e)) => Err(Error::Unavailable(format!(
                        "write could not be made durable: {e}"
                    ))),
                    (Ok(v), Ok(())) => Ok(v),
                };
                // The caller may have gone away; the write stands regardless.
                let _ = tx.send(result);
            })
        });
        let closed = || Error::Unavailable("the store is closed (server shutting down)".into());
        self.jobs.send(job).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Stops the writer after the jobs already queued; returns once it has
    /// flushed and let go of the store.
    pub async fn close(&self, thread: std::thread::JoinHandle<()>) {
        let _ = self
            .submit(|w| {
                w.closing = true;
                Ok(())
            })
            .await;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

impl Writer {
    /// Starts the writer thread; returns its handle, the thread, and a
    /// receiver of the durable head sequence.
    pub fn spawn(
        db: sled::Db,
        head: u64,
    ) -> std::io::Result<(WriterHandle, std::thread::JoinHandle<()>, watch::Receiver<u64>)> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(1024);
        let (durable_tx, durable_rx) = watch::channel(head);
        let writer = Writer {
            db,
            head,
            durable_head: durable_tx,
            closing: false,
        };
        let thread = std::thread::Builder::new()
            .name("tradewatch-writer".into())
            .spawn(move || writer.run(jobs_rx))?;
        Ok((WriterHandle { jobs: jobs_tx }, thread, durable_rx))
    }

    fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        while let Some(job) = jobs.blocking_recv() {
            let mut replies = vec![job(&mut self)];
            while replies.len() < MAX_GROUP {
                match jobs.try_recv() {
                    Ok(job) => replies.push(job(&mut self)),
                    Err(_) => break,
                }
            }
            let flushed = self.db.flush().map(drop).map_err(|e| e.to_string());
            if let Err(e) = &flushed {
                tracing::error!(error = %e, "flush failed");
            } else {
                self.durable_head.send_replace(self.head);
            }
            for reply in replies {
                reply(flushed.clone());
            }
            if self.closing {
                break;
            }
        }
        tracing::debug!("writer stopped");
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>> {
        Ok(self.db.get(key)?)
    }

    /// A stored record's value in nanos.
    fn value_of(&self, key: &RecordKey) -> Result<Option<i128>> {
        let k = keys::record_key(key);
        self.db
            .get(k)?
            .map(|v| codec::decode_record(&k, &v).map(|r| r.record.value().nanos()))
            .transpose()
    }

    /// Writes record changes with their events in one atomic batch, together
    /// with `extra` writes (e.g. a group). Returns the sequence numbers
    /// assigned, if any event was produced.
    pub fn commit(
        &mut self,
        changes: &[Change],
        mut batch: sled::Batch,
        now: Timestamp,
    ) -> Result<Option<SequenceRange>> {
        let first = self.head + 1;
        let mut next = first;
        let mut rollups = RollupDeltas::default();
        // Records as this write leaves them so far, for rollups that look at
        // a record's siblings.
        let mut written: HashMap<RecordKey, Option<i128>> = HashMap::new();
        for change in changes {
            rollups.add_change(change, |k| match written.get(k) {
                Some(v) => Ok(*v),
                None => self.value_of(k),
            })?;
            written.insert(
                change.key,
                change.after.as_ref().map(|r| r.record.value().nanos()),
            );
            let key = keys::record_key(&change.key);
            let after = change.after.as_ref().map(codec::encode_record);
            match &after {
                Some(value) => batch.insert(&key, value.encode_to_vec()),
                None => batch.remove(&key),
            }
            let event = EventValue {
                time: Some(now),
                kind: Some(EventKind::RecordStored(RecordStoredValue {
                    key: key.to_vec(),
                    before: change.before.as_ref().map(codec::encode_record),
                    after,
                })),
            };
            batch.insert(&keys::event_key(next), event.encode_to_vec());
            next += 1;
        }
        rollups.write_into(&mut batch, &self.db)?;
        let last = next - 1;
        if last >= first {
            batch.insert(keys::META_HEAD_SEQUENCE, &last.to_be_bytes());
        }
        self.db.apply_batch(batch)?;
        self.head = last;
        Ok((last >= first).then_some(SequenceRange { first, last }))
    }
}
