//! A real tradewatch server in this process (the `Application` the binary
//! runs), on a free port and a scratch data dir, and a gRPC client that
//! sends raw bytes as the request body.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// How long any one call may take before the harness calls it a hang.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The one runtime the harness's servers and clients run on.
pub fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// A fresh, empty directory for a store, under the system temp dir. Dirs
/// left by earlier processes that have exited are removed first (a fuzzer
/// process ends with `exit`, so its last store is not cleaned up).
pub fn scratch_dir() -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SWEPT: OnceLock<()> = OnceLock::new();
    let root = std::env::temp_dir().join("tradewatch-fuzz");
    SWEPT.get_or_init(|| sweep(&root));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = root.join(format!("{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Removes `root/<pid>-<n>` dirs whose process is gone (Linux: no
/// `/proc/<pid>`; elsewhere nothing is removed).
fn sweep(root: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((pid, _)) = name.split_once('-') else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A running server; stopped gracefully with [`Server::stop`].
pub struct Server {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    /// Serves the store in `dir` (created when new). A store closed just
    /// before in this process lets go of the directory's lock when sled's
    /// background flusher stops, which on a busy machine can take longer
    /// than the 2 s `Store::open` waits: retried for up to 30 s.
    pub async fn start(dir: &Path) -> Server {
        let config = tradewatch::Config {
            cache_mb: 16,
            ..tradewatch::Config::new(dir)
        };
        let started = std::time::Instant::now();
        let app = loop {
            match tradewatch::Application::build("127.0.0.1:0".parse().unwrap(), config.clone()).await {
                Ok(app) => break app,
                Err(e)
                    if format!("{e:#}").contains("lock") && started.elapsed() < Duration::from_secs(30) =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("server on {} does not start: {e:#}", dir.display()),
            }
        };
        let addr = app.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            dir: dir.to_owned(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_timeout(CALL_TIMEOUT)
            .connect()
            .await
            .expect("connects to the server")
    }

    /// Stops the server and waits until it has let go of the store; panics
    /// when it does not stop cleanly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match tokio::time::timeout(Duration::from_secs(30), task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => panic!("server stopped with an error: {e:#}"),
                Ok(Err(e)) => panic!("server task failed: {e}"),
                Err(_) => panic!("server did not stop within 30 s"),
            }
        }
    }
}

/// A codec that sends and receives message bodies as they are: the fuzz
/// input is the request's protobuf encoding.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

pub struct RawEncoder;
pub struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

/// The answer to a raw call: the response body or the status.
pub type RawResult = Result<Bytes, Status>;

/// The deadline reads are sent with: a read whose `min_log_position` lies
/// ahead of the store waits for it until just before its deadline (without
/// one, for 30 s, longer than [`CALL_TIMEOUT`]).
pub const READ_DEADLINE: Duration = Duration::from_secs(5);

/// A request for `body`, with [`READ_DEADLINE`] if it is a read.
fn request(body: Bytes, read: bool) -> tonic::Request<Bytes> {
    let mut request = tonic::Request::new(body);
    if read {
        request.set_timeout(READ_DEADLINE);
    }
    request
}

/// Sends `body` to the unary method `path` (`/tradewatch.v1.TradeService/
/// PutRecords`); `read` for a method that reads (see [`READ_DEADLINE`]).
pub async fn unary(channel: &Channel, path: &'static str, body: Bytes, read: bool) -> RawResult {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    let call = async {
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("not ready: {e}")))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
        grpc.unary(request(body, read), path, RawCodec)
            .await
            .map(tonic::Response::into_inner)
    };
    timed(call).await
}

/// Sends `bodies` as the messages of the client-streaming method `path`.
pub async fn client_streaming(channel: &Channel, path: &'static str, bodies: Vec<Bytes>) -> RawResult {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    let call = async {
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("not ready: {e}")))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
        grpc.client_streaming(tonic::Request::new(tokio_stream::iter(bodies)), path, RawCodec)
            .await
            .map(tonic::Response::into_inner)
    };
    timed(call).await
}

/// Sends `body` to the server-streaming method `path` and returns its first
/// message (the stream is dropped after it).
pub async fn first_streamed(channel: &Channel, path: &'static str, body: Bytes) -> RawResult {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    let call = async {
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("not ready: {e}")))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
        let mut stream = grpc
            .server_streaming(request(body, true), path, RawCodec)
            .await?
            .into_inner();
        match stream.message().await? {
            Some(first) => Ok(first),
            None => Err(Status::new(Code::Unknown, "stream ended with OK and no message")),
        }
    };
    timed(call).await
}

async fn timed(call: impl Future<Output = RawResult>) -> RawResult {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => panic!("the server did not answer within {CALL_TIMEOUT:?}"),
    }
}
