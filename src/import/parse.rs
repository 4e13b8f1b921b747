//! Reading a CSV file into records, in the native layout or a UN Comtrade
//! download, told apart by the header; column names are matched
//! case-insensitively.
//!
//! A large file is read on every core. It is cut into shares just after
//! line breaks, and each share is parsed on a thread of its own as if it
//! were a file. A cut may fall inside a quoted cell, where a line break is
//! not the end of a row; so a share counts only if the share before it was
//! seen to finish a row exactly where it starts. A share that finds its cut
//! in the middle of a row reads on, past it, to the next cut it ends a row
//! at (or to the end of the file), and the shares it read over are dropped.
//! The result is the same as reading the file from start to end.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Read;
use std::rc::Rc;

use indicatif::ProgressBar;

use crate::collections::FastMap;
use crate::domain::{
    Commodity, CountryCode, CurrencyCode, FieldError, Flow, Period, RawKey, RawRecord, TradeRecord,
};
use crate::error::{Error, Result};

/// A row that could not be imported, by its line in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub line: u64,
    pub reason: String,
}

/// The parsed rows of a file.
#[derive(Debug, Default)]
pub struct Parsed {
    /// In the order they are sent and stored in (reporter, currency,
    /// period, commodity, partner, flow), whatever the file's; no two with
    /// the same key.
    pub records: Vec<TradeRecord>,
    /// In the order of their lines.
    pub bad_rows: Vec<RowError>,
    /// UN Comtrade rows that break another row down, left out.
    pub breakdown_rows: u64,
}

/// A share of a file smaller than this is not worth a thread of its own.
pub(super) const MIN_SHARE: usize = 4 << 20;
/// Threads to read a file on: one per core, up to this many.
const MAX_THREADS: usize = 8;

/// The order records are sent and stored in, whatever order the file is in:
/// that of the rollups they move (reporter, currency, period, commodity),
/// then partner and flow. Each batch then moves few rollup entries (a file
/// ordered by partner would move thousands shared with every other partner
/// per batch), and a reporter's history goes in oldest period first, so its
/// milestones come in the order they happened. A file whose records
/// strictly rise in this order has no duplicates.
pub(super) type SendOrder = (CountryCode, CurrencyCode, Period, Commodity, CountryCode, Flow);

pub(super) fn send_order(record: &TradeRecord) -> SendOrder {
    let k = record.key;
    (k.reporter, k.currency, k.period, k.commodity, k.partner, k.flow)
}

/// Parses a CSV file in the native layout or the UN Comtrade download
/// layout.
pub fn parse_file(mut input: impl Read) -> Result<Parsed> {
    let mut bytes = Vec::new();
    input
        .read_to_end(&mut bytes)
        .map_err(|e| Error::invalid("file", format!("cannot read it: {e}")))?;
    parse_bytes(&bytes, threads(), MIN_SHARE, &ProgressBar::hidden())
}

/// The number of threads to read a file on.
pub(super) fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS))
}

/// Parses a whole file held in memory on up to `threads` threads, in shares
/// of at least `min_share` bytes; `bar` counts the bytes read.
pub(super) fn parse_bytes(
    bytes: &[u8],
    threads: usize,
    min_share: usize,
    bar: &ProgressBar,
) -> Result<Parsed> {
    let cuts = cuts(bytes, threads, min_share);
    parse_cut(bytes, &cuts, bar)
}

/// [`parse_bytes`] with the file cut at `cuts` (ascending, each just after a
/// `\n`): a thread for each share.
fn parse_cut(bytes: &[u8], cuts: &[usize], bar: &ProgressBar) -> Result<Parsed> {
    let header = Header::read(bytes)?;
    let shares: Vec<Share> = std::thread::scope(|scope| {
        let later: Vec<_> = cuts
            .iter()
            .map(|&start| {
                let header = &header;
                scope.spawn(move || Share::parse(bytes, start, cuts, header, bar))
            })
            .collect();
        let first = Share::parse(bytes, 0, cuts, &header, bar);
        std::iter::once(first)
            .chain(later.into_iter().map(|thread| {
                thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            }))
            .collect()
    });
    let (mut parsed, lines, ordered) = join(shares, bytes.len());
    if !ordered {
        into_send_order(&mut parsed, &lines);
    }
    Ok(parsed)
}

