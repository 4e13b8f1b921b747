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

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC service.
    Serve {
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, env = "TRADEWATCH_LISTEN", default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        #[command(flatten)]
        store: StoreArgs,
        /// Load this CSV file (native layout) before serving.
        #[arg(long, env = "TRADEWATCH_IMPORT")]
        import: Option<PathBuf>,
        /// With --import: store the good rows of a file that has bad ones.
        #[arg(long)]
        skip_bad_rows: bool,
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
    /// Memory for the store's page cache, in MiB.
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
            import,
            skip_bad_rows,
        } => {
            let app = tradewatch::Application::build(listen, store.config()).await?;
            if let Some(file) = import {
                let summary = app.import(&file, skip_bad_rows).await?;
                tracing::info!(file = %file.display(), ?summary, "imported");
            }
            let addr = app.local_addr()?;
            tracing::info!(%addr, data_dir = %store.data_dir.display(), "tradewatch serving");
            // A stable line on stdout for scripts that start the server on port 0.
            println!("tradewatch listening on {addr}");
            app.run_until(shutdown_signal()).await
        }
        Command::Import {
            file,
            store,
            server,
            skip_bad_rows,
        } => {
            let summary = match server {
                Some(addr) => tradewatch::import::import_to_server(&addr, &file, skip_bad_rows).await?,
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
