//! Cluster mode against a real NATS JetStream cluster: three nats-servers
//! (tests/support/nats.rs) and two or three tradewatch nodes (the real
//! binary, each on its own data dir, `--nats`). What a user of a cluster
//! relies on:
//!
//! - writes go on when the stream's leader nats-server or a node is
//!   SIGKILLed, within 10 s, and every acknowledged write is kept, once;
//! - every node stores the same events, the ones a single node stores when
//!   fed the same commands in log order, and a subscriber can move from one
//!   node to another without a gap or a repeat;
//! - a read carrying a write's `log_position` sees it on any node, or ends
//!   at its deadline;
//! - a retried write lands once, whichever node the retry reaches;
//! - a node started on an empty data dir restores a snapshot and answers
//!   like the others.
//!
//! Each test has a NATS cluster of its own. Without a nats-server (and no
//! way to install one) they say why and pass, unless `CI` is set.

mod common;
#[path = "support/nats.rs"]
mod nats;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::{Binary, key_of, record};
use futures_util::StreamExt;
use nats::NatsCluster;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Request, Streaming};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tradewatch::pb::{
    self, milestone_service_client::MilestoneServiceClient, subscribe_response::Message,
    trade_service_client::TradeServiceClient,
};

/// The nodes' stream: the default of `--nats-stream`.
const STREAM: &str = "TRADEWATCH";
/// Where the nodes publish snapshots: `<stream>_snapshots`.
const SNAPSHOT_BUCKET: &str = "TRADEWATCH_snapshots";
/// One writer each; the watch's series sums them.
const PARTNERS: [&str; 5] = ["KAZ", "KGZ", "TJK", "TKM", "UZB"];
const FIRST_YEAR: u64 = 2016;
const YEARS: u64 = 10;
const BILLION: i64 = 1_000_000_000;
/// Writes per writer in the tests without kills: 300 in all.
const CALM_WRITES: u64 = 60;

/// Writes must go on at most this long after a kill.
const RESUME_WITHIN: Duration = Duration::from_secs(10);
/// A write attempt during the kills gets this long before it is retried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// A write not acknowledged by then fails the test.
const WRITE_GIVES_UP: Duration = Duration::from_secs(60);
/// Any other call, and each message a subscriber waits for.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const SERVING_TIMEOUT: Duration = Duration::from_secs(30);
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// The harness itself

