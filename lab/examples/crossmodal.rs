//! Cross-modal recall on the demo catalogue: with all text removed from the indexed items,
//! does each test emoji's name, as a text query, find its image?
//!
//! ```sh
//! trio ingest --demo --db demo.trio
//! TRIO_HOME=... cargo run -p trio-lab --example crossmodal -- --db demo.trio [--seed 0] [--json out.json]
//! ```
//!
//! Splits the catalogue per class with emoji kept whole (`emoji_key`), as `trio train` does,
//! and trains the fused model on the same split two ways: unaligned (joint heads left as
//! initialised) and the default (joint heads on the frozen features, aligned beside the
//! classifier, `train::align`). The gallery is every item's image-only fused
//! vector; the queries are the test emoji's names through the text tower (`trio search
//! --text`'s path). A query hits when any render of its emoji (either vendor, any skin tone) is
//! among the k nearest; the strict figure counts only the base (no skin tone) renders. The
//! class figure counts any image of the query emoji's class (its subcategory), which tells a
//! model that finds the right kind of emoji from one that finds nothing; the per-category
//! table breaks the default's figures down by the query emoji's category.
//!
//! Choosing settings: `--queries val` asks with the validation emoji's names instead (never
//! the test ones), and `--default-only` with the alignment flags (`--temperature`,
//! `--joint-hidden`, `--align-batch`, `--align-lr`, `--random-batches`,
//! `--classifier-epochs`) trains one variant, so a sweep over them reads validation only.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use trio_engine::catalog::Catalog;
use trio_engine::fetch::{Home, LiteVariant};
use trio_engine::models::fusion::FusionConfig;
use trio_engine::towers::service::TowerSettings;
use trio_engine::train::trainer::FUSED;
use trio_engine::train::{split, InputSet, TrainConfig, Trainer};
use trio_engine::{DeviceChoice, NoProgress};
use trio_lab::crossmodal::{image_only_vectors, text_to_image_recall, CrossModalRecall, TextQuery};

struct Args {
    db: PathBuf,
    seed: u64,
    json: Option<PathBuf>,
    /// Which split's emoji names query: `test` (the report) or `val` (choosing settings).
    queries: String,
    default_only: bool,
    temperature: Option<f32>,
    joint_hidden: Option<usize>,
    align_batch: Option<usize>,
    align_lr: Option<f64>,
    random_batches: bool,
    classifier_epochs: Option<usize>,
}

