//! `trio items get|delete|list|check|export`: look at, check, export and remove stored items.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;
use trio_engine::catalog::Catalog;
use trio_engine::exchange::Precision;
use trio_engine::store::Item;

use crate::output;
use crate::progress::Bars;
use crate::settings::{DbArgs, GlobalArgs, TowerArgs};

#[derive(Debug, Args)]
pub struct ItemsArgs {
    #[command(subcommand)]
    cmd: ItemsCommand,
    #[command(flatten)]
    db: DbArgs,
}

#[derive(Debug, Subcommand)]
enum ItemsCommand {
    /// Show one item.
    Get { id: String },
    /// Delete items (their vectors leave every index).
    Delete { ids: Vec<String> },
    /// Check every item: its image file still there and readable, its stored vectors whole.
    /// Exits 1 when any item has a problem.
    Check,
    /// Write every item with its features as Parquet feature files (the schema `trio embed`
    /// writes and `trio ingest --features` reads).
    Export {
        /// Folder for `part-00000.parquet`, `part-00001.parquet`, …
        #[arg(long)]
        out: PathBuf,
        /// Vector precision: f32, or f16 for half the size.
        #[arg(long, default_value = "f32")]
        precision: Precision,
        /// Rows per file.
        #[arg(long, default_value_t = 100_000)]
        rows_per_file: usize,
        #[command(flatten)]
        towers: TowerArgs,
    },
    /// List items in the order they were added.
    List {
        #[arg(long, default_value_t = 0)]
        offset: usize,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Serialize)]
struct Deleted {
    deleted: Vec<String>,
    not_found: Vec<String>,
}

#[derive(Serialize)]
struct Listing {
    total: u64,
    offset: usize,
    items: Vec<Item>,
}

pub fn run(args: ItemsArgs, global: &GlobalArgs) -> anyhow::Result<i32> {
    let open = || Catalog::open_existing(&args.db.db);
    match args.cmd {
        ItemsCommand::Export {
            out,
            precision,
            rows_per_file,
            towers,
        } => {
            // The files record the towers that computed the features: the catalogue's.
            let catalog = Catalog::open(&args.db.db, towers.settings(global)?, global.device()?)?;
            let bars = Bars::new(!global.show_progress());
            let report = catalog.export_features(&out, precision, rows_per_file, &bars)?;
            output::emit(global.json, &report, |r| {
                println!(
                    "exported {} items into {} file(s) under {} in {:.1}s",
                    r.items,
                    r.files.len(),
                    out.display(),
                    r.seconds
                );
            })?;
            Ok(0)
        }
        ItemsCommand::Get { id } => match open()?.get(&id)? {
            Some(item) => {
                output::emit(global.json, &item, print_item)?;
                Ok(0)
            }
            None => {
                anyhow::bail!("no item with id `{id}` in {}", args.db.db.display())
            }
        },
        ItemsCommand::Delete { ids } => {
            let catalog = open()?;
            let mut out = Deleted {
                deleted: Vec::new(),
                not_found: Vec::new(),
            };
            for id in ids {
                if catalog.delete(&id)? {
                    out.deleted.push(id);
                } else {
                    out.not_found.push(id);
                }
            }
            let code = if out.not_found.is_empty() { 0 } else { 1 };
            output::emit(global.json, &out, |o| {
                println!("deleted {}", o.deleted.len());
                for id in &o.not_found {
                    println!("not found: {id}");
                }
            })?;
            Ok(code)
        }
        ItemsCommand::Check => {
            let catalog = open()?;
            let bars = Bars::new(!global.show_progress());
            let report = catalog.check_items(&bars)?;
            output::emit(global.json, &report, |r| {
                for p in &r.problems {
                    println!("{}: {}", p.id, p.detail);
                }
                println!("{} items checked, {} problems", r.items, r.problems.len());
            })?;
            Ok(if report.problems.is_empty() { 0 } else { 1 })
        }
        ItemsCommand::List { offset, limit } => {
            let catalog = open()?;
            let out = Listing {
                total: catalog.count()?,
                offset,
                items: catalog.list(offset, limit)?,
            };
            output::emit(global.json, &out, |o| {
                for item in &o.items {
                    println!(
                        "{:<28} {:<24} {}",
                        item.id,
                        item.label.as_deref().unwrap_or("-"),
                        item.title
                    );
                }
                println!(
                    "({} of {} items from offset {})",
                    o.items.len(),
                    o.total,
                    o.offset
                );
            })?;
            Ok(0)
        }
    }
}

fn print_item(item: &Item) {
    println!("id:          {}", item.id);
    println!("title:       {}", item.title);
    println!(
        "description: {}",
        item.description.as_deref().unwrap_or("(none)")
    );
    println!("tags:        {}", item.tags.join(", "));
    println!("label:       {}", item.label.as_deref().unwrap_or("(none)"));
    println!(
        "image:       {}",
        item.image_path.as_deref().unwrap_or("(none)")
    );
    println!("hash:        {}", item.content_hash);
    if !item.metadata.is_empty() {
        println!(
            "metadata:    {}",
            serde_json::Value::Object(item.metadata.clone())
        );
    }
}
