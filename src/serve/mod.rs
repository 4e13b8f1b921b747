//! The gRPC server's accept loop and HTTP/2 connections, served with the
//! `h2` crate; each connection's task sends the messages of all its
//! `Subscribe` streams itself.
//!
//! An event goes to every live subscriber at once. Served the usual way
//! (tonic's server on hyper), each subscription is a future of its own per
//! HTTP/2 stream, waiting for the head to move, woken, scheduled and polled
//! for every event, its frame handed to HTTP/2 through several layers of
//! body; with 10,000 subscribers that machinery was most of a delivery's
//! cost. Here a connection's task waits for the head to move once for all
//! its subscriptions (a [`crate::stream::Relay`]), then polls each one's
//! body in a plain loop and hands what it has to HTTP/2 ([`Pipe`]), then
//! polls the connection, which writes the frames of all of them together.
//! Every call computes its answer (a subscription's: opens it) in a task of
//! its own, on whichever core is free, and with it what its body has ready
//! (tonic encodes a message as the body is polled): up to 64 KiB of a large
//! answer is encoded there, holding up no subscriber. The connection's task
//! sends it.
//!
//! What tonic's server did around the service is kept: HTTP/2 only (gRPC),
//! hyper's HTTP/2 settings and limits on reset streams (but no limit on
//! concurrent streams: the server's own limits apply per call), TLS (with
//! ALPN `h2`), a panicking call answered `INTERNAL`, a call dropped when its
//! client resets it, and on shutdown no new connections and a GOAWAY on
//! each open one, whose calls may finish. No peer address is attached to
//! requests (nothing reads one), nor a `date` header to responses.

mod pipe;

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tower_service::Service as _;

use self::pipe::{Pipe, Prepared, RequestBody};
use crate::connection::HeldWrites;
use crate::guard::Guard;
use crate::metrics::{GrpcMetered, MeteredBody};
use crate::stream::{Heads, Relay};

/// hyper's HTTP/2 settings, as tonic's server had them.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER_SIZE: usize = 400 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// tonic's routes to the services, with the metrics and the guard around
/// them.
pub(crate) type Service = GrpcMetered<Guard<Answered>>;
/// A response's body as the connection's task sends it.
type ResponseBody = Prepared<MeteredBody<tonic::body::Body>>;

