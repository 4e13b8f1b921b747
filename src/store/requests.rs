//! Idempotent writes (AIP-155). A write that carries a request id stores,
//! in the same atomic batch as its effect, the id, a fingerprint of the
//! request and its outcome; a retry with the same id finds them and gets the
//! first outcome back without writing anything. Entries are kept for
//! [`RETAIN_SECS`] after their write, across restarts.

use prost::Message;
use prost_types::Timestamp;

use super::codec::{self, GroupValue, RecordValue, WatchValue};
use super::keys;
use super::watches;
use super::writer::{SequenceRange, Writer};
use crate::domain::{
    GroupName, PartnerGroup, RecordKey, RequestId, RequestTag, StoredRecord, WatchDef, WatchId, WriteOutcome,
};
use crate::error::{Error, Result};

/// `q` + request id: the request's fingerprint, time and outcome.
pub const NS_REQUEST: u8 = b'q';
/// `Q` + seconds of the write (u64 BE) + request id: the expiry index.
pub const NS_REQUEST_EXPIRY: u8 = b'Q';
/// How long a request id is remembered: a day, far beyond any client's
/// retries (AIP-155 asks for at least ten minutes).
pub const RETAIN_SECS: i64 = 24 * 60 * 60;
/// Most expired ids one write removes.
const MAX_EXPIRE: usize = 1_000;

#[derive(Clone, PartialEq, Message)]
struct RequestValue {
    #[prost(bytes = "vec", tag = "1")]
    fingerprint: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    written_at: Option<Timestamp>,
    /// The outcome, encoded by its [`Replay`] implementation.
    #[prost(bytes = "vec", tag = "3")]
    outcome: Vec<u8>,
}

fn request_key(id: &RequestId) -> Vec<u8> {
    [&[NS_REQUEST][..], id.as_str().as_bytes()].concat()
}

fn expiry_key(secs: i64, id: &RequestId) -> Vec<u8> {
    let secs = u64::try_from(secs).unwrap_or(0);
    [
        &[NS_REQUEST_EXPIRY][..],
        &secs.to_be_bytes(),
        id.as_str().as_bytes(),
    ]
    .concat()
}

/// An outcome a retry can be answered with: stored with the request id,
/// read back in place of writing again.
pub trait Replay: Sized {
    fn encode(&self) -> Vec<u8>;
    /// Rebuilds the outcome; `w` resolves what it names (groups of a watch).
    fn decode(bytes: &[u8], w: &Writer) -> Result<Self>;
}

/// The outcome of the write `tag` names, if it was made within
/// [`RETAIN_SECS`]: `ALREADY_EXISTS` when the id was used for another
/// request.
pub fn replay<T: Replay>(w: &Writer, tag: &RequestTag, now: Timestamp) -> Result<Option<T>> {
    let Some(bytes) = w.get(&request_key(&tag.id))? else {
        return Ok(None);
    };
    let entry = RequestValue::decode(bytes.as_ref())
        .map_err(|e| Error::Corrupt(format!("request {}: {e}", tag.id)))?;
    let written_at = entry.written_at.unwrap_or_default();
    if now.seconds - written_at.seconds >= RETAIN_SECS {
        return Ok(None); // expired; its entry goes when this write replaces it
    }
    if entry.fingerprint != tag.fingerprint {
        return Err(Error::AlreadyExists(format!(
            "request_id {} was used at {} for a different request; \
             a retry must repeat the request exactly, a new request needs a new request_id",
            tag.id, written_at,
        )));
    }
    T::decode(&entry.outcome, w).map(Some)
}

/// Adds the entry for `tag` and its outcome to `batch`, replacing an
/// expired one, and removes entries that have expired by `now`.
pub fn stage<T: Replay>(
    w: &Writer,
    batch: &mut sled::Batch,
    tag: &RequestTag,
    outcome: &T,
    now: Timestamp,
) -> Result<()> {
    if let Some(old) = w.get(&request_key(&tag.id))?
        && let Ok(old) = RequestValue::decode(old.as_ref())
    {
        batch.remove(expiry_key(old.written_at.unwrap_or_default().seconds, &tag.id));
    }
    let value = RequestValue {
        fingerprint: tag.fingerprint.to_vec(),
        written_at: Some(now),
        outcome: outcome.encode(),
    };
    batch.insert(request_key(&tag.id), value.encode_to_vec());
    batch.insert(expiry_key(now.seconds, &tag.id), &[]);
    expire(w, batch, now)
}

