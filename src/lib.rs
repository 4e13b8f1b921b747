//! tradewatch: a gRPC service that stores international trade statistics in
//! an embedded sled store, answers exact aggregate questions about them, and
//! tells subscribers when a milestone is reached.
#![forbid(unsafe_code)]

pub mod api;
pub mod cluster;
pub mod collections;
mod connection;
pub mod core;
pub mod domain;
pub mod error;
mod guard;
pub mod import;
pub mod limits;
pub mod metrics;
pub mod milestones;
pub mod query;
pub mod security;
mod serve;
pub mod store;
pub mod stream;
pub mod web;
pub mod writes;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use limits::Limits;
pub use security::{AuthToken, TlsFiles};

/// Generated protobuf and gRPC code of `tradewatch.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("tradewatch.v1");

    mod events;
    mod from_domain;

    /// Descriptors of the API and of the `google.rpc` error details, for
    /// server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tradewatch_descriptor");
}

/// Descriptors of every service the server runs: the API, health checking
/// and reflection.
pub const SERVED_DESCRIPTORS: &[&[u8]] = &[
    pb::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// How long open calls get to finish after shutdown is asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How often a serving store writes down what its series cache holds, so
/// that a restart after a crash warms it as well as one after a clean stop
/// (which writes it down on closing).
const CACHE_KEYS_EVERY: Duration = Duration::from_secs(300);

/// What a server needs besides its listener.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Memory for the store's caches, in MiB (see `Store::open`).
    pub cache_mb: u64,
    /// Keep only the newest this many events (0: keep all).
    pub retain_events: u64,
    /// Serve Prometheus metrics (`GET /metrics`) here; `None`: no endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Serve the newsroom page, charts and event stream (`src/web/`) here;
    /// `None`: no page.
    pub web_listen: Option<SocketAddr>,
    /// Mutating calls (and, with `auth_reads`, reads) must carry
    /// `authorization: Bearer <token>`; `None`: no token needed.
    pub auth_token: Option<AuthToken>,
    /// Reads need the token too (health and reflection never do).
    pub auth_reads: bool,
    /// Serve TLS with this certificate and key; `None`: plaintext.
    pub tls: Option<TlsFiles>,
    pub limits: Limits,
    /// Cluster mode: writes go through this NATS JetStream command log;
    /// `None`: a single node.
    pub cluster: Option<cluster::ClusterConfig>,
}

impl Config {
    pub const DEFAULT_CACHE_MB: u64 = 1024;

    /// A store in `data_dir` with the default cache.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            cache_mb: Self::DEFAULT_CACHE_MB,
            retain_events: 0,
            metrics_listen: None,
            web_listen: None,
            auth_token: None,
            auth_reads: false,
            tls: None,
            limits: Limits::default(),
            cluster: None,
        }
    }
}

/// Imports a native CSV file straight into the store of `config` (no server
/// may have it open), then closes the store.
pub async fn import_into(
    config: &Config,
    path: &std::path::Path,
    skip_bad_rows: bool,
) -> anyhow::Result<import::ImportSummary> {
    let store = store::Store::open(
        &config.data_dir,
        config.cache_mb * 1024 * 1024,
        config.retain_events,
    )?;
    let result = import::import_file(&store, path, skip_bad_rows).await;
    store.close().await;
    result
}

/// A bound, ready-to-run server: the same object in production and tests.
pub struct Application {
    listener: TcpListener,
    store: Arc<store::Store>,
    metrics: Arc<metrics::Metrics>,
    metrics_endpoint: Option<metrics::Endpoint>,
    web_endpoint: Option<web::Endpoint>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    auth: security::Auth,
    limits: Limits,
    /// In cluster mode, this node of the cluster.
    node: Option<Arc<cluster::Node>>,
}