/// Three servers form a cluster; when the leader of a replicated stream is
/// SIGKILLed, the other two elect a new one (and a new meta leader if it was
/// that too), the stream takes messages again, and the killed server
/// rejoins when restarted. The cluster tests below rely on all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_harness_elects_new_leaders_when_the_stream_leader_is_killed() {
    let Some(mut nats) = nats::start_or_skip("nats_harness") else {
        return;
    };
    let js = nats.jetstream().await;
    js.create_stream(jetstream::stream::Config {
        name: "HARNESS".into(),
        subjects: vec!["harness".into()],
        num_replicas: nats::SERVERS,
        ..Default::default()
    })
    .await
    .expect("creates a replicated stream");
    publish_until_acknowledged(&js, "before the kill").await;

    let leader = nats.stream_leader("HARNESS").await;
    nats.kill(leader);
    publish_until_acknowledged(&js, "after the kill").await;
    let new_leader = nats.stream_leader("HARNESS").await;
    assert_ne!(new_leader, leader, "the killed server still leads the stream");
    let survivors: Vec<usize> = (0..nats::SERVERS).filter(|&i| i != leader).collect();
    // Survivors name the dead leader until they have elected another.
    let agreed_meta_leader = |nats: &NatsCluster| {
        let seen: BTreeSet<Option<usize>> = survivors.iter().map(|&i| nats.meta_leader_seen_by(i)).collect();
        match Vec::from_iter(seen)[..] {
            [Some(agreed)] if agreed != leader => Some(agreed),
            _ => None,
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let meta_leader = loop {
        if let Some(agreed) = agreed_meta_leader(&nats) {
            break agreed;
        }
        assert!(
            Instant::now() < deadline,
            "the survivors agree on no live meta leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    nats.restart(leader);
    tokio::task::block_in_place(|| nats.wait_ready()).expect("the restarted server catches up");
    assert_eq!(
        nats.meta_leader_seen_by(leader),
        Some(meta_leader),
        "the restarted server follows the cluster's meta leader"
    );
    let info = js
        .get_stream("HARNESS")
        .await
        .expect("stream")
        .cached_info()
        .clone();
    assert_eq!(info.state.last_sequence, 2, "both messages, once each");
}

async fn publish_until_acknowledged(js: &jetstream::Context, payload: &'static str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let acknowledged = match js.publish("harness", payload.into()).await {
            Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match acknowledged {
            Ok(()) => return,
            Err(why) => assert!(Instant::now() < deadline, "{payload:?} not acknowledged: {why}"),
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

// ---------------------------------------------------------------------------
// Tests

/// Writers spread over two nodes while the stream's leader nats-server is
/// SIGKILLed (and restarted), then one node (restarted on its data dir).
/// After each kill, a write sent after it is acknowledged within 10 s; in
/// the end each acknowledged write is in the log once, at its position, and
/// both nodes hold every key at the revision of its last acknowledged write
/// and the same gap-free events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_killing_the_stream_leader_and_a_node() {
    let Some(mut cluster) = Cluster::start("kills", 2, &[]).await else {
        return;
    };
    let watch = create_watch(&cluster.nodes, "kills").await;
    let acks = Acks::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&cluster.nodes, &acks, "kills", {
        let stop = stop.clone();
        move |_| !stop.load(Ordering::Relaxed)
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let leader = cluster.nats.stream_leader(STREAM).await;
    let killed = Instant::now();
    cluster.nats.kill(leader);
    let pause = time_to_next_ack(&acks, killed).await;
    assert!(
        pause <= RESUME_WITHIN,
        "writes resumed {pause:?} after SIGKILL of the stream leader n{}",
        leader + 1
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.nats.restart(leader);
    tokio::task::block_in_place(|| cluster.nats.wait_ready()).expect("the restarted nats-server catches up");

    let killed = Instant::now();
    cluster.kill_node(1);
    let pause = time_to_next_ack(&acks, killed).await;
    assert!(
        pause <= RESUME_WITHIN,
        "writes resumed {pause:?} after SIGKILL of node 1"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.restart_node(1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let acks = join(writers, &acks).await;

    let last = stream_last_sequence(&cluster.nats).await;
    assert!(
        last >= watch.log_position.max(max_position(&acks)),
        "positions beyond the log's end"
    );
    assert_each_write_logged_once(&cluster.nats, &acks, last).await;
    for node in 0..2 {
        assert_holds_last_writes(&mut cluster.nodes.trade(node), &acks, last).await;
    }
    let events = all_events(&mut cluster.nodes.milestones(0), last).await;
    assert_gap_free(&events);
    assert_same_events(
        &events,
        &all_events(&mut cluster.nodes.milestones(1), last).await,
        "node 1",
    );
    assert_events_name_their_writes(&events, &acks);
}

/// 300 writes spread over two nodes at once: `ListEvents` pages through the
/// same gap-free events on both, and a single node (no NATS) fed the same
/// commands in log order stores the same events but for their times (each
/// the time its node accepted the write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_identical_on_every_node_and_to_a_single_node_replay() {
    let Some(cluster) = Cluster::start("replay", 2, &[]).await else {
        return;
    };
    let watch = create_watch(&cluster.nodes, "replay").await;
    let acks = Acks::default();
    let writers = spawn_writers(&cluster.nodes, &acks, "replay", |i| i < CALM_WRITES);
    let acks = join(writers, &acks).await;
    let last = max_position(&acks);

    let events = all_events(&mut cluster.nodes.milestones(0), last).await;
    assert_gap_free(&events);
    assert_same_events(
        &events,
        &all_events(&mut cluster.nodes.milestones(1), last).await,
        "node 1",
    );
    assert!(
        !threshold_crossings(&events).is_empty(),
        "the writes crossed no threshold"
    );

    let single_dir = tempfile::tempdir().expect("temp dir");
    let single = Binary::start(single_dir.path(), &["--cache-mb", "64"]);
    let single_channel = channel(&single.addr);
    let mut single_milestones = MilestoneServiceClient::new(single_channel.clone());
    let mut single_trade = TradeServiceClient::new(single_channel);
    assert!(
        acks.iter().all(|a| a.log_position > watch.log_position),
        "the watch came first"
    );
    single_milestones
        .create_watch(timed(watch_request("replay")))
        .await
        .expect("CreateWatch on the single node");
    let mut in_log_order = acks.clone();
    in_log_order.sort_by_key(|a| a.log_position);
    for ack in in_log_order {
        single_trade
            .put_records(timed(ack.request))
            .await
            .expect("PutRecords on the single node");
    }
    let replayed = all_events(&mut single_milestones, 0).await;
    assert_same_events(
        &without_time(&events),
        &without_time(&replayed),
        "the single node",
    );
}

/// A subscriber reads the first events from node 0, disconnects, and
/// resumes on node 1 from the next sequence while the writers go on: in the
/// end it has every event from 1 to the head once, in order, as stored, and
/// each threshold crossing once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resumes_on_another_node_without_gaps_or_repeats() {
    let Some(cluster) = Cluster::start("resume", 2, &[]).await else {
        return;
    };
    create_watch(&cluster.nodes, "resume").await;
    let acks = Acks::default();
    let writers = spawn_writers(&cluster.nodes, &acks, "resume", |i| i < CALM_WRITES);

    let mut received = Vec::new();
    let mut on_first = subscribe(&cluster.nodes, 0, 1).await;
    while received.len() < 50 {
        received.push(next_event(&mut on_first).await);
    }
    drop(on_first);
    assert!(
        writers.iter().any(|w| !w.is_finished()),
        "the writers finished before the subscriber moved"
    );
    let resume_from = received.last().map_or(1, |e| e.sequence + 1);
    let mut on_second = subscribe(&cluster.nodes, 1, resume_from).await;

    let acks = join(writers, &acks).await;
    let stored = all_events(&mut cluster.nodes.milestones(0), max_position(&acks)).await;
    while received.len() < stored.len() {
        received.push(next_event(&mut on_second).await);
    }
    let sequences: Vec<u64> = received.iter().map(|e| e.sequence).collect();
    let expected: Vec<u64> = (1..=stored.len() as u64).collect();
    assert_eq!(sequences, expected, "every event once, in order");
    assert_same_events(&stored, &received, "the subscriber");

    let crossings = threshold_crossings(&received);
    assert!(!crossings.is_empty(), "the writes crossed no threshold");
    let distinct: BTreeSet<_> = crossings.iter().collect();
    assert_eq!(
        distinct.len(),
        crossings.len(),
        "a threshold crossing came twice: {crossings:?}"
    );
}

/// 200 times: a write on one node, then a read on the other carrying the
/// write's `log_position`, which sees it at its revision (directions
/// alternate). A read waiting for a position far past the head ends with
/// DEADLINE_EXCEEDED at about its 300 ms grpc-timeout: it did wait, and a
/// node may answer a little early so that the answer arrives in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_with_min_log_position_sees_a_write_made_on_the_other_node() {
    let Some(cluster) = Cluster::start("read-your-writes", 2, &[]).await else {
        return;
    };
    let mut last_position = 0;
    for i in 0..200u64 {
        let (writer, reader) = if i % 2 == 0 { (0, 1) } else { (1, 0) };
        let written = record(
            "CHN",
            "KAZ",
            &(2000 + i % 10).to_string(),
            (i as i64 + 1) * BILLION,
            "ryw",
        );
        let request = pb::PutRecordsRequest {
            records: vec![written.clone()],
            request_id: format!("read-your-writes-{i}"),
        };
        let response = cluster
            .nodes
            .trade(writer)
            .put_records(timed(request))
            .await
            .unwrap_or_else(|s| panic!("write {i} on node {writer}: {s:?}"))
            .into_inner();
        let read = get_record_at(
            &mut cluster.nodes.trade(reader),
            key_of(&written),
            response.log_position,
        )
        .await;
        assert_eq!(
            (read.revision, &read.value),
            (response.results[0].revision, &written.value),
            "write {i} on node {writer}, read on node {reader} at position {}",
            response.log_position
        );
        last_position = response.log_position;
    }

    let beyond = pb::GetRecordRequest {
        key: Some(key_of(&record("CHN", "KAZ", "2000", 1, ""))),
        min_log_position: last_position + 1_000_000,
    };
    let (status, took) = get_record_raw(&cluster.binaries[1].as_ref().unwrap().addr, &beyond, "300m").await;
    assert_eq!(
        status,
        (Code::DeadlineExceeded as i32).to_string(),
        "after {took:?}"
    );
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(5),
        "answered after {took:?}"
    );
}

/// The same PutRecords with the same request id, twice to node 0 and once
/// to node 1: the same answer each time (log position, event sequences,
/// results), and the stream holds one message more than before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_lands_once_whichever_node_receives_it() {
    let Some(cluster) = Cluster::start("retry", 2, &[]).await else {
        return;
    };
    // A first write makes sure the stream exists before it is measured.
    let warm_up = pb::PutRecordsRequest {
        records: vec![record("CHN", "KAZ", "2024", 43_820_000_000, "GACC")],
        request_id: "retry-warm-up".into(),
    };
    cluster
        .nodes
        .trade(0)
        .put_records(timed(warm_up))
        .await
        .expect("first write");
    let before = stream_last_sequence(&cluster.nats).await;

    let request = pb::PutRecordsRequest {
        records: vec![
            record("CHN", "UZB", "2025", 16_200_000_000, "GACC"),
            record("CHN", "KGZ", "2025", 27_200_000_000, "GACC"),
        ],
        request_id: "6f0c2c1e-2b1d-4f1e-9a43-5b7c0e9d8a21".into(),
    };
    let mut answers = Vec::new();
    for node in [0, 0, 1] {
        let answer = cluster
            .nodes
            .trade(node)
            .put_records(timed(request.clone()))
            .await
            .unwrap_or_else(|s| panic!("PutRecords on node {node}: {s:?}"))
            .into_inner();
        answers.push(answer);
    }
    assert_eq!(answers[0].log_position, before + 1, "{:?}", answers[0]);
    assert_eq!(answers[1], answers[0], "the retry on the same node");
    assert_eq!(answers[2], answers[0], "the retry on the other node");
    assert_eq!(
        stream_last_sequence(&cluster.nats).await,
        before + 1,
        "one message for three sends"
    );
    for node in 0..2 {
        let stored = get_record_at(
            &mut cluster.nodes.trade(node),
            key_of(&request.records[0]),
            before + 1,
        )
        .await;
        assert_eq!(stored.revision, 1, "node {node}");
    }
}

/// A command this node cannot read — here one of a newer log format than
/// it knows, published straight to the stream — stops it there: health
/// NOT_SERVING, writes through it UNAVAILABLE (nothing published), reads
/// still answered up to the position before, and the position after never
/// reached: it does not skip the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stops_at_a_command_it_cannot_read_and_never_skips_it() {
    let Some(cluster) = Cluster::start("halt", 1, &[]).await else {
        return;
    };
    let written = cluster
        .nodes
        .trade(0)
        .put_records(timed(pb::PutRecordsRequest {
            records: vec![record("CHN", "KAZ", "2025", 48_600_000_000, "GACC")],
            request_id: "halt-before".into(),
        }))
        .await
        .expect("a write before")
        .into_inner();
    // A command encoding's field 1 is its format: one newer than this
    // build reads (a varint of one byte).
    let newer = u8::try_from(tradewatch::store::command_codec::LOG_FORMAT + 1)
        .ok()
        .filter(|&format| format < 0x80)
        .expect("a format below 128");
    // Published as a node publishes: under a message id, retried while the
    // stream has no leader to take it (a NATS leader election, which a
    // loaded machine can start at any time, answers "no stream").
    let js = cluster.nats.jetstream().await;
    let started = Instant::now();
    loop {
        let message = jetstream::message::PublishMessage::build()
            .message_id("halt-unreadable")
            .payload(vec![0x08, newer].into());
        match async {
            js.send_publish(format!("{STREAM}.commands"), message)
                .await?
                .await
        }
        .await
        {
            Ok(_) => break,
            Err(e) if started.elapsed() < Duration::from_secs(30) => {
                eprintln!("publish failed ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the stream never took the command: {e}"),
        }
    }
    wait_status(&cluster.addr(0), ServingStatus::NotServing).await;

    let refused = cluster
        .nodes
        .trade(0)
        .put_records(timed(pb::PutRecordsRequest {
            records: vec![record("CHN", "KGZ", "2025", 27_200_000_000, "GACC")],
            request_id: "halt-after".into(),
        }))
        .await
        .expect_err("a halted node takes no writes");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("stopped applying"), "{refused:?}");
    assert_eq!(
        stream_last_sequence(&cluster.nats).await,
        written.log_position + 1,
        "nothing published for the refused write"
    );
    let stored = get_record_at(
        &mut cluster.nodes.trade(0),
        key_of(&record("CHN", "KAZ", "2025", 0, "GACC")),
        written.log_position,
    )
    .await;
    assert_eq!(stored.revision, 1);
    // Still stopped, and never SERVING, over a few retries; never past the
    // command.
    let mut health = HealthClient::new(channel(&cluster.addr(0)));
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let status = health
            .check(timed(HealthCheckRequest {
                service: String::new(),
            }))
            .await
            .map(|r| r.into_inner().status());
        assert!(matches!(status, Ok(ServingStatus::NotServing)), "{status:?}");
    }
    let mut past = Request::new(pb::ListEventsRequest {
        min_log_position: written.log_position + 1,
        ..Default::default()
    });
    past.set_timeout(Duration::from_millis(500));
    let err = cluster
        .nodes
        .milestones(0)
        .list_events(past)
        .await
        .expect_err("the command is never skipped");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
}

/// A node that loses every NATS server answers NOT_SERVING, and SERVING
/// again once they are back, caught up with what was written meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_out_of_reach_of_nats_is_not_serving_until_it_is_back() {
    let Some(mut cluster) = Cluster::start("reach", 2, &[]).await else {
        return;
    };
    cluster.kill_node(1);
    for i in 0..3 {
        cluster.nats.kill(i);
    }
    wait_status(&cluster.addr(0), ServingStatus::NotServing).await;
    for i in 0..3 {
        cluster.nats.restart(i);
    }
    tokio::task::block_in_place(|| cluster.nats.wait_ready()).expect("NATS back");
    wait_status(&cluster.addr(0), ServingStatus::Serving).await;
    let written = put_until_acknowledged(
        &cluster.nodes,
        0,
        pb::PutRecordsRequest {
            records: vec![record("CHN", "TJK", "2025", 3_860_000_000, "GACC")],
            request_id: "reach-after".into(),
        },
    )
    .await;
    cluster.restart_node(1).await;
    let stored = get_record_at(
        &mut cluster.nodes.trade(1),
        key_of(&record("CHN", "TJK", "2025", 0, "GACC")),
        written.log_position,
    )
    .await;
    assert_eq!(stored.revision, 1);
}

