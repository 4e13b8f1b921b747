//! The newsroom page in a real browser: headless Chromium, driven over the
//! DevTools protocol (chromiumoxide), against the real binary. The bundled
//! figures are written through gRPC one at a time, and the page shows each
//! milestone within 2 s of its write, in order; when the browser's
//! connection is cut and restored, it shows the milestone stored meanwhile
//! once.
//!
//! The test installs Debian's `chromium` when it is not on PATH (as root),
//! or else skips saying why — except when `CI` is set, where it fails.
//! `TRADEWATCH_SCREENSHOT=docs/newsroom.png` saves a screenshot of the
//! page with its three milestones (the one in the README).

mod common;
#[path = "support/web.rs"]
mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::handler::viewport::Viewport;
use chromiumoxide::page::{Page, ScreenshotParams};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_stream::StreamExt;
use tradewatch::pb;

use common::{put, record, seed_records};
use web::Newsroom;

/// How soon a milestone must show after its write.
const SHOWN_WITHIN: Duration = Duration::from_secs(2);

/// The browser's executable: on PATH, or installed with apt-get.
fn chromium() -> Option<PathBuf> {
    let on_path = || {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
            .find(|candidate| candidate.is_file())
    };
    if let Some(found) = on_path() {
        return Some(found);
    }
    eprintln!("chromium is not on PATH: installing Debian's chromium with apt-get");
    let apt = |args: &[&str]| {
        std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !apt(&["install", "-y", "-qq", "chromium"]) {
        apt(&["update", "-qq"]);
        apt(&["install", "-y", "-qq", "chromium"]);
    }
    let found = on_path();
    if found.is_none() {
        let why = "no chromium on PATH and `apt-get install -y chromium` did not bring one";
        assert!(
            std::env::var_os("CI").is_none(),
            "{why}: CI must run the browser test"
        );
        eprintln!("skipped: {why}");
    }
    found
}

/// A TCP proxy between the browser and the site, whose connections can be
/// cut (and new ones refused) and then let through again.
struct Proxy {
    addr: SocketAddr,
    /// Whether connections are cut, and the ones open now.
    state: Arc<Mutex<(bool, Vec<AbortHandle>)>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new((false, Vec::new())));
        let shared = state.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut state = shared.lock().unwrap();
                if state.0 {
                    continue; // dropped: the browser sees the connection fail
                }
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                state.1.push(relay.abort_handle());
            }
        });
        Proxy {
            addr,
            state,
            accepting,
        }
    }

    fn cut(&self) {
        let mut state = self.state.lock().unwrap();
        state.0 = true;
        for relay in state.1.drain(..) {
            relay.abort();
        }
    }

    fn restore(&self) {
        self.state.lock().unwrap().0 = false;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accepting.abort();
    }
}

/// The milestones the page shows, oldest first: (sequence, headline).
async fn shown(page: &Page) -> Vec<(u64, String)> {
    let listed: Vec<(u64, String)> = page
        .evaluate(
            "Array.from(document.querySelectorAll('#feed li.milestone'))
               .map(li => [Number(li.dataset.sequence), li.querySelector('.headline').textContent])",
        )
        .await
        .expect("evaluates")
        .into_value()
        .expect("a list");
    listed.into_iter().rev().collect()
}

async fn text_of(page: &Page, id: &str) -> String {
    page.evaluate(format!("document.getElementById('{id}').textContent"))
        .await
        .expect("evaluates")
        .into_value()
        .expect("a string")
}

