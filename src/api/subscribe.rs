//! `Subscribe` with each event encoded once for all its subscribers.
//!
//! Live subscribers all send the same newest events at the same moment.
//! Through the generated service, each stream turned each event into its
//! API message and encoded it: 10,000 times over for 10,000 subscribers.
//! [`MilestoneServer`] serves `MilestoneService` as generated, except that
//! `Subscribe` answers with messages already encoded: an event's
//! `SubscribeResponse` is encoded by the first stream that sends it and
//! kept ([`ENCODED_EVENTS`] of the newest), and every other stream sends the
//! same bytes.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes};
use prost::Message as _;
use tokio_stream::Stream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, StdError};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use super::MilestoneApi;
use crate::pb::{self, milestone_service_server::MilestoneServiceServer};
use crate::stream::Message;

const SUBSCRIBE_PATH: &str = "/tradewatch.v1.MilestoneService/Subscribe";
/// Encoded events kept: as many as the store keeps decoded for live
/// subscribers.
pub const ENCODED_EVENTS: usize = crate::store::RECENT_EVENTS;

/// A `Subscribe` message as the API sends it.
pub(super) fn to_pb(message: &Message) -> crate::error::Result<pb::SubscribeResponse> {
    let message = match message {
        Message::Event(event) => pb::subscribe_response::Message::Event(super::convert::event_to_pb(event)?),
        Message::CaughtUp { head } => {
            pb::subscribe_response::Message::CaughtUp(pb::CaughtUp { head_sequence: *head })
        }
        Message::Progress { head, next } => pb::subscribe_response::Message::Progress(pb::Progress {
            head_sequence: *head,
            next_sequence: *next,
        }),
    };
    Ok(pb::SubscribeResponse {
        message: Some(message),
    })
}

/// The newest events' `SubscribeResponse`s, encoded, by sequence.
type Encoded = quick_cache::sync::Cache<u64, Bytes>;

fn encode(message: &Message, encoded: &Encoded) -> crate::error::Result<Bytes> {
    let encode = || to_pb(message).map(|m| Bytes::from(m.encode_to_vec()));
    match message {
        Message::Event(event) => encoded.get_or_insert_with(&event.sequence, encode),
        Message::CaughtUp { .. } | Message::Progress { .. } => encode(),
    }
}

impl MilestoneApi {
    /// `Subscribe`, each message encoded (events once for every stream).
    async fn subscribe_encoded(
        &self,
        request: Request<pb::SubscribeRequest>,
        encoded: Arc<Encoded>,
    ) -> Result<Response<EncodedStream>, Status> {
        let messages = self.open_subscription(request).await?;
        let bytes = tokio_stream::StreamExt::map(messages, move |message| Ok(encode(&message?, &encoded)?));
        Ok(Response::new(Box::pin(bytes)))
    }
}

type EncodedStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

/// `MilestoneService`, with `Subscribe` sending pre-encoded messages.
#[derive(Clone)]
pub struct MilestoneServer {
    api: Arc<MilestoneApi>,
    generated: MilestoneServiceServer<MilestoneApi>,
    encoded: Arc<Encoded>,
    max_request_bytes: usize,
}

impl MilestoneServer {
    pub fn new(api: MilestoneApi, max_request_bytes: usize) -> Self {
        let api = Arc::new(api);
        MilestoneServer {
            generated: MilestoneServiceServer::from_arc(api.clone())
                .max_decoding_message_size(max_request_bytes),
            api,
            encoded: Arc::new(Encoded::new(ENCODED_EVENTS)),
            max_request_bytes,
        }
    }
}

impl NamedService for MilestoneServer {
    const NAME: &'static str = <MilestoneServiceServer<MilestoneApi> as NamedService>::NAME;
}

impl<B> tower_service::Service<http::Request<B>> for MilestoneServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != SUBSCRIBE_PATH {
            return self.generated.call(request);
        }
        let service = EncodedSubscribe {
            api: self.api.clone(),
            encoded: self.encoded.clone(),
        };
        let max_request_bytes = self.max_request_bytes;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(EncodedCodec)
                .apply_max_message_size_config(Some(max_request_bytes), None);
            Ok(grpc.server_streaming(service, request).await)
        })
    }
}

struct EncodedSubscribe {
    api: Arc<MilestoneApi>,
    encoded: Arc<Encoded>,
}

impl tonic::server::ServerStreamingService<pb::SubscribeRequest> for EncodedSubscribe {
    type Response = Bytes;
    type ResponseStream = EncodedStream;
    type Future = BoxFuture<Response<EncodedStream>, Status>;

    fn call(&mut self, request: Request<pb::SubscribeRequest>) -> Self::Future {
        let (api, encoded) = (self.api.clone(), self.encoded.clone());
        Box::pin(async move { api.subscribe_encoded(request, encoded).await })
    }
}

/// Decodes a `SubscribeRequest` as the generated service does; sends
/// messages that are already encoded as they are.
struct EncodedCodec;

impl Codec for EncodedCodec {
    type Encode = Bytes;
    type Decode = pb::SubscribeRequest;
    type Encoder = PassThrough;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> PassThrough {
        PassThrough
    }

    fn decoder(&mut self) -> RequestDecoder {
        RequestDecoder(ProstCodec::<pb::SubscribeResponse, pb::SubscribeRequest>::default().decoder())
    }
}

struct PassThrough;

impl Encoder for PassThrough {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

struct RequestDecoder(<ProstCodec<pb::SubscribeResponse, pb::SubscribeRequest> as Codec>::Decoder);

impl Decoder for RequestDecoder {
    type Item = pb::SubscribeRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<pb::SubscribeRequest>, Status> {
        self.0.decode(src)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prost::Message as _;

    use super::*;

    #[test]
    fn every_message_encodes_as_the_generated_service_would_and_events_once() {
        let event = Arc::new(crate::domain::record_stored_for_tests(7));
        let encoded = Encoded::new(ENCODED_EVENTS);
        for message in [
            Message::Event(event.clone()),
            Message::CaughtUp { head: 7 },
            Message::Progress { head: 7, next: 8 },
        ] {
            let bytes = encode(&message, &encoded).unwrap();
            let expected = to_pb(&message).unwrap();
            assert_eq!(pb::SubscribeResponse::decode(bytes).unwrap(), expected);
        }
        // The second stream to send event 7 sends the same bytes.
        let first = encode(&Message::Event(event.clone()), &encoded).unwrap();
        let second = encode(&Message::Event(event), &encoded).unwrap();
        assert_eq!(first.as_ptr(), second.as_ptr());
        assert_eq!(encoded.len(), 1);
    }
}
