//! `trio search`: by text, image or stored item, in the fused, image or text space.

use std::path::PathBuf;

use clap::Args;
use trio_engine::catalog::{Catalog, Filter, Query, SearchRequest, Space};

use crate::output;
use crate::settings::{DbArgs, GlobalArgs, TowerArgs};

#[derive(Debug, Args)]
#[group(id = "query", required = true, multiple = false, args = ["text", "image", "id"])]
pub struct SearchArgs {
    #[arg(long)]
    text: Option<String>,
    #[arg(long)]
    image: Option<PathBuf>,
    /// "More like this": a stored item's own vector.
    #[arg(long)]
    id: Option<String>,
    #[arg(long, default_value = "fused")]
    space: Space,
    #[arg(long, default_value_t = 10)]
    k: usize,
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// `field=value` (label, tag, or a metadata field); repeatable, all must hold.
    #[arg(long = "filter")]
    filters: Vec<Filter>,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    towers: TowerArgs,
}

pub fn run(args: SearchArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let catalog = Catalog::open(&args.db.db, args.towers.settings(global)?, global.device()?)?;
    let query = match (args.text, args.image, args.id) {
        (Some(t), _, _) => Query::Text(t),
        (_, Some(p), _) => Query::ImagePath(p),
        (_, _, Some(id)) => Query::Id(id),
        _ => anyhow::bail!("give --text, --image or --id"),
    };
    let req = SearchRequest {
        query,
        space: args.space,
        k: args.k,
        offset: args.offset,
        filters: args.filters,
    };
    let hits = catalog.search(&req)?;
    output::emit(global.json, &hits, |hits| {
        for (i, h) in hits.iter().enumerate() {
            println!(
                "{:>3}. {:.3}  {:<28} {:<24} {}",
                i + 1 + args.offset,
                h.score,
                h.id,
                h.label.as_deref().unwrap_or("-"),
                h.title.as_deref().unwrap_or("")
            );
        }
        if hits.is_empty() {
            println!("no results");
        }
    })
}
