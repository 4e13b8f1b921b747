//! Watch evaluation: pure functions, no I/O. The store calls them inside
//! the write that changes a series, so milestone events are decided and
//! stored atomically with the data that caused them.

mod evaluate;
mod headline;

pub use evaluate::{Cause, Direction, Milestone, Series, arm, backfill, evaluate};
pub use headline::{format_amount, headline};
