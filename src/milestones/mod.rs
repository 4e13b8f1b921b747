//! Watch evaluation: pure functions, no I/O. The store calls them inside
//! the write that changes a series, so milestone events are decided and
//! stored atomically with the data that caused them.

mod evaluate;
mod headline;

pub use evaluate::{
    Cause, Direction, Milestone, Ranked, Series, Tally, Updates, arm, backfill, evaluate, growth_percent,
};
pub use headline::{format_amount, format_bp, headline, months_label};
