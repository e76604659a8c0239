//! `snakepit serve`: telemetry, then the HTTP listener (probes answer "starting" at
//! once), then the pools, then traffic; on SIGTERM/SIGINT the reverse: readiness goes
//! 503 and new requests are refused, admitted ones finish (up to `drain_timeout_ms`),
//! workers stop, telemetry flushes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::http::HeaderName;
use snakepit_core::{EventBus, Pool, Pools};
use snakepit_health::{Health, MetricsFormat};
use snakepit_otel::Telemetry;
use tower::util::BoxCloneSyncService;
use tower::ServiceBuilder;

use crate::api::{self, ApiState, Backend};
use crate::config::AppConfig;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Telemetry(#[from] snakepit_otel::TelemetryError),
    #[error("invalid configuration: {0}")]
    Config(#[from] snakepit_core::ConfigError),
    #[error("cannot listen on {addr}: {message} (is another process using it? set server.listen)")]
    Bind { addr: String, message: String },
    #[error("cannot start the pools: {0}")]
    Start(#[from] snakepit_core::StartError),
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

/// Wrap `pools` in the telemetry layers, for the unary and the streaming API.
pub fn layered(telemetry: &Telemetry, pools: &Pools) -> Backend {
    let unary = ServiceBuilder::new()
        .layer(telemetry.correlation_layer())
        .layer(telemetry.trace_layer())
        .layer(telemetry.metrics_layer())
        .service(pools.clone());
    let routing = pools.clone();
    let streaming = tower::service_fn(move |req: snakepit_core::Request| {
        let pools = routing.clone();
        async move {
            let pool = pools.route(&req)?.clone();
            pool.execute_stream(req).await
        }
    });
    let stream = ServiceBuilder::new()
        .layer(telemetry.correlation_layer())
        .layer(telemetry.trace_layer())
        .layer(telemetry.metrics_layer())
        .service(streaming);
    Backend {
        pools: pools.clone(),
        unary: BoxCloneSyncService::new(unary),
        stream: BoxCloneSyncService::new(stream),
    }
}

pub async fn serve(cfg: AppConfig) -> Result<(), ServeError> {
    let started = Instant::now();
    let default_pool = cfg.pools[0].name.clone();
    let mut telemetry = Telemetry::init(cfg.telemetry.clone())?.with_default_pool(default_pool);
    let events = EventBus::new(&cfg.events);
    telemetry.attach(&events)?;
    let health = Health::new(cfg.health.clone(), &events)?;
    if let Some(renderer) = telemetry.metrics_renderer() {
        health.set_metrics(Arc::new(move |format| match format {
            MetricsFormat::Prometheus => renderer.prometheus_text(),
            MetricsFormat::OpenMetrics => renderer.openmetrics_text(),
        }));
    }

    // Listen first: orchestrators see "starting" (503 ready, 200 live) while pools start.
    let listener = tokio::net::TcpListener::bind(&cfg.server.listen)
        .await
        .map_err(|e| ServeError::Bind {
            addr: cfg.server.listen.clone(),
            message: e.to_string(),
        })?;
    let accepting = Arc::new(AtomicBool::new(false));
    let backend = Arc::new(OnceLock::new());
    let state = ApiState {
        backend: backend.clone(),
        correlation_header: HeaderName::from_bytes(
            cfg.telemetry.correlation.header_name.as_bytes(),
        )
        .unwrap_or(HeaderName::from_static("x-correlation-id")),
        accepting: accepting.clone(),
    };
    let app = api::router(state, cfg.server.max_payload_bytes).merge(health.router());
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

    let mut pool_cfgs = cfg.pools.clone();
    for p in &mut pool_cfgs {
        for (k, v) in telemetry.worker_env() {
            p.python.env.entry(k).or_insert(v);
        }
        eprintln!(
            "snakepit: starting pool '{}': {} workers of {}",
            p.name, p.size, p.adapter
        );
    }
    let pools = match Pools::start(pool_cfgs, events.clone()).await {
        Ok(p) => p,
        Err(e) => {
            let _ = stop_http.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
            telemetry.shutdown(Duration::from_secs(2));
            return Err(e.into());
        }
    };
    let all: Vec<Pool> = pools.iter().cloned().collect();
    telemetry.watch_pools(&all);
    for pool in &all {
        health.add_pool(pool.clone());
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
    let _ = backend.set(layered(&telemetry, &pools));
    accepting.store(true, Ordering::Release);
    health.mark_serving();
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
    health.begin_draining();
    accepting.store(false, Ordering::Release);
    pools
        .shutdown(Duration::from_millis(cfg.server.drain_timeout_ms))
        .await;
    // Open dashboards keep streams alive; give connections a moment, then go.
    let _ = stop_http.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    telemetry.shutdown(Duration::from_secs(5));
    eprintln!("snakepit: stopped");
    Ok(())
}
