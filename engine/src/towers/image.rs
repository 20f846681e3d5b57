//! The image tower: photo bytes in, a 1280-d feature vector and ImageNet class
//! probabilities out.
//!
//! Work is split in two so that callers can parallelise the cheap part freely:
//!
//! 1. [`Preprocessor`] (plain data, `Copy`) decodes and normalises one image into a
//!    [`PreparedImage`] on the CPU. Run it from rayon or any thread pool.
//! 2. [`ImageTower::embed`] runs the network on a batch of prepared images on the tower's
//!    device. The tower is `Send + Sync`; share it in an `Arc`.
//!
//! Preprocessing follows the evaluation pipeline the EfficientNet-Lite checkpoints were
//! published with (TensorFlow's `preprocessing.py`): take the central square covering
//! `image_size / (image_size + 32)` of the short side (224/256 for Lite0, the same crop as
//! "resize to 256, centre-crop 224"), flatten transparency onto white, resize it to
//! `image_size` with a Catmull-Rom (bicubic) filter, and map pixel values to `(v - 127) / 128`,
//! the normalisation the Lite models were trained with. EXIF orientation is applied.

use std::borrow::Borrow;
use std::io::Cursor;
use std::path::Path;

use candle_core::{Device, Tensor};
use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};
use serde::{Deserialize, Serialize};

pub use crate::error::ImageProblem;
use crate::error::{Error, Result};
use crate::models::efficientnet_lite::{self, CpuIsa, EfficientNetLite, Top, FEATURE_DIM};
use crate::models::imagenet_classes::IMAGENET_CLASSES;
use crate::towers::TowerPrecision;

/// Largest image accepted by default, in decoded pixels: a 40-megapixel photo. Anything larger
/// is refused before decoding, so a small file claiming huge dimensions (a decompression bomb)
/// costs nothing.
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;
/// Largest image file read by default, in bytes. Checked on the file's size before any byte is
/// read, so `/dev/zero` or a huge sparse file costs nothing; 64 MiB holds a 40-megapixel photo
/// in any compressed format Trio decodes.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes read before the rest of a file: enough for every supported format's signature.
const HEADER_BYTES: usize = 64;
/// Images per forward pass by default; larger inputs to `embed` are split.
pub const DEFAULT_MAX_BATCH: usize = 32;
/// TensorFlow's EfficientNet evaluation crop: the central square covering `size / (size + 32)`
/// of the short side (224 of 256 for Lite0), resized to `size`.
const CROP_PADDING: u32 = 32;
/// Crops more than this many times twice the output size are box-filtered down first.
const PRESCALE_FACTOR: u32 = 2;
/// EfficientNet-Lite's input normalisation: `(v - 127) / 128` maps bytes to about [-1, 1].
const PIXEL_MEAN: f32 = 127.0;
const PIXEL_SCALE: f32 = 128.0;
/// Bytes a decoder may allocate per accepted pixel: 16-bit RGBA output plus working space.
const DECODE_BYTES_PER_PIXEL: u64 = 16;

/// Settings of the image tower.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageTowerConfig {
    pub model: efficientnet_lite::Config,
    /// Largest image accepted, in decoded pixels (width x height).
    pub max_pixels: u64,
    /// Largest image file read, in bytes.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Images per forward pass.
    pub max_batch: usize,
    /// The CPU kernels' arithmetic.
    #[serde(default)]
    pub precision: TowerPrecision,
}

impl ImageTowerConfig {
    pub fn new(model: efficientnet_lite::Config) -> Self {
        Self {
            model,
            max_pixels: DEFAULT_MAX_PIXELS,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_batch: DEFAULT_MAX_BATCH,
            precision: TowerPrecision::F32,
        }
    }

    pub fn lite0() -> Self {
        Self::new(efficientnet_lite::Config::lite0())
    }

    pub fn lite1() -> Self {
        Self::new(efficientnet_lite::Config::lite1())
    }

    pub fn lite2() -> Self {
        Self::new(efficientnet_lite::Config::lite2())
    }

    pub fn with_max_pixels(mut self, max_pixels: u64) -> Self {
        self.max_pixels = max_pixels;
        self
    }

    pub fn with_max_file_bytes(mut self, max_file_bytes: u64) -> Self {
        self.max_file_bytes = max_file_bytes;
        self
    }

