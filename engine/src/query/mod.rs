//! Questions asked of the catalogue: search, duplicates, label noise.
//!
//! - [`crossmodal`]: measuring text→image search over image-only items (recall@k).
//! - [`phash`]: perceptual hashes (pHash, dHash) and their Hamming distance.
//! - [`duplicates`]: exact, perceptual and near-duplicate groups; planted-copy measurement.
//! - [`noise`]: ranking items whose label is probably wrong (confident learning + neighbours).
//! - [`map`]: a 2-D t-SNE layout of the vectors (the command line draws it).
//! - [`union_find`]: the disjoint sets that turn pairwise links into groups.

pub mod crossmodal;
pub mod duplicates;
pub mod map;
pub mod noise;
pub mod phash;
pub mod union_find;
