//! Byte encodings of the store's records.
//!
//! Vectors are stored as little-endian `f32`s with no framing: 4 bytes per value, so a 1280-d
//! image embedding is 5 KiB on disk instead of ~15 KiB as JSON, and decoding is a straight copy.
//! A features record frames its vectors:
//!
//! ```text
//! [format = 1: u8] [entries: u8]
//! entry: [kind: u8 (0 image, 1 text)] [name length: u8] [name: UTF-8] [values: u32 LE] [f32 LE]*
//! ```
//! The image entry has an empty name; a text entry is named by its field.

use std::collections::BTreeMap;

use super::types::Features;

const FEATURES_FORMAT: u8 = 1;
const KIND_IMAGE: u8 = 0;
const KIND_TEXT: u8 = 1;

pub(crate) fn f32s_to_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// A stored vector's values. Every vector was checked finite before it was stored, so a byte
/// count that is not a whole number of `f32`s, or a NaN or infinity, means the file was damaged.
pub(crate) fn bytes_to_f32s(bytes: &[u8]) -> Result<Vec<f32>, &'static str> {
    if !bytes.len().is_multiple_of(4) {
        return Err("truncated vector");
    }
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if values.iter().any(|v| !v.is_finite()) {
        return Err("a stored vector holds a NaN or infinite value");
    }
    Ok(values)
}

/// Encodes features. The caller has validated them (field names of 1..=255 bytes, at most 255
/// entries), which is what makes the `u8` lengths below lossless.
pub(crate) fn encode_features(features: &Features) -> Vec<u8> {
    let values: usize = features.image.as_ref().map_or(0, Vec::len)
        + features.text.values().map(Vec::len).sum::<usize>();
    let mut out = Vec::with_capacity(2 + 8 * (1 + features.text.len()) + 4 * values);
    out.push(FEATURES_FORMAT);
    out.push((features.image.is_some() as usize + features.text.len()) as u8);
    let mut entry = |kind: u8, name: &str, vector: &[f32]| {
        out.push(kind);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(vector.len() as u32).to_le_bytes());
        for v in vector {
            out.extend_from_slice(&v.to_le_bytes());
        }
    };
    if let Some(image) = &features.image {
        entry(KIND_IMAGE, "", image);
    }
    for (field, vector) in &features.text {
        entry(KIND_TEXT, field, vector);
    }
    out
}

/// Decodes a features record; the error says what is wrong with it.
pub(crate) fn decode_features(bytes: &[u8]) -> Result<Features, String> {
    let mut r = Reader { bytes, at: 0 };
    let format = r.u8()?;
    if format != FEATURES_FORMAT {
        return Err(format!("unknown features format {format}"));
    }
    let entries = r.u8()?;
    let mut features = Features {
        image: None,
        text: BTreeMap::new(),
    };
    for _ in 0..entries {
        let kind = r.u8()?;
        let name_len = r.u8()? as usize;
        let name = std::str::from_utf8(r.take(name_len)?)
            .map_err(|_| "field name is not UTF-8".to_string())?
            .to_string();
        let len = u32::from_le_bytes(r.array()?) as usize;
        let raw = r.take(len.checked_mul(4).ok_or("vector length overflows")?)?;
        let vector = bytes_to_f32s(raw)?;
        match kind {
            KIND_IMAGE => features.image = Some(vector),
            KIND_TEXT => {
                features.text.insert(name, vector);
            }
            other => return Err(format!("unknown entry kind {other}")),
        }
    }
    if r.at != bytes.len() {
        return Err(format!("{} trailing bytes", bytes.len() - r.at));
    }
    Ok(features)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| format!("record truncated at byte {}", self.at))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_roundtrip_keeps_absent_inputs_absent() {
        let mut text = BTreeMap::new();
        text.insert("title".to_string(), vec![0.5, -1.25, 3.0]);
        let with_image = Features {
            image: Some(vec![1.0, f32::MIN_POSITIVE, -0.0]),
            text: text.clone(),
        };
        let without_image = Features { image: None, text };
        for f in [with_image, without_image, Features::default()] {
            let decoded = decode_features(&encode_features(&f)).expect("roundtrip decodes");
            assert_eq!(decoded, f);
        }
    }

    #[test]
    fn truncated_features_are_rejected() {
        let f = Features {
            image: Some(vec![1.0, 2.0]),
            text: BTreeMap::new(),
        };
        let bytes = encode_features(&f);
        for cut in 0..bytes.len() {
            assert!(decode_features(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_features(&longer).is_err());
    }

    #[test]
    fn f32_bytes_are_little_endian() {
        assert_eq!(f32s_to_bytes(&[1.0]), vec![0, 0, 0x80, 0x3f]);
        assert_eq!(bytes_to_f32s(&[0, 0, 0x80, 0x3f]), Ok(vec![1.0]));
        assert!(bytes_to_f32s(&[0, 0, 0x80]).is_err());
        // A flipped exponent byte turns 1.0 into NaN: damage, not a value.
        assert!(bytes_to_f32s(&[0, 0, 0xc0, 0x7f]).is_err());
    }
}
