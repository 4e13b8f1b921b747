//! Between HTTP/2 streams (the `h2` crate) and the bodies of requests and
//! responses (`http_body`), as hyper passes them.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http_body::{Body, Frame};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Response data a call's task makes ready before it hands the response
/// over, at most (or a little more: whole frames).
const MOST_PREPARED: usize = 64 * 1024;

/// A request's body: its DATA frames, then its trailers. What is read is
/// released to the client's flow-control window at once.
pub(super) struct RequestBody {
    stream: RecvStream,
    data_done: bool,
}

impl RequestBody {
    pub(super) fn new(stream: RecvStream) -> Self {
        RequestBody {
            stream,
            data_done: false,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match ready!(self.stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }
}

/// A response's body being sent on its stream, as hyper sends one: a chunk
/// is taken from the body only once the one before has been handed to
/// HTTP/2, and handed over only when the stream has window for some of it
/// (so a client that stops reading stops the body being read); the
/// trailers end the stream; a client's reset ends the sending.
pub(super) struct Pipe<B> {
    body: B,
    stream: SendStream<Bytes>,
    /// A chunk waiting for window, and whether it ends the stream.
    waiting: Option<(Bytes, bool)>,
}

/// Why a [`Pipe`] stopped early.
#[derive(Debug, thiserror::Error)]
pub(super) enum Stopped {
    #[error("the client reset the stream ({0:?})")]
    Reset(Reason),
    #[error("sending failed: {0}")]
    Send(#[from] h2::Error),
    #[error("the response body failed: {0}")]
    Body(BoxError),
}

impl<B> Pipe<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    pub(super) fn new(body: B, stream: SendStream<Bytes>) -> Self {
        Pipe {
            body,
            stream,
            waiting: None,
        }
    }

    /// Ends the stream at once with a `RST_STREAM`.
    pub(super) fn reset(&mut self, reason: Reason) {
        self.stream.send_reset(reason);
    }

    /// Sends what the body has ready and the window allows; `Ready` once
    /// the stream has ended.
    pub(super) fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Stopped>> {
        // Registers for the client's RST_STREAM while waiting for the body
        // or for window.
        if let Poll::Ready(reason) = self.stream.poll_reset(cx)? {
            return Poll::Ready(Err(Stopped::Reset(reason)));
        }
        loop {
            if let Some((chunk, end)) = self.waiting.take() {
                while self.stream.capacity() == 0 {
                    match self.stream.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                        Poll::Ready(None) => return Poll::Ready(Err(Stopped::Reset(Reason::CANCEL))),
                        Poll::Pending => {
                            self.waiting = Some((chunk, end));
                            return Poll::Pending;
                        }
                    }
                }
                self.stream.send_data(chunk, end)?;
                if end {
                    return Poll::Ready(Ok(()));
                }
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => {
                        let end = self.body.is_end_stream();
                        if chunk.is_empty() {
                            // Needs no window.
                            self.stream.send_data(chunk, end)?;
                            if end {
                                return Poll::Ready(Ok(()));
                            }
                            continue;
                        }
                        // A claim on the window for this chunk only once it
                        // is in hand (hyper's fix of its #4003).
                        self.stream.reserve_capacity(1);
                        self.waiting = Some((chunk, end));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.stream.reserve_capacity(0);
                            self.stream.send_trailers(trailers)?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
                Some(Err(e)) => {
                    self.stream.send_reset(Reason::INTERNAL_ERROR);
                    return Poll::Ready(Err(Stopped::Body(e.into())));
                }
                None => {
                    self.stream.send_data(Bytes::new(), true)?;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// A response body with the frames its call's task had made ready before
/// handing it to the connection's task. tonic encodes a response as its
/// body is polled; polled first in the call's task, a large answer is
/// encoded there, not in the connection's task, where it would hold up the
/// connection's subscriptions.
pub(super) struct Prepared<B: Body> {
    ready: VecDeque<Result<Frame<Bytes>, B::Error>>,
    /// The body after those frames; `None` once it has ended.
    rest: Option<B>,
}

impl<B> Prepared<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    /// `body`, nothing taken from it yet.
    pub(super) fn later(body: B) -> Self {
        Prepared {
            ready: VecDeque::new(),
            rest: Some(body),
        }
    }

    /// No body at all.
    pub(super) fn empty() -> Self {
        Prepared {
            ready: VecDeque::new(),
            rest: None,
        }
    }

    /// Takes from the body the frames it has ready now, up to
    /// [`MOST_PREPARED`] bytes of data.
    pub(super) fn prepare(&mut self, cx: &mut Context<'_>) {
        let mut bytes = 0;
        while bytes < MOST_PREPARED {
            let Some(body) = &mut self.rest else { return };
            if body.is_end_stream() {
                self.rest = None;
                return;
            }
            match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    bytes += frame.data_ref().map_or(0, Bytes::len);
                    self.ready.push_back(Ok(frame));
                }
                Poll::Ready(Some(Err(e))) => {
                    self.ready.push_back(Err(e));
                    self.rest = None;
                }
                Poll::Ready(None) => self.rest = None,
                Poll::Pending => return,
            }
        }
    }
}

impl<B> Body for Prepared<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if let Some(frame) = self.ready.pop_front() {
            return Poll::Ready(Some(frame));
        }
        let Some(rest) = &mut self.rest else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(rest).poll_frame(cx));
        if frame.is_none() {
            self.rest = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::task::Waker;

    use http_body_util::{BodyExt as _, StreamBody};

    use super::*;

    /// A body of `chunks` data frames of 1 KiB (the i-th filled with i),
    /// then trailers, all ready at once.
    fn ready_body(
        chunks: u8,
    ) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Unpin> {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames = (0..chunks)
            .map(|i| Ok(Frame::data(Bytes::from(vec![i; 1024]))))
            .chain(std::iter::once(Ok(Frame::trailers(trailers))));
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_prepared_body_keeps_what_was_ready_and_the_rest_in_order() {
        let mut cx = Context::from_waker(Waker::noop());
        // Small: everything is made ready, trailers included.
        let mut small = Prepared::later(ready_body(3));
        small.prepare(&mut cx);
        assert_eq!(small.ready.len(), 4);
        assert!(small.rest.is_none());
        // Large: up to 64 KiB, the rest left in the body.
        let mut large = Prepared::later(ready_body(100));
        large.prepare(&mut cx);
        assert_eq!(large.ready.len(), MOST_PREPARED / 1024);
        assert!(large.rest.is_some());
        for (prepared, chunks) in [(small, 3u8), (large, 100)] {
            assert!(!prepared.is_end_stream());
            let collected = prepared.collect().await.unwrap();
            assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
            let data = collected.to_bytes();
            let expected: Vec<u8> = (0..chunks).flat_map(|i| vec![i; 1024]).collect();
            assert_eq!(data, expected);
        }
        assert!(
            Prepared::<StreamBody<futures_util::stream::Empty<Result<Frame<Bytes>, Infallible>>>>::empty()
                .is_end_stream()
        );
    }
}
