//! `tradewatch.v1.TradeService`.

use std::sync::Arc;

use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::pb::{self, trade_service_server::TradeService};
use crate::query::ResolvedSelector;
use crate::store::{PutOutcome, Store};

/// Records per page when the caller does not say.
const DEFAULT_PAGE_SIZE: usize = 100;
/// Rejections an ingest summary lists in full.
const MAX_LISTED_REJECTIONS: usize = 100;
/// IngestRecords messages queued but not yet on disk, per stream.
const MAX_INGEST_IN_FLIGHT: usize = 8;

pub struct TradeApi {
    store: Arc<Store>,
    limits: Limits,
}

impl TradeApi {
    /// With the default [`Limits`].
    pub fn new(store: Arc<Store>) -> Self {
        TradeApi {
            store,
            limits: Limits::default(),
        }
    }

    pub fn with_limits(self, limits: Limits) -> Self {
        TradeApi { limits, ..self }
    }

    /// `RESOURCE_EXHAUSTED` for a batch of more records than the limit.
    fn check_batch(&self, records: usize, what: &str) -> Result<()> {
        let max = self.limits.max_batch_records;
        if records > max {
            return Err(Error::BatchTooLarge {
                max,
                message: format!(
                    "{what} has {records} records, more than the limit of {max} per batch \
                     (max_batch_records, --max-batch-records); split it"
                ),
            });
        }
        Ok(())
    }

    async fn put(&self, request: &pb::PutRecordsRequest) -> Result<PutOutcome> {
        self.check_batch(request.records.len(), "PutRecords")?;
        let records = convert::parse_records(&request.records)?;
        self.store.put_records(records).await
    }

    fn list(&self, request: &pb::ListRecordsRequest) -> Result<pb::ListRecordsResponse> {
        let selector = convert::parse_selector(request.selector.as_ref(), "selector")?;
        let max = self.limits.max_page_size;
        let page_size = match request.page_size as usize {
            0 => DEFAULT_PAGE_SIZE.min(max),
            n if n <= max => n,
            n => {
                return Err(Error::invalid(
                    "page_size",
                    format!("page_size {n} is above the maximum {max} (max_page_size, --max-page-size)"),
                ));
            }
        };
        let after = decode_page_token(&request.page_token)?;
        let resolved = ResolvedSelector::resolve(&self.store, selector, "selector")?;
        let page = resolved.list(&self.store, after.as_deref(), page_size)?;
        Ok(pb::ListRecordsResponse {
            records: page.records.iter().map(convert::record_to_pb).collect(),
            next_page_token: page
                .resume_after
                .map(|k| encode_page_token(&k))
                .unwrap_or_default(),
        })
    }
}

fn put_response(outcome: PutOutcome) -> pb::PutRecordsResponse {
    pb::PutRecordsResponse {
        results: outcome
            .results
            .iter()
            .map(|(key, o, revision)| pb::RecordResult {
                key: Some(convert::key_to_pb(key)),
                outcome: convert::outcome_to_pb(*o).into(),
                revision: *revision,
            })
            .collect(),
        first_sequence: outcome.sequences.map_or(0, |s| s.first),
        last_sequence: outcome.sequences.map_or(0, |s| s.last),
    }
}

/// Adds a stored batch to an ingest summary.
fn count_outcome(summary: &mut pb::IngestSummary, outcome: PutOutcome) {
    for (_, o, _) in &outcome.results {
        match o {
            crate::domain::WriteOutcome::Created => summary.created += 1,
            crate::domain::WriteOutcome::Revised => summary.revised += 1,
            crate::domain::WriteOutcome::Unchanged => summary.unchanged += 1,
        }
    }
    if let Some(s) = outcome.sequences {
        if summary.first_sequence == 0 {
            summary.first_sequence = s.first;
        }
        summary.last_sequence = s.last;
    }
}

