//! Mirror statistics: every country reports its own side of its trade, so
//! the same trade is published twice — China's exports to Tajikistan, and
//! Tajikistan's imports from China. A mirror comparison puts what the
//! reporters say beside what their partners say for the reverse flow,
//! grouped like an aggregate, with the gap and the ratio.

use std::collections::{BTreeMap, BTreeSet};

use super::ResolvedSelector;
use super::aggregate::{self, AggregateRequest, AggregateRow, Dimension, GroupKey, RowOrder};
use crate::domain::{CurrencyCode, Flow, Granularity, Money, Selector};
use crate::error::Result;
use crate::store::Store;

/// A parsed mirror question, before its selector is resolved.
pub struct MirrorRequest {
    pub group_by: BTreeSet<Dimension>,
    /// `None`: years for annual data, months for monthly.
    pub granularity: Option<Granularity>,
}

/// One group: each side's sum and record count, when it reports the group.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorRow {
    pub group: GroupKey,
    pub reported: Option<(Money, u64)>,
    pub mirror: Option<(Money, u64)>,
}

impl MirrorRow {
    /// reported − mirror, when both sides report.
    pub fn gap(&self) -> Option<Money> {
        let ((reported, _), (mirror, _)) = (self.reported?, self.mirror?);
        Some(Money::new(reported.currency(), reported.nanos() - mirror.nanos()))
    }

    /// reported ÷ mirror, when both sides report and the mirror is not 0.
    pub fn ratio(&self) -> Option<f64> {
        let ((reported, _), (mirror, _)) = (self.reported?, self.mirror?);
        (mirror.nanos() != 0).then(|| reported.nanos() as f64 / mirror.nanos() as f64)
    }
}

#[derive(Debug, Clone)]
pub struct MirrorAnswer {
    /// By group values.
    pub rows: Vec<MirrorRow>,
    pub reported_total: Money,
    pub mirror_total: Money,
    pub currency: CurrencyCode,
}

/// The flow a partner reports for the trade a reporter reports as `flow`.
pub fn reverse(flow: Flow) -> Flow {
    match flow {
        Flow::Export => Flow::Import,
        Flow::Import => Flow::Export,
        Flow::ReExport => Flow::ReImport,
        Flow::ReImport => Flow::ReExport,
        Flow::Turnover => Flow::Turnover,
    }
}

/// The same selector from the partners' side: reporters and partners
/// swapped, each flow reversed.
fn mirrored(resolved: &ResolvedSelector) -> ResolvedSelector {
    let s = &resolved.selector;
    ResolvedSelector {
        selector: Selector {
            reporters: s.partners.clone(),
            partners: s.reporters.clone(),
            flows: s.flows.iter().copied().map(reverse).collect(),
            ..s.clone()
        },
        reporters: resolved.partners.clone(),
        partners: resolved.reporters.clone(),
    }
}

/// A group key or dimension of one side, as the other side names it.
fn swap_dimension(d: Dimension) -> Dimension {
    match d {
        Dimension::Reporter => Dimension::Partner,
        Dimension::Partner => Dimension::Reporter,
        other => other,
    }
}

fn swap_key(key: GroupKey) -> GroupKey {
    GroupKey {
        reporter: key.partner,
        partner: key.reporter,
        flow: key.flow.map(reverse),
        ..key
    }
}

/// Answers the mirror question: the aggregate of `resolved`, the aggregate
/// of its mirror grouped the same way seen from the other side, joined.
pub fn compare(store: &Store, resolved: &ResolvedSelector, request: &MirrorRequest) -> Result<MirrorAnswer> {
    let question = |group_by: BTreeSet<Dimension>| AggregateRequest {
        group_by,
        granularity: request.granularity,
        order: RowOrder::Group,
        limit: 0,
    };
    let reported = aggregate::aggregate(store, resolved, &question(request.group_by.clone()))?;
    let mirror = aggregate::aggregate(
        store,
        &mirrored(resolved),
        &question(request.group_by.iter().copied().map(swap_dimension).collect()),
    )?;
    let side = |row: &AggregateRow| (row.total, row.record_count);
    let mut rows: BTreeMap<GroupKey, MirrorRow> = BTreeMap::new();
    // A side reports a group when it has records for it (the grand-total
    // row of an ungrouped question is there even without).
    for row in reported.rows.iter().filter(|r| r.record_count > 0) {
        rows.entry(row.group).or_insert_with(|| empty(row.group)).reported = Some(side(row));
    }
    for row in mirror.rows.iter().filter(|r| r.record_count > 0) {
        let group = swap_key(row.group);
        rows.entry(group).or_insert_with(|| empty(group)).mirror = Some(side(row));
    }
    Ok(MirrorAnswer {
        rows: rows.into_values().collect(),
        reported_total: reported.grand_total,
        mirror_total: mirror.grand_total,
        currency: reported.currency,
    })
}

fn empty(group: GroupKey) -> MirrorRow {
    MirrorRow {
        group,
        reported: None,
        mirror: None,
    }
}