/// With `--snapshot-every 50`, 300 writes leave a snapshot in the object
/// store; a third node started on an empty data dir becomes SERVING and
/// answers ListEvents, GetRecord and Aggregate as the others do, then
/// follows new writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_an_empty_data_dir_restores_a_snapshot_and_answers_like_the_others() {
    let Some(mut cluster) = Cluster::start("snapshot", 2, &["--snapshot-every", "50"]).await else {
        return;
    };
    create_watch(&cluster.nodes, "snapshot").await;
    let acks = Acks::default();
    let writers = spawn_writers(&cluster.nodes, &acks, "snapshot", |i| i < CALM_WRITES);
    let acks = join(writers, &acks).await;
    let last = max_position(&acks);
    wait_for_snapshot(&cluster.nats, last).await;

    let newcomer = cluster.add_node().await;
    let events = all_events(&mut cluster.nodes.milestones(0), last).await;
    assert_same_events(
        &events,
        &all_events(&mut cluster.nodes.milestones(newcomer), last).await,
        "the new node",
    );
    assert_holds_last_writes(&mut cluster.nodes.trade(newcomer), &acks, last).await;
    let totals = aggregate_by_year(&mut cluster.nodes.trade(0), last).await;
    for node in 1..=newcomer {
        assert_eq!(
            aggregate_by_year(&mut cluster.nodes.trade(node), last).await,
            totals,
            "node {node}"
        );
    }

    let later = record("CHN", "KAZ", "2030", 7 * BILLION, "after the snapshot");
    let response = cluster
        .nodes
        .trade(0)
        .put_records(timed(pb::PutRecordsRequest {
            records: vec![later.clone()],
            request_id: "snapshot-later".into(),
        }))
        .await
        .expect("a write after the new node started")
        .into_inner();
    let read = get_record_at(
        &mut cluster.nodes.trade(newcomer),
        key_of(&later),
        response.log_position,
    )
    .await;
    assert_eq!(read.value, later.value);
}

