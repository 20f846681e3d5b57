//! Training the fused model on the catalogue, and using the active model: classification,
//! tag suggestion, label verification.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use super::active::ActiveModel;
use super::{Catalog, Space};
use crate::error::{Error, Result};
use crate::models::fusion::{FusedModel, FusionInput};
use crate::progress::Progress;
use crate::store::ModelBlob;
use crate::train::{split, Example, FinetuneReport, Report, TrainConfig, TrainedModel, Trainer};

/// What `train` does beyond the trainer's own settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainOptions {
    pub config: TrainConfig,
    /// A metadata field whose equal values must stay in one split (one product photographed
    /// twice, one emoji drawn by two vendors). `None`: every item on its own.
    pub group_field: Option<String>,
    /// Store the new model without making it active (the one in use stays until
    /// `activate`): for comparing a candidate before switching to it.
    #[serde(default)]
    pub keep_active: bool,
}

/// The result of a training run: the stored version and the study's table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainOutcome {
    pub version: u32,
    pub report: Report,
    /// Items that got a fused vector.
    pub fused_vectors: usize,
    /// How the image tower's top was fine-tuned, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_tuning: Option<FinetuneReport>,
}

/// Inputs to classify or search with; any subset.
#[derive(Debug, Clone, Default)]
pub struct ClassifyInput {
    pub image_path: Option<PathBuf>,
    pub image_bytes: Option<Vec<u8>>,
    pub title: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelScore {
    pub label: String,
    pub probability: f32,
}

/// A nearby stored item offered as evidence for a label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub id: String,
    pub title: Option<String>,
    pub label: Option<String>,
    pub score: f32,
}

/// The answer to "is this item's label right?" (machine-in-the-loop verification).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimCheck {
    pub label: String,
    pub probability: f32,
    /// The model's top choice is the claimed label.
    pub agrees: bool,
    pub model_choice: String,
    /// Nearest stored items labelled with the claimed label.
    pub evidence_claimed: Vec<Evidence>,
    /// Nearest stored items labelled with the model's choice (empty when it agrees).
    pub evidence_model: Vec<Evidence>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    pub model_version: u32,
    pub labels: Vec<LabelScore>,
    pub claimed: Option<ClaimCheck>,
}

const EVIDENCE: usize = 3;

impl Catalog {
    /// The labelled (and unlabelled) items as training examples, straight from the stored
    /// features: nothing is recomputed. `label_field` is `label` or a metadata field.
    pub fn examples(&self, label_field: &str, group_field: Option<&str>) -> Result<Vec<Example>> {
        let mut out = Vec::new();
        for entry in self.store.iter_features()? {
            let (key, features) = entry?;
            let Some(item) = self.store.get_by_key(key)? else {
                continue;
            };
            let label = if label_field == "label" {
                item.label.clone()
            } else {
                item.metadata.get(label_field).and_then(json_text)
            };
            let group = group_field
                .and_then(|g| item.metadata.get(g))
                .and_then(json_text);
            out.push(Example {
                key,
                image: features.image,
                text: features.text,
                label,
                group,
            });
        }
        Ok(out)
    }

    /// Trains the study's variants (image-only, text-only, fused, logistic regression), stores
    /// the fused model (carrying the image-only and text-only baselines) as a new active version, computes every item's fused vector and drops
    /// the stale fused index.
    ///
    /// With `finetune_image` set, the image tower's top is first fine-tuned on the same split's
    /// training items (epoch chosen on validation), every item's image features are recomputed
    /// with it for this model, and the model stores the tuned top.
    pub fn train(&self, opts: &TrainOptions, progress: &dyn Progress) -> Result<TrainOutcome> {
        let mut examples = self.examples(&opts.config.label_field, opts.group_field.as_deref())?;
        let trainer = Trainer::new(opts.config.clone(), self.device.clone())?;
        let split = split::per_class(&examples, opts.config.holdout, opts.config.seed)?;
        let image_tower = match &opts.config.finetune_image {
            Some(cfg) => {
                let service = self.service()?;
                let first = cfg.first_block(service.image.model().block_count())?;
                let acts = self.image_activations(&examples, first, progress)?;
                Some(self.tune_image_features(
                    &mut examples,
                    &acts,
                    &split,
                    cfg,
                    opts.config.seed,
                    progress,
                )?)
            }
            None => None,
        };
        let study = trainer.run_study_on(&examples, split, progress)?;
        // The baselines travel with the fused model so `evaluate_manifest` can score them too.
        let stored = study.fused.clone().with_baselines(
            study
                .image_only
                .into_iter()
                .chain(study.text_only)
                .collect(),
        );
        let image_tuning = image_tower.as_ref().map(|t| t.report.clone());
        let stored = stored.with_image_tower(image_tower);
        let blob = ModelBlob {
            config: serde_json::to_value(&study.fused.config)
                .map_err(|e| json_err("model config", e))?,
            metrics: serde_json::to_value(&study.report)
                .map_err(|e| json_err("training report", e))?,
            safetensors: stored.to_bytes()?,
        };
        let version = self.store.put_model(&blob)?;
        let model = study.fused.load(&self.device)?;
        let fused_vectors = self.write_fused_vectors(version, &model, &examples, progress)?;
        if !opts.keep_active {
            self.store.activate(version)?;
            self.set_active(None)?;
            self.drop_indexes()?;
        }
        Ok(TrainOutcome {
            version,
            report: study.report,
            fused_vectors,
            image_tuning,
        })
    }

