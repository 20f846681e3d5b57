//! Questions asked of the catalogue: search, duplicates, label noise.