// ---------------------------------------------------------------------------
// A cluster of nodes

/// A NATS cluster and tradewatch nodes on it. Fields drop in order: the
/// nodes die before NATS, and before their data dirs go.
struct Cluster {
    /// Each node's process; `None` while it is killed.
    binaries: Vec<Option<Binary>>,
    dirs: Vec<TempDir>,
    /// Channels to the nodes as they are now, shared with the writers.
    nodes: Nodes,
    flags: Vec<String>,
    nats: NatsCluster,
}

impl Cluster {
    /// `count` nodes with `extra` flags, each SERVING; `None` when the test
    /// is skipped for want of a nats-server.
    async fn start(test: &str, count: usize, extra: &[&str]) -> Option<Cluster> {
        let nats = nats::start_or_skip(test)?;
        let mut flags: Vec<String> = ["--nats", &nats.urls(), "--cache-mb", "64"]
            .map(String::from)
            .to_vec();
        flags.extend(extra.iter().map(|f| f.to_string()));
        let mut cluster = Cluster {
            binaries: Vec::new(),
            dirs: Vec::new(),
            nodes: Nodes::default(),
            flags,
            nats,
        };
        for _ in 0..count {
            cluster.add_node().await;
        }
        Some(cluster)
    }

    /// Starts a node on an empty data dir and waits until it is SERVING;
    /// returns its index.
    async fn add_node(&mut self) -> usize {
        self.dirs.push(tempfile::tempdir().expect("temp dir"));
        let i = self.dirs.len() - 1;
        let binary = self.launch(i);
        self.nodes.0.lock().unwrap().push(channel(&binary.addr));
        wait_serving(&binary.addr).await;
        self.binaries.push(Some(binary));
        i
    }

