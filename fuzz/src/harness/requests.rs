//! Request messages built from fuzz input: mostly plausible values (so that
//! writes succeed and the store fills), mixed with wrong ones and edge cases.

use prost_types::Timestamp;
use tradewatch::pb;

use super::input::Input;

pub const REPORTERS: &[&str] = &["CHN", "KAZ", "KGZ", "TJK", "TKM", "UZB", "USA", "RUS"];
pub const PARTNERS: &[&str] = &["CHN", "KAZ", "KGZ", "TJK", "TKM", "UZB", "USA", "RUS", "WLD"];
pub const BAD_COUNTRIES: &[&str] = &[
    "WLD", "XXX", "chn", "CH", "CHNA", "", "ZZZ", "UNK", "EUR", " KAZ", "W00", "156",
];
pub const GROUPS: &[&str] = &["CENTRAL_ASIA", "FUZZ_GROUP", "PAIR_1"];
pub const BAD_GROUPS: &[&str] = &[
    "ABC",
    "central_asia",
    "_ABCD",
    "A",
    "ABCD-",
    "ABC D",
    "NO_SUCH_GROUP",
];
pub const PERIODS: &[&str] = &["2023", "2024", "2025", "2024-01", "2024-06", "2025-03", "2025-12"];
pub const BAD_PERIODS: &[&str] = &[
    "1899",
    "2101",
    "1900",
    "2100",
    "2100-12",
    "1900-01",
    "2025-00",
    "2025-13",
    "2025-1",
    "202503",
    "2025-Q1",
    "25",
    "",
    "+2025",
    "2025-03-01",
    "-2025",
    "２０２５",
    "2025-",
    "2025-+1",
    "0x7E9",
];
pub const COMMODITIES: &[&str] = &["TOTAL", "", "27", "2701", "270112", "52"];
pub const BAD_COMMODITIES: &[&str] = &[
    "1", "270", "27011", "2701123", "total", "AB", "00000000", "-27", " 27", "２７",
];
pub const CURRENCIES: &[&str] = &["USD", "CNY", "EUR"];
pub const BAD_CURRENCIES: &[&str] = &["XXX", "XTS", "usd", "US", "USDD", "", "ZZZ", "ÜSD"];
pub const SOURCES: &[&str] = &["GACC", "UN Comtrade", "", "Tajikistan statistics agency"];
pub const WATCH_IDS: &[&str] = &["w1", "w2", "fuzz", "a-b_c"];
pub const BAD_WATCH_IDS: &[&str] = &["", "W1", "-a", "_a", "a b", "é", "a/b"];
pub const PREFIXES: &[&str] = &["", "2", "27", "2701", "5"];
pub const BAD_PREFIXES: &[&str] = &["27011234", "x", "-", "TOTAL", " 2"];
/// A small pool, so that ids recur: a retry of the same request (answered
/// with the first outcome) or the same id with another request
/// (ALREADY_EXISTS).
pub const REQUEST_IDS: &[&str] = &["7f1c1f0e-8d1c-4c43-9d1e-1b9f0e2f4a11", "retry-1", "r"];
/// 65 bytes, one more than a request id may have.
pub const BAD_REQUEST_IDS: &[&str] = &["0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0"];

/// A country code, or when `group` a group name now and then.
fn party(inp: &mut Input, valid: bool, codes: &[&str], group: bool) -> String {
    if group && inp.chance(48) {
        return if valid {
            inp.pick(GROUPS).to_owned()
        } else {
            inp.text(GROUPS, BAD_GROUPS)
        };
    }
    if valid {
        inp.pick(codes).to_owned()
    } else {
        inp.text(codes, BAD_COUNTRIES)
    }
}

fn text(inp: &mut Input, valid: bool, good: &[&str], bad: &[&str]) -> String {
    if valid {
        inp.pick(good).to_owned()
    } else {
        inp.text(good, bad)
    }
}

fn flow(inp: &mut Input, valid: bool) -> i32 {
    if valid {
        1 + inp.below(5) as i32
    } else {
        inp.enum_value(5)
    }
}

pub fn money(inp: &mut Input, valid: bool, currency: Option<&str>) -> pb::Money {
    let currency_code = match currency {
        Some(c) if valid || inp.chance(200) => c.to_owned(),
        _ => text(inp, valid, CURRENCIES, BAD_CURRENCIES),
    };
    if valid {
        pb::Money {
            currency_code,
            units: i64::from(inp.byte()) * 1_000_000_000 + i64::from(inp.byte()) * 1_000_000,
            nanos: [0, 1, 500_000_000, 999_999_999][inp.below(4)],
        }
    } else {
        pb::Money {
            currency_code,
            units: inp.i64(),
            nanos: inp.i32(),
        }
    }
}

