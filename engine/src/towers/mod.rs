//! The frozen feature extractors ("towers") with their preprocessing.

/// Texts to normalised sentence vectors (MiniLM): tokenise, encode, mean-pool.
pub mod text;
