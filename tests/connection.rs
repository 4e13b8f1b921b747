//! How the server serves one HTTP/2 connection: its task sends every
//! response and polls every subscription of the connection
//! (`src/serve/mod.rs`), so these tests open many streams on one connection
//! at once, as a client with one channel does, and check that each is
//! served.

mod common;

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use common::{TestServer, put, record};
use prost::Message as _;
use tradewatch::pb::{self, subscribe_response::Message, trade_service_client::TradeServiceClient};

/// More streams than tokio lets one task poll in one go (its budget is 128):
/// the connection's task must still start them all.
const STREAMS: usize = 300;

/// The `Subscribe` messages of one stream, read from its HTTP/2 body.
struct Messages {
    body: h2::RecvStream,
    buffer: BytesMut,
}

impl Messages {
    async fn next(&mut self) -> Option<pb::SubscribeResponse> {
        loop {
            if self.buffer.len() >= 5 {
                let len = u32::from_be_bytes(self.buffer[1..5].try_into().unwrap()) as usize;
                if self.buffer.len() >= 5 + len {
                    assert_eq!(self.buffer[0], 0, "an uncompressed message");
                    self.buffer.advance(5);
                    let message = self.buffer.split_to(len);
                    return Some(pb::SubscribeResponse::decode(message).expect("a SubscribeResponse"));
                }
            }
            let data = self.body.data().await?.expect("data");
            let _ = self.body.flow_control().release_capacity(data.len());
            self.buffer.extend_from_slice(&data);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_opened_at_once_on_one_connection_are_all_served() {
    let server = TestServer::start().await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // The windows tonic's client (hyper's) asks for. h2 ends a connection
    // on which small DATA frames wait unread past half its connection
    // window, and 300 streams' first messages come at once.
    let (mut send, connection) = h2::client::Builder::new()
        .initial_window_size(2 * 1024 * 1024)
        .initial_connection_window_size(5 * 1024 * 1024)
        .handshake(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });

    // Every request goes out before any answer is awaited: the server reads
    // them in a few reads and starts them together. Each stream is read by
    // a task of its own from the start (h2 ends a connection on which many
    // small frames wait unread).
    let uri = format!("http://{}/tradewatch.v1.MilestoneService/Subscribe", server.addr);
    let (caught_up_tx, mut caught_up) = tokio::sync::mpsc::unbounded_channel();
    let mut readers = Vec::new();
    for _ in 0..STREAMS {
        send = send.ready().await.unwrap();
        let request = http::Request::post(uri.as_str())
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut body) = send.send_request(request, false).unwrap();
        body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
            .unwrap();
        let caught_up_tx = caught_up_tx.clone();
        readers.push(tokio::spawn(async move {
            let response = response.await.unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["content-type"], "application/grpc");
            let mut messages = Messages {
                body: response.into_body(),
                buffer: BytesMut::new(),
            };
            // Progress first, then caught up (the store is empty), then the
            // one event.
            let first = messages.next().await.unwrap();
            assert!(matches!(first.message, Some(Message::Progress(_))), "{first:?}");
            let second = messages.next().await.unwrap();
            assert!(matches!(second.message, Some(Message::CaughtUp(_))), "{second:?}");
            caught_up_tx.send(()).unwrap();
            match messages.next().await.unwrap().message {
                Some(Message::Event(event)) => event.sequence,
                other => panic!("expected the event, got {other:?}"),
            }
        }));
    }
    for _ in 0..STREAMS {
        tokio::time::timeout(Duration::from_secs(10), caught_up.recv())
            .await
            .expect("every stream caught up within 10 s")
            .unwrap();
    }

    // One write reaches every stream, once.
    let mut trade = TradeServiceClient::new(server.channel().await);
    let written = trade
        .put_records(put(vec![record("CHN", "KAZ", "2025", 1_000, "test")]))
        .await
        .unwrap()
        .into_inner();
    for reader in readers {
        let sequence = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the event within 10 s")
            .unwrap();
        assert_eq!(sequence, written.first_sequence);
    }
}

/// A query on a connection full of subscriptions is answered while they
/// wait, and they still get their events after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_next_to_subscriptions_on_the_same_connection_is_answered() {
    let server = TestServer::start().await;
    let channel = server.channel().await;
    let mut subscriptions = Vec::new();
    for _ in 0..50 {
        let mut client = pb::milestone_service_client::MilestoneServiceClient::new(channel.clone());
        let mut stream = client
            .subscribe(pb::SubscribeRequest::default())
            .await
            .unwrap()
            .into_inner();
        loop {
            let message = stream.message().await.unwrap().unwrap();
            if matches!(message.message, Some(Message::CaughtUp(_))) {
                break;
            }
        }
        subscriptions.push(stream);
    }
    let mut trade = TradeServiceClient::new(channel);
    let written = trade
        .put_records(put(vec![record("CHN", "UZB", "2024", 2_000, "test")]))
        .await
        .unwrap()
        .into_inner();
    let got = trade
        .get_record(common::get(common::key_of(&record(
            "CHN", "UZB", "2024", 2_000, "test",
        ))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.record.unwrap().value.unwrap().units, 2_000);
    for stream in &mut subscriptions {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the event within 10 s")
            .unwrap()
            .unwrap();
        match message.message {
            Some(Message::Event(event)) => assert_eq!(event.sequence, written.first_sequence),
            other => panic!("expected the event, got {other:?}"),
        }
    }
}
