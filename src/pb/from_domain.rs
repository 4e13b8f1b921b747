//! Domain values as the API's messages carry them: used by the server's
//! services and by the import client alike.

use crate::domain;

impl From<domain::Money> for super::Money {
    /// Record values and thresholds always fit: they arrived as a `Money`.
    /// Sums that might not are converted with [`domain::Money::to_parts`]
    /// and refused when they do not fit.
    fn from(m: domain::Money) -> Self {
        let (units, nanos) = m.to_parts().unwrap_or((i64::MAX, 0));
        super::Money {
            currency_code: m.currency().to_string(),
            units,
            nanos,
        }
    }
}

impl From<&domain::RecordKey> for super::RecordKey {
    fn from(key: &domain::RecordKey) -> Self {
        super::RecordKey {
            reporter: key.reporter.to_string(),
            partner: key.partner.to_string(),
            flow: i32::from(key.flow.code()),
            period: key.period.to_string(),
            commodity: key.commodity.to_string(),
            currency: key.currency.to_string(),
        }
    }
}

impl From<&domain::TradeRecord> for super::TradeRecord {
    /// A record's content (no server-set fields).
    fn from(r: &domain::TradeRecord) -> Self {
        super::TradeRecord {
            reporter: r.key.reporter.to_string(),
            partner: r.key.partner.to_string(),
            flow: i32::from(r.key.flow.code()),
            period: r.key.period.to_string(),
            commodity: r.key.commodity.to_string(),
            value: Some(r.value().into()),
            net_weight_kg: r.net_weight_kg(),
            source: r.source().to_owned(),
            released_at: r.released_at(),
            revision: 0,
            updated_at: None,
        }
    }
}

impl From<&domain::StoredRecord> for super::TradeRecord {
    fn from(stored: &domain::StoredRecord) -> Self {
        super::TradeRecord {
            revision: stored.revision,
            updated_at: Some(stored.updated_at),
            ..(&stored.record).into()
        }
    }
}