/// Removes up to [`MAX_EXPIRE`] entries written more than [`RETAIN_SECS`]
/// before `now`. Only writes that carry an id call it, so entries cost
/// nothing to writes without one and never pile up.
fn expire(w: &Writer, batch: &mut sled::Batch, now: Timestamp) -> Result<()> {
    let secs = u64::try_from(now.seconds - RETAIN_SECS + 1).unwrap_or(0);
    let cutoff = [&[NS_REQUEST_EXPIRY][..], &secs.to_be_bytes()].concat();
    for entry in w.db.range(vec![NS_REQUEST_EXPIRY]..cutoff).take(MAX_EXPIRE) {
        let (k, _) = entry?;
        batch.remove(k.as_ref());
        batch.remove([&[NS_REQUEST][..], &k[9..]].concat());
    }
    Ok(())
}

/// Sequence numbers as stored in an outcome: 0 for none.
fn sequences_from(first: u64, last: u64) -> Option<SequenceRange> {
    (first != 0).then_some(SequenceRange { first, last })
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("stored outcome of {what}: {e}"))
}

#[derive(Clone, PartialEq, Message)]
struct PutOutcomeValue {
    /// Per record: key (store encoding), outcome (1 created, 2 revised,
    /// 3 unchanged), revision.
    #[prost(bytes = "vec", repeated, tag = "1")]
    keys: Vec<Vec<u8>>,
    #[prost(uint32, repeated, tag = "2")]
    outcomes: Vec<u32>,
    #[prost(int64, repeated, tag = "3")]
    revisions: Vec<i64>,
    #[prost(uint64, tag = "4")]
    first_sequence: u64,
    #[prost(uint64, tag = "5")]
    last_sequence: u64,
}

impl Replay for super::PutOutcome {
    fn encode(&self) -> Vec<u8> {
        let code = |o: &WriteOutcome| match o {
            WriteOutcome::Created => 1,
            WriteOutcome::Revised => 2,
            WriteOutcome::Unchanged => 3,
        };
        PutOutcomeValue {
            keys: self
                .results
                .iter()
                .map(|(k, _, _)| keys::record_key(k).to_vec())
                .collect(),
            outcomes: self.results.iter().map(|(_, o, _)| code(o)).collect(),
            revisions: self.results.iter().map(|(_, _, r)| *r).collect(),
            first_sequence: self.sequences.map_or(0, |s| s.first),
            last_sequence: self.sequences.map_or(0, |s| s.last),
        }
        .encode_to_vec()
    }

    fn decode(bytes: &[u8], _: &Writer) -> Result<Self> {
        let v = PutOutcomeValue::decode(bytes).map_err(|e| corrupt("a put", e))?;
        let results = v
            .keys
            .iter()
            .zip(&v.outcomes)
            .zip(&v.revisions)
            .map(|((k, o), r)| {
                let outcome = match o {
                    1 => WriteOutcome::Created,
                    2 => WriteOutcome::Revised,
                    3 => WriteOutcome::Unchanged,
                    _ => return Err(corrupt("a put", format!("outcome {o}"))),
                };
                Ok((keys::decode_record_key(k)?, outcome, *r))
            })
            .collect::<Result<_>>()?;
        Ok(super::PutOutcome {
            results,
            sequences: sequences_from(v.first_sequence, v.last_sequence),
        })
    }
}

/// A record deleted: as it was, and the sequence of the deletion's event.
#[derive(Debug, Clone)]
pub struct RecordDeleted {
    pub record: StoredRecord,
    pub sequence: u64,
}

#[derive(Clone, PartialEq, Message)]
struct RecordDeletedValue {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    record: Option<RecordValue>,
    #[prost(uint64, tag = "3")]
    sequence: u64,
}