    /// Where node `i` serves.
    fn addr(&self, i: usize) -> String {
        self.binaries[i].as_ref().expect("node running").addr.clone()
    }

    /// SIGKILLs node `i`.
    fn kill_node(&mut self, i: usize) {
        self.binaries[i] = None;
    }

    /// Starts node `i` again on its data dir (on a new port) and waits
    /// until it is SERVING.
    async fn restart_node(&mut self, i: usize) {
        let binary = self.launch(i);
        self.nodes.set(i, &binary.addr);
        wait_serving(&binary.addr).await;
        self.binaries[i] = Some(binary);
    }

    fn launch(&self, i: usize) -> Binary {
        let flags: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        Binary::start(self.dirs[i].path(), &flags)
    }
}

/// Channels to the nodes; a restarted node comes back on a new port.
#[derive(Clone, Default)]
struct Nodes(Arc<Mutex<Vec<Channel>>>);

impl Nodes {
    fn set(&self, i: usize, addr: &str) {
        self.0.lock().unwrap()[i] = channel(addr);
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn trade(&self, i: usize) -> TradeServiceClient<Channel> {
        TradeServiceClient::new(self.0.lock().unwrap()[i].clone())
    }

    fn milestones(&self, i: usize) -> MilestoneServiceClient<Channel> {
        MilestoneServiceClient::new(self.0.lock().unwrap()[i].clone())
    }
}

/// Connects on first use and again after a failure, so that a killed node
/// fails calls at once instead of failing to build.
fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("address")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy()
}

