//! Idempotent writes (AIP-155). A write that carries a request id stores,
//! in the same atomic batch as its effect, the id, a fingerprint of the
//! request and its outcome; a retry with the same id finds them and gets the
//! first outcome back without writing anything (the decision is
//! `crate::core`'s; this is how entries are stored). Entries are kept for a
//! day after their write, across restarts.

use prost::Message;
use prost_types::Timestamp;

use super::codec::{self, GroupValue, RecordValue, WatchValue};
use super::keys;
use super::watches;
use crate::core::StoredRequest;
use crate::domain::{
    Action, GroupName, GroupWritten, Outcome, PartnerGroup, PutOutcome, RecordDeleted, RecordKey, RequestId,
    RequestTag, SequenceRange, WatchId, WatchWritten, WriteOutcome,
};
use crate::error::{Error, Result};

/// `q` + request id: the request's fingerprint, time and outcome.
pub const NS_REQUEST: u8 = b'q';
/// `Q` + seconds of the write (u64 BE) + request id: the expiry index.
pub const NS_REQUEST_EXPIRY: u8 = b'Q';
/// Most expired ids one write removes.
const MAX_EXPIRE: usize = 1_000;

#[derive(Clone, PartialEq, Message)]
struct RequestValue {
    #[prost(bytes = "vec", tag = "1")]
    fingerprint: Vec<u8>,
    #[prost(message, optional, tag = "2")]
    written_at: Option<Timestamp>,
    /// The outcome, encoded as its kind is (see [`encode_outcome`]).
    #[prost(bytes = "vec", tag = "3")]
    outcome: Vec<u8>,
    /// The command log position of the write.
    #[prost(uint64, tag = "4")]
    log_position: u64,
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

/// The write made under `id`, its outcome read as `action`'s kind of
/// outcome (an id used by another kind of write has another fingerprint,
/// so its outcome is never read).
pub fn lookup(
    db: &sled::Db,
    id: &RequestId,
    fingerprint: &[u8; 16],
    action: &Action,
    groups: impl FnOnce() -> Result<std::collections::BTreeMap<GroupName, PartnerGroup>>,
) -> Result<Option<StoredRequest>> {
    let Some(bytes) = db.get(request_key(id))? else {
        return Ok(None);
    };
    let entry =
        RequestValue::decode(bytes.as_ref()).map_err(|e| Error::Corrupt(format!("request {id}: {e}")))?;
    let stored: [u8; 16] = entry
        .fingerprint
        .as_slice()
        .try_into()
        .map_err(|_| Error::Corrupt(format!("request {id}: fingerprint")))?;
    let written_at = entry.written_at.unwrap_or_default();
    let outcome = (&stored == fingerprint)
        .then(|| decode_outcome(&entry.outcome, action, groups))
        .transpose()?;
    Ok(Some(StoredRequest {
        fingerprint: stored,
        written_at,
        position: entry.log_position,
        outcome,
    }))
}

/// Adds the entry for `tag` and its outcome to `batch`, replacing an
/// expired one, and removes entries that have expired by `now`.
pub fn stage(
    db: &sled::Db,
    batch: &mut sled::Batch,
    (tag, position): (&RequestTag, u64),
    outcome: &Outcome,
    now: Timestamp,
    retain_secs: i64,
) -> Result<()> {
    if let Some(old) = db.get(request_key(&tag.id))?
        && let Ok(old) = RequestValue::decode(old.as_ref())
    {
        batch.remove(expiry_key(old.written_at.unwrap_or_default().seconds, &tag.id));
    }
    let value = RequestValue {
        fingerprint: tag.fingerprint.to_vec(),
        written_at: Some(now),
        outcome: encode_outcome(outcome),
        log_position: position,
    };
    batch.insert(request_key(&tag.id), value.encode_to_vec());
    batch.insert(expiry_key(now.seconds, &tag.id), &[]);
    expire(db, batch, now, retain_secs)
}

/// Removes up to [`MAX_EXPIRE`] entries written `retain_secs` or more
/// before `now`. Only writes that carry an id call it, so entries cost
/// nothing to writes without one and never pile up.
fn expire(db: &sled::Db, batch: &mut sled::Batch, now: Timestamp, retain_secs: i64) -> Result<()> {
    let secs = u64::try_from(now.seconds - retain_secs + 1).unwrap_or(0);
    let cutoff = [&[NS_REQUEST_EXPIRY][..], &secs.to_be_bytes()].concat();
    for entry in db.range(vec![NS_REQUEST_EXPIRY]..cutoff).take(MAX_EXPIRE) {
        let (k, _) = entry?;
        batch.remove(k.as_ref());
        batch.remove([&[NS_REQUEST][..], &k[9..]].concat());
    }
    Ok(())
}

fn encode_outcome(outcome: &Outcome) -> Vec<u8> {
    match outcome {
        Outcome::Put(o) => encode_put(o),
        Outcome::RecordDeleted(o) => encode_deleted(o),
        Outcome::Group(o) => encode_group(o),
        Outcome::Watch(o) => encode_watch(o),
    }
}

/// Outcomes are stored without a tag of their kind: the command retried
/// says which kind it is.
fn decode_outcome(
    bytes: &[u8],
    action: &Action,
    groups: impl FnOnce() -> Result<std::collections::BTreeMap<GroupName, PartnerGroup>>,
) -> Result<Outcome> {
    Ok(match action {
        Action::PutRecords(_) => Outcome::Put(decode_put(bytes)?),
        Action::DeleteRecord(_) => Outcome::RecordDeleted(decode_deleted(bytes)?),
        Action::PutGroup(_) | Action::DeleteGroup(_) => Outcome::Group(decode_group(bytes)?),
        Action::CreateWatch(_) | Action::DeleteWatch(_) => Outcome::Watch(decode_watch(bytes, groups()?)?),
    })
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

fn encode_put(put: &PutOutcome) -> Vec<u8> {
    let code = |o: &WriteOutcome| match o {
        WriteOutcome::Created => 1,
        WriteOutcome::Revised => 2,
        WriteOutcome::Unchanged => 3,
    };
    PutOutcomeValue {
        keys: put
            .results
            .iter()
            .map(|(k, _, _)| keys::record_key(k).to_vec())
            .collect(),
        outcomes: put.results.iter().map(|(_, o, _)| code(o)).collect(),
        revisions: put.results.iter().map(|(_, _, r)| *r).collect(),
        first_sequence: put.sequences.map_or(0, |s| s.first),
        last_sequence: put.sequences.map_or(0, |s| s.last),
    }
    .encode_to_vec()
}

fn decode_put(bytes: &[u8]) -> Result<PutOutcome> {
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
    Ok(PutOutcome {
        results,
        sequences: sequences_from(v.first_sequence, v.last_sequence),
    })
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

fn encode_deleted(deleted: &RecordDeleted) -> Vec<u8> {
    RecordDeletedValue {
        key: keys::record_key(&deleted.record.record.key).to_vec(),
        record: Some(codec::encode_record(&deleted.record)),
        sequence: deleted.sequence,
    }
    .encode_to_vec()
}

fn decode_deleted(bytes: &[u8]) -> Result<RecordDeleted> {
    let v = RecordDeletedValue::decode(bytes).map_err(|e| corrupt("a delete", e))?;
    let key: RecordKey = keys::decode_record_key(&v.key)?;
    Ok(RecordDeleted {
        record: codec::record_from_value(key, v.record.unwrap_or_default()),
        sequence: v.sequence,
    })
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

fn encode_group(written: &GroupWritten) -> Vec<u8> {
    GroupWrittenValue {
        key: keys::group_key(&written.group.name),
        group: Some(codec::encode_group(&written.group, written.updated_at)),
        first_sequence: written.sequences.map_or(0, |s| s.first),
        last_sequence: written.sequences.map_or(0, |s| s.last),
    }
    .encode_to_vec()
}

fn decode_group(bytes: &[u8]) -> Result<GroupWritten> {
    let v = GroupWrittenValue::decode(bytes).map_err(|e| corrupt("a group write", e))?;
    let (group, updated_at) = codec::decode_group(&v.key, &v.group.unwrap_or_default().encode_to_vec())?;
    Ok(GroupWritten {
        group,
        updated_at,
        sequences: sequences_from(v.first_sequence, v.last_sequence),
    })
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

fn encode_watch(written: &WatchWritten) -> Vec<u8> {
    WatchWrittenValue {
        id: written.def.id.to_string(),
        watch: Some(watches::encode_watch(&written.def, written.created_at)),
        first_sequence: written.sequences.map_or(0, |s| s.first),
        last_sequence: written.sequences.map_or(0, |s| s.last),
    }
    .encode_to_vec()
}

/// The watch's groups are expanded as they are now: only its parties as
/// named reach the response.
fn decode_watch(
    bytes: &[u8],
    mut groups: std::collections::BTreeMap<GroupName, PartnerGroup>,
) -> Result<WatchWritten> {
    let v = WatchWrittenValue::decode(bytes).map_err(|e| corrupt("a watch write", e))?;
    let id = WatchId::parse(&v.id).map_err(|e| corrupt("a watch write", e))?;
    let value = v.watch.unwrap_or_default();
    // A group the watch named may be gone since (with the watch).
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
