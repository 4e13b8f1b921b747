//! The real binary serving the newsroom site (`serve --web-listen`), an
//! HTTP/1.1 client for it, and Server-Sent Events read frame by frame.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use tonic::transport::Channel;
use tradewatch::pb::milestone_service_client::MilestoneServiceClient;

use super::common::{Binary, create, quick_start_watch};

/// `tradewatch serve --web-listen 127.0.0.1:0` on a fresh data dir.
pub struct Newsroom {
    pub binary: Binary,
    pub web: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Newsroom {
    pub fn start(extra: &[&str]) -> Newsroom {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["--web-listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let (binary, lines) = Binary::start_reading(dir.path(), &args, 1);
        let web = lines[0]
            .strip_prefix("tradewatch web on ")
            .unwrap_or_else(|| panic!("web line: {lines:?}"))
            .parse()
            .expect("an address");
        Newsroom {
            binary,
            web,
            _dir: dir,
        }
    }

    pub async fn milestones(&self) -> MilestoneServiceClient<Channel> {
        MilestoneServiceClient::connect(format!("http://{}", self.binary.addr))
            .await
            .unwrap()
    }

    /// Creates the watch of the README's quick start (`w1`), without
    /// backfill.
    pub async fn watch_china_central_asia(&self) {
        self.milestones()
            .await
            .create_watch(create(quick_start_watch()))
            .await
            .expect("CreateWatch");
    }
}

/// `GET path` with `headers`, on a connection of its own.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> http::Response<Incoming> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connects");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let mut request = http::Request::get(path).header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    sender
        .send_request(request.body(Empty::<Bytes>::new()).unwrap())
        .await
        .expect("an answer")
}

/// The status and the whole body of `GET path`.
pub async fn get_text(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (http::StatusCode, String) {
    let response = get(addr, path, headers).await;
    let status = response.status();
    let body = response.into_body().collect().await.expect("a body").to_bytes();
    (status, String::from_utf8(body.to_vec()).expect("UTF-8"))
}

/// One Server-Sent Events frame.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// An event stream, read as it arrives.
pub struct Sse {
    body: Incoming,
    pending: String,
}

impl Sse {
    pub fn new(response: http::Response<Incoming>) -> Sse {
        assert_eq!(response.status(), http::StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Sse {
            body: response.into_body(),
            pending: String::new(),
        }
    }

    /// The next frame with data (the `retry:` frame is skipped); panics
    /// after 10 s.
    pub async fn next(&mut self) -> Frame {
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let text: String = self.pending.drain(..end + 2).collect();
                let frame = parse_frame(&text);
                if !frame.data.is_empty() {
                    return frame;
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("a frame within 10 s")
                .expect("the stream goes on")
                .expect("reads");
            if let Ok(data) = chunk.into_data() {
                self.pending.push_str(std::str::from_utf8(&data).expect("UTF-8"));
            }
        }
    }

    /// Frames up to and including the first `event` frame.
    pub async fn until(&mut self, event: &str) -> Vec<Frame> {
        let mut frames = Vec::new();
        loop {
            let frame = self.next().await;
            let done = frame.event.as_deref() == Some(event);
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }
}

fn parse_frame(text: &str) -> Frame {
    let mut frame = Frame::default();
    for line in text.lines() {
        if let Some(id) = line.strip_prefix("id: ") {
            frame.id = Some(id.to_owned());
        } else if let Some(event) = line.strip_prefix("event: ") {
            frame.event = Some(event.to_owned());
        } else if let Some(data) = line.strip_prefix("data: ") {
            frame.data.push_str(data);
        }
    }
    frame
}