/// Waits until node `addr` reports `wanted` for the server as a whole.
async fn wait_status(addr: &str, wanted: ServingStatus) {
    let mut health = HealthClient::new(channel(addr));
    let deadline = Instant::now() + SERVING_TIMEOUT;
    loop {
        let status = health
            .check(timed(HealthCheckRequest {
                service: String::new(),
            }))
            .await
            .map(|r| r.into_inner().status());
        if matches!(&status, Ok(s) if *s == wanted) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} not {wanted:?} after {SERVING_TIMEOUT:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SERVING means caught up with the log and in touch with NATS.
async fn wait_serving(addr: &str) {
    wait_status(addr, ServingStatus::Serving).await;
}

fn timed<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

// ---------------------------------------------------------------------------
// Writes

/// The quick start's watch: China's turnover with Central Asia per year,
/// with thresholds up to 150 bn USD (100 bn among them) and record highs.
fn watch_request(test: &str) -> pb::CreateWatchRequest {
    pb::CreateWatchRequest {
        watch: Some(pb::Watch {
            name: "China–Central Asia trade".into(),
            selector: Some(pb::RecordSelector {
                reporters: vec!["CHN".into()],
                partners: vec!["CENTRAL_ASIA".into()],
                ..Default::default()
            }),
            granularity: pb::Granularity::Year.into(),
            thresholds: [50, 100, 150].map(|bn| usd(bn * BILLION)).to_vec(),
            record_high: true,
            ..Default::default()
        }),
        request_id: format!("{test}-watch"),
        ..Default::default()
    }
}

async fn create_watch(nodes: &Nodes, test: &str) -> pb::CreateWatchResponse {
    nodes
        .milestones(0)
        .create_watch(timed(watch_request(test)))
        .await
        .expect("CreateWatch")
        .into_inner()
}

fn usd(units: i64) -> pb::Money {
    pb::Money {
        currency_code: "USD".into(),
        units,
        nanos: 0,
    }
}

/// Write `i` of the writer that owns `partner`: China's turnover with it in
/// one of ten years, 8 bn more each time the writer comes back to that
/// year. The yearly sums over Central Asia grow by 40 bn a round, past each
/// threshold once, and years overtake one another as record highs.
fn growing_write(test: &str, partner: &str, i: u64) -> pb::PutRecordsRequest {
    let year = FIRST_YEAR + i % YEARS;
    let units = (i / YEARS + 1) as i64 * 8 * BILLION;
    pb::PutRecordsRequest {
        records: vec![record("CHN", partner, &year.to_string(), units, "cluster test")],
        request_id: format!("{test}-{partner}-{i}"),
    }
}

/// An acknowledged write and what its answer said.
#[derive(Debug, Clone)]
struct Ack {
    request: pb::PutRecordsRequest,
    revision: i64,
    first_sequence: u64,
    log_position: u64,
    /// When the attempt that was acknowledged was sent.
    sent: Instant,
    answered: Instant,
}

type Acks = Arc<Mutex<Vec<Ack>>>;

/// One writer per partner, sending its `growing_write`s one after another
/// while `more(i)` holds, alternating between the nodes.
fn spawn_writers(
    nodes: &Nodes,
    acks: &Acks,
    test: &'static str,
    more: impl Fn(u64) -> bool + Clone + Send + 'static,
) -> Vec<JoinHandle<()>> {
    PARTNERS
        .iter()
        .enumerate()
        .map(|(writer, partner)| {
            let (nodes, acks, more) = (nodes.clone(), acks.clone(), more.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while more(i) {
                    let ack =
                        put_until_acknowledged(&nodes, writer + i as usize, growing_write(test, partner, i))
                            .await;
                    acks.lock().unwrap().push(ack);
                    i += 1;
                }
            })
        })
        .collect()
}

async fn join(writers: Vec<JoinHandle<()>>, acks: &Acks) -> Vec<Ack> {
    for writer in writers {
        writer.await.expect("writer");
    }
    acks.lock().unwrap().clone()
}

/// Sends `request` until a node acknowledges it, first to node `first`,
/// then to each node in turn. Every attempt carries the same request id, so
/// the write lands once however many attempts reached the log.
async fn put_until_acknowledged(nodes: &Nodes, first: usize, request: pb::PutRecordsRequest) -> Ack {
    let gives_up = Instant::now() + WRITE_GIVES_UP;
    let mut attempt = 0;
    loop {
        let node = (first + attempt) % nodes.len();
        let mut call = Request::new(request.clone());
        call.set_timeout(ATTEMPT_TIMEOUT);
        let sent = Instant::now();
        match nodes.trade(node).put_records(call).await {
            Ok(response) => {
                let response = response.into_inner();
                assert_eq!(response.results.len(), 1, "{response:?}");
                return Ack {
                    revision: response.results[0].revision,
                    first_sequence: response.first_sequence,
                    log_position: response.log_position,
                    request,
                    sent,
                    answered: Instant::now(),
                };
            }
            // Not a failure of the cluster: of the request, or of the
            // request id's promise.
            Err(status) if matches!(status.code(), Code::InvalidArgument | Code::AlreadyExists) => {
                panic!("{}: {status:?}", request.request_id)
            }
            Err(status) => assert!(
                Instant::now() < gives_up,
                "{} not acknowledged within {WRITE_GIVES_UP:?}; last answer {status:?}",
                request.request_id
            ),
        }
        attempt += 1;
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// How long after `kill` the first write sent after it was acknowledged.
async fn time_to_next_ack(acks: &Acks, kill: Instant) -> Duration {
    let deadline = kill + 3 * RESUME_WITHIN;
    loop {
        let first = acks
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.sent >= kill)
            .map(|a| a.answered)
            .min();
        if let Some(answered) = first {
            return answered - kill;
        }
        assert!(
            Instant::now() < deadline,
            "no write acknowledged in the {:?} after the kill",
            3 * RESUME_WITHIN
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn max_position(acks: &[Ack]) -> u64 {
    acks.iter()
        .map(|a| a.log_position)
        .max()
        .expect("acknowledged writes")
}

// ---------------------------------------------------------------------------
// Reads and checks

async fn get_record_at(
    client: &mut TradeServiceClient<Channel>,
    key: pb::RecordKey,
    min_log_position: u64,
) -> pb::TradeRecord {
    let request = pb::GetRecordRequest {
        key: Some(key.clone()),
        min_log_position,
    };
    client
        .get_record(timed(request))
        .await
        .unwrap_or_else(|s| panic!("GetRecord {key:?} at {min_log_position}: {s:?}"))
        .into_inner()
        .record
        .expect("a record")
}

/// Every key written holds the revision and value of its last acknowledged
/// write (last in log order; a key's writes come from one writer, one after
/// another), and no earlier acknowledgement names a higher revision.
async fn assert_holds_last_writes(
    client: &mut TradeServiceClient<Channel>,
    acks: &[Ack],
    min_log_position: u64,
) {
    let mut by_key: BTreeMap<(String, String), Vec<&Ack>> = BTreeMap::new();
    for ack in acks {
        let written = &ack.request.records[0];
        by_key
            .entry((written.partner.clone(), written.period.clone()))
            .or_default()
            .push(ack);
    }
    for (key, writes) in by_key {
        let last = writes.iter().max_by_key(|a| a.log_position).unwrap();
        let written = &last.request.records[0];
        let stored = get_record_at(client, key_of(written), min_log_position).await;
        assert_eq!(
            (stored.revision, &stored.value),
            (last.revision, &written.value),
            "{key:?}: the last acknowledged write is {}",
            last.request.request_id
        );
        if let Some(higher) = writes.iter().find(|a| a.revision > stored.revision) {
            panic!(
                "{key:?} is at revision {}, but {higher:?} was acknowledged",
                stored.revision
            );
        }
    }
}

/// Reads the stream and checks that each acknowledged write is a message
/// at its position with a `Nats-Msg-Id` (the id a retry is recognized by)
/// that no other message carries: however often a write was retried, it
/// reached the log once.
async fn assert_each_write_logged_once(nats: &NatsCluster, acks: &[Ack], last: u64) {
    let stream = nats
        .jetstream()
        .await
        .get_stream(STREAM)
        .await
        .expect("the stream");
    let mut message_ids = BTreeMap::new();
    let mut with_id = BTreeSet::new();
    for sequence in 1..=last {
        let message = stream
            .get_raw_message(sequence)
            .await
            .unwrap_or_else(|e| panic!("message {sequence} of the stream: {e}"));
        if let Some(id) = message.headers.get(async_nats::header::NATS_MESSAGE_ID) {
            if let Some(earlier) = message_ids.insert(id.to_string(), sequence) {
                panic!("Nats-Msg-Id {id} is in the log twice: at {earlier} and at {sequence}");
            }
            with_id.insert(sequence);
        }
    }
    let mut acknowledged_at = BTreeMap::new();
    for ack in acks {
        assert!(
            with_id.contains(&ack.log_position),
            "{} was acknowledged at {}, which holds no message with a Nats-Msg-Id",
            ack.request.request_id,
            ack.log_position
        );
        if let Some(other) = acknowledged_at.insert(ack.log_position, &ack.request.request_id) {
            panic!(
                "{other} and {} were acknowledged at the same position",
                ack.request.request_id
            );
        }
    }
}

/// Each acknowledged write's first event is its record's, at the revision
/// the write was answered with: every node numbers events as the
/// receiving one did.
fn assert_events_name_their_writes(events: &[pb::Event], acks: &[Ack]) {
    let record_events = events
        .iter()
        .filter(|e| matches!(e.kind, Some(pb::event::Kind::RecordStored(_))))
        .count();
    assert_eq!(
        record_events,
        acks.len(),
        "one record event per acknowledged write"
    );
    for ack in acks {
        let event = &events[ack.first_sequence as usize - 1];
        let Some(pb::event::Kind::RecordStored(stored)) = &event.kind else {
            panic!("{} produced {event:?} first", ack.request.request_id);
        };
        assert_eq!(
            (stored.key.as_ref(), stored.revision),
            (Some(&key_of(&ack.request.records[0])), ack.revision),
            "{}",
            ack.request.request_id
        );
    }
}

/// Every event the node holds once it has applied the log up to
/// `min_log_position`, a page of 1000 at a time.
async fn all_events(client: &mut MilestoneServiceClient<Channel>, min_log_position: u64) -> Vec<pb::Event> {
    let mut events = Vec::new();
    let mut from_sequence = 1;
    loop {
        let request = pb::ListEventsRequest {
            from_sequence,
            limit: 1000,
            min_log_position,
            ..Default::default()
        };
        let page = client
            .list_events(timed(request))
            .await
            .unwrap_or_else(|s| panic!("ListEvents from {from_sequence}: {s:?}"))
            .into_inner();
        events.extend(page.events);
        if page.next_sequence > page.head_sequence {
            return events;
        }
        from_sequence = page.next_sequence;
    }
}

fn assert_gap_free(events: &[pb::Event]) {
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.sequence, i as u64 + 1, "events are not numbered 1, 2, 3…");
    }
}

/// Names the first difference instead of printing both logs.
fn assert_same_events(expected: &[pb::Event], actual: &[pb::Event], whose: &str) {
    if let Some(i) = (0..expected.len().min(actual.len())).find(|&i| expected[i] != actual[i]) {
        panic!(
            "{whose} differs at event {}: {:?} instead of {:?}",
            i + 1,
            actual[i],
            expected[i]
        );
    }
    assert_eq!(
        actual.len(),
        expected.len(),
        "{whose} has another number of events"
    );
}

/// The events as any store applying the same commands has them: all but
/// `time`, which is when the receiving node accepted the write.
fn without_time(events: &[pb::Event]) -> Vec<pb::Event> {
    events
        .iter()
        .map(|e| pb::Event {
            time: None,
            ..e.clone()
        })
        .collect()
}

/// Each threshold crossing as (watch, threshold, period, direction).
fn threshold_crossings(events: &[pb::Event]) -> Vec<(String, i64, String, i32)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(pb::event::Kind::ThresholdCrossed(crossed)) => Some((
                crossed.watch_id.clone(),
                crossed.threshold.as_ref().map_or(0, |t| t.units),
                crossed.period.clone(),
                crossed.direction,
            )),
            _ => None,
        })
        .collect()
}

