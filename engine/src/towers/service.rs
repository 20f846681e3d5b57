//! The embedding service: both frozen towers loaded once on one device, shared by the ingest
//! pipeline, the query paths and the HTTP server (`Arc<EmbeddingService>`, `&self` methods, no
//! lock: candle's `forward(&self)` needs none).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::fetch::{Home, LiteVariant};
use crate::models::efficientnet_lite;
use crate::models::minilm::Backend;
use crate::store::Features;
use crate::towers::image::{
    ImageTower, ImageTowerConfig, DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS,
};
use crate::towers::text::TextTower;
use crate::towers::TowerPrecision;

/// Where the two towers' weights are, and the image tower's settings. Built from the fetched
/// `TRIO_HOME` by default, or from folders the user brings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TowerSettings {
    /// The EfficientNet-Lite weights (`.pth` or `.safetensors`).
    pub image_weights: PathBuf,
    pub image_variant: LiteVariant,
    /// A Hugging Face layout folder (`config.json`, `model.safetensors`, `tokenizer.json`).
    pub text_model_dir: PathBuf,
    /// Largest image accepted, in decoded pixels.
    pub max_pixels: u64,
    /// Largest image file read, in bytes.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Both towers' CPU arithmetic (int8 is the text tower's alone: the image tower runs f32).
    #[serde(default)]
    pub precision: TowerPrecision,
}

fn default_max_file_bytes() -> u64 {
    DEFAULT_MAX_FILE_BYTES
}

impl TowerSettings {
    /// The fetched defaults in `home` for an image-model variant.
    pub fn from_home(home: &Home, variant: LiteVariant) -> Self {
        Self {
            image_weights: home.image_model_path(variant),
            image_variant: variant,
            text_model_dir: home.text_model_dir(),
            max_pixels: DEFAULT_MAX_PIXELS,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            precision: TowerPrecision::F32,
        }
    }

    /// The image tower's configuration for the chosen variant.
    pub fn image_config(&self) -> ImageTowerConfig {
        let model = match self.image_variant {
            LiteVariant::Lite0 => efficientnet_lite::Config::lite0(),
            LiteVariant::Lite1 => efficientnet_lite::Config::lite1(),
            LiteVariant::Lite2 => efficientnet_lite::Config::lite2(),
        };
        ImageTowerConfig::new(model)
            .with_max_pixels(self.max_pixels)
            .with_max_file_bytes(self.max_file_bytes)
            .with_precision(self.precision)
    }

    /// The text encoder's backend for these settings' precision.
    pub fn text_backend(&self) -> Backend {
        match self.precision {
            TowerPrecision::F32 => Backend::Auto,
            TowerPrecision::Bf16 => Backend::FusedBf16,
            TowerPrecision::Int8 => Backend::FusedInt8,
        }
    }
}

/// Bumped whenever preprocessing changes what a tower computes from the same input and weights
/// (the image crop or normalisation, text truncation or pooling): features made before and
/// after are not comparable.
pub const PREPROCESSING_VERSION: u32 = 1;

/// What made a set of features: the towers' weights, read byte for byte, and the preprocessing.
/// Features computed elsewhere (`trio embed` on another machine) can join a catalogue only if
/// its towers have the same fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TowerFingerprint {
    /// The image model, e.g. `efficientnet-lite0`.
    pub image_model: String,
    pub image_weights_sha256: String,
    pub image_dim: usize,
    /// The text model's folder name, e.g. `all-MiniLM-L6-v2`.
    pub text_model: String,
    /// sha256 over the text model's config, tokenizer and weights files.
    pub text_weights_sha256: String,
    pub text_dim: usize,
    pub preprocessing: u32,
}

