//! Each limit of the server, passed: the status and a message that names
//! the limit. Also deadlines: a call whose `grpc-timeout` passes ends with
//! `DEADLINE_EXCEEDED` instead of running on.

mod common;

use std::time::{Duration, Instant};

use common::{Binary, TestServer, create, delete_watch, get_record, ingest, key_of, put, record};
use tokio_stream::StreamExt;
use tonic::{Code, Status};
use tonic_types::StatusExt;
use tradewatch::pb::{self, milestone_service_client::MilestoneServiceClient};
use tradewatch::{Config, Limits};

async fn start(dir: &std::path::Path, limits: Limits) -> TestServer {
    TestServer::start_with(Config {
        limits,
        ..Config::new(dir)
    })
    .await
}

fn assert_status(result: Result<impl std::fmt::Debug, Status>, code: Code, says: &[&str]) -> Status {
    let status = result.expect_err("the limit was passed");
    assert_eq!(status.code(), code, "{status:?}");
    for s in says {
        assert!(
            status.message().contains(s),
            "{:?} should say {s:?}",
            status.message()
        );
    }
    status
}

/// `n` distinct records (CHN with KAZ, one a year from 1950).
fn records(n: usize) -> Vec<pb::TradeRecord> {
    (0..n)
        .map(|i| record("CHN", "KAZ", &(1950 + i).to_string(), 1_000 + i as i64, "GACC"))
        .collect()
}

