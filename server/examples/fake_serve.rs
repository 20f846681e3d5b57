//! Serves the HTTP API over the tests' in-memory fake backend, so the server's own overhead
//! (routing, JSON, batching, queues) can be load-tested before the engine is wired in:
//!
//! ```text
//! cargo build -p trio-server --example fake_serve --release
//! TRIO=target/release/examples/fake_serve lab/scripts/load_test.sh
//! ```
//!
//! Takes the same `serve --bind ADDR` arguments as `trio serve`.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use trio_server::api::NewItem;
use trio_server::{Backend, ImageLimits, ServerConfig};

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bind = match args.as_slice() {
        [serve, flag, address, ..] if serve == "serve" && flag == "--bind" => address
            .parse::<SocketAddr>()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        _ => {
            eprintln!("usage: fake_serve serve --bind 127.0.0.1:PORT");
            std::process::exit(2);
        }
    };
    let backend = support::FakeBackend::new();
    let limits = ImageLimits {
        max_pixels: 1_000_000,
    };
    let words = [
        "red", "blue", "smiling", "sleeping", "face", "car", "cat", "tree", "fish",
    ];
    for i in 0..2000 {
        let title = format!(
            "{} {} {}",
            words[i % 9],
            words[(i / 9) % 9],
            support::LABELS[i % 6]
        );
        backend
            .add_item(
                NewItem {
                    title: Some(title),
                    label: Some(support::LABELS[i % 6].to_string()),
                    ..NewItem::default()
                },
                &limits,
            )
            .map_err(std::io::Error::other)?;
    }
    let backend: Arc<dyn Backend> = backend;
    trio_server::run(
        backend,
        ServerConfig {
            bind,
            ..ServerConfig::default()
        },
    )
    .await
}
