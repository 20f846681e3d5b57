//! Unit vectors laid out for fast scans: each padded with zeros to a multiple of 16 values and
//! aligned to a 64-byte cache line, so a 384-d vector is exactly 24 lines and every SIMD load is
//! aligned. Vectors live in fixed-size chunks shared (via `Arc`) between successive snapshots:
//! publishing new points copies at most the last, partly filled chunk, never the whole set.

use std::sync::Arc;

/// Values per block: one cache line of `f32`.
pub(crate) const BLOCK: usize = 16;
/// Vectors per chunk (a power of two so the chunk lookup is a shift).
const CHUNK_BITS: usize = 12;
const CHUNK: usize = 1 << CHUNK_BITS;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Block([f32; BLOCK]);

const ZERO_BLOCK: Block = Block([0.0; BLOCK]);

/// The padded length for vectors of `dim` values.
pub(crate) fn padded(dim: usize) -> usize {
    dim.div_ceil(BLOCK).max(1) * BLOCK
}

/// A query or vector copied into aligned, zero-padded storage.
pub(crate) struct Padded {
    blocks: Vec<Block>,
}

impl Padded {
    pub(crate) fn new(v: &[f32]) -> Self {
        let mut blocks = vec![ZERO_BLOCK; padded(v.len()) / BLOCK];
        for (i, x) in v.iter().enumerate() {
            blocks[i / BLOCK].0[i % BLOCK] = *x;
        }
        Padded { blocks }
    }

    pub(crate) fn as_slice(&self) -> &[f32] {
        as_f32s(&self.blocks)
    }
}

fn as_f32s(blocks: &[Block]) -> &[f32] {
    // SAFETY: `Block` is `repr(C)` around `[f32; 16]` with no padding (64 bytes, align 64), so
    // `n` blocks are exactly `16 n` consecutive, initialised `f32`s.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr() as *const f32, blocks.len() * BLOCK) }
}

/// Append-only, chunked storage of padded vectors; cloning shares every chunk.
#[derive(Clone)]
pub(crate) struct Arena {
    /// Padded length of each vector.
    stride: usize,
    blocks_per_vector: usize,
    chunks: Vec<Arc<[Block]>>,
    len: usize,
}

impl Arena {
    pub(crate) fn new(dim: usize) -> Self {
        let stride = padded(dim);
        Arena {
            stride,
            blocks_per_vector: stride / BLOCK,
            chunks: Vec::new(),
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Padded length of each vector.
    pub(crate) fn stride(&self) -> usize {
        self.stride
    }

    /// The padded vector `id` (`id < len`).
    #[inline]
    pub(crate) fn get(&self, id: usize) -> &[f32] {
        let chunk = &self.chunks[id >> CHUNK_BITS];
        let start = (id & (CHUNK - 1)) * self.blocks_per_vector;
        as_f32s(&chunk[start..start + self.blocks_per_vector])
    }

    /// A copy with `vectors` (each of the arena's dimension or shorter) appended. Full chunks are
    /// shared with `self`; only the last partial chunk is copied.
    pub(crate) fn extended<'a>(&self, vectors: impl IntoIterator<Item = &'a [f32]>) -> Arena {
        let mut out = self.clone();
        let mut tail: Vec<Block> = match out.chunks.last() {
            Some(last) if !out.len.is_multiple_of(CHUNK) => {
                let v = last.to_vec();
                out.chunks.pop();
                v
            }
            _ => Vec::new(),
        };
        for v in vectors {
            if tail.len() == CHUNK * self.blocks_per_vector {
                out.chunks.push(Arc::from(std::mem::take(&mut tail)));
            }
            let start = tail.len();
            tail.resize(start + self.blocks_per_vector, ZERO_BLOCK);
            for (i, x) in v.iter().take(self.stride).enumerate() {
                tail[start + i / BLOCK].0[i % BLOCK] = *x;
            }
            out.len += 1;
        }
        if !tail.is_empty() {
            out.chunks.push(Arc::from(tail));
        }
        out
    }

    /// Bytes held by the vectors.
    pub(crate) fn bytes(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| std::mem::size_of_val(&**c))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_keeps_vectors_across_chunks_and_pads_with_zeros() {
        let dim = 5;
        let n = CHUNK + 7;
        let vectors: Vec<Vec<f32>> = (0..n).map(|i| vec![i as f32; dim]).collect();
        let first = Arena::new(dim).extended(vectors[..100].iter().map(|v| v.as_slice()));
        let all = first.extended(vectors[100..].iter().map(|v| v.as_slice()));
        assert_eq!(first.len(), 100);
        assert_eq!(all.len(), n);
        for id in [0, 99, 100, CHUNK - 1, CHUNK, n - 1] {
            let v = all.get(id);
            assert_eq!(v.len(), BLOCK);
            assert_eq!(&v[..dim], vectors[id].as_slice());
            assert!(v[dim..].iter().all(|x| *x == 0.0));
            assert_eq!(
                v.as_ptr() as usize % 64,
                0,
                "vector {id} is cache-line aligned"
            );
        }
        // The first snapshot is unchanged by extending.
        assert_eq!(first.get(99)[0], 99.0);
    }
}
