//! The seed question (a) answered in-process, without gRPC, on the stores
//! `benches/aggregate.rs` built — to tell the query's own cost from the
//! round trip's.
//!
//! ```sh
//! cargo bench --bench aggregate -- 1m 10m     # builds the stores, once
//! cargo bench --bench aggregate_inprocess
//! ```

use std::time::{Duration, Instant};

use tradewatch::domain::{CountryCode, GroupName, Party, Selector};
use tradewatch::query::ResolvedSelector;
use tradewatch::query::aggregate::{AggregateRequest, Dimension, RowOrder, aggregate};
use tradewatch::store::Store;

fn main() -> anyhow::Result<()> {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    let selector = Selector {
        reporters: vec![Party::Country(CountryCode::parse("CHN")?)],
        partners: vec![Party::Group(GroupName::parse("CENTRAL_ASIA")?)],
        ..Selector::default()
    };
    let request = AggregateRequest {
        group_by: [Dimension::Period].into(),
        granularity: None,
        order: RowOrder::Group,
        limit: 0,
    };
    for size in ["1m", "10m"] {
        let dir = root.join(size).join("store");
        if !dir.exists() {
            println!(
                "{size}: no store at {} (run the aggregate bench first)",
                dir.display()
            );
            continue;
        }
        let store = Store::open(&dir, tradewatch::Config::DEFAULT_CACHE_MB * 1024 * 1024, 0)?;
        let mut resolve = Vec::new();
        let mut total = Vec::new();
        for i in 0..21_000 {
            let start = Instant::now();
            let resolved = ResolvedSelector::resolve(&store, selector.clone(), "selector")?;
            let resolved_at = start.elapsed();
            std::hint::black_box(aggregate(&store, &resolved, &request)?);
            if i >= 1000 {
                resolve.push(resolved_at);
                total.push(start.elapsed());
            }
        }
        let p50 = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        println!(
            "{size}: (a) in-process p50 {:?} (resolving groups {:?}), 20,000 runs",
            p50(&mut total),
            p50(&mut resolve)
        );
        tokio::runtime::Runtime::new()?.block_on(store.close());
    }
    Ok(())
}
