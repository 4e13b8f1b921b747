//! Subscriptions: replay from the stored log, then follow it live.
//!
//! A subscription is a stream that reads the durable event log at its own
//! pace, polled by the connection that sends its messages: it reads only
//! when the client has room for more, and waits for the durable head to
//! move when it has sent everything. A slow subscriber therefore never
//! slows a writer, holds at most one chunk of the log in memory, and cannot
//! miss an event: whatever it has not read yet is still in the log.
//!
//! There is no task or channel per subscriber: with 10,000 subscribers,
//! each new event costs 10,000 polls of these streams and nothing else
//! (see `RecentEvents` for how the event itself is shared). The
//! subscriptions of one gRPC connection are all polled by its task, which
//! waits for the head to move once for all of them ([`Relay`]).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::watch;
use tokio_stream::Stream;
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::CancellationToken;

use crate::domain::Event;
use crate::error::{Error, Result};
use crate::metrics::SubscriberPosition;
use crate::store::Store;

/// How often an idle subscriber hears the head sequence: a subscription
/// that sent nothing for a tick of this clock sends a `Progress` at the
/// next one.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Events read from the log at a time.
const READ_CHUNK: usize = 256;

/// What every subscription waits for, in one value: the durable head and a
/// clock for `Progress`.
#[derive(Debug, Clone, Copy)]
struct Beat {
    head: u64,
    tick: u64,
}

/// The durable head and the progress clock, as the subscriptions of one
/// server watch them. One task follows the store's head for all of them and
/// stops at shutdown; the channel then closes, and that ends every
/// subscription. An idle subscription waits on this alone (one
/// registration, not one per thing waited for), or on nothing when a
/// [`Relay`] waits for it.
#[derive(Debug, Clone)]
pub struct Heads(watch::Receiver<Beat>);

impl Heads {
    /// Follows `store` until `shutdown` (or until the store closes). Must
    /// be called within the runtime.
    pub fn follow(store: &Store, shutdown: CancellationToken) -> Heads {
        let mut head_rx = store.subscribe_head();
        let head = *head_rx.borrow_and_update();
        let (tx, rx) = watch::channel(Beat { head, tick: 0 });
        tokio::spawn(async move {
            let start = tokio::time::Instant::now() + PROGRESS_EVERY;
            let mut clock = tokio::time::interval_at(start, PROGRESS_EVERY);
            loop {
                tokio::select! {
                    changed = head_rx.changed() => {
                        if changed.is_err() {
                            break; // the store closed
                        }
                        let head = *head_rx.borrow_and_update();
                        tx.send_modify(|beat| beat.head = head);
                    }
                    _ = clock.tick() => tx.send_modify(|beat| beat.tick += 1),
                    () = shutdown.cancelled() => break,
                }
            }
        });
        Heads(rx)
    }
}

/// The beat passed on by one task to the subscriptions that it alone
/// polls, so that they wait on nothing themselves: the task waits for
/// [`Heads`] to move once ([`Relay::poll`]) and then polls them all. With
/// 10,000 subscribers on 100 connections an event costs 100 registrations
/// and wakeups instead of 10,000.
pub struct Relay {
    beats: WatchStream<Beat>,
    relayed: RelayedBeat,
}

/// The beat as a [`Relay`] last passed it on; what a subscription opened
/// with [`subscribe_relayed`] reads instead of waiting.
#[derive(Debug, Clone)]
pub struct RelayedBeat(Arc<RelayedState>);

#[derive(Debug)]
struct RelayedState {
    head: AtomicU64,
    tick: AtomicU64,
    closed: AtomicBool,
}

impl Heads {
    /// A relay of these heads for the subscriptions one task polls.
    pub fn relay(&self) -> Relay {
        let mut beats = self.0.clone();
        let beat = *beats.borrow_and_update();
        Relay {
            beats: WatchStream::from_changes(beats),
            relayed: RelayedBeat(Arc::new(RelayedState {
                head: AtomicU64::new(beat.head),
                tick: AtomicU64::new(beat.tick),
                closed: AtomicBool::new(false),
            })),
        }
    }
}