    pub fn with_max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }

    pub fn with_precision(mut self, precision: TowerPrecision) -> Self {
        self.precision = precision;
        self
    }
}

fn default_max_file_bytes() -> u64 {
    DEFAULT_MAX_FILE_BYTES
}

impl Default for ImageTowerConfig {
    fn default() -> Self {
        Self::lite0()
    }
}

/// One image ready for the network: normalised f32 pixels, channels first (3 x size x size).
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedImage {
    pixels: Vec<f32>,
    size: usize,
}

impl PreparedImage {
    /// Wraps pixels that are already normalised, 3 x `size` x `size` channels first.
    pub fn from_chw(pixels: Vec<f32>, size: usize) -> Result<Self> {
        if pixels.len() != 3 * size * size {
            return Err(Error::InvalidArgument(format!(
                "prepared image of {} values is not 3x{size}x{size}",
                pixels.len()
            )));
        }
        Ok(Self { pixels, size })
    }

    /// Side of the square image.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The pixels, channels first.
    pub fn pixels(&self) -> &[f32] {
        &self.pixels
    }
}

/// Decodes and normalises images for a given network input size. Cheap to copy and free of
/// shared state, so any number of threads can use it at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preprocessor {
    image_size: u32,
    max_pixels: u64,
    max_file_bytes: u64,
}

