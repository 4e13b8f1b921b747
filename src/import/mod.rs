//! CSV import, in the native layout or a UN Comtrade download. Native:
//! `reporter,partner,flow,period,commodity,currency,value,source,released_at`
//! (`flow` as `export|import|re_export|re_import|turnover`, `value` a decimal
//! string). Every row is parsed before anything is stored; a file with a bad
//! row stores nothing unless bad rows are skipped.

use crate::domain::{TradeRecord, WriteOutcome};
use crate::error::Result;
use crate::store::Store;

mod parse;
mod progress;

pub use parse::{Parsed, RowError, parse_decimal, parse_file};

/// Records per atomic batch stored, and per `IngestRecords` message sent.
/// The store reads ahead for the next batch while it applies one, and sled
/// lets no read through while a batch is applied, so short applies let the
/// two take turns finely; records in send order (`parse::SendOrder`) still
/// share most of their rollup updates within a batch. Of 1,000, 2,000,
/// 4,000 and 10,000, 2,000 measured fastest into a server, and 1,000 and
/// 2,000 alike (within the noise) into a data dir, the larger ones slower
/// (see BENCHMARKS.md).
const BATCH: usize = 2_000;

/// What an import did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ImportSummary {
    pub created: u64,
    pub revised: u64,
    pub unchanged: u64,
    /// Bad rows left out (with `--skip-bad-rows`).
    pub skipped: u64,
    /// UN Comtrade breakdown rows left out.
    pub breakdown_rows: u64,
}

/// Imports a native CSV file into `store`. With a bad row, nothing is stored
/// and the error lists the bad rows, unless `skip_bad_rows`: then the other
/// rows are stored and the bad ones counted as skipped (and logged).
pub async fn import_file(
    store: &Store,
    path: &std::path::Path,
    skip_bad_rows: bool,
) -> anyhow::Result<ImportSummary> {
    let parsed = read_checked(path, skip_bad_rows)?;
    let skipped = parsed.bad_rows.len() as u64;
    let breakdown_rows = parsed.breakdown_rows;
    let summary = store_records(store, parsed.records).await?;
    Ok(ImportSummary {
        skipped,
        breakdown_rows,
        ..summary
    })
}

/// Parses a file and reports its bad rows: an error listing them unless
/// `skip_bad_rows` (then they are logged and counted).
fn read_checked(path: &std::path::Path, skip_bad_rows: bool) -> anyhow::Result<Parsed> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let bar = progress::checking(bytes.len() as u64);
    let parsed = parse::parse_bytes(&bytes, parse::threads(), parse::MIN_SHARE, &bar)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    bar.finish_and_clear();
    if !parsed.bad_rows.is_empty() {
        let listed: Vec<String> = parsed
            .bad_rows
            .iter()
            .take(20)
            .map(|r| format!("  line {}: {}", r.line, r.reason))
            .collect();
        let more = parsed.bad_rows.len().saturating_sub(20);
        let report = format!(
            "{}: {} bad row(s)\n{}{}",
            path.display(),
            parsed.bad_rows.len(),
            listed.join("\n"),
            if more > 0 {
                format!("\n  … and {more} more")
            } else {
                String::new()
            }
        );
        if !skip_bad_rows {
            anyhow::bail!("{report}\nnothing was stored (pass --skip-bad-rows to store the other rows)");
        }
        tracing::warn!("{report}\nskipping them");
    }
    Ok(parsed)
}

/// A running server to import into, and how to reach it.
#[derive(Debug, Clone, Default)]
pub struct Remote {
    /// `HOST:PORT`, or a URL (`http://…`, `https://…`).
    pub addr: String,
    /// Sent as `authorization: Bearer <token>`.
    pub auth_token: Option<String>,
    /// PEM file of the CA that signed the server's certificate: connects
    /// with TLS.
    pub tls_ca: Option<std::path::PathBuf>,
}

impl Remote {
    pub fn new(addr: impl Into<String>) -> Self {
        Remote {
            addr: addr.into(),
            ..Remote::default()
        }
    }

