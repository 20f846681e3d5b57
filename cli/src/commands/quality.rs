//! `trio duplicates`, `trio noise` and `trio map`: the catalogue's data quality.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use trio_engine::catalog::{group_id, Catalog, MapOptions, NoiseOptions, Space};
use trio_engine::quality::duplicates::DuplicateOptions;
use trio_engine::quality::noise::LabelNoiseOptions;
use trio_engine::train::TrainConfig;

use super::review;
use crate::output;
use crate::progress::Bars;
use crate::settings::{DbArgs, GlobalArgs, TowerArgs};

#[derive(Debug, Args)]
pub struct DuplicatesArgs {
    /// Space for near-duplicates (kNN through the index).
    #[arg(long, default_value = "image")]
    space: Space,
    /// Cosine similarity at or above which a nearest neighbour is a near-duplicate candidate.
    #[arg(long, default_value_t = DuplicateOptions::default().threshold)]
    threshold: f32,
    /// Largest pHash Hamming distance for resized/re-encoded copies.
    #[arg(long, default_value_t = DuplicateOptions::default().phash_max_distance)]
    phash_distance: u32,
    /// Largest share of pixels of another colour two aligned thumbnails may show (1 = no
    /// pixel check).
    #[arg(long, default_value_t = DuplicateOptions::default().max_pixel_difference)]
    max_pixel_difference: f32,
    /// Smallest character similarity (0–1) of two items' texts, field by field, when both
    /// have text (0 = no text check).
    #[arg(long, default_value_t = DuplicateOptions::default().min_text_similarity)]
    min_text_similarity: f32,
    /// Dismiss the group with this id (as listed) as not duplicates: later reports do not show
    /// its members together.
    #[arg(long, value_name = "GROUP_ID")]
    dismiss: Option<String>,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    towers: TowerArgs,
}

pub fn duplicates(args: DuplicatesArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let catalog = Catalog::open(&args.db.db, args.towers.settings(global)?, global.device()?)?;
    let opts = DuplicateOptions {
        threshold: args.threshold,
        phash_max_distance: args.phash_distance,
        max_pixel_difference: args.max_pixel_difference,
        min_text_similarity: args.min_text_similarity,
        ..DuplicateOptions::default()
    };
    let bars = Bars::new(!global.show_progress());
    let out = catalog.duplicates(Some(args.space), &opts, &bars)?;
    if let Some(group) = &args.dismiss {
        return review::dismiss(&catalog, &out, group, global);
    }
    output::emit(global.json, &review::with_group_ids(&out)?, |_| {
        for g in &out.groups {
            println!(
                "{} {:?} ({}): {}",
                group_id(&g.members),
                g.kind,
                g.members.len(),
                g.members.join(", ")
            );
        }
        println!("{} groups", out.groups.len());
    })
}

#[derive(Debug, Args)]
pub struct NoiseArgs {
    /// How many suspicious items to show.
    #[arg(long, default_value_t = 20)]
    top: usize,
    /// Cross-validation folds for the out-of-fold probabilities.
    #[arg(long, default_value_t = 5)]
    folds: usize,
    #[arg(long, default_value = "label")]
    label_field: String,
    #[arg(long)]
    group_field: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Weight of the neighbours' label vote against the out-of-fold probabilities, in [0, 1]:
    /// 0 ranks on the model alone, 1 on the neighbours alone.
    #[arg(long, default_value_t = LabelNoiseOptions::default().neighbour_weight)]
    neighbour_weight: f32,
    /// Neighbours voting on each item's label (fused space).
    #[arg(long, default_value_t = NoiseOptions::default().neighbours)]
    neighbours: usize,
    /// Also write the out-of-fold probabilities (JSON: label_names, ids, labels, probs), e.g.
    /// to run cleanlab on the same ones.
    #[arg(long)]
    export_oof: Option<PathBuf>,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    towers: TowerArgs,
}

pub fn noise(args: NoiseArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let catalog = Catalog::open(&args.db.db, args.towers.settings(global)?, global.device()?)?;
    let opts = NoiseOptions {
        top: args.top,
        folds: args.folds,
        train: TrainConfig {
            seed: args.seed,
            label_field: args.label_field.clone(),
            ..TrainConfig::default()
        },
        group_field: args.group_field.clone(),
        keep_out_of_fold: args.export_oof.is_some(),
        neighbours: args.neighbours,
        noise: LabelNoiseOptions {
            neighbour_weight: args.neighbour_weight,
            ..LabelNoiseOptions::default()
        },
    };
    let bars = Bars::new(!global.show_progress());
    let mut out = catalog.noise(&opts, &bars)?;
    if let (Some(path), Some(oof)) = (&args.export_oof, out.out_of_fold.take()) {
        let bytes = serde_json::to_vec(&oof)?;
        std::fs::write(path, bytes).with_context(|| {
            format!(
                "writing the out-of-fold probabilities to {}",
                path.display()
            )
        })?;
    }
    output::emit(global.json, &out, |o| {
        for i in &o.issues {
            println!(
                "{:.3}  {:<28} `{}` → `{}`  {}",
                i.score,
                i.id,
                i.given_label,
                i.suggested_label,
                i.title.as_deref().unwrap_or("")
            );
        }
        println!(
            "{} of {} labelled items flagged",
            o.flagged, o.labelled_items
        );
    })
}

#[derive(Debug, Args)]
pub struct MapArgs {
    /// map.png or map.html (hover shows thumbnails).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "fused")]
    space: Space,
    #[arg(long, default_value = "label")]
    color_by: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    towers: TowerArgs,
}

pub fn map(args: MapArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let catalog = Catalog::open(&args.db.db, args.towers.settings(global)?, global.device()?)?;
    let opts = MapOptions {
        space: args.space,
        color_by: args.color_by,
        seed: args.seed,
    };
    let bars = Bars::new(!global.show_progress());
    let points = catalog.map(&opts, &bars)?;
    crate::render::draw(&points, &args.out)?;
    let n = points.len();
    let out = serde_json::json!({ "out": args.out, "points": n });
    output::emit(global.json, &out, |_| {
        println!("wrote {} ({} points)", args.out.display(), n)
    })
}