/// Puts `parsed.records` (whose lines are `lines`) in [`send_order`]; of
/// records with the same key, the first in the file stays and the others
/// become bad rows naming it.
fn into_send_order(parsed: &mut Parsed, lines: &[u64]) {
    // Sorted as keys and positions, first in the file first among equal
    // keys; the records are then moved into place in the list they are in
    // (as `slice::sort_by_cached_key` does), not into a new one.
    let mut order: Vec<(SendOrder, usize)> = parsed
        .records
        .iter()
        .enumerate()
        .map(|(at, record)| (send_order(record), at))
        .collect();
    order.sort_unstable();
    let mut keep = Vec::with_capacity(order.len());
    let mut first = 0;
    for (n, &(key, at)) in order.iter().enumerate() {
        let repeated = n > 0 && order[n - 1].0 == key;
        keep.push(!repeated);
        if !repeated {
            first = at;
            continue;
        }
        parsed.bad_rows.push(RowError {
            line: lines[at],
            reason: format!(
                "the same record as line {} ({})",
                lines[first], parsed.records[at].key
            ),
        });
    }
    // `order[n].1` is where the record that goes to `n` was; a record
    // already moved to place `i` is followed on from there.
    for i in 0..order.len() {
        let mut from = order[i].1;
        while from < i {
            from = order[from].1;
        }
        order[i].1 = from;
        parsed.records.swap(i, from);
    }
    let mut kept = keep.into_iter();
    parsed.records.retain(|_| kept.next() == Some(true));
    parsed.bad_rows.sort_by_key(|r| r.line);
}

/// Where to cut `bytes` into about `threads` shares of at least
/// `min_share` bytes: just after the first `\n` at or past each even share.
fn cuts(bytes: &[u8], threads: usize, min_share: usize) -> Vec<usize> {
    let shares = threads.min(bytes.len() / min_share.max(1)).max(1);
    let mut cuts: Vec<usize> = (1..shares)
        .filter_map(|i| {
            let target = bytes.len() / shares * i;
            let newline = bytes[target..].iter().position(|&b| b == b'\n')?;
            Some(target + newline + 1)
        })
        .filter(|&cut| cut < bytes.len())
        .collect();
    cuts.dedup();
    cuts
}

/// Puts the shares that read the file from start to end together, in order,
/// numbering lines from the start of the file. Also the line of each record,
/// and whether the records strictly rise in [`send_order`].
fn join(shares: Vec<Share>, end: usize) -> (Parsed, Vec<u64>, bool) {
    let mut parsed = Parsed::default();
    let mut lines: Vec<u64> = Vec::new();
    let mut ordered = true;
    let mut next = 0;
    // Line breaks before the share at hand.
    let mut breaks = 0;
    for share in shares {
        let before = breaks;
        breaks += share.region_breaks;
        if share.start != next {
            // Read over by the share before.
            continue;
        }
        if let (Some(last), Some(first)) = (parsed.records.last(), share.records.first()) {
            ordered &= send_order(last) < send_order(first);
        }
        ordered &= share.ordered;
        if share.start == 0 {
            // The first share: its lists have room for the others'.
            parsed.records = share.records;
            lines = share.lines;
        } else {
            parsed.records.extend(share.records);
            lines.extend(share.lines.into_iter().map(|line| line + before));
        }
        parsed
            .bad_rows
            .extend(share.bad_rows.into_iter().map(|row| RowError {
                line: row.line + before,
                ..row
            }));
        parsed.breakdown_rows += share.breakdown_rows;
        next = share.end;
    }
    debug_assert_eq!(next, end, "the shares read the whole file");
    (parsed, lines, ordered)
}

/// The header: the layout and where each column read is.
struct Header {
    names: csv::StringRecord,
    layout: Layout,
    positions: Vec<Option<usize>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Native,
    Comtrade,
}

