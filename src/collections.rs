//! Hash maps for hot paths.

use std::collections::HashMap;

/// Hash maps keyed by record keys, rollup keys and column names: foldhash
/// is several times faster than SipHash and still seeded at random — so
/// their order is never used where it could reach stored state.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
