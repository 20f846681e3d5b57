//! The embedding service: both frozen towers loaded once on one device, shared by the ingest
//! pipeline, the query paths and the HTTP server (`Arc<EmbeddingService>`, `&self` methods, no
//! lock: candle's `forward(&self)` needs none).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::fetch::{Home, LiteVariant};
use crate::models::efficientnet_lite;
use crate::store::Features;
use crate::towers::image::{
    ImageTower, ImageTowerConfig, DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS,
};
use crate::towers::text::TextTower;

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
        let text = TextTower::load(&settings.text_model_dir, device)?;
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
