//! What the latency benches share: the synthetic record they write, a live
//! subscriber, and percentiles printed in milliseconds.
#![allow(dead_code)]

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tradewatch::pb::{self, milestone_service_client::MilestoneServiceClient, subscribe_response::Message};

/// A live subscriber (from now on) that calls `on_event` with each event's
/// sequence until it has seen `events`; the receiver fires once it is
/// caught up.
pub fn spawn_subscriber(
    mut client: MilestoneServiceClient<Channel>,
    events: usize,
    mut on_event: impl FnMut(u64) + Send + 'static,
) -> (oneshot::Receiver<()>, JoinHandle<()>) {
    let (ready_tx, ready_rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut stream = client
            .subscribe(pb::SubscribeRequest::default())
            .await
            .expect("subscribed")
            .into_inner();
        let mut ready_tx = Some(ready_tx);
        let mut seen = 0;
        while let Some(Ok(message)) = stream.next().await {
            match message.message {
                Some(Message::CaughtUp(_)) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Some(Message::Event(e)) => {
                    on_event(e.sequence);
                    seen += 1;
                    if seen == events {
                        return;
                    }
                }
                _ => {}
            }
        }
    });
    (ready_rx, task)
}

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
