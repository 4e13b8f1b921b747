//! `tradewatch.v1.MilestoneService`.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::paging::Page;
use super::{convert, request_id};
use crate::domain::{Action, Command, Event, EventKind, NewWatch};
use crate::domain::{
    CurrencyCode, Frequency, Granularity, Money, Party, Period, RankBy, RankRule, SeriesSpec, WatchDef,
    WatchId, WatchRules,
};
use crate::error::{Error, Result, Violation};
use crate::limits::Limits;
use crate::pb::{self, milestone_service_server::MilestoneService};
use crate::query::ResolvedSelector;
use crate::store::{Applied, Store};
use crate::stream;
use crate::writes::Writes;

const DEFAULT_EVENTS_PAGE: usize = 100;

pub struct MilestoneApi {
    /// Where reads are answered from.
    store: Arc<Store>,
    /// Where writes go.
    writes: Writes,
    /// What subscriptions wait on; stops at shutdown.
    heads: stream::Heads,
    limits: Limits,
    /// One permit per open `Subscribe` stream.
    subscribers: Arc<Semaphore>,
}

impl MilestoneApi {
    /// With the default [`Limits`]; subscriptions end at `shutdown`. Must
    /// be called within the runtime.
    pub fn new(store: Arc<Store>, shutdown: CancellationToken) -> Self {
        let limits = Limits::default();
        MilestoneApi {
            writes: Writes::Local(store.clone()),
            heads: stream::Heads::follow(&store, shutdown),
            store,
            subscribers: Arc::new(Semaphore::new(limits.max_subscribers)),
            limits,
        }
    }

    /// What its subscriptions wait on.
    pub fn heads(&self) -> stream::Heads {
        self.heads.clone()
    }

    pub fn with_limits(self, limits: Limits) -> Self {
        MilestoneApi {
            subscribers: Arc::new(Semaphore::new(limits.max_subscribers)),
            limits,
            ..self
        }
    }

    /// Writes go to `writes` (a cluster's log) instead.
    pub fn with_writes(self, writes: Writes) -> Self {
        MilestoneApi { writes, ..self }
    }

    /// Creates a watch unless the store already holds the most it may (the
    /// store's writer counts, so concurrent creations cannot pass the limit
    /// together).
    async fn create_within_limit(
        &self,
        mut request: pb::CreateWatchRequest,
    ) -> Result<pb::CreateWatchResponse> {
        let id = std::mem::take(&mut request.request_id);
        let tag = request_id::tag("CreateWatch", &id, &request)?;
        let default = pb::Watch::default();
        let watch = request.watch.as_ref().unwrap_or(&default);
        // Fields are named as in the request, under `watch`.
        let applied = self
            .create(watch, request.backfill, tag)
            .await
            .map_err(|e| match e {
                Error::InvalidArgument(violations) => Error::InvalidArgument(
                    violations
                        .into_iter()
                        .map(|v| Violation::new(format!("watch.{}", v.field), v.description))
                        .collect(),
                ),
                other => other,
            })?;
        let written = applied.outcome.into_watch()?;
        Ok(pb::CreateWatchResponse {
            watch: Some(watch_to_pb(&written.def, written.created_at)),
            first_sequence: written.sequences.map_or(0, |s| s.first),
            last_sequence: written.sequences.map_or(0, |s| s.last),
            log_position: applied.position,
        })
    }

