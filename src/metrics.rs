//! Prometheus metrics: what each server counts, and the plain HTTP endpoint
//! (`GET /metrics`) that serves them in the OpenMetrics text format.
//!
//! Each [`Metrics`] has a registry of its own, so several servers in one
//! process (tests) never share counters. gRPC calls are counted by a tower
//! layer around the services ([`GrpcLayer`]); the store writer counts
//! what it stores ([`Metrics::write_applied`], [`Metrics::write_acknowledged`]);
//! each subscription registers itself for the subscriber gauges
//! ([`Metrics::subscriber`]).

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What the endpoint answers with: OpenMetrics is the standardized
/// Prometheus text format, and Prometheus asks for it first.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `method` label of a path that is none of the served RPCs, so that
/// clients cannot grow the label set without bound.
const UNKNOWN_METHOD: &str = "unknown";

/// Latency buckets, in seconds: 0.5 ms to about 16 s, doubling.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: Arc<str>,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// The kinds of event the log holds, as the `kind` label names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventLabel {
    RecordStored,
    ThresholdCrossed,
    RecordHigh,
    RankChanged,
    GrowthCrossed,
    YearToDate,
}

impl EventLabel {
    const ALL: [EventLabel; 6] = [
        EventLabel::RecordStored,
        EventLabel::ThresholdCrossed,
        EventLabel::RecordHigh,
        EventLabel::RankChanged,
        EventLabel::GrowthCrossed,
        EventLabel::YearToDate,
    ];

    fn name(self) -> &'static str {
        match self {
            EventLabel::RecordStored => "record_stored",
            EventLabel::ThresholdCrossed => "threshold_crossed",
            EventLabel::RecordHigh => "record_high",
            EventLabel::RankChanged => "rank_changed",
            EventLabel::GrowthCrossed => "growth_crossed",
            EventLabel::YearToDate => "year_to_date",
        }
    }
}

/// What one write stores, counted by the writer and recorded once the write
/// is applied.
#[derive(Debug, Default)]
pub struct WriteTally {
    created: u64,
    revised: u64,
    deleted: u64,
    events: [u64; EventLabel::ALL.len()],
}

impl WriteTally {
    /// A record change: whether the record existed before and after it.
    pub fn record(&mut self, before: bool, after: bool) {
        match (before, after) {
            (false, true) => self.created += 1,
            (true, true) => self.revised += 1,
            (true, false) => self.deleted += 1,
            (false, false) => {}
        }
    }

    pub fn event(&mut self, kind: EventLabel) {
        self.events[kind as usize] += 1;
    }
}