    fn write_fused_vectors(
        &self,
        version: u32,
        model: &FusedModel,
        examples: &[Example],
        progress: &dyn Progress,
    ) -> Result<usize> {
        progress.start("fused vectors", Some(examples.len() as u64));
        let mut written = 0;
        for chunk in examples.chunks(1024) {
            let usable: Vec<&Example> = chunk
                .iter()
                .filter(|e| e.image.is_some() || !e.text.is_empty())
                .collect();
            let owned: Vec<Example> = usable.iter().map(|e| (*e).clone()).collect();
            let vectors = model.fused_vectors(&owned)?;
            let points: Vec<(u64, Vec<f32>)> = owned.iter().map(|e| e.key).zip(vectors).collect();
            written += self.store.put_fused_skipping_deleted(version, &points)?;
            progress.advance(chunk.len() as u64);
        }
        progress.finish();
        Ok(written)
    }

    /// Fused vectors for items ingested after training (the catalogue grows; the head is
    /// reused until the next `train`). `tuned` holds image features already computed with a
    /// model's fine-tuned top, by key, with that model's version; they are used when it is
    /// still the active model.
    pub(crate) fn fuse_new_items(
        &self,
        keys: &[u64],
        tuned: &HashMap<u64, (u32, Vec<f32>)>,
    ) -> Result<()> {
        let Some(active) = self.active_model()? else {
            return Ok(());
        };
        let mut examples = Vec::new();
        for &key in keys {
            if let Some(f) = self.store.get_features(key)? {
                examples.push(Example {
                    key,
                    image: f.image,
                    text: f.text,
                    label: None,
                    group: None,
                });
            }
        }
        if examples.is_empty() {
            return Ok(());
        }
        if active.image_top.is_some() {
            self.retune_images(&active, &mut examples, tuned)?;
        }
        let vectors = active.model().fused_vectors(&examples)?;
        let points: Vec<(u64, Vec<f32>)> = examples.iter().map(|e| e.key).zip(vectors).collect();
        self.store
            .put_fused_skipping_deleted(active.version, &points)
            .map(|_| ())
    }

    /// The active model, loaded once per version; `None` before any training.
    pub fn active_model(&self) -> Result<Option<Arc<ActiveModel>>> {
        let Some(version) = self.store.active_version()? else {
            return Ok(None);
        };
        if let Some(m) = self.active.read().map_err(|_| poisoned())?.as_ref() {
            if m.version == version {
                return Ok(Some(m.clone()));
            }
        }
        let stored = self
            .store
            .get_model(version)?
            .ok_or_else(|| Error::NoModel {
                reason: format!("active model version {version} is missing from the store"),
            })?;
        let trained = TrainedModel::from_bytes(&stored.safetensors)?;
        let classifier = trained.load(&self.device)?;
        let image_top = super::image_tuning::load_top(trained.image_tower.as_ref(), self)?;
        let active = Arc::new(ActiveModel {
            version,
            trained,
            classifier,
            image_top,
        });
        self.set_active(Some(active.clone()))?;
        Ok(Some(active))
    }

    pub(crate) fn require_model(&self) -> Result<Arc<ActiveModel>> {
        self.active_model()?.ok_or_else(|| Error::NoModel {
            reason: "train one first with `trio train`".into(),
        })
    }

    fn set_active(&self, m: Option<Arc<ActiveModel>>) -> Result<()> {
        *self.active.write().map_err(|_| poisoned())? = m;
        Ok(())
    }

    /// The fine-tuned image features of stored items, for a model that reads them: taken from
    /// `tuned` when ingest computed them for this model, else the image is read again (the
    /// stored features are the frozen tower's).
    fn retune_images(
        &self,
        active: &ActiveModel,
        examples: &mut [Example],
        tuned: &HashMap<u64, (u32, Vec<f32>)>,
    ) -> Result<()> {
        let service = self.service()?;
        let preprocessor = service.image.preprocessor();
        for e in examples.iter_mut().filter(|e| e.image.is_some()) {
            if let Some((version, features)) = tuned.get(&e.key) {
                if *version == active.version {
                    e.image = Some(features.clone());
                    continue;
                }
            }
            let item = self.store.get_by_key(e.key)?;
            let path = item.as_ref().and_then(|i| i.image_path.as_deref());
            e.image = match path {
                Some(p) => {
                    let prepared = preprocessor.prepare_path(std::path::Path::new(p))?;
                    active
                        .image_features(&service.image, &[prepared])?
                        .into_iter()
                        .next()
                }
                None => None,
            };
        }
        Ok(())
    }

