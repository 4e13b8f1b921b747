//! Commands: every write as a value carrying all that decides its effect —
//! what to do, the caller's request id and the time — so that applying the
//! same commands in the same order to the same state always gives the same
//! records, groups, watches and events (`crate::core::apply`).

use std::time::SystemTime;

use prost_types::Timestamp;

use super::{
    GroupName, PartnerGroup, Party, RecordKey, RequestTag, SeriesSpec, StoredRecord, TradeRecord, WatchDef,
    WatchId, WatchRules, WriteOutcome,
};

#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The caller's name for the write, which makes a retry harmless.
    pub request: Option<RequestTag>,
    /// When the write was accepted: the time of its records' revisions, its
    /// events and its request id.
    pub time: Timestamp,
    pub action: Action,
}

impl Command {
    /// A command accepted now: the one place a write's time is read.
    #[allow(clippy::disallowed_methods)]
    pub fn new(action: Action, request: Option<RequestTag>) -> Command {
        Command::at(Timestamp::from(SystemTime::now()), action, request)
    }

    pub fn at(time: Timestamp, action: Action, request: Option<RequestTag>) -> Command {
        Command {
            request,
            time,
            action,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create or revise records (distinct keys), atomically.
    PutRecords(Vec<TradeRecord>),
    DeleteRecord(RecordKey),
    /// Create or replace a group; watches naming it follow.
    PutGroup(PartnerGroup),
    DeleteGroup(GroupName),
    CreateWatch(Box<NewWatch>),
    DeleteWatch(WatchId),
}

/// A watch to create. Its parties are kept as named: groups are expanded
/// when the command is applied, against the groups as they are then.
#[derive(Debug, Clone, PartialEq)]
pub struct NewWatch {
    /// `None`: the next `w<n>`.
    pub id: Option<WatchId>,
    pub name: String,
    pub reporters: Vec<Party>,
    pub partners: Vec<Party>,
    /// The series but for its parties, which apply fills in.
    pub spec: SeriesSpec,
    pub rules: WatchRules,
    /// Also emit the milestones the data already stored implies.
    pub backfill: bool,
    /// Most watches the store may hold, as the accepting server's limit
    /// was: part of the command so that applying it never depends on a
    /// node's own settings.
    pub max_watches: usize,
}

impl NewWatch {
    /// The watch as it will be stored under `id`.
    pub fn define(&self, id: WatchId) -> WatchDef {
        WatchDef {
            id,
            name: self.name.clone(),
            reporters: self.reporters.clone(),
            partners: self.partners.clone(),
            spec: self.spec.clone(),
            rules: self.rules.clone(),
        }
    }
}

/// Sequence numbers of the events one write produced, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceRange {
    pub first: u64,
    pub last: u64,
}

/// What a command did, as its caller is answered (also on a retry).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Put(PutOutcome),
    RecordDeleted(RecordDeleted),
    /// A group written or deleted.
    Group(GroupWritten),
    /// A watch created or deleted.
    Watch(WatchWritten),
}

impl Outcome {
    pub fn into_put(self) -> crate::error::Result<PutOutcome> {
        match self {
            Outcome::Put(put) => Ok(put),
            other => Err(other.unexpected()),
        }
    }

    pub fn into_record_deleted(self) -> crate::error::Result<RecordDeleted> {
        match self {
            Outcome::RecordDeleted(deleted) => Ok(deleted),
            other => Err(other.unexpected()),
        }
    }

    pub fn into_group(self) -> crate::error::Result<GroupWritten> {
        match self {
            Outcome::Group(written) => Ok(written),
            other => Err(other.unexpected()),
        }
    }

    pub fn into_watch(self) -> crate::error::Result<WatchWritten> {
        match self {
            Outcome::Watch(written) => Ok(written),
            other => Err(other.unexpected()),
        }
    }

    /// An outcome of another kind than the command's: a bug, never a
    /// caller's mistake.
    fn unexpected(&self) -> crate::error::Error {
        crate::error::Error::Corrupt(format!(
            "a command answered with an outcome of another kind: {self:?}"
        ))
    }
}

/// The outcome of a batch of record writes.
#[derive(Debug, Clone, PartialEq)]
pub struct PutOutcome {
    /// Per record, in request order: what happened and the revision after.
    pub results: Vec<(RecordKey, WriteOutcome, i64)>,
    pub sequences: Option<SequenceRange>,
}

/// A record deleted: as it was, and the sequence of the deletion's event.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordDeleted {
    pub record: StoredRecord,
    pub sequence: u64,
}

/// A group as written or deleted, and the sequences of the milestone events
/// its edit caused.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupWritten {
    pub group: PartnerGroup,
    pub updated_at: Timestamp,
    pub sequences: Option<SequenceRange>,
}

/// A watch as created or deleted, and the sequences of the events a
/// backfill emitted.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchWritten {
    pub def: WatchDef,
    pub created_at: Timestamp,
    pub sequences: Option<SequenceRange>,
}
