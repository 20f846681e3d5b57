//! `trio`: classify and search image–title–description catalogues.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod output;
mod progress;
mod render;
mod settings;

use settings::GlobalArgs;

/// mimalloc keeps freed memory for reuse where glibc's allocator hands every block over its
/// mmap threshold back to the kernel: training allocates and frees such blocks (batches,
/// gradients, similarity matrices) thousands of times, and with glibc's allocator a sixth of
/// `trio train`'s CPU time on the full demo went to the resulting page faults.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "trio",
    version,
    about = "Classify and search image–title–description catalogues"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch the pinned models, test photos and demo catalogue into TRIO_HOME.
    Fetch(commands::fetch::FetchArgs),
    /// Print tower features of images and texts (and ImageNet top-5 for images).
    Embed(commands::embed::EmbedArgs),
    /// Add a manifest (JSONL/CSV) or the demo catalogue to the database.
    Ingest(commands::ingest::IngestArgs),
    /// Get, list or delete stored items.
    Items(commands::items::ItemsArgs),
    /// Train the fused model (and the study's baselines) on the catalogue's labels.
    Train(commands::train::TrainArgs),
    /// Score the active model on a labelled manifest, or run the demo evaluation protocol.
    Eval(commands::eval::EvalArgs),
    /// Classify an image and/or texts; `--claimed` verifies a label.
    Classify(commands::classify::ClassifyArgs),
    /// Search by text, image or stored item.
    Search(commands::search::SearchArgs),
    /// Find exact, perceptual and near-duplicate groups.
    Duplicates(commands::quality::DuplicatesArgs),
    /// Rank items whose label looks wrong.
    Noise(commands::quality::NoiseArgs),
    /// Relabel an item, or confirm its label (`--keep`) so `trio noise` stops listing it.
    Label(commands::review::LabelArgs),
    /// Draw a 2-D map of a vector space (PNG or HTML).
    Map(commands::quality::MapArgs),
    /// List or activate stored model versions.
    Models(commands::models::ModelsArgs),
    /// Measure tower throughput on this device (and GPU-vs-CPU parity with `--parity`).
    Bench(commands::bench::BenchArgs),
    /// Serve the HTTP API and web page.
    Serve(commands::serve::ServeArgs),
    /// The whole job on the demo catalogue: fetch, ingest, train, report, classify.
    Demo(commands::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        die_quietly_on_closed_pipe();
    }
    let trains = match &cli.command {
        Command::Train(_) | Command::Noise(_) => true,
        Command::Eval(a) => a.trains(),
        _ => false,
    };
    if trains {
        keep_elementwise_work_on_this_thread();
    }
    init_logging(&cli.global);
    let result = match cli.command {
        Command::Fetch(a) => commands::fetch::run(a, &cli.global).map(|()| 0),
        Command::Embed(a) => commands::embed::run(a, &cli.global).map(|()| 0),
        Command::Ingest(a) => commands::ingest::run(a, &cli.global),
        Command::Items(a) => commands::items::run(a, &cli.global),
        Command::Train(a) => commands::train::run(a, &cli.global).map(|()| 0),
        Command::Eval(a) => commands::eval::run(a, &cli.global).map(|()| 0),
        Command::Classify(a) => commands::classify::run(a, &cli.global).map(|()| 0),
        Command::Search(a) => commands::search::run(a, &cli.global).map(|()| 0),
        Command::Duplicates(a) => commands::quality::duplicates(a, &cli.global).map(|()| 0),
        Command::Noise(a) => commands::quality::noise(a, &cli.global).map(|()| 0),
        Command::Label(a) => commands::review::label(a, &cli.global).map(|()| 0),
        Command::Map(a) => commands::quality::map(a, &cli.global).map(|()| 0),
        Command::Models(a) => commands::models::run(a, &cli.global).map(|()| 0),
        Command::Bench(a) => commands::bench::run(a, &cli.global).map(|()| 0),
        Command::Serve(a) => commands::serve::run(a, &cli.global).map(|()| 0),
        Command::Demo(a) => commands::demo::run(a, &cli.global).map(|()| 0),
    };
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(code.clamp(1, 255) as u8),
        Err(e) => {
            report_error(&e, cli.global.json);
            ExitCode::FAILURE
        }
    }
}

/// Rust ignores SIGPIPE, so printing to a closed pipe (`trio items list | head -1`) is an error
/// every `println!` turns into a panic. A command-line tool should end the way Unix tools do
/// there: quietly, by the signal. The server keeps the signal ignored: a client that hangs up
/// must cost it one connection, not the process.
fn die_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: called at start-up before any other thread exists; SIG_DFL is a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Errors go to stderr with their causes; under `--json` as one JSON object on stdout too, so a
/// calling program always gets something it can parse. A cause whose text the message already
/// carries (an I/O error wrapped with its path) is not repeated.
fn report_error(e: &anyhow::Error, json: bool) {
    let mut chain: Vec<String> = Vec::new();
    for cause in e.chain().map(|c| c.to_string()) {
        if !chain.last().is_some_and(|last| last.contains(&cause)) {
            chain.push(cause);
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({ "error": { "message": chain.join(": ") } })
        );
    }
    eprintln!("error: {}", chain.join("\n  caused by: "));
}

/// candle hands element-wise operations on 64k or more values to its own worker threads and
/// spin-waits for them. Training's tensors (512-row batches of 128-wide layers, 512 × 512
/// similarity matrices, the optimiser's updates) sit at that size, and the waits cost most of
/// `trio train`'s CPU time on the full demo; matrix products, where threads pay off, are unaffected. So the commands that train
/// run candle's element-wise work on the calling thread, unless `CANDLE_NUM_THREADS` is set.
/// Called before any other thread exists, as `set_var` requires.
fn keep_elementwise_work_on_this_thread() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

fn init_logging(global: &GlobalArgs) {
    let default = if global.quiet { "error" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRIO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
