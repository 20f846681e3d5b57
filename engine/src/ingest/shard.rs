//! Deterministic shards of a manifest, so N machines can each embed their part of it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Shard `index` of `count` (0-based): the rows whose 1-based number `r` has
/// `(r - 1) % count == index`. Every row, good or bad, belongs to exactly one shard, so the
/// shards' outputs and errors together cover the manifest once. Rows are dealt round-robin
/// rather than in ranges, so the shards are even without knowing the row count first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole manifest as one shard.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: usize, count: usize) -> Result<Shard> {
        if count == 0 || index >= count {
            return Err(Error::InvalidArgument(format!(
                "shard {index}/{count}: expected I/N with 0 <= I < N"
            )));
        }
        Ok(Shard { index, count })
    }

    /// Whether the 1-based manifest row `row` is in this shard.
    pub fn contains(&self, row: usize) -> bool {
        row.saturating_sub(1) % self.count == self.index
    }

    /// The file name stem of this shard's outputs: `part-00003-of-00016`.
    pub fn file_stem(&self) -> String {
        format!("part-{:05}-of-{:05}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = Error;

    fn from_str(s: &str) -> Result<Shard> {
        let bad = || Error::InvalidArgument(format!("shard `{s}`: expected I/N, e.g. 0/4"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let i = i.trim().parse().map_err(|_| bad())?;
        let n = n.trim().parse().map_err(|_| bad())?;
        Shard::new(i, n)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_row_once() {
        let shards: Vec<Shard> = (0..4).map(|i| Shard::new(i, 4).unwrap()).collect();
        for row in 1..=50 {
            assert_eq!(shards.iter().filter(|s| s.contains(row)).count(), 1);
        }
        assert!(shards[0].contains(1) && shards[1].contains(2) && shards[0].contains(5));
    }

    #[test]
    fn shards_parse_and_refuse_nonsense() {
        assert_eq!(
            "2/8".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 8 }
        );
        for bad in ["4/4", "1/0", "x/2", "3", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert_eq!(
            Shard::new(3, 16).unwrap().file_stem(),
            "part-00003-of-00016"
        );
    }
}
