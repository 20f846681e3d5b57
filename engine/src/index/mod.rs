//! Vector indexes, derived from the store and always rebuildable from it.