    async fn create(
        &self,
        watch: &pb::Watch,
        backfill: bool,
        tag: Option<crate::domain::RequestTag>,
    ) -> Result<Applied> {
        let mut violations = Vec::new();
        let id = if watch.id.is_empty() {
            None
        } else {
            WatchId::parse(&watch.id)
                .map_err(|e| violations.push(Violation::new("id", e.0)))
                .ok()
        };
        let name = WatchDef::parse_name(&watch.name)
            .map_err(|e| violations.push(Violation::new("name", e.0)))
            .unwrap_or_default();
        let granularity = convert::parse_granularity(watch.granularity, "granularity")
            .map_err(|e| violations.extend(violations_of(e)))
            .ok()
            .flatten();
        let selector = convert::parse_selector(watch.selector.as_ref(), "selector")
            .map_err(|e| violations.extend(violations_of(e)))
            .ok();
        let max_thresholds = self.limits.max_thresholds_per_watch;
        if watch.thresholds.len() > max_thresholds {
            violations.push(Violation::new(
                "thresholds",
                format!(
                    "{} thresholds, more than the limit of {max_thresholds} per watch \
                     (max_thresholds_per_watch, --max-thresholds-per-watch)",
                    watch.thresholds.len()
                ),
            ));
        }
        if watch.thresholds.is_empty()
            && !watch.record_high
            && watch.rank.is_none()
            && watch.growth_thresholds_percent.is_empty()
            && !watch.year_to_date
        {
            violations.push(Violation::new(
                "thresholds",
                "a watch needs at least one rule: thresholds, record_high, rank, growth_thresholds_percent \
                 or year_to_date",
            ));
        }
        if watch.growth_thresholds_percent.len() > max_thresholds {
            violations.push(Violation::new(
                "growth_thresholds_percent",
                format!(
                    "{} growth thresholds, more than the limit of {max_thresholds} per watch \
                     (max_thresholds_per_watch, --max-thresholds-per-watch)",
                    watch.growth_thresholds_percent.len()
                ),
            ));
        }
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        let Some(selector) = selector else {
            return Err(Error::InvalidArgument(violations));
        };
        let (reporters, partners) = (selector.reporters.clone(), selector.partners.clone());
        let resolved = ResolvedSelector::resolve(&self.store, selector, "selector")?;
        let spec = crate::query::aggregate::series_spec(&resolved, granularity, false)?;
        let rules = WatchRules {
            thresholds: parse_thresholds(&watch.thresholds, spec.currency)?,
            record_high: watch.record_high,
            ..parse_analyst_rules(watch, &spec)?
        };
        let watch = NewWatch {
            id,
            name,
            reporters,
            partners,
            spec,
            rules,
            backfill,
            max_watches: self.limits.max_watches,
        };
        self.writes
            .apply(Command::new(Action::CreateWatch(Box::new(watch)), tag))
            .await
    }

    fn list_events(&self, request: &pb::ListEventsRequest) -> Result<pb::ListEventsResponse> {
        let limit = match request.limit as usize {
            0 => DEFAULT_EVENTS_PAGE,
            n => n,
        }
        .min(self.limits.max_page_size);
        let wanted = EventFilter::parse(&request.kinds, &request.watch_ids)?;
        let oldest = self.store.oldest_sequence();
        if request.from_sequence > 1 && request.from_sequence < oldest {
            return Err(Error::EventsTrimmed {
                requested: request.from_sequence,
                oldest,
            });
        }
        let head = self.store.durable_head();
        let mut next = request.from_sequence.max(oldest);
        let mut events = Vec::new();
        while events.len() < limit && next <= head {
            let chunk = self.store.read_log(next, head, limit)?;
            if chunk.is_empty() {
                break;
            }
            for event in chunk {
                if events.len() == limit {
                    break;
                }
                next = event.sequence + 1;
                if wanted.matches(&event) {
                    events.push(convert::event_to_pb(&event)?);
                }
            }
        }
        Ok(pb::ListEventsResponse {
            events,
            next_sequence: next,
            head_sequence: head,
        })
    }
}

fn violations_of(e: Error) -> Vec<Violation> {
    match e {
        Error::InvalidArgument(v) => v,
        other => vec![Violation::new("", other.to_string())],
    }
}

