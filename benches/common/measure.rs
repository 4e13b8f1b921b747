//! What the latency benches share: the synthetic record they write, and
//! percentiles printed in milliseconds.

use std::time::Duration;

use tradewatch::pb;

/// The `i`-th synthetic record: CHN with one of ten partners, turnover,
/// spread over 200 years and commodity codes so that records stay
/// distinct, USD.
pub fn record(i: usize) -> pb::TradeRecord {
    const PARTNERS: [&str; 10] = [
        "KAZ", "KGZ", "TJK", "TKM", "UZB", "RUS", "DEU", "USA", "IND", "BRA",
    ];
    pb::TradeRecord {
        reporter: "CHN".into(),
        partner: PARTNERS[i % 10].into(),
        flow: pb::Flow::Turnover.into(),
        period: format!("{}", 1900 + (i / 10) % 200),
        commodity: format!("{:06}", i / 2000),
        value: Some(pb::Money {
            currency_code: "USD".into(),
            units: 1_000 + i as i64,
            nanos: 0,
        }),
        source: "bench".into(),
        ..Default::default()
    }
}

/// The `q` quantile of sorted durations; zero for none.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// Milliseconds, two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}