impl TowerFingerprint {
    /// Whether features with fingerprint `other` can sit beside features with this one. Names
    /// are for people: the same weights under another folder name compute the same features.
    pub fn compatible(&self, other: &TowerFingerprint) -> std::result::Result<(), String> {
        let checks = [
            (
                "image weights",
                self.image_weights_sha256 != other.image_weights_sha256,
            ),
            (
                "text weights",
                self.text_weights_sha256 != other.text_weights_sha256,
            ),
            ("image dimension", self.image_dim != other.image_dim),
            ("text dimension", self.text_dim != other.text_dim),
            (
                "preprocessing version",
                self.preprocessing != other.preprocessing,
            ),
        ];
        match checks.iter().find(|(_, differs)| *differs) {
            None => Ok(()),
            Some((what, _)) => Err(format!(
                "the {what} differ: made by {} + {} (preprocessing {}), this catalogue uses {} + {} \
                 (preprocessing {})",
                other.image_model,
                other.text_model,
                other.preprocessing,
                self.image_model,
                self.text_model,
                self.preprocessing
            )),
        }
    }
}

impl TowerSettings {
    /// The fingerprint of these towers, from their files (hashes some 100 MB; no model is
    /// loaded). The text dimension is read from the model's `config.json`.
    pub fn fingerprint(&self) -> Result<TowerFingerprint> {
        use crate::fetch::sha256_file;
        use crate::progress::NoProgress;
        let image_weights_sha256 = sha256_file(&self.image_weights, &NoProgress)?;
        use sha2::Digest;
        let mut text = sha2::Sha256::new();
        for name in ["config.json", "tokenizer.json", "model.safetensors"] {
            let digest = sha256_file(&self.text_model_dir.join(name), &NoProgress)?;
            text.update(name.as_bytes());
            text.update(digest.as_bytes());
        }
        let config_path = self.text_model_dir.join("config.json");
        let config: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&config_path).map_err(|e| Error::io(&config_path, e))?,
        )
        .map_err(|source| Error::Json {
            context: config_path.display().to_string(),
            source,
        })?;
        let text_dim = config["hidden_size"]
            .as_u64()
            .ok_or_else(|| Error::ModelConfig {
                model: self.text_model_dir.display().to_string(),
                reason: "config.json has no hidden_size".into(),
            })? as usize;
        Ok(TowerFingerprint {
            image_model: self.image_variant.asset_name().to_string(),
            image_weights_sha256,
            image_dim: crate::models::efficientnet_lite::FEATURE_DIM,
            text_model: self
                .text_model_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            text_weights_sha256: hex::encode(text.finalize()),
            text_dim,
            preprocessing: PREPROCESSING_VERSION,
        })
    }
}

/// Both towers, loaded once.
pub struct EmbeddingService {
    pub image: ImageTower,
    pub text: TextTower,
    device: Device,
}

impl EmbeddingService {
    pub fn load(settings: &TowerSettings, device: &Device) -> Result<Self> {
        let image = ImageTower::load(&settings.image_weights, &settings.image_config(), device)?;
        let text = TextTower::load_with(&settings.text_model_dir, device, settings.text_backend())?;
        Ok(Self {
            image,
            text,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Features of one item from raw inputs: `image` is encoded bytes with a name for errors;
    /// `texts` maps field name to text. Absent or blank inputs stay absent.
    pub fn embed_item(
        &self,
        image: Option<(&[u8], &str)>,
        texts: &BTreeMap<String, Option<String>>,
    ) -> Result<Features> {
        let image = match image {
            Some((bytes, name)) => {
                let prepared = self.image.preprocessor().prepare_bytes(bytes, name)?;
                self.image.embed(&[prepared])?.features.into_iter().next()
            }
            None => None,
        };
        let mut text = BTreeMap::new();
        for (field, value) in texts {
            let value = value.as_deref().filter(|s| !s.trim().is_empty());
            if let Some(v) = self
                .text
                .embed_fields(&[value])?
                .into_iter()
                .next()
                .flatten()
            {
                text.insert(field.clone(), v);
            }
        }
        Ok(Features { image, text })
    }

    /// Features of an image file.
    pub fn embed_image_path(&self, path: &Path) -> Result<Vec<f32>> {
        let prepared = self.image.preprocessor().prepare_path(path)?;
        Ok(self
            .image
            .embed(&[prepared])?
            .features
            .into_iter()
            .next()
            .unwrap_or_default())
    }
}