async fn subscribe(nodes: &Nodes, node: usize, from_sequence: u64) -> Streaming<pb::SubscribeResponse> {
    let request = pb::SubscribeRequest {
        from_sequence,
        ..Default::default()
    };
    nodes
        .milestones(node)
        .subscribe(request)
        .await
        .unwrap_or_else(|s| panic!("Subscribe on node {node} from {from_sequence}: {s:?}"))
        .into_inner()
}

async fn next_event(subscription: &mut Streaming<pb::SubscribeResponse>) -> pb::Event {
    loop {
        let message = tokio::time::timeout(CALL_TIMEOUT, subscription.message())
            .await
            .unwrap_or_else(|_| panic!("no event within {CALL_TIMEOUT:?}"))
            .expect("the subscription goes on")
            .expect("the subscription is open");
        if let Some(Message::Event(event)) = message.message {
            return event;
        }
    }
}

async fn aggregate_by_year(
    client: &mut TradeServiceClient<Channel>,
    min_log_position: u64,
) -> pb::AggregateResponse {
    let request = pb::AggregateRequest {
        selector: Some(pb::RecordSelector {
            reporters: vec!["CHN".into()],
            partners: vec!["CENTRAL_ASIA".into()],
            ..Default::default()
        }),
        group_by: vec![pb::Dimension::Period.into()],
        granularity: pb::Granularity::Year.into(),
        min_log_position,
        ..Default::default()
    };
    client
        .aggregate(timed(request))
        .await
        .expect("Aggregate")
        .into_inner()
}