fn timestamp(inp: &mut Input, valid: bool) -> Option<Timestamp> {
    if !inp.chance(64) {
        return None;
    }
    Some(if valid {
        Timestamp {
            seconds: 1_700_000_000 + i64::from(inp.byte()) * 86_400,
            nanos: 0,
        }
    } else {
        Timestamp {
            seconds: inp
                .pick::<i64>(&[
                    0,
                    -62_135_596_800,
                    -62_135_596_801,
                    253_402_300_799,
                    253_402_300_800,
                ])
                .wrapping_add(if inp.chance(128) { 0 } else { inp.i64() }),
            nanos: inp.i32(),
        }
    })
}

pub fn record(inp: &mut Input, valid: bool) -> pb::TradeRecord {
    let value = if valid || inp.chance(224) {
        Some(money(inp, valid, None))
    } else {
        None
    };
    pb::TradeRecord {
        reporter: party(inp, valid, REPORTERS, false),
        partner: party(inp, valid, PARTNERS, false),
        flow: flow(inp, valid),
        period: text(inp, valid, PERIODS, BAD_PERIODS),
        commodity: text(inp, valid, COMMODITIES, BAD_COMMODITIES),
        value,
        net_weight_kg: if inp.chance(64) {
            Some(if valid { f64::from(inp.byte()) } else { inp.f64() })
        } else {
            None
        },
        source: text(inp, valid, SOURCES, &["x"]),
        released_at: timestamp(inp, valid),
        revision: if inp.chance(16) { inp.i64() } else { 0 },
        updated_at: if inp.chance(16) {
            timestamp(inp, false)
        } else {
            None
        },
    }
}

pub fn key(inp: &mut Input, valid: bool) -> pb::RecordKey {
    pb::RecordKey {
        reporter: party(inp, valid, REPORTERS, false),
        partner: party(inp, valid, PARTNERS, false),
        flow: flow(inp, valid),
        period: text(inp, valid, PERIODS, BAD_PERIODS),
        commodity: text(inp, valid, COMMODITIES, BAD_COMMODITIES),
        currency: text(inp, valid, CURRENCIES, BAD_CURRENCIES),
    }
}

/// A selector; `valid` keeps every part well-formed (the combination may
/// still be rejected, e.g. a prefix without a level).
pub fn selector(inp: &mut Input, valid: bool) -> pb::RecordSelector {
    let commodities = inp.list(3, |i| {
        let mut c = text(i, valid, COMMODITIES, BAD_COMMODITIES);
        if valid && c.is_empty() {
            c = "TOTAL".into();
        }
        c
    });
    let commodity_level = if commodities.is_empty() && inp.chance(128) {
        if valid {
            1 + inp.below(4) as i32
        } else {
            inp.enum_value(4)
        }
    } else if inp.chance(16) {
        inp.enum_value(4)
    } else {
        0
    };
    pb::RecordSelector {
        reporters: inp.list(3, |i| party(i, valid, REPORTERS, true)),
        partners: inp.list(4, |i| party(i, valid, PARTNERS, true)),
        flows: inp.list(4, |i| flow(i, valid)),
        commodities,
        commodity_level,
        commodity_prefix: if commodity_level > 1 && inp.chance(96) {
            text(inp, valid, PREFIXES, BAD_PREFIXES)
        } else if inp.chance(8) {
            inp.text(PREFIXES, BAD_PREFIXES)
        } else {
            String::new()
        },
        currency: if inp.chance(128) {
            text(inp, valid, CURRENCIES, BAD_CURRENCIES)
        } else {
            String::new()
        },
        frequency: if inp.chance(128) {
            if valid {
                1 + inp.below(2) as i32
            } else {
                inp.enum_value(2)
            }
        } else {
            0
        },
        period_from: if inp.chance(96) {
            text(inp, valid, PERIODS, BAD_PERIODS)
        } else {
            String::new()
        },
        period_to: if inp.chance(96) {
            text(inp, valid, PERIODS, BAD_PERIODS)
        } else {
            String::new()
        },
    }
}

pub fn aggregate(inp: &mut Input, valid: bool) -> pb::AggregateRequest {
    let selector = if valid || inp.chance(240) {
        Some(selector(inp, valid))
    } else {
        None
    };
    let group_by = inp.list(5, |i| {
        if valid {
            1 + i.below(5) as i32
        } else {
            i.enum_value(5)
        }
    });
    pb::AggregateRequest {
        selector,
        granularity: if inp.chance(96) {
            if valid {
                1 + inp.below(3) as i32
            } else {
                inp.enum_value(3)
            }
        } else {
            0
        },
        order_by: if valid {
            inp.below(3) as i32
        } else {
            inp.enum_value(2)
        },
        limit: if inp.chance(64) { inp.u32() } else { 0 },
        group_by,
        ..Default::default()
    }
}

