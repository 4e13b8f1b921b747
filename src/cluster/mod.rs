//! Cluster mode: several nodes over one replicated command log, a NATS
//! JetStream stream. A node checks a write as a single node does, turns it
//! into a command, publishes it (with `Nats-Msg-Id` = its request id, so a
//! retry is recognized as a duplicate), and answers once its own store has
//! applied it. Every node consumes the stream in order and applies each
//! command with the same write core, storing the stream position in the
//! same batch ([`follower`]); no node leads, and the only consensus is
//! JetStream's. Snapshots of a store, in a JetStream object store bucket,
//! let a new node start from one instead of the log's beginning
//! ([`snapshots`]). docs/cluster.md has the whole design.

mod follower;
mod snapshots;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage, stream};
use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::domain::{Command, Outcome, RequestId, RequestTag};
use crate::error::{Error, Result};
use crate::store::{Applied, Store, command_codec};
use crate::writes::Pending;

/// How long a write keeps retrying its publish (a NATS leader election
/// takes a few seconds) before it answers UNAVAILABLE.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(30);
/// How long one publish waits for the stream's acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// The stream's duplicate window: a retry within it lands once in the log
/// (after it, the store's request-id table still makes it harmless).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(20 * 60);
/// Refusals remembered for retries that come back to this node.
const REMEMBERED_REFUSALS: usize = 4096;

/// How a node reaches the log.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// NATS servers, `nats://host:port` (`tls://` for TLS).
    pub urls: Vec<String>,
    /// The stream holding the commands (and the name its snapshot bucket
    /// and subject derive from).
    pub stream: String,
    /// Replicas of the stream and the bucket, when this node creates them.
    pub replicas: usize,
    /// Publish a snapshot of the store every this many commands (0: never).
    pub snapshot_every: u64,
    /// A NATS credentials file (JWT and NKey seed).
    pub creds: Option<PathBuf>,
    /// Trust this CA (PEM) for the NATS servers' TLS certificates.
    pub tls_ca: Option<PathBuf>,
}

impl ClusterConfig {
    pub const DEFAULT_STREAM: &str = "TRADEWATCH";
    pub const DEFAULT_REPLICAS: usize = 3;

    pub fn new(urls: Vec<String>) -> Self {
        ClusterConfig {
            urls,
            stream: Self::DEFAULT_STREAM.into(),
            replicas: Self::DEFAULT_REPLICAS,
            snapshot_every: 0,
            creds: None,
            tls_ca: None,
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.urls.is_empty() {
            anyhow::bail!("--nats needs at least one server URL");
        }
        let ok = !self.stream.is_empty()
            && self
                .stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            anyhow::bail!(
                "--nats-stream {:?}: a stream name is letters, digits, _ and -",
                self.stream
            );
        }
        if !(1..=5).contains(&self.replicas) {
            anyhow::bail!("--nats-replicas {}: JetStream takes 1 to 5", self.replicas);
        }
        Ok(())
    }

    fn subject(&self) -> String {
        format!("{}.commands", self.stream)
    }

    fn bucket(&self) -> String {
        format!("{}_snapshots", self.stream)
    }
}

/// Where a node stands with the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Reaching NATS or the stream.
    Connecting,
    /// Applying the log up to the position it had when this node started
    /// following it.
    CatchingUp { target: u64 },
    /// Caught up: applying commands as they come.
    Following,
    /// Stopped applying: a command it cannot apply (it retries from the
    /// same position; it never skips one).
    Halted(String),
}

/// A node of the cluster: its store, its connection to the log, and the
/// writes it published that wait for their outcome.
pub struct Node {
    store: Arc<Store>,
    config: ClusterConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    standing: watch::Sender<Standing>,
    /// The last log position whose outcome has been handed to waiting
    /// writes.
    handled: watch::Sender<u64>,
    /// The stream's last position, as last seen.
    log_head: AtomicU64,
    waiting: Mutex<Waiting>,
    /// Names writes that come without a request id.
    ids: IdSource,
}