/// Polls `check` every 50 ms until it holds; panics with `what` after
/// `within`. Returns how long it took.
async fn until<F, Fut>(within: Duration, what: &str, check: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The milestones (events of a watch) among `first..=last`, as the page
/// should show them.
async fn milestones_between(newsroom: &Newsroom, first: u64, last: u64) -> Vec<(u64, String)> {
    if first == 0 {
        return Vec::new();
    }
    let events = newsroom
        .milestones()
        .await
        .list_events(pb::ListEventsRequest {
            from_sequence: first,
            limit: (last - first + 1) as u32,
            ..Default::default()
        })
        .await
        .expect("ListEvents")
        .into_inner()
        .events;
    events
        .into_iter()
        .filter_map(|event| Some((event.sequence, event.headline()?.to_owned())))
        .collect()
}

/// Writes `records` through gRPC and returns the milestones the write
/// produced.
async fn write(newsroom: &Newsroom, records: Vec<pb::TradeRecord>) -> Vec<(u64, String)> {
    let written = newsroom
        .binary
        .client()
        .await
        .put_records(put(records))
        .await
        .expect("PutRecords")
        .into_inner();
    milestones_between(newsroom, written.first_sequence, written.last_sequence).await
}

async fn launch(executable: PathBuf, profile: &std::path::Path) -> (Browser, tokio::task::JoinHandle<()>) {
    let config = BrowserConfig::builder()
        .chrome_executable(executable)
        .user_data_dir(profile)
        .no_sandbox()
        .window_size(1280, 860)
        .viewport(Viewport {
            width: 1280,
            height: 860,
            ..Viewport::default()
        })
        .build()
        .expect("a browser config");
    let (browser, mut handler) = Browser::launch(config).await.expect("chromium starts");
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
    (browser, events)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_shows_each_milestone_as_it_is_stored_and_resumes_after_a_cut() {
    let Some(executable) = chromium() else { return };
    let newsroom = Newsroom::start(&[]);
    let proxy = Proxy::start(newsroom.web).await;
    let profile = tempfile::tempdir().unwrap();
    let (mut browser, events) = launch(executable, profile.path()).await;
    let page = browser
        .new_page(format!("http://{}/", proxy.addr))
        .await
        .expect("opens the page");
    until(Duration::from_secs(10), "the page goes live", || async {
        text_of(&page, "status").await == "live"
    })
    .await;

    // The quick start's watch, then the bundled figures one by one.
    newsroom.watch_china_central_asia().await;
    let mut expected = Vec::new();
    for r in seed_records() {
        let milestones = write(&newsroom, vec![r]).await;
        if milestones.is_empty() {
            continue;
        }
        expected.extend(milestones);
        let took = until(SHOWN_WITHIN, &format!("the page shows {expected:?}"), || async {
            shown(&page).await == expected
        })
        .await;
        eprintln!(
            "milestone {} shown {took:?} after its write",
            expected.last().unwrap().0
        );
    }
    let headlines: Vec<&str> = expected.iter().map(|(_, h)| h.as_str()).collect();
    assert_eq!(headlines.len(), 3, "{headlines:?}");
    for (headline, says) in headlines.iter().zip([
        "hit a record 90.96 billion USD in 2024, above 2023's 89.3 billion USD",
        "reached 102.0 billion USD in 2025, crossing 100 billion USD",
        "hit a record 102.0 billion USD in 2025, above 2024's 94.82 billion USD",
    ]) {
        assert!(headline.ends_with(says), "{headline}");
    }

    // The chart was redrawn for the last milestone, and the page says
    // where it is in the log.
    let last = expected.last().unwrap().0;
    let chart = format!(
        "(() => {{ const img = document.querySelector('section.watch[data-watch=\"w1\"] img');
                   return img !== null && img.complete && img.naturalWidth > 0
                       && img.getAttribute('src').endsWith('v={last}'); }})()"
    );
    until(SHOWN_WITHIN, "the chart is redrawn", || async {
        page.evaluate(chart.as_str())
            .await
            .unwrap()
            .into_value()
            .unwrap_or(false)
    })
    .await;
    let position = text_of(&page, "position").await;
    let at: u64 = position
        .trim_start_matches("at sequence ")
        .parse()
        .expect(&position);
    assert!(at >= last, "{position}");
    if let Some(path) = std::env::var_os("TRADEWATCH_SCREENSHOT") {
        page.save_screenshot(ScreenshotParams::builder().full_page(true).build(), &path)
            .await
            .expect("saves the screenshot");
        eprintln!("screenshot saved to {}", PathBuf::from(path).display());
    }

    // Cut the browser off; customs revises Kazakhstan's 2025 figure while
    // it is away.
    proxy.cut();
    until(Duration::from_secs(5), "the page notices the cut", || async {
        text_of(&page, "status").await == "reconnecting…"
    })
    .await;
    let revision = write(
        &newsroom,
        vec![record("CHN", "KAZ", "2025", 42_000_000_000, "GACC")],
    )
    .await;
    assert_eq!(revision.len(), 1, "{revision:?}");
    assert!(
        revision[0]
            .1
            .ends_with("fell to 99.7 billion USD in 2025, back below 100 billion USD")
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(shown(&page).await, expected, "nothing arrives while cut off");

    proxy.restore();
    expected.extend(revision);
    until(
        Duration::from_secs(5),
        "the page shows what it missed",
        || async { shown(&page).await == expected },
    )
    .await;
    // And only once, also a while later.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(shown(&page).await, expected);
    assert_eq!(text_of(&page, "status").await, "live");

    browser.close().await.expect("closes");
    let _ = browser.wait().await;
    events.abort();
}
