//! Target 1: request bodies, as bytes, into every RPC of TradeService and
//! MilestoneService on a real server.
//!
//! An input is: one byte choosing the RPC, one byte choosing the form, then
//! either the body itself (arbitrary bytes) or the recipe of a generated
//! request, which is encoded and then mutated at the byte level. After each
//! call: a body that does not decode gets tonic's decode error; one that does
//! gets OK or a precise status (never UNKNOWN, INTERNAL, UNAVAILABLE), with
//! INVALID_ARGUMENT naming fields of the request. Every so often, and
//! before the store is recycled, the whole store is checked
//! ([`super::check::check_store`]), also across a restart.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;
use tradewatch::pb;

use super::check::{self, check_error, check_undecodable};
use super::input::Input;
use super::requests as make;
use super::server::{self, Server, runtime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    PutRecords,
    IngestRecords,
    GetRecord,
    ListRecords,
    DeleteRecord,
    Aggregate,
    PutGroup,
    GetGroup,
    ListGroups,
    DeleteGroup,
    CreateWatch,
    GetWatch,
    ListWatches,
    DeleteWatch,
    Subscribe,
    ListEvents,
}

const RPCS: [Rpc; 16] = [
    Rpc::PutRecords,
    Rpc::IngestRecords,
    Rpc::GetRecord,
    Rpc::ListRecords,
    Rpc::DeleteRecord,
    Rpc::Aggregate,
    Rpc::PutGroup,
    Rpc::GetGroup,
    Rpc::ListGroups,
    Rpc::DeleteGroup,
    Rpc::CreateWatch,
    Rpc::GetWatch,
    Rpc::ListWatches,
    Rpc::DeleteWatch,
    Rpc::Subscribe,
    Rpc::ListEvents,
];

