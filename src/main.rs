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
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match Cli::parse().command {
        Command::Serve {
            listen,
            data_dir,
            cache_mb,
            retain_events,
        } => {
            let app = tradewatch::Application::build(
                listen,
                tradewatch::Config {
                    data_dir: data_dir.clone(),
                    cache_mb,
                    retain_events,
                },
            )
            .await?;
            let addr = app.local_addr()?;
            tracing::info!(%addr, data_dir = %data_dir.display(), "tradewatch serving");
            // A stable line on stdout for scripts that start the server on port 0.
            println!("tradewatch listening on {addr}");
            app.run_until(shutdown_signal()).await
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