/// Declares the columns read ([`Col`]) and their lower-case names.
macro_rules! columns {
    ($($column:ident = $name:literal),* $(,)?) => {
        #[derive(Debug, Clone, Copy)]
        enum Col { $($column),* }
        const COLUMN_NAMES: &[&str] = &[$($name),*];
    };
}

columns! {
    Reporter = "reporter",
    Partner = "partner",
    FlowName = "flow",
    PeriodText = "period",
    CommodityCode = "commodity",
    Currency = "currency",
    Value = "value",
    NetWeightKg = "net_weight_kg",
    Source = "source",
    ReleasedAt = "released_at",
    ReporterIso = "reporteriso",
    PartnerIso = "partneriso",
    FlowCode = "flowcode",
    CmdCode = "cmdcode",
    PrimaryValue = "primaryvalue",
    NetWgt = "netwgt",
    Partner2Code = "partner2code",
    CustomsCode = "customscode",
    MotCode = "motcode",
    MosCode = "moscode",
}

/// Columns a native file must have (`source`, `released_at` are optional).
const NATIVE: [Col; 7] = [
    Col::Reporter,
    Col::Partner,
    Col::FlowName,
    Col::PeriodText,
    Col::CommodityCode,
    Col::Currency,
    Col::Value,
];
/// Columns read from a UN Comtrade download (47 columns in all).
const COMTRADE: [Col; 6] = [
    Col::ReporterIso,
    Col::PartnerIso,
    Col::FlowCode,
    Col::PeriodText,
    Col::CmdCode,
    Col::PrimaryValue,
];

impl Header {
    fn read(bytes: &[u8]) -> Result<Header> {
        let names = csv::ReaderBuilder::new()
            .flexible(true)
            .from_reader(bytes)
            .headers()
            .map_err(|e| Error::invalid("file", format!("cannot read the header: {e}")))?
            .clone();
        // The last of two columns of one name counts.
        let index: FastMap<String, usize> = names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.trim().to_ascii_lowercase(), i))
            .collect();
        let positions: Vec<Option<usize>> = COLUMN_NAMES
            .iter()
            .map(|name| index.get(*name).copied())
            .collect();
        let has = |column: Col| positions[column as usize].is_some();
        let layout = if has(Col::PrimaryValue) && has(Col::ReporterIso) {
            Layout::Comtrade
        } else {
            Layout::Native
        };
        let required: &[Col] = match layout {
            Layout::Native => &NATIVE,
            Layout::Comtrade => &COMTRADE,
        };
        let missing: Vec<&str> = required
            .iter()
            .filter(|&&column| !has(column))
            .map(|&column| COLUMN_NAMES[column as usize])
            .collect();
        if !missing.is_empty() {
            return Err(Error::invalid(
                "file",
                format!("the header lacks the column(s) {}", missing.join(", ")),
            ));
        }
        Ok(Header {
            names,
            layout,
            positions,
        })
    }
}

/// What one share of a file parsed to; lines are counted from its start.
struct Share {
    /// The byte it starts at: 0, or just after a line break.
    start: usize,
    /// The byte its reading stopped at, at the end of a row: the start of
    /// a later share, or the end of the file.
    end: usize,
    /// Line breaks from its start to the next share's.
    region_breaks: u64,
    records: Vec<TradeRecord>,
    /// The line of each record.
    lines: Vec<u64>,
    bad_rows: Vec<RowError>,
    breakdown_rows: u64,
    /// Whether its records strictly rise in [`send_order`].
    ordered: bool,
}

