//! A backend service's milestone client: subscribes to tradewatch, prints
//! each milestone's headline, and keeps its place in a checkpoint file so
//! that after a restart it resumes exactly where it stopped — no headline
//! missed, none repeated.
//!
//! ```sh
//! cargo run --example milestone_client -- http://127.0.0.1:50051 ./milestones.checkpoint
//! ```
//!
//! The checkpoint holds the next sequence to ask for. It is written after
//! each headline is printed (and on progress while idle), atomically: to a
//! temporary file, then renamed over the old one. When the server goes away
//! the client reconnects every second and resumes from the checkpoint; Ctrl-C
//! stops it.

use std::path::{Path, PathBuf};

use tokio_stream::StreamExt;
use tradewatch::pb::{self, milestone_service_client::MilestoneServiceClient, subscribe_response::Message};

fn read_checkpoint(path: &Path) -> anyhow::Result<u64> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().parse()?),
        // No checkpoint yet: start at the beginning of the log.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(1),
        Err(e) => Err(e.into()),
    }
}

fn write_checkpoint(path: &Path, next: u64) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{next}\n"))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let checkpoint = PathBuf::from(args.next().unwrap_or_else(|| "milestones.checkpoint".into()));

    // Follow the server until Ctrl-C; when it goes away (a restart, a
    // network blip), reconnect and resume from the checkpoint.
    loop {
        let outcome = tokio::select! {
            outcome = follow(&server, &checkpoint) => outcome,
            _ = tokio::signal::ctrl_c() => return std::process::ExitCode::SUCCESS,
        };
        match outcome {
            Ok(never) => match never {},
            Err(Stop::Retry(why)) => {
                eprintln!("{why}; reconnecting in 1 s");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(Stop::Fatal(why)) => {
                eprintln!("error: {why}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
}

/// Why following stopped: worth retrying (the server is unavailable), or
/// not (a bad checkpoint, a position the server no longer keeps).
enum Stop {
    Retry(String),
    Fatal(String),
}

impl From<tonic::Status> for Stop {
    fn from(status: tonic::Status) -> Self {
        let why = format!("{:?}: {}", status.code(), status.message());
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => Stop::Retry(why),
            _ => Stop::Fatal(why),
        }
    }
}

/// Subscribes from the checkpoint and prints headlines until the stream
/// ends.
async fn follow(server: &str, checkpoint: &Path) -> Result<std::convert::Infallible, Stop> {
    let from = read_checkpoint(checkpoint).map_err(|e| Stop::Fatal(format!("checkpoint: {e}")))?;
    let save =
        |next: u64| write_checkpoint(checkpoint, next).map_err(|e| Stop::Fatal(format!("checkpoint: {e}")));
    let mut client = MilestoneServiceClient::connect(server.to_owned())
        .await
        .map_err(|e| Stop::Retry(format!("cannot connect to {server}: {e}")))?;
    let request = pb::SubscribeRequest {
        from_sequence: from,
        kinds: vec![
            pb::EventKind::ThresholdCrossed.into(),
            pb::EventKind::RecordHigh.into(),
        ],
        watch_ids: Vec::new(),
        ..Default::default()
    };
    let mut stream = client.subscribe(request).await?.into_inner();
    eprintln!("subscribed from sequence {from}");
    while let Some(message) = stream.next().await {
        match message?.message {
            Some(Message::Event(event)) => {
                let Some(headline) = event.headline() else {
                    continue;
                };
                println!("{} {headline}", event.sequence);
                save(event.sequence + 1)?;
            }
            // Filtered-out events still move the checkpoint forward.
            Some(Message::Progress(p)) => save(p.next_sequence.max(from))?,
            Some(Message::CaughtUp(_)) | None => {}
        }
    }
    Err(Stop::Retry("the server ended the subscription".into()))
}
