//! `trio serve`: the HTTP API and web page over a catalogue.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use trio_engine::catalog::Catalog;
use trio_server::{uploads_dir_for, ApiKey, EngineBackend, ServerConfig};

use crate::settings::{DbArgs, GlobalArgs, TowerArgs};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, alias = "bind", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// File holding the API key for writes (default: $TRIO_API_KEY; without one, writes are off).
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// Require the key for reads too.
    #[arg(long)]
    read_auth: bool,
    /// Create the database if it does not exist (without it, a missing database is an error:
    /// a mistyped path must not serve an empty catalogue).
    #[arg(long)]
    create: bool,
    /// Seconds a client may take to send its request headers (answered 408 after).
    #[arg(long, default_value_t = 5)]
    header_timeout: u64,
    /// Seconds a client may take to send its request body (answered 408 after).
    #[arg(long, default_value_t = 60)]
    body_timeout: u64,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    towers: TowerArgs,
}

pub fn run(args: ServeArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let towers = args.towers.settings(global)?;
    let catalog = if args.create {
        Catalog::open_or_create(&args.db.db, towers, global.device()?)?
    } else {
        Catalog::open(&args.db.db, towers, global.device()?).map_err(|e| match e {
            trio_engine::Error::StoreMissing { path } => anyhow::anyhow!(
                "database {} does not exist (check the path, or pass --create to start an empty \
                 catalogue)",
                path.display()
            ),
            e => e.into(),
        })?
    };
    // Load the towers before answering, so the first request does not pay for it.
    catalog.service()?;
    let backend = EngineBackend::new(Arc::new(catalog), uploads_dir_for(&args.db.db));
    let cfg = ServerConfig {
        bind: args.addr,
        api_key: ApiKey::load(args.api_key_file.as_deref())?,
        read_auth: args.read_auth,
        header_timeout: Duration::from_secs(args.header_timeout),
        body_timeout: Duration::from_secs(args.body_timeout),
        ..ServerConfig::default()
    };
    if !global.quiet {
        eprintln!("serving {} on http://{}", args.db.db.display(), args.addr);
    }
    actix_web::rt::System::new().block_on(trio_server::run(Arc::new(backend), cfg))?;
    Ok(())
}
