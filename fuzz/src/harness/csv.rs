//! Target 2: CSV files into the importer: arbitrary bytes, and generated
//! files in the native layout and the 47-column UN Comtrade layout (headers
//! reordered, recased, short of a column; rows with wrong, quoted, missing
//! or extra cells), then mutated at the byte level.
//!
//! Parsing must not panic: it fails on the header with an error about the
//! file, or names each bad row by line and field. The rows it accepts are
//! imported into a store (as `tradewatch import` does) and read back
//! unchanged; importing them again changes nothing. Every so often the
//! store is served and checked whole ([`super::check::check_store`]).

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use tradewatch::error::Error;
use tradewatch::import;
use tradewatch::store::Store;

use super::check;
use super::input::Input;
use super::requests as make;
use super::server::{self, Server, runtime};

/// The columns of the native layout (`net_weight_kg` is optional too).
const NATIVE: &[&str] = &[
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

/// The 47 columns of a UN Comtrade download.
pub const COMTRADE: &[&str] = &[
    "typeCode",
    "freqCode",
    "refPeriodId",
    "refYear",
    "refMonth",
    "period",
    "reporterCode",
    "reporterISO",
    "reporterDesc",
    "flowCode",
    "flowDesc",
    "partnerCode",
    "partnerISO",
    "partnerDesc",
    "partner2Code",
    "partner2ISO",
    "partner2Desc",
    "classificationCode",
    "classificationSearchCode",
    "isOriginalClassification",
    "cmdCode",
    "cmdDesc",
    "aggrLevel",
    "isLeaf",
    "customsCode",
    "customsDesc",
    "mosCode",
    "motCode",
    "motDesc",
    "qtyUnitCode",
    "qtyUnitAbbr",
    "qty",
    "isQtyEstimated",
    "altQtyUnitCode",
    "altQtyUnitAbbr",
    "altQty",
    "isAltQtyEstimated",
    "netWgt",
    "isNetWgtEstimated",
    "grossWgt",
    "isGrossWgtEstimated",
    "cifvalue",
    "fobvalue",
    "primaryValue",
    "legacyEstimationFlag",
    "isReported",
    "isAggregate",
];

/// Column names a row error may start with.
const FIELDS: &[&str] = &[
    "reporter",
    "partner",
    "flow",
    "flowCode",
    "period",
    "commodity",
    "currency",
    "value",
    "net_weight_kg",
    "source",
    "released_at",
];

const FLOWS: &[&str] = &[
    "export",
    "import",
    "re_export",
    "re_import",
    "turnover",
    "EXPORT",
    "Turnover",
];
const BAD_FLOWS: &[&str] = &["sideways", "", "1", "x", "X", "exports", "re-export"];
const VALUES: &[&str] = &[
    "0",
    "1",
    "41000000000",
    "0.5",
    "1.000000001",
    "123456789.25",
    "9223372036854775807",
    "1.",
];
const BAD_VALUES: &[&str] = &[
    "-1",
    "1.0000000001",
    "1e9",
    "1,5",
    ".5",
    "",
    "9223372036854775808",
    "99999999999999999999",
    "1 000",
    "٣",
    "+1",
    "0x10",
    "1..2",
];
const TIMES: &[&str] = &["", "2026-01-20T08:00:00Z", "2025-12-31T23:59:59.999999999Z"];
const BAD_TIMES: &[&str] = &[
    "2026-01-20",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:60Z",
    "x",
    "2026-01-20T08:00:00+25:00",
    "10000-01-01T00:00:00Z",
];
const WEIGHTS: &[&str] = &["", "1250.5", "0"];
const BAD_WEIGHTS: &[&str] = &["-1", "NaN", "inf", "1e400", "x", "-0"];
const COMTRADE_FLOWS: &[&str] = &["X", "M", "RX", "RM"];
const BAD_COMTRADE_FLOWS: &[&str] = &["x", "", "E", "DX", "FM"];
const COMTRADE_PERIODS: &[&str] = &["2023", "202303", "2024", "202412"];
const BAD_COMTRADE_PERIODS: &[&str] = &[
    "202313", "202300", "20230", "2023-03", "189912", "210101", "2023M3",
];
const COMTRADE_PARTNERS: &[&str] = &["KAZ", "W00", "KGZ", "USA"];

/// A cell, quoted when it needs to be (or, now and then, when it does not).
fn cell(inp: &mut Input, value: String) -> String {
    let needs = value.contains([',', '"', '\n', '\r']);
    if (needs && inp.chance(230)) || inp.chance(8) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

fn native_value(inp: &mut Input, column: &str, valid: bool) -> String {
    let pick = |inp: &mut Input, good: &[&str], bad: &[&str]| {
        if valid {
            inp.pick(good).to_owned()
        } else {
            inp.text(good, bad)
        }
    };
    match column {
        "reporter" => pick(inp, make::REPORTERS, make::BAD_COUNTRIES),
        "partner" => pick(inp, make::PARTNERS, make::BAD_COUNTRIES),
        "flow" => pick(inp, FLOWS, BAD_FLOWS),
        "period" => pick(inp, make::PERIODS, make::BAD_PERIODS),
        "commodity" => pick(inp, make::COMMODITIES, make::BAD_COMMODITIES),
        "currency" => pick(inp, make::CURRENCIES, make::BAD_CURRENCIES),
        "value" => pick(inp, VALUES, BAD_VALUES),
        "source" => pick(inp, make::SOURCES, &["a,b", "\"quoted\"", "two\nlines"]),
        "released_at" => pick(inp, TIMES, BAD_TIMES),
        "net_weight_kg" => pick(inp, WEIGHTS, BAD_WEIGHTS),
        _ => inp.text(&["", "x"], &[]),
    }
}

fn comtrade_value(inp: &mut Input, column: &str, valid: bool) -> String {
    let pick = |inp: &mut Input, good: &[&str], bad: &[&str]| {
        if valid {
            inp.pick(good).to_owned()
        } else {
            inp.text(good, bad)
        }
    };
    match column.to_ascii_lowercase().as_str() {
        "reporteriso" => pick(inp, make::REPORTERS, make::BAD_COUNTRIES),
        "partneriso" => pick(inp, COMTRADE_PARTNERS, make::BAD_COUNTRIES),
        "flowcode" => pick(inp, COMTRADE_FLOWS, BAD_COMTRADE_FLOWS),
        "period" => pick(inp, COMTRADE_PERIODS, BAD_COMTRADE_PERIODS),
        "cmdcode" => pick(inp, make::COMMODITIES, make::BAD_COMMODITIES),
        "primaryvalue" | "cifvalue" | "fobvalue" => pick(inp, VALUES, BAD_VALUES),
        "netwgt" => pick(inp, WEIGHTS, BAD_WEIGHTS),
        // Breakdown columns: the total most of the time.
        "partner2code" | "motcode" | "moscode" => {
            if inp.chance(200) {
                "0".into()
            } else {
                inp.text(&["", "0", "2100", "1"], &[])
            }
        }
        "customscode" => {
            if inp.chance(200) {
                "C00".into()
            } else {
                inp.text(&["", "C00", "C01"], &[])
            }
        }
        "freqcode" => inp.text(&["A", "M"], &["", "Q"]),
        "typecode" => "C".into(),
        _ => {
            if inp.chance(200) {
                "0".into()
            } else {
                inp.text(&["", "FALSE", "TRUE", "N/A", "-1"], &[])
            }
        }
    }
}

/// A generated file: header variant, rows, line ends; then maybe mutated.
fn generate(inp: &mut Input, comtrade: bool) -> Vec<u8> {
    let mut columns: Vec<String> = if comtrade {
        COMTRADE.iter().map(|c| (*c).to_owned()).collect()
    } else {
        let mut c: Vec<String> = NATIVE.iter().map(|c| (*c).to_owned()).collect();
        if inp.chance(64) {
            c.push("net_weight_kg".into());
        }
        c
    };
    match inp.byte() % 16 {
        0 => {
            let n = columns.len();
            for i in 0..n {
                let j = inp.below(n);
                columns.swap(i, j);
            }
        }
        1 => columns.iter_mut().for_each(|c| *c = c.to_ascii_uppercase()),
        2 => {
            let at = inp.below(columns.len());
            columns.remove(at);
        }
        3 => {
            let at = inp.below(columns.len());
            let dup = columns[at].clone();
            columns.push(dup);
        }
        4 => columns.push(inp.text(&["extra", "Value", " reporter"], &[])),
        5 => columns.truncate(inp.below(columns.len())),
        _ => {}
    }
    let valid_rows = inp.chance(128);
    let eol = if inp.chance(32) { "\r\n" } else { "\n" };
    let mut file = String::new();
    if inp.chance(8) {
        file.push('\u{feff}');
    }
    file.push_str(&columns.join(","));
    file.push_str(eol);
    for _ in 0..inp.below(9) {
        let valid = valid_rows && inp.chance(220);
        let mut cells: Vec<String> = columns
            .iter()
            .map(|c| {
                let v = if comtrade {
                    comtrade_value(inp, c, valid)
                } else {
                    native_value(inp, c, valid)
                };
                cell(inp, v)
            })
            .collect();
        match inp.byte() % 32 {
            0 => cells.truncate(inp.below(cells.len())),
            1 => cells.push("extra".into()),
            2 => cells.clear(),
            _ => {}
        }
        file.push_str(&cells.join(","));
        file.push_str(eol);
        if inp.chance(8) {
            file.push_str(eol);
        }
    }
    let bytes = file.into_bytes();
    if inp.chance(64) { inp.mutate(bytes) } else { bytes }
}

/// Imports that stored records between two checks of the whole store.
const IMPORTS_PER_CHECK: u32 = 200;

struct State {
    store: Option<Store>,
    dir: PathBuf,
    imports_since_check: u32,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| {
        let dir = server::scratch_dir();
        Mutex::new(State {
            store: Some(open(&dir)),
            dir,
            imports_since_check: 0,
        })
    })
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, 16 * 1024 * 1024, 0).unwrap_or_else(|e| panic!("store in {}: {e}", dir.display()))
}

