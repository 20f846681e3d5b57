//! Data quality over the catalogue: duplicate groups, suspicious labels, and a 2-D map.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{Catalog, Space};
use crate::error::{Error, Result};
use crate::index::VectorIndex;
use crate::progress::Progress;
use crate::quality::duplicates::{self, DupItem, DuplicateKind, DuplicateOptions};
use crate::quality::evidence::{fold_text, CopyEvidence};
use crate::quality::thumbnail::Thumbnail;
use crate::quality::{map, noise};
use crate::store::Item;
use crate::towers::image::{Preprocessor, DEFAULT_MAX_PIXELS};
use crate::train::{cross_val_probabilities, TrainConfig};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DuplicateGroupView {
    pub kind: DuplicateKind,
    pub members: Vec<String>,
    /// The links inside the group, strongest first.
    pub pairs: Vec<DuplicatePairView>,
}

/// One link of a group, by item id, with what was measured on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DuplicatePairView {
    pub a: String,
    pub b: String,
    /// 1 for exact copies, `1 − hamming/64` for perceptual ones, the cosine similarity for
    /// near ones.
    pub score: f32,
    #[serde(flatten)]
    pub evidence: CopyEvidence,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DuplicatesOutcome {
    pub space: Option<Space>,
    pub groups: Vec<DuplicateGroupView>,
    pub refused_merges: usize,
    /// Items with an image whose file could not be read for a thumbnail: their pairs were
    /// judged without the pixel check.
    #[serde(default)]
    pub without_thumbnail: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NoiseOptions {
    pub top: usize,
    pub folds: usize,
    /// Neighbours voting on each item's label (fused space).
    pub neighbours: usize,
    pub noise: noise::LabelNoiseOptions,
    pub train: TrainConfig,
    pub group_field: Option<String>,
    /// Return the out-of-fold probabilities too (to score another tool on the same ones).
    pub keep_out_of_fold: bool,
}

impl Default for NoiseOptions {
    fn default() -> Self {
        Self {
            top: 20,
            folds: 5,
            neighbours: 10,
            noise: noise::LabelNoiseOptions::default(),
            train: TrainConfig::default(),
            group_field: None,
            keep_out_of_fold: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelIssueView {
    pub id: String,
    pub title: Option<String>,
    pub given_label: String,
    pub suggested_label: String,
    /// How likely the given label is wrong, in [0, 1].
    pub score: f32,
    pub p_given: f32,
    /// The model's out-of-fold probability of the suggested label.
    pub p_suggested: f32,
    /// Share of the nearest labelled neighbours that carry the given label (no model: none).
    pub neighbour_agreement: Option<f32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NoiseOutcome {
    pub labelled_items: usize,
    pub flagged: usize,
    pub issues: Vec<LabelIssueView>,
    /// With [`NoiseOptions::keep_out_of_fold`]: the probabilities the ranking started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_fold: Option<OutOfFoldView>,
}

/// Out-of-fold probabilities by item id, in the layout cleanlab's `find_label_issues` takes
/// (`labels[i]` indexes `label_names`; `probs[i]` is over `label_names`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutOfFoldView {
    pub label_names: Vec<String>,
    pub ids: Vec<String>,
    pub labels: Vec<usize>,
    pub probs: Vec<Vec<f32>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MapOptions {
    pub space: Space,
    /// `label` or a metadata field.
    pub color_by: String,
    pub seed: u64,
}

/// One item on a map (see [`Catalog::map`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MapPoint {
    pub id: String,
    pub x: f32,
    pub y: f32,
    /// The value the map colours by.
    pub group: String,
    pub title: String,
    pub image_path: Option<String>,
}

impl Catalog {
    /// Exact (content hash), perceptual (pHash) and near (kNN in `space`) duplicate groups. In
    /// the image space near links are copies (the pixel check applies); in a space that reads
    /// the texts (fused, text) they are re-listings: items whose texts agree, photos may differ.
    pub fn duplicates(
        &self,
        space: Option<Space>,
        opts: &DuplicateOptions,
        progress: &dyn Progress,
    ) -> Result<DuplicatesOutcome> {
        let total = self.store.count()? as usize;
        let items = self.store.list(0, total.max(1))?;
        let ids: HashMap<u64, String> = items.iter().map(|i| (i.key, i.id.clone())).collect();
        let mut thumbnails = self.thumbnails(&items, progress)?;
        let without_thumbnail = items
            .iter()
            .filter(|i| i.image_path.is_some() && !thumbnails.contains_key(&i.key))
            .count();
        let dup_items: Vec<DupItem> = items
            .iter()
            .map(|i| DupItem {
                key: i.key,
                content_hash: hash_bytes(&i.content_hash),
                phash: i.image_phash,
                thumbnail: thumbnails.remove(&i.key),
                texts: vec![
                    fold_text(&i.title),
                    i.description.as_deref().and_then(fold_text),
                ],
            })
            .collect();
        let (index, vectors) = match space {
            Some(space) => {
                let version = if space == Space::Fused {
                    self.require_model()?.version
                } else {
                    0
                };
                let index = self.index(space, progress)?;
                let vectors: HashMap<u64, Vec<f32>> =
                    self.vectors(space, version)?.into_iter().collect();
                (Some(index), vectors)
            }
            None => (None, HashMap::new()),
        };
        let knn = |key: u64, k: usize| -> Vec<(u64, f32)> {
            let (Some(index), Some(v)) = (index.as_ref(), vectors.get(&key)) else {
                return Vec::new();
            };
            let not_self = |other: u64| other != key;
            index
                .search(v, k, Some(&not_self))
                .map(|hits| hits.into_iter().map(|h| (h.key, h.score)).collect())
                .unwrap_or_default()
        };
        let opts = DuplicateOptions {
            relistings: space.is_some_and(|s| s != Space::Image),
            ..opts.clone()
        };
        let report = duplicates::find_duplicates(&dup_items, &knn, &opts, progress)?;
        let name = |k: u64| ids.get(&k).cloned().unwrap_or_else(|| k.to_string());
        let outcome = DuplicatesOutcome {
            space,
            refused_merges: report.refused_merges,
            groups: report
                .groups
                .into_iter()
                .map(|g| DuplicateGroupView {
                    kind: g.kind,
                    members: g.members.iter().map(|&k| name(k)).collect(),
                    pairs: g
                        .pairs
                        .iter()
                        .map(|p| DuplicatePairView {
                            a: name(p.a),
                            b: name(p.b),
                            score: p.score,
                            evidence: p.evidence,
                        })
                        .collect(),
                })
                .collect(),
            without_thumbnail,
        };
        // Pairs a reviewer dismissed are not shown as duplicates (see `review`).
        self.without_dismissed(outcome)
    }

    /// Every item's image thumbnail. Those missing (items stored before thumbnails were kept,
    /// or imported as features) are made from the image files, in parallel, and stored, so
    /// only the first run pays for them; an unreadable file leaves its item without one.
    fn thumbnails(
        &self,
        items: &[Item],
        progress: &dyn Progress,
    ) -> Result<HashMap<u64, Thumbnail>> {
        use rayon::prelude::*;
        let mut out: HashMap<u64, Thumbnail> = self
            .store
            .thumbnails()?
            .into_iter()
            .filter_map(|(k, bytes)| Some((k, Thumbnail::from_bytes(bytes)?)))
            .collect();
        let missing: Vec<(u64, &str)> = items
            .iter()
            .filter(|i| !out.contains_key(&i.key))
            .filter_map(|i| Some((i.key, i.image_path.as_deref()?)))
            .collect();
        if missing.is_empty() {
            return Ok(out);
        }
        let preprocessor = match self.service() {
            Ok(service) => service.image.preprocessor(),
            Err(_) => Preprocessor::new(1, DEFAULT_MAX_PIXELS),
        };
        progress.start("duplicates: thumbnails", Some(missing.len() as u64));
        let made: Vec<(u64, Thumbnail)> = missing
            .par_iter()
            .filter_map(|&(key, path)| {
                let bytes = preprocessor.read_file(std::path::Path::new(path)).ok();
                let image = preprocessor.decode_bytes(&bytes?, path).ok();
                progress.advance(1);
                Some((key, Thumbnail::of(&image?)))
            })
            .collect();
        progress.finish();
        let stored: Vec<(u64, Vec<u8>)> = made
            .iter()
            .map(|(k, t)| (*k, t.as_bytes().to_vec()))
            .collect();
        self.store.put_thumbnails(&stored)?;
        out.extend(made);
        Ok(out)
    }

    /// Ranks labelled items by how likely their label is wrong: out-of-fold probabilities from
    /// cross-validated heads (an item is never scored by a model trained on it), mixed with the
    /// label vote of its neighbours in the fused space when `opts.noise.neighbour_weight` is
    /// positive and a model is trained.
    pub fn noise(&self, opts: &NoiseOptions, progress: &dyn Progress) -> Result<NoiseOutcome> {
        let examples = self.examples(&opts.train.label_field, opts.group_field.as_deref())?;
        let labelled: Vec<_> = examples.into_iter().filter(|e| e.label.is_some()).collect();
        let oof =
            cross_val_probabilities(&labelled, opts.folds, &opts.train, &self.device, progress)?;
        let position: HashMap<u64, usize> = oof
            .rows
            .iter()
            .enumerate()
            .map(|(i, r)| (r.key, i))
            .collect();
        let labels: Vec<usize> = oof.rows.iter().map(|r| r.label_index).collect();
        let probs: Vec<Vec<f32>> = oof.rows.iter().map(|r| r.probs.clone()).collect();
        let neighbours = self.label_neighbours(
            &oof.rows.iter().map(|r| r.key).collect::<Vec<_>>(),
            &position,
            opts.neighbours,
        )?;
        let mut issues = noise::rank_label_issues(&labels, &probs, &neighbours, &opts.noise)?;
        // Labels a reviewer confirmed are not flagged again while the item keeps them.
        let kept = self.kept_labels(&opts.train.label_field)?;
        issues.retain(|i| match kept.get(&oof.rows[i.index].key) {
            Some(label) => oof.labels.get(i.given_label) != Some(label),
            None => true,
        });
        let flagged = issues.len();
        let mut views = Vec::new();
        for issue in issues.into_iter().take(opts.top) {
            let row = &oof.rows[issue.index];
            let item = self.store.get_by_key(row.key)?;
            views.push(LabelIssueView {
                id: item
                    .as_ref()
                    .map(|i| i.id.clone())
                    .unwrap_or_else(|| row.key.to_string()),
                title: item.and_then(|i| super::non_empty(i.title)),
                given_label: oof
                    .labels
                    .get(issue.given_label)
                    .cloned()
                    .unwrap_or_default(),
                suggested_label: oof
                    .labels
                    .get(issue.suggested_label)
                    .cloned()
                    .unwrap_or_default(),
                score: issue.score,
                p_given: issue.p_given,
                p_suggested: probs
                    .get(issue.index)
                    .and_then(|p| p.get(issue.suggested_label))
                    .copied()
                    .unwrap_or_default(),
                neighbour_agreement: issue.neighbour_agreement,
            });
        }
        let out_of_fold = if opts.keep_out_of_fold {
            let mut ids = Vec::with_capacity(oof.rows.len());
            for row in &oof.rows {
                let item = self.store.get_by_key(row.key)?;
                ids.push(item.map(|i| i.id).unwrap_or_else(|| row.key.to_string()));
            }
            Some(OutOfFoldView {
                label_names: oof.labels.clone(),
                ids,
                labels,
                probs,
            })
        } else {
            None
        };
        Ok(NoiseOutcome {
            labelled_items: oof.rows.len(),
            flagged,
            issues: views,
            out_of_fold,
        })
    }

    /// Each item's nearest labelled neighbours in the fused space, as positions in `keys`; empty
    /// lists when no model is trained (the ranking then rests on the probabilities alone).
    fn label_neighbours(
        &self,
        keys: &[u64],
        position: &HashMap<u64, usize>,
        k: usize,
    ) -> Result<Vec<Vec<(usize, f32)>>> {
        let Some(active) = self.active_model()? else {
            return Ok(vec![Vec::new(); keys.len()]);
        };
        let index = self.index(Space::Fused, &crate::progress::NoProgress)?;
        let mut out = Vec::with_capacity(keys.len());
        for &key in keys {
            let Some(v) = self.store.get_fused(active.version, key)? else {
                out.push(Vec::new());
                continue;
            };
            let filter = |other: u64| other != key && position.contains_key(&other);
            let hits = index.search(&v, k, Some(&filter))?;
            out.push(
                hits.into_iter()
                    .filter_map(|h| position.get(&h.key).map(|&p| (p, h.score)))
                    .collect(),
            );
        }
        Ok(out)
    }

    /// A 2-D t-SNE map of a space: each item's coordinates, its group (`color_by`: the label
    /// or a metadata field) and what a drawing shows for it. Drawing is the caller's.
    pub fn map(&self, opts: &MapOptions, progress: &dyn Progress) -> Result<Vec<MapPoint>> {
        let version = if opts.space == Space::Fused {
            self.require_model()?.version
        } else {
            0
        };
        let points = self.vectors(opts.space, version)?;
        if points.len() < 2 {
            return Err(Error::InvalidArgument(format!(
                "the {} space has fewer than two vectors to map",
                opts.space.as_str()
            )));
        }
        progress.start("map layout", None);
        let vectors: Vec<Vec<f32>> = points.iter().map(|(_, v)| v.clone()).collect();
        let layout = map::layout(&vectors, opts.seed)?;
        progress.finish();
        let mut out = Vec::with_capacity(points.len());
        for ((key, _), [x, y]) in points.iter().zip(layout) {
            let Some(item) = self.store.get_by_key(*key)? else {
                continue;
            };
            let group = if opts.color_by == "label" {
                item.label.clone()
            } else {
                item.metadata.get(&opts.color_by).map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
            };
            out.push(MapPoint {
                id: item.id,
                x,
                y,
                group: group.unwrap_or_else(|| "(none)".into()),
                title: item.title,
                image_path: item.image_path,
            });
        }
        Ok(out)
    }
}

/// The stored content hash as bytes. Ingest writes hex SHA-256; any other string (a store
/// written by another tool) is hashed itself, so two distinct strings never read as equal.
fn hash_bytes(hex_hash: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    match hex::decode(hex_hash) {
        Ok(bytes) if bytes.len() == 32 => {
            let mut out = [0u8; 32];
            out.copy_from_slice(&bytes);
            out
        }
        _ => Sha256::digest(hex_hash.as_bytes()).into(),
    }
}
