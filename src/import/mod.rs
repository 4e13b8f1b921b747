//! CSV import in the native layout:
//! `reporter,partner,flow,period,commodity,currency,value,source,released_at`
//! (`flow` as `export|import|re_export|re_import|turnover`, `value` a decimal
//! string). Every row is parsed before anything is stored; a file with a bad
//! row stores nothing unless bad rows are skipped.

use std::collections::HashMap;
use std::io::Read;

use crate::domain::{FieldError, Flow, RawKey, RawRecord, RecordKey, TradeRecord, WriteOutcome};
use crate::error::{Error, Result};
use crate::store::Store;

/// Records stored per atomic batch.
const BATCH: usize = 1000;

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
}

/// What an import did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ImportSummary {
    pub created: u64,
    pub revised: u64,
    pub unchanged: u64,
    pub skipped: u64,
}

const COLUMNS: [&str; 9] = [
    "reporter",
    "partner",
    "flow",
    "period",
    "commodity",
    "currency",
    "value",
    "source",
    "released_at",
];
const REQUIRED: usize = 7;

/// Parses a native CSV file; header names are matched case-insensitively.
pub fn parse_native(input: impl Read) -> Result<Parsed> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(input);
    let headers = reader
        .headers()
        .map_err(|e| Error::invalid("file", format!("cannot read the header: {e}")))?;
    let index: HashMap<String, usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| (h.to_ascii_lowercase(), i))
        .collect();
    let missing: Vec<&str> = COLUMNS[..REQUIRED]
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
    let column = |name: &str| index.get(name).copied();
    let columns: Vec<Option<usize>> = COLUMNS.iter().map(|c| column(c)).collect();

    let mut parsed = Parsed::default();
    let mut seen: HashMap<RecordKey, u64> = HashMap::new();
    for row in reader.records() {
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                parsed.bad_rows.push(RowError {
                    line,
                    reason: format!("unreadable row: {e}"),
                });
                continue;
            }
        };
        let line = row.position().map_or(0, |p| p.line());
        let get = |i: usize| columns[i].and_then(|c| row.get(c)).unwrap_or("");
        match parse_row(&get) {
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

fn parse_row<'a>(get: &dyn Fn(usize) -> &'a str) -> std::result::Result<TradeRecord, Vec<FieldError>> {
    let mut errors = Vec::new();
    let flow = match Flow::parse_name(&get(2).to_ascii_lowercase()) {
        Ok(f) => i32::from(f.code()),
        Err(e) => {
            errors.push(FieldError {
                field: "flow".into(),
                reason: e,
            });
            0
        }
    };
    let (units, nanos) = match parse_decimal(get(6)) {
        Ok(v) => v,
        Err(reason) => {
            errors.push(FieldError {
                field: "value".into(),
                reason: crate::domain::Invalid(reason),
            });
            (0, 0)
        }
    };
    let released_at = match get(8) {
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
            reporter: get(0),
            partner: get(1),
            flow,
            period: get(3),
            commodity: get(4),
            currency: get(5),
        },
        units,
        nanos,
        net_weight_kg: None,
        source: get(7),
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
    let file =
        std::fs::File::open(path).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    let parsed = parse_native(std::io::BufReader::new(file))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
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
    let skipped = parsed.bad_rows.len() as u64;
    let summary = store_records(store, parsed.records).await?;
    Ok(ImportSummary { skipped, ..summary })
}

/// Stores parsed records in atomic batches of [`BATCH`].
pub async fn store_records(store: &Store, records: Vec<TradeRecord>) -> Result<ImportSummary> {
    let mut summary = ImportSummary::default();
    let mut records = records.into_iter().peekable();
    while records.peek().is_some() {
        let batch: Vec<TradeRecord> = records.by_ref().take(BATCH).collect();
        for (_, outcome, _) in store.put_records(batch).await?.results {
            match outcome {
                WriteOutcome::Created => summary.created += 1,
                WriteOutcome::Revised => summary.revised += 1,
                WriteOutcome::Unchanged => summary.unchanged += 1,
            }
        }
    }
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
        let parsed = parse_native(file.as_bytes()).unwrap();
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
        assert!(parse_native("reporter,partner\nCHN,KAZ\n".as_bytes()).is_err());
    }
}