impl Preprocessor {
    pub fn new(image_size: usize, max_pixels: u64) -> Self {
        let image_size = image_size.max(1) as u32;
        Self {
            image_size,
            max_pixels,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }

    pub fn with_max_file_bytes(mut self, max_file_bytes: u64) -> Self {
        self.max_file_bytes = max_file_bytes;
        self
    }

    /// Reads an image file's bytes, refusing before any read what could hang or flood memory:
    /// anything but a regular file (a FIFO blocks on open), a file over the byte limit, and a
    /// file whose first bytes are no image signature (only the header is read then).
    pub fn read_file(&self, path: &Path) -> std::result::Result<Vec<u8>, ImageProblem> {
        use std::io::Read;
        let unreadable = |e: std::io::Error| ImageProblem::Unreadable {
            detail: io_reason(&e),
        };
        let meta = std::fs::metadata(path).map_err(unreadable)?;
        check_regular(&meta)?;
        let mut file = std::fs::File::open(path).map_err(unreadable)?;
        // The path may have been swapped between the two calls: check what was opened.
        let meta = file.metadata().map_err(unreadable)?;
        check_regular(&meta)?;
        if meta.len() > self.max_file_bytes {
            return Err(ImageProblem::FileTooLarge {
                bytes: meta.len(),
                limit: self.max_file_bytes,
            });
        }
        let mut bytes = Vec::with_capacity(HEADER_BYTES);
        (&mut file)
            .take(HEADER_BYTES as u64)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        if bytes.is_empty() {
            return Err(ImageProblem::Empty);
        }
        if image::guess_format(&bytes).is_err() {
            return Err(ImageProblem::NotAnImage);
        }
        // A file growing while it is read is still cut at the limit.
        bytes.reserve(meta.len() as usize);
        file.take(self.max_file_bytes + 1 - bytes.len() as u64)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        if bytes.len() as u64 > self.max_file_bytes {
            return Err(ImageProblem::FileTooLarge {
                bytes: bytes.len() as u64,
                limit: self.max_file_bytes,
            });
        }
        Ok(bytes)
    }

    /// The side of the square images this produces.
    pub fn image_size(&self) -> usize {
        self.image_size as usize
    }

    /// Reads and prepares an image file.
    pub fn prepare_path(&self, path: &Path) -> Result<PreparedImage> {
        let name = path.display().to_string();
        let bytes = self.read_file(path).map_err(|problem| Error::Image {
            image: name.clone(),
            problem,
        })?;
        self.prepare_bytes(&bytes, &name)
    }

    /// Decodes and prepares encoded image bytes; `name` identifies the image in errors.
    pub fn prepare_bytes(&self, bytes: &[u8], name: &str) -> Result<PreparedImage> {
        let image = self.decode(bytes).map_err(|problem| Error::Image {
            image: name.to_string(),
            problem,
        })?;
        Ok(self.prepare_image(&image))
    }

    /// Decodes encoded image bytes (pixel limit checked first); `name` identifies the image in
    /// errors. For callers that need the decoded image too (perceptual hashes).
    pub fn decode_bytes(&self, bytes: &[u8], name: &str) -> Result<DynamicImage> {
        self.decode(bytes).map_err(|problem| Error::Image {
            image: name.to_string(),
            problem,
        })
    }

    /// Decodes with the pixel limit checked on the header, before any pixel is decoded.
    fn decode(&self, bytes: &[u8]) -> std::result::Result<DynamicImage, ImageProblem> {
        if bytes.is_empty() {
            return Err(ImageProblem::Empty);
        }
        let reader = || {
            let reader = ImageReader::new(Cursor::new(bytes))
                .with_guessed_format()
                .map_err(|e| ImageProblem::Corrupt {
                    detail: e.to_string(),
                })?;
            match reader.format() {
                Some(_) => Ok(reader),
                None => Err(ImageProblem::NotAnImage),
            }
        };
        // The header alone, without allocation limits, so that an oversized image is reported
        // as such rather than as a decoder running out of its memory budget.
        let mut header = reader()?;
        header.no_limits();
        let (width, height) = header.into_dimensions().map_err(classify)?;
        if width == 0 || height == 0 {
            return Err(ImageProblem::NoPixels);
        }
        if width as u64 * height as u64 > self.max_pixels {
            return Err(ImageProblem::TooManyPixels {
                width,
                height,
                limit: self.max_pixels,
            });
        }
        let mut reader = reader()?;
        let mut limits = Limits::default();
        limits.max_alloc = Some(
            limits
                .max_alloc
                .unwrap_or(0)
                .max(self.max_pixels.saturating_mul(DECODE_BYTES_PER_PIXEL)),
        );
        reader.limits(limits);
        let mut decoder = reader.into_decoder().map_err(classify)?;
        let orientation = decoder.orientation().map_err(classify)?;
        let mut image = DynamicImage::from_decoder(decoder).map_err(classify)?;
        image.apply_orientation(orientation);
        Ok(image)
    }

    /// Crops, flattens, resizes and normalises a decoded image.
    pub fn prepare_image(&self, image: &DynamicImage) -> PreparedImage {
        let size = self.image_size;
        // The central square that the evaluation crop keeps, in source pixels; cropping
        // before resizing keeps the work (and memory) bounded for any aspect ratio.
        let (w, h) = (image.width(), image.height());
        let side = ((w.min(h) as f64 * size as f64 / (size + CROP_PADDING) as f64) as u32)
            .clamp(1, w.min(h));
        let (left, top) = ((w - side).div_ceil(2), (h - side).div_ceil(2));
        let mut square = flatten_on_white(&image.crop_imm(left, top, side, side));
        // A box filter takes very large crops most of the way down cheaply; the bicubic
        // filter then sees at most twice the output size, as PIL's `reducing_gap` does.
        if side > PRESCALE_FACTOR * 2 * size {
            square = image::imageops::thumbnail(&square, 2 * size, 2 * size);
        }
        let resized = if square.dimensions() == (size, size) {
            square
        } else {
            image::imageops::resize(&square, size, size, FilterType::CatmullRom)
        };
        let plane = (size * size) as usize;
        let mut pixels = vec![0f32; 3 * plane];
        for (i, p) in resized.pixels().enumerate() {
            for c in 0..3 {
                pixels[c * plane + i] = (p[c] as f32 - PIXEL_MEAN) / PIXEL_SCALE;
            }
        }
        PreparedImage {
            pixels,
            size: size as usize,
        }
    }
}

/// RGB with any transparency composited over white, as the image would show on a page.
fn flatten_on_white(image: &DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    let mut rgb = RgbImage::new(rgba.width(), rgba.height());
    for (dst, src) in rgb.pixels_mut().zip(rgba.pixels()) {
        let a = src[3] as u32;
        for c in 0..3 {
            dst[c] = ((src[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    rgb
}

/// Sorts an `image` crate error into a problem a user can act on.
fn classify(err: image::ImageError) -> ImageProblem {
    use image::ImageError;
    let detail = err.to_string();
    let ends_early = |msg: &str| {
        let msg = msg.to_ascii_lowercase();
        [
            "eof",
            "end of file",
            "unexpected end",
            "truncated",
            "not enough data",
            "no more data",
        ]
        .iter()
        .any(|needle| msg.contains(needle))
    };
    match &err {
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageProblem::Truncated { detail }
        }
        ImageError::Limits(_) => ImageProblem::Corrupt {
            detail: format!("needs more memory than allowed: {detail}"),
        },
        ImageError::Unsupported(_) => ImageProblem::NotAnImage,
        _ if ends_early(&detail) => ImageProblem::Truncated { detail },
        _ => ImageProblem::Corrupt { detail },
    }
}

/// One class and its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassScore {
    pub index: usize,
    pub label: &'static str,
    pub probability: f32,
}

fn check_regular(meta: &std::fs::Metadata) -> std::result::Result<(), ImageProblem> {
    if meta.is_file() {
        return Ok(());
    }
    let ft = meta.file_type();
    let kind = if ft.is_dir() {
        "a folder"
    } else {
        file_kind(&ft)
    };
    Err(ImageProblem::NotARegularFile { kind })
}

#[cfg(unix)]
fn file_kind(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

#[cfg(not(unix))]
fn file_kind(_: &std::fs::FileType) -> &'static str {
    "not a file"
}

/// An I/O error's reason without the "(os error N)" suffix that repeats the same words.
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// The `k` most probable ImageNet classes, most probable first.
pub fn top_k(probabilities: &[f32], k: usize) -> Vec<ClassScore> {
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
    order
        .into_iter()
        .take(k)
        .map(|index| ClassScore {
            index,
            label: IMAGENET_CLASSES.get(index).copied().unwrap_or("unknown"),
            probability: probabilities[index],
        })
        .collect()
}

/// What the tower computes for a batch, one entry per input image in input order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageEmbeddings {
    /// 1280-d pooled features, the input to the fused model.
    pub features: Vec<Vec<f32>>,
    /// Softmax over the 1000 ImageNet classes; see [`top_k`].
    pub probabilities: Vec<Vec<f32>>,
}

/// EfficientNet-Lite with its preprocessing, loaded once and shared.
pub struct ImageTower {
    model: EfficientNetLite,
    config: ImageTowerConfig,
    preprocessor: Preprocessor,
    device: Device,
}

impl ImageTower {
    /// Loads the network from a weights file (`.pth` or `.safetensors`) onto `device`.
    pub fn load(weights_path: &Path, config: &ImageTowerConfig, device: &Device) -> Result<Self> {
        // int8 is the text tower's: the image network has no int8 path and runs f32 then.
        let vb = crate::weights::var_builder(weights_path, candle_core::DType::F32, device)?;
        let mut model = EfficientNetLite::load(vb, &config.model)?;
        if config.precision == TowerPrecision::Bf16 {
            if !device.is_cpu() {
                return Err(Error::InvalidArgument(
                    "bf16 precision is for the CPU kernels; other devices run f32".into(),
                ));
            }
            model.set_cpu_isa(CpuIsa::Avx512Bf16)?;
        }
        Ok(Self::from_model(model, config))
    }

    /// Wraps an already built network.
    pub fn from_model(model: EfficientNetLite, config: &ImageTowerConfig) -> Self {
        let mut config = config.clone();
        config.model = model.config().clone();
        let preprocessor = Preprocessor::new(config.model.image_size, config.max_pixels)
            .with_max_file_bytes(config.max_file_bytes);
        Self {
            device: model.device().clone(),
            model,
            config,
            preprocessor,
        }
    }

    pub fn config(&self) -> &ImageTowerConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn feature_dim(&self) -> usize {
        FEATURE_DIM
    }

    /// The preprocessing this tower expects; copy it into worker threads.
    pub fn preprocessor(&self) -> Preprocessor {
        self.preprocessor
    }

    /// The network itself, for callers that need raw logits.
    pub fn model(&self) -> &EfficientNetLite {
        &self.model
    }

    /// The input batches for `images`, `max_batch` at a time, on the tower's device.
    /// The tower's input side, once every image is found prepared at it.
    fn check_sizes<I: Borrow<PreparedImage>>(&self, images: &[I]) -> Result<usize> {
        let size = self.preprocessor.image_size();
        let images = images.iter().map(Borrow::borrow);
        if let Some((i, bad)) = images.enumerate().find(|(_, im)| im.size != size) {
            return Err(Error::InvalidArgument(format!(
                "image {i} was prepared at {0}x{0}, this tower takes {size}x{size}",
                bad.size
            )));
        }
        Ok(size)
    }

    fn batches<'a>(
        &'a self,
        images: &'a [PreparedImage],
    ) -> Result<impl Iterator<Item = Result<Tensor>> + 'a> {
        let size = self.check_sizes(images)?;
        Ok(images
            .chunks(self.config.max_batch.max(1))
            .map(move |batch| {
                let mut data = Vec::with_capacity(batch.len() * 3 * size * size);
                for image in batch {
                    data.extend_from_slice(&image.pixels);
                }
                Ok(
                    Tensor::from_vec(data, (batch.len(), 3, size, size), &Device::Cpu)?
                        .to_device(&self.device)?,
                )
            }))
    }

    /// The frozen network's activations entering block `first` (NHWC), stacked: the input of
    /// a fine-tuned [`Top`].
    pub fn activations(&self, images: &[PreparedImage], first: usize) -> Result<Tensor> {
        let parts = self
            .batches(images)?
            .map(|input| self.model.activations_before(&input?, first))
            .collect::<Result<Vec<_>>>()?;
        if parts.is_empty() {
            return Err(Error::InvalidArgument("no images given".into()));
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Features of each image with a fine-tuned top in place of this tower's own.
    pub fn tuned_features(&self, images: &[PreparedImage], top: &Top) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(images.len());
        for input in self.batches(images)? {
            let x = self.model.activations_before(&input?, top.first_block())?;
            out.extend(top.forward(&x)?.to_vec2::<f32>()?);
        }
        Ok(out)
    }

    /// The frozen features and those of `tuned` (a fine-tuned top of this network) for each
    /// image: what ingest stores, and what the model that owns `tuned` reads. The frozen half
    /// is [`ImageTower::embed`]'s own features, bit for bit (on the CPU that is the fused
    /// network, in the tower's precision); the tuned half reads the layer-by-layer activations
    /// entering its first block, as fine-tuning saw them.
    pub fn embed_with_tuned(
        &self,
        images: &[PreparedImage],
        tuned: &Top,
    ) -> Result<TunedEmbeddings> {
        let frozen = self.embed(images)?.features;
        let mut tuned_features = Vec::with_capacity(images.len());
        for input in self.batches(images)? {
            let x = self
                .model
                .activations_before(&input?, tuned.first_block())?;
            tuned_features.extend(tuned.forward(&x)?.to_vec2::<f32>()?);
        }
        Ok(TunedEmbeddings {
            frozen,
            tuned: tuned_features,
        })
    }

    /// Features and class probabilities for each image, computed `max_batch` at a time. The
    /// images may be borrowed (`&[&PreparedImage]`): the network reads each in place, so a
    /// caller picking images out of a larger set need not copy them into a batch.
    pub fn embed<I: Borrow<PreparedImage>>(&self, images: &[I]) -> Result<ImageEmbeddings> {
        let mut out = ImageEmbeddings {
            features: Vec::with_capacity(images.len()),
            probabilities: Vec::with_capacity(images.len()),
        };
        let size = self.check_sizes(images)?;
        for batch in images.chunks(self.config.max_batch.max(1)) {
            let pixels: Vec<&[f32]> = batch.iter().map(|im| &im.borrow().pixels[..]).collect();
            let (features, logits) = self.model.forward_images(&pixels, (size, size))?;
            let probabilities = EfficientNetLite::probabilities(&logits)?;
            out.features.extend(features.to_vec2::<f32>()?);
            out.probabilities.extend(probabilities.to_vec2::<f32>()?);
        }
        Ok(out)
    }
}

/// One image batch through the frozen tower and a fine-tuned top, one row per image.
pub struct TunedEmbeddings {
    /// The frozen tower's features (what the store keeps).
    pub frozen: Vec<Vec<f32>>,
    /// The fine-tuned top's features (what its model reads).
    pub tuned: Vec<Vec<f32>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgba, RgbaImage};

    fn png(image: &DynamicImage) -> Vec<u8> {
        let mut bytes = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .unwrap();
        bytes
    }

    fn problem(result: Result<PreparedImage>) -> ImageProblem {
        match result {
            Err(Error::Image { problem, .. }) => problem,
            other => panic!("expected an image error, got {other:?}"),
        }
    }

    #[test]
    fn the_tower_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ImageTower>();
        assert_send_sync::<Preprocessor>();
    }

