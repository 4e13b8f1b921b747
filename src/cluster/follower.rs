//! Following the log: consume the stream in order from the position after
//! the last applied, apply each command at its position, hand its outcome
//! to the writes waiting for it. A command this node cannot apply stops
//! the following — after a pause it starts again from the same position,
//! never past it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{Node, Standing, snapshots};
use crate::domain::RequestTag;
use crate::store::{Position, Refusal, Reply, command_codec};

/// Commands queued to the store ahead of the one being answered.
const IN_FLIGHT: usize = 256;
/// A consumer that delivers nothing this long while the log has more is
/// taken for lost (its server died: the client library notices only after
/// two missed 15 s heartbeats) and replaced.
const STALL: Duration = Duration::from_secs(2);
/// Pauses before following again after a failure: from the first to the
/// last, doubling after each halt (a command this node cannot apply); after
/// a failure of the log (an election, a lost connection) always the first,
/// so that following resumes as soon as the stream answers again.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_LAST: Duration = Duration::from_secs(5);

/// Why following stopped.
enum Stop {
    /// Asked to.
    Asked,
    /// NATS or the stream failed us; following again will do.
    Log(String),
    /// A command this node cannot apply.
    Halt(String),
}

/// Follows the log until `stop`, starting again after each failure.
pub async fn run(node: &Arc<Node>, stop: &CancellationToken) {
    let mut pause = RETRY_FIRST;
    loop {
        let applied = node.store.log_position();
        let stopped = follow(node, stop).await;
        match stopped {
            Stop::Asked => return,
            Stop::Log(reason) => {
                tracing::warn!(%reason, "following the command log failed; following again");
                node.standing.send_replace(Standing::Connecting);
                pause = RETRY_FIRST;
            }
            Stop::Halt(reason) => {
                tracing::error!(%reason, "cannot apply the command log; retrying from the same position");
                node.standing.send_replace(Standing::Halted(reason));
            }
        }
        if node.store.log_position() > applied {
            pause = RETRY_FIRST;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        if matches!(*node.standing.borrow(), Standing::Halted(_)) {
            pause = (pause * 2).min(RETRY_LAST);
        }
    }
}

/// One run of following: from the position after the store's last, until
/// something stops it. Returns after every command it queued is answered.
async fn follow(node: &Arc<Node>, stop: &CancellationToken) -> Stop {
    let start = node.store.log_position() + 1;
    let messages = async {
        let mut stream = node.js.get_stream(&node.config.stream).await?;
        let last = stream.info().await?.state.last_sequence;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: node.config.subject(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await?;
        let messages = consumer.messages().await?;
        Ok::<_, async_nats::Error>((last, messages))
    };
    let (last, mut messages) = match messages.await {
        Ok(found) => found,
        Err(e) => return Stop::Log(e.to_string()),
    };
    node.log_head
        .fetch_max(last, std::sync::atomic::Ordering::Relaxed);
    // A node halted on a command stays so until it gets past it (below),
    // rather than serve for a moment at each new try.
    node.standing.send_if_modified(|standing| {
        if matches!(standing, Standing::Halted(_)) {
            return false;
        }
        *standing = if start > last {
            Standing::Following
        } else {
            Standing::CatchingUp { target: last }
        };
        true
    });

    let (queued_tx, queued_rx) = mpsc::channel(IN_FLIGHT);
    let (halt_tx, mut halt_rx) = oneshot::channel();
    let answering = tokio::spawn(answer(node.clone(), queued_rx, halt_tx));
    // The last position received, and since when the log is known to
    // have more.
    let mut received = start - 1;
    let mut behind_since = None;
    let mut stall_check = tokio::time::interval(STALL / 4);
    let stopped = loop {
        let message = tokio::select! {
            () = stop.cancelled() => break Stop::Asked,
            halt = &mut halt_rx => break halt.map_or(Stop::Asked, Stop::Halt),
            message = messages.next() => message,
            _ = stall_check.tick() => {
                let behind = node.log_head.load(std::sync::atomic::Ordering::Relaxed) > received;
                let since = behind.then(|| *behind_since.get_or_insert_with(tokio::time::Instant::now));
                behind_since = since;
                if since.is_some_and(|since| since.elapsed() > STALL) {
                    break Stop::Log(format!(
                        "no command from the log for {STALL:?} while it has more than position {received}"
                    ));
                }
                continue;
            }
        };
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(e)) => break Stop::Log(e.to_string()),
            None => break Stop::Log("the stream's consumer ended".into()),
        };
        let position = match message.info() {
            Ok(info) => info.stream_sequence,
            Err(e) => break Stop::Log(format!("a message without its position: {e}")),
        };
        (received, behind_since) = (position, None);
        let command = match command_codec::decode(&message.payload) {
            Ok(command) => command,
            Err(e) => break Stop::Halt(format!("the command at log position {position}: {e}")),
        };
        let tag = command.request.clone();
        let snapshot = node.config.snapshot_every > 0 && position % node.config.snapshot_every == 0;
        let reply = match node.store.queue(command, Position::Logged(position)).await {
            Ok(reply) => reply,
            Err(e) => break Stop::Halt(format!("queueing the command at log position {position}: {e}")),
        };
        if queued_tx.send((position, tag, Box::pin(reply))).await.is_err() {
            break halt_rx.await.map_or(Stop::Asked, Stop::Halt);
        }
        if snapshot {
            snapshots::take(node, position).await;
        }
    };
    drop(queued_tx);
    let _ = answering.await;
    stopped
}

type Queued = (
    u64,
    Option<RequestTag>,
    std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send>>,
);

/// Answers the queued commands in log order; at the first this node could
/// not apply, says why on `halt` and stops (the writer refuses every one
/// after it, which is out of order then).
async fn answer(node: Arc<Node>, mut queued: mpsc::Receiver<Queued>, halt: oneshot::Sender<String>) {
    while let Some((position, tag, reply)) = queued.recv().await {
        let result = match reply.await {
            Ok(applied) => Ok(applied.outcome),
            Err(Refusal::Rejected(e)) => Err(e),
            Err(Refusal::Failed(e)) => {
                let _ = halt.send(format!("applying the command at log position {position}: {e}"));
                return;
            }
        };
        node.handled(position, tag.as_ref(), result);
        node.store.metrics().log_applied(position);
        node.standing.send_if_modified(|standing| match standing {
            Standing::CatchingUp { target } if position >= *target => {
                tracing::info!(position, "caught up with the command log");
                *standing = Standing::Following;
                true
            }
            Standing::Connecting | Standing::Halted(_) => {
                let head = node.log_head.load(std::sync::atomic::Ordering::Relaxed);
                *standing = if position >= head {
                    Standing::Following
                } else {
                    Standing::CatchingUp { target: head }
                };
                true
            }
            _ => false,
        });
    }
}
