//! `Subscribe`, answered by the server itself: each event framed once for
//! all its subscribers, and the frames of a stream written with no layer
//! between the subscription and HTTP/2.
//!
//! Live subscribers all send the same newest events at the same moment.
//! Through the generated service, each stream turned each event into its API
//! message, encoded it, copied it behind a gRPC prefix, and passed it up
//! through tonic's streaming body: 10,000 times over for 10,000 subscribers.
//! [`MilestoneServer`] serves `MilestoneService` as generated, except that
//! `Subscribe` answers with a body of its own ([`SubscribeBody`]): an
//! event's `SubscribeResponse`, with its gRPC prefix, is framed by the first
//! stream that sends it and kept ([`FRAMED_EVENTS`] of the newest), and every
//! other stream sends the same bytes. A stream behind by several messages
//! hands HTTP/2 up to 16 KiB of them at once.
//!
//! The request is read as tonic reads it (its decoder, size limit and
//! errors); the response is what tonic would send: `content-type:
//! application/grpc`, length-prefixed messages, `grpc-status` in trailers.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use prost::Message as _;
use tokio_stream::Stream;
use tonic::codec::{Codec, Streaming};
use tonic::codegen::{BoxFuture, StdError};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Request, Status};
use tonic_prost::ProstCodec;

use super::MilestoneApi;
use super::milestones::{OpenSubscription, subscription_ended};
use crate::pb::{self, milestone_service_server::MilestoneServiceServer};
use crate::stream::{Message, Subscription};

pub(crate) const SUBSCRIBE_PATH: &str = "/tradewatch.v1.MilestoneService/Subscribe";
/// Framed events kept: as many as the store keeps decoded for live
/// subscribers.
pub const FRAMED_EVENTS: usize = crate::store::RECENT_EVENTS;
/// A stream behind by several messages hands HTTP/2 this many bytes of them
/// at once, or a little more (they are copied together).
const MOST_BYTES_TOGETHER: usize = 16 * 1024;

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

/// The newest events' `SubscribeResponse`s, framed, by sequence.
type Framed = quick_cache::sync::Cache<u64, Bytes>;

/// `message` as gRPC sends it: an uncompressed flag, its length in 4 bytes,
/// the encoded `SubscribeResponse` (events framed once for every stream).
fn frame(message: &Message, framed: &Framed) -> crate::error::Result<Bytes> {
    let frame = || {
        let response = to_pb(message)?;
        let len = response.encoded_len();
        let mut buf = BytesMut::with_capacity(5 + len);
        buf.put_u8(0);
        // An event's message is a few hundred bytes, far below 4 GiB.
        buf.put_u32(len as u32);
        response.encode_raw(&mut buf);
        Ok(buf.freeze())
    };
    match message {
        Message::Event(event) => framed.get_or_insert_with(&event.sequence, frame),
        Message::CaughtUp { .. } | Message::Progress { .. } => frame(),
    }
}

/// `MilestoneService`, with `Subscribe` answered by [`SubscribeBody`].
#[derive(Clone)]
pub struct MilestoneServer {
    api: Arc<MilestoneApi>,
    generated: MilestoneServiceServer<MilestoneApi>,
    framed: Arc<Framed>,
    max_request_bytes: usize,
}

impl MilestoneServer {
    pub fn new(api: MilestoneApi, max_request_bytes: usize) -> Self {
        let api = Arc::new(api);
        MilestoneServer {
            generated: MilestoneServiceServer::from_arc(api.clone())
                .max_decoding_message_size(max_request_bytes),
            api,
            framed: Arc::new(Framed::new(FRAMED_EVENTS)),
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
        let (api, framed, max) = (self.api.clone(), self.framed.clone(), self.max_request_bytes);
        Box::pin(async move {
            let answered = async {
                let request = read_request(request, max).await?;
                let OpenSubscription { messages, permit } = api.open_subscription(request).await?;
                let body = SubscribeBody {
                    messages,
                    _permit: permit,
                    framed,
                    last: None,
                    ended: false,
                };
                let mut response = http::Response::new(tonic::body::Body::new(body));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/grpc"),
                );
                Ok::<_, Status>(response)
            };
            Ok(answered.await.unwrap_or_else(Status::into_http))
        })
    }
}