/// The metrics of one server.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `/package.Service/Method` of every RPC served.
    known_methods: HashSet<Arc<str>>,
    unknown_method: Arc<str>,
    grpc_requests: Family<RequestLabels, Counter>,
    grpc_duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    write_duration: Histogram,
    records_stored: Family<OutcomeLabels, Counter>,
    events_emitted: Family<KindLabels, Counter>,
    subscribers: Arc<Subscribers>,
    log_applied: Gauge<u64, AtomicU64>,
    log_head: Gauge<u64, AtomicU64>,
    log_lag: Gauge<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Metrics of a server running the services of `descriptor_sets`
    /// (encoded `FileDescriptorSet`s): calls to any other path are counted
    /// as `method="unknown"`.
    pub fn serving(descriptor_sets: &[&[u8]]) -> Metrics {
        Metrics {
            known_methods: served_methods(descriptor_sets),
            ..Metrics::new()
        }
    }

    /// Metrics that know no service (a store on its own).
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let grpc_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "tradewatch_grpc_requests",
            "gRPC calls finished, by full method name and status code (a call the client \
             abandons counts as CANCELLED)",
            grpc_requests.clone(),
        );
        let grpc_duration = Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_buckets as fn() -> Histogram,
        );
        registry.register_with_unit(
            "tradewatch_grpc_request_duration",
            "Time from a gRPC call's arrival to its status, by method (for streams, the stream's life)",
            Unit::Seconds,
            grpc_duration.clone(),
        );
        let write_duration = latency_buckets();
        registry.register_with_unit(
            "tradewatch_write_duration",
            "Time from a write reaching the store writer's queue to its flush being acknowledged",
            Unit::Seconds,
            write_duration.clone(),
        );
        let records_stored = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "tradewatch_records_stored",
            "Record changes written, by outcome (created, revised, deleted; unchanged records \
             are not written)",
            records_stored.clone(),
        );
        let events_emitted = Family::<KindLabels, Counter>::default();
        registry.register(
            "tradewatch_events_emitted",
            "Events appended to the event log, by kind",
            events_emitted.clone(),
        );
        let subscribers = Arc::new(Subscribers::default());
        registry.register_collector(Box::new(subscribers.clone()));
        let log_applied = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "tradewatch_log_applied_position",
            "The last command log position this node has applied (in cluster mode, a stream sequence)",
            log_applied.clone(),
        );
        let log_head = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "tradewatch_log_last_position",
            "The command log's last position, as this node last saw it",
            log_head.clone(),
        );
        let log_lag = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "tradewatch_log_lag",
            "Commands in the log this node has not applied yet",
            log_lag.clone(),
        );

        // Every series that can appear exists from the start, at zero, so
        // that rates are right from the first scrape.
        for outcome in ["created", "revised", "deleted"] {
            records_stored.get_or_create(&OutcomeLabels { outcome }).inc_by(0);
        }
        for kind in EventLabel::ALL {
            events_emitted
                .get_or_create(&KindLabels { kind: kind.name() })
                .inc_by(0);
        }
        Metrics {
            registry,
            known_methods: HashSet::new(),
            unknown_method: Arc::from(UNKNOWN_METHOD),
            grpc_requests,
            grpc_duration,
            write_duration,
            records_stored,
            events_emitted,
            subscribers,
            log_applied,
            log_head,
            log_lag,
        }
    }

    /// This node has applied the command log up to `position`.
    pub fn log_applied(&self, position: u64) {
        self.log_applied.set(position);
        self.log_head.set(self.log_head.get().max(position));
        self.log_lag.set(self.log_head.get().saturating_sub(position));
    }

    /// The command log reaches `position`.
    pub fn log_head(&self, position: u64) {
        self.log_head.set(self.log_head.get().max(position));
        self.log_lag
            .set(self.log_head.get().saturating_sub(self.log_applied.get()));
    }

    /// Everything, in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// Counts what a write stored, once it is applied.
    pub fn write_applied(&self, tally: &WriteTally) {
        for (outcome, n) in [
            ("created", tally.created),
            ("revised", tally.revised),
            ("deleted", tally.deleted),
        ] {
            if n > 0 {
                self.records_stored
                    .get_or_create(&OutcomeLabels { outcome })
                    .inc_by(n);
            }
        }
        for kind in EventLabel::ALL {
            let n = tally.events[kind as usize];
            if n > 0 {
                self.events_emitted
                    .get_or_create(&KindLabels { kind: kind.name() })
                    .inc_by(n);
            }
        }
    }

    /// Records the latency of a write whose flush was just acknowledged.
    pub fn write_acknowledged(&self, took: Duration) {
        self.write_duration.observe(took.as_secs_f64());
    }

    /// Registers a subscription that has delivered everything up to
    /// `delivered`, for the subscriber gauges; it counts until the returned
    /// handle is dropped. `head` is the store's durable head.
    pub fn subscriber(&self, head: watch::Receiver<u64>, delivered: u64) -> SubscriberPosition {
        let position = Arc::new(Position {
            head,
            delivered: AtomicU64::new(delivered),
        });
        let mut live = self.subscribers.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|p| p.strong_count() > 0);
        live.push(Arc::downgrade(&position));
        SubscriberPosition(position)
    }

    fn method_label(&self, path: &str) -> Arc<str> {
        self.known_methods
            .get(path)
            .unwrap_or(&self.unknown_method)
            .clone()
    }
}

/// Full method names (`/tradewatch.v1.TradeService/PutRecords`) of every
/// service of the descriptor sets.
fn served_methods(sets: &[&[u8]]) -> HashSet<Arc<str>> {
    let mut methods = HashSet::new();
    for &set in sets {
        // Compiled-in descriptors: one that does not decode only leaves its
        // methods labelled "unknown".
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
            continue;
        };
        for file in &set.file {
            let package = file.package();
            for service in &file.service {
                for method in &service.method {
                    let full = if package.is_empty() {
                        format!("/{}/{}", service.name(), method.name())
                    } else {
                        format!("/{package}.{}/{}", service.name(), method.name())
                    };
                    methods.insert(Arc::from(full));
                }
            }
        }
    }
    methods
}

// ---------------------------------------------------------------------------
// Subscribers
// ---------------------------------------------------------------------------

/// The open subscriptions, each known by its position; a subscription that
/// has ended leaves a dead weak reference, pruned on the next registration.
#[derive(Debug, Default)]
struct Subscribers {
    live: Mutex<Vec<Weak<Position>>>,
}

#[derive(Debug)]
struct Position {
    head: watch::Receiver<u64>,
    delivered: AtomicU64,
}

/// A subscription's entry in the subscriber gauges; dropping it removes it.
#[derive(Debug)]
pub struct SubscriberPosition(Arc<Position>);

