//! Flags shared by commands, validated into engine settings before anything runs.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use trio_engine::fetch::{Home, LiteVariant};
use trio_engine::towers::image::{ImageTower, DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS};
use trio_engine::towers::service::TowerSettings;
use trio_engine::towers::text::TextTower;
use trio_engine::towers::TowerPrecision;
use trio_engine::Device;
use trio_engine::DeviceChoice;

/// Global flags: where models live, which device, and how to print.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Machine-readable JSON on stdout (no progress bars).
    #[arg(long, global = true)]
    pub json: bool,

    /// Where fetched models and data live (default: $TRIO_HOME, else the platform cache folder).
    #[arg(long, global = true, env = "TRIO_HOME")]
    pub home: Option<PathBuf>,

    /// Where tensors run: auto picks CUDA when built with it and a GPU answers.
    #[arg(long, global = true, default_value = "auto")]
    pub device: DeviceChoice,

    /// No progress bars or warnings on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

impl GlobalArgs {
    pub fn home(&self) -> anyhow::Result<Home> {
        Ok(Home::resolve(self.home.as_deref())?)
    }

    pub fn device(&self) -> anyhow::Result<Device> {
        Ok(self.device.resolve()?)
    }

    /// Progress bars are drawn for people only.
    pub fn show_progress(&self) -> bool {
        !(self.quiet || self.json)
    }
}

/// Which towers to use: the fetched defaults, or weights the user brings.
#[derive(Debug, Clone, Args)]
pub struct TowerArgs {
    /// Image tower variant (lite0, lite1, lite2); `trio fetch --image-model` gets lite1/lite2.
    #[arg(long = "image-model", default_value = "lite0")]
    pub image_model: LiteVariant,
    /// Image tower weights file (.safetensors or .pth) instead of the fetched one.
    #[arg(long = "image-weights")]
    pub image_weights: Option<PathBuf>,
    /// Text tower folder (Hugging Face layout: config.json, model.safetensors, tokenizer.json).
    #[arg(long = "text-model")]
    pub text_model: Option<PathBuf>,
    /// Largest image accepted, in decoded pixels (decompression-bomb guard).
    #[arg(long = "max-pixels", default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Largest image file read, in bytes (checked before the file is read).
    #[arg(long = "max-file-bytes", default_value_t = DEFAULT_MAX_FILE_BYTES)]
    pub max_file_bytes: u64,
    /// Arithmetic of the towers on the CPU: f32; bf16 (AVX512_BF16 CPUs: the 1x1
    /// convolutions and the text encoder's matrix products in bfloat16, f32 accumulation); or
    /// int8 for the text tower (the encoder's matrix products in int8, AVX-512 VNNI where the
    /// CPU has it) with the image tower in f32.
    #[arg(long, default_value = "f32")]
    pub tower_precision: TowerPrecision,
}

impl TowerArgs {
    pub fn settings(&self, global: &GlobalArgs) -> anyhow::Result<TowerSettings> {
        let home = global.home()?;
        let mut s = TowerSettings::from_home(&home, self.image_model);
        if let Some(p) = &self.image_weights {
            s.image_weights = p.clone();
        }
        if let Some(p) = &self.text_model {
            s.text_model_dir = p.clone();
        }
        s.max_pixels = self.max_pixels;
        s.max_file_bytes = self.max_file_bytes;
        s.precision = self.tower_precision;
        Ok(s)
    }

    pub fn load_image_tower(
        &self,
        global: &GlobalArgs,
        device: &Device,
    ) -> anyhow::Result<ImageTower> {
        let s = self.settings(global)?;
        ImageTower::load(&s.image_weights, &s.image_config(), device).with_context(|| {
            format!(
                "loading the image tower from {} (run `trio fetch`?)",
                s.image_weights.display()
            )
        })
    }

    pub fn load_text_tower(
        &self,
        global: &GlobalArgs,
        device: &Device,
    ) -> anyhow::Result<TextTower> {
        let s = self.settings(global)?;
        TextTower::load_with(&s.text_model_dir, device, s.text_backend()).with_context(|| {
            format!(
                "loading the text tower from {} (run `trio fetch`?)",
                s.text_model_dir.display()
            )
        })
    }
}

/// The catalogue database. Global, so commands with subcommands (`trio items list`) take it
/// after the subcommand too.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// The catalogue database file.
    #[arg(long, global = true, default_value = "catalog.trio", env = "TRIO_DB")]
    pub db: PathBuf,
}
