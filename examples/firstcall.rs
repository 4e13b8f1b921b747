// scratch: time the first calls after a restart
use std::time::Instant;
use tonic::transport::Channel;
use tradewatch::pb::{self, trade_service_client::TradeServiceClient};
fn minflt(pid: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = s.rsplit_once(')').unwrap().1.split_whitespace().collect();
    f[7].parse().unwrap()
}
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1).unwrap();
    let pid = std::env::args().nth(2).unwrap();
    let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for _ in 0..2 {
        h.check(tonic_health::pb::HealthCheckRequest::default()).await?;
    }
    let mut c = TradeServiceClient::new(channel.clone());
    let sel = pb::RecordSelector {
        reporters: vec!["CHN".into()],
        partners: vec!["CENTRAL_ASIA".into()],
        ..Default::default()
    };
    let a = pb::AggregateRequest {
        selector: Some(sel),
        group_by: vec![pb::Dimension::Period.into()],
        granularity: pb::Granularity::Year.into(),
        ..Default::default()
    };
    for i in 0..3 {
        let f0 = minflt(&pid);
        let t = Instant::now();
        c.aggregate(a.clone()).await?;
        let e = t.elapsed();
        println!("(a) #{i} {:?} faults {}", e, minflt(&pid) - f0);
    }
    Ok(())
}
