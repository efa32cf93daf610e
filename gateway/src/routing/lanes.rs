//! Which buckets each version of a route holds.
//!
//! The promise to a release engineer: changing one version's percent moves
//! users only between that version and the default, never between two
//! non-default versions. Contiguous ranges laid end to end break it (raising
//! the first shifts every range after it), so each non-default version grows
//! from a fixed edge of its own:
//!
//! - one or two non-default versions: the first grows up from bucket 0, the
//!   second down from bucket 10,000; together they may hold every bucket;
//! - three or four: the space is cut in two halves of 5,000 buckets, and each
//!   pair shares one half the same way (at most 50% per pair).
//!
//! A version's range depends only on its own percent and its position, so a
//! percent change moves exactly the buckets between its old and new edge, and
//! those belonged to the default. (With three non-default versions whose
//! shares may each approach 100%, no layout can keep that promise: the third
//! version's first buckets would have to be both of the others' last.)

use super::bucket::BUCKETS;

/// The most non-default versions a route may have.
pub const MAX_NON_DEFAULT: usize = 4;

/// A half-open range of buckets `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketRange {
    pub start: u32,
    pub end: u32,
}

impl BucketRange {
    pub fn contains(self, bucket: u32) -> bool {
        (self.start..self.end).contains(&bucket)
    }

    pub fn len(self) -> u32 {
        self.end - self.start
    }

    pub fn is_empty(self) -> bool {
        self.start == self.end
    }
}

/// The lanes of one route: for each non-default version (by its index in the
/// route's `versions`), its range. Everything else is the default's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lanes {
    lanes: Vec<(usize, BucketRange)>,
}

impl Lanes {
    /// Lay out `shares`: (version index, basis points) of each non-default
    /// version in file order. Errors say which shares do not fit.
    pub fn layout(shares: &[(usize, u32)]) -> Result<Self, String> {
        if shares.len() > MAX_NON_DEFAULT {
            return Err(format!(
                "a route has at most {} versions besides the default ({} given)",
                MAX_NON_DEFAULT,
                shares.len()
            ));
        }
        let halves = if shares.len() <= 2 { 1 } else { 2 };
        let width = BUCKETS / halves;
        let mut lanes = Vec::with_capacity(shares.len());
        for (pair_no, pair) in shares.chunks(2).enumerate() {
            let start = width * pair_no as u32;
            let end = start + width;
            let used: u32 = pair.iter().map(|(_, bp)| bp).sum();
            if used > width {
                return Err(match halves {
                    1 => format!("the versions' percents add up to {:.2}%, more than 100%", f64::from(used) / 100.0),
                    _ => format!(
                        "with three or four versions besides the default, each pair shares one half of the \
                         users: these add up to {:.2}%, more than 50%",
                        f64::from(used) / 100.0
                    ),
                });
            }
            let (up, bp_up) = pair[0];
            lanes.push((up, BucketRange { start, end: start + bp_up }));
            if let Some(&(down, bp_down)) = pair.get(1) {
                lanes.push((down, BucketRange { start: end - bp_down, end }));
            }
        }
        Ok(Self { lanes })
    }

    /// The non-default version holding `bucket`, or `None` for the default.
    #[inline]
    pub fn version_of(&self, bucket: u32) -> Option<usize> {
        self.lanes.iter().find(|(_, r)| r.contains(bucket)).map(|(v, _)| *v)
    }

    /// The range of a non-default version.
    pub fn range_of(&self, version: usize) -> Option<BucketRange> {
        self.lanes.iter().find(|(v, _)| *v == version).map(|(_, r)| *r)
    }

    pub fn iter(&self) -> impl Iterator<Item = (usize, BucketRange)> + '_ {
        self.lanes.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_canary_grows_from_zero_as_before() {
        let lanes = Lanes::layout(&[(1, 1000)]).expect("fits");
        assert_eq!(lanes.range_of(1), Some(BucketRange { start: 0, end: 1000 }));
        assert_eq!(lanes.version_of(999), Some(1));
        assert_eq!(lanes.version_of(1000), None);
    }

    #[test]
    fn two_versions_grow_from_opposite_edges() {
        let lanes = Lanes::layout(&[(1, 1000), (2, 250)]).expect("fits");
        assert_eq!(lanes.range_of(2), Some(BucketRange { start: 9750, end: 10_000 }));
        assert!(Lanes::layout(&[(1, 6000), (2, 4000)]).is_ok());
        assert!(Lanes::layout(&[(1, 6000), (2, 4001)]).is_err());
    }

    #[test]
    fn four_versions_share_two_halves() {
        let lanes = Lanes::layout(&[(1, 100), (2, 200), (3, 300), (4, 400)]).expect("fits");
        assert_eq!(lanes.range_of(3), Some(BucketRange { start: 5000, end: 5300 }));
        assert_eq!(lanes.range_of(4), Some(BucketRange { start: 9600, end: 10_000 }));
        let err = Lanes::layout(&[(1, 3000), (2, 2500), (3, 1)]).expect_err("pair over half");
        assert!(err.contains("more than 50%"), "{err}");
        assert!(Lanes::layout(&[(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]).is_err());
    }

    /// Every bucket, over every percent of one version with the others fixed:
    /// a bucket that changes hands moves between that version and the default.
    #[test]
    fn changing_one_percent_only_trades_with_the_default() {
        for shares in [vec![(1, 700), (2, 300)], vec![(1, 700), (2, 300), (3, 1000), (4, 200)]] {
            for (moving, _) in shares.clone() {
                let mut before = Lanes::layout(&shares).expect("fits");
                for bp in (0..=3000).step_by(37) {
                    let changed: Vec<(usize, u32)> =
                        shares.iter().map(|&(v, b)| if v == moving { (v, bp) } else { (v, b) }).collect();
                    let Ok(after) = Lanes::layout(&changed) else { continue };
                    for bucket in 0..BUCKETS {
                        let (a, b) = (before.version_of(bucket), after.version_of(bucket));
                        if a != b {
                            assert!(
                                (a.is_none() && b == Some(moving)) || (a == Some(moving) && b.is_none()),
                                "bucket {bucket}: {a:?} -> {b:?} while moving version {moving}"
                            );
                        }
                    }
                    before = after;
                }
            }
        }
    }
}