impl Share {
    /// Parses `bytes` from `start` until a row ends where a later share
    /// starts (one of `cuts`), or to the end.
    fn parse(bytes: &[u8], start: usize, cuts: &[usize], header: &Header, bar: &ProgressBar) -> Share {
        /// Rows between two updates of the progress bar.
        const REPORT_EVERY: usize = 4096;
        let later = cuts.partition_point(|&cut| cut <= start);
        let region_end = cuts.get(later).copied().unwrap_or(bytes.len());
        // A later share is read from the `\n` before its start, a blank
        // line to the reader: else the csv crate would take a byte-order
        // mark at the start of the share for the file's own and drop it,
        // where a reader from the start of the file keeps it in the cell.
        // That `\n` is not counted as a line of the share.
        let from = start.saturating_sub(1);
        let skew = u64::from(start > 0);
        let breaks = Rc::new(RefCell::new(LineBreaks::default()));
        let line_of = |position: Option<&csv::Position>| {
            position.map_or(0, |p| breaks.borrow_mut().line_at(p.byte()).saturating_sub(skew))
        };
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .has_headers(start == 0)
            .from_reader(CountLines {
                inner: &bytes[from..],
                breaks: breaks.clone(),
            });
        // A native row takes at least about 32 bytes; beyond 4 M rows the
        // lists grow as they go. The first share makes room for the whole
        // file's records: the other shares' are added to its lists.
        let bytes_ahead = if start == 0 {
            bytes.len()
        } else {
            region_end - start
        };
        let rows = (bytes_ahead / 32).min(1 << 22);
        let mut share = Share {
            start,
            end: bytes.len(),
            region_breaks: count_breaks(&bytes[start..region_end]),
            records: Vec::with_capacity(rows),
            lines: Vec::with_capacity(rows),
            bad_rows: Vec::new(),
            breakdown_rows: 0,
            ordered: true,
        };
        if start == 0 {
            // Read first, on its own: else the csv crate places a first row
            // that is not UTF-8 at the header's position.
            let _ = reader.headers();
        }
        let mut cuts = cuts[later..].iter().copied().peekable();
        let mut row = csv::StringRecord::new();
        // Progress is counted within the share's own region, which no
        // other share counts, whether or not it reads on past it.
        let mut reported = start;
        for n in 1usize.. {
            match reader.read_record(&mut row) {
                Ok(false) => break,
                Ok(true) => {
                    let line = line_of(row.position());
                    share.add(&row, line, header);
                }
                Err(e) => {
                    if let csv::ErrorKind::Io(_) = e.kind() {
                        // Not from a slice; never read past one.
                        break;
                    }
                    let line = line_of(e.position());
                    let reason = match e.kind() {
                        csv::ErrorKind::Utf8 { err, .. } => {
                            let column = header
                                .names
                                .get(err.field())
                                .unwrap_or("a column beyond the header");
                            format!("{}: unreadable row: not valid UTF-8", column.trim())
                        }
                        _ => format!("unreadable row: {e}"),
                    };
                    share.bad_rows.push(RowError { line, reason });
                }
            }
            let at = from.saturating_add(usize::try_from(reader.position().byte()).unwrap_or(usize::MAX));
            if n % REPORT_EVERY == 0 {
                let upto = at.min(region_end);
                bar.inc(upto.saturating_sub(reported) as u64);
                reported = reported.max(upto);
            }
            while cuts.next_if(|&cut| cut < at).is_some() {}
            // Blank lines after a row are skipped by a reader starting
            // after them just as by one reading on.
            if let Some(&cut) = cuts.peek()
                && bytes[at..cut].iter().all(|&b| b == b'\r' || b == b'\n')
            {
                share.end = cut;
                break;
            }
        }
        bar.inc(region_end.saturating_sub(reported) as u64);
        share
    }

    /// Adds a row read at `line`: a record, a bad row, or a breakdown row.
    fn add(&mut self, record: &csv::StringRecord, line: u64, header: &Header) {
        let row = Row {
            record,
            positions: &header.positions,
        };
        let result = match header.layout {
            Layout::Native => parse_row(&native_fields(&row)),
            Layout::Comtrade => {
                if is_breakdown(&row) {
                    self.breakdown_rows += 1;
                    return;
                }
                comtrade_fields(&row).and_then(|fields| parse_row(&fields))
            }
        };
        match result {
            Ok(record) => {
                if let Some(last) = self.records.last() {
                    self.ordered &= send_order(last) < send_order(&record);
                }
                self.records.push(record);
                self.lines.push(line);
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
                self.bad_rows.push(RowError { line, reason });
            }
        }
    }
}

