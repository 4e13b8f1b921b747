//! Kill the real binary with SIGKILL while clients write, restart it on the
//! same data dir, and check that every acknowledged batch is there in full
//! and no batch is there in part.
#![allow(clippy::disallowed_methods)] // jitter from the clock; no write time

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::{Binary, put, record};
use tradewatch::pb::{self, trade_service_client::TradeServiceClient};

const PARTNERS: [&str; 20] = [
    "KAZ", "KGZ", "TJK", "TKM", "UZB", "RUS", "DEU", "FRA", "USA", "IND", "BRA", "JPN", "KOR", "VNM", "THA",
    "IDN", "TUR", "IRN", "PAK", "MNG",
];
const WRITERS: u64 = 4;
const ROUNDS: u64 = 3;

/// Batch `b` is 20 records with distinct keys, each worth `b + 1` units.
fn batch(b: u64) -> Vec<pb::TradeRecord> {
    PARTNERS
        .iter()
        .map(|partner| {
            let mut r = record(
                "CHN",
                partner,
                &(1900 + b % 200).to_string(),
                b as i64 + 1,
                "crash test",
            );
            r.commodity = format!("{:06}", b / 200);
            r
        })
        .collect()
}

fn batch_of(r: &pb::TradeRecord) -> u64 {
    let year: u64 = r.period.parse().unwrap();
    let hs6: u64 = r
        .commodity
        .parse()
        .unwrap_or_else(|_| panic!("unexpected record {r:?}"));
    hs6 * 200 + (year - 1900)
}

async fn all_records(client: &mut TradeServiceClient<tonic::transport::Channel>) -> Vec<pb::TradeRecord> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_records(pb::ListRecordsRequest {
                selector: Some(pb::RecordSelector {
                    reporters: vec!["CHN".into()],
                    ..Default::default()
                }),
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.records);
        if page.next_page_token.is_empty() {
            return out;
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_loses_no_acknowledged_batch_and_tears_none() {
    let dir = tempfile::tempdir().unwrap();
    let next_batch = Arc::new(AtomicU64::new(0));
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));

    for round in 0..ROUNDS {
        let server = Binary::start(dir.path(), &[]);
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (next_batch, acknowledged) = (next_batch.clone(), acknowledged.clone());
                let addr = server.addr.clone();
                tokio::spawn(async move {
                    let Ok(mut client) = TradeServiceClient::connect(format!("http://{addr}")).await else {
                        return;
                    };
                    loop {
                        let b = next_batch.fetch_add(1, Ordering::SeqCst);
                        match client.put_records(put(batch(b))).await {
                            Ok(_) => {
                                acknowledged.lock().unwrap().insert(b);
                            }
                            Err(_) => return, // the server is gone
                        }
                    }
                })
            })
            .collect();

        // Kill at a different moment each round.
        let jitter = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_millis()
            % 400;
        tokio::time::sleep(Duration::from_millis(300 + jitter as u64 + round * 100)).await;
        server.kill();
        for w in writers {
            w.await.unwrap();
        }

        let server = Binary::start(dir.path(), &[]);
        let mut client = server.client().await;
        let records = all_records(&mut client).await;
        let mut per_batch: BTreeMap<u64, Vec<&pb::TradeRecord>> = BTreeMap::new();
        for r in &records {
            per_batch.entry(batch_of(r)).or_default().push(r);
        }
        let acknowledged = acknowledged.lock().unwrap().clone();
        eprintln!(
            "round {round}: {} batches acknowledged, {} stored, {} attempted",
            acknowledged.len(),
            per_batch.len(),
            next_batch.load(Ordering::SeqCst)
        );
        assert!(
            acknowledged.len() as u64 > round * 5,
            "writers made progress before the kill"
        );
        for b in &acknowledged {
            let found = per_batch.get(b).map_or(0, Vec::len);
            assert_eq!(
                found,
                PARTNERS.len(),
                "round {round}: acknowledged batch {b} has {found} of 20 records"
            );
        }
        for (b, found) in &per_batch {
            assert_eq!(found.len(), PARTNERS.len(), "round {round}: batch {b} is torn");
            assert!(
                found
                    .iter()
                    .all(|r| r.value.as_ref().unwrap().units == *b as i64 + 1)
            );
        }
        // Events were written atomically with their records: the next
        // sequence follows one event per stored record, plus one per earlier
        // round's probe (a revision of the same record each round).
        let probe = record("DEU", "FRA", "2000", round as i64 + 1, "probe");
        let probe = client.put_records(put(vec![probe])).await.unwrap();
        assert_eq!(
            probe.into_inner().first_sequence,
            records.len() as u64 + round + 1
        );
        server.kill();
    }
}