    #[test]
    fn prepares_to_the_network_size_and_range() {
        let pre = Preprocessor::new(224, DEFAULT_MAX_PIXELS);
        let image = DynamicImage::ImageRgb8(RgbImage::from_fn(300, 200, |x, _| {
            image::Rgb([(x % 256) as u8, 127, 255])
        }));
        let prepared = pre.prepare_bytes(&png(&image), "wide.png").unwrap();
        assert_eq!(prepared.size(), 224);
        assert_eq!(prepared.pixels().len(), 3 * 224 * 224);
        let plane = 224 * 224;
        assert!(prepared.pixels()[plane..2 * plane]
            .iter()
            .all(|&v| v == 0.0));
        assert!(prepared.pixels()[2 * plane..].iter().all(|&v| v == 1.0));
        assert!(prepared.pixels().iter().all(|v| (-1.0..=1.0).contains(v)));
    }

    #[test]
    fn tiny_huge_and_extreme_aspect_images_prepare() {
        let pre = Preprocessor::new(224, DEFAULT_MAX_PIXELS);
        for (w, h) in [(64, 64), (3000, 2), (2, 3000), (2000, 1800)] {
            let image =
                DynamicImage::ImageRgb8(RgbImage::from_pixel(w, h, image::Rgb([255, 0, 127])));
            let prepared = pre.prepare_image(&image);
            assert_eq!(prepared.size(), 224, "{w}x{h}");
            let plane = 224 * 224;
            // A flat colour stays flat through crop, box filter and bicubic resize.
            assert!(prepared.pixels()[..plane]
                .iter()
                .all(|&v| (v - 1.0).abs() < 1e-6));
            assert!(prepared.pixels()[plane..2 * plane]
                .iter()
                .all(|&v| (v + 127.0 / 128.0).abs() < 1e-6));
            assert!(prepared.pixels()[2 * plane..]
                .iter()
                .all(|&v| v.abs() < 1e-6));
        }
    }

