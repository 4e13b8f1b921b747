//! Between HTTP/2 streams (the `h2` crate) and the bodies of requests and
//! responses (`http_body`), as hyper passes them.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http_body::{Body, Frame};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
