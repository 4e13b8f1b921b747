use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// tradewatch: trade statistics over gRPC, with exact aggregates and
/// milestone notifications.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the gRPC service.
    Serve {
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, env = "TRADEWATCH_LISTEN", default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        security: SecurityArgs,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Load this CSV file (native layout) before serving.
        #[arg(long, env = "TRADEWATCH_IMPORT")]
        import: Option<PathBuf>,
        /// With --import: store the good rows of a file that has bad ones.
        #[arg(long)]
        skip_bad_rows: bool,
        /// Serve Prometheus metrics over plain HTTP at `GET /metrics` on this
        /// address (port 0 picks a free port); off when not given.
        #[arg(long, env = "TRADEWATCH_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        /// Serve the newsroom page (watches, live milestones, charts) and
        /// the event stream over HTTP on this address (port 0 picks a free
        /// port); off when not given.
        #[arg(long, env = "TRADEWATCH_WEB_LISTEN")]
        web_listen: Option<SocketAddr>,
    },
    /// Load a CSV file (native layout) into the data dir, then exit.
    /// Re-importing the same file changes nothing.
    Import {
        /// The file: `reporter,partner,flow,period,commodity,currency,value,source,released_at`.
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// Send the records to this running server (`127.0.0.1:50051`)
        /// instead of writing the data dir.
        #[arg(long, env = "TRADEWATCH_SERVER")]
        server: Option<String>,
        /// With --server: the server's bearer token.
        #[arg(long, env = "TRADEWATCH_AUTH_TOKEN", hide_env_values = true)]
        auth_token: Option<String>,
        /// With --server: connect with TLS, trusting the CA in this PEM file.
        #[arg(long, env = "TRADEWATCH_TLS_CA", value_name = "PEM")]
        tls_ca: Option<PathBuf>,
        /// Store the good rows of a file that has bad ones (they are listed).
        #[arg(long)]
        skip_bad_rows: bool,
    },
}

#[derive(clap::Args)]
struct StoreArgs {
    /// Directory of the embedded store; created if missing.
    #[arg(long, env = "TRADEWATCH_DATA_DIR", default_value = "./tradewatch-data")]
    data_dir: PathBuf,
    /// Memory for the store's caches, in MiB: sled's page cache, and 1/16
    /// for decoded series that questions have read.
    #[arg(long, env = "TRADEWATCH_CACHE_MB", default_value_t = tradewatch::Config::DEFAULT_CACHE_MB)]
    cache_mb: u64,
    /// Keep only the newest this many events in the log (0: keep all).
    /// Subscribers asking for older positions get OUT_OF_RANGE.
    #[arg(long, env = "TRADEWATCH_RETAIN_EVENTS", default_value_t = 0)]
    retain_events: u64,
}

impl StoreArgs {
    fn config(&self) -> tradewatch::Config {
        tradewatch::Config {
            data_dir: self.data_dir.clone(),
            cache_mb: self.cache_mb,
            retain_events: self.retain_events,
            ..tradewatch::Config::new(&self.data_dir)
        }
    }
}

/// Cluster mode (docs/cluster.md): several nodes over one NATS JetStream
/// command log.
#[derive(clap::Args)]
struct ClusterArgs {
    /// Run as a node of a cluster whose command log is on these NATS
    /// servers (`nats://host:4222,nats://host2:4222`; `tls://` for TLS).
    /// Off when not given: a single node.
    #[arg(long, env = "TRADEWATCH_NATS", value_delimiter = ',', value_name = "URL")]
    nats: Vec<String>,
    /// The JetStream stream holding the command log; created if missing
    /// (its snapshot bucket is `<stream>_snapshots`).
    #[arg(long, env = "TRADEWATCH_NATS_STREAM", default_value = tradewatch::cluster::ClusterConfig::DEFAULT_STREAM)]
    nats_stream: String,
    /// Replicas of the stream and of the snapshot bucket when this node
    /// creates them.
    #[arg(long, env = "TRADEWATCH_NATS_REPLICAS", default_value_t = tradewatch::cluster::ClusterConfig::DEFAULT_REPLICAS)]
    nats_replicas: usize,
    /// A NATS credentials file (`.creds`: user JWT and NKey seed).
    #[arg(long, env = "TRADEWATCH_NATS_CREDS", value_name = "FILE")]
    nats_creds: Option<PathBuf>,
    /// Trust this CA (PEM) for the NATS servers' certificates, and require TLS.
    #[arg(long, env = "TRADEWATCH_NATS_TLS_CA", value_name = "PEM")]
    nats_tls_ca: Option<PathBuf>,
    /// Publish a snapshot of the store to the bucket every this many
    /// commands, so that a new node need not replay the whole log (0: never).
    #[arg(
        long,
        env = "TRADEWATCH_SNAPSHOT_EVERY",
        default_value_t = 0,
        value_name = "N"
    )]
    snapshot_every: u64,
}

impl ClusterArgs {
    fn apply(self, config: tradewatch::Config) -> tradewatch::Config {
        if self.nats.is_empty() {
            return config;
        }
        let cluster = tradewatch::cluster::ClusterConfig {
            stream: self.nats_stream,
            replicas: self.nats_replicas,
            snapshot_every: self.snapshot_every,
            creds: self.nats_creds,
            tls_ca: self.nats_tls_ca,
            ..tradewatch::cluster::ClusterConfig::new(self.nats)
        };
        tradewatch::Config {
            cluster: Some(cluster),
            ..config
        }
    }
}

