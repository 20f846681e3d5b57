//! The frozen feature extractors ("towers") with their preprocessing.

/// Images to pooled features and ImageNet probabilities (EfficientNet-Lite).
pub mod image;
/// Both towers loaded once and shared: the embedding service.
pub mod service;
/// Texts to normalised sentence vectors (MiniLM): tokenise, encode, mean-pool.
pub mod text;