    #[test]
    fn transparency_becomes_white() {
        let pre = Preprocessor::new(32, DEFAULT_MAX_PIXELS);
        let clear = DynamicImage::ImageRgba8(RgbaImage::from_pixel(40, 40, Rgba([0, 0, 0, 0])));
        let prepared = pre.prepare_bytes(&png(&clear), "clear.png").unwrap();
        assert!(prepared.pixels().iter().all(|&v| v == 1.0));
    }

    #[test]
    fn bad_images_say_what_is_wrong() {
        let pre = Preprocessor::new(224, 1000);
        assert_eq!(
            problem(pre.prepare_bytes(&[], "empty.jpg")),
            ImageProblem::Empty
        );
        assert_eq!(
            problem(pre.prepare_bytes(b"just some text, not pixels", "notes.txt")),
            ImageProblem::NotAnImage
        );
        let big = DynamicImage::ImageRgb8(RgbImage::new(50, 30));
        assert_eq!(
            problem(pre.prepare_bytes(&png(&big), "big.png")),
            ImageProblem::TooManyPixels {
                width: 50,
                height: 30,
                limit: 1000
            }
        );
        let small = DynamicImage::ImageRgb8(RgbImage::from_fn(20, 20, |x, y| {
            image::Rgb([x as u8 * 10, y as u8 * 10, 7])
        }));
        let bytes = png(&small);
        let cut = &bytes[..bytes.len() / 2];
        assert!(matches!(
            problem(pre.prepare_bytes(cut, "cut.png")),
            ImageProblem::Truncated { .. }
        ));
        let err = pre.prepare_bytes(cut, "cut.png").unwrap_err().to_string();
        assert!(
            err.contains("cut.png") && err.contains("truncated"),
            "{err}"
        );
    }

    fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn a_decompression_bomb_is_refused_from_its_header() {
        // A 100000 x 100000 RGB PNG whose few kilobytes of zlib data would inflate to 30 GB.
        let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        png_chunk(&mut bytes, b"IHDR", &ihdr);
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut zlib, &vec![0u8; 1 << 20]).unwrap();
        png_chunk(&mut bytes, b"IDAT", &zlib.finish().unwrap());
        png_chunk(&mut bytes, b"IEND", &[]);
        let pre = Preprocessor::new(224, DEFAULT_MAX_PIXELS);
        assert!(matches!(
            problem(pre.prepare_bytes(&bytes, "bomb.png")),
            ImageProblem::TooManyPixels { width: 100_000, .. }
        ));
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn top_k_orders_by_probability_and_names_classes() {
        let mut p = vec![0.0; 1000];
        p[967] = 0.7;
        p[281] = 0.2;
        p[0] = 0.1;
        let top = top_k(&p, 2);
        assert_eq!(top[0].index, 967);
        assert_eq!(top[0].label, "espresso");
        assert_eq!(top[1].label, "tabby");
    }

    /// One small picture in every format the loader reads: the seeds the fuzzer mutates.
    fn seeds() -> Vec<Vec<u8>> {
        let picture = DynamicImage::ImageRgba8(RgbaImage::from_fn(23, 17, |x, y| {
            Rgba([(x * 11) as u8, (y * 15) as u8, ((x ^ y) * 7) as u8, 200])
        }));
        let formats = [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Gif,
            ImageFormat::Bmp,
            ImageFormat::WebP,
        ];
        formats
            .iter()
            .map(|&format| {
                // JPEG has no alpha channel.
                let picture = if format == ImageFormat::Jpeg {
                    DynamicImage::ImageRgb8(picture.to_rgb8())
                } else {
                    picture.clone()
                };
                let mut bytes = Vec::new();
                picture
                    .write_to(&mut Cursor::new(&mut bytes), format)
                    .unwrap();
                bytes
            })
            .collect()
    }

