//! Skip-scan: visit the keys whose fixed-width components each lie in a set
//! of ranges, seeking past everything else. The cost follows the entries
//! that match (plus one seek per distinct value of an open component), not
//! the size of the store.

use crate::error::Result;

/// Called with each visited key and value.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;

/// Allowed values of one fixed-width key component: inclusive byte ranges,
/// sorted and disjoint. A range whose ends are equal is a single value.
pub struct Component {
    pub width: usize,
    pub ranges: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Component {
    pub fn values<I: IntoIterator<Item = Vec<u8>>>(width: usize, values: I) -> Self {
        Component {
            width,
            ranges: values.into_iter().map(|v| (v.clone(), v)).collect(),
        }
    }

    pub fn between(lo: Vec<u8>, hi: Vec<u8>) -> Self {
        Component {
            width: lo.len(),
            ranges: vec![(lo, hi)],
        }
    }
}

/// Calls `visit` with each entry whose key is `prefix`, then one allowed
/// value of each component, then anything. All components but the last are
/// enumerated (single values directly, ranges by seeking from one present
/// value to the next); the last is read as contiguous ranges.
pub fn skip_scan(
    tree: &sled::Tree,
    prefix: &[u8],
    components: &[Component],
    visit: &mut Visit<'_>,
) -> Result<()> {
    let mut prefix = prefix.to_vec();
    walk(tree, &mut prefix, components, visit)
}

fn walk(
    tree: &sled::Tree,
    prefix: &mut Vec<u8>,
    components: &[Component],
    visit: &mut Visit<'_>,
) -> Result<()> {
    let Some((component, rest)) = components.split_first() else {
        return Ok(());
    };
    let at = prefix.len();
    let part = |key: &[u8]| key.get(at..at + component.width).map(<[u8]>::to_vec);
    let beyond = |key: &[u8], hi: &[u8]| key.get(at..at + component.width).is_none_or(|p| p > hi);
    for (lo, hi) in &component.ranges {
        if rest.is_empty() {
            let mut start = prefix.clone();
            start.extend_from_slice(lo);
            for entry in tree.range(start..) {
                let (k, v) = entry?;
                if !k.starts_with(prefix) || beyond(&k, hi) {
                    break;
                }
                visit(&k, &v)?;
            }
        } else if lo == hi {
            prefix.extend_from_slice(lo);
            // A long list of values (every country, thousands of codes)
            // multiplies with the lists after it: visit only the values
            // that are present, one seek each, so that the cost follows the
            // stored entries rather than the product of the lists.
            if component.ranges.len() <= LIST_WITHOUT_SEEKS || has_prefix(tree, prefix)? {
                walk(tree, prefix, rest, visit)?;
            }
            prefix.truncate(at);
        } else {
            let mut seek = prefix.clone();
            seek.extend_from_slice(lo);
            loop {
                let Some(entry) = tree.range(seek.as_slice()..).next() else {
                    break;
                };
                let (k, _) = entry?;
                if !k.starts_with(prefix) {
                    break;
                }
                let Some(value) = part(&k).filter(|p| p <= hi) else {
                    break;
                };
                prefix.extend_from_slice(&value);
                walk(tree, prefix, rest, visit)?;
                let next = successor(prefix);
                prefix.truncate(at);
                match next {
                    Some(next) => seek = next,
                    None => break,
                }
            }
        }
    }
    Ok(())
}

/// Lists of at most this many values are walked value by value without
/// first checking that each is present (a seek per value would cost more
/// than it saves).
const LIST_WITHOUT_SEEKS: usize = 16;

/// Whether any key starts with `prefix`.
fn has_prefix(tree: &sled::Tree, prefix: &[u8]) -> Result<bool> {
    Ok(match tree.range(prefix..).next() {
        Some(entry) => entry?.0.starts_with(prefix),
        None => false,
    })
}

/// The smallest key greater than every key that starts with `bytes`.
pub(super) fn successor(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = bytes.to_vec();
    while let Some(last) = out.pop() {
        if last < 0xff {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values of the keys under `x` that the skip scan visits, in order.
    fn visited(db: &sled::Db, components: &[Component]) -> Vec<Vec<u8>> {
        let mut seen = Vec::new();
        skip_scan(db, b"x", components, &mut |_, v| {
            seen.push(v.to_vec());
            Ok(())
        })
        .unwrap();
        seen
    }

    #[test]
    fn visits_exactly_the_matching_keys() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        for a in 0u8..5 {
            for b in 0u8..5 {
                for c in 0u8..5 {
                    db.insert([b'x', a, b, c, 9], &[a, b, c]).unwrap();
                }
            }
        }
        db.insert([b'y', 1, 1, 1, 9], &[0]).unwrap();
        let components = [
            Component::values(1, [vec![1], vec![3]]),
            Component::between(vec![2], vec![4]),
            Component {
                width: 1,
                ranges: vec![(vec![0], vec![0]), (vec![3], vec![4])],
            },
        ];
        let seen = visited(&db, &components);
        let mut expected = Vec::new();
        for a in [1u8, 3] {
            for b in 2u8..=4 {
                for c in [0u8, 3, 4] {
                    expected.push(vec![a, b, c]);
                }
            }
        }
        assert_eq!(seen, expected);
    }

    #[test]
    fn long_lists_visit_the_same_keys() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        for a in [3u8, 40, 41] {
            for b in [7u8, 200] {
                for c in 0u8..3 {
                    db.insert([b'x', a, b, c], &[a, b, c]).unwrap();
                }
            }
        }
        // Every value of the first two components: 65,536 combinations, of
        // which six are stored.
        let components = [
            Component::values(1, (0..=255u8).map(|v| vec![v])),
            Component::values(1, (0..=255u8).map(|v| vec![v])),
            Component::between(vec![1], vec![2]),
        ];
        let seen = visited(&db, &components);
        let mut expected = Vec::new();
        for a in [3u8, 40, 41] {
            for b in [7u8, 200] {
                for c in 1u8..=2 {
                    expected.push(vec![a, b, c]);
                }
            }
        }
        assert_eq!(seen, expected);
    }

    #[test]
    fn successor_skips_a_whole_prefix() {
        assert_eq!(successor(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(successor(&[1, 0xff]), Some(vec![2]));
        assert_eq!(successor(&[0xff]), None);
    }
}
