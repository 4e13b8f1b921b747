//! The gRPC server's accept loop and HTTP/2 connections, each connection's
//! calls run inside its own task.
//!
//! tonic's server gives every call (HTTP/2 stream) a task of its own. For a
//! subscription that is a task woken, scheduled and polled for each event,
//! and a connection task woken after it to write that one frame: with 10,000
//! subscribers most of a delivery's cost. Here the calls of a connection are
//! futures its task polls itself ([`Calls`]): an event wakes the
//! subscriptions of a connection at once, the task polls each (they hand
//! their frames to HTTP/2), then the connection, which writes the frames of
//! all of them together. A connection's calls share its task the way they
//! share its socket; the store's blocking work runs on the blocking pool, so
//! no call holds up the others for long.
//!
//! What tonic's server did around the service is kept: HTTP/2 only (gRPC),
//! its HTTP/2 settings, TLS (with ALPN `h2`), and on shutdown no new
//! connections and a GOAWAY on each open one, whose calls may finish.

use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::connection::HeldWrites;
use crate::guard::Guard;
use crate::metrics::GrpcMetered;

/// How long a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// tonic's default: how long an HTTP/2 keep-alive ping may go unanswered
/// (pings are sent only when an interval is set, which it is not).
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// tonic's routes to the services, with the metrics and the guard around
/// them.
pub(crate) type Service = GrpcMetered<Guard<tonic::service::Routes>>;
type Call = Pin<Box<dyn Future<Output = ()> + Send>>;

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
    stop: CancellationToken,
    cut: CancellationToken,
) {
    let (finish, finishing) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next() => continue,
        };
        match accepted {
            Ok((stream, _)) => {
                // Small responses must not wait for the client's delayed ACK.
                let _ = stream.set_nodelay(true);
                let stream = HeldWrites::new(stream);
                let (tls, service, finishing) = (tls.clone(), service.clone(), finishing.clone());
                connections.spawn(async move {
                    match tls {
                        None => serve_connection(stream, service, finishing).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(stream)) => serve_connection(stream, service, finishing).await,
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
    let _ = finish.send(true);
    tokio::select! {
        () = async { while connections.join_next().await.is_some() {} } => {}
        () = cut.cancelled() => {
            connections.abort_all();
            while connections.join_next().await.is_some() {}
        }
    }
}

/// One HTTP/2 connection, its calls run by its own task, until it closes;
/// asked to finish (GOAWAY) once `finishing` turns true.
async fn serve_connection<IO>(io: IO, service: Service, mut finishing: watch::Receiver<bool>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (calls, mut started) = Calls::new();
    let service = hyper_util::service::TowerToHyperService::new(MapBody(service));
    let connection = hyper::server::conn::http2::Builder::new(calls)
        .timer(hyper_util::rt::TokioTimer::new())
        // tonic's settings: no limit on concurrent streams (the server's
        // own limits apply per call), hyper's windows and frame size.
        .max_concurrent_streams(None)
        .keep_alive_interval(None)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .max_pending_accept_reset_streams(None)
        .max_local_error_reset_streams(None)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    let mut connection = pin!(connection);
    let mut asked = pin!(async move {
        let _ = finishing.wait_for(|finish| *finish).await;
    });
    let mut asked_to_finish = false;
    let mut running = FuturesUnordered::new();
    let served = poll_fn(|cx| {
        if !asked_to_finish && asked.as_mut().poll(cx).is_ready() {
            asked_to_finish = true;
            connection.as_mut().graceful_shutdown();
        }
        loop {
            while let Poll::Ready(Some(call)) = started.poll_recv(cx) {
                running.push(call);
            }
            // The calls that can go on hand their frames to the connection…
            while let Poll::Ready(Some(())) = running.poll_next_unpin(cx) {}
            // …which writes them together and reads what comes in, maybe
            // starting calls.
            if let Poll::Ready(served) = connection.as_mut().poll(cx) {
                return Poll::Ready(served);
            }
            if started.is_empty() {
                return Poll::Pending;
            }
        }
    })
    .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "gRPC connection ended");
    }
}

/// A service taking hyper's request body, as tonic's services take it.
#[derive(Clone)]
struct MapBody<S>(S);

impl<S> tower_service::Service<http::Request<hyper::body::Incoming>> for MapBody<S>
where
    S: tower_service::Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        self.0.call(request.map(tonic::body::Body::new))
    }
}

/// The executor a connection gives HTTP/2 for its calls: each goes to the
/// connection's task, which polls it with the others (a panicking call ends
/// alone, as a task of its own would).
#[derive(Clone)]
struct Calls(mpsc::UnboundedSender<Call>);

impl Calls {
    fn new() -> (Calls, mpsc::UnboundedReceiver<Call>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Calls(tx), rx)
    }
}

impl<F> hyper::rt::Executor<F> for Calls
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, call: F) {
        let call: Call = Box::pin(AssertUnwindSafe(call).catch_unwind().map(|ended| {
            if ended.is_err() {
                tracing::error!("a call panicked; its stream was reset");
            }
        }));
        // The connection's task is gone only once the connection is.
        if let Err(mpsc::error::SendError(call)) = self.0.send(call) {
            tokio::spawn(call);
        }
    }
}