impl SubscriberPosition {
    /// The subscription has passed every event up to `sequence` (sent it to
    /// its client, or skipped it as unwanted).
    pub fn delivered(&self, sequence: u64) {
        self.0.delivered.store(sequence, Ordering::Relaxed);
    }
}

impl Collector for Subscribers {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (count, max_lag) = {
            let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            live.iter()
                .filter_map(Weak::upgrade)
                .fold((0i64, 0u64), |(count, max_lag), p| {
                    let lag = p
                        .head
                        .borrow()
                        .saturating_sub(p.delivered.load(Ordering::Relaxed));
                    (count + 1, max_lag.max(lag))
                })
        };
        let subscribers = ConstGauge::new(count);
        subscribers.encode(encoder.encode_descriptor(
            "tradewatch_subscribers",
            "Open MilestoneService/Subscribe streams.",
            None,
            subscribers.metric_type(),
        )?)?;
        let lag = ConstGauge::new(i64::try_from(max_lag).unwrap_or(i64::MAX));
        lag.encode(encoder.encode_descriptor(
            "tradewatch_subscriber_lag_events",
            "Largest number of durable events any open subscription has not yet passed to its \
             client (head sequence minus the subscription's position; 0 when none is open).",
            None,
            lag.metric_type(),
        )?)?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// gRPC calls: a tower layer around the services
// ---------------------------------------------------------------------------

/// Counts every gRPC call by method and status, and times it.
#[derive(Debug, Clone)]
pub struct GrpcLayer {
    metrics: Arc<Metrics>,
}

impl GrpcLayer {
    pub fn new(metrics: Arc<Metrics>) -> GrpcLayer {
        GrpcLayer { metrics }
    }
}

impl<S> tower_layer::Layer<S> for GrpcLayer {
    type Service = GrpcMetered<S>;

    fn layer(&self, inner: S) -> GrpcMetered<S> {
        GrpcMetered {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`GrpcLayer`] wraps around the server's routes.
#[derive(Debug, Clone)]
pub struct GrpcMetered<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for GrpcMetered<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = Call {
            method: self.metrics.method_label(request.uri().path()),
            metrics: self.metrics.clone(),
            started: Instant::now(),
            finished: false,
        };
        MeteredFuture {
            inner: self.inner.call(request),
            call: Some(call),
        }
    }
}

/// One call being counted: recorded exactly once, with its status, or as
/// CANCELLED when it is dropped before it has one (the client went away).
struct Call {
    metrics: Arc<Metrics>,
    method: Arc<str>,
    started: Instant,
    finished: bool,
}

impl Call {
    fn finish(mut self, code: &'static str) {
        self.record(code);
    }

    fn record(&mut self, code: &'static str) {
        self.finished = true;
        let metrics = &self.metrics;
        metrics
            .grpc_requests
            .get_or_create(&RequestLabels {
                method: self.method.clone(),
                code,
            })
            .inc();
        metrics
            .grpc_duration
            .get_or_create(&MethodLabels {
                method: self.method.clone(),
            })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.finished {
            self.record("CANCELLED");
        }
    }
}

/// The `grpc-status` of a header map (response headers of a trailers-only
/// response, or trailers), by name.
fn status_in(headers: &http::HeaderMap) -> Option<&'static str> {
    let value = headers.get("grpc-status")?;
    let code = value.to_str().ok().and_then(|v| v.parse::<i32>().ok());
    Some(code.map_or("UNKNOWN", code_name))
}

/// The canonical name of a gRPC status code.
fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