/// The rank, growth and year-to-date rules of a watch over `spec`.
fn parse_analyst_rules(watch: &pb::Watch, spec: &SeriesSpec) -> Result<WatchRules> {
    let mut violations = Vec::new();
    let month_by_month = spec.frequency == Frequency::Annual || spec.granularity == Granularity::Month;
    let rank = watch.rank.as_ref().and_then(|rule| {
        let by = match pb::RankBy::try_from(rule.by) {
            Ok(pb::RankBy::Unspecified | pb::RankBy::Partner) => RankBy::Partner,
            Ok(pb::RankBy::Reporter) => RankBy::Reporter,
            Err(_) => {
                violations.push(Violation::new("rank.by", format!("{} is not a RankBy", rule.by)));
                return None;
            }
        };
        let top = rule.top.max(1);
        if top > RankRule::MAX_TOP {
            violations.push(Violation::new(
                "rank.top",
                format!(
                    "{top} places, more than the {} a rank rule can follow",
                    RankRule::MAX_TOP
                ),
            ));
        }
        Some(RankRule { by, top })
    });
    let mut growth = BTreeSet::new();
    for (i, percent) in watch.growth_thresholds_percent.iter().enumerate() {
        let field = format!("growth_thresholds_percent[{i}]");
        match growth_bp(*percent) {
            Ok(bp) if !growth.insert(bp) => violations.push(Violation::new(field, "listed twice")),
            Ok(_) => {}
            Err(reason) => violations.push(Violation::new(field, reason)),
        }
    }
    if !growth.is_empty() && !month_by_month {
        violations.push(Violation::new(
            "growth_thresholds_percent",
            "on monthly data growth needs granularity GRANULARITY_MONTH: a year or quarter of monthly data \
             may still be partial, and growth compares like for like only month by month",
        ));
    }
    if watch.year_to_date && !(spec.frequency == Frequency::Monthly && spec.granularity == Granularity::Month)
    {
        violations.push(Violation::new(
            "year_to_date",
            "year_to_date needs monthly data (selector.frequency FREQUENCY_MONTHLY) and granularity \
             GRANULARITY_MONTH",
        ));
    }
    if !violations.is_empty() {
        return Err(Error::InvalidArgument(violations));
    }
    Ok(WatchRules {
        rank,
        growth_thresholds: growth.into_iter().collect(),
        year_to_date: watch.year_to_date,
        ..WatchRules::default()
    })
}

/// A growth threshold in percent as basis points: finite, above -100 %, at
/// most 1,000,000 %, at most two decimals.
fn growth_bp(percent: f64) -> std::result::Result<i32, String> {
    if !percent.is_finite() || percent <= -100.0 || percent > 1_000_000.0 {
        return Err(format!(
            "{percent} is not a growth threshold: expected a percentage above -100 and at most 1000000"
        ));
    }
    let bp = (percent * 100.0).round();
    if (percent * 100.0 - bp).abs() > 1e-6 {
        return Err(format!("{percent}: a growth threshold has at most two decimals"));
    }
    Ok(bp as i32)
}

fn parse_thresholds(thresholds: &[pb::Money], currency: CurrencyCode) -> Result<Vec<i128>> {
    let mut violations = Vec::new();
    let mut out = BTreeSet::new();
    for (i, t) in thresholds.iter().enumerate() {
        if t.currency_code != currency.as_str() {
            violations.push(Violation::new(
                format!("thresholds[{i}].currency_code"),
                format!("{:?} is not the series' currency {currency}", t.currency_code),
            ));
            continue;
        }
        match Money::amount_from_parts(t.units, t.nanos) {
            Ok(v) if v > 0 => {
                if !out.insert(v) {
                    violations.push(Violation::new(format!("thresholds[{i}]"), "listed twice"));
                }
            }
            Ok(_) => violations.push(Violation::new(
                format!("thresholds[{i}].units"),
                "a threshold must be positive",
            )),
            Err((_, reason)) => violations.push(Violation::new(format!("thresholds[{i}].nanos"), reason.0)),
        }
    }
    if violations.is_empty() {
        Ok(out.into_iter().collect())
    } else {
        Err(Error::InvalidArgument(violations))
    }
}

