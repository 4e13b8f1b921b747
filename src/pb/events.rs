//! What every event answers whatever its kind: the kind as filters name it,
//! the watch of a milestone, the headline.

use super::{Event, EventKind, event::Kind};

impl Event {
    /// The event's kind, as `Subscribe` and `ListEvents` filter it.
    pub fn kind_code(&self) -> EventKind {
        match &self.kind {
            None => EventKind::Unspecified,
            Some(Kind::RecordStored(_)) => EventKind::RecordStored,
            Some(Kind::ThresholdCrossed(_)) => EventKind::ThresholdCrossed,
            Some(Kind::RecordHigh(_)) => EventKind::RecordHigh,
            Some(Kind::RankChanged(_)) => EventKind::RankChanged,
            Some(Kind::GrowthCrossed(_)) => EventKind::GrowthCrossed,
            Some(Kind::YearToDate(_)) => EventKind::YearToDate,
        }
    }

    /// The watch a milestone belongs to; `None` for a record event.
    pub fn watch_id(&self) -> Option<&str> {
        self.kind.as_ref().and_then(|k| k.milestone()).map(|(id, _)| id)
    }

    /// A milestone's headline; `None` for a record event.
    pub fn headline(&self) -> Option<&str> {
        self.kind.as_ref().and_then(|k| k.milestone()).map(|(_, h)| h)
    }
}

impl Kind {
    /// A milestone's watch id and headline.
    fn milestone(&self) -> Option<(&str, &str)> {
        match self {
            Kind::RecordStored(_) => None,
            Kind::ThresholdCrossed(m) => Some((&m.watch_id, &m.headline)),
            Kind::RecordHigh(m) => Some((&m.watch_id, &m.headline)),
            Kind::RankChanged(m) => Some((&m.watch_id, &m.headline)),
            Kind::GrowthCrossed(m) => Some((&m.watch_id, &m.headline)),
            Kind::YearToDate(m) => Some((&m.watch_id, &m.headline)),
        }
    }

    /// A milestone's watch id, to change (a test compares the milestones of
    /// twin watches without it); `None` for a record event.
    pub fn watch_id_mut(&mut self) -> Option<&mut String> {
        match self {
            Kind::RecordStored(_) => None,
            Kind::ThresholdCrossed(m) => Some(&mut m.watch_id),
            Kind::RecordHigh(m) => Some(&mut m.watch_id),
            Kind::RankChanged(m) => Some(&mut m.watch_id),
            Kind::GrowthCrossed(m) => Some(&mut m.watch_id),
            Kind::YearToDate(m) => Some(&mut m.watch_id),
        }
    }
}
