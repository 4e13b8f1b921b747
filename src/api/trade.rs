//! `tradewatch.v1.TradeService`.

use std::sync::Arc;

use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::paging::Page;
use super::{convert, request_id};
use crate::domain::{Action, Command, GroupWritten, PutOutcome};
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::pb::{self, trade_service_server::TradeService};
use crate::query::ResolvedSelector;
use crate::store::{Applied, Store};
use crate::writes::Writes;
/// Rejections an ingest summary lists in full.
const MAX_LISTED_REJECTIONS: usize = 100;
/// IngestRecords messages queued but not yet on disk, per stream.
const MAX_INGEST_IN_FLIGHT: usize = 8;

pub struct TradeApi {
    /// Where reads are answered from.
    store: Arc<Store>,
    /// Where writes go.
    writes: Writes,
    limits: Limits,
}

impl TradeApi {
    /// Writing to `store` itself, with the default [`Limits`].
    pub fn new(store: Arc<Store>) -> Self {
        TradeApi {
            writes: Writes::Local(store.clone()),
            store,
            limits: Limits::default(),
        }
    }

    pub fn with_limits(self, limits: Limits) -> Self {
        TradeApi { limits, ..self }
    }

    /// Writes go to `writes` (a cluster's log) instead.
    pub fn with_writes(self, writes: Writes) -> Self {
        TradeApi { writes, ..self }
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

    async fn put(&self, mut request: pb::PutRecordsRequest) -> Result<(PutOutcome, u64)> {
        self.check_batch(request.records.len(), "PutRecords")?;
        let id = std::mem::take(&mut request.request_id);
        let tag = request_id::tag("PutRecords", &id, &request)?;
        let records = convert::parse_records(&request.records)?;
        let applied = self
            .writes
            .apply(Command::new(Action::PutRecords(records), tag))
            .await?;
        Ok((applied.outcome.into_put()?, applied.position))
    }

    async fn list(
        &self,
        request: &pb::ListRecordsRequest,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<pb::ListRecordsResponse> {
        super::caught_up(&self.store, request.min_log_position, metadata).await?;
        let selector = convert::parse_selector(request.selector.as_ref(), "selector")?;
        let criteria = pb::ListRecordsRequest {
            selector: request.selector.clone(),
            ..Default::default()
        };
        let page = Page::parse(
            "ListRecords",
            &criteria,
            request.page_size,
            &request.page_token,
            self.limits.max_page_size,
        )?;
        let resolved = ResolvedSelector::resolve(&self.store, selector, "selector")?;
        let found = resolved.list(&self.store, page.after.as_deref(), page.size)?;
        Ok(pb::ListRecordsResponse {
            records: found.records.iter().map(convert::record_to_pb).collect(),
            next_page_token: page.next_token(found.resume_after.as_deref()),
        })
    }
}

fn group_response(applied: Applied) -> Result<(pb::PartnerGroup, u64, u64, u64)> {
    let written: GroupWritten = applied.outcome.into_group()?;
    Ok((
        convert::group_to_pb(&written.group, written.updated_at),
        written.sequences.map_or(0, |s| s.first),
        written.sequences.map_or(0, |s| s.last),
        applied.position,
    ))
}

/// An aggregate question and its selector, with every violation of both
/// in one INVALID_ARGUMENT.
fn parse_question(
    request: &pb::AggregateRequest,
) -> Result<(crate::query::aggregate::AggregateRequest, crate::domain::Selector)> {
    let question = convert::parse_aggregate(request);
    let selector = convert::parse_selector(request.selector.as_ref(), "selector");
    match (question, selector) {
        (Ok(q), Ok(s)) => Ok((q, s)),
        (Err(Error::InvalidArgument(mut a)), Err(Error::InvalidArgument(b))) => {
            a.extend(b);
            Err(Error::InvalidArgument(a))
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

fn put_response((outcome, log_position): (PutOutcome, u64)) -> pb::PutRecordsResponse {
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
        log_position,
    }
}

/// Adds a batch's outcome to an ingest summary. A request id reused for
/// another message rejects that message, as a bad one is; any other
/// failure ends the stream.
fn count_outcome(
    summary: &mut pb::IngestRecordsResponse,
    (index, records): (u64, usize),
    applied: Result<Applied>,
) -> Result<()> {
    let outcome = match applied {
        Ok(applied) => {
            summary.log_position = summary.log_position.max(applied.position);
            applied.outcome.into_put()?
        }
        Err(e @ Error::AlreadyExists(_)) => {
            reject(summary, index, records, e.to_string());
            return Ok(());
        }
        Err(e) => return Err(e),
    };
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
    Ok(())
}

fn reject(summary: &mut pb::IngestRecordsResponse, index: u64, records: usize, reason: String) {
    summary.rejected += records as u64;
    if summary.rejections.len() < MAX_LISTED_REJECTIONS {
        summary.rejections.push(pb::IngestRejection {
            message_index: index,
            reason,
        });
    }
}

#[tonic::async_trait]
impl TradeService for TradeApi {
    async fn put_records(
        &self,
        request: Request<pb::PutRecordsRequest>,
    ) -> Result<Response<pb::PutRecordsResponse>, Status> {
        let outcome = self.put(request.into_inner()).await?;
        Ok(Response::new(put_response(outcome)))
    }

    async fn ingest_records(
        &self,
        request: Request<Streaming<pb::IngestRecordsRequest>>,
    ) -> Result<Response<pb::IngestRecordsResponse>, Status> {
        let mut stream = request.into_inner();
        let mut summary = pb::IngestRecordsResponse::default();
        // Messages are queued in order and several stay in flight, so that
        // they share flushes; each is still applied atomically.
        let mut in_flight = std::collections::VecDeque::new();
        while let Some(message) = stream.next().await {
            let mut message = message?;
            let index = summary.messages;
            if let Err(e) = self.check_batch(message.records.len(), &format!("message {index}")) {
                // What came before stays stored; say so once it is.
                for (message, pending) in in_flight {
                    count_outcome(&mut summary, message, pending.await)?;
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
            let id = std::mem::take(&mut message.request_id);
            let parsed = request_id::tag("IngestRecords", &id, &message)
                .and_then(|tag| Ok((tag, convert::parse_records(&message.records)?)));
            match parsed {
                Ok((tag, records)) => {
                    let message_records = records.len();
                    let queued = self
                        .writes
                        .queue(Command::new(Action::PutRecords(records), tag))
                        .await?;
                    in_flight.push_back(((index, message_records), queued));
                    if in_flight.len() > MAX_INGEST_IN_FLIGHT
                        && let Some((message, oldest)) = in_flight.pop_front()
                    {
                        count_outcome(&mut summary, message, oldest.await)?;
                    }
                }
                Err(Error::InvalidArgument(violations)) => reject(
                    &mut summary,
                    index,
                    message.records.len(),
                    Error::InvalidArgument(violations).bounded_message(),
                ),
                Err(other) => return Err(other.into()),
            }
        }
        for (message, pending) in in_flight {
            count_outcome(&mut summary, message, pending.await)?;
        }
        Ok(Response::new(summary))
    }

    async fn get_record(
        &self,
        request: Request<pb::GetRecordRequest>,
    ) -> Result<Response<pb::GetRecordResponse>, Status> {
        let key = convert::parse_key(request.get_ref().key.as_ref(), "key")?;
        super::caught_up(
            &self.store,
            request.get_ref().min_log_position,
            request.metadata(),
        )
        .await?;
        match self.store.get_record(&key)? {
            Some(stored) => Ok(Response::new(pb::GetRecordResponse {
                record: Some(convert::record_to_pb(&stored)),
            })),
            None => Err(Error::NotFound(format!("no record {key}")).into()),
        }
    }

    async fn list_records(
        &self,
        request: Request<pb::ListRecordsRequest>,
    ) -> Result<Response<pb::ListRecordsResponse>, Status> {
        Ok(Response::new(
            self.list(request.get_ref(), request.metadata()).await?,
        ))
    }

    async fn delete_record(
        &self,
        request: Request<pb::DeleteRecordRequest>,
    ) -> Result<Response<pb::DeleteRecordResponse>, Status> {
        let mut request = request.into_inner();
        let id = std::mem::take(&mut request.request_id);
        let tag = request_id::tag("DeleteRecord", &id, &request)?;
        let key = convert::parse_key(request.key.as_ref(), "key")?;
        let applied = self
            .writes
            .apply(Command::new(Action::DeleteRecord(key), tag))
            .await?;
        let deleted = applied.outcome.into_record_deleted()?;
        Ok(Response::new(pb::DeleteRecordResponse {
            record: Some(convert::record_to_pb(&deleted.record)),
            sequence: deleted.sequence,
            log_position: applied.position,
        }))
    }

    async fn aggregate(
        &self,
        request: Request<pb::AggregateRequest>,
    ) -> Result<Response<pb::AggregateResponse>, Status> {
        let (metadata, request) = (request.metadata(), request.get_ref());
        let (question, selector) = parse_question(request)?;
        super::caught_up(&self.store, request.min_log_position, metadata).await?;
        let resolved = ResolvedSelector::resolve(&self.store, selector, "selector")?;
        let answer = crate::query::aggregate::aggregate(&self.store, &resolved, &question)?;
        Ok(Response::new(convert::aggregate_to_pb(&answer)?))
    }

    async fn compare_mirror(
        &self,
        request: Request<pb::CompareMirrorRequest>,
    ) -> Result<Response<pb::CompareMirrorResponse>, Status> {
        let (metadata, request) = (request.metadata(), request.get_ref());
        // The same question as an aggregate's, field for field.
        let as_aggregate = pb::AggregateRequest {
            selector: request.selector.clone(),
            group_by: request.group_by.clone(),
            granularity: request.granularity,
            ..Default::default()
        };
        let (question, selector) = parse_question(&as_aggregate)?;
        super::caught_up(&self.store, request.min_log_position, metadata).await?;
        let resolved = ResolvedSelector::resolve(&self.store, selector, "selector")?;
        let mirror = crate::query::mirror::MirrorRequest {
            group_by: question.group_by,
            granularity: question.granularity,
        };
        let answer = crate::query::mirror::compare(&self.store, &resolved, &mirror)?;
        Ok(Response::new(convert::mirror_to_pb(&answer)?))
    }

    async fn get_data_availability(
        &self,
        request: Request<pb::GetDataAvailabilityRequest>,
    ) -> Result<Response<pb::GetDataAvailabilityResponse>, Status> {
        let selector = convert::parse_selector(request.get_ref().selector.as_ref(), "selector")?;
        super::caught_up(
            &self.store,
            request.get_ref().min_log_position,
            request.metadata(),
        )
        .await?;
        let resolved = ResolvedSelector::resolve(&self.store, selector, "selector")?;
        let store = self.store.clone();
        // A scan of every matching record: off the async workers.
        let found =
            tokio::task::spawn_blocking(move || crate::query::availability::availability(&store, &resolved))
                .await
                .map_err(|e| Error::Unavailable(format!("counting records: {e}")))??;
        Ok(Response::new(convert::availability_to_pb(&found)))
    }

    async fn put_group(
        &self,
        request: Request<pb::PutGroupRequest>,
    ) -> Result<Response<pb::PutGroupResponse>, Status> {
        let mut request = request.into_inner();
        let id = std::mem::take(&mut request.request_id);
        let tag = request_id::tag("PutGroup", &id, &request)?;
        let group = convert::parse_group(request.group.as_ref())?;
        let applied = self
            .writes
            .apply(Command::new(Action::PutGroup(group), tag))
            .await?;
        let (group, first_sequence, last_sequence, log_position) = group_response(applied)?;
        Ok(Response::new(pb::PutGroupResponse {
            group: Some(group),
            first_sequence,
            last_sequence,
            log_position,
        }))
    }

    async fn get_group(
        &self,
        request: Request<pb::GetGroupRequest>,
    ) -> Result<Response<pb::GetGroupResponse>, Status> {
        let name = convert::parse_group_name(&request.get_ref().name, "name")?;
        super::caught_up(
            &self.store,
            request.get_ref().min_log_position,
            request.metadata(),
        )
        .await?;
        match self.store.get_group(&name)? {
            Some((group, updated_at)) => Ok(Response::new(pb::GetGroupResponse {
                group: Some(convert::group_to_pb(&group, updated_at)),
            })),
            None => Err(Error::NotFound(format!("no partner group named {name}")).into()),
        }
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let (metadata, request) = (request.metadata(), request.get_ref());
        let page = Page::parse(
            "ListGroups",
            &pb::ListGroupsRequest::default(),
            request.page_size,
            &request.page_token,
            self.limits.max_page_size,
        )?;
        super::caught_up(&self.store, request.min_log_position, metadata).await?;
        let all = self.store.list_groups()?;
        let (groups, last) = page.select(&all, |(g, _)| g.name.as_str().as_bytes());
        Ok(Response::new(pb::ListGroupsResponse {
            groups: groups.iter().map(|(g, t)| convert::group_to_pb(g, *t)).collect(),
            next_page_token: page.next_token(last),
        }))
    }

    async fn delete_group(
        &self,
        request: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        let mut request = request.into_inner();
        let id = std::mem::take(&mut request.request_id);
        let tag = request_id::tag("DeleteGroup", &id, &request)?;
        let name = convert::parse_group_name(&request.name, "name")?;
        let applied = self
            .writes
            .apply(Command::new(Action::DeleteGroup(name), tag))
            .await?;
        let (group, _, _, log_position) = group_response(applied)?;
        Ok(Response::new(pb::DeleteGroupResponse {
            group: Some(group),
            log_position,
        }))
    }
}