fn watch_to_pb(def: &WatchDef, created_at: prost_types::Timestamp) -> pb::Watch {
    let party = |p: &Party| p.to_string();
    let spec = &def.spec;
    let (commodities, commodity_level, commodity_prefix) = match &spec.commodities {
        crate::domain::CommodityFilter::Exact(set) => {
            (set.iter().map(ToString::to_string).collect(), 0, String::new())
        }
        crate::domain::CommodityFilter::Level(level, prefix) => (
            Vec::new(),
            convert::commodity_level_to_pb(*level) as i32,
            prefix.clone(),
        ),
    };
    let open_from = spec.from.year() == Period::MIN_YEAR && spec.from.month().unwrap_or(1) == 1;
    let open_to = spec.to.year() == Period::MAX_YEAR && spec.to.month().unwrap_or(12) == 12;
    pb::Watch {
        id: def.id.to_string(),
        name: def.name.clone(),
        selector: Some(pb::RecordSelector {
            reporters: def.reporters.iter().map(party).collect(),
            partners: def.partners.iter().map(party).collect(),
            flows: match &spec.measure {
                crate::domain::Measure::Volume => Vec::new(),
                crate::domain::Measure::Flows(f) => f.iter().map(|f| i32::from(f.code())).collect(),
            },
            commodities,
            commodity_level,
            commodity_prefix,
            currency: spec.currency.to_string(),
            frequency: convert::frequency_to_pb(spec.frequency) as i32,
            period_from: if open_from {
                String::new()
            } else {
                spec.from.to_string()
            },
            period_to: if open_to {
                String::new()
            } else {
                spec.to.to_string()
            },
        }),
        granularity: match spec.granularity {
            Granularity::Year => pb::Granularity::Year,
            Granularity::Quarter => pb::Granularity::Quarter,
            Granularity::Month => pb::Granularity::Month,
        } as i32,
        thresholds: def
            .rules
            .thresholds
            .iter()
            .map(|t| convert::money_to_pb(Money::new(spec.currency, *t)))
            .collect(),
        record_high: def.rules.record_high,
        created_at: Some(created_at),
        series: def.describe(),
        rank: def.rules.rank.map(|rule| pb::RankRule {
            by: convert::rank_by_to_pb(rule.by).into(),
            top: rule.top,
        }),
        growth_thresholds_percent: def
            .rules
            .growth_thresholds
            .iter()
            .map(|bp| f64::from(*bp) / 100.0)
            .collect(),
        year_to_date: def.rules.year_to_date,
    }
}

/// An open subscription and the subscriber permit it holds while it lives.
pub(super) struct OpenSubscription {
    pub messages: stream::Subscription,
    pub permit: OwnedSemaphorePermit,
}

/// How a subscription that stopped without an error ends its stream: never
/// OK, so that the client resumes from its last sequence + 1.
pub(super) fn subscription_ended() -> Status {
    Status::unavailable("subscription ended (server shutting down); resume from the last sequence seen + 1")
}

impl MilestoneApi {
    /// Checks a `Subscribe` request and opens its subscription: the
    /// messages to send; when they stop, the stream ends with their error
    /// (a store failure) or [`subscription_ended`].
    pub(super) async fn open_subscription(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<OpenSubscription, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let wanted = EventFilter::parse(&request.kinds, &request.watch_ids)?;
        super::caught_up(&self.store, request.min_log_position, &metadata).await?;
        // Released when the stream is dropped: ended, or its client gone.
        let permit = self.subscribers.clone().try_acquire_owned().map_err(|_| {
            let max = self.limits.max_subscribers;
            Error::ResourceExhausted(format!(
                "{max} Subscribe streams are open, the most this server allows \
                 (max_subscribers, --max-subscribers); try again later"
            ))
        })?;
        let wanted = move |event: &Event| wanted.matches(event);
        // Served by `crate::serve`, the stream is polled by its connection's
        // task, which waits for the heads on its behalf.
        let messages = match extensions.get::<stream::RelayedBeat>() {
            Some(relayed) => {
                stream::subscribe_relayed(self.store.clone(), relayed, request.from_sequence, wanted)?
            }
            None => stream::subscribe(self.store.clone(), &self.heads, request.from_sequence, wanted)?,
        };
        Ok(OpenSubscription { messages, permit })
    }
}

/// Which events a subscriber or a listing wants.
#[derive(Clone, Default)]
struct EventFilter {
    kinds: BTreeSet<i32>,
    watch_ids: BTreeSet<String>,
}

impl EventFilter {
    fn parse(kinds: &[i32], watch_ids: &[String]) -> Result<Self> {
        let mut violations = Vec::new();
        for (i, k) in kinds.iter().enumerate() {
            if !matches!(pb::EventKind::try_from(*k), Ok(kind) if kind != pb::EventKind::Unspecified) {
                violations.push(Violation::new(
                    format!("kinds[{i}]"),
                    format!("{k} is not an event kind"),
                ));
            }
        }
        for (i, id) in watch_ids.iter().enumerate() {
            if let Err(e) = WatchId::parse(id) {
                violations.push(Violation::new(format!("watch_ids[{i}]"), e.0));
            }
        }
        if !violations.is_empty() {
            return Err(Error::InvalidArgument(violations));
        }
        Ok(EventFilter {
            kinds: kinds.iter().copied().collect(),
            watch_ids: watch_ids.iter().cloned().collect(),
        })
    }

