//! CSV import, in the native layout or a UN Comtrade download. Native:
//! `reporter,partner,flow,period,commodity,currency,value,source,released_at`
//! (`flow` as `export|import|re_export|re_import|turnover`, `value` a decimal
//! string). Every row is parsed before anything is stored; a file with a bad
//! row stores nothing unless bad rows are skipped.

use std::io::Read;

use crate::domain::{FieldError, Flow, RawKey, RawRecord, RecordKey, TradeRecord, WriteOutcome};
use crate::error::{Error, Result};
use crate::store::{FastMap, Store};

mod progress;

/// Records per atomic batch (and per `IngestRecords` message). Large
/// batches let records of one commodity and period share their rollup
/// updates.
const BATCH: usize = 10_000;
/// Records per `IngestRecords` message of an import into a running server.
/// Smaller than [`BATCH`]: the server reads ahead for the next message while
/// it applies one, and sled lets no read through while a batch is applied,
/// so shorter applies let the two take turns more finely (2,000 measured
/// fastest of 1,000, 2,000, 4,000 and 10,000; see BENCHMARKS.md).
const SEND_BATCH: usize = 2_000;

/// A row that could not be imported, by its line in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub line: u64,
    pub reason: String,
}

/// The parsed rows of a file.
#[derive(Debug, Default)]
pub struct Parsed {
    pub records: Vec<TradeRecord>,
    pub bad_rows: Vec<RowError>,
    /// UN Comtrade rows that break another row down, left out.
    pub breakdown_rows: u64,
}

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

/// Columns a native file must have (`source`, `released_at` are optional).
const NATIVE: [&str; 7] = [
    "reporter",
    "partner",
    "flow",
    "period",
    "commodity",
    "currency",
    "value",
];
/// Columns read from a UN Comtrade download (47 columns in all).
const COMTRADE: [&str; 6] = [
    "reporteriso",
    "partneriso",
    "flowcode",
    "period",
    "cmdcode",
    "primaryvalue",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Native,
    Comtrade,
}

/// Parses a CSV file in the native layout or the UN Comtrade download
/// layout, told apart by the header; column names are matched
/// case-insensitively.
pub fn parse_file(input: impl Read) -> Result<Parsed> {
    parse_file_sized(input, 0)
}

/// [`parse_file`] of an input of about `bytes` bytes: room for its records
/// is made at once rather than grown (and copied) as they come.
fn parse_file_sized(input: impl Read, bytes: u64) -> Result<Parsed> {
    let breaks = std::rc::Rc::new(std::cell::RefCell::new(LineBreaks::default()));
    let line_of =
        |position: Option<&csv::Position>| position.map_or(0, |p| breaks.borrow_mut().line_at(p.byte()));
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(CountLines {
            inner: input,
            breaks: breaks.clone(),
        });
    let headers = reader
        .headers()
        .map_err(|e| Error::invalid("file", format!("cannot read the header: {e}")))?
        .clone();
    let index: FastMap<String, usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| (h.to_ascii_lowercase(), i))
        .collect();
    let layout = if index.contains_key("primaryvalue") && index.contains_key("reporteriso") {
        Layout::Comtrade
    } else {
        Layout::Native
    };
    let required: &[&str] = match layout {
        Layout::Native => &NATIVE,
        Layout::Comtrade => &COMTRADE,
    };
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|c| !index.contains_key(*c))
        .collect();
    if !missing.is_empty() {
        return Err(Error::invalid(
            "file",
            format!("the header lacks the column(s) {}", missing.join(", ")),
        ));
    }

    let mut parsed = Parsed::default();
    let mut seen: crate::store::FastMap<RecordKey, u64> = Default::default();
    // A native row takes at least about 32 bytes; beyond 4 M rows the
    // lists grow as they go.
    let rows = usize::try_from(bytes / 32).unwrap_or(0).min(1 << 22);
    parsed.records.reserve(rows);
    seen.reserve(rows);
    for row in reader.records() {
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                let line = line_of(e.position());
                let reason = match e.kind() {
                    csv::ErrorKind::Utf8 { err, .. } => {
                        let column = headers.get(err.field()).unwrap_or("a column beyond the header");
                        format!("{column}: unreadable row: not valid UTF-8")
                    }
                    _ => format!("unreadable row: {e}"),
                };
                parsed.bad_rows.push(RowError { line, reason });
                continue;
            }
        };
        let line = line_of(row.position());
        let get = Row {
            record: &row,
            index: &index,
        };
        let result = match layout {
            Layout::Native => parse_row(&native_fields(&get)),
            Layout::Comtrade => {
                if is_breakdown(&get) {
                    parsed.breakdown_rows += 1;
                    continue;
                }
                comtrade_fields(&get).and_then(|fields| parse_row(&fields))
            }
        };
        match result {
            Ok(record) => {
                if let Some(first) = seen.insert(record.key, line) {
                    parsed.bad_rows.push(RowError {
                        line,
                        reason: format!("the same record as line {first} ({})", record.key),
                    });
                } else {
                    parsed.records.push(record);
                }
            }
            Err(errors) => {
                let column = |field: &str| match field {
                    "value.currency_code" => "currency".to_owned(),
                    "value.units" | "value.nanos" => "value".to_owned(),
                    other => other.to_owned(),
                };
                let reason = errors
                    .iter()
                    .map(|e| format!("{}: {}", column(&e.field), e.reason))
                    .collect::<Vec<_>>()
                    .join("; ");
                parsed.bad_rows.push(RowError { line, reason });
            }
        }
    }
    Ok(parsed)
}