    /// Tower features of free-standing inputs, shaped for the active model: its fine-tuned
    /// image features when it has a fine-tuned image tower, else the frozen towers' (as without
    /// a model).
    pub fn fusion_input(&self, input: &ClassifyInput) -> Result<FusionInput> {
        let active = self.active_model()?;
        self.tower_input(input, active.as_deref())
    }

    /// Tower features of free-standing inputs, the image read the way `model` reads it
    /// (`None`: the frozen tower).
    pub(crate) fn tower_input(
        &self,
        input: &ClassifyInput,
        model: Option<&ActiveModel>,
    ) -> Result<FusionInput> {
        let service = self.service()?;
        let bytes = match (&input.image_bytes, &input.image_path) {
            (Some(b), _) => Some(b.clone()),
            (None, Some(p)) => Some(service.image.preprocessor().read_file(p).map_err(
                |problem| Error::Image {
                    image: p.display().to_string(),
                    problem,
                },
            )?),
            (None, None) => None,
        };
        let name = input
            .image_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "uploaded image".into());
        let mut texts = BTreeMap::new();
        texts.insert("title".to_string(), input.title.clone());
        texts.insert("description".to_string(), input.description.clone());
        let mut features = service.embed_item(None, &texts)?;
        if let Some(bytes) = &bytes {
            let prepared = service.image.preprocessor().prepare_bytes(bytes, &name)?;
            features.image = match model {
                Some(m) => m.image_features(&service.image, &[prepared])?,
                None => service.image.embed(&[prepared])?.features,
            }
            .into_iter()
            .next();
        }
        if features.image.is_none() && features.text.is_empty() {
            return Err(Error::InvalidArgument(
                "nothing to classify: give an image, a title or a description".into(),
            ));
        }
        Ok(FusionInput {
            image: features.image,
            text: features.text,
        })
    }

    /// Classifies any subset of inputs; with `claimed`, checks that label against the model and
    /// brings the nearest stored examples of both classes as evidence.
    pub fn classify(
        &self,
        input: &ClassifyInput,
        top: usize,
        claimed: Option<&str>,
    ) -> Result<Classification> {
        let active = self.require_model()?;
        let query = self.tower_input(input, Some(&active))?;
        let probs = active
            .classifier
            .predict(std::slice::from_ref(&query))?
            .into_iter()
            .next()
            .unwrap_or_default();
        let labels: Vec<LabelScore> = active
            .trained
            .top_k(&probs, top.max(1))
            .into_iter()
            .map(|(label, probability)| LabelScore { label, probability })
            .collect();
        let claimed = match claimed {
            None => None,
            Some(label) => Some(self.check_claim(&active, &query, &probs, label)?),
        };
        Ok(Classification {
            model_version: active.version,
            labels,
            claimed,
        })
    }

    fn check_claim(
        &self,
        active: &ActiveModel,
        query: &FusionInput,
        probs: &[f32],
        label: &str,
    ) -> Result<ClaimCheck> {
        let index = active
            .trained
            .labels
            .iter()
            .position(|l| l == label)
            .ok_or_else(|| Error::UnknownLabel {
                label: label.to_string(),
            })?;
        let best = probs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap_or(0);
        let model_choice = active.trained.labels.get(best).cloned().unwrap_or_default();
        let vector = active
            .model()
            .fused_vectors(std::slice::from_ref(query))?
            .into_iter()
            .next()
            .unwrap_or_default();
        let evidence = |l: &str| self.nearest_with_label(&vector, l, EVIDENCE);
        let agrees = best == index;
        Ok(ClaimCheck {
            label: label.to_string(),
            probability: probs.get(index).copied().unwrap_or(0.0),
            agrees,
            evidence_claimed: evidence(label)?,
            evidence_model: if agrees {
                Vec::new()
            } else {
                evidence(&model_choice)?
            },
            model_choice,
        })
    }

    fn nearest_with_label(&self, vector: &[f32], label: &str, k: usize) -> Result<Vec<Evidence>> {
        let allowed = self.keys_matching(&[super::Filter {
            field: "label".into(),
            value: label.into(),
        }])?;
        let index = self.index(Space::Fused, &crate::progress::NoProgress)?;
        let filter = |key: u64| allowed.contains(&key);
        let hits = crate::index::VectorIndex::search(index.as_ref(), vector, k, Some(&filter))?;
        let mut out = Vec::with_capacity(hits.len());
        for hit in hits {
            if let Some(item) = self.store.get_by_key(hit.key)? {
                out.push(Evidence {
                    id: item.id,
                    title: super::non_empty(item.title),
                    label: item.label,
                    score: hit.score,
                });
            }
        }
        Ok(out)
    }
}

pub(super) fn json_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn json_err(context: &str, source: serde_json::Error) -> Error {
    Error::Json {
        context: context.to_string(),
        source,
    }
}

fn poisoned() -> Error {
    Error::Internal("active model lock poisoned".into())
}
