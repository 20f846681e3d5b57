//! Catalogue quality: what is wrong with the items, for a person to act on.
//!
//! - [`duplicates`]: exact, perceptual and near-duplicate groups; planted-copy measurement.
//! - [`evidence`]: the text and pixel checks a candidate pair passes before it is grouped.
//! - [`noise`]: ranking items whose label is probably wrong (confident learning + neighbours).
//! - [`phash`]: perceptual hashes (pHash, dHash) and their Hamming distance.
//! - [`thumbnail`]: colour thumbnails and the pixel check that tells copies from look-alikes.
//! - [`union_find`]: the disjoint sets that turn pairwise links into groups.
//! - [`map`]: a 2-D t-SNE layout of the vectors, to look at the catalogue (the CLI draws it).

pub mod duplicates;
pub mod evidence;
pub mod map;
pub mod noise;
pub mod phash;
pub mod thumbnail;
pub mod union_find;
