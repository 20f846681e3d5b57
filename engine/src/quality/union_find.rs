//! Disjoint sets over `0..n`, for turning pairwise "is a duplicate of" links into groups.

/// Union–find with path halving and union by size: near-constant time per operation, so
/// grouping a million links costs milliseconds.
#[derive(Debug, Clone)]
pub struct UnionFind {
    parent: Vec<usize>,
    size: Vec<usize>,
}

impl UnionFind {
    /// `n` singleton sets, `{0}, {1}, …, {n-1}`.
    pub fn new(n: usize) -> Self {
        Self {
            parent: (0..n).collect(),
            size: vec![1; n],
        }
    }

    /// Number of elements, `n`.
    pub fn len(&self) -> usize {
        self.parent.len()
    }

    /// Whether there are no elements at all.
    pub fn is_empty(&self) -> bool {
        self.parent.is_empty()
    }

    /// The representative of `x`'s set.
    pub fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    /// Number of elements in `x`'s set.
    pub fn set_size(&mut self, x: usize) -> usize {
        let root = self.find(x);
        self.size[root]
    }

    /// Merges the sets of `a` and `b`; returns `false` if they were already one set.
    pub fn union(&mut self, a: usize, b: usize) -> bool {
        let (mut ra, mut rb) = (self.find(a), self.find(b));
        if ra == rb {
            return false;
        }
        if self.size[ra] < self.size[rb] {
            std::mem::swap(&mut ra, &mut rb);
        }
        self.parent[rb] = ra;
        self.size[ra] += self.size[rb];
        true
    }

    /// Merges `a` and `b` only if the merged set would hold at most `max_size` elements.
    /// Returns whether they are in one set afterwards.
    pub fn union_capped(&mut self, a: usize, b: usize, max_size: usize) -> bool {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return true;
        }
        if self.size[ra] + self.size[rb] > max_size {
            return false;
        }
        self.union(ra, rb)
    }

    /// The sets with at least `min_size` elements, each sorted, ordered by their smallest
    /// element so the output is deterministic.
    pub fn groups(&mut self, min_size: usize) -> Vec<Vec<usize>> {
        let n = self.parent.len();
        let mut by_root: std::collections::HashMap<usize, Vec<usize>> =
            std::collections::HashMap::new();
        for x in 0..n {
            let root = self.find(x);
            if self.size[root] >= min_size {
                by_root.entry(root).or_default().push(x);
            }
        }
        // Elements were pushed in increasing order, so each group is already sorted.
        let mut groups: Vec<Vec<usize>> = by_root.into_values().collect();
        groups.sort_unstable_by_key(|g| g[0]);
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unions_make_groups() {
        let mut uf = UnionFind::new(6);
        assert!(uf.union(0, 1));
        assert!(uf.union(1, 2));
        assert!(!uf.union(0, 2));
        assert!(uf.union(4, 5));
        assert_eq!(uf.set_size(2), 3);
        assert_eq!(uf.groups(2), vec![vec![0, 1, 2], vec![4, 5]]);
        assert_eq!(uf.groups(1).len(), 3);
    }

    #[test]
    fn capped_union_refuses_to_grow_past_the_cap() {
        let mut uf = UnionFind::new(5);
        assert!(uf.union_capped(0, 1, 3));
        assert!(uf.union_capped(1, 2, 3));
        assert!(!uf.union_capped(2, 3, 3));
        assert!(uf.union_capped(3, 4, 3));
        assert!(uf.union_capped(0, 2, 3), "already joined counts as joined");
        assert_eq!(uf.groups(2), vec![vec![0, 1, 2], vec![3, 4]]);
    }
}
