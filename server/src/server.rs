//! Binding, serving and graceful shutdown.

use std::io;
use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};

use crate::backend::Backend;
use crate::config::ServerConfig;
use crate::routes::configure;
use crate::state::AppState;

/// Serves `state` on `listener` until stopped through the returned server's handle
/// (`server.handle().stop(true)` finishes in-flight requests, within the configured
/// `shutdown_timeout`). Installs no signal handlers; [`run`] does.
pub fn serve(state: web::Data<AppState>, listener: TcpListener) -> io::Result<Server> {
    let config = &state.config;
    let mut server = HttpServer::new({
        let state = state.clone();
        move || App::new().configure(|cfg| configure(cfg, &state))
    })
    .client_request_timeout(config.header_timeout)
    .shutdown_timeout(config.shutdown_timeout.as_secs())
    .disable_signals();
    if config.workers > 0 {
        server = server.workers(config.workers);
    }
    Ok(server.listen(listener)?.run())
}

/// Binds `config.bind` and serves until SIGINT or SIGTERM, then stops accepting connections,
/// lets in-flight requests finish (up to `config.shutdown_timeout`), calls
/// [`Backend::shutdown`] and returns. Must run inside an actix system (`#[actix_web::main]`).
pub async fn run(backend: Arc<dyn Backend>, config: ServerConfig) -> io::Result<()> {
    let state = AppState::new(backend.clone(), config)?;
    let listener = TcpListener::bind(state.config.bind)?;
    tracing::info!(address = %listener.local_addr()?, "serving");
    let server = serve(state, listener)?;
    let handle = server.handle();
    actix_web::rt::spawn(async move {
        match shutdown_signal().await {
            Ok(signal) => tracing::info!(signal, "stopping: finishing in-flight requests"),
            Err(e) => tracing::error!(error = %e, "cannot listen for signals; stopping"),
        }
        handle.stop(true).await;
    });
    server.await?;
    backend.shutdown();
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() -> io::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.map(|()| "SIGINT"),
            _ = terminate.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map(|()| "Ctrl-C")
    }
}
