//! `snakepit serve`, built with [`Snakepit::builder`](crate::Snakepit::builder): telemetry, then the HTTP listener (probes answer "starting" at
//! once), then the pools, then traffic; on SIGTERM/SIGINT the reverse: readiness goes
//! 503 and new requests are refused, admitted ones finish (up to `drain_timeout_ms`),
//! workers stop, telemetry flushes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::app::{BuildError, Snakepit};
use crate::config::AppConfig;

/// Why `snakepit serve` stopped before serving, or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Setting up telemetry, the configuration, or the pools failed (see
    /// [`BuildError`]).
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The listen address could not be bound (in use, or not this host's).
    #[error("cannot listen on {addr}: {message} (is another process using it? set server.listen)")]
    Bind {
        /// `server.listen` (or `--listen`).
        addr: String,
        /// What the OS said.
        message: String,
    },
}

impl From<snakepit_core::StartError> for ServeError {
    fn from(e: snakepit_core::StartError) -> Self {
        ServeError::Build(BuildError::Start(e))
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Run `cfg` until SIGTERM or SIGINT: listen (probes answer at once), start the
/// pools, serve; then drain and stop (see the [module docs](self)).
pub async fn serve(cfg: AppConfig) -> Result<(), ServeError> {
    let started = Instant::now();
    let starting = Snakepit::builder_from(&cfg).build()?;

    // Listen first: orchestrators see "starting" (503 ready, 200 live) while pools start.
    let listener = tokio::net::TcpListener::bind(&cfg.server.listen)
        .await
        .map_err(|e| ServeError::Bind {
            addr: cfg.server.listen.clone(),
            message: e.to_string(),
        })?;
    let app = starting.router();
    let (stop_http, stop_http_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(async move {
        let mut rx = stop_http_rx;
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = rx.wait_for(|stop| *stop).await;
        })
        .await;
    });
    eprintln!(
        "snakepit: listening on http://{} (probes answer while pools start)",
        cfg.server.listen
    );
    for p in starting.pool_configs() {
        eprintln!(
            "snakepit: starting pool '{}': {} workers of {}",
            p.name, p.size, p.adapter
        );
    }
    let pit = match starting.start().await {
        Ok(pit) => pit,
        Err(e) => {
            let _ = stop_http.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
            return Err(e.into());
        }
    };
    for pool in pit.pools().iter() {
        let load = pool.load();
        // The run id is on each worker's command line (`--run-id`): what finds them.
        eprintln!(
            "snakepit: pool '{}' up: {}/{} workers (run id {})",
            pool.name(),
            load.ready_workers,
            load.total_workers,
            pool.run_id()
        );
    }
    eprintln!(
        "snakepit: ready in {} ms — try: curl -s http://{}/v1/execute -d '{{\"command\":\"ping\"}}'   dashboard: http://{}/dashboard",
        started.elapsed().as_millis(),
        cfg.server.listen,
        cfg.server.listen
    );

    shutdown_signal().await;
    eprintln!(
        "snakepit: shutting down: draining requests (up to {} ms)",
        cfg.server.drain_timeout_ms
    );
    pit.drain(Duration::from_millis(cfg.server.drain_timeout_ms))
        .await;
    // Open dashboards keep streams alive; give connections a moment, then go.
    let _ = stop_http.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    pit.telemetry().shutdown(Duration::from_secs(5));
    eprintln!("snakepit: stopped");
    Ok(())
}