#[derive(clap::Args)]
struct SecurityArgs {
    /// Require `authorization: Bearer TOKEN` on every call that changes data
    /// (and, with --auth-reads, on reads).
    #[arg(
        long,
        env = "TRADEWATCH_AUTH_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    auth_token: Option<String>,
    /// With --auth-token: reads need the token too (health checking and
    /// reflection never do).
    #[arg(long, env = "TRADEWATCH_AUTH_READS")]
    auth_reads: bool,
    /// Serve TLS with this PEM certificate (chain); needs --tls-key.
    #[arg(long, env = "TRADEWATCH_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "TRADEWATCH_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl SecurityArgs {
    fn apply(self, config: tradewatch::Config) -> anyhow::Result<tradewatch::Config> {
        let auth_token = self
            .auth_token
            .map(tradewatch::AuthToken::new)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--auth-token: {e}"))?;
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(tradewatch::TlsFiles { cert, key }),
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together: give both or neither"),
        };
        Ok(tradewatch::Config {
            auth_token,
            auth_reads: self.auth_reads,
            tls,
            ..config
        })
    }
}

#[derive(clap::Args)]
struct LimitArgs {
    /// Largest request message, in bytes (each IngestRecords message on its own).
    #[arg(
        long,
        env = "TRADEWATCH_MAX_REQUEST_BYTES",
        value_name = "BYTES",
        default_value_t = tradewatch::Limits::DEFAULT_MAX_REQUEST_BYTES
    )]
    max_request_bytes: usize,
    /// Most records in one PutRecords call or one IngestRecords message.
    #[arg(
        long,
        env = "TRADEWATCH_MAX_BATCH_RECORDS",
        value_name = "N",
        default_value_t = tradewatch::Limits::DEFAULT_MAX_BATCH_RECORDS
    )]
    max_batch_records: usize,
    /// Largest page of the list calls (page_size; limit of ListEvents): a larger one is lowered to it.
    #[arg(
        long,
        env = "TRADEWATCH_MAX_PAGE_SIZE",
        value_name = "N",
        default_value_t = tradewatch::Limits::DEFAULT_MAX_PAGE_SIZE
    )]
    max_page_size: usize,
    /// Most Subscribe streams open at once.
    #[arg(
        long,
        env = "TRADEWATCH_MAX_SUBSCRIBERS",
        value_name = "N",
        default_value_t = tradewatch::Limits::DEFAULT_MAX_SUBSCRIBERS
    )]
    max_subscribers: usize,
    /// Most watches stored.
    #[arg(
        long,
        env = "TRADEWATCH_MAX_WATCHES",
        value_name = "N",
        default_value_t = tradewatch::Limits::DEFAULT_MAX_WATCHES
    )]
    max_watches: usize,
    /// Most thresholds one watch may have.
    #[arg(
        long,
        env = "TRADEWATCH_MAX_THRESHOLDS_PER_WATCH",
        value_name = "N",
        default_value_t = tradewatch::Limits::DEFAULT_MAX_THRESHOLDS_PER_WATCH
    )]
    max_thresholds_per_watch: usize,
}

impl LimitArgs {
    fn apply(self, config: tradewatch::Config) -> tradewatch::Config {
        tradewatch::Config {
            limits: tradewatch::Limits {
                max_request_bytes: self.max_request_bytes,
                max_batch_records: self.max_batch_records,
                max_page_size: self.max_page_size,
                max_subscribers: self.max_subscribers,
                max_watches: self.max_watches,
                max_thresholds_per_watch: self.max_thresholds_per_watch,
            },
            ..config
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The message, without a backtrace: these are a user's errors
            // (a bad file, a busy data dir), not crashes.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match Cli::parse().command {
        Command::Serve {
            listen,
            store,
            security,
            limits,
            cluster,
            import,
            skip_bad_rows,
            metrics_listen,
            web_listen,
        } => {
            let config = tradewatch::Config {
                metrics_listen,
                web_listen,
                ..store.config()
            };
            let config = cluster.apply(security.apply(limits.apply(config))?);
            let app = tradewatch::Application::build(listen, config).await?;
            if let Some(file) = import {
                let summary = app.import(&file, skip_bad_rows).await?;
                tracing::info!(file = %file.display(), ?summary, "imported");
            }
            let addr = app.local_addr()?;
            tracing::info!(%addr, data_dir = %store.data_dir.display(), "tradewatch serving");
            // A stable line on stdout for scripts that start the server on port 0.
            println!("tradewatch listening on {addr}");
            if let Some(metrics_addr) = app.metrics_addr() {
                // Not println!: a script that read only the first line and
                // closed the pipe must not bring the server down.
                use std::io::Write as _;
                let _ = writeln!(std::io::stdout(), "tradewatch metrics on {metrics_addr}");
            }
            if let Some(web_addr) = app.web_addr() {
                use std::io::Write as _;
                let _ = writeln!(std::io::stdout(), "tradewatch web on {web_addr}");
            }
            app.run_until(shutdown_signal()).await
        }
        Command::Import {
            file,
            store,
            server,
            auth_token,
            tls_ca,
            skip_bad_rows,
        } => {
            let summary = match server {
                Some(addr) => {
                    let remote = tradewatch::import::Remote {
                        addr,
                        auth_token,
                        tls_ca,
                    };
                    tradewatch::import::import_to_server(&remote, &file, skip_bad_rows).await?
                }
                None => tradewatch::import_into(&store.config(), &file, skip_bad_rows).await?,
            };
            println!(
                "{}: {} created, {} revised, {} unchanged, {} bad rows skipped, {} breakdown rows left out",
                file.display(),
                summary.created,
                summary.revised,
                summary.unchanged,
                summary.skipped,
                summary.breakdown_rows
            );
            Ok(())
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// sled allocates and frees a node copy on every write; mimalloc does that
/// much faster than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