/// Serves `service` on the connections `listener` accepts until `stop` is
/// cancelled; then takes no new connection, asks each open one to finish
/// (GOAWAY) and returns once all have closed, or at once when `cut` is
/// cancelled: the connections' tasks are then aborted, dropping what they
/// hold (a connection whose client stopped reading cannot finish: its last
/// frames wait for window space).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    service: Service,
    heads: Heads,
    stop: CancellationToken,
    cut: CancellationToken,
) {
    let (finish, finishing) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
            Some(ended) = connections.join_next() => {
                log_panic(ended);
                continue;
            }
        };
        match accepted {
            Ok((stream, _)) => {
                // Small responses must not wait for the client's delayed ACK.
                let _ = stream.set_nodelay(true);
                let stream = HeldWrites::new(stream);
                let (tls, finishing) = (tls.clone(), finishing.clone());
                let (service, heads) = (service.clone(), heads.clone());
                connections.spawn(async move {
                    match tls {
                        None => serve_connection(stream, service, heads, finishing).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(
                                crate::security::HANDSHAKE_TIMEOUT,
                                acceptor.accept(stream),
                            )
                            .await
                            {
                                Ok(Ok(stream)) => serve_connection(stream, service, heads, finishing).await,
                                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                                Err(_) => tracing::debug!("TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors, or a connection reset before it
                // was taken: go on after a moment rather than spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // New connections are refused from now on, not left waiting.
    drop(listener);
    let _ = finish.send(true);
    tokio::select! {
        () = async {
            while let Some(ended) = connections.join_next().await {
                log_panic(ended);
            }
        } => {}
        () = cut.cancelled() => {
            connections.abort_all();
            while connections.join_next().await.is_some() {}
        }
    }
}

fn log_panic(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended
        && e.is_panic()
    {
        tracing::error!(error = %e, "a connection's task panicked; the connection was closed");
    }
}

/// One HTTP/2 connection until it closes; asked to finish (GOAWAY) once
/// `finishing` turns true.
async fn serve_connection<IO>(io: IO, service: Service, heads: Heads, mut finishing: watch::Receiver<bool>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut asked = pin!(async move {
        let _ = finishing.wait_for(|finish| *finish).await;
    });
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
        .max_send_buffer_size(MAX_SEND_BUFFER_SIZE)
        .handshake::<_, Bytes>(io);
    let mut connection = tokio::select! {
        handshake = handshake => match handshake {
            Ok(connection) => connection,
            Err(e) => {
                tracing::debug!(error = %e, "HTTP/2 handshake failed");
                return;
            }
        },
        () = &mut asked => return,
    };
    let mut asked_to_finish = false;
    // Made when the connection's first subscription is opened (a
    // connection that never subscribes is not woken by every write).
    let mut relay: Option<Relay> = None;
    // Answers computed in the calls' tasks, to be sent by this one, and the
    // response bodies being sent (the subscriptions' for as long as they
    // last).
    let (answered, mut answers) = mpsc::unbounded_channel();
    let mut sending: Vec<Pipe<ResponseBody>> = Vec::new();
    // Aborted with the connection, as the calls' futures were dropped.
    let mut calls = JoinSet::new();
    let served = poll_fn(|cx| {
        if !asked_to_finish && asked.as_mut().poll(cx).is_ready() {
            asked_to_finish = true;
            connection.graceful_shutdown();
        }
        if let Some(relay) = &mut relay {
            relay.poll(cx);
        }
        while let Poll::Ready(Some(answer)) = answers.poll_recv(cx) {
            sending.extend(respond(answer));
        }
        // Each response hands HTTP/2 what it has to send…
        sending.retain_mut(|pipe| send_body(pipe, cx));
        while let Poll::Ready(Some(ended)) = calls.poll_join_next(cx) {
            if let Err(e) = ended
                && e.is_panic()
            {
                tracing::error!(error = %e, "a call's task panicked; its stream was reset");
            }
        }
        // …which the connection writes together, and reads what comes in.
        loop {
            match connection.poll_accept(cx) {
                Poll::Ready(Some(Ok((mut request, respond)))) => {
                    if request.uri().path() == crate::api::SUBSCRIBE_PATH {
                        // Polled (registered) at the start of the round
                        // that receives the subscription, before its body:
                        // it passes on every beat since it was made.
                        let relay = relay.get_or_insert_with(|| heads.relay());
                        request.extensions_mut().insert(relay.relayed());
                    }
                    calls.spawn(answer(service.clone(), request, respond, answered.clone()));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "gRPC connection ended");
    }
}

/// Sends what a response body has ready; `false` once its stream has
/// ended.
fn send_body(pipe: &mut Pipe<ResponseBody>, cx: &mut std::task::Context<'_>) -> bool {
    match std::panic::catch_unwind(AssertUnwindSafe(|| pipe.poll_send(cx))) {
        Ok(Poll::Pending) => true,
        Ok(Poll::Ready(Ok(()))) => false,
        Ok(Poll::Ready(Err(e))) => {
            tracing::debug!(error = %e, "a response ended early");
            false
        }
        Err(_) => {
            tracing::error!("a response body panicked; its stream was reset");
            pipe.reset(Reason::INTERNAL_ERROR);
            false
        }
    }
}

/// A call's answer, computed in the call's task.
struct Answer {
    respond: SendResponse<Bytes>,
    head: http::response::Parts,
    body: ResponseBody,
}

/// Sends an answer's head: the whole response when its body is empty
/// (trailers-only), else a [`Pipe`] for the body.
fn respond(
    Answer {
        mut respond,
        head,
        body,
    }: Answer,
) -> Option<Pipe<ResponseBody>> {
    let end = http_body::Body::is_end_stream(&body);
    match respond.send_response(http::Response::from_parts(head, ()), end) {
        Ok(_) if end => None,
        Ok(stream) => Some(Pipe::new(body, stream)),
        Err(e) => {
            tracing::debug!(error = %e, "sending a response failed");
            respond.send_reset(Reason::INTERNAL_ERROR);
            None
        }
    }
}

/// One call's answer, computed in a task of its own with what its body has
/// ready (see [`Prepared`]), then handed to the connection's task to send
/// (so that its head, message and trailers go out in one write, and a
/// subscription is polled by that task alone). A panic anywhere in the
/// call answers `INTERNAL`. Dropped when the client resets the stream
/// before the answer is ready.
async fn answer(
    mut service: Service,
    request: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    answered: mpsc::UnboundedSender<Answer>,
) {
    let subscribe = request.uri().path() == crate::api::SUBSCRIBE_PATH;
    let computed = AssertUnwindSafe(async {
        let Ok(()) =
            poll_fn(|cx| tower_service::Service::<http::Request<RequestBody>>::poll_ready(&mut service, cx))
                .await;
        let Ok(response) = service.call(request.map(RequestBody::new)).await;
        let (head, body) = response.into_parts();
        let mut body = Prepared::later(body);
        // A subscription's body is polled by the connection's task alone.
        if !subscribe {
            poll_fn(|cx| {
                body.prepare(cx);
                Poll::Ready(())
            })
            .await;
        }
        (head, body)
    })
    .catch_unwind();
    let mut computed = pin!(computed);
    let computed = poll_fn(|cx| {
        if let Poll::Ready(computed) = computed.as_mut().poll(cx) {
            return Poll::Ready(Some(computed));
        }
        respond.poll_reset(cx).map(|_| None)
    });
    let Some(computed) = computed.await else {
        return;
    };
    let (head, body) = computed.unwrap_or_else(|_| {
        tracing::error!("a call panicked");
        let (head, ()) = internal().into_http::<()>().into_parts();
        (head, Prepared::empty())
    });
    // The connection's task is gone only once the connection is.
    let _ = answered.send(Answer { respond, head, body });
}

/// A call that failed inside the server (it panicked).
fn internal() -> Status {
    Status::internal("the call failed inside the server")
}

/// tonic's routes, a call that panics answered `INTERNAL` inside the
/// metrics layer, which counts it so (`answer` answers a panic anywhere
/// else in a call the same way; the metrics then count it `CANCELLED`).
#[derive(Clone)]
pub(crate) struct Answered(pub tonic::service::Routes);

impl tower_service::Service<http::Request<tonic::body::Body>> for Answered {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        tower_service::Service::<http::Request<tonic::body::Body>>::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let answer = AssertUnwindSafe(self.0.call(request)).catch_unwind();
        Box::pin(answer.map(|answered| {
            answered.unwrap_or_else(|_| {
                tracing::error!("a call panicked");
                Ok(internal().into_http())
            })
        }))
    }
}
