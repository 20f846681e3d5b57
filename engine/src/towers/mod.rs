//! The frozen feature extractors ("towers") with their preprocessing.

pub mod image;