impl Rpc {
    fn path(self) -> &'static str {
        match self {
            Rpc::PutRecords => "/tradewatch.v1.TradeService/PutRecords",
            Rpc::IngestRecords => "/tradewatch.v1.TradeService/IngestRecords",
            Rpc::GetRecord => "/tradewatch.v1.TradeService/GetRecord",
            Rpc::ListRecords => "/tradewatch.v1.TradeService/ListRecords",
            Rpc::DeleteRecord => "/tradewatch.v1.TradeService/DeleteRecord",
            Rpc::Aggregate => "/tradewatch.v1.TradeService/Aggregate",
            Rpc::PutGroup => "/tradewatch.v1.TradeService/PutGroup",
            Rpc::GetGroup => "/tradewatch.v1.TradeService/GetGroup",
            Rpc::ListGroups => "/tradewatch.v1.TradeService/ListGroups",
            Rpc::DeleteGroup => "/tradewatch.v1.TradeService/DeleteGroup",
            Rpc::CreateWatch => "/tradewatch.v1.MilestoneService/CreateWatch",
            Rpc::GetWatch => "/tradewatch.v1.MilestoneService/GetWatch",
            Rpc::ListWatches => "/tradewatch.v1.MilestoneService/ListWatches",
            Rpc::DeleteWatch => "/tradewatch.v1.MilestoneService/DeleteWatch",
            Rpc::Subscribe => "/tradewatch.v1.MilestoneService/Subscribe",
            Rpc::ListEvents => "/tradewatch.v1.MilestoneService/ListEvents",
        }
    }

    /// Top-level fields of the request message, which violations must name.
    fn fields(self) -> &'static [&'static str] {
        match self {
            Rpc::PutRecords | Rpc::IngestRecords => &["records", "request_id"],
            Rpc::GetRecord => &["key"],
            Rpc::DeleteRecord => &["key", "request_id"],
            Rpc::ListRecords => &["selector", "page_size", "page_token"],
            Rpc::Aggregate => &["selector", "group_by", "granularity", "order_by", "limit"],
            Rpc::PutGroup => &["group", "request_id"],
            Rpc::GetGroup => &["name"],
            Rpc::DeleteGroup => &["name", "request_id"],
            Rpc::ListGroups | Rpc::ListWatches => &["page_size", "page_token"],
            Rpc::CreateWatch => &["watch", "backfill", "request_id"],
            Rpc::GetWatch => &["id"],
            Rpc::DeleteWatch => &["id", "request_id"],
            Rpc::Subscribe => &["from_sequence", "kinds", "watch_ids"],
            Rpc::ListEvents => &["from_sequence", "limit", "kinds", "watch_ids"],
        }
    }

    /// Statuses a decodable request may get besides OK. A write may get
    /// ALREADY_EXISTS for a request id used before with another request; a
    /// read DEADLINE_EXCEEDED for a `min_log_position` the store has not
    /// reached (see [`server::READ_DEADLINE`]).
    fn allowed(self) -> &'static [Code] {
        use Code::*;
        match self {
            Rpc::PutRecords => &[InvalidArgument, ResourceExhausted, AlreadyExists],
            // Bad messages are counted in the summary, not answered with a
            // status; a reused request id ends the stream.
            Rpc::IngestRecords => &[ResourceExhausted, AlreadyExists],
            Rpc::GetRecord => &[InvalidArgument, NotFound, DeadlineExceeded],
            Rpc::DeleteRecord => &[InvalidArgument, NotFound, AlreadyExists],
            Rpc::ListRecords => &[InvalidArgument, DeadlineExceeded],
            // A total beyond int64 units does not fit google.type.Money.
            Rpc::Aggregate => &[InvalidArgument, OutOfRange, DeadlineExceeded],
            Rpc::PutGroup => &[InvalidArgument, FailedPrecondition, AlreadyExists],
            Rpc::GetGroup => &[InvalidArgument, NotFound, DeadlineExceeded],
            // Only a page token the server never issued is refused.
            Rpc::ListGroups | Rpc::ListWatches => &[InvalidArgument, DeadlineExceeded],
            Rpc::DeleteGroup => &[InvalidArgument, NotFound, FailedPrecondition, AlreadyExists],
            Rpc::CreateWatch => &[InvalidArgument, AlreadyExists, OutOfRange, ResourceExhausted],
            Rpc::GetWatch => &[InvalidArgument, NotFound, DeadlineExceeded],
            Rpc::DeleteWatch => &[InvalidArgument, NotFound, AlreadyExists],
            Rpc::Subscribe | Rpc::ListEvents => {
                &[InvalidArgument, OutOfRange, ResourceExhausted, DeadlineExceeded]
            }
        }
    }

    fn writes(self) -> bool {
        matches!(
            self,
            Rpc::PutRecords
                | Rpc::IngestRecords
                | Rpc::DeleteRecord
                | Rpc::PutGroup
                | Rpc::DeleteGroup
                | Rpc::CreateWatch
                | Rpc::DeleteWatch
        )
    }

    /// A generated request, encoded.
    fn generate(self, inp: &mut Input, valid: bool) -> Vec<u8> {
        match self {
            Rpc::PutRecords => put_request(inp, valid).encode_to_vec(),
            Rpc::IngestRecords => {
                let put = put_request(inp, valid);
                pb::IngestRecordsRequest {
                    records: put.records,
                    request_id: put.request_id,
                }
                .encode_to_vec()
            }
            Rpc::GetRecord => pb::GetRecordRequest {
                key: key(inp, valid),
                ..Default::default()
            }
            .encode_to_vec(),
            Rpc::DeleteRecord => pb::DeleteRecordRequest {
                key: key(inp, valid),
                request_id: make::request_id(inp, valid),
            }
            .encode_to_vec(),
            Rpc::ListRecords => make::list_records(inp, valid).encode_to_vec(),
            Rpc::Aggregate => make::aggregate(inp, valid).encode_to_vec(),
            Rpc::PutGroup => pb::PutGroupRequest {
                group: if valid || inp.chance(240) {
                    Some(make::group(inp, valid))
                } else {
                    None
                },
                request_id: make::request_id(inp, valid),
            }
            .encode_to_vec(),
            Rpc::GetGroup => pb::GetGroupRequest {
                name: group_name(inp, valid),
                ..Default::default()
            }
            .encode_to_vec(),
            Rpc::DeleteGroup => pb::DeleteGroupRequest {
                name: group_name(inp, valid),
                request_id: make::request_id(inp, valid),
            }
            .encode_to_vec(),
            Rpc::ListGroups => pb::ListGroupsRequest {
                page_size: page_size(inp),
                page_token: make::page_token(inp),
                ..Default::default()
            }
            .encode_to_vec(),
            Rpc::ListWatches => pb::ListWatchesRequest {
                page_size: page_size(inp),
                page_token: make::page_token(inp),
                ..Default::default()
            }
            .encode_to_vec(),
            Rpc::CreateWatch => pb::CreateWatchRequest {
                watch: if valid || inp.chance(240) {
                    Some(make::watch(inp, valid))
                } else {
                    None
                },
                backfill: inp.chance(128),
                request_id: make::request_id(inp, valid),
            }
            .encode_to_vec(),
            Rpc::GetWatch => pb::GetWatchRequest {
                id: watch_id(inp, valid),
                ..Default::default()
            }
            .encode_to_vec(),
            Rpc::DeleteWatch => pb::DeleteWatchRequest {
                id: watch_id(inp, valid),
                request_id: make::request_id(inp, valid),
            }
            .encode_to_vec(),
            Rpc::Subscribe => pb::SubscribeRequest {
                from_sequence: inp.u64(),
                kinds: make::event_kinds(inp, valid),
                watch_ids: make::watch_ids(inp, valid),
                ..Default::default()
            }
            .encode_to_vec(),
            Rpc::ListEvents => pb::ListEventsRequest {
                from_sequence: inp.u64(),
                limit: if inp.chance(128) { inp.u32() } else { 0 },
                kinds: make::event_kinds(inp, valid),
                watch_ids: make::watch_ids(inp, valid),
                ..Default::default()
            }
            .encode_to_vec(),
        }
    }

    /// Whether `body` is a valid encoding of the request message.
    fn decodes(self, body: &[u8]) -> bool {
        match self {
            Rpc::PutRecords => pb::PutRecordsRequest::decode(body).is_ok(),
            Rpc::IngestRecords => pb::IngestRecordsRequest::decode(body).is_ok(),
            Rpc::GetRecord => pb::GetRecordRequest::decode(body).is_ok(),
            Rpc::DeleteRecord => pb::DeleteRecordRequest::decode(body).is_ok(),
            Rpc::ListRecords => pb::ListRecordsRequest::decode(body).is_ok(),
            Rpc::Aggregate => pb::AggregateRequest::decode(body).is_ok(),
            Rpc::PutGroup => pb::PutGroupRequest::decode(body).is_ok(),
            Rpc::GetGroup => pb::GetGroupRequest::decode(body).is_ok(),
            Rpc::DeleteGroup => pb::DeleteGroupRequest::decode(body).is_ok(),
            Rpc::ListGroups => pb::ListGroupsRequest::decode(body).is_ok(),
            Rpc::CreateWatch => pb::CreateWatchRequest::decode(body).is_ok(),
            Rpc::GetWatch => pb::GetWatchRequest::decode(body).is_ok(),
            Rpc::DeleteWatch => pb::DeleteWatchRequest::decode(body).is_ok(),
            Rpc::ListWatches => pb::ListWatchesRequest::decode(body).is_ok(),
            Rpc::Subscribe => pb::SubscribeRequest::decode(body).is_ok(),
            Rpc::ListEvents => pb::ListEventsRequest::decode(body).is_ok(),
        }
    }

    /// Checks an OK answer: it decodes as the response message, and says
    /// what the request implies.
    fn check_ok(self, bodies: &[Bytes], response: &[u8]) {
        let context = format!("{self:?}");
        fn decode<M: Message + Default>(context: &str, bytes: &[u8]) -> M {
            M::decode(bytes).unwrap_or_else(|e| panic!("{context}: the OK response does not decode: {e}"))
        }
        match self {
            Rpc::PutRecords => {
                let request = pb::PutRecordsRequest::decode(&bodies[0][..]).unwrap();
                let r: pb::PutRecordsResponse = decode(&context, response);
                assert_eq!(
                    r.results.len(),
                    request.records.len(),
                    "{context}: one result per record"
                );
                let changed = r
                    .results
                    .iter()
                    .any(|x| x.outcome != pb::WriteOutcome::Unchanged as i32);
                assert!(
                    r.results
                        .iter()
                        .all(|x| (1..=3).contains(&x.outcome) && x.revision >= 1)
                );
                assert_eq!(
                    changed,
                    r.first_sequence > 0 && r.last_sequence >= r.first_sequence,
                    "{context}: event sequences {r:?}"
                );
            }
            Rpc::IngestRecords => {
                let records: u64 = bodies
                    .iter()
                    .map(|b| pb::IngestRecordsRequest::decode(&b[..]).unwrap().records.len() as u64)
                    .sum();
                let s: pb::IngestRecordsResponse = decode(&context, response);
                assert_eq!(s.messages, bodies.len() as u64, "{context}: messages counted");
                assert_eq!(
                    s.created + s.revised + s.unchanged + s.rejected,
                    records,
                    "{context}: every record counted once: {s:?}"
                );
            }
            Rpc::GetRecord => {
                let r: pb::GetRecordResponse = decode(&context, response);
                assert!(r.record.is_some(), "{context}: an answer without the record");
            }
            Rpc::ListRecords => {
                let _: pb::ListRecordsResponse = decode(&context, response);
            }
            Rpc::DeleteRecord => {
                let r: pb::DeleteRecordResponse = decode(&context, response);
                assert!(r.record.is_some() && r.sequence > 0, "{context}: {r:?}");
            }
            Rpc::Aggregate => {
                let r: pb::AggregateResponse = decode(&context, response);
                assert!(
                    r.rows
                        .iter()
                        .all(|row| row.total.as_ref().is_some_and(|t| t.currency_code == r.currency))
                );
            }
            Rpc::PutGroup => {
                let r: pb::PutGroupResponse = decode(&context, response);
                assert!(r.group.is_some(), "{context}: an answer without the group");
                assert!(
                    r.first_sequence <= r.last_sequence && (r.first_sequence == 0) == (r.last_sequence == 0),
                    "{context}: event sequences {r:?}"
                );
            }
            Rpc::GetGroup => {
                let r: pb::GetGroupResponse = decode(&context, response);
                assert!(r.group.is_some(), "{context}: an answer without the group");
            }
            Rpc::ListGroups => {
                let _: pb::ListGroupsResponse = decode(&context, response);
            }
            Rpc::DeleteGroup => {
                let _: pb::DeleteGroupResponse = decode(&context, response);
            }
            Rpc::CreateWatch => {
                let r: pb::CreateWatchResponse = decode(&context, response);
                let w = r
                    .watch
                    .as_ref()
                    .unwrap_or_else(|| panic!("{context}: an answer without the watch"));
                assert!(!w.id.is_empty(), "{context}: a watch without an id");
                assert!(
                    r.first_sequence <= r.last_sequence && (r.first_sequence == 0) == (r.last_sequence == 0),
                    "{context}: event sequences {r:?}"
                );
            }
            Rpc::GetWatch => {
                let r: pb::GetWatchResponse = decode(&context, response);
                let w = r
                    .watch
                    .unwrap_or_else(|| panic!("{context}: an answer without the watch"));
                assert!(!w.id.is_empty(), "{context}: a watch without an id");
            }
            Rpc::ListWatches => {
                let _: pb::ListWatchesResponse = decode(&context, response);
            }
            Rpc::DeleteWatch => {
                let _: pb::DeleteWatchResponse = decode(&context, response);
            }
            Rpc::Subscribe => {
                let first: pb::SubscribeResponse = decode(&context, response);
                assert!(
                    matches!(first.message, Some(pb::subscribe_response::Message::Progress(_))),
                    "{context}: the first message is not a Progress: {first:?}"
                );
            }
            Rpc::ListEvents => {
                let r: pb::ListEventsResponse = decode(&context, response);
                assert!(
                    r.events.windows(2).all(|w| w[0].sequence < w[1].sequence),
                    "{context}: order"
                );
            }
        }
    }
}

