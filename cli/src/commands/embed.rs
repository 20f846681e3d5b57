//! `trio embed`: tower features for images and texts (and ImageNet top-5 for images).

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;
use trio_engine::towers::image::{top_k, ClassScore};

use crate::output;
use crate::settings::{GlobalArgs, TowerArgs};

#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Image files to embed (repeatable; batched together).
    #[arg(long = "image")]
    images: Vec<PathBuf>,
    /// Texts to embed (repeatable; batched together).
    #[arg(long = "text")]
    texts: Vec<String>,
    /// ImageNet classes to show per image.
    #[arg(long, default_value_t = 5)]
    top: usize,
    #[command(flatten)]
    towers: TowerArgs,
}

#[derive(Serialize)]
struct ImageResult {
    image: String,
    features: Vec<f32>,
    imagenet_top: Vec<ClassScore>,
}

#[derive(Serialize)]
struct TextResult {
    text: String,
    /// `null` for a missing (blank) text: it has no embedding.
    embedding: Option<Vec<f32>>,
}

#[derive(Serialize)]
struct EmbedOutput {
    device: &'static str,
    images: Vec<ImageResult>,
    texts: Vec<TextResult>,
}

pub fn run(args: EmbedArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    if args.images.is_empty() && args.texts.is_empty() {
        anyhow::bail!("nothing to embed: pass --image PATH and/or --text TEXT");
    }
    let device = global.device()?;
    let mut out = EmbedOutput {
        device: trio_engine::device::device_name(&device),
        images: Vec::new(),
        texts: Vec::new(),
    };
    if !args.images.is_empty() {
        let tower = args.towers.load_image_tower(global, &device)?;
        let pre = tower.preprocessor();
        let prepared = args
            .images
            .iter()
            .map(|p| pre.prepare_path(p))
            .collect::<Result<Vec<_>, _>>()?;
        let emb = tower.embed(&prepared)?;
        for ((path, features), probs) in args.images.iter().zip(emb.features).zip(emb.probabilities)
        {
            out.images.push(ImageResult {
                image: path.display().to_string(),
                features,
                imagenet_top: top_k(&probs, args.top),
            });
        }
    }
    if !args.texts.is_empty() {
        let tower = args.towers.load_text_tower(global, &device)?;
        let texts: Vec<Option<&str>> = args.texts.iter().map(|t| Some(t.as_str())).collect();
        let emb = tower.embed_with_report(&texts)?;
        if !emb.truncated.is_empty() && !global.quiet && !global.json {
            eprintln!(
                "warning: {} text(s) cut at the model's maximum length",
                emb.truncated.len()
            );
        }
        for (text, embedding) in args.texts.iter().zip(emb.vectors) {
            out.texts.push(TextResult {
                text: text.clone(),
                embedding,
            });
        }
    }
    output::emit(global.json, &out, |o| {
        for r in &o.images {
            println!("{}: {}", r.image, output::short_vector(&r.features));
            for c in &r.imagenet_top {
                println!(
                    "    {:>5.1}%  {} ({})",
                    c.probability * 100.0,
                    c.label,
                    c.index
                );
            }
        }
        for r in &o.texts {
            match &r.embedding {
                Some(v) => println!("{:?}: {}", r.text, output::short_vector(v)),
                None => println!("{:?}: missing (blank text has no embedding)", r.text),
            }
        }
    })
}