/// The one `SubscribeRequest` of a call, read as tonic's generated service
/// reads it: its decoder, the size limit, its metadata and trailers.
async fn read_request<B>(
    request: http::Request<B>,
    max: usize,
) -> Result<Request<pb::SubscribeRequest>, Status>
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    let (parts, body) = request.into_parts();
    // As tonic's server without compression: a compressed request is refused.
    if let Some(encoding) = parts.headers.get("grpc-encoding")
        && encoding != "identity"
    {
        let mut status = Status::unimplemented(format!(
            "Content is compressed with `{}` which isn't supported",
            String::from_utf8_lossy(encoding.as_bytes())
        ));
        status.metadata_mut().insert(
            "grpc-accept-encoding",
            tonic::metadata::MetadataValue::from_static("identity"),
        );
        return Err(status);
    }
    let decoder = ProstCodec::<pb::SubscribeResponse, pb::SubscribeRequest>::default().decoder();
    let mut messages = Streaming::new_request(decoder, body, None, Some(max));
    let message = messages
        .message()
        .await?
        .ok_or_else(|| Status::internal("Missing request message."))?;
    let mut headers = parts.headers;
    if let Some(trailers) = messages.trailers().await? {
        headers.extend(trailers.into_headers());
    }
    Ok(Request::from_parts(
        MetadataMap::from_headers(headers),
        parts.extensions,
        message,
    ))
}

/// The body of a `Subscribe` response: the subscription's messages, framed,
/// then its end as trailers.
struct SubscribeBody {
    messages: Subscription,
    _permit: tokio::sync::OwnedSemaphorePermit,
    framed: Arc<Framed>,
    /// How the stream ends, once the messages before it are sent.
    last: Option<Status>,
    ended: bool,
}

impl http_body::Body for SubscribeBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(status) = this.last.take() {
            return Poll::Ready(Some(Ok(this.end(status))));
        }
        let mut data: Option<Bytes> = None;
        let mut together: Option<BytesMut> = None;
        loop {
            let message = match Pin::new(&mut this.messages).poll_next(cx) {
                Poll::Ready(Some(Ok(message))) => message,
                Poll::Ready(Some(Err(e))) => {
                    this.last = Some(e.into());
                    break;
                }
                Poll::Ready(None) => {
                    this.last = Some(subscription_ended());
                    break;
                }
                Poll::Pending => break,
            };
            let bytes = match frame(&message, &this.framed) {
                Ok(bytes) => bytes,
                Err(e) => {
                    this.last = Some(e.into());
                    break;
                }
            };
            // One message is sent as it is framed; several are copied
            // together.
            let held = match (&mut together, data.take()) {
                (Some(buf), _) => {
                    buf.extend_from_slice(&bytes);
                    buf.len()
                }
                (None, Some(first)) => {
                    let mut buf = BytesMut::with_capacity(first.len() + bytes.len());
                    buf.extend_from_slice(&first);
                    buf.extend_from_slice(&bytes);
                    let held = buf.len();
                    together = Some(buf);
                    held
                }
                (None, None) => {
                    let held = bytes.len();
                    data = Some(bytes);
                    held
                }
            };
            if held >= MOST_BYTES_TOGETHER {
                break;
            }
        }
        match (together, data) {
            (Some(buf), _) => Poll::Ready(Some(Ok(Frame::data(buf.freeze())))),
            (None, Some(bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            (None, None) => match this.last.take() {
                Some(status) => Poll::Ready(Some(Ok(this.end(status)))),
                None => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

impl SubscribeBody {
    /// The trailers that end the stream with `status`.
    fn end(&mut self, status: Status) -> Frame<Bytes> {
        self.ended = true;
        let mut trailers = http::HeaderMap::new();
        if let Err(status) = status.add_header(&mut trailers) {
            // Only a message that cannot be a header value fails; the code
            // alone still ends the stream.
            trailers.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
        }
        Frame::trailers(trailers)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prost::Message as _;

    use super::*;

    #[test]
    fn every_message_is_framed_as_the_generated_service_would_and_events_once() {
        let event = Arc::new(crate::domain::record_stored_for_tests(7));
        let framed = Framed::new(FRAMED_EVENTS);
        for message in [
            Message::Event(event.clone()),
            Message::CaughtUp { head: 7 },
            Message::Progress { head: 7, next: 8 },
        ] {
            let bytes = frame(&message, &framed).unwrap();
            let expected = to_pb(&message).unwrap();
            assert_eq!(bytes[0], 0, "uncompressed");
            assert_eq!(
                u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize,
                bytes.len() - 5
            );
            assert_eq!(pb::SubscribeResponse::decode(&bytes[5..]).unwrap(), expected);
        }
        // The second stream to send event 7 sends the same bytes.
        let first = frame(&Message::Event(event.clone()), &framed).unwrap();
        let second = frame(&Message::Event(event), &framed).unwrap();
        assert_eq!(first.as_ptr(), second.as_ptr());
        assert_eq!(framed.len(), 1);
    }
}