/// The writes this node has published and is answering.
#[derive(Default)]
struct Waiting {
    /// Request ids published here and not yet answered, with how many
    /// callers wait on each.
    ids: HashMap<RequestId, usize>,
    /// Their outcomes, by log position, until their callers are answered.
    outcomes: HashMap<u64, (RequestId, Handled)>,
    /// Recent refusals, for a retry whose original was refused: a refused
    /// write leaves nothing in the store to answer it from.
    refusals: VecDeque<(RequestId, u64, Handled)>,
}

/// What applying a logged command came to.
#[derive(Clone)]
struct Handled {
    fingerprint: [u8; 16],
    result: std::result::Result<Outcome, Error>,
}

impl Node {
    /// Connects to NATS, makes sure the stream exists, and returns the
    /// node with the store it applies to. Does not start following (see
    /// [`Node::follow`]).
    pub async fn connect(store: Arc<Store>, config: ClusterConfig) -> anyhow::Result<Arc<Node>> {
        let client = connect(&config).await?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(ACK_TIMEOUT);
        ensure_stream(&js, &config).await?;
        if config.snapshot_every > 0 {
            // Now rather than at the first snapshot, where nodes would race
            // to create it.
            snapshots::bucket(&js, &config).await?;
        }
        Ok(Arc::new(Node {
            handled: watch::Sender::new(store.log_position()),
            store,
            config,
            client,
            js,
            standing: watch::Sender::new(Standing::Connecting),
            log_head: AtomicU64::new(0),
            waiting: Mutex::default(),
            ids: IdSource::new(),
        }))
    }

    /// Before the store opens: fills an empty data dir from the newest
    /// snapshot in the cluster's bucket, if there is one. Returns the log
    /// position restored.
    pub async fn restore_into(
        data_dir: &std::path::Path,
        config: &ClusterConfig,
    ) -> anyhow::Result<Option<u64>> {
        let empty = match std::fs::read_dir(data_dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => anyhow::bail!("cannot read data dir {}: {e}", data_dir.display()),
        };
        if !empty {
            return Ok(None);
        }
        let client = connect(config).await?;
        let js = jetstream::new(client);
        snapshots::restore_newest(&js, config, data_dir).await
    }

    /// Follows the log until `stop`: applies every command in order,
    /// answers the writes waiting for them, publishes snapshots, and keeps
    /// the standing and the metrics current.
    pub fn follow(self: &Arc<Self>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let monitor = tokio::spawn(self.clone().monitor(stop.clone()));
        let node = self.clone();
        tokio::spawn(async move {
            follower::run(&node, &stop).await;
            let _ = monitor.await;
        })
    }

    /// Where this node stands, as it changes.
    pub fn standing(&self) -> watch::Receiver<Standing> {
        self.standing.subscribe()
    }

    /// Publishes `command` to the log and returns once the log holds it;
    /// the future answers once this node has applied it.
    pub async fn queue(self: &Arc<Self>, mut command: Command) -> Result<Pending> {
        if let Standing::Halted(reason) = &*self.standing.borrow() {
            return Err(Error::Unavailable(format!(
                "this node has stopped applying the command log ({reason}); write through another node"
            )));
        }
        let tag = command.request.get_or_insert_with(|| self.ids.next()).clone();
        let payload = Bytes::from(command_codec::encode(&command));
        let expecting = self.expect(&tag.id);
        let position = self.publish(&tag.id, payload).await?;
        let node = self.clone();
        Ok(Box::pin(async move {
            let result = node.outcome(&tag, &command, position).await;
            drop(expecting);
            result
        }))
    }

