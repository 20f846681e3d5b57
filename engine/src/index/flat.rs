//! Exact search by scanning every vector: for small collections, for tests, and as the recall
//! reference the HNSW index is measured against.

use std::collections::{BinaryHeap, HashMap};
use std::sync::{PoisonError, RwLock};

use super::graph::{push_bounded, Scored};
use super::{Hit, VectorIndex};
use crate::error::{Error, Result};
use crate::kernels::vector::{normalized, Dot};

#[derive(Default)]
struct Points {
    keys: Vec<u64>,
    /// Unit vectors, `dim` values each, in the order of `keys`.
    vectors: Vec<f32>,
    position: HashMap<u64, usize>,
}

/// An exact index. Deletes remove points outright, so it never holds tombstones.
pub struct FlatIndex {
    dim: usize,
    dot: Dot,
    points: RwLock<Points>,
}

impl FlatIndex {
    pub fn new(dim: usize) -> Result<Self> {
        if dim == 0 {
            return Err(Error::InvalidArgument(
                "index dimension must be positive".into(),
            ));
        }
        Ok(FlatIndex {
            dim,
            dot: Dot::best(),
            points: RwLock::new(Points::default()),
        })
    }

    fn unit(&self, what: &str, vector: &[f32]) -> Result<Vec<f32>> {
        if vector.len() != self.dim {
            return Err(Error::BadVector {
                item: what.to_string(),
                field: "vector".into(),
                reason: format!("{} values, the index holds {}", vector.len(), self.dim),
            });
        }
        normalized(vector).ok_or_else(|| Error::BadVector {
            item: what.to_string(),
            field: "vector".into(),
            reason: "zero or non-finite vectors have no direction".into(),
        })
    }

    fn put(&self, points: &mut Points, key: u64, unit: &[f32]) {
        match points.position.get(&key) {
            Some(&at) => points.vectors[at * self.dim..(at + 1) * self.dim].copy_from_slice(unit),
            None => {
                points.position.insert(key, points.keys.len());
                points.keys.push(key);
                points.vectors.extend_from_slice(unit);
            }
        }
    }
}

impl VectorIndex for FlatIndex {
    fn dim(&self) -> usize {
        self.dim
    }

    fn insert(&self, key: u64, vector: &[f32]) -> Result<()> {
        let unit = self.unit(&format!("key {key}"), vector)?;
        let mut points = self.points.write().unwrap_or_else(PoisonError::into_inner);
        self.put(&mut points, key, &unit);
        Ok(())
    }

    fn insert_batch(&self, batch: &[(u64, Vec<f32>)]) -> Result<()> {
        let units = batch
            .iter()
            .map(|(key, v)| Ok((*key, self.unit(&format!("key {key}"), v)?)))
            .collect::<Result<Vec<_>>>()?;
        let mut points = self.points.write().unwrap_or_else(PoisonError::into_inner);
        for (key, unit) in units {
            self.put(&mut points, key, &unit);
        }
        Ok(())
    }

    fn delete(&self, key: u64) -> Result<bool> {
        let mut points = self.points.write().unwrap_or_else(PoisonError::into_inner);
        let Some(at) = points.position.remove(&key) else {
            return Ok(false);
        };
        let last = points.keys.len() - 1;
        points.keys.swap_remove(at);
        if at != last {
            let moved = points.keys[at];
            points.position.insert(moved, at);
            let (head, tail) = points.vectors.split_at_mut(last * self.dim);
            head[at * self.dim..(at + 1) * self.dim].copy_from_slice(tail);
        }
        points.vectors.truncate(last * self.dim);
        Ok(true)
    }

    fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: Option<&dyn Fn(u64) -> bool>,
    ) -> Result<Vec<Hit>> {
        let q = self.unit("query", query)?;
        let points = self.points.read().unwrap_or_else(PoisonError::into_inner);
        let mut top = BinaryHeap::with_capacity(k + 1);
        if k > 0 {
            for (i, (key, v)) in points
                .keys
                .iter()
                .zip(points.vectors.chunks_exact(self.dim))
                .enumerate()
            {
                if filter.is_none_or(|f| f(*key)) {
                    let dist = -self.dot.dot(&q, v);
                    push_bounded(&mut top, Scored { dist, id: i as u32 }, k);
                }
            }
        }
        let mut found = top.into_vec();
        found.sort_unstable();
        Ok(found
            .into_iter()
            .map(|s| Hit {
                key: points.keys[s.id as usize],
                score: (-s.dist).clamp(-1.0, 1.0),
            })
            .collect())
    }

    fn len(&self) -> usize {
        self.points
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys
            .len()
    }

    fn tombstones(&self) -> usize {
        0
    }
}
