//! Streaming iterators over the store. Each holds a redb read snapshot open until it is dropped,
//! so it sees one consistent state however long it runs, and never blocks writers.

use super::codec;
use super::types::Features;
use super::AtTable;
use crate::error::{Error, Result};

/// `(key, features)` in key order; see [`super::Store::iter_features`].
pub struct FeaturesIter {
    range: redb::Range<'static, u64, &'static [u8]>,
}

impl FeaturesIter {
    pub(super) fn new(range: redb::Range<'static, u64, &'static [u8]>) -> Self {
        FeaturesIter { range }
    }
}

impl Iterator for FeaturesIter {
    type Item = Result<(u64, Features)>;

    fn next(&mut self) -> Option<Self::Item> {
        let entry = self.range.next()?;
        Some(
            entry
                .at("features", || "iterating".into())
                .and_then(|(k, v)| {
                    let key = k.value();
                    codec::decode_features(v.value())
                        .map(|f| (key, f))
                        .map_err(|reason| Error::CorruptRecord {
                            table: "features",
                            key: key.to_string(),
                            reason,
                        })
                }),
        )
    }
}

/// `(key, fused vector)` of one model version in key order; see [`super::Store::iter_fused`].
pub struct FusedIter {
    range: redb::Range<'static, (u32, u64), &'static [u8]>,
    version: u32,
}

impl FusedIter {
    pub(super) fn new(
        range: redb::Range<'static, (u32, u64), &'static [u8]>,
        version: u32,
    ) -> Self {
        FusedIter { range, version }
    }
}

impl Iterator for FusedIter {
    type Item = Result<(u64, Vec<f32>)>;

    fn next(&mut self) -> Option<Self::Item> {
        let entry = self.range.next()?;
        let version = self.version;
        Some(
            entry
                .at("fused", || format!("iterating model {version}"))
                .and_then(|(k, v)| {
                    let (_, key) = k.value();
                    codec::bytes_to_f32s(v.value())
                        .map(|vector| (key, vector))
                        .map_err(|reason| Error::CorruptRecord {
                            table: "fused",
                            key: format!("({version}, {key})"),
                            reason: reason.into(),
                        })
                }),
        )
    }
}