    /// Publishes one command, retrying (under the same message id, so that
    /// it lands once) while the stream elects a leader or is out of reach.
    async fn publish(&self, id: &RequestId, payload: Bytes) -> Result<u64> {
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            let message = PublishMessage::build()
                .message_id(id.as_str())
                .payload(payload.clone());
            let attempt = async { self.js.send_publish(self.config.subject(), message).await?.await };
            let error = match attempt.await {
                Ok(ack) => {
                    self.log_head.fetch_max(ack.sequence, Ordering::Relaxed);
                    return Ok(ack.sequence);
                }
                Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    return Err(Error::ResourceExhausted(format!(
                        "the write is a command of {} bytes, more than the NATS servers take in one \
                         message (max_payload): split it into smaller batches",
                        payload.len()
                    )));
                }
                Err(e) => e,
            };
            if started.elapsed() + delay > PUBLISH_PATIENCE {
                return Err(Error::Unavailable(format!(
                    "the command log did not take the write within {PUBLISH_PATIENCE:?} ({error}); \
                     it may or may not be stored: retry with the same request_id"
                )));
            }
            tracing::debug!(%error, request_id = %id, "publish failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// The outcome of the command logged at `position` under `tag`, once
    /// this node has applied it.
    async fn outcome(&self, tag: &RequestTag, command: &Command, position: u64) -> Result<Applied> {
        let mut handled = self.handled.subscribe();
        let mut standing = self.standing.subscribe();
        loop {
            if *handled.borrow_and_update() >= position {
                break;
            }
            if let Standing::Halted(reason) = &*standing.borrow_and_update() {
                return Err(Error::Unavailable(format!(
                    "the write is in the command log at position {position}, but this node has \
                     stopped applying the log ({reason}); other nodes apply it: read it there \
                     with min_log_position {position}"
                )));
            }
            tokio::select! {
                changed = handled.changed() => changed,
                changed = standing.changed() => changed,
            }
            .map_err(|_| Error::Unavailable("the server is shutting down".into()))?;
        }
        let found = {
            let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            waiting
                .outcomes
                .get(&position)
                .map(|(_, handled)| handled.clone())
                .or_else(|| {
                    waiting
                        .refusals
                        .iter()
                        .find(|(id, at, _)| *id == tag.id && *at == position)
                        .map(|(_, _, handled)| handled.clone())
                })
        };
        let handled = match found {
            Some(handled) => handled,
            // Applied before this node was waiting for it (a retry): the
            // store keeps what it came to under its request id.
            None => match self.store.stored_request(tag, &command.action)? {
                Some(stored) => Handled {
                    fingerprint: stored.fingerprint,
                    result: stored.outcome.ok_or_else(|| reused(tag)),
                },
                None => {
                    return Err(Error::FailedPrecondition(format!(
                        "the write with request_id {} (command log position {position}) was \
                         refused earlier, and this node no longer knows why: send it again with a \
                         new request_id",
                        tag.id
                    )));
                }
            },
        };
        if handled.fingerprint != tag.fingerprint {
            return Err(reused(tag));
        }
        Ok(Applied {
            outcome: handled.result?,
            position,
        })
    }

    /// Notes that a caller waits for the write under `id`, until the
    /// returned guard is dropped.
    fn expect(self: &Arc<Self>, id: &RequestId) -> Expecting {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        *waiting.ids.entry(id.clone()).or_default() += 1;
        Expecting {
            node: self.clone(),
            id: id.clone(),
        }
    }

    /// Hands what the command at `position` came to to the writes waiting
    /// for it; called by the follower, in log order.
    fn handled(&self, position: u64, tag: Option<&RequestTag>, result: std::result::Result<Outcome, Error>) {
        if let Some(tag) = tag {
            let handled = Handled {
                fingerprint: tag.fingerprint,
                result,
            };
            let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            if handled.result.is_err() {
                if waiting.refusals.len() == REMEMBERED_REFUSALS {
                    waiting.refusals.pop_front();
                }
                waiting
                    .refusals
                    .push_back((tag.id.clone(), position, handled.clone()));
            }
            if waiting.ids.contains_key(&tag.id) {
                waiting.outcomes.insert(position, (tag.id.clone(), handled));
            }
        }
        self.handled.send_replace(position);
    }

    /// Keeps the log's metrics current and notices a lost connection.
    async fn monitor(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.client.connection_state() != async_nats::connection::State::Connected {
                self.standing.send_if_modified(|standing| {
                    let lost = !matches!(standing, Standing::Connecting | Standing::Halted(_));
                    if lost {
                        tracing::warn!("lost the connection to NATS");
                        *standing = Standing::Connecting;
                    }
                    lost
                });
            }
            if let Ok(mut stream) = self.js.get_stream(&self.config.stream).await
                && let Ok(info) = stream.info().await
            {
                let head = info.state.last_sequence;
                self.log_head.fetch_max(head, Ordering::Relaxed);
                // In touch again: the follower's consumer carries on where
                // it was, so nothing else would say so while no command
                // arrives.
                let applied = self.store.log_position();
                self.standing.send_if_modified(|standing| {
                    let back = *standing == Standing::Connecting;
                    if back {
                        *standing = if applied >= head {
                            Standing::Following
                        } else {
                            Standing::CatchingUp { target: head }
                        };
                    }
                    back
                });
            }
            self.store
                .metrics()
                .log_head(self.log_head.load(Ordering::Relaxed));
        }
    }
}