/// The optional idempotency key of a write: mostly none.
pub fn request_id(inp: &mut Input, valid: bool) -> String {
    if !inp.chance(32) {
        return String::new();
    }
    text(inp, valid, REQUEST_IDS, BAD_REQUEST_IDS)
}

/// A page token; never one the server issued (those carry a MAC), so any
/// but the empty one is refused.
pub fn page_token(inp: &mut Input) -> String {
    match inp.byte() % 8 {
        0..=3 => String::new(),
        4 => {
            // The hex of something shaped like a record key (what tokens
            // were before they were signed).
            let key: Vec<u8> = [b'r']
                .iter()
                .copied()
                .chain(inp.bytes(24).iter().copied())
                .collect();
            key.iter().map(|b| format!("{b:02x}")).collect()
        }
        5 => "72".repeat(inp.below(80)),
        _ => inp.text(&["00", "ff", "7243484e"], &["z", "0", "é1", "-1", "0x00"]),
    }
}

pub fn list_records(inp: &mut Input, valid: bool) -> pb::ListRecordsRequest {
    pb::ListRecordsRequest {
        selector: if valid || inp.chance(240) {
            Some(selector(inp, valid))
        } else {
            None
        },
        page_size: if inp.chance(128) { inp.u32() } else { 0 },
        page_token: page_token(inp),
        ..Default::default()
    }
}

pub fn group(inp: &mut Input, valid: bool) -> pb::PartnerGroup {
    let members = if valid {
        let mut m: Vec<String> = inp.list(5, |i| i.pick(PARTNERS).to_owned());
        m.retain(|c| c != "WLD");
        m.sort();
        m.dedup();
        if m.is_empty() {
            m.push("KAZ".into());
        }
        m
    } else {
        inp.list(6, |i| i.text(REPORTERS, BAD_COUNTRIES))
    };
    pb::PartnerGroup {
        name: text(inp, valid, GROUPS, BAD_GROUPS),
        members,
        description: if valid {
            String::new()
        } else {
            inp.text(&["", "Central Asia"], &[])
        },
        updated_at: if inp.chance(16) {
            timestamp(inp, false)
        } else {
            None
        },
    }
}

pub fn watch(inp: &mut Input, valid: bool) -> pb::Watch {
    let selector = if valid || inp.chance(224) {
        Some(selector(inp, valid))
    } else {
        None
    };
    let currency = selector.as_ref().map(|s| {
        if s.currency.is_empty() {
            "USD".to_owned()
        } else {
            s.currency.clone()
        }
    });
    pb::Watch {
        id: if inp.chance(96) {
            String::new()
        } else {
            text(inp, valid, WATCH_IDS, BAD_WATCH_IDS)
        },
        name: text(inp, valid, &["China–Central Asia trade", "x"], &["", " ", "\t"]),
        granularity: if inp.chance(64) {
            if valid {
                1 + inp.below(3) as i32
            } else {
                inp.enum_value(3)
            }
        } else {
            0
        },
        thresholds: inp.list(3, |i| money(i, valid, currency.as_deref())),
        record_high: inp.chance(128),
        rank: inp.chance(64).then(|| pb::RankRule {
            by: if valid {
                inp.below(3) as i32
            } else {
                inp.enum_value(2)
            },
            top: if valid {
                inp.below(51) as u32
            } else {
                inp.i32() as u32
            },
        }),
        growth_thresholds_percent: inp.list(2, |i| {
            if valid {
                f64::from(i.byte()) - 99.0
            } else {
                i.f64()
            }
        }),
        year_to_date: inp.chance(32),
        created_at: if inp.chance(16) {
            timestamp(inp, false)
        } else {
            None
        },
        series: if inp.chance(16) {
            inp.text(&["x"], &[])
        } else {
            String::new()
        },
        selector,
    }
}

pub fn event_kinds(inp: &mut Input, valid: bool) -> Vec<i32> {
    inp.list(3, |i| {
        if valid {
            1 + i.below(6) as i32
        } else {
            i.enum_value(6)
        }
    })
}

pub fn watch_ids(inp: &mut Input, valid: bool) -> Vec<String> {
    inp.list(2, |i| text(i, valid, WATCH_IDS, BAD_WATCH_IDS))
}