fn put_request(inp: &mut Input, valid: bool) -> pb::PutRecordsRequest {
    let mut records = inp.list(4, |i| make::record(i, valid));
    if valid && records.is_empty() {
        records.push(make::record(inp, true));
    }
    pb::PutRecordsRequest {
        records,
        request_id: make::request_id(inp, valid),
    }
}

/// The key of GetRecord and DeleteRecord; now and then none.
fn key(inp: &mut Input, valid: bool) -> Option<pb::RecordKey> {
    (valid || inp.chance(240)).then(|| make::key(inp, valid))
}

fn group_name(inp: &mut Input, valid: bool) -> String {
    if valid {
        inp.pick(make::GROUPS).to_owned()
    } else {
        inp.text(make::GROUPS, make::BAD_GROUPS)
    }
}

fn watch_id(inp: &mut Input, valid: bool) -> String {
    if valid {
        inp.pick(make::WATCH_IDS).to_owned()
    } else {
        inp.text(make::WATCH_IDS, make::BAD_WATCH_IDS)
    }
}

/// Mostly the default; else any size (one above the maximum is lowered).
fn page_size(inp: &mut Input) -> u32 {
    if inp.chance(128) { inp.u32() } else { 0 }
}

/// The store grows until one of these, then is checked, restarted, checked
/// again and replaced by an empty one.
const MAX_RECORDS: usize = 300;
const MAX_EVENTS: u64 = 3000;
/// Successful writes between two checks of the whole store.
const WRITES_PER_CHECK: u32 = 40;