    fn matches(&self, event: &Event) -> bool {
        let kind = match &event.kind {
            EventKind::RecordStored(_) => pb::EventKind::RecordStored,
            EventKind::ThresholdCrossed(_) => pb::EventKind::ThresholdCrossed,
            EventKind::RecordHigh(_) => pb::EventKind::RecordHigh,
            EventKind::RankChanged(_) => pb::EventKind::RankChanged,
            EventKind::GrowthCrossed(_) => pb::EventKind::GrowthCrossed,
            EventKind::YearToDate(_) => pb::EventKind::YearToDate,
        };
        let watch = event.kind.watch_id();
        (self.kinds.is_empty() || self.kinds.contains(&(kind as i32)))
            && (self.watch_ids.is_empty() || watch.is_some_and(|w| self.watch_ids.contains(w.as_str())))
    }
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl MilestoneService for MilestoneApi {
    async fn create_watch(
        &self,
        request: Request<pb::CreateWatchRequest>,
    ) -> Result<Response<pb::CreateWatchResponse>, Status> {
        Ok(Response::new(
            self.create_within_limit(request.into_inner()).await?,
        ))
    }

    async fn get_watch(
        &self,
        request: Request<pb::GetWatchRequest>,
    ) -> Result<Response<pb::GetWatchResponse>, Status> {
        let id = WatchId::parse(&request.get_ref().id).map_err(|e| Error::invalid("id", e.0))?;
        super::caught_up(
            &self.store,
            request.get_ref().min_log_position,
            request.metadata(),
        )
        .await?;
        match self.store.get_watch(&id)? {
            Some((def, created_at)) => Ok(Response::new(pb::GetWatchResponse {
                watch: Some(watch_to_pb(&def, created_at)),
            })),
            None => Err(Error::NotFound(format!("no watch {id}")).into()),
        }
    }

    async fn list_watches(
        &self,
        request: Request<pb::ListWatchesRequest>,
    ) -> Result<Response<pb::ListWatchesResponse>, Status> {
        let (metadata, request) = (request.metadata(), request.get_ref());
        let page = Page::parse(
            "ListWatches",
            &pb::ListWatchesRequest::default(),
            request.page_size,
            &request.page_token,
            self.limits.max_page_size,
        )?;
        super::caught_up(&self.store, request.min_log_position, metadata).await?;
        let all = self.store.list_watches()?;
        let (watches, last) = page.select(&all, |(d, _)| d.id.as_str().as_bytes());
        Ok(Response::new(pb::ListWatchesResponse {
            watches: watches.iter().map(|(d, t)| watch_to_pb(d, *t)).collect(),
            next_page_token: page.next_token(last),
        }))
    }

    async fn delete_watch(
        &self,
        request: Request<pb::DeleteWatchRequest>,
    ) -> Result<Response<pb::DeleteWatchResponse>, Status> {
        let mut request = request.into_inner();
        let id = std::mem::take(&mut request.request_id);
        let tag = request_id::tag("DeleteWatch", &id, &request)?;
        let id = WatchId::parse(&request.id).map_err(|e| Error::invalid("id", e.0))?;
        let applied = self
            .writes
            .apply(Command::new(Action::DeleteWatch(id), tag))
            .await?;
        let deleted = applied.outcome.into_watch()?;
        Ok(Response::new(pb::DeleteWatchResponse {
            watch: Some(watch_to_pb(&deleted.def, deleted.created_at)),
            log_position: applied.position,
        }))
    }

    type SubscribeStream = SubscribeStream;

    /// The server answers `Subscribe` itself (`super::subscribe`); this is
    /// the same stream, message by message, for a `MilestoneServiceServer`
    /// used on its own.
    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let OpenSubscription { messages, permit } = self.open_subscription(request).await?;
        let responses = tokio_stream::StreamExt::map(messages, move |message| {
            let _held = &permit;
            Ok(super::subscribe::to_pb(&message?)?)
        });
        let ended = tokio_stream::once(Err(subscription_ended()));
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::chain(
            responses, ended,
        ))))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let (metadata, request) = (request.metadata(), request.get_ref());
        super::caught_up(&self.store, request.min_log_position, metadata).await?;
        Ok(Response::new(self.list_events(request)?))
    }
}
