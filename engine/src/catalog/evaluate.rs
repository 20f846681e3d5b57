//! Evaluating the active model on an external labelled manifest (the items are embedded with the
//! towers but never stored), and the demo evaluation protocol on the catalogue's own items.

use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::model::json_text;
use super::model::ActiveModel;
use super::Catalog;
use crate::error::{Error, Result};
use crate::ingest::manifest::{ManifestRow, RowError};
use crate::ingest::pipeline::TEXT_FIELDS;
use crate::progress::Progress;
use crate::towers::image::PreparedImage;
use crate::towers::service::EmbeddingService;
use crate::train::{evaluate_model, Evaluation, Example};

/// Settings of [`Catalog::evaluate_manifest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalOptions {
    /// Rows per tower batch.
    pub batch_size: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self { batch_size: 64 }
    }
}

/// The active model scored on a manifest.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestEvaluation {
    pub model_version: u32,
    /// The field the labels were read from (the one the model was trained on).
    pub label_field: String,
    /// Manifest rows read, good and bad.
    pub rows: usize,
    /// Rows that could not be read or embedded; listed in `errors`.
    pub failed: usize,
    pub errors: Vec<RowError>,
    /// The scores; unknown and missing labels are counted there.
    pub evaluation: Evaluation,
    pub seconds: f64,
}

impl Catalog {
    /// Embeds every row of a labelled manifest with the towers (nothing is stored) and scores
    /// the active model on it: the fused model intact and with each input removed, and the
    /// image-only and text-only baselines stored with it (see [`crate::train::evaluate`]).
    /// Labels are read from the field the model was trained on. Bad rows (unreadable image,
    /// malformed line) are reported with their row number and reason, like ingest does.
    pub fn evaluate_manifest(
        &self,
        rows: impl Iterator<Item = std::result::Result<ManifestRow, RowError>>,
        opts: &EvalOptions,
        progress: &dyn Progress,
    ) -> Result<ManifestEvaluation> {
        if opts.batch_size == 0 {
            return Err(Error::InvalidArgument(
                "batch size must be at least 1".into(),
            ));
        }
        let started = Instant::now();
        let active = self.require_model()?;
        let label_field = active.trained.train.label_field.clone();
        let service = self.service()?;
        let mut examples = Vec::new();
        let mut errors = Vec::new();
        let mut read = 0;
        let mut rows = rows.peekable();
        progress.start("embed manifest", None);
        while rows.peek().is_some() {
            let mut chunk = Vec::with_capacity(opts.batch_size);
            for row in rows.by_ref() {
                read += 1;
                match row {
                    Ok(row) => {
                        for w in &row.warnings {
                            progress.warn(&format!("row {}: {w}", row.row));
                        }
                        chunk.push(row);
                        if chunk.len() == opts.batch_size {
                            break;
                        }
                    }
                    Err(e) => {
                        progress.warn(&e.to_string());
                        errors.push(e);
                    }
                }
            }
            let n = chunk.len() as u64;
            let (embedded, failed) = embed_rows(&service, &active, chunk, &label_field)?;
            for e in &failed {
                progress.warn(&e.to_string());
            }
            examples.extend(embedded);
            errors.extend(failed);
            progress.advance(n);
        }
        progress.finish();
        // Unreadable lines are met while reading, bad images after embedding: report in row order.
        errors.sort_by_key(|e| e.row);
        let evaluation = evaluate_model(&active.trained, &examples, &self.device)?;
        Ok(ManifestEvaluation {
            model_version: active.version,
            label_field,
            rows: read,
            failed: errors.len(),
            errors,
            evaluation,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// Tower features of one chunk of rows, as unstored examples keyed by row number; rows whose
/// image cannot be read or decoded come back as errors.
fn embed_rows(
    service: &EmbeddingService,
    active: &ActiveModel,
    chunk: Vec<ManifestRow>,
    label_field: &str,
) -> Result<(Vec<Example>, Vec<RowError>)> {
    let preprocessor = service.image.preprocessor();
    let prepared: Vec<std::result::Result<(ManifestRow, Option<PreparedImage>), RowError>> = chunk
        .into_par_iter()
        .map(|row| {
            let fail = |reason: String| RowError {
                row: row.row,
                id: row.id.clone(),
                reason,
            };
            let image = match &row.image {
                Some(path) => {
                    let bytes = preprocessor
                        .read_file(path)
                        .map_err(|problem| fail(format!("image {}: {problem}", path.display())))?;
                    Some(
                        preprocessor
                            .prepare_bytes(&bytes, &path.display().to_string())
                            .map_err(|e| fail(e.to_string()))?,
                    )
                }
                None => None,
            };
            Ok((row, image))
        })
        .collect();
    let mut errors = Vec::new();
    let mut good = Vec::with_capacity(prepared.len());
    for p in prepared {
        match p {
            Ok(p) => good.push(p),
            Err(e) => errors.push(e),
        }
    }
    let with_image: Vec<usize> = (0..good.len()).filter(|&i| good[i].1.is_some()).collect();
    let images: Vec<PreparedImage> = with_image
        .iter()
        .filter_map(|&i| good[i].1.take())
        .collect();
    let mut image_features: Vec<Option<Vec<f32>>> = vec![None; good.len()];
    if !images.is_empty() {
        let out = active.image_features(&service.image, &images)?;
        for (&i, f) in with_image.iter().zip(out) {
            image_features[i] = Some(f);
        }
    }
    let mut examples: Vec<Example> = good
        .iter()
        .zip(image_features)
        .map(|((row, _), image)| Example {
            key: row.row as u64,
            image,
            text: Default::default(),
            label: if label_field == "label" {
                row.label.clone()
            } else {
                row.metadata.get(label_field).and_then(json_text)
            },
            group: None,
        })
        .collect();
    for field in TEXT_FIELDS {
        let texts: Vec<Option<&str>> = good
            .iter()
            .map(|(row, _)| match field {
                "title" => row.title.as_deref(),
                "description" => row.description.as_deref(),
                _ => None,
            })
            .collect();
        let out = service.text.embed_with_report(&texts)?;
        for (e, v) in examples.iter_mut().zip(out.vectors) {
            if let Some(v) = v {
                e.text.insert(field.to_string(), v);
            }
        }
    }
    Ok((examples, errors))
}
