//! `--finetune-image` on the catalogue: reading the stored items' images, running the frozen
//! bottom of the image tower once, fine-tuning its top on a split (`train::finetune`), and
//! computing image features with a fine-tuned top wherever the model that owns it reads them.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use rayon::prelude::*;

use super::active::ActiveModel;
use super::Catalog;
use crate::error::Result;
use crate::models::efficientnet_lite::Top;
use crate::progress::Progress;
use crate::towers::image::PreparedImage;
use crate::train::{
    finetune_top, Example, FinetuneConfig, FinetuneReport, ImageActivations, Split, TunedImageTower,
};

/// Images prepared and run through the frozen bottom per batch.
const CHUNK: usize = 64;

impl Catalog {
    /// The frozen image tower's activations entering block `first` for every example's stored
    /// image. An image that can no longer be read is reported as a warning naming the item, and
    /// that example is treated as having none.
    pub fn image_activations(
        &self,
        examples: &[Example],
        first: usize,
        progress: &dyn Progress,
    ) -> Result<ImageActivations> {
        let service = self.service()?;
        let preprocessor = service.image.preprocessor();
        let mut paths = Vec::with_capacity(examples.len());
        for e in examples {
            let item = match e.image {
                Some(_) => self.store.get_by_key(e.key)?,
                None => None,
            };
            paths.push(item.and_then(|i| i.image_path.map(|p| (i.id, p))));
        }
        progress.start(
            "image activations",
            Some(paths.iter().flatten().count() as u64),
        );
        let mut rows = vec![None; examples.len()];
        let mut parts: Vec<Tensor> = Vec::new();
        let mut next_row = 0;
        let wanted: Vec<usize> = (0..paths.len()).filter(|&i| paths[i].is_some()).collect();
        for chunk in wanted.chunks(CHUNK) {
            let prepared: Vec<(usize, Result<PreparedImage>)> = chunk
                .par_iter()
                .map(|&i| {
                    let (_, path) = paths[i].as_ref().expect("chosen with a path");
                    (i, preprocessor.prepare_path(Path::new(path)))
                })
                .collect();
            let mut images = Vec::with_capacity(prepared.len());
            for (i, p) in prepared {
                match p {
                    Ok(image) => {
                        rows[i] = Some(next_row);
                        next_row += 1;
                        images.push(image);
                    }
                    Err(e) => {
                        let (id, _) = paths[i].as_ref().expect("chosen with a path");
                        progress.warn(&format!("item `{id}`: image left out of fine-tuning: {e}"));
                    }
                }
            }
            if !images.is_empty() {
                parts.push(
                    service
                        .image
                        .activations(&images, first)?
                        .to_dtype(candle_core::DType::F16)?,
                );
            }
            progress.advance(chunk.len() as u64);
        }
        progress.finish();
        let data = if parts.is_empty() {
            Tensor::zeros((0, 1, 1, 1), candle_core::DType::F16, service.device())?
        } else {
            Tensor::cat(&parts, 0)?
        };
        ImageActivations::new(rows, data)
    }

    /// Fine-tunes the image tower's top on `split` of `examples` (their labels as given, noise
    /// and all) and replaces every example's image features with the tuned top's; an example
    /// whose image could not be read loses its image input.
    pub fn tune_image_features(
        &self,
        examples: &mut [Example],
        acts: &ImageActivations,
        split: &Split,
        cfg: &FinetuneConfig,
        seed: u64,
        progress: &dyn Progress,
    ) -> Result<TunedImageTower> {
        let service = self.service()?;
        let model = service.image.model();
        let first = cfg.first_block(model.block_count())?;
        let names: BTreeMap<&str, u32> = examples
            .iter()
            .filter_map(|e| e.label.as_deref())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .enumerate()
            .map(|(i, l)| (l, i as u32))
            .collect();
        let labels: Vec<Option<u32>> = examples
            .iter()
            .map(|e| e.label.as_deref().and_then(|l| names.get(l).copied()))
            .collect();
        let tuned = finetune_top(
            &model.top(first)?,
            acts,
            &labels,
            names.len(),
            &split.train,
            &split.val,
            cfg,
            seed,
            progress,
        )?;
        for (e, f) in examples.iter_mut().zip(acts.features(&tuned.top)?) {
            e.image = f;
        }
        TunedImageTower::new(&model.config().name, tuned.report, &tuned.top)
    }

    /// The frozen bottom's activations for fine-tuning with `cfg` (see
    /// [`Catalog::split_tuner`]), computed once for several runs.
    pub fn finetune_activations(
        &self,
        examples: &[Example],
        cfg: &FinetuneConfig,
        progress: &dyn Progress,
    ) -> Result<ImageActivations> {
        let first = cfg.first_block(self.service()?.image.model().block_count())?;
        self.image_activations(examples, first, progress)
    }

    /// A fine-tuner for evaluation runs that each draw their own split: it replaces the
    /// examples' image features by those of a top tuned on the split's training and validation
    /// rows. The activations are computed once by the caller and shared by every run.
    pub fn split_tuner<'a>(
        &'a self,
        acts: &'a ImageActivations,
        cfg: &'a FinetuneConfig,
    ) -> impl Fn(&mut [Example], &Split, u64, &dyn Progress) -> Result<FinetuneReport> + Sync + 'a
    {
        move |examples, split, seed, progress| {
            self.tune_image_features(examples, acts, split, cfg, seed, progress)
                .map(|t| t.report)
        }
    }
}

impl ActiveModel {
    /// Image features as this model reads them: from its fine-tuned top when it has one, else
    /// the frozen tower's.
    pub fn image_features(
        &self,
        tower: &crate::towers::image::ImageTower,
        images: &[PreparedImage],
    ) -> Result<Vec<Vec<f32>>> {
        match &self.image_top {
            Some(top) => tower.tuned_features(images, top),
            None => Ok(tower.embed(images)?.features),
        }
    }
}

/// Builds the fine-tuned top a stored model carries, on the catalogue's frozen tower.
pub(crate) fn load_top(tuned: Option<&TunedImageTower>, catalog: &Catalog) -> Result<Option<Top>> {
    match tuned {
        Some(t) => Ok(Some(t.load(catalog.service()?.image.model())?)),
        None => Ok(None),
    }
}