impl Relay {
    /// Takes in the newest beat and registers the calling task to be woken
    /// at the next; the task must then poll every subscription it relays to.
    pub fn poll(&mut self, cx: &mut Context<'_>) {
        let state = &self.relayed.0;
        while let Poll::Ready(beat) = Pin::new(&mut self.beats).poll_next(cx) {
            match beat {
                Some(beat) => {
                    state.head.fetch_max(beat.head, Ordering::Relaxed);
                    state.tick.fetch_max(beat.tick, Ordering::Relaxed);
                }
                None => {
                    state.closed.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
    }

    /// What the subscriptions opened with [`subscribe_relayed`] read.
    pub fn relayed(&self) -> RelayedBeat {
        self.relayed.clone()
    }
}

impl RelayedBeat {
    /// The beat now, or `None` once the heads have stopped.
    fn get(&self) -> Option<Beat> {
        let state = &self.0;
        if state.closed.load(Ordering::Relaxed) {
            return None;
        }
        Some(Beat {
            head: state.head.load(Ordering::Relaxed),
            tick: state.tick.load(Ordering::Relaxed),
        })
    }
}

/// Where a subscription learns that the head moved or the clock ticked.
enum Beats {
    /// It waits on the heads itself.
    Own(WatchStream<Beat>),
    /// A [`Relay`] waits for it and has it polled.
    Relayed(RelayedBeat),
}

/// What a subscription sends, in order.
#[derive(Debug, Clone)]
pub enum Message {
    Event(Arc<Event>),
    CaughtUp { head: u64 },
    Progress { head: u64, next: u64 },
}

/// Which events a subscription sends.
type Wanted = Box<dyn Fn(&Event) -> bool + Send>;

/// Starts a subscription from `from` (0: after the current head); `wanted`
/// filters events. The stream only ends when `heads` stops (shutdown, or
/// the store closed), the store fails (after an `Err`), or it is dropped
/// (the client went away); the caller must then end the client's stream
/// with an error (never OK), so the client knows to resume.
pub fn subscribe(
    store: Arc<Store>,
    heads: &Heads,
    from: u64,
    wanted: impl Fn(&Event) -> bool + Send + 'static,
) -> Result<Subscription> {
    let mut beats = heads.0.clone();
    let beat = *beats.borrow_and_update();
    open(
        store,
        Beats::Own(WatchStream::from_changes(beats)),
        beat,
        from,
        Box::new(wanted),
    )
}

/// As [`subscribe`], for a subscription that only the task holding the
/// [`Relay`] of `relayed` polls: it waits on nothing and is never woken by
/// the heads itself (polled by another task, it would stall).
pub fn subscribe_relayed(
    store: Arc<Store>,
    relayed: &RelayedBeat,
    from: u64,
    wanted: impl Fn(&Event) -> bool + Send + 'static,
) -> Result<Subscription> {
    // A relay that has stopped ends the stream at its first poll.
    let beat = relayed.get().unwrap_or(Beat { head: 0, tick: 0 });
    open(
        store,
        Beats::Relayed(relayed.clone()),
        beat,
        from,
        Box::new(wanted),
    )
}

fn open(store: Arc<Store>, beats: Beats, beat: Beat, from: u64, wanted: Wanted) -> Result<Subscription> {
    // The store's own head may be a moment ahead of the one `heads` has
    // passed on.
    let head = store.durable_head().max(beat.head);
    let oldest = store.oldest_sequence();
    if from != 0 && from < oldest {
        return Err(Error::EventsTrimmed {
            requested: from,
            oldest,
        });
    }
    let next = if from == 0 { head + 1 } else { from };
    // Counts in the subscriber gauges for as long as the stream lives.
    let position = store.metrics().subscriber(store.subscribe_head(), next - 1);
    Ok(Subscription {
        store,
        wanted,
        head,
        next,
        beats,
        tick: beat.tick,
        chunk: VecDeque::new(),
        opened: false,
        caught_up: false,
        sent: 0,
        sent_by_last_tick: 0,
        ended: false,
        position,
    })
}

/// The messages of one subscription (see [`subscribe`]).
pub struct Subscription {
    store: Arc<Store>,
    wanted: Wanted,
    /// The durable head as last seen.
    head: u64,
    /// The sequence to consider next.
    next: u64,
    /// Each move of the durable head or the progress clock.
    beats: Beats,
    /// The progress clock as last seen.
    tick: u64,
    /// Events read from the log and not considered yet.
    chunk: VecDeque<Arc<Event>>,
    /// The opening `Progress` has been sent.
    opened: bool,
    caught_up: bool,
    /// Events and catch-up marks sent, and sent by the last tick of the
    /// progress clock.
    sent: u64,
    sent_by_last_tick: u64,
    ended: bool,
    position: SubscriberPosition,
}

impl Subscription {
    fn send(&mut self, message: Message) -> Poll<Option<Result<Message>>> {
        if !matches!(message, Message::Progress { .. }) {
            self.sent += 1;
        }
        Poll::Ready(Some(Ok(message)))
    }

    fn end(&mut self, last: Option<Error>) -> Poll<Option<Result<Message>>> {
        self.ended = true;
        Poll::Ready(last.map(Err))
    }

    /// The beat, if it moved since it was last seen; `None` once the heads
    /// have stopped.
    fn poll_beat(&mut self, cx: &mut Context<'_>) -> Poll<Option<Beat>> {
        match &mut self.beats {
            Beats::Own(beats) => Pin::new(beats).poll_next(cx),
            Beats::Relayed(relayed) => match relayed.get() {
                None => Poll::Ready(None),
                Some(beat) if beat.head > self.head || beat.tick > self.tick => Poll::Ready(Some(beat)),
                Some(_) => Poll::Pending,
            },
        }
    }
}

impl Stream for Subscription {
    type Item = Result<Message>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return this.end(None);
        }
        if !this.opened {
            this.opened = true;
            let (head, next) = (this.head, this.next);
            return this.send(Message::Progress { head, next });
        }
        loop {
            while let Some(event) = this.chunk.pop_front() {
                let sequence = event.sequence;
                this.next = sequence + 1;
                this.position.delivered(sequence);
                if (this.wanted)(&event) {
                    return this.send(Message::Event(event));
                }
            }
            if this.next <= this.head {
                // Retention may have trimmed events this subscriber had not
                // read yet: it is told so rather than skip them.
                match this
                    .store
                    .read_log_into(this.next, this.head, READ_CHUNK, &mut this.chunk)
                {
                    Ok(()) if !this.chunk.is_empty() => continue,
                    Ok(()) => {}
                    Err(e) => return this.end(Some(e)),
                }
            }
            if !this.caught_up {
                this.caught_up = true;
                return this.send(Message::CaughtUp { head: this.head });
            }
            match this.poll_beat(cx) {
                Poll::Ready(Some(beat)) => {
                    this.head = this.head.max(beat.head);
                    if beat.tick != this.tick {
                        this.tick = beat.tick;
                        // Nothing but progress sent for a whole tick: idle.
                        let idle = this.sent == this.sent_by_last_tick;
                        this.sent_by_last_tick = this.sent;
                        if idle && this.next > this.head {
                            let (head, next) = (this.head, this.next);
                            return this.send(Message::Progress { head, next });
                        }
                    }
                    continue;
                }
                // Shutdown, or the store closed.
                Poll::Ready(None) => return this.end(None),
                Poll::Pending => {}
            }
            return Poll::Pending;
        }
    }
}