    /// A client of the server's TradeService, with TLS and the token as
    /// configured.
    async fn connect(&self) -> anyhow::Result<Client> {
        use tonic::transport::{Certificate, Channel, ClientTlsConfig};
        let scheme = if self.tls_ca.is_some() { "https" } else { "http" };
        let url = if self.addr.contains("://") {
            self.addr.clone()
        } else {
            format!("{scheme}://{}", self.addr)
        };
        let mut endpoint = Channel::from_shared(url.clone())
            .map_err(|e| anyhow::anyhow!("bad server address {url}: {e}"))?;
        if let Some(ca) = &self.tls_ca {
            let pem = std::fs::read_to_string(ca)
                .map_err(|e| anyhow::anyhow!("cannot read the CA certificate {}: {e}", ca.display()))?;
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .map_err(|e| anyhow::anyhow!("TLS setup for {url}: {e}"))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {url}: {e:#}"))?;
        let authorization = self
            .auth_token
            .as_ref()
            .map(|t| format!("Bearer {t}").parse())
            .transpose()
            .map_err(|_| anyhow::anyhow!("the auth token is not a valid header value"))?;
        Ok(
            crate::pb::trade_service_client::TradeServiceClient::with_interceptor(
                channel,
                Authorize(authorization),
            ),
        )
    }
}

/// A client of a server's TradeService, as [`Remote`] configures it.
type Client = crate::pb::trade_service_client::TradeServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Authorize>,
>;

/// Adds the `authorization` header, if any, to every call.
#[derive(Clone)]
pub struct Authorize(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Authorize {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Imports a file into a running server with one `IngestRecords` stream of
/// [`BATCH`]-record messages (fewer if the server's limit is lower),
/// in send order (`parse::SendOrder`); bad rows are dealt with here,
/// before anything is sent.
pub async fn import_to_server(
    remote: &Remote,
    path: &std::path::Path,
    skip_bad_rows: bool,
) -> anyhow::Result<ImportSummary> {
    let parsed = read_checked(path, skip_bad_rows)?;
    let skipped = parsed.bad_rows.len() as u64;
    let breakdown_rows = parsed.breakdown_rows;
    let mut client = remote.connect().await?;
    let mut bar = progress::rows(parsed.records.len() as u64, "sending");
    let records = std::sync::Arc::new(parsed.records);
    let mut batch = BATCH;
    let summary = loop {
        match send(&mut client, &records, batch, &bar).await {
            Ok(summary) => break summary,
            // A server started with a lower --max-batch-records refuses the
            // first message, before anything is stored: send them all again,
            // as large as it takes.
            Err(status) => match server_batch_limit(&status) {
                Some(max) if max > 0 && max < batch => {
                    tracing::info!(
                        "the server takes at most {max} records per message; sending messages of {max}"
                    );
                    batch = max;
                    // A new bar: the refused stream may still count on the old.
                    bar.finish_and_clear();
                    bar = progress::rows(records.len() as u64, "sending");
                }
                _ => anyhow::bail!("{}: {}", status.code(), status.message()),
            },
        }
    };
    bar.finish_and_clear();
    if summary.rejected > 0 {
        anyhow::bail!(
            "the server rejected {} record(s): {}",
            summary.rejected,
            summary
                .rejections
                .iter()
                .map(|r| r.reason.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(ImportSummary {
        created: summary.created,
        revised: summary.revised,
        unchanged: summary.unchanged,
        skipped,
        breakdown_rows,
    })
}

/// Sends `records` as one `IngestRecords` stream of `batch`-record
/// messages. Each is built as the stream takes it, so encoding overlaps with
/// sending, and counted on `bar` then (the server keeps only a few
/// unacknowledged).
async fn send(
    client: &mut Client,
    records: &std::sync::Arc<Vec<TradeRecord>>,
    batch: usize,
    bar: &indicatif::ProgressBar,
) -> std::result::Result<crate::pb::IngestRecordsResponse, tonic::Status> {
    let (records, sent) = (records.clone(), bar.clone());
    let messages = tokio_stream::iter((0..records.len().div_ceil(batch)).map(move |i| {
        let chunk = &records[i * batch..((i + 1) * batch).min(records.len())];
        sent.inc(chunk.len() as u64);
        crate::pb::IngestRecordsRequest {
            records: chunk.iter().map(crate::pb::TradeRecord::from).collect(),
            request_id: String::new(),
        }
    }));
    Ok(client.ingest_records(messages).await?.into_inner())
}

/// The server's limit of records per batch, when `status` refuses a batch
/// as larger than that.
fn server_batch_limit(status: &tonic::Status) -> Option<usize> {
    use tonic_types::StatusExt;
    let info = status.get_details_error_info()?;
    if status.code() != tonic::Code::ResourceExhausted || info.reason != crate::error::BATCH_TOO_LARGE {
        return None;
    }
    info.metadata.get(crate::error::MAX_BATCH_RECORDS)?.parse().ok()
}

/// Stores records in atomic batches of [`BATCH`], in the order given, a
/// few in flight so that the store is never idle waiting for the next one.
pub async fn store_records(store: &Store, records: Vec<TradeRecord>) -> Result<ImportSummary> {
    const IN_FLIGHT: usize = 4;
    let bar = progress::rows(records.len() as u64, "storing");
    let mut summary = ImportSummary::default();
    let mut queued = std::collections::VecDeque::new();
    let mut records = records.into_iter().peekable();
    while records.peek().is_some() || !queued.is_empty() {
        if records.peek().is_some() && queued.len() < IN_FLIGHT {
            let batch: Vec<TradeRecord> = records.by_ref().take(BATCH).collect();
            queued.push_back(store.queue_records(batch, None).await?);
            continue;
        }
        let Some(stored) = queued.pop_front() else { break };
        let outcome = stored.await?;
        bar.inc(outcome.results.len() as u64);
        for (_, outcome, _) in &outcome.results {
            match outcome {
                WriteOutcome::Created => summary.created += 1,
                WriteOutcome::Revised => summary.revised += 1,
                WriteOutcome::Unchanged => summary.unchanged += 1,
            }
        }
    }
    bar.finish_and_clear();
    Ok(summary)
}