/// A caller waiting for a write; lets go of its outcome when dropped.
struct Expecting {
    node: Arc<Node>,
    id: RequestId,
}

impl Drop for Expecting {
    fn drop(&mut self) {
        let mut waiting = self.node.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = waiting.ids.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                waiting.ids.remove(&self.id);
                waiting.outcomes.retain(|_, (id, _)| *id != self.id);
            }
        }
    }
}

fn reused(tag: &RequestTag) -> Error {
    Error::AlreadyExists(format!(
        "request_id {} was used for a different request; use a new id for a new write",
        tag.id
    ))
}

/// Request ids for writes that come without one: unique per node start
/// and write, so a node's own publish retries dedupe and nothing else does.
struct IdSource {
    prefix: String,
    next: AtomicU64,
}

impl IdSource {
    fn new() -> Self {
        let started = std::time::SystemTime::UNIX_EPOCH
            .elapsed()
            .unwrap_or_default()
            .as_nanos();
        let seed = blake3::hash(format!("{started}-{}", std::process::id()).as_bytes());
        IdSource {
            prefix: format!("tw-{}", &seed.to_hex()[..16]),
            next: AtomicU64::new(1),
        }
    }

    /// A new id; nobody else sends it, so any fingerprint tells it apart.
    fn next(&self) -> RequestTag {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", self.prefix);
        let mut fingerprint = [0; 16];
        fingerprint.copy_from_slice(&blake3::hash(id.as_bytes()).as_bytes()[..16]);
        let id = RequestId::parse(&id)
            .ok()
            .flatten()
            .expect("a generated request id is valid");
        RequestTag { id, fingerprint }
    }
}

async fn connect(config: &ClusterConfig) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name("tradewatch")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5));
    if let Some(creds) = &config.creds {
        options = options
            .credentials_file(creds)
            .await
            .map_err(|e| anyhow::anyhow!("--nats-creds {}: {e}", creds.display()))?;
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let addrs: Vec<async_nats::ServerAddr> = config
        .urls
        .iter()
        .map(|u| u.parse().map_err(|e| anyhow::anyhow!("--nats {u:?}: {e}")))
        .collect::<anyhow::Result<_>>()?;
    let urls = config.urls.join(",");
    tokio::time::timeout(Duration::from_secs(30), options.connect(addrs))
        .await
        .map_err(|_| anyhow::anyhow!("could not reach NATS at {urls} within 30 s"))?
        .map_err(|e| anyhow::anyhow!("connecting to NATS at {urls}: {e}"))
}

/// Creates the stream with the settings the log needs, or checks that an
/// existing one takes the log's subject.
async fn ensure_stream(js: &jetstream::Context, config: &ClusterConfig) -> anyhow::Result<()> {
    let wanted = stream::Config {
        name: config.stream.clone(),
        description: Some("tradewatch command log: one message per write".into()),
        subjects: vec![config.subject()],
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: DUPLICATE_WINDOW,
        deny_delete: true,
        deny_purge: true,
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        // JetStream may still be electing its meta leader right after the
        // servers start.
        match js.get_or_create_stream(wanted.clone()).await {
            Ok(stream) => break stream,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "stream not ready; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => anyhow::bail!("cannot create or find stream {}: {e}", config.stream),
        }
    };
    let info = stream.info().await?;
    let have = &info.config;
    if !have.subjects.contains(&config.subject()) {
        anyhow::bail!(
            "stream {} exists but does not take subject {}; is it another application's?",
            config.stream,
            config.subject()
        );
    }
    if have.duplicate_window < Duration::from_secs(600) || !have.deny_delete || !have.deny_purge {
        tracing::warn!(
            stream = %config.stream,
            "the stream's duplicate window is under 10 minutes or it allows deleting messages: \
             retries and the log's completeness are weaker than tradewatch assumes"
        );
    }
    Ok(())
}
