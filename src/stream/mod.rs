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

use crate::domain::Event;
use crate::error::{Error, Result};
use crate::store::Store;

/// How often an idle subscriber hears the head sequence.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Events read from the log at a time.
const READ_CHUNK: usize = 256;
/// Messages buffered per subscriber before it must read.
const OUTGOING_BUFFER: usize = 64;

/// What a subscription sends, in order.
#[derive(Debug, Clone)]
pub enum Message {
    Event(Arc<Event>),
    CaughtUp { head: u64 },
    Progress { head: u64, next: u64 },
}

/// Starts a subscription from `from` (0: after the current head) and
/// returns the receiving end. `wanted` filters events. The subscription only
/// ends when the client goes away, the server shuts down or the store fails;
/// the receiver then closes, and the caller must end the client's stream
/// with an error (never OK), so the client knows to resume.
pub fn subscribe(
    store: Arc<Store>,
    from: u64,
    wanted: impl Fn(&Event) -> bool + Send + 'static,
    shutdown: CancellationToken,
) -> Result<mpsc::Receiver<Result<Message>>> {
    let mut head_rx = store.subscribe_head();
    let head = *head_rx.borrow_and_update();
    let oldest = store.oldest_sequence();
    if from != 0 && from < oldest {
        return Err(Error::EventsTrimmed {
            requested: from,
            oldest,
        });
    }
    let mut next = if from == 0 { head + 1 } else { from };
    let (tx, rx) = mpsc::channel(OUTGOING_BUFFER);
    // Counts in the subscriber gauges for as long as the task runs.
    let position = store.metrics().subscriber(head_rx.clone(), next - 1);
    tokio::spawn(async move {
        // Gives up when the client is gone or the server shuts down, even
        // while the client is not reading.
        let send = |message: Message| {
            let (tx, shutdown) = (&tx, &shutdown);
            async move {
                tokio::select! {
                    sent = tx.send(Ok(message)) => sent.is_ok(),
                    () = shutdown.cancelled() => false,
                }
            }
        };
        if !send(Message::Progress { head, next }).await {
            return;
        }
        let mut caught_up = false;
        loop {
            let head = *head_rx.borrow_and_update();
            while next <= head {
                // Retention may have trimmed events this subscriber had not
                // read yet: it is told so rather than skip them.
                let chunk = match store.read_log(next, head, READ_CHUNK) {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        let _ = tx.try_send(Err(e));
                        return;
                    }
                };
                if chunk.is_empty() {
                    break;
                }
                for event in chunk {
                    let sequence = event.sequence;
                    next = sequence + 1;
                    if wanted(&event) && !send(Message::Event(event)).await {
                        return;
                    }
                    position.delivered(sequence);
                }
            }
            if !caught_up {
                caught_up = true;
                if !send(Message::CaughtUp { head }).await {
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
                    if !send(Message::Progress { head, next }).await {
                        return;
                    }
                }
                () = tx.closed() => return,
                () = shutdown.cancelled() => return,
            }
        }
    });
    Ok(rx)
}
