//! The catalogue store (redb): the source of truth for items, features, fused vectors and models.
