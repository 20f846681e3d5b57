//! The frozen feature extractors ("towers") with their preprocessing.

/// Images to pooled features and ImageNet probabilities (EfficientNet-Lite).
pub mod image;
/// Both towers loaded once and shared: the embedding service.
pub mod service;
/// Texts to normalised sentence vectors (MiniLM): tokenise, encode, mean-pool.
pub mod text;

use serde::{Deserialize, Serialize};

/// The arithmetic of the towers' matrix products on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TowerPrecision {
    /// Single precision throughout.
    #[default]
    F32,
    /// The 1x1 convolutions and the text encoder's matrix products in bfloat16 with f32
    /// accumulation (AVX512_BF16 CPUs only): about twice the multiply-adds per instruction, at
    /// a cosine of 0.999 or more to the f32 features (BENCHMARKS.md, "Towers on the current
    /// machine").
    Bf16,
    /// The text encoder's matrix products in int8 (weights per output channel, inputs per
    /// row, AVX-512 VNNI where the CPU has it); text tower only, the image tower refuses it.
    Int8,
}

impl TowerPrecision {
    pub fn as_str(self) -> &'static str {
        match self {
            TowerPrecision::F32 => "f32",
            TowerPrecision::Bf16 => "bf16",
            TowerPrecision::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for TowerPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TowerPrecision {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> crate::error::Result<Self> {
        match s {
            "f32" => Ok(TowerPrecision::F32),
            "bf16" => Ok(TowerPrecision::Bf16),
            "int8" => Ok(TowerPrecision::Int8),
            _ => Err(crate::error::Error::InvalidArgument(format!(
                "unknown precision `{s}`: expected f32, bf16 or int8"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precisions_parse_from_their_names() {
        for p in [
            TowerPrecision::F32,
            TowerPrecision::Bf16,
            TowerPrecision::Int8,
        ] {
            assert_eq!(p.as_str().parse::<TowerPrecision>().unwrap(), p);
        }
        let err = "fp16".parse::<TowerPrecision>().unwrap_err().to_string();
        assert!(err.contains("f32, bf16 or int8"), "{err}");
    }
}
