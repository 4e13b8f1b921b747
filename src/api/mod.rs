//! tonic services: translate proto <-> domain, map errors to Status.

mod convert;
mod trade;

pub use trade::TradeApi;