impl Application {
    /// Opens the store and binds the listener (`127.0.0.1:0` picks a free
    /// port).
    pub async fn build(listen: SocketAddr, config: Config) -> anyhow::Result<Self> {
        config.limits.validate()?;
        if config.auth_reads && config.auth_token.is_none() {
            anyhow::bail!("--auth-reads needs --auth-token: there is no token to ask readers for");
        }
        let tls = config
            .tls
            .as_ref()
            .map(|files| files.acceptor(b"h2"))
            .transpose()?;
        if config.auth_token.is_some() && tls.is_none() && !listen.ip().is_loopback() {
            tracing::warn!(%listen, "an auth token without TLS: callers send it in plaintext");
        }
        if let Some(cluster) = &config.cluster {
            cluster.validate()?;
            if let Some(position) = cluster::Node::restore_into(&config.data_dir, cluster).await? {
                tracing::info!(position, "data dir restored from a snapshot");
            }
        }
        let metrics = Arc::new(metrics::Metrics::serving(SERVED_DESCRIPTORS));
        let store = Arc::new(store::Store::open_with_metrics(
            &config.data_dir,
            config.cache_mb * 1024 * 1024,
            config.retain_events,
            metrics.clone(),
        )?);
        let node = match config.cluster {
            Some(cluster) => Some(cluster::Node::connect(store.clone(), cluster).await?),
            None => None,
        };
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        let metrics_endpoint = match config.metrics_listen {
            Some(addr) => Some(metrics::Endpoint::bind(addr, metrics.clone()).await?),
            None => None,
        };
        let web_endpoint = match config.web_listen {
            Some(addr) => {
                let auth = security::Auth {
                    token: config.auth_token.clone(),
                    reads: config.auth_reads,
                };
                let site = web::Site::new(store.clone(), auth, config.limits.max_subscribers);
                Some(web::Endpoint::bind(addr, site, config.tls.as_ref()).await?)
            }
            None => None,
        };
        Ok(Application {
            listener,
            store,
            node,
            metrics,
            metrics_endpoint,
            web_endpoint,
            tls,
            auth: security::Auth {
                token: config.auth_token,
                reads: config.auth_reads,
            },
            limits: config.limits,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where `GET /metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_endpoint.as_ref().and_then(|e| e.local_addr().ok())
    }

    /// Where the newsroom page is served, when it is.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web_endpoint.as_ref().and_then(|e| e.local_addr().ok())
    }

    /// Loads a native CSV file before serving (see [`import::import_file`]).
    /// Not in cluster mode, where every write goes through the log: import
    /// into a running node with `tradewatch import --server` instead.
    pub async fn import(
        &self,
        path: &std::path::Path,
        skip_bad_rows: bool,
    ) -> anyhow::Result<import::ImportSummary> {
        if self.node.is_some() {
            anyhow::bail!(
                "--import writes the data dir directly, which a cluster node must not: \
                 load the file with `tradewatch import --server` once the node serves"
            );
        }
        import::import_file(&self.store, path, skip_bad_rows).await
    }

    /// Serves until `shutdown` completes, then stops taking calls, gives
    /// open ones a short grace, and closes the store.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        use pb::trade_service_server::TradeServiceServer;

        let (health, health_service) = tonic_health::server::health_reporter();
        let stop = CancellationToken::new();
        let writes = match &self.node {
            Some(node) => writes::Writes::Cluster(node.clone()),
            None => writes::Writes::Local(self.store.clone()),
        };
        // A cluster node serves once it has caught up with the log, and
        // not while it is out of reach of it or cannot apply it.
        let following = match &self.node {
            Some(node) => {
                let follower = node.follow(stop.clone());
                let reporter = tokio::spawn(report_health(health.clone(), node.standing()));
                Some((follower, reporter))
            }
            None => {
                set_health(&health, true).await;
                None
            }
        };
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let saving_cache_keys = tokio::spawn(save_cache_keys_every(self.store.clone(), stop.clone()));
        let cut = CancellationToken::new();
        // Stops with the gRPC server (also when dropped on an error).
        let metrics_endpoint = self.metrics_endpoint.map(metrics::Endpoint::spawn);
        let web_endpoint = self.web_endpoint.map(web::Endpoint::spawn);
        let max_request_bytes = self.limits.max_request_bytes;
        // The services (and the store they hold) are dropped with the server
        // at the end of this block.
        {
            use tower_layer::Layer as _;
            let milestones = api::MilestoneApi::new(self.store.clone(), stop.clone())
                .with_limits(self.limits.clone())
                .with_writes(writes.clone());
            let heads = milestones.heads();
            let routes = tonic::service::Routes::new(health_service)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(
                    TradeServiceServer::new(
                        api::TradeApi::new(self.store.clone())
                            .with_limits(self.limits)
                            .with_writes(writes),
                    )
                    .max_decoding_message_size(max_request_bytes),
                )
                .add_service(api::MilestoneServer::new(milestones, max_request_bytes))
                .prepare();
            let service = metrics::GrpcLayer::new(self.metrics.clone())
                .layer(guard::GuardLayer::new(self.auth, max_request_bytes).layer(serve::Answered(routes)));
            let server = serve::serve(self.listener, self.tls, service, heads, stop.clone(), cut.clone());
            tokio::pin!(server);

            tokio::select! {
                () = &mut server => {}
                () = shutdown => {
                    tracing::info!("shutting down");
                    stop.cancel();
                    set_health(&health, false).await;
                    if tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await.is_err() {
                        tracing::warn!(
                            "connections still open after {SHUTDOWN_GRACE:?} (calls in progress, or clients not \
                             answering the shutdown); closing them"
                        );
                        cut.cancel();
                        // The connections' tasks are aborted, letting go of
                        // the store.
                        let _ = tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await;
                    }
                }
            }
        }
        if let Some(endpoint) = metrics_endpoint {
            endpoint.stop().await;
        }
        if let Some(endpoint) = web_endpoint {
            endpoint.stop().await;
        }
        stop.cancel();
        let _ = saving_cache_keys.await;
        if let Some((follower, reporter)) = following {
            reporter.abort();
            let _ = follower.await;
        }
        // Calls in tasks of their own may still hold the store a moment after
        // the server returns; wait for them, so that the data dir is free
        // when this returns (a restart in the same process can open it).
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        let holders = 1 + usize::from(self.node.is_some());
        while Arc::strong_count(&self.store) > holders && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.store.close().await;
        Ok(())
    }
}

/// Writes down what the store's series cache holds every
/// [`CACHE_KEYS_EVERY`], until `stop`.
async fn save_cache_keys_every(store: Arc<store::Store>, stop: CancellationToken) {
    let mut every = tokio::time::interval(CACHE_KEYS_EVERY);
    every.tick().await; // the first tick is at once
    loop {
        tokio::select! {
            _ = every.tick() => {
                let store = store.clone();
                let _ = tokio::task::spawn_blocking(move || store.save_cache_keys()).await;
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Marks every service (and the server as a whole, `""`) as serving or
/// not.
async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    use pb::milestone_service_server::MilestoneServiceServer;
    use pb::trade_service_server::TradeServiceServer;
    use tonic_health::ServingStatus;

    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
    if serving {
        health.set_serving::<TradeServiceServer<api::TradeApi>>().await;
        health
            .set_serving::<MilestoneServiceServer<api::MilestoneApi>>()
            .await;
    } else {
        health
            .set_not_serving::<TradeServiceServer<api::TradeApi>>()
            .await;
        health
            .set_not_serving::<MilestoneServiceServer<api::MilestoneApi>>()
            .await;
    }
}

/// Keeps a cluster node's health as its standing with the log: serving
/// only when it follows the log, caught up.
async fn report_health(
    health: tonic_health::server::HealthReporter,
    mut standing: tokio::sync::watch::Receiver<cluster::Standing>,
) {
    loop {
        let following = matches!(*standing.borrow_and_update(), cluster::Standing::Following);
        set_health(&health, following).await;
        if standing.changed().await.is_err() {
            return;
        }
    }
}