async fn stream_last_sequence(nats: &NatsCluster) -> u64 {
    let stream = nats
        .jetstream()
        .await
        .get_stream(STREAM)
        .await
        .expect("the stream");
    stream.cached_info().state.last_sequence
}

/// Waits until the snapshot bucket holds an object. Those named
/// `snapshot-<position>` must be of a position the log has reached.
async fn wait_for_snapshot(nats: &NatsCluster, last: u64) {
    let js = nats.jetstream().await;
    let deadline = Instant::now() + SNAPSHOT_TIMEOUT;
    loop {
        let mut names = Vec::new();
        if let Ok(bucket) = js.get_object_store(SNAPSHOT_BUCKET).await {
            if let Ok(mut list) = bucket.list().await {
                while let Some(Ok(object)) = list.next().await {
                    names.push(object.name);
                }
            }
        }
        if !names.is_empty() {
            for name in &names {
                if let Some(position) = name.strip_prefix("snapshot-").and_then(|p| p.parse::<u64>().ok()) {
                    assert!(position <= last, "{name} is past the log's end at {last}");
                }
            }
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot in {SNAPSHOT_BUCKET} {SNAPSHOT_TIMEOUT:?} after {last} commands"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Calls GetRecord over plain HTTP/2 with a `grpc-timeout` header: tonic's
/// client would end the call itself at that deadline (with CANCELLED), this
/// leaves the answer to the server. Returns its grpc-status and how long it
/// took.
async fn get_record_raw(
    addr: &str,
    request: &pb::GetRecordRequest,
    grpc_timeout: &str,
) -> (String, Duration) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connects");
    let (send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2");
    tokio::spawn(connection);
    let call = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/tradewatch.v1.TradeService/GetRecord"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", grpc_timeout)
        .body(())
        .expect("request");
    let started = Instant::now();
    let (response, mut body) = send
        .ready()
        .await
        .expect("ready")
        .send_request(call, false)
        .expect("sends");
    let message = prost::Message::encode_to_vec(request);
    let mut frame = vec![0];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    body.send_data(frame.into(), true).expect("sends the message");
    let response = response.await.expect("an answer");
    let status = match response.headers().get("grpc-status") {
        Some(status) => status.to_str().expect("ASCII").to_owned(),
        None => {
            let mut received = response.into_body();
            while let Some(data) = received.data().await {
                data.expect("answer data");
            }
            let trailers = received.trailers().await.expect("trailers").expect("trailers");
            trailers["grpc-status"].to_str().expect("ASCII").to_owned()
        }
    };
    (status, started.elapsed())
}
