//! Snapshots in the cluster's object store bucket (`<stream>_snapshots`):
//! a node with `--snapshot-every N` copies its store after every N-th
//! command (the writer pauses for the copy; the upload runs beside it) and
//! publishes it as `snapshot-<position, 20 digits>`; the newest
//! [`KEEP`] stay. A node starting on an empty data dir restores the newest
//! and follows the log from the position after it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::jetstream::{self, object_store};
use tokio_stream::StreamExt;

use super::{ClusterConfig, Node};
use crate::store::snapshot;

/// Snapshots kept in the bucket.
const KEEP: usize = 2;
const PREFIX: &str = "snapshot-";

/// One snapshot at a time per process.
static TAKING: AtomicBool = AtomicBool::new(false);

fn object_name(position: u64) -> String {
    format!("{PREFIX}{position:020}")
}

/// Copies the store as of the command just queued at `position` and
/// publishes the copy in the background; skipped while the previous one is
/// still going.
pub async fn take(node: &Arc<Node>, position: u64) {
    if TAKING.swap(true, Ordering::AcqRel) {
        tracing::debug!(position, "a snapshot is still being published; skipping this one");
        return;
    }
    let copied = match node.store.export().await {
        Ok(copied) => copied,
        Err(e) => {
            TAKING.store(false, Ordering::Release);
            tracing::warn!(error = %e, "cannot copy the store for a snapshot");
            return;
        }
    };
    let node = node.clone();
    tokio::spawn(async move {
        let published = async {
            let (file, held) = copied.await?;
            let result = publish(&node.js, &node.config, &file, held).await;
            let _ = tokio::fs::remove_file(&file).await;
            result.map(|()| held)
        };
        match published.await {
            Ok(held) => tracing::info!(position = held, "snapshot published"),
            Err(e) => tracing::warn!(error = %e, position, "cannot publish a snapshot"),
        }
        TAKING.store(false, Ordering::Release);
    });
}

pub async fn bucket(
    js: &jetstream::Context,
    config: &ClusterConfig,
) -> anyhow::Result<object_store::ObjectStore> {
    if let Ok(bucket) = js.get_object_store(config.bucket()).await {
        return Ok(bucket);
    }
    Ok(js
        .create_object_store(object_store::Config {
            bucket: config.bucket(),
            description: Some("tradewatch store snapshots, by command log position".into()),
            storage: jetstream::stream::StorageType::File,
            num_replicas: config.replicas,
            ..Default::default()
        })
        .await?)
}

/// Uploads the snapshot file holding the log up to `position`, unless the
/// bucket has that position already, then lets the oldest go.
async fn publish(
    js: &jetstream::Context,
    config: &ClusterConfig,
    file: &Path,
    position: u64,
) -> anyhow::Result<()> {
    let bucket = bucket(js, config).await?;
    let name = object_name(position);
    if bucket.info(&name).await.is_ok_and(|info| !info.deleted) {
        return Ok(());
    }
    let mut reader = tokio::fs::File::open(file).await?;
    let meta = object_store::ObjectMetadata {
        name: name.clone(),
        description: Some(format!("tradewatch store at command log position {position}")),
        ..Default::default()
    };
    bucket.put(meta, &mut reader).await?;
    let mut names = snapshot_names(&bucket).await?;
    names.sort();
    let stale = names.len().saturating_sub(KEEP);
    for old in &names[..stale] {
        bucket.delete(old).await?;
    }
    Ok(())
}

async fn snapshot_names(bucket: &object_store::ObjectStore) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    let mut list = bucket.list().await?;
    while let Some(info) = list.next().await {
        let info = info?;
        if !info.deleted && info.name.starts_with(PREFIX) {
            names.push(info.name);
        }
    }
    Ok(names)
}

/// Restores the newest snapshot into `data_dir` (empty or missing);
/// `None` when the bucket has none.
pub async fn restore_newest(
    js: &jetstream::Context,
    config: &ClusterConfig,
    data_dir: &Path,
) -> anyhow::Result<Option<u64>> {
    let Ok(bucket) = js.get_object_store(config.bucket()).await else {
        return Ok(None);
    };
    let Some(newest) = snapshot_names(&bucket).await?.into_iter().max() else {
        return Ok(None);
    };
    tracing::info!(snapshot = %newest, "restoring the newest snapshot");
    let download = data_dir.with_extension("snapshot");
    {
        let mut object = bucket.get(&newest).await?;
        let mut file = tokio::fs::File::create(&download).await?;
        tokio::io::copy(&mut object, &mut file).await?;
        file.sync_all().await?;
    }
    if data_dir.exists() {
        // Empty (checked by the caller): the restore moves a whole store
        // into its place.
        std::fs::remove_dir(data_dir)?;
    }
    let (file, dir) = (download.clone(), data_dir.to_owned());
    let restored = tokio::task::spawn_blocking(move || snapshot::restore(&file, &dir)).await?;
    let _ = std::fs::remove_file(&download);
    Ok(Some(restored?))
}
