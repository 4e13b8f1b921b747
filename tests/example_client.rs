//! The example milestone client (examples/milestone_client.rs) against a
//! live server: it prints each headline once, and after its own restart
//! resumes from its checkpoint without missing or repeating one.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{TestServer, create, put, quick_start_watch, seed_records};
use tradewatch::pb::milestone_service_client::MilestoneServiceClient;

/// The example's binary, built if `cargo test` was asked for this test only.
fn example_binary() -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let binary = deps.parent().unwrap().join("examples").join("milestone_client");
    if !binary.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", "milestone_client"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "the example builds");
    }
    binary
}

struct Client {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Client {
    fn start(server: &str, checkpoint: &std::path::Path) -> Client {
        let mut child = Command::new(example_binary())
            .arg(server)
            .arg(checkpoint)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Client { child, lines }
    }

    /// The next `n` printed lines, within 10 s.
    fn read(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                self.lines
                    .recv_timeout(Duration::from_secs(10))
                    .expect("a headline within 10 s")
            })
            .collect()
    }

    fn nothing_more(&self) {
        assert!(
            self.lines.recv_timeout(Duration::from_millis(500)).is_err(),
            "no other headline"
        );
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_client_resumes_from_its_checkpoint() {
    let server = TestServer::start().await;
    let url = format!("http://{}", server.addr);
    let mut trade = server.client().await;
    let mut watches = MilestoneServiceClient::new(server.channel().await);
    watches.create_watch(create(quick_start_watch())).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("checkpoint");
    let seed = seed_records();

    // 2023, then 2024 up to Turkmenistan: the 2024 record high.
    let client = Client::start(&url, &checkpoint);
    for r in &seed[..9] {
        trade.put_records(put(vec![r.clone()])).await.unwrap();
    }
    let first = client.read(1);
    assert!(first[0].contains("record 90.96 billion USD in 2024"), "{first:?}");
    client.nothing_more();
    drop(client); // SIGKILL

    // While it is down, 2025 arrives and crosses 100 bn.
    for r in &seed[9..] {
        trade.put_records(put(vec![r.clone()])).await.unwrap();
    }
    let client = Client::start(&url, &checkpoint);
    let rest = client.read(2);
    assert!(rest[0].contains("crossing 100 billion USD"), "{rest:?}");
    assert!(rest[1].contains("record 102.0 billion USD in 2025"), "{rest:?}");
    client.nothing_more();
}
