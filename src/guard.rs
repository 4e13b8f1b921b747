//! A tower layer that every call passes before it reaches a service: it
//! checks the bearer token (see [`crate::security`]), refuses a request
//! message larger than the limit as soon as its length is announced, and
//! ends a call whose `grpc-timeout` has passed with `DEADLINE_EXCEEDED`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderMap};

use crate::security::Auth;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Wraps the server's routes in a [`Guard`].
#[derive(Debug, Clone)]
pub struct GuardLayer {
    settings: Arc<Settings>,
}

#[derive(Debug)]
struct Settings {
    auth: Auth,
    max_request_bytes: usize,
}

impl GuardLayer {
    pub fn new(auth: Auth, max_request_bytes: usize) -> Self {
        GuardLayer {
            settings: Arc::new(Settings {
                auth,
                max_request_bytes,
            }),
        }
    }
}

impl<S> tower_layer::Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            settings: self.settings.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Guard<S> {
    inner: S,
    settings: Arc<Settings>,
}

type ResponseFuture<E> = Pin<Box<dyn Future<Output = Result<http::Response<Body>, E>> + Send>>;

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for Guard<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: HttpBody<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if let Err(status) = self.settings.auth.check(request.uri().path(), request.headers()) {
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        let timeout = grpc_timeout(request.headers());
        let deadline = timeout.map(|t| Instant::now() + t);
        let max = self.settings.max_request_bytes;
        let request = request.map(|body| Body::new(SizeLimited::new(body, max)));
        // The service that `poll_ready` readied is the one to call.
        let ready = self.inner.clone();
        let response = std::mem::replace(&mut self.inner, ready).call(request);
        Box::pin(async move {
            let (Some(timeout), Some(deadline)) = (timeout, deadline) else {
                return Ok(response.await?.map(Body::new));
            };
            match tokio::time::timeout_at(deadline, response).await {
                Ok(response) => {
                    Ok(response?.map(|body| Body::new(WithDeadline::new(body, deadline, timeout))))
                }
                Err(_) => Ok(deadline_exceeded(timeout).into_http()),
            }
        })
    }
}

fn deadline_exceeded(timeout: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "deadline exceeded: the call did not finish within its grpc-timeout of {timeout:?}"
    ))
}

/// The `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n).
/// A malformed one is ignored, as gRPC servers do.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    parse_grpc_timeout(headers.get("grpc-timeout")?.to_str().ok()?)
}

/// A `grpc-timeout` value; `None` when malformed.
pub(crate) fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if !(2..=9).contains(&value.len()) {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A request body that follows the gRPC framing (a flag byte and a 4-byte
/// length before each message) and fails with `RESOURCE_EXHAUSTED` as soon
/// as a message longer than `max` bytes is announced, before it is read.
struct SizeLimited<B> {
    inner: Pin<Box<B>>,
    max: usize,
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
    failed: bool,
}

impl<B> SizeLimited<B> {
    fn new(inner: B, max: usize) -> Self {
        SizeLimited {
            inner: Box::pin(inner),
            max,
            prefix: [0; 5],
            prefix_len: 0,
            remaining: 0,
            failed: false,
        }
    }

    fn scan(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len() as u64) as usize;
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            data = &data[n..];
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                let len = u64::from(u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]));
                if len > self.max as u64 {
                    return Err(Status::resource_exhausted(format!(
                        "request message of {len} bytes is larger than the limit of {} bytes \
                         (max_request_bytes, --max-request-bytes)",
                        self.max
                    )));
                }
                self.remaining = len;
            }
        }
        Ok(())
    }
}

impl<B> HttpBody for SizeLimited<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        match ready!(this.inner.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref()
                    && let Err(status) = this.scan(data)
                {
                    this.failed = true;
                    return Poll::Ready(Some(Err(Box::new(status))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body (a stream of messages) that ends with
/// `DEADLINE_EXCEEDED` when the call's deadline passes before it does.
struct WithDeadline<B> {
    inner: Pin<Box<B>>,
    sleep: Pin<Box<Sleep>>,
    timeout: Duration,
    done: bool,
}

impl<B> WithDeadline<B> {
    fn new(inner: B, deadline: Instant, timeout: Duration) -> Self {
        WithDeadline {
            inner: Box::pin(inner),
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            timeout,
            done: false,
        }
    }
}

impl<B> HttpBody for WithDeadline<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.inner.as_mut().poll_frame(cx) {
            if frame.is_none() {
                this.done = true;
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        ready!(this.sleep.as_mut().poll(cx));
        this.done = true;
        let mut trailers = HeaderMap::new();
        if let Err(status) = deadline_exceeded(this.timeout).add_header(&mut trailers) {
            return Poll::Ready(Some(Err(Box::new(status))));
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let parse = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("15S"), Some(Duration::from_secs(15)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "100", "1x", "-1S", "123456789S", "1.5S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    /// One message split across chunks at every position is measured right.
    #[test]
    fn message_lengths_are_read_across_chunks() {
        let mut frame = vec![0u8];
        frame.extend_from_slice(&10u32.to_be_bytes());
        frame.extend_from_slice(&[7; 10]);
        let mut big = vec![0u8];
        big.extend_from_slice(&11u32.to_be_bytes());
        let stream: Vec<u8> = [frame.clone(), frame.clone(), big].concat();
        for split in 0..stream.len() {
            let mut body = SizeLimited::new(Body::empty(), 10);
            let first = body.scan(&stream[..split]);
            let result = first.and_then(|()| body.scan(&stream[split..]));
            let status = result.expect_err("the third message is too large");
            assert_eq!(status.code(), tonic::Code::ResourceExhausted);
            assert!(status.message().contains("11 bytes"), "{}", status.message());
        }
        let mut body = SizeLimited::new(Body::empty(), 10);
        assert!(body.scan(&[frame.clone(), frame].concat()).is_ok());
    }
}