struct State {
    /// Answers by RPC and status code, for [`stats`].
    answers: std::collections::BTreeMap<(String, String), u64>,
    server: Option<Server>,
    channel: Channel,
    dir: PathBuf,
    writes_since_check: u32,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| {
        let dir = server::scratch_dir();
        let (server, channel) = runtime().block_on(async {
            let server = Server::start(&dir).await;
            let channel = server.channel().await;
            (server, channel)
        });
        Mutex::new(State {
            answers: Default::default(),
            server: Some(server),
            channel,
            dir,
            writes_since_check: 0,
        })
    })
}

/// Runs one fuzz input. Panics when the server misbehaves.
pub fn run(data: &[u8]) {
    let mut state = state().lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(one(&mut state, data));
}

/// How the inputs so far were answered, by RPC and status code.
pub fn stats() -> String {
    let state = state().lock().unwrap_or_else(|e| e.into_inner());
    state
        .answers
        .iter()
        .map(|((rpc, code), n)| format!("{rpc} {code}: {n}\n"))
        .collect()
}

/// Checks the store and recycles it; for the end of a run.
pub fn finish() {
    let mut state = state().lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(recycle(&mut state));
}

async fn one(state: &mut State, data: &[u8]) {
    let mut inp = Input::new(data);
    let rpc = RPCS[usize::from(inp.byte()) % RPCS.len()];
    let form = inp.byte();
    let bodies: Vec<Bytes> = match form % 4 {
        // The rest of the input is the body.
        0 => vec![Bytes::copy_from_slice(inp.rest())],
        // A generated request, well-formed or not, then mutated or not.
        _ => {
            let valid = form % 4 == 1;
            let messages = if rpc == Rpc::IngestRecords {
                1 + inp.below(3)
            } else {
                1
            };
            (0..messages)
                .map(|_| {
                    let body = rpc.generate(&mut inp, valid);
                    let body = if form % 4 == 3 { inp.mutate(body) } else { body };
                    Bytes::from(body)
                })
                .collect()
        }
    };
    let decodes = bodies.iter().all(|b| rpc.decodes(b));
    let result = match rpc {
        Rpc::IngestRecords => server::client_streaming(&state.channel, rpc.path(), bodies.clone()).await,
        Rpc::Subscribe => server::first_streamed(&state.channel, rpc.path(), bodies[0].clone()).await,
        _ => server::unary(&state.channel, rpc.path(), bodies[0].clone(), !rpc.writes()).await,
    };
    let context = format!(
        "{rpc:?} with {} message(s), the first {} bytes: {:02x?}",
        bodies.len(),
        bodies[0].len(),
        &bodies[0][..bodies[0].len().min(64)]
    );
    let code = match &result {
        Ok(_) => "Ok".to_owned(),
        Err(s) if !decodes => format!("{:?} (undecodable)", s.code()),
        Err(s) => format!("{:?}", s.code()),
    };
    *state.answers.entry((format!("{rpc:?}"), code)).or_default() += 1;
    match result {
        Ok(response) => {
            assert!(decodes, "{context}: OK for a body that does not decode");
            rpc.check_ok(&bodies, &response);
            if rpc.writes() {
                state.writes_since_check += 1;
            }
        }
        Err(status) if decodes => check_error(&context, &status, rpc.allowed(), rpc.fields()),
        Err(status) => {
            // IngestRecords: the messages before the undecodable one are stored.
            if rpc == Rpc::IngestRecords {
                state.writes_since_check += 1;
            }
            check_undecodable(&context, &status)
        }
    }
    if state.writes_since_check >= WRITES_PER_CHECK {
        state.writes_since_check = 0;
        let snapshot = check::check_store(&state.channel).await;
        if snapshot.records.len() > MAX_RECORDS || snapshot.head_sequence > MAX_EVENTS {
            recycle(state).await;
        }
    }
}

/// A channel that never connects, held while no server runs.
fn idle_channel() -> Channel {
    Channel::from_static("http://127.0.0.1:9").connect_lazy()
}

/// Checks the store, restarts the server on it and checks that it finds
/// the same state, then starts over on an empty store.
async fn recycle(state: &mut State) {
    let before = check::check_store(&state.channel).await;
    let server = state.server.take().expect("a server");
    // Let go of the connection first, so the server stops without waiting.
    state.channel = idle_channel();
    server.stop().await;
    let server = Server::start(&state.dir).await;
    state.channel = server.channel().await;
    let after = check::check_store(&state.channel).await;
    assert_eq!(before, after, "the store differs after a restart");
    state.channel = idle_channel();
    server.stop().await;
    let _ = std::fs::remove_dir_all(&state.dir);
    state.dir = server::scratch_dir();
    let server = Server::start(&state.dir).await;
    state.channel = server.channel().await;
    state.server = Some(server);
    state.writes_since_check = 0;
}