/// Page tokens are the hex of the last key returned: opaque to callers,
/// stable across restarts.
fn encode_page_token(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_page_token(token: &str) -> Result<Option<Vec<u8>>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::invalid("page_token", "not a page token returned by ListRecords");
    if token.len() % 2 != 0 || token.len() > 128 {
        return Err(bad());
    }
    (0..token.len())
        .step_by(2)
        .map(|i| token.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .map(Some)
        .ok_or_else(bad)
}

#[tonic::async_trait]
impl TradeService for TradeApi {
    async fn put_records(
        &self,
        request: Request<pb::PutRecordsRequest>,
    ) -> Result<Response<pb::PutRecordsResponse>, Status> {
        let outcome = self.put(request.get_ref()).await?;
        Ok(Response::new(put_response(outcome)))
    }

    async fn ingest_records(
        &self,
        request: Request<Streaming<pb::PutRecordsRequest>>,
    ) -> Result<Response<pb::IngestSummary>, Status> {
        let mut stream = request.into_inner();
        let mut summary = pb::IngestSummary::default();
        // Messages are queued in order and several stay in flight, so that
        // they share flushes; each is still applied atomically.
        let mut in_flight = std::collections::VecDeque::new();
        while let Some(message) = stream.next().await {
            let message = message?;
            let index = summary.messages;
            if let Err(e) = self.check_batch(message.records.len(), &format!("message {index}")) {
                // What came before stays stored; say so once it is.
                for pending in in_flight {
                    count_outcome(&mut summary, pending.await?);
                }
                let earlier = match index {
                    1 => "1 earlier message was processed".to_owned(),
                    n => format!("{n} earlier messages were processed"),
                };
                return Err(Error::BatchTooLarge {
                    max: self.limits.max_batch_records,
                    message: format!(
                        "{e}; {earlier} ({} records created, {} revised, {} unchanged, {} rejected)",
                        summary.created, summary.revised, summary.unchanged, summary.rejected
                    ),
                }
                .into());
            }
            summary.messages += 1;
            match convert::parse_records(&message.records) {
                Ok(records) => {
                    in_flight.push_back(self.store.queue_records(records).await?);
                    if in_flight.len() > MAX_INGEST_IN_FLIGHT
                        && let Some(oldest) = in_flight.pop_front()
                    {
                        count_outcome(&mut summary, oldest.await?);
                    }
                }
                Err(Error::InvalidArgument(violations)) => {
                    summary.rejected += message.records.len() as u64;
                    if summary.rejections.len() < MAX_LISTED_REJECTIONS {
                        summary.rejections.push(pb::IngestRejection {
                            message_index: index,
                            reason: Error::InvalidArgument(violations).bounded_message(),
                        });
                    }
                }
                Err(other) => return Err(other.into()),
            }
        }
        for pending in in_flight {
            count_outcome(&mut summary, pending.await?);
        }
        Ok(Response::new(summary))
    }

    async fn get_record(&self, request: Request<pb::RecordKey>) -> Result<Response<pb::TradeRecord>, Status> {
        let key = convert::parse_key(request.get_ref())?;
        match self.store.get_record(&key)? {
            Some(stored) => Ok(Response::new(convert::record_to_pb(&stored))),
            None => Err(Error::NotFound(format!("no record {key}")).into()),
        }
    }

    async fn list_records(
        &self,
        request: Request<pb::ListRecordsRequest>,
    ) -> Result<Response<pb::ListRecordsResponse>, Status> {
        Ok(Response::new(self.list(request.get_ref())?))
    }

    async fn delete_record(
        &self,
        request: Request<pb::RecordKey>,
    ) -> Result<Response<pb::DeleteRecordResponse>, Status> {
        let key = convert::parse_key(request.get_ref())?;
        let (before, sequence) = self.store.delete_record(key).await?;
        Ok(Response::new(pb::DeleteRecordResponse {
            record: Some(convert::record_to_pb(&before)),
            sequence,
        }))
    }

    async fn aggregate(
        &self,
        request: Request<pb::AggregateRequest>,
    ) -> Result<Response<pb::AggregateResponse>, Status> {
        let request = request.get_ref();
        let question = convert::parse_aggregate(request);
        let selector = convert::parse_selector(request.selector.as_ref(), "selector");
        let (question, selector) = match (question, selector) {
            (Ok(q), Ok(s)) => (q, s),
            (Err(Error::InvalidArgument(mut a)), Err(Error::InvalidArgument(b))) => {
                a.extend(b);
                return Err(Error::InvalidArgument(a).into());
            }
            (Err(e), _) | (_, Err(e)) => return Err(e.into()),
        };
        let resolved = ResolvedSelector::resolve(&self.store, selector, "selector")?;
        let answer = crate::query::aggregate::aggregate(&self.store, &resolved, &question)?;
        Ok(Response::new(convert::aggregate_to_pb(&answer)?))
    }

    async fn put_group(
        &self,
        request: Request<pb::PutGroupRequest>,
    ) -> Result<Response<pb::PartnerGroup>, Status> {
        let group = convert::parse_group(request.get_ref().group.as_ref())?;
        let (group, updated_at, _) = self.store.put_group(group).await?;
        Ok(Response::new(convert::group_to_pb(&group, updated_at)))
    }

    async fn get_group(
        &self,
        request: Request<pb::GetGroupRequest>,
    ) -> Result<Response<pb::PartnerGroup>, Status> {
        let name = convert::parse_group_name(&request.get_ref().name, "name")?;
        match self.store.get_group(&name)? {
            Some((group, updated_at)) => Ok(Response::new(convert::group_to_pb(&group, updated_at))),
            None => Err(Error::NotFound(format!("no partner group named {name}")).into()),
        }
    }

    async fn list_groups(
        &self,
        _request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let groups = self
            .store
            .list_groups()?
            .iter()
            .map(|(g, t)| convert::group_to_pb(g, *t))
            .collect();
        Ok(Response::new(pb::ListGroupsResponse { groups }))
    }

    async fn delete_group(
        &self,
        request: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        let name = convert::parse_group_name(&request.get_ref().name, "name")?;
        let (group, updated_at) = self.store.delete_group(name).await?;
        Ok(Response::new(pb::DeleteGroupResponse {
            group: Some(convert::group_to_pb(&group, updated_at)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip() {
        let key = vec![b'r', 0, 255, 17];
        assert_eq!(decode_page_token(&encode_page_token(&key)).unwrap(), Some(key));
        assert!(decode_page_token("zz").is_err());
        assert!(decode_page_token("abc").is_err());
        assert!(decode_page_token("é1").is_err());
    }
}