pin_project_lite::pin_project! {
    /// The response future of a counted call.
    pub struct MeteredFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, ResBody, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<MeteredBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let call = this.call.take();
        Poll::Ready(match result {
            Ok(response) => {
                // A call that fails at once is answered "trailers-only": its
                // status is in the headers and the body is empty.
                let call = match (call, status_in(response.headers())) {
                    (Some(call), Some(code)) => {
                        call.finish(code);
                        None
                    }
                    (call, _) => call,
                };
                Ok(response.map(|inner| MeteredBody { inner, call }))
            }
            Err(e) => {
                if let Some(call) = call {
                    call.finish("UNKNOWN");
                }
                Err(e)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its call when the trailers carrying the
    /// status go by (or as CANCELLED when it is dropped before).
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        let code = match &frame {
            Some(Ok(frame)) => frame.trailers_ref().map(|t| status_in(t).unwrap_or("UNKNOWN")),
            Some(Err(_)) => Some("UNKNOWN"),
            None => Some("UNKNOWN"), // ended without trailers
        };
        if let Some(code) = code
            && let Some(call) = this.call.take()
        {
            call.finish(code);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------
// The HTTP endpoint
// ---------------------------------------------------------------------------

/// A bound metrics endpoint, not yet serving.
pub struct Endpoint {
    listener: TcpListener,
    metrics: Arc<Metrics>,
}

/// A serving metrics endpoint; stops when asked, or when dropped.
pub struct RunningEndpoint {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<Endpoint> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
        Ok(Endpoint { listener, metrics })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `GET /metrics` until stopped.
    pub fn spawn(self) -> RunningEndpoint {
        let metrics = self.metrics;
        RunningEndpoint::serve(self.listener, "metrics", move |stream, _| {
            serve_connection(stream, metrics.clone())
        })
    }
}

impl RunningEndpoint {
    /// Accepts connections on `listener` (the `what` endpoint) and serves
    /// each with `serve`, which gets the stop token, until stopped.
    pub(crate) fn serve<F, Served>(listener: TcpListener, what: &'static str, serve: F) -> RunningEndpoint
    where
        F: Fn(tokio::net::TcpStream, CancellationToken) -> Served + Send + 'static,
        Served: Future<Output = ()> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept(listener, what, serve, stop.clone()));
        RunningEndpoint { stop, task }
    }

    /// Stops taking connections, closes the open ones, and waits.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }
}

impl Drop for RunningEndpoint {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept<F, Served>(listener: TcpListener, what: &'static str, serve: F, stop: CancellationToken)
where
    F: Fn(tokio::net::TcpStream, CancellationToken) -> Served,
    Served: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve(stream, stop.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, most likely: let some close.
                    tracing::warn!(error = %e, endpoint = what, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // Scrapes take microseconds, so a metrics connection still open is idle;
    // an event stream of the web endpoint ends with its stop token anyway.
    connections.shutdown().await;
}

async fn serve_connection(stream: tokio::net::TcpStream, metrics: Arc<Metrics>) {
    let service = hyper::service::service_fn(move |request| {
        let response = respond(&metrics, &request);
        async move { Ok::<_, Infallible>(response) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "metrics connection ended");
    }
}

fn respond<B>(metrics: &Metrics, request: &http::Request<B>) -> http::Response<Full<Bytes>> {
    let plain = |status: http::StatusCode, text: &'static str| {
        let mut response = http::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    if request.uri().path() != "/metrics" {
        return plain(
            http::StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if request.method() != http::Method::GET {
        let mut response = plain(http::StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        response
            .headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("GET"));
        return response;
    }
    match metrics.encode() {
        Ok(text) => {
            let mut response = http::Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(CONTENT_TYPE),
            );
            response
        }
        Err(_) => plain(http::StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_rpc_is_a_known_method() {
        let metrics = Metrics::serving(crate::SERVED_DESCRIPTORS);
        for path in [
            "/tradewatch.v1.TradeService/PutRecords",
            "/tradewatch.v1.MilestoneService/Subscribe",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(&*metrics.method_label(path), path);
        }
        assert_eq!(
            &*metrics.method_label("/tradewatch.v1.TradeService/Nope"),
            "unknown"
        );
    }

    #[test]
    fn subscribers_gauge_follows_positions() {
        let metrics = Metrics::new();
        let (head_tx, head_rx) = watch::channel(10u64);
        let first = metrics.subscriber(head_rx.clone(), 10);
        let second = metrics.subscriber(head_rx, 4);
        head_tx.send_replace(12);
        let text = metrics.encode().unwrap();
        assert!(text.contains("\ntradewatch_subscribers 2\n"), "{text}");
        assert!(text.contains("\ntradewatch_subscriber_lag_events 8\n"), "{text}");
        second.delivered(12);
        drop(first);
        let text = metrics.encode().unwrap();
        assert!(text.contains("\ntradewatch_subscribers 1\n"), "{text}");
        assert!(text.contains("\ntradewatch_subscriber_lag_events 0\n"), "{text}");
    }

    #[test]
    fn a_write_counts_its_records_and_events() {
        let metrics = Metrics::new();
        let mut tally = WriteTally::default();
        tally.record(false, true);
        tally.record(true, true);
        tally.record(true, false);
        tally.event(EventLabel::RecordStored);
        tally.event(EventLabel::RecordHigh);
        metrics.write_applied(&tally);
        let text = metrics.encode().unwrap();
        for line in [
            "tradewatch_records_stored_total{outcome=\"created\"} 1",
            "tradewatch_records_stored_total{outcome=\"deleted\"} 1",
            "tradewatch_events_emitted_total{kind=\"record_high\"} 1",
            "tradewatch_events_emitted_total{kind=\"threshold_crossed\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
    }
}
