//! `trio models list|activate`: stored model versions.

use clap::{Args, Subcommand};
use trio_engine::catalog::Catalog;

use crate::output;
use crate::settings::{DbArgs, GlobalArgs};

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    cmd: ModelsCommand,
    #[command(flatten)]
    db: DbArgs,
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// List stored models, newest last; `*` marks the active one.
    List,
    /// Make an older (or newer) version the active model.
    Activate { version: u32 },
}

pub fn run(args: ModelsArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let catalog = Catalog::open_existing(&args.db.db)?;
    let store = catalog.store();
    match args.cmd {
        ModelsCommand::List => {
            let models = store.list_models()?;
            let active = store.active_version()?;
            let out = serde_json::json!({ "active": active, "models": models });
            output::emit(global.json, &out, |_| {
                for m in &models {
                    let mark = if Some(m.version) == active { "*" } else { " " };
                    let top1 = m.metrics.pointer("/rows").and_then(|rows| {
                        rows.as_array()?
                            .iter()
                            .find(|r| r["variant"] == "fused")
                            .and_then(|r| r.pointer("/test/top1")?.as_f64())
                    });
                    match top1 {
                        Some(t) => println!(
                            "{mark} v{:<4} fused test top-1 {:.1}%",
                            m.version,
                            t * 100.0
                        ),
                        None => println!("{mark} v{}", m.version),
                    }
                }
                if models.is_empty() {
                    println!("no models yet: run `trio train`");
                }
            })
        }
        ModelsCommand::Activate { version } => {
            store.activate(version)?;
            let out = serde_json::json!({ "active": version });
            output::emit(global.json, &out, |_| println!("v{version} is now active"))
        }
    }
}