/// Line breaks in `bytes` as [`LineBreaks`] counts them: `\n`, `\r\n`, or
/// a lone `\r`.
fn count_breaks(bytes: &[u8]) -> u64 {
    let newlines = bytes.iter().filter(|&&b| b == b'\n').count();
    if !bytes.contains(&b'\r') {
        return newlines as u64;
    }
    let crlf = bytes.windows(2).filter(|pair| pair == b"\r\n").count();
    let cr = bytes.iter().filter(|&&b| b == b'\r').count();
    (newlines + cr - crlf) as u64
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
    breaks: Rc<RefCell<LineBreaks>>,
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

/// A row's cells by column, without surrounding white space; absent
/// columns read as "".
struct Row<'a> {
    record: &'a csv::StringRecord,
    positions: &'a [Option<usize>],
}

impl<'a> Row<'a> {
    fn get(&self, column: Col) -> &'a str {
        self.positions[column as usize]
            .and_then(|i| self.record.get(i))
            .map_or("", str::trim)
    }
}

/// One row's fields in the native vocabulary.
struct Fields<'a> {
    reporter: &'a str,
    partner: &'a str,
    flow: Cow<'a, str>,
    period: Cow<'a, str>,
    commodity: &'a str,
    currency: &'a str,
    value: &'a str,
    net_weight_kg: &'a str,
    source: &'a str,
    released_at: &'a str,
}

fn native_fields<'a>(row: &Row<'a>) -> Fields<'a> {
    let flow = row.get(Col::FlowName);
    Fields {
        reporter: row.get(Col::Reporter),
        partner: row.get(Col::Partner),
        flow: if flow.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(flow.to_ascii_lowercase())
        } else {
            Cow::Borrowed(flow)
        },
        period: Cow::Borrowed(row.get(Col::PeriodText)),
        commodity: row.get(Col::CommodityCode),
        currency: row.get(Col::Currency),
        value: row.get(Col::Value),
        net_weight_kg: row.get(Col::NetWeightKg),
        source: row.get(Col::Source),
        released_at: row.get(Col::ReleasedAt),
    }
}

/// A breakdown of another row (by second partner, customs procedure, mode
/// of transport or of supply): skipped, or it would be counted twice.
fn is_breakdown(row: &Row<'_>) -> bool {
    let other_than = |column: Col, total: &str| {
        let v = row.get(column);
        !v.is_empty() && v != total
    };
    other_than(Col::Partner2Code, "0")
        || other_than(Col::CustomsCode, "C00")
        || other_than(Col::MotCode, "0")
        || other_than(Col::MosCode, "0")
}

