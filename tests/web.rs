//! The newsroom site over HTTP, on the real binary: the event stream is the
//! log `ListEvents` pages through, a chart carries the figures `Aggregate`
//! answers, bad requests get precise answers, and `--auth-reads` guards it
//! all. The browser test is `tests/web_browser.rs`.

mod common;
#[path = "support/web.rs"]
mod web;

use std::collections::BTreeMap;

use http::StatusCode;
use proptest::prelude::*;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};
use tradewatch::pb;
use web::{Newsroom, Sse, get, get_text};

use common::{put, record, seed_records};

/// The bundled figures, one write per record in file order, under the
/// quick start's watch.
async fn load(newsroom: &Newsroom) {
    newsroom.watch_china_central_asia().await;
    let mut trade = newsroom.binary.client().await;
    for r in seed_records() {
        trade.put_records(put(vec![r])).await.expect("PutRecords");
    }
}

async fn list_events(newsroom: &Newsroom) -> Vec<pb::Event> {
    let mut client = newsroom.milestones().await;
    let (mut events, mut next) = (Vec::new(), 1);
    loop {
        let page = client
            .list_events(pb::ListEventsRequest {
                from_sequence: next,
                limit: 7,
                ..Default::default()
            })
            .await
            .expect("ListEvents")
            .into_inner();
        if page.events.is_empty() {
            return events;
        }
        events.extend(page.events);
        next = page.next_sequence;
    }
}

