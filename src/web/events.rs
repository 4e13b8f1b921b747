//! The event log as Server-Sent Events: a subscription (`crate::stream`,
//! the same one `Subscribe` runs) written as an `text/event-stream`.
//!
//! Each event is sent with `id:` = its sequence, so a reconnecting
//! `EventSource` sends `Last-Event-ID` and resumes right after it: no gap,
//! no duplicate. Progress is sent as `event: progress` with the id of the
//! last sequence considered, so that a filtered stream resumes past the
//! events it skipped too.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::json;
use crate::error::Result;
use crate::store::Store;
use crate::stream::{self, Message};

/// How long a browser waits before reconnecting (milliseconds).
const RETRY_MS: u32 = 1000;

/// The stream from `from` (0: from now on), milestones only or every event.
/// Ends when `stop` is cancelled or the store fails (after a `failure`
/// event); the browser then reconnects from its last id.
pub fn stream(
    store: Arc<Store>,
    from: u64,
    milestones_only: bool,
    stop: CancellationToken,
) -> Result<impl Stream<Item = Bytes> + Send + 'static> {
    // 1 is the start of the log, as in ListEvents, even once retention
    // has trimmed it.
    let from = if from == 1 {
        store.oldest_sequence().max(1)
    } else {
        from
    };
    let wanted = move |event: &crate::domain::Event| !milestones_only || event.kind.watch_id().is_some();
    let heads = stream::Heads::follow(&store, stop);
    let messages = stream::subscribe(store, &heads, from, wanted)?;
    let retry = Bytes::from(format!("retry: {RETRY_MS}\n\n"));
    let frames = messages.map(|message| Bytes::from(frame(message)));
    Ok(tokio_stream::once(retry).chain(frames))
}

/// One message of the subscription as an SSE frame.
fn frame(message: Result<Message>) -> String {
    match message {
        Ok(Message::Event(event)) => {
            match crate::api::event_to_pb(&event)
                .map_err(|e| e.to_string())
                .and_then(|e| json::event(&e))
            {
                Ok(object) => sse(Some(event.sequence), None, &serde_json::Value::Object(object)),
                Err(message) => failure(&message),
            }
        }
        Ok(Message::Progress { head, next }) => sse(
            Some(next.saturating_sub(1)),
            Some("progress"),
            &serde_json::json!({ "head_sequence": head, "next_sequence": next }),
        ),
        Ok(Message::CaughtUp { head }) => sse(
            None,
            Some("caught_up"),
            &serde_json::json!({ "head_sequence": head }),
        ),
        Err(e) => failure(&e.to_string()),
    }
}

fn failure(message: &str) -> String {
    sse(None, Some("failure"), &serde_json::json!({ "message": message }))
}

/// `id:`, `event:` and one `data:` line (JSON never holds a raw newline).
fn sse(id: Option<u64>, event: Option<&str>, data: &serde_json::Value) -> String {
    let mut out = String::new();
    if let Some(id) = id {
        let _ = writeln!(out, "id: {id}");
    }
    if let Some(event) = event {
        let _ = writeln!(out, "event: {event}");
    }
    let _ = write!(out, "data: {data}\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_carries_the_last_sequence_considered() {
        let text = frame(Ok(Message::Progress { head: 19, next: 20 }));
        assert_eq!(
            text,
            "id: 19\nevent: progress\ndata: {\"head_sequence\":19,\"next_sequence\":20}\n\n"
        );
        let text = frame(Ok(Message::CaughtUp { head: 19 }));
        assert_eq!(text, "event: caught_up\ndata: {\"head_sequence\":19}\n\n");
    }

    #[test]
    fn a_failure_is_a_failure_event() {
        let text = frame(Err(crate::error::Error::EventsTrimmed {
            requested: 3,
            oldest: 9,
        }));
        assert!(
            text.starts_with("event: failure\ndata: {\"message\":\"events before sequence 9"),
            "{text}"
        );
    }
}
