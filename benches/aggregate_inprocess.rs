//! The four questions of `benches/aggregate.rs` answered in-process,
//! without gRPC, on the stores that bench built — to tell a question's own
//! cost from the round trip's — and each asked first right after the store
//! is opened (a restart: nothing of it in the process's memory yet).
//!
//! ```sh
//! cargo bench --bench aggregate -- 1m 10m     # builds the stores, once
//! cargo bench --bench aggregate_inprocess     # or: -- 10m d
//! ```
//!
//! Each question's first answer is the median over 5 openings
//! (`TRADEWATCH_BENCH_OPENS` sets how many).

use std::time::{Duration, Instant};

use tradewatch::domain::{CommodityLevel, CountryCode, Flow, GroupName, Party, Period, Selector};
use tradewatch::query::ResolvedSelector;
use tradewatch::query::aggregate::{AggregateRequest, Dimension, RowOrder, aggregate};
use tradewatch::store::Store;

fn questions() -> anyhow::Result<Vec<(&'static str, Selector, AggregateRequest)>> {
    let chn = Party::Country(CountryCode::parse("CHN")?);
    let by = |dimension, order, limit| AggregateRequest {
        group_by: [dimension].into(),
        granularity: None,
        order,
        limit,
    };
    Ok(vec![
        (
            "(a) CHN ↔ CENTRAL_ASIA per year",
            Selector {
                reporters: vec![chn.clone()],
                partners: vec![Party::Group(GroupName::parse("CENTRAL_ASIA")?)],
                ..Selector::default()
            },
            by(Dimension::Period, RowOrder::Group, 0),
        ),
        (
            "(b) CHN top 10 partners 2025",
            Selector {
                reporters: vec![chn.clone()],
                period_from: Some(Period::parse("2025")?),
                period_to: Some(Period::parse("2025")?),
                ..Selector::default()
            },
            by(Dimension::Partner, RowOrder::TotalDesc, 10),
        ),
        (
            "(c) world total per year",
            Selector::default(),
            by(Dimension::Period, RowOrder::Group, 0),
        ),
        (
            "(d) top 10 HS2, CHN → KAZ exports",
            Selector {
                reporters: vec![chn],
                partners: vec![Party::Country(CountryCode::parse("KAZ")?)],
                flows: [Flow::Export].into(),
                commodity_level: Some(CommodityLevel::Hs2),
                period_from: Some(Period::parse("2021")?),
                period_to: Some(Period::parse("2025")?),
                ..Selector::default()
            },
            by(Dimension::Commodity, RowOrder::TotalDesc, 10),
        ),
    ])
}

/// One answer to a question, timed.
fn ask(store: &Store, selector: &Selector, request: &AggregateRequest) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let resolved = ResolvedSelector::resolve(store, selector.clone(), "selector")?;
    std::hint::black_box(aggregate(store, &resolved, request)?);
    Ok(start.elapsed())
}

fn close(store: Store) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(store.close());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    let cache = tradewatch::Config::DEFAULT_CACHE_MB * 1024 * 1024;
    // Openings per question; the first answers' median is reported.
    let opens: usize = std::env::var("TRADEWATCH_BENCH_OPENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    for size in ["1m", "10m", "30m"] {
        if args.iter().any(|a| a.ends_with('m')) && !args.iter().any(|a| a == size) {
            continue;
        }
        let dir = root.join(size).join("store");
        if !dir.exists() {
            println!(
                "{size}: no store at {} (run the aggregate bench first)",
                dir.display()
            );
            continue;
        }
        println!("{size}: question | first after opening (median of {opens}) | warm p50 | ratio");
        let only: Vec<String> = args
            .iter()
            .filter(|a| a.len() == 1)
            .map(|a| format!("({a})"))
            .collect();
        for (name, selector, request) in questions()? {
            if !only.is_empty() && !only.iter().any(|q| name.starts_with(q.as_str())) {
                continue;
            }
            // Each question in a store of its own opening, so that its first
            // answer reads nothing another question left in memory; opened
            // `opens` times, for the median of its first answers.
            let mut firsts = Vec::new();
            let mut store = None;
            for _ in 0..opens {
                if let Some(store) = store.take() {
                    close(store)?;
                }
                let opened = Store::open(&dir, cache, 0)?;
                firsts.push(ask(&opened, &selector, &request)?);
                store = Some(opened);
            }
            let store = store.expect("opened at least once");
            firsts.sort();
            let first = firsts[firsts.len() / 2];
            let mut warm = Vec::new();
            let started = Instant::now();
            while warm.len() < 20_000 && (started.elapsed() < Duration::from_secs(3) || warm.len() < 100) {
                warm.push(ask(&store, &selector, &request)?);
            }
            warm.sort();
            let p50 = warm[warm.len() / 2];
            println!(
                "{size}: {name} | {first:?} | {p50:?} | {:.1}× ({} runs)",
                first.as_secs_f64() / p50.as_secs_f64(),
                warm.len()
            );
            close(store)?;
        }
    }
    Ok(())
}