/// Line breaks (`\n`, `\r\n`, or a lone `\r`) seen in the input, to name
/// rows by their line. The csv crate counts only `\n`, after a `\r\n`
/// reports the line before (BurntSushi/rust-csv#395), and places a row
/// after blank lines at the first of them: a Windows file would have bad
/// rows named one line early, an old Mac Excel file (`\r`) every row as
/// line 1.
#[derive(Default)]
struct LineBreaks {
    /// Byte ranges of the breaks not yet before a row looked up.
    pending: std::collections::VecDeque<(u64, u64)>,
    /// Breaks before the last row looked up.
    passed: u64,
    /// Bytes read so far.
    offset: u64,
    after_cr: bool,
}

impl LineBreaks {
    /// The line of a row the csv reader places at byte `offset` (rows are
    /// asked in file order). Breaks at the row's start (blank lines, the
    /// `\n` of a `\r\n`) are before it.
    fn line_at(&mut self, mut offset: u64) -> u64 {
        while let Some(&(start, end)) = self.pending.front() {
            if start > offset {
                break;
            }
            offset = offset.max(end);
            self.pending.pop_front();
            self.passed += 1;
        }
        self.passed + 1
    }
}

/// The input, noting its line breaks as the csv reader reads it.
struct CountLines<R> {
    inner: R,
    breaks: std::rc::Rc<std::cell::RefCell<LineBreaks>>,
}

impl<R: Read> Read for CountLines<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut breaks = self.breaks.borrow_mut();
        for &b in &buf[..n] {
            let at = breaks.offset;
            match b {
                b'\n' if breaks.after_cr => {
                    if let Some(last) = breaks.pending.back_mut().filter(|last| last.1 == at) {
                        last.1 = at + 1;
                    }
                }
                b'\r' | b'\n' => breaks.pending.push_back((at, at + 1)),
                _ => {}
            }
            breaks.after_cr = b == b'\r';
            breaks.offset += 1;
        }
        Ok(n)
    }
}

/// A row's cells by (lower-case) column name; absent columns read as "".
struct Row<'a> {
    record: &'a csv::StringRecord,
    index: &'a FastMap<String, usize>,
}

impl<'a> Row<'a> {
    fn get(&self, name: &str) -> &'a str {
        self.index
            .get(name)
            .and_then(|&i| self.record.get(i))
            .unwrap_or("")
    }
}

/// One row's fields in the native vocabulary.
struct Fields<'a> {
    reporter: &'a str,
    partner: &'a str,
    flow: String,
    period: String,
    commodity: &'a str,
    currency: &'a str,
    value: &'a str,
    net_weight_kg: &'a str,
    source: &'a str,
    released_at: &'a str,
}

fn native_fields<'a>(row: &Row<'a>) -> Fields<'a> {
    let get = |name| row.get(name);
    Fields {
        reporter: get("reporter"),
        partner: get("partner"),
        flow: get("flow").to_ascii_lowercase(),
        period: get("period").to_owned(),
        commodity: get("commodity"),
        currency: get("currency"),
        value: get("value"),
        net_weight_kg: get("net_weight_kg"),
        source: get("source"),
        released_at: get("released_at"),
    }
}

/// A breakdown of another row (by second partner, customs procedure, mode
/// of transport or of supply): skipped, or it would be counted twice.
fn is_breakdown(row: &Row<'_>) -> bool {
    let other_than = |column: &str, total: &str| {
        let v = row.get(column);
        !v.is_empty() && v != total
    };
    other_than("partner2code", "0")
        || other_than("customscode", "C00")
        || other_than("motcode", "0")
        || other_than("moscode", "0")
}