fn watch(id: &str) -> pb::Watch {
    pb::Watch {
        id: id.into(),
        name: format!("watch {id}"),
        selector: Some(pb::RecordSelector {
            reporters: vec!["CHN".into()],
            partners: vec!["CENTRAL_ASIA".into()],
            ..Default::default()
        }),
        record_high: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_request_message_over_the_size_limit_is_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(
        dir.path(),
        Limits {
            max_request_bytes: 2000,
            ..Limits::default()
        },
    )
    .await;
    let mut client = server.client().await;
    let says = ["larger than the limit of 2000 bytes", "max_request_bytes"];

    let big = put(records(100));
    assert!(prost::Message::encoded_len(&big) > 2000);
    assert_status(
        client.put_records(big.clone()).await,
        Code::ResourceExhausted,
        &says,
    );
    let status = get_record(&mut client, key_of(&records(1)[0])).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "nothing of it was stored");

    // Each IngestRecords message counts on its own: small ones pass, and a
    // large one ends the stream.
    let small = ingest(records(5));
    assert!(prost::Message::encoded_len(&small) < 2000);
    let summary = client
        .ingest_records(tokio_stream::iter(vec![small.clone(), small.clone()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((summary.created, summary.unchanged), (5, 5));
    assert_status(
        client
            .ingest_records(tokio_stream::iter(vec![small, ingest(big.records)]))
            .await,
        Code::ResourceExhausted,
        &says,
    );
    // Under the limit, PutRecords is fine.
    client.put_records(put(records(10))).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn the_default_size_limit_is_4_mib_and_answered_as_resource_exhausted() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut huge = records(1);
    huge[0].source = "x".repeat(5 * 1024 * 1024);
    assert_status(
        client.put_records(put(huge)).await,
        Code::ResourceExhausted,
        &["larger than the limit of 4194304 bytes", "max_request_bytes"],
    );
}

/// The limit is also in the status details, for a client to split by: an
/// `ErrorInfo` with reason `BATCH_TOO_LARGE` and `max_batch_records`.
fn assert_batch_limit_in_details(status: &Status, max: usize) {
    let info = status.get_details_error_info().expect("ErrorInfo details");
    assert_eq!(
        (info.reason.as_str(), info.domain.as_str()),
        ("BATCH_TOO_LARGE", "tradewatch")
    );
    assert_eq!(
        info.metadata.get("max_batch_records"),
        Some(&max.to_string()),
        "{info:?}"
    );
}

#[tokio::test]
async fn a_batch_over_the_record_limit_is_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(
        dir.path(),
        Limits {
            max_batch_records: 3,
            ..Limits::default()
        },
    )
    .await;
    let mut client = server.client().await;

    let refused = assert_status(
        client.put_records(put(records(4))).await,
        Code::ResourceExhausted,
        &[
            "PutRecords has 4 records",
            "limit of 3 per batch",
            "max_batch_records",
        ],
    );
    assert_batch_limit_in_details(&refused, 3);
    let status = get_record(&mut client, key_of(&records(1)[0])).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "nothing of it was stored");
    client.put_records(put(records(3))).await.unwrap();

    // IngestRecords: the messages before the large one are applied, it and
    // those after are not.
    let all = records(10);
    let messages = vec![
        ingest(all[3..5].to_vec()),
        ingest(all[5..9].to_vec()),
        ingest(all[9..].to_vec()),
    ];
    let refused = assert_status(
        client.ingest_records(tokio_stream::iter(messages)).await,
        Code::ResourceExhausted,
        &[
            "message 1 has 4 records",
            "limit of 3 per batch",
            "max_batch_records",
            "1 earlier message was processed (2 records created",
        ],
    );
    assert_batch_limit_in_details(&refused, 3);
    for (i, r) in all.iter().enumerate() {
        let found = get_record(&mut client, key_of(r)).await.is_ok();
        assert_eq!(found, i < 5, "record {i}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_page_over_the_page_size_limit_is_lowered_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(
        dir.path(),
        Limits {
            max_page_size: 5,
            ..Limits::default()
        },
    )
    .await;
    let mut client = server.client().await;
    client.put_records(put(records(8))).await.unwrap();

    let page = |page_size| pb::ListRecordsRequest {
        page_size,
        ..Default::default()
    };
    // A larger page asked for is lowered to the limit (AIP-158), and so is
    // the default page (100).
    for page_size in [6, 0] {
        let first = client.list_records(page(page_size)).await.unwrap().into_inner();
        assert_eq!(first.records.len(), 5, "page_size {page_size}");
        assert!(!first.next_page_token.is_empty());
    }
    assert_eq!(
        client
            .list_records(page(5))
            .await
            .unwrap()
            .into_inner()
            .records
            .len(),
        5
    );

    let mut milestones = MilestoneServiceClient::new(server.channel().await);
    let events = milestones
        .list_events(pb::ListEventsRequest {
            limit: 6,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(events.events.len(), 5, "a larger limit is lowered to the limit");
    let events = milestones
        .list_events(pb::ListEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(events.events.len(), 5, "the default page shrinks to the limit");
    server.stop().await;
}

#[tokio::test]
async fn subscribers_over_the_limit_are_resource_exhausted_until_one_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(
        dir.path(),
        Limits {
            max_subscribers: 2,
            ..Limits::default()
        },
    )
    .await;
    let channel = server.channel().await;
    let subscribe = || {
        let mut client = MilestoneServiceClient::new(channel.clone());
        async move {
            let mut stream = client
                .subscribe(pb::SubscribeRequest::default())
                .await?
                .into_inner();
            stream.next().await.expect("a first message")?;
            Ok::<_, Status>(stream)
        }
    };
    let first = subscribe().await.unwrap();
    let _second = subscribe().await.unwrap();
    assert_status(
        subscribe().await,
        Code::ResourceExhausted,
        &["2 Subscribe streams are open", "max_subscribers"],
    );
    // A client that goes away frees its place.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match subscribe().await {
            Ok(_third) => break,
            Err(s) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("the place of a closed subscription was not freed: {s:?}"),
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn watches_over_the_limit_are_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(
        dir.path(),
        Limits {
            max_watches: 2,
            ..Limits::default()
        },
    )
    .await;
    let mut client = MilestoneServiceClient::new(server.channel().await);
    client.create_watch(create(watch("a"))).await.unwrap();
    client.create_watch(create(watch("b"))).await.unwrap();
    assert_status(
        client.create_watch(create(watch("c"))).await,
        Code::ResourceExhausted,
        &["there are 2 watches, the limit is 2", "max_watches"],
    );
    let listed = client
        .list_watches(pb::ListWatchesRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.into_inner().watches.len(), 2);

    client.delete_watch(delete_watch("a")).await.unwrap();
    client.create_watch(create(watch("c"))).await.unwrap();

    // Concurrent creations cannot pass the limit together: with one place
    // left, one of six gets it.
    client.delete_watch(delete_watch("c")).await.unwrap();
    let results = futures_util::future::join_all((0..6).map(|i| {
        let mut client = client.clone();
        async move { client.create_watch(create(watch(&format!("x{i}")))).await }
    }))
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|s| s.code() == Code::ResourceExhausted)
    );
    server.stop().await;
}

#[tokio::test]
async fn the_limits_must_each_let_something_through() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        limits: Limits {
            max_subscribers: 0,
            ..Limits::default()
        },
        ..Config::new(dir.path())
    };
    let error = tradewatch::Application::build("127.0.0.1:0".parse().unwrap(), config)
        .await
        .err()
        .expect("a zero limit is refused");
    assert!(
        error.to_string().contains("max_subscribers must be at least 1"),
        "{error}"
    );
}

/// The flags reach the server.
#[tokio::test]
async fn the_binary_takes_limits_from_flags() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(
        dir.path(),
        &["--max-batch-records", "2", "--max-request-bytes", "100000"],
    );
    let mut client = server.client().await;
    assert_status(
        client.put_records(put(records(3))).await,
        Code::ResourceExhausted,
        &["limit of 2 per batch"],
    );
    let mut huge = records(1);
    huge[0].source = "x".repeat(200_000);
    assert_status(
        client.put_records(put(huge)).await,
        Code::ResourceExhausted,
        &["limit of 100000 bytes"],
    );
    client.put_records(put(records(2))).await.unwrap();
}

