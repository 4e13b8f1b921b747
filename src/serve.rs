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
//! share its socket. Every other call computes its answer in a task of its
//! own ([`OwnTasks`]), so that an aggregate holds up no subscriber on its
//! connection.
//!
//! What tonic's server did around the service is kept: HTTP/2 only (gRPC),
//! its HTTP/2 settings (but hyper's limits on reset streams), TLS (with ALPN
//! `h2`), and on shutdown no new connections and a GOAWAY on each open one,
//! whose calls may finish. No peer address is attached to requests (nothing
//! reads one).

use std::convert::Infallible;
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
use tokio_util::task::AbortOnDropHandle;
use tonic::Status;

use crate::connection::HeldWrites;
use crate::guard::Guard;
use crate::metrics::GrpcMetered;

/// tonic's default: how long an HTTP/2 keep-alive ping may go unanswered
/// (pings are sent only when an interval is set, which it is not).
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// tonic's routes to the services (each call but `Subscribe` in a task of
/// its own), with the metrics and the guard around them.
pub(crate) type Service = GrpcMetered<Guard<OwnTasks>>;
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
                let (tls, service, finishing) = (tls.clone(), service.clone(), finishing.clone());
                connections.spawn(async move {
                    match tls {
                        None => serve_connection(stream, service, finishing).await,
                        Some(acceptor) => {
                            match tokio::time::timeout(
                                crate::security::HANDSHAKE_TIMEOUT,
                                acceptor.accept(stream),
                            )
                            .await
                            {
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
        // own limits apply per call), hyper's windows and frame size; and
        // hyper's limits on streams reset by the client or in error, which
        // tonic lifted.
        .max_concurrent_streams(None)
        .keep_alive_interval(None)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
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
            // Out of tokio's budget, the channel answers `Pending` (and wakes
            // this task again) whatever it holds: go round only with budget.
            if started.is_empty() || !tokio::task::coop::has_budget_remaining() {
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
        // The connection's task is gone only once the connection is, and
        // hyper starts no call after that.
        if self.0.send(call).is_err() {
            tracing::error!("a call started after its connection ended; dropped");
        }
    }
}

/// tonic's routes, each call but `Subscribe` answered in a task of its own:
/// its answer is computed on whichever core is free, not in its
/// connection's task, where it would hold up the subscriptions and calls
/// that share the connection. The task is aborted when the call is dropped
/// (its client went away), as the call itself would have been.
#[derive(Clone)]
pub(crate) struct OwnTasks(pub tonic::service::Routes);

impl tower_service::Service<http::Request<tonic::body::Body>> for OwnTasks {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        tower_service::Service::<http::Request<tonic::body::Body>>::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let subscribe = request.uri().path() == crate::api::SUBSCRIBE_PATH;
        let answer = self.0.call(request);
        if subscribe {
            return Box::pin(answer);
        }
        let task = AbortOnDropHandle::new(tokio::spawn(answer));
        Box::pin(async move {
            task.await.unwrap_or_else(|e| {
                tracing::error!(error = %e, "a call panicked");
                Ok(Status::internal("the call failed inside the server").into_http())
            })
        })
    }
}
