//! Subscribers that cost the bench little, so that at 10,000 of them the
//! two cores go to the server: plain HTTP/2 (the `h2` crate), one task per
//! connection reading all its streams, and of each message only what the
//! bench needs (its kind and an event's sequence; protobuf skips the rest).
//! They speak gRPC as any client does: a `Subscribe` request with an empty
//! `SubscribeRequest`, length-prefixed messages, flow control released as
//! data is read.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use prost::Message as _;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// What the bench reads of a `SubscribeResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct Response {
    #[prost(message, optional, tag = "1")]
    event: Option<Event>,
    #[prost(message, optional, tag = "2")]
    caught_up: Option<CaughtUp>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(uint64, tag = "1")]
    sequence: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct CaughtUp {
    #[prost(uint64, tag = "1")]
    head_sequence: u64,
}

/// Each delivery: the event's sequence and when it arrived.
pub type Deliveries = Arc<Mutex<Vec<(u64, Instant)>>>;

/// A connection's subscribers at work.
pub struct Connection {
    /// Fires once every stream has caught up.
    pub ready: oneshot::Receiver<()>,
    /// The connection's deliveries (its own: no lock shared with the others).
    pub deliveries: Deliveries,
    pub reader: JoinHandle<anyhow::Result<()>>,
}

/// One connection with `streams` live subscriptions (from now on), each
/// read until it has seen `events` events.
pub async fn connect(addr: &str, streams: usize, events: usize) -> anyhow::Result<Connection> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (mut send, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 24)
        .handshake::<_, Bytes>(tcp)
        .await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let uri = format!("http://{addr}/tradewatch.v1.MilestoneService/Subscribe");
    let mut responses = Vec::with_capacity(streams);
    for _ in 0..streams {
        send = send.ready().await?;
        let request = http::Request::post(uri.as_str())
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())?;
        let (response, mut body) = send.send_request(request, false)?;
        // An empty `SubscribeRequest`: not compressed, length 0.
        body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)?;
        responses.push(response);
    }
    let mut bodies = Vec::with_capacity(streams);
    for response in responses {
        let response = response.await?;
        anyhow::ensure!(
            response.status() == 200,
            "Subscribe answered {}",
            response.status()
        );
        bodies.push(response.into_body());
    }
    let (ready_tx, ready) = oneshot::channel();
    let deliveries = Deliveries::default();
    let reader = tokio::spawn(read(bodies, events, ready_tx, deliveries.clone()));
    Ok(Connection {
        ready,
        deliveries,
        reader,
    })
}

/// Reads every stream of a connection in this one task.
async fn read(
    bodies: Vec<h2::RecvStream>,
    events: usize,
    ready: oneshot::Sender<()>,
    deliveries: Deliveries,
) -> anyhow::Result<()> {
    let streams = bodies.len();
    let mut chunks = futures_util::stream::select_all(bodies.into_iter().enumerate().map(|(i, body)| {
        Box::pin(futures_util::stream::unfold(body, move |mut body| async move {
            let data = body.data().await?;
            if let Ok(data) = &data {
                let _ = body.flow_control().release_capacity(data.len());
            }
            Some(((i, data), body))
        }))
    }));
    let mut buffers = vec![BytesMut::new(); streams];
    let mut seen = vec![0usize; streams];
    let (mut caught_up, mut done) = (0, 0);
    let mut ready = Some(ready);
    while let Some((i, data)) = chunks.next().await {
        let arrived = Instant::now();
        let buffer = &mut buffers[i];
        buffer.extend_from_slice(&data?);
        while buffer.len() >= 5 {
            let len = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
            if buffer.len() < 5 + len {
                break;
            }
            buffer.advance(5);
            let message = Response::decode(buffer.split_to(len).freeze())?;
            if let Some(event) = message.event {
                deliveries.lock().unwrap().push((event.sequence, arrived));
                seen[i] += 1;
                if seen[i] == events {
                    done += 1;
                }
            } else if message.caught_up.is_some() {
                caught_up += 1;
                if caught_up == streams
                    && let Some(ready) = ready.take()
                {
                    let _ = ready.send(());
                }
            }
        }
        if done == streams {
            return Ok(());
        }
    }
    anyhow::bail!("a subscription ended before its {events} events")
}