    /// A damaged file: bytes overwritten, a cut, and bytes inserted, at positions drawn by the
    /// fuzzer (taken modulo the file's length).
    #[derive(Debug, Clone)]
    struct Damage {
        seed: usize,
        writes: Vec<(usize, u8)>,
        cut: Option<usize>,
        insert: Option<(usize, Vec<u8>)>,
    }

    impl Damage {
        fn apply(&self, seeds: &[Vec<u8>]) -> Vec<u8> {
            let mut bytes = seeds[self.seed % seeds.len()].clone();
            for &(at, value) in &self.writes {
                let n = bytes.len();
                bytes[at % n] = value;
            }
            if let Some((at, extra)) = &self.insert {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, extra.iter().copied());
            }
            if let Some(cut) = self.cut {
                bytes.truncate(cut % (bytes.len() + 1));
            }
            bytes
        }
    }

    fn damage() -> impl proptest::strategy::Strategy<Value = Damage> {
        use proptest::prelude::*;
        (
            any::<usize>(),
            proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            proptest::option::of(any::<usize>()),
            proptest::option::of((
                any::<usize>(),
                proptest::collection::vec(any::<u8>(), 1..64),
            )),
        )
            .prop_map(|(seed, writes, cut, insert)| Damage {
                seed,
                writes,
                cut,
                insert,
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(384))]

        /// The image loader fuzzed: a damaged or arbitrary file never panics; it prepares to the
        /// network size within the pixel cap, or is an image error that names the file.
        #[test]
        fn damaged_files_never_panic_and_errors_name_the_file(
            damage in damage(),
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96),
            use_noise in proptest::prelude::any::<bool>(),
        ) {
            // A cap well above the seeds' 23 x 17 but far below what a damaged header can claim.
            let pre = Preprocessor::new(32, 4096);
            let bytes = if use_noise { noise } else { damage.apply(&seeds()) };
            match pre.prepare_bytes(&bytes, "fuzzed.img") {
                Ok(prepared) => {
                    proptest::prop_assert_eq!(prepared.pixels().len(), 3 * 32 * 32);
                    proptest::prop_assert!(prepared.pixels().iter().all(|v| v.is_finite()));
                }
                Err(Error::Image { image, .. }) => proptest::prop_assert_eq!(image, "fuzzed.img"),
                Err(other) => proptest::prop_assert!(false, "not an image error: {other:?}"),
            }
            if let Ok(decoded) = pre.decode_bytes(&bytes, "fuzzed.img") {
                proptest::prop_assert!(u64::from(decoded.width()) * u64::from(decoded.height()) <= 4096);
            }
        }
    }

    #[test]
    fn every_seed_format_decodes_undamaged() {
        let pre = Preprocessor::new(32, 4096);
        for (i, bytes) in seeds().iter().enumerate() {
            let decoded = pre
                .decode_bytes(bytes, "seed")
                .unwrap_or_else(|e| panic!("seed {i}: {e}"));
            assert_eq!((decoded.width(), decoded.height()), (23, 17), "seed {i}");
        }
    }
}