fn args() -> anyhow::Result<Args> {
    let mut out = Args {
        db: PathBuf::from("demo.trio"),
        seed: 0,
        json: None,
        queries: "test".into(),
        default_only: false,
        temperature: None,
        joint_hidden: None,
        align_batch: None,
        align_lr: None,
        random_batches: false,
        classifier_epochs: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--db" => out.db = value()?.into(),
            "--seed" => out.seed = value()?.parse()?,
            "--json" => out.json = Some(value()?.into()),
            "--queries" => out.queries = value()?,
            "--default-only" => out.default_only = true,
            "--temperature" => out.temperature = Some(value()?.parse()?),
            "--joint-hidden" => out.joint_hidden = Some(value()?.parse()?),
            "--align-batch" => out.align_batch = Some(value()?.parse()?),
            "--align-lr" => out.align_lr = Some(value()?.parse()?),
            "--random-batches" => out.random_batches = true,
            "--classifier-epochs" => out.classifier_epochs = Some(value()?.parse()?),
            other => bail!(
                "unknown argument {other} (--db FILE, --seed N, --json FILE, --queries test|val, \
                 --default-only, --temperature T, --joint-hidden N, --align-batch N, \
                 --align-lr LR, --random-batches, --classifier-epochs N)"
            ),
        }
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    let home = Home::resolve(None)?;
    let device = DeviceChoice::Cpu.resolve()?;
    let catalog = Catalog::open(
        &args.db,
        TowerSettings::from_home(&home, LiteVariant::Lite0),
        device.clone(),
    )?;
    let examples: Vec<_> = catalog
        .examples("label", Some("emoji_key"))?
        .into_iter()
        .filter(|e| e.label.is_some())
        .collect();
    let total = catalog.count()? as usize;
    let items: HashMap<u64, _> = catalog
        .list(0, total.max(1))?
        .into_iter()
        .map(|i| (i.key, i))
        .collect();
    let meta = |key: u64, field: &str| -> Option<String> {
        items
            .get(&key)
            .and_then(|i| i.metadata.get(field))
            .and_then(|v| v.as_str().map(str::to_string))
    };

    let defaults = TrainConfig::default();
    let cfg = TrainConfig {
        seed: args.seed,
        epochs: args.classifier_epochs.unwrap_or(defaults.epochs),
        align_batch_size: args.align_batch.unwrap_or(defaults.align_batch_size),
        align_lr: args.align_lr.unwrap_or(defaults.align_lr),
        align_class_batches: defaults.align_class_batches && !args.random_batches,
        model: FusionConfig {
            temperature: args.temperature.unwrap_or(defaults.model.temperature),
            joint_hidden: args.joint_hidden.unwrap_or(defaults.model.joint_hidden),
            ..defaults.model.clone()
        },
        ..defaults
    };
    let split = split::per_class(&examples, cfg.holdout, cfg.seed)?;
    let query_rows = match args.queries.as_str() {
        "test" => &split.test,
        "val" => &split.val,
        other => bail!("--queries takes test or val, not {other}"),
    };

    // Gallery: every item with an image. Queries: one per test emoji (its base name).
    let gallery_rows: Vec<usize> = (0..examples.len())
        .filter(|&r| examples[r].image.is_some())
        .collect();
    let gallery_features: Vec<Vec<f32>> = gallery_rows
        .iter()
        .filter_map(|&r| examples[r].image.clone())
        .collect();
    let mut renders: BTreeMap<String, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
    let mut class_members: HashMap<String, Vec<usize>> = HashMap::new();
    for (g, &r) in gallery_rows.iter().enumerate() {
        if let Some(label) = &examples[r].label {
            class_members.entry(label.clone()).or_default().push(g);
        }
        if let Some(k) = meta(examples[r].key, "emoji_key") {
            let entry = renders.entry(k).or_default();
            entry.0.push(g);
            if meta(examples[r].key, "skin_tone").is_none() {
                entry.1.push(g);
            }
        }
    }
    // One name query per emoji, keyed by emoji so vendors and skin tones ask once.
    let mut names: BTreeMap<String, NameQuery> = BTreeMap::new();
    for &r in query_rows {
        let key = examples[r].key;
        if meta(key, "skin_tone").is_some() {
            continue;
        }
        if let (Some(k), Some(item), Some(label)) =
            (meta(key, "emoji_key"), items.get(&key), &examples[r].label)
        {
            if !item.title.trim().is_empty() {
                let query = NameQuery {
                    emoji: k.clone(),
                    name: item.title.clone(),
                    class: label.clone(),
                    category: meta(key, "category").unwrap_or_else(|| "-".into()),
                };
                names.insert(k, query);
            }
        }
    }
    let names: Vec<NameQuery> = names
        .into_values()
        .filter(|q| renders.get(&q.emoji).is_some_and(|r| !r.1.is_empty()))
        .collect();
    if names.is_empty() {
        bail!(
            "no test emoji with an image and a name: is {} the demo catalogue?",
            args.db.display()
        );
    }

    let service = catalog.service()?;
    let started = Instant::now();
    let mut embeddings = Vec::with_capacity(names.len());
    for chunk in names.chunks(64) {
        let texts: Vec<&str> = chunk.iter().map(|q| q.name.as_str()).collect();
        embeddings.extend(service.text.embed(&texts)?);
    }
    let text_seconds = started.elapsed().as_secs_f64();
    let queries = |hit: Hit| -> Vec<TextQuery> {
        names
            .iter()
            .zip(&embeddings)
            .map(|(q, e)| TextQuery {
                embedding: e.clone(),
                relevant: match hit {
                    Hit::AnyRender => renders.get(&q.emoji).map(|r| r.0.clone()),
                    Hit::BaseRender => renders.get(&q.emoji).map(|r| r.1.clone()),
                    Hit::Class => class_members.get(&q.class).cloned(),
                }
                .unwrap_or_default(),
            })
            .collect()
    };
    let (any_render, base_render, same_class) = (
        queries(Hit::AnyRender),
        queries(Hit::BaseRender),
        queries(Hit::Class),
    );
    eprintln!(
        "{} items ({} in the gallery), {} {} emoji queries (text tower {:.1} s)",
        examples.len(),
        gallery_features.len(),
        names.len(),
        args.queries,
        text_seconds
    );

    let fields = {
        let mut f: Vec<String> = examples
            .iter()
            .flat_map(|e| e.text.keys().cloned())
            .collect();
        f.sort();
        f.dedup();
        f
    };
    let inputs = InputSet {
        image: true,
        text_fields: fields,
    };
    let unaligned = TrainConfig {
        align_epochs: 0,
        ..cfg.clone()
    };
    let mut runs = vec![("aligned (default: heads on frozen features)", cfg.clone())];
    if !args.default_only {
        runs.insert(0, ("unaligned (joint heads untrained)", unaligned));
    }
    let mut variants = Vec::new();
    for (name, train_cfg) in runs {
        let started = Instant::now();
        let trainer = Trainer::new(train_cfg, device.clone())?;
        let trained = trainer.train_variant(&examples, &split, FUSED, &inputs, &NoProgress)?;
        let model = trained.load(&device)?;
        let gallery = image_only_vectors(&model, &gallery_features)?;
        let all = text_to_image_recall(&model, &gallery, &any_render, &[1, 10])?;
        let strict = text_to_image_recall(&model, &gallery, &base_render, &[1, 10])?;
        let class = text_to_image_recall(&model, &gallery, &same_class, &[1, 10])?;
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "{name}: R@1 {:.3} R@10 {:.3} (base render: {:.3} / {:.3}; class R@1 {:.3}); test top-1 {:.3}; {seconds:.0} s",
            all.at(1).unwrap_or(0.0),
            all.at(10).unwrap_or(0.0),
            strict.at(1).unwrap_or(0.0),
            strict.at(10).unwrap_or(0.0),
            class.at(1).unwrap_or(0.0),
            trained.metrics.test.top1,
        );
        variants.push(Variant {
            name,
            any_render: all,
            base_render: strict,
            class,
            test_top1: trained.metrics.test.top1,
        });
    }

    println!("| model | recall@1 | recall@10 | MRR | median rank | base render R@1 / R@10 | class R@1 / R@10 | classifier test top-1 |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for v in &variants {
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {} | {:.3} / {:.3} | {:.3} / {:.3} | {:.3} |",
            v.name,
            v.any_render.at(1).unwrap_or(0.0),
            v.any_render.at(10).unwrap_or(0.0),
            v.any_render.mean_reciprocal_rank,
            v.any_render.median_rank,
            v.base_render.at(1).unwrap_or(0.0),
            v.base_render.at(10).unwrap_or(0.0),
            v.class.at(1).unwrap_or(0.0),
            v.class.at(10).unwrap_or(0.0),
            v.test_top1,
        );
    }
    let per_category = variants
        .last()
        .map(|v| per_category(&names, &v.any_render.ranks, &v.class.ranks))
        .unwrap_or_default();
    println!();
    println!(
        "Per category ({}): the emoji's recall@10, its class's recall@1 and @10",
        variants.last().map_or("", |v| v.name)
    );
    println!();
    println!("| category | queries | emoji R@10 | class R@1 | class R@10 |");
    println!("|---|---:|---:|---:|---:|");
    for c in &per_category {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} |",
            c.category, c.queries, c.emoji_recall_at_10, c.class_recall_at_1, c.class_recall_at_10
        );
    }
    println!(
        "{} {} queries, gallery of {} image-only vectors, seed {}",
        names.len(),
        args.queries,
        gallery_features.len(),
        args.seed
    );
    if let Some(path) = args.json {
        let out: Vec<_> = variants
            .iter()
            .map(|v| {
                serde_json::json!({
                    "model": v.name, "any_render": v.any_render,
                    "base_render": v.base_render, "class": v.class, "test_top1": v.test_top1,
                })
            })
            .collect();
        let out = serde_json::json!({"variants": out, "per_category": per_category});
        std::fs::write(&path, serde_json::to_vec_pretty(&out)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

struct Variant {
    name: &'static str,
    any_render: CrossModalRecall,
    base_render: CrossModalRecall,
    /// Hit: any image of the query emoji's class.
    class: CrossModalRecall,
    test_top1: f64,
}

/// One emoji's name, asked as a text query.
struct NameQuery {
    /// The demo's `emoji_key`: every vendor and skin tone of the emoji.
    emoji: String,
    name: String,
    /// The emoji's label (its subcategory).
    class: String,
    category: String,
}

/// What counts as a hit for a name query.
#[derive(Clone, Copy)]
enum Hit {
    AnyRender,
    BaseRender,
    Class,
}

#[derive(serde::Serialize)]
struct CategoryRow {
    category: String,
    queries: usize,
    emoji_recall_at_10: f64,
    class_recall_at_1: f64,
    class_recall_at_10: f64,
}

/// The default's figures per query category, most queries first.
fn per_category(
    names: &[NameQuery],
    emoji_ranks: &[usize],
    class_ranks: &[usize],
) -> Vec<CategoryRow> {
    let mut by_category: BTreeMap<&str, [usize; 4]> = BTreeMap::new();
    for ((query, &emoji), &of_class) in names.iter().zip(emoji_ranks).zip(class_ranks) {
        let row = by_category.entry(&query.category).or_default();
        row[0] += 1;
        row[1] += usize::from(emoji <= 10);
        row[2] += usize::from(of_class <= 1);
        row[3] += usize::from(of_class <= 10);
    }
    let mut rows: Vec<CategoryRow> = by_category
        .into_iter()
        .map(|(category, [n, emoji, class1, class10])| CategoryRow {
            category: category.to_string(),
            queries: n,
            emoji_recall_at_10: emoji as f64 / n as f64,
            class_recall_at_1: class1 as f64 / n as f64,
            class_recall_at_10: class10 as f64 / n as f64,
        })
        .collect();
    rows.sort_by(|a, b| b.queries.cmp(&a.queries).then(a.category.cmp(&b.category)));
    rows
}