/// A UN Comtrade row in the native vocabulary: `W00` is the world, flow
/// codes X/M/RX/RM, periods `2023` or `202303`, values in USD.
fn comtrade_fields<'a>(row: &Row<'a>) -> std::result::Result<Fields<'a>, Vec<FieldError>> {
    let flow = match row.get(Col::FlowCode) {
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
    let period = row.get(Col::PeriodText);
    // `get`, not slicing: a six-byte period need not split at a character
    // boundary (`202é5`); then it is left whole, for Period to reject.
    let period = match (period.len(), period.get(..4), period.get(4..)) {
        (6, Some(year), Some(month)) => Cow::Owned(format!("{year}-{month}")),
        _ => Cow::Borrowed(period),
    };
    let partner = match row.get(Col::PartnerIso) {
        "W00" => "WLD",
        other => other,
    };
    Ok(Fields {
        reporter: row.get(Col::ReporterIso),
        partner,
        flow: Cow::Borrowed(flow),
        period,
        commodity: row.get(Col::CmdCode),
        currency: "USD",
        value: row.get(Col::PrimaryValue),
        net_weight_kg: row.get(Col::NetWgt),
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

    proptest::proptest! {
        /// Whatever order a file is in, its records come out strictly in
        /// send order, one per key: the first in the file, with its value;
        /// each later one is a bad row naming the first's line.
        #[test]
        fn records_come_in_send_order_and_a_repeated_key_names_its_first_line(
            rows in proptest::collection::vec(
                (0..3usize, 0..2usize, 2020..2023u32, 0..3usize, 0..1000u32),
                0..80,
            ),
        ) {
            let (partners, flows, commodities) = (["KGZ", "TJK", "WLD"], ["export", "import"], ["TOTAL", "01", "27"]);
            let mut file = String::from("reporter,partner,flow,period,commodity,currency,value\n");
            for &(p, f, y, c, v) in &rows {
                file.push_str(&format!("CHN,{},{},{y},{},USD,{v}\n", partners[p], flows[f], commodities[c]));
            }
            let parsed = parse_file(file.as_bytes()).unwrap();
            // The oracle: the first row of each key, by its line; the others.
            let mut first: std::collections::BTreeMap<SendOrder, (u64, i128)> = Default::default();
            let mut repeats = Vec::new();
            for (line, row) in (2u64..).zip(&rows) {
                let single = format!("reporter,partner,flow,period,commodity,currency,value\nCHN,{},{},{},{},USD,{}\n",
                    partners[row.0], flows[row.1], row.2, commodities[row.3], row.4);
                let record = &parse_file(single.as_bytes()).unwrap().records[0];
                match first.get(&send_order(record)) {
                    Some(&(first_line, _)) => repeats.push((line, first_line)),
                    None => {
                        first.insert(send_order(record), (line, record.value().nanos()));
                    }
                }
            }
            let got: Vec<(SendOrder, i128)> = parsed.records.iter().map(|r| (send_order(r), r.value().nanos())).collect();
            let expected: Vec<(SendOrder, i128)> = first.iter().map(|(k, &(_, v))| (*k, v)).collect();
            proptest::prop_assert_eq!(got, expected);
            proptest::prop_assert_eq!(parsed.bad_rows.len(), repeats.len());
            for (row, (line, first_line)) in parsed.bad_rows.iter().zip(&repeats) {
                proptest::prop_assert_eq!(row.line, *line);
                let named = format!("the same record as line {first_line} ");
                proptest::prop_assert!(row.reason.starts_with(&named), "{}", row.reason);
            }
        }
    }

    mod shares {
        use super::super::*;
        use proptest::prelude::*;

        const NATIVE_HEADER: &str =
            "reporter,partner,flow,period,commodity,currency,value,source,released_at";
        const COMTRADE_HEADER: &str = "reporterISO,partnerISO,flowCode,period,cmdCode,primaryValue,motCode";

        /// A native row: good ones from a small key space (so some repeat),
        /// bad ones, cells quoted over several lines, stray quotes, bytes
        /// that are not UTF-8, blank lines.
        fn native_row() -> impl Strategy<Value = Vec<u8>> {
            let partner = || prop::sample::select(vec!["KGZ", "TJK", "TKM", "WLD"]);
            prop_oneof![
                4 => (partner(), prop::sample::select(vec!["export", "IMPORT"]), 2020..2023u32, 0..1000u32)
                    .prop_map(|(p, f, y, v)| format!("CHN,{p},{f},{y},TOTAL,USD,{v},customs,").into_bytes()),
                1 => Just(b"CHN,KAZ,sideways,2024,TOTAL,USD,1,,".to_vec()),
                1 => (partner(), 2020..2023u32)
                    .prop_map(|(p, y)| format!("CHN,{p},export,{y},01,USD,5,\"over\nthree \"\"lines\"\"\r\nof it\",").into_bytes()),
                1 => Just(b"CHN,KAZ,export,2021,02,USD,7,a\"b,".to_vec()),
                1 => Just(b"CHN,KAZ,export,2021,03,USD,7,\"a\"b\nc,".to_vec()),
                1 => Just(b"CHN,KAZ,\xff,2021,04,USD,7,,".to_vec()),
                1 => Just(b"\xEF\xBB\xBFCHN,KAZ,export,2021,05,USD,7,,".to_vec()),
                1 => Just(Vec::new()),
            ]
        }

        /// A UN Comtrade row: totals, mode-of-transport breakdowns, bad flows.
        fn comtrade_row() -> impl Strategy<Value = Vec<u8>> {
            (
                prop::sample::select(vec!["KGZ", "TJK", "W00"]),
                prop::sample::select(vec!["X", "M", "Q"]),
                2020..2022u32,
                prop::sample::select(vec!["0", "1000", "\"0\""]),
            )
                .prop_map(|(p, f, y, mot)| format!("CHN,{p},{f},{y},TOTAL,9,{mot}").into_bytes())
        }

        /// A file, with each line ended by `\n`, `\r\n` or `\r`.
        fn file() -> impl Strategy<Value = Vec<u8>> {
            let eol = || prop::sample::select(vec![&b"\n"[..], b"\r\n", b"\r"]);
            let rows = prop_oneof![
                prop::collection::vec(native_row(), 0..60).prop_map(|rows| (NATIVE_HEADER, rows)),
                prop::collection::vec(comtrade_row(), 0..60).prop_map(|rows| (COMTRADE_HEADER, rows)),
            ];
            (rows, prop::collection::vec(eol(), 61), any::<bool>()).prop_map(
                |((header, rows), eols, last_eol)| {
                    let mut file = header.as_bytes().to_vec();
                    file.extend(eols[0]);
                    for (i, row) in rows.iter().enumerate() {
                        file.extend(row);
                        if i + 1 < rows.len() || last_eol {
                            file.extend(eols[i + 1]);
                        }
                    }
                    file
                },
            )
        }

        fn same(a: &Parsed, b: &Parsed) -> std::result::Result<(), TestCaseError> {
            prop_assert_eq!(&a.records, &b.records);
            prop_assert_eq!(&a.bad_rows, &b.bad_rows);
            prop_assert_eq!(a.breakdown_rows, b.breakdown_rows);
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Cut after any line breaks, even inside quoted cells or blank
            /// lines, a file reads as it does from start to end.
            #[test]
            fn a_file_cut_into_shares_reads_as_a_whole(
                file in file(),
                picks in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
                threads in 1..4usize,
            ) {
                let whole = parse_cut(&file, &[], &ProgressBar::hidden()).unwrap();
                let newlines: Vec<usize> = file
                    .iter()
                    .enumerate()
                    .filter(|&(at, &b)| b == b'\n' && at + 1 < file.len())
                    .map(|(at, _)| at + 1)
                    .collect();
                let mut cuts: Vec<usize> = if newlines.is_empty() {
                    Vec::new()
                } else {
                    picks.iter().map(|pick| *pick.get(&newlines)).collect()
                };
                cuts.sort_unstable();
                cuts.dedup();
                let bar = ProgressBar::hidden();
                let cut = parse_cut(&file, &cuts, &bar).unwrap();
                same(&cut, &whole)?;
                // Progress counts every byte once, shares read over or not.
                prop_assert_eq!(bar.position(), file.len() as u64);
                // And as parse_bytes cuts it, in shares of a few bytes.
                let shared = parse_bytes(&file, 1 + threads, 16, &ProgressBar::hidden()).unwrap();
                same(&shared, &whole)?;
            }
        }

        /// A plain file is read in shares that each count, not by the
        /// first share reading on over the others: with Windows line ends
        /// and blank lines too.
        #[test]
        fn the_shares_of_a_plain_file_are_used() {
            for eol in ["\n", "\r\n", "\n\n", "\r\n\r\n"] {
                let mut file = format!("{NATIVE_HEADER}{eol}").into_bytes();
                for i in 0..1000 {
                    file.extend(format!("CHN,KAZ,export,2024,{:02},USD,{i},,{eol}", 1 + i % 97).into_bytes());
                }
                let cuts = cuts(&file, 4, 1024);
                assert_eq!(cuts.len(), 3);
                let header = Header::read(&file).unwrap();
                let bar = ProgressBar::hidden();
                let mut start = 0;
                for &cut in &cuts {
                    let share = Share::parse(&file, start, &cuts, &header, &bar);
                    assert_eq!(share.end, cut, "line ends {eol:?}");
                    start = cut;
                }
                let parsed = parse_cut(&file, &cuts, &bar).unwrap();
                assert_eq!(parsed.records.len(), 97);
                assert_eq!(parsed.bad_rows.len(), 1000 - 97);
                let lines_per_row = eol.matches('\n').count() as u64;
                assert_eq!(parsed.bad_rows[0].line, 1 + 98 * lines_per_row);
                let first = format!("line {}", 1 + lines_per_row);
                assert!(
                    parsed.bad_rows[0].reason.contains(&first),
                    "{}",
                    parsed.bad_rows[0].reason
                );
            }
        }
    }
}
