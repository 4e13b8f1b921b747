//! The write core: a command applied to the store's state gives the changes
//! to make and the events they cause — and nothing else. `apply` reads the
//! state only through [`State`] and takes its time, ids and limits from the
//! command, never from a clock, a random source, a hash map's order or a
//! node's settings, so every store that applies the same commands in the
//! same order ends the same, down to the event sequence. The engine
//! (`crate::store`) reads state for it and writes the [`Effect`] in one
//! atomic batch.

mod apply;
mod state;
pub mod volume;

use std::collections::BTreeMap;

use prost_types::Timestamp;

pub use apply::{REQUEST_RETAIN_SECS, apply};
pub use state::{State, StoredRequest};

use crate::domain::{Event, GroupName, Outcome, PartnerGroup, RecordKey, StoredRecord, WatchDef, WatchId};
use crate::milestones::Series;
use volume::ChangeEffect;

/// A change to one record: the state before and after (None = absent).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub key: RecordKey,
    pub before: Option<StoredRecord>,
    pub after: Option<StoredRecord>,
}

/// A watch and the state of its series.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchRuntime {
    pub def: WatchDef,
    pub series: Series,
}

/// Every watch, by id.
pub type Watches = BTreeMap<WatchId, WatchRuntime>;

/// What becomes of one watch.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEdit {
    /// A new watch, stored with its creation time.
    Created(WatchRuntime, Timestamp),
    /// A new state of its series (and its parties expanded anew, after a
    /// group edit).
    Followed(WatchRuntime),
    Deleted(WatchId),
}

/// Everything one command changes, for the engine to write atomically.
#[derive(Debug, Clone, PartialEq)]
pub struct Effect {
    /// Record changes, in the order of the command's records.
    pub changes: Vec<Change>,
    /// What each change does to flow sums and trade volume (rollups).
    pub effects: Vec<ChangeEffect>,
    /// Groups written (with their time) or deleted (`None`).
    pub groups: Vec<(GroupName, Option<(PartnerGroup, Timestamp)>)>,
    pub watches: Vec<WatchEdit>,
    /// The number the next server-assigned watch id starts looking from.
    pub next_watch_number: Option<u64>,
    /// The events, numbered on from the state's head.
    pub events: Vec<Event>,
    pub outcome: Outcome,
    /// The command's request id was found, written at this log position,
    /// with this outcome: nothing else is written.
    pub replayed: Option<u64>,
}

impl Effect {
    fn new(outcome: Outcome) -> Effect {
        Effect {
            changes: Vec::new(),
            effects: Vec::new(),
            groups: Vec::new(),
            watches: Vec::new(),
            next_watch_number: None,
            events: Vec::new(),
            outcome,
            replayed: None,
        }
    }
}
