//! The newest events, decoded, shared by every subscriber.
//!
//! A live subscriber reads each event right after it is stored. Read from
//! sled, that is one tree walk and one decode of the event's block per
//! subscriber and event: with 10,000 subscribers the same event is decoded
//! 10,000 times. The writer hands the events of each group commit here once
//! they are durable, and subscribers take them as shared references.
//!
//! The ring only ever holds a gap-free run of durable events ending at the
//! durable head; a reader gets an answer from it only when the run holds the
//! first event it asks for, and otherwise reads sled as before.

use std::collections::VecDeque;
use std::sync::{Arc, PoisonError, RwLock};

use crate::domain::Event;

/// Events kept: several group commits of single-record writes, and the tail
/// of a bulk load.
pub const CAPACITY: usize = 4096;

#[derive(Default)]
pub struct RecentEvents {
    ring: RwLock<VecDeque<Arc<Event>>>,
}

impl RecentEvents {
    /// Adds events that just became durable, in sequence order. Events that
    /// do not follow the newest held start a new run.
    pub fn extend(&self, events: impl IntoIterator<Item = Event>) {
        let mut events = events.into_iter().peekable();
        let Some(first) = events.peek().map(|e| e.sequence) else {
            return;
        };
        let mut ring = self.ring.write().unwrap_or_else(PoisonError::into_inner);
        if ring.back().is_some_and(|e| e.sequence + 1 != first) {
            ring.clear();
        }
        ring.extend(events.map(Arc::new));
        let excess = ring.len().saturating_sub(CAPACITY);
        ring.drain(..excess);
    }

    /// Forgets everything: after a failed commit, the events applied since
    /// the last durable head may never reach the disk.
    pub fn clear(&self) {
        self.ring.write().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// Appends the events from `next` through `head`, at most `limit`, to
    /// `out` when the ring holds `next`, and says so; `false` (nothing
    /// appended) when they must be read from the store.
    pub fn read_into(&self, next: u64, head: u64, limit: usize, out: &mut VecDeque<Arc<Event>>) -> bool {
        let ring = self.ring.read().unwrap_or_else(PoisonError::into_inner);
        let (Some(oldest), Some(newest)) = (ring.front(), ring.back()) else {
            return false;
        };
        if next < oldest.sequence || next > newest.sequence {
            return false;
        }
        let Ok(skip) = usize::try_from(next - oldest.sequence) else {
            return false;
        };
        out.extend(
            ring.iter()
                .skip(skip)
                .take_while(|e| e.sequence <= head)
                .take(limit)
                .cloned(),
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(range: std::ops::RangeInclusive<u64>) -> Vec<Event> {
        range.map(crate::domain::record_stored_for_tests).collect()
    }

    /// What `read_into` appends, as sequences; `None` when it says "read
    /// the store".
    fn read(recent: &RecentEvents, next: u64, head: u64, limit: usize) -> Option<Vec<u64>> {
        let mut out = VecDeque::new();
        let held = recent.read_into(next, head, limit, &mut out);
        held.then(|| out.iter().map(|e| e.sequence).collect())
    }

    #[test]
    fn answers_only_from_a_gap_free_run_that_holds_the_start() {
        let recent = RecentEvents::default();
        assert_eq!(read(&recent, 1, 10, 100), None, "empty");
        recent.extend(events(5..=9));
        assert_eq!(read(&recent, 4, 9, 100), None, "before the run: sled");
        assert_eq!(read(&recent, 6, 8, 100), Some(vec![6, 7, 8]), "up to head");
        assert_eq!(read(&recent, 6, 9, 2), Some(vec![6, 7]), "at most limit");
        assert_eq!(read(&recent, 10, 10, 100), None, "past the run");
        recent.extend(events(12..=13));
        assert_eq!(read(&recent, 6, 13, 100), None, "a gap starts a new run");
        assert_eq!(read(&recent, 12, 13, 100), Some(vec![12, 13]));
        recent.clear();
        assert_eq!(read(&recent, 12, 13, 100), None);
    }

    #[test]
    fn keeps_the_newest_capacity_events() {
        let recent = RecentEvents::default();
        recent.extend(events(1..=CAPACITY as u64 + 10));
        assert_eq!(read(&recent, 10, 10, 1), None);
        assert_eq!(read(&recent, 11, 11, 1), Some(vec![11]));
    }
}