/// What a raw HTTP/2 call got: the grpc-status and grpc-message (from the
/// trailers, or from the headers of a trailers-only response) and how many
/// response messages came before them.
#[derive(Debug)]
struct RawOutcome {
    status: String,
    message: String,
    messages: usize,
    took: Duration,
}

/// Calls `path` over plain HTTP/2 with a `grpc-timeout` header, sending
/// `messages` and then, unless `end`, keeping the request open (as a client
/// still streaming would). Unlike a gRPC client library, it does not enforce the
/// deadline itself, so what it sees is the server's doing.
async fn raw_call(
    addr: std::net::SocketAddr,
    path: &str,
    messages: &[Vec<u8>],
    end: bool,
    grpc_timeout: &str,
) -> RawOutcome {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = tonic::codegen::http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", grpc_timeout)
        .body(())
        .unwrap();
    let started = Instant::now();
    let (response, mut body) = send.ready().await.unwrap().send_request(request, false).unwrap();
    for message in messages {
        let mut frame = vec![0];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(message);
        body.send_data(frame.into(), false).unwrap();
    }
    if end {
        body.send_data(bytes::Bytes::new(), true).unwrap();
    }
    let response = response.await.unwrap();
    let header = |map: &tonic::codegen::http::HeaderMap, name: &str| {
        map.get(name).map(|v| v.to_str().unwrap().to_owned())
    };
    if let Some(status) = header(response.headers(), "grpc-status") {
        return RawOutcome {
            status,
            message: percent_decode(&header(response.headers(), "grpc-message").unwrap_or_default()),
            messages: 0,
            took: started.elapsed(),
        };
    }
    let mut received = response.into_body();
    let mut bytes = 0;
    while let Some(data) = received.data().await {
        let data = data.unwrap();
        bytes += data.len();
        let _ = received.flow_control().release_capacity(data.len());
    }
    let trailers = received.trailers().await.unwrap().expect("trailers");
    drop(body);
    RawOutcome {
        status: header(&trailers, "grpc-status").unwrap(),
        message: percent_decode(&header(&trailers, "grpc-message").unwrap_or_default()),
        messages: usize::from(bytes > 0),
        took: started.elapsed(),
    }
}

/// grpc-message is percent-encoded.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = text
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn a_call_past_its_deadline_gets_deadline_exceeded() {
    let server = TestServer::start().await;
    let timeout = Duration::from_millis(300);
    let says = "grpc-timeout of 300ms";
    let deadline_exceeded = (Code::DeadlineExceeded as i32).to_string();

    // A client-streaming call still waiting for messages at its deadline:
    // nothing was answered yet, so the answer is DEADLINE_EXCEEDED alone.
    let one = ingest(records(1));
    let outcome = raw_call(
        server.addr,
        "/tradewatch.v1.TradeService/IngestRecords",
        &[prost::Message::encode_to_vec(&one)],
        false,
        "300m",
    )
    .await;
    assert_eq!(outcome.status, deadline_exceeded, "{outcome:?}");
    assert!(outcome.message.contains(says), "{outcome:?}");
    assert!(
        outcome.took >= timeout && outcome.took < Duration::from_secs(5),
        "{outcome:?}"
    );

    // A subscription (a response stream) ends at its deadline with
    // DEADLINE_EXCEEDED, not OK, after the messages sent before it.
    let subscribe = pb::SubscribeRequest::default();
    let outcome = raw_call(
        server.addr,
        "/tradewatch.v1.MilestoneService/Subscribe",
        &[prost::Message::encode_to_vec(&subscribe)],
        true,
        "300m",
    )
    .await;
    assert_eq!(outcome.status, deadline_exceeded, "{outcome:?}");
    assert!(outcome.message.contains(says), "{outcome:?}");
    assert_eq!(outcome.messages, 1, "the first message came at once: {outcome:?}");
    assert!(
        outcome.took >= timeout && outcome.took < Duration::from_secs(5),
        "{outcome:?}"
    );

    // A call that finishes in time is unaffected, with a tonic client too.
    let mut client = server.client().await;
    let mut request = tonic::Request::new(put(records(2)));
    request.set_timeout(Duration::from_secs(10));
    client.put_records(request).await.unwrap();
    let mut milestones = MilestoneServiceClient::new(server.channel().await);
    let mut request = tonic::Request::new(pb::SubscribeRequest::default());
    request.set_timeout(timeout);
    let mut stream = milestones.subscribe(request).await.unwrap().into_inner();
    stream.next().await.unwrap().unwrap();
}