impl Replay for RecordDeleted {
    fn encode(&self) -> Vec<u8> {
        RecordDeletedValue {
            key: keys::record_key(&self.record.record.key).to_vec(),
            record: Some(codec::encode_record(&self.record)),
            sequence: self.sequence,
        }
        .encode_to_vec()
    }

    fn decode(bytes: &[u8], _: &Writer) -> Result<Self> {
        let v = RecordDeletedValue::decode(bytes).map_err(|e| corrupt("a delete", e))?;
        let key: RecordKey = keys::decode_record_key(&v.key)?;
        Ok(RecordDeleted {
            record: codec::record_from_value(key, v.record.unwrap_or_default()),
            sequence: v.sequence,
        })
    }
}

/// A group as written or deleted, and the sequences of the milestone events
/// its edit caused.
#[derive(Debug, Clone)]
pub struct GroupWritten {
    pub group: PartnerGroup,
    pub updated_at: Timestamp,
    pub sequences: Option<SequenceRange>,
}

#[derive(Clone, PartialEq, Message)]
struct GroupWrittenValue {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    group: Option<GroupValue>,
    #[prost(uint64, tag = "3")]
    first_sequence: u64,
    #[prost(uint64, tag = "4")]
    last_sequence: u64,
}

impl Replay for GroupWritten {
    fn encode(&self) -> Vec<u8> {
        GroupWrittenValue {
            key: keys::group_key(&self.group.name),
            group: Some(codec::encode_group(&self.group, self.updated_at)),
            first_sequence: self.sequences.map_or(0, |s| s.first),
            last_sequence: self.sequences.map_or(0, |s| s.last),
        }
        .encode_to_vec()
    }

    fn decode(bytes: &[u8], _: &Writer) -> Result<Self> {
        let v = GroupWrittenValue::decode(bytes).map_err(|e| corrupt("a group write", e))?;
        let (group, updated_at) = codec::decode_group(&v.key, &v.group.unwrap_or_default().encode_to_vec())?;
        Ok(GroupWritten {
            group,
            updated_at,
            sequences: sequences_from(v.first_sequence, v.last_sequence),
        })
    }
}

/// A watch as created or deleted, and the sequences of the events a
/// backfill emitted.
#[derive(Debug, Clone)]
pub struct WatchWritten {
    pub def: WatchDef,
    pub created_at: Timestamp,
    pub sequences: Option<SequenceRange>,
}

#[derive(Clone, PartialEq, Message)]
struct WatchWrittenValue {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(message, optional, tag = "2")]
    watch: Option<WatchValue>,
    #[prost(uint64, tag = "3")]
    first_sequence: u64,
    #[prost(uint64, tag = "4")]
    last_sequence: u64,
}

impl Replay for WatchWritten {
    fn encode(&self) -> Vec<u8> {
        WatchWrittenValue {
            id: self.def.id.to_string(),
            watch: Some(watches::encode_watch(&self.def, self.created_at)),
            first_sequence: self.sequences.map_or(0, |s| s.first),
            last_sequence: self.sequences.map_or(0, |s| s.last),
        }
        .encode_to_vec()
    }

    /// The watch's groups are expanded as they are now: only its parties as
    /// named reach the response.
    fn decode(bytes: &[u8], w: &Writer) -> Result<Self> {
        let v = WatchWrittenValue::decode(bytes).map_err(|e| corrupt("a watch write", e))?;
        let id = WatchId::parse(&v.id).map_err(|e| corrupt("a watch write", e))?;
        let value = v.watch.unwrap_or_default();
        // A group the watch named may be gone since (with the watch).
        let mut groups = w.groups()?;
        for party in value.reporters.iter().chain(&value.partners) {
            if let Ok(name) = GroupName::parse(party) {
                groups.entry(name.clone()).or_insert_with(|| PartnerGroup {
                    name,
                    members: Default::default(),
                    description: String::new(),
                });
            }
        }
        let (def, created_at) = watches::decode_watch(id, &value, &groups)?;
        Ok(WatchWritten {
            def,
            created_at,
            sequences: sequences_from(v.first_sequence, v.last_sequence),
        })
    }
}