/// An event's JSON read back as the gRPC message, through the API's
/// descriptors (the lifted milestone fields are not part of it).
fn decode(data: &str) -> (pb::Event, serde_json::Value) {
    let json: serde_json::Value = serde_json::from_str(data).expect("JSON");
    let mut message = json.as_object().expect("an object").clone();
    for lifted in ["kind", "watch_id", "headline", "caused_by"] {
        message.remove(lifted);
    }
    let pool = DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
    let descriptor = pool.get_message_by_name("tradewatch.v1.Event").unwrap();
    let dynamic =
        DynamicMessage::deserialize(descriptor, serde_json::Value::Object(message)).expect("an Event");
    (
        pb::Event::decode(dynamic.encode_to_vec().as_slice()).unwrap(),
        json,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_event_stream_is_the_log_list_events_returns() {
    let newsroom = Newsroom::start(&[]);
    load(&newsroom).await;
    let listed = list_events(&newsroom).await;
    assert!(listed.len() >= 19, "{} events", listed.len());

    // curl -N /events?from_sequence=1: every event, then live.
    let mut sse = Sse::new(get(newsroom.web, "/events?from_sequence=1", &[]).await);
    let frames = sse.until("caught_up").await;
    let streamed: Vec<_> = frames.iter().filter(|f| f.event.is_none()).collect();
    assert_eq!(streamed.len(), listed.len());
    for (frame, event) in streamed.iter().zip(&listed) {
        assert_eq!(frame.id, Some(event.sequence.to_string()));
        let (decoded, json) = decode(&frame.data);
        assert_eq!(&decoded, event, "{}", frame.data);
        assert_eq!(json["headline"].as_str(), event.headline());
    }

    // A write while streaming arrives, with its sequence as the id.
    let revision = record("CHN", "KAZ", "2025", 42_000_000_000, "GACC");
    let written = newsroom
        .binary
        .client()
        .await
        .put_records(put(vec![revision]))
        .await
        .unwrap()
        .into_inner();
    for sequence in written.first_sequence..=written.last_sequence {
        let frame = loop {
            let frame = sse.next().await;
            if frame.event.is_none() {
                break frame;
            }
        };
        assert_eq!(frame.id, Some(sequence.to_string()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reconnecting_browser_resumes_after_its_last_event_id() {
    let newsroom = Newsroom::start(&[]);
    load(&newsroom).await;
    let listed = list_events(&newsroom).await;
    let milestones: Vec<&pb::Event> = listed.iter().filter(|e| e.headline().is_some()).collect();
    assert_eq!(milestones.len(), 3);
    // EventSource reconnects to the same URL and sends the last id it saw.
    let last_seen = milestones[0].sequence.to_string();
    let response = get(
        newsroom.web,
        "/events?from_sequence=1&only=milestones",
        &[("last-event-id", &last_seen)],
    )
    .await;
    let frames = Sse::new(response).until("caught_up").await;
    let ids: Vec<String> = frames
        .iter()
        .filter(|f| f.event.is_none())
        .filter_map(|f| f.id.clone())
        .collect();
    let expected: Vec<String> = milestones[1..].iter().map(|e| e.sequence.to_string()).collect();
    assert_eq!(ids, expected);
    // The first frame says where the stream stands: everything up to the
    // last id seen has been considered.
    assert_eq!(frames[0].event.as_deref(), Some("progress"));
    assert_eq!(frames[0].id.as_ref(), Some(&last_seen));
}

/// `data-*` attributes of each `<g class="{class}" …>` of an SVG.
fn elements(svg: &str, class: &str) -> Vec<BTreeMap<String, String>> {
    let opening = format!("<g class=\"{class}\" ");
    svg.match_indices(&opening)
        .map(|(at, _)| {
            let rest = &svg[at + opening.len()..];
            let tag = &rest[..rest.find('>').expect("a closed tag")];
            tag.split("\" ")
                .filter_map(|pair| {
                    let (name, value) = pair.split_once("=\"")?;
                    Some((name.to_owned(), value.trim_end_matches('"').to_owned()))
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chart_shows_the_figures_aggregate_answers() {
    let newsroom = Newsroom::start(&[]);
    load(&newsroom).await;
    let response = get(newsroom.web, "/watches/w1/chart.svg", &[]).await;
    assert_eq!(response.headers()["content-type"], "image/svg+xml");
    let (status, svg) = get_text(newsroom.web, "/watches/w1/chart.svg", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    let title = svg
        .split("<text")
        .nth(1)
        .and_then(|t| t.split_once('>'))
        .map(|(_, t)| t);
    let title = title.and_then(|t| t.split_once("</text>")).map(|(t, _)| t.trim());
    assert_eq!(
        title,
        Some("China–Central Asia trade"),
        "titled by the watch's name"
    );
    assert!(svg.contains("USD bn"), "the axis in the currency, in billions");

    let answer = newsroom
        .binary
        .client()
        .await
        .aggregate(pb::AggregateRequest {
            selector: Some(common::china_central_asia()),
            group_by: vec![pb::Dimension::Period.into()],
            granularity: pb::Granularity::Year.into(),
            ..Default::default()
        })
        .await
        .expect("Aggregate")
        .into_inner();
    let periods = elements(&svg, "period");
    let drawn: Vec<(String, String, String, String)> = periods
        .iter()
        .map(|p| {
            let field = |name: &str| p[name].clone();
            (
                field("data-period"),
                field("data-units"),
                field("data-nanos"),
                field("data-records"),
            )
        })
        .collect();
    let aggregated: Vec<(String, String, String, String)> = answer
        .rows
        .iter()
        .map(|row| {
            let total = row.total.as_ref().unwrap();
            (
                row.period.clone(),
                total.units.to_string(),
                total.nanos.to_string(),
                row.record_count.to_string(),
            )
        })
        .collect();
    assert_eq!(drawn, aggregated);
    let labels: Vec<&str> = drawn.iter().map(|d| d.0.as_str()).collect();
    assert_eq!(labels, ["2023", "2024", "2025"]);
    let marks: Vec<(&str, &str)> = periods
        .iter()
        .map(|p| (p["data-record-high"].as_str(), p["data-crossed"].as_str()))
        .collect();
    assert_eq!(
        marks,
        [("false", ""), ("true", ""), ("true", "100000000000")],
        "2024 and 2025 are record highs, 2025 crossed 100 bn"
    );
    let thresholds = elements(&svg, "threshold");
    assert_eq!(thresholds.len(), 1);
    assert_eq!(thresholds[0]["data-units"], "100000000000");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_paths_and_ids_get_precise_answers() {
    let newsroom = Newsroom::start(&[]);
    newsroom.watch_china_central_asia().await;
    for (path, status, message) in [
        ("/nope", StatusCode::NOT_FOUND, "not found: \"/nope\""),
        ("/watches/w9/chart.svg", StatusCode::NOT_FOUND, "no watch w9"),
        ("/watches/W1/chart.svg", StatusCode::NOT_FOUND, "no watch \"W1\""),
        ("/watches/w1/chart.png", StatusCode::NOT_FOUND, "not found"),
        (
            "/events?from_sequence=abc",
            StatusCode::BAD_REQUEST,
            "from_sequence=\"abc\"",
        ),
        (
            "/events?only=records",
            StatusCode::BAD_REQUEST,
            "only=\"records\": the one filter is only=milestones",
        ),
    ] {
        let response = get(newsroom.web, path, &[]).await;
        assert_eq!(response.status(), status, "{path}");
        assert_eq!(response.headers()["content-type"], "text/plain; charset=utf-8");
        let (_, text) = get_text(newsroom.web, path, &[]).await;
        assert!(text.starts_with(message), "{path}: {text}");
    }
    let (status, text) = get_text(newsroom.web, "/events", &[("last-event-id", "x")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let (status, text) = get_text(newsroom.web, "/watches", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let watches: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(watches[0]["id"], "w1");
    assert_eq!(watches[0]["series"], "CHN ↔ CENTRAL_ASIA, turnover");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_auth_reads_the_site_asks_for_the_token() {
    let newsroom = Newsroom::start(&["--auth-token", "s3cret", "--auth-reads"]);
    let web = newsroom.web;
    for path in ["/", "/watches", "/watches/w1/chart.svg", "/events"] {
        let (status, text) = get_text(web, path, &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(text.contains("?token=TOKEN"), "{text}");
        let (status, _) = get_text(web, &format!("{path}?token=wrong"), &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        let (status, _) = get_text(web, path, &[("authorization", "Bearer nope")]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let (status, _) = get_text(web, "/?token=s3cret", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get_text(web, "/watches", &[("authorization", "Bearer s3cret")]).await;
    assert_eq!(status, StatusCode::OK);
    let response = get(web, "/events?from_sequence=1&token=s3cret", &[]).await;
    assert_eq!(Sse::new(response).next().await.event.as_deref(), Some("progress"));
    // The script holds no data.
    let (status, script) = get_text(web, "/app.js", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(script.contains("EventSource"));
}

/// Requests as a browser, a crawler or an attacker might send them:
/// every one gets a client or success status, and the site keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn any_request_gets_an_answer_and_the_site_keeps_serving() {
    let newsroom = Newsroom::start(&[]);
    newsroom.watch_china_central_asia().await;
    let segment = prop::sample::select(vec![
        "",
        "watches",
        "w1",
        "w9",
        "W1",
        "chart.svg",
        "events",
        "app.js",
        "%2e%2e",
        "..",
        "%00",
        "a%2Fb",
    ]);
    let requests = (
        prop::collection::vec(segment, 0..4),
        "[a-z_=&%0-9A-F+.-]{0,30}",
        proptest::option::of("[!-~]{0,22}"),
    );
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 150,
        failure_persistence: None,
        ..Default::default()
    });
    let handle = tokio::runtime::Handle::current();
    let web = newsroom.web;
    let result = tokio::task::spawn_blocking(move || {
        runner.run(&requests, |(segments, query, last_event_id)| {
            let path = format!("/{}?{query}", segments.join("/"));
            if path.parse::<http::Uri>().is_err() {
                return Ok(());
            }
            let mut headers = Vec::new();
            if let Some(id) = &last_event_id {
                headers.push(("last-event-id", id.as_str()));
            }
            let status = handle.block_on(get(web, &path, &headers)).status();
            prop_assert!(
                [StatusCode::OK, StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND].contains(&status),
                "{path} {last_event_id:?}: {status}"
            );
            Ok(())
        })
    })
    .await
    .unwrap();
    result.unwrap();
    let (status, page) = get_text(newsroom.web, "/", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("app.js"));
}

/// With `--tls-cert`, the site is HTTPS with the same certificate; `curl -N`
/// follows the events over it.
#[tokio::test(flavor = "multi_thread")]
async fn with_tls_the_site_is_https_and_curl_follows_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let newsroom = Newsroom::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let curl = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new("curl")
                .args(["-sS", "--max-time", "2"])
                .args(args)
                .output()
                .expect("curl runs (these tests need curl on PATH)");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let https = format!("https://{}", newsroom.web);
    let cacert = cert.to_str().unwrap().to_owned();
    let watches = curl(vec![
        "--cacert".into(),
        cacert.clone(),
        format!("{https}/watches"),
    ]);
    assert_eq!(watches.await.unwrap(), "[]");
    // curl -N keeps reading the stream until --max-time ends it.
    let events = curl(vec![
        "-N".into(),
        "--cacert".into(),
        cacert,
        format!("{https}/events?from_sequence=1"),
    ]);
    let printed = events.await.unwrap();
    assert!(
        printed.starts_with("retry: 1000\n\nid: 0\nevent: progress\n"),
        "{printed}"
    );
}
