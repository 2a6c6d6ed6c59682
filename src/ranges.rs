//! A set of byte ranges: which parts of a file being downloaded are present.
//!
//! Invariant: the ranges are non-empty, sorted, and neither overlap nor touch (adjacent ranges
//! are merged), so every set of bytes has exactly one representation.

use serde::{Deserialize, Serialize};
use std::ops::Range;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<(u64, u64)>", into = "Vec<(u64, u64)>")]
pub struct RangeSet {
    ranges: Vec<Range<u64>>,
}

impl From<Vec<(u64, u64)>> for RangeSet {
    /// Normalizes whatever it is given (a file written by an older version, or damaged).
    fn from(pairs: Vec<(u64, u64)>) -> Self {
        let mut set = Self::default();
        for (start, end) in pairs {
            set.insert(start..end);
        }
        set
    }
}

impl From<RangeSet> for Vec<(u64, u64)> {
    fn from(set: RangeSet) -> Self {
        set.ranges.into_iter().map(|r| (r.start, r.end)).collect()
    }
}

impl RangeSet {
    /// Adds `r` (an empty range adds nothing).
    pub fn insert(&mut self, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        // Every range that overlaps or touches `r` lies in `first..last`.
        let first = self.ranges.partition_point(|x| x.end < r.start);
        let last = self.ranges.partition_point(|x| x.start <= r.end);
        let merged = if first < last {
            self.ranges[first].start.min(r.start)..self.ranges[last - 1].end.max(r.end)
        } else {
            r
        };
        self.ranges.splice(first..last, [merged]);
    }

    /// Takes `r` out (an empty range takes nothing).
    pub fn remove(&mut self, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        // Every range that overlaps `r` lies in `first..last`; their ends outside `r` stay.
        let first = self.ranges.partition_point(|x| x.end <= r.start);
        let last = self.ranges.partition_point(|x| x.start < r.end);
        if first >= last {
            return;
        }
        let (head, tail) = (self.ranges[first].start, self.ranges[last - 1].end);
        let kept = [head..r.start, r.end..tail];
        self.ranges
            .splice(first..last, kept.into_iter().filter(|k| k.start < k.end));
    }

    /// Whether any byte of `r` is present.
    pub fn intersects(&self, r: Range<u64>) -> bool {
        let i = self.ranges.partition_point(|x| x.end <= r.start);
        r.start < r.end && self.ranges.get(i).is_some_and(|x| x.start < r.end)
    }

    /// Whether every byte of `r` is present (always true for an empty range).
    pub fn covers(&self, r: Range<u64>) -> bool {
        if r.start >= r.end {
            return true;
        }
        let i = self.ranges.partition_point(|x| x.end <= r.start);
        self.ranges
            .get(i)
            .is_some_and(|x| x.start <= r.start && r.end <= x.end)
    }

    /// The parts of `r` that are not present, in order.
    pub fn missing(&self, r: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        let mut at = r.start;
        let first = self.ranges.partition_point(|x| x.end <= r.start);
        for x in &self.ranges[first..] {
            if x.start >= r.end {
                break;
            }
            if x.start > at {
                out.push(at..x.start);
            }
            at = at.max(x.end);
        }
        if at < r.end {
            out.push(at..r.end);
        }
        out
    }

    /// Bytes present.
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.ranges.iter().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn inserts_merge_overlapping_and_touching_ranges() {
        let mut s = RangeSet::default();
        s.insert(10..20);
        s.insert(30..40);
        s.insert(20..25);
        assert_eq!(s.iter().collect::<Vec<_>>(), [10..25, 30..40]);
        s.insert(5..35);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![5..40]);
        s.insert(7..7);
        assert_eq!(s.bytes(), 35);
        assert!(s.covers(5..40) && !s.covers(4..6) && s.covers(9..9));
        assert_eq!(s.missing(0..50), [0..5, 40..50]);
        s.remove(10..12);
        s.remove(38..60);
        assert_eq!(s.iter().collect::<Vec<_>>(), [5..10, 12..38]);
        assert!(s.intersects(37..50) && !s.intersects(38..50) && !s.intersects(11..11));
    }

    #[test]
    fn serializes_as_pairs_and_normalizes_what_it_reads() {
        let s: RangeSet = serde_json::from_str("[[30,40],[0,10],[10,20],[5,6],[50,50]]").unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), [0..20, 30..40]);
        assert_eq!(serde_json::to_string(&s).unwrap(), "[[0,20],[30,40]]");
    }

    fn model(ranges: &[(u64, u64)]) -> BTreeSet<u64> {
        ranges.iter().flat_map(|&(a, b)| a..b).collect()
    }

    proptest! {
        #[test]
        fn behaves_like_a_set_of_bytes(
            inserts in prop::collection::vec((0u64..200, 0u64..40), 0..20),
            removes in prop::collection::vec((0u64..200, 0u64..40), 0..5),
            query in (0u64..220, 0u64..60),
        ) {
            let pairs: Vec<(u64, u64)> = inserts.iter().map(|&(a, n)| (a, a + n)).collect();
            let mut set = RangeSet::default();
            for &(a, b) in &pairs {
                set.insert(a..b);
            }
            let mut bytes = model(&pairs);
            for &(a, n) in &removes {
                set.remove(a..a + n);
                bytes.retain(|b| !(a..a + n).contains(b));
            }

            // The invariant: sorted, non-empty, neither overlapping nor touching.
            let rs: Vec<Range<u64>> = set.iter().collect();
            prop_assert!(rs.iter().all(|r| r.start < r.end));
            prop_assert!(rs.windows(2).all(|w| w[0].end < w[1].start));
            prop_assert_eq!(model(&rs.iter().map(|r| (r.start, r.end)).collect::<Vec<_>>()), bytes.clone());
            prop_assert_eq!(set.bytes(), bytes.len() as u64);

            let q = query.0..query.0 + query.1;
            prop_assert_eq!(set.covers(q.clone()), q.clone().all(|b| bytes.contains(&b)));
            prop_assert_eq!(set.intersects(q.clone()), q.clone().any(|b| bytes.contains(&b)));
            let missing = set.missing(q.clone());
            let want: BTreeSet<u64> = q.clone().filter(|b| !bytes.contains(b)).collect();
            prop_assert_eq!(model(&missing.iter().map(|r| (r.start, r.end)).collect::<Vec<_>>()), want);
            prop_assert!(missing.windows(2).all(|w| w[0].end < w[1].start));
            prop_assert!(missing.iter().all(|r| r.start < r.end && q.start <= r.start && r.end <= q.end));
        }
    }
}
