//! Subscriptions: replay from the stored log, then follow it live.
//!
//! Every subscriber reads the durable event log at its own pace and is woken
//! when the durable head moves. A slow subscriber therefore never slows a
//! writer, holds at most one small read and its outgoing buffer in memory,
//! and cannot miss an event: whatever it has not read yet is still in the
//! log.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::store::{EventValue, Store};

/// How often an idle subscriber hears the head sequence.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Events read from the log at a time.
const READ_CHUNK: usize = 256;
/// Messages buffered per subscriber before it must read.
const OUTGOING_BUFFER: usize = 64;

/// What a subscription sends, in order.
#[derive(Debug, Clone)]
pub enum Message {
    Event(u64, Box<EventValue>),
    CaughtUp { head: u64 },
    Progress { head: u64, next: u64 },
}

/// Starts a subscription from `from` (0: after the current head) and
/// returns the receiving end. `wanted` filters events; the stream ends with
/// UNAVAILABLE when the server shuts down.
pub fn subscribe(
    store: Arc<Store>,
    from: u64,
    wanted: impl Fn(&EventValue) -> bool + Send + 'static,
    shutdown: CancellationToken,
) -> Result<mpsc::Receiver<Result<Message>>> {
    let mut head_rx = store.subscribe_head();
    let head = *head_rx.borrow_and_update();
    let oldest = store.oldest_sequence();
    if from != 0 && from < oldest {
        return Err(Error::OutOfRange(format!(
            "sequence {from} is no longer retained; the oldest available is {oldest}"
        )));
    }
    let mut next = if from == 0 { head + 1 } else { from };
    let (tx, rx) = mpsc::channel(OUTGOING_BUFFER);
    tokio::spawn(async move {
        if tx.send(Ok(Message::Progress { head, next })).await.is_err() {
            return;
        }
        let mut caught_up = false;
        loop {
            let head = *head_rx.borrow_and_update();
            while next <= head {
                let chunk = match store.events(next, READ_CHUNK) {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                if chunk.is_empty() {
                    break;
                }
                for (sequence, event) in chunk {
                    if sequence > head {
                        break;
                    }
                    next = sequence + 1;
                    if wanted(&event)
                        && tx
                            .send(Ok(Message::Event(sequence, Box::new(event))))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
            }
            if !caught_up {
                caught_up = true;
                if tx.send(Ok(Message::CaughtUp { head })).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                changed = head_rx.changed() => {
                    if changed.is_err() {
                        return; // the store closed
                    }
                }
                () = tokio::time::sleep(PROGRESS_EVERY) => {
                    if tx.send(Ok(Message::Progress { head, next })).await.is_err() {
                        return;
                    }
                }
                () = tx.closed() => return,
                () = shutdown.cancelled() => {
                    let _ = tx.send(Err(Error::Unavailable("server shutting down; resume from the last sequence seen + 1".into()))).await;
                    return;
                }
            }
        }
    });
    Ok(rx)
}