/// Runs one fuzz input. Panics when the importer misbehaves.
pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let file = match inp.byte() % 4 {
        0 => inp.rest().to_vec(),
        1 => generate(&mut inp, true),
        _ => generate(&mut inp, false),
    };
    let context = format!(
        "file {:?}",
        String::from_utf8_lossy(&file[..file.len().min(2000)])
    );
    let parsed = match import::parse_file(&file[..]) {
        Ok(parsed) => parsed,
        Err(Error::InvalidArgument(violations)) => {
            assert!(
                violations
                    .iter()
                    .all(|v| v.field == "file" && !v.description.is_empty()),
                "{context}: a file error that is not about the file: {violations:?}"
            );
            return;
        }
        Err(other) => panic!("{context}: parse_file failed with {other:?}"),
    };
    let mut last_line = 0;
    for bad in &parsed.bad_rows {
        assert!(
            bad.line >= 2,
            "{context}: bad row at line {}: {}",
            bad.line,
            bad.reason
        );
        assert!(
            bad.line >= last_line,
            "{context}: bad rows out of order: {:?}",
            parsed.bad_rows
        );
        last_line = bad.line;
        // An unreadable row (not UTF-8) is named by its column as the
        // header spells it.
        let named = bad.reason.starts_with("unreadable row")
            || bad.reason.contains(": unreadable row")
            || bad.reason.starts_with("the same record as line")
            || FIELDS.iter().any(|f| bad.reason.starts_with(&format!("{f}: ")));
        assert!(
            named,
            "{context}: line {}: the reason names no field: {:?}",
            bad.line, bad.reason
        );
    }
    if parsed.records.is_empty() {
        return;
    }

    let mut state = state().lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let store = state.store.as_ref().expect("a store");
        let records = parsed.records.clone();
        let summary = import::store_records(store, records.clone())
            .await
            .unwrap_or_else(|e| panic!("{context}: storing {} parsed records failed: {e}", records.len()));
        assert_eq!(
            summary.created + summary.revised + summary.unchanged,
            records.len() as u64,
            "{context}: {summary:?}"
        );
        for r in &records {
            let stored = store
                .get_record(&r.key)
                .unwrap_or_else(|e| panic!("{context}: reading {} back: {e}", r.key))
                .unwrap_or_else(|| panic!("{context}: {} was imported but is not stored", r.key));
            assert_eq!(&stored.record, r, "{context}: {} is stored differently", r.key);
        }
        let again = import::store_records(store, records.clone())
            .await
            .expect("the same records again");
        assert_eq!(
            again.unchanged,
            records.len() as u64,
            "{context}: importing again changed something"
        );
        state.imports_since_check += 1;
        if state.imports_since_check >= IMPORTS_PER_CHECK {
            recycle(&mut state).await;
        }
    });
}

/// Closes the store, serves it and checks it whole, then starts over on an
/// empty store.
async fn recycle(state: &mut State) {
    if let Some(store) = state.store.take() {
        store.close().await;
        drop(store);
    }
    let server = Server::start(&state.dir).await;
    let channel = server.channel().await;
    check::check_store(&channel).await;
    drop(channel);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&state.dir);
    state.dir = server::scratch_dir();
    state.store = Some(open(&state.dir));
    state.imports_since_check = 0;
}

/// Checks the store whole and starts over; for the end of a run.
pub fn finish() {
    let mut state = state().lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(recycle(&mut state));
}