/// A UN Comtrade row in the native vocabulary: `W00` is the world, flow
/// codes X/M/RX/RM, periods `2023` or `202303`, values in USD.
fn comtrade_fields<'a>(row: &Row<'a>) -> std::result::Result<Fields<'a>, Vec<FieldError>> {
    let get = |name| row.get(name);
    let flow = match get("flowcode") {
        "X" => "export",
        "M" => "import",
        "RX" => "re_export",
        "RM" => "re_import",
        other => {
            return Err(vec![FieldError {
                field: "flowCode".into(),
                reason: crate::domain::Invalid(format!(
                    "{other:?} is not a flow code: expected X, M, RX or RM"
                )),
            }]);
        }
    };
    let period = get("period");
    // `get`, not slicing: a six-byte period need not split at a character
    // boundary (`202é5`); then it is left whole, for Period to reject.
    let period = match (period.len(), period.get(..4), period.get(4..)) {
        (6, Some(year), Some(month)) => format!("{year}-{month}"),
        _ => period.to_owned(),
    };
    let partner = match get("partneriso") {
        "W00" => "WLD",
        other => other,
    };
    Ok(Fields {
        reporter: get("reporteriso"),
        partner,
        flow: flow.to_owned(),
        period,
        commodity: get("cmdcode"),
        currency: "USD",
        value: get("primaryvalue"),
        net_weight_kg: get("netwgt"),
        source: "UN Comtrade",
        released_at: "",
    })
}

fn parse_row(f: &Fields<'_>) -> std::result::Result<TradeRecord, Vec<FieldError>> {
    let mut errors = Vec::new();
    let flow = match Flow::parse_name(&f.flow) {
        Ok(flow) => i32::from(flow.code()),
        Err(e) => {
            errors.push(FieldError {
                field: "flow".into(),
                reason: e,
            });
            0
        }
    };
    let (units, nanos) = match parse_decimal(f.value) {
        Ok(v) => v,
        Err(reason) => {
            errors.push(FieldError {
                field: "value".into(),
                reason: crate::domain::Invalid(reason),
            });
            (0, 0)
        }
    };
    let net_weight_kg = match f.net_weight_kg {
        "" => None,
        text => match text.parse::<f64>() {
            Ok(w) => Some(w),
            Err(_) => {
                errors.push(FieldError {
                    field: "net_weight_kg".into(),
                    reason: crate::domain::Invalid(format!("{text:?} is not a number")),
                });
                None
            }
        },
    };
    let released_at = match f.released_at {
        "" => None,
        text => match text.parse::<prost_types::Timestamp>() {
            Ok(ts) => Some(ts),
            Err(_) => {
                errors.push(FieldError {
                    field: "released_at".into(),
                    reason: crate::domain::Invalid(format!("{text:?} is not an RFC 3339 timestamp")),
                });
                None
            }
        },
    };
    let raw = RawRecord {
        key: RawKey {
            reporter: f.reporter,
            partner: f.partner,
            flow,
            period: &f.period,
            commodity: f.commodity,
            currency: f.currency,
        },
        units,
        nanos,
        net_weight_kg,
        source: f.source,
        released_at,
    };
    match TradeRecord::parse(&raw) {
        // Flow and value errors are already reported in this file's terms.
        Err(more) => {
            errors.extend(more.into_iter().filter(|e| e.field != "flow" || flow != 0));
            Err(errors)
        }
        Ok(_) if !errors.is_empty() => Err(errors),
        Ok(record) => Ok(record),
    }
}

/// An exact decimal (`41000000000`, `0.5`) as google.type.Money units and
/// nanos; at most 9 decimals, not negative.
pub fn parse_decimal(text: &str) -> std::result::Result<(i64, i32), String> {
    let bad =
        || format!("{text:?} is not a decimal amount (digits, optionally a point and up to 9 decimals)");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(if text.starts_with('-') {
            format!("{text:?} is negative")
        } else {
            bad()
        });
    }
    if fraction.len() > 9 {
        return Err(format!("{text:?} has more than 9 decimals"));
    }
    let units: i64 = whole.parse().map_err(|_| format!("{text:?} is too large"))?;
    let nanos: i32 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<9}").parse().map_err(|_| bad())?
    };
    Ok((units, nanos))
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
    let file =
        std::fs::File::open(path).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    let bytes = file.metadata().map_or(0, |m| m.len());
    let bar = progress::checking(bytes);
    let parsed = parse_file_sized(bar.wrap_read(std::io::BufReader::new(file)), bytes)
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
    async fn connect(
        &self,
    ) -> anyhow::Result<
        crate::pb::trade_service_client::TradeServiceClient<
            tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Authorize>,
        >,
    > {
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
/// [`SEND_BATCH`]-record messages; bad rows are dealt with here, before
/// anything is sent. The records go in the order of the rollups they move
/// (reporter, currency, period, commodity, then partner and flow), whatever
/// order the file is in: each message then moves few rollup entries, and a
/// history arrives oldest period first, so its milestones come in the order
/// they happened.
pub async fn import_to_server(
    remote: &Remote,
    path: &std::path::Path,
    skip_bad_rows: bool,
) -> anyhow::Result<ImportSummary> {
    let parsed = read_checked(path, skip_bad_rows)?;
    let skipped = parsed.bad_rows.len() as u64;
    let breakdown_rows = parsed.breakdown_rows;
    let mut client = remote.connect().await?;
    let bar = progress::rows(parsed.records.len() as u64, "sending");
    let sent = bar.clone();
    let mut records = parsed.records;
    let order = |r: &TradeRecord| {
        let k = r.key;
        (k.reporter, k.currency, k.period, k.commodity, k.partner, k.flow)
    };
    if !records.is_sorted_by_key(order) {
        records.sort_unstable_by_key(order);
    }
    // Built as the stream takes each message, so encoding overlaps with
    // sending; counted then too (the server keeps only a few unacknowledged).
    let messages = tokio_stream::iter((0..records.len().div_ceil(SEND_BATCH)).map(move |i| {
        let chunk = &records[i * SEND_BATCH..((i + 1) * SEND_BATCH).min(records.len())];
        sent.inc(chunk.len() as u64);
        crate::pb::PutRecordsRequest {
            records: chunk.iter().map(crate::api::trade_record_to_pb).collect(),
        }
    }));
    let summary = client
        .ingest_records(messages)
        .await
        .map_err(|status| anyhow::anyhow!("{}: {}", status.code(), status.message()))?
        .into_inner();
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

/// Stores parsed records in atomic batches of [`BATCH`], a few in flight
/// so that the store is never idle waiting for the next one.
pub async fn store_records(store: &Store, records: Vec<TradeRecord>) -> Result<ImportSummary> {
    const IN_FLIGHT: usize = 4;
    let bar = progress::rows(records.len() as u64, "storing");
    let mut summary = ImportSummary::default();
    let mut queued = std::collections::VecDeque::new();
    let mut records = records.into_iter().peekable();
    while records.peek().is_some() || !queued.is_empty() {
        if records.peek().is_some() && queued.len() < IN_FLIGHT {
            let batch: Vec<TradeRecord> = records.by_ref().take(BATCH).collect();
            queued.push_back(store.queue_records(batch).await?);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact() {
        assert_eq!(parse_decimal("41000000000"), Ok((41_000_000_000, 0)));
        assert_eq!(parse_decimal("0.5"), Ok((0, 500_000_000)));
        assert_eq!(parse_decimal("1.000000001"), Ok((1, 1)));
        for bad in ["", "-1", "1.0000000001", "1e9", "1,5", ".5", "1."] {
            if bad == "1." {
                assert_eq!(parse_decimal(bad), Ok((1, 0)));
            } else {
                assert!(parse_decimal(bad).is_err(), "{bad}");
            }
        }
    }

    #[test]
    fn bad_rows_are_named_by_line() {
        let file = "reporter,partner,flow,period,commodity,currency,value,source,released_at\n\
                    CHN,KAZ,turnover,2025,TOTAL,USD,48600000000,GACC,\n\
                    CHN,KAZ,sideways,2025-13,TOTAL,USD,-5,GACC,\n\
                    CHN,KGZ,turnover,2025,TOTAL,USD,27200000000,GACC,2026-01-20T00:00:00Z\n\
                    CHN,KAZ,turnover,2025,TOTAL,USD,1,GACC,\n";
        let parsed = parse_file(file.as_bytes()).unwrap();
        assert_eq!(parsed.records.len(), 2);
        assert_eq!(parsed.bad_rows.len(), 2);
        assert_eq!(parsed.bad_rows[0].line, 3);
        assert!(
            parsed.bad_rows[0].reason.contains("flow"),
            "{}",
            parsed.bad_rows[0].reason
        );
        assert!(
            parsed.bad_rows[0].reason.contains("period"),
            "{}",
            parsed.bad_rows[0].reason
        );
        assert!(
            parsed.bad_rows[0].reason.contains("value"),
            "{}",
            parsed.bad_rows[0].reason
        );
        assert_eq!(parsed.bad_rows[1].line, 5);
        assert!(
            parsed.bad_rows[1].reason.contains("line 2"),
            "{}",
            parsed.bad_rows[1].reason
        );
        assert!(parsed.records[1].released_at().is_some());
    }

    #[test]
    fn a_header_without_required_columns_is_refused() {
        assert!(parse_file("reporter,partner\nCHN,KAZ\n".as_bytes()).is_err());
    }
}
