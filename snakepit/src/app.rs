//! [`Snakepit::builder`]: pools, telemetry, health and the HTTP API wired in the order
//! they need — telemetry before the pools (to see their start-up), the event sinks
//! before the pools start, the pools' gauges and labels once they are up, readiness
//! last — so embedding Snakepit in an axum app is a few lines:
//!
//! ```no_run
//! use axum::{extract::State, routing::post, Json, Router};
//! use serde_json::{json, Value};
//! use snakepit::{PoolConfig, Request, Snakepit};
//! use tower::ServiceExt;
//!
//! async fn shout(State(pit): State<Snakepit>, Json(body): Json<Value>) -> Json<Value> {
//!     let req = Request::new("echo", json!({"text": body["text"]}));
//!     match pit.service().oneshot(req).await {
//!         Ok(resp) => Json(resp.value().unwrap_or_default()),
//!         Err(e) => Json(json!({"error": e.to_string()})),
//!     }
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pit = Snakepit::builder().pool(PoolConfig::default()).start().await?;
//! let app = Router::new()
//!     .route("/shout", post(shout))
//!     .with_state(pit.clone())
//!     .merge(pit.router()); // /v1/execute, /health/*, /metrics, /dashboard
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
//!     .with_graceful_shutdown(snakepit::serve::shutdown_signal())
//!     .await?;
//! pit.shutdown(std::time::Duration::from_secs(30)).await; // drain, stop workers, flush
//! # Ok(()) }
//! ```
//!
//! To answer probes while the pools start (what `snakepit serve` does), split the two
//! steps: [`SnakepitBuilder::build`] gives a [`Starting`] whose router already answers
//! (`/health/ready` 503 "starting", the API 503), then [`Starting::start`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::HeaderName;
use snakepit_core::{EventBus, EventsConfig, PoolConfig, Pools, StartError};
use snakepit_health::{Health, HealthConfig, MetricsFormat};
use snakepit_otel::{Telemetry, TelemetryConfig};
use tower::util::BoxCloneSyncService;
use tower::ServiceBuilder;

use crate::api::{self, ApiState, Backend, StreamService, UnaryService};

/// Why Snakepit could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Telemetry could not be set up (its configuration, or an exporter).
    #[error("{0}")]
    Telemetry(#[from] snakepit_otel::TelemetryError),
    /// A setting is out of range; the error names the key and what is allowed.
    #[error("invalid configuration: {0}")]
    Config(#[from] snakepit_core::ConfigError),
    /// A pool did not start (its workers, or the Python environment).
    #[error("cannot start the pools: {0}")]
    Start(#[from] StartError),
}

/// Collects the configuration; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct SnakepitBuilder {
    pools: Vec<PoolConfig>,
    telemetry: TelemetryConfig,
    health: HealthConfig,
    events: EventsConfig,
    max_payload_bytes: usize,
    install_subscriber: bool,
}

impl Default for SnakepitBuilder {
    fn default() -> Self {
        SnakepitBuilder {
            pools: Vec::new(),
            telemetry: TelemetryConfig::default(),
            health: HealthConfig::default(),
            events: EventsConfig::default(),
            max_payload_bytes: crate::config::ServerConfig::default().max_payload_bytes,
            install_subscriber: true,
        }
    }
}

impl SnakepitBuilder {
    /// Add a pool. The first is the default pool (requests that name none go there).
    /// With no pool at all, one pool of the bundled example adapter is started.
    pub fn pool(mut self, cfg: PoolConfig) -> Self {
        self.pools.push(cfg);
        self
    }

    /// Telemetry settings (default: JSON logs on stdout, Prometheus `/metrics` with the
    /// `prometheus` feature; OTLP export when an endpoint is set, also through `OTEL_*`
    /// variables).
    pub fn telemetry(mut self, cfg: TelemetryConfig) -> Self {
        self.telemetry = cfg;
        self
    }

    /// Probe, dashboard and detailed-endpoint settings.
    pub fn health(mut self, cfg: HealthConfig) -> Self {
        self.health = cfg;
        self
    }

    /// Event bus settings (consumer buffers).
    pub fn events(mut self, cfg: EventsConfig) -> Self {
        self.events = cfg;
        self
    }

    /// Largest request body the HTTP API accepts (default 4 MiB, at most 1 GiB); larger
    /// ones get 413.
    pub fn max_payload_bytes(mut self, bytes: usize) -> Self {
        self.max_payload_bytes = bytes;
        self
    }

    /// Whether to install Snakepit's `tracing` subscriber as the global default (on by
    /// default). Turn it off when your application has its own subscriber, and add
    /// [`Telemetry::tracing_layer`] to it.
    pub fn install_subscriber(mut self, install: bool) -> Self {
        self.install_subscriber = install;
        self
    }

    /// Everything `snakepit.toml` says, but `[server] listen` (the caller binds).
    pub fn from_config(cfg: &crate::config::AppConfig) -> Self {
        SnakepitBuilder {
            pools: cfg.pools.clone(),
            telemetry: cfg.telemetry.clone(),
            health: cfg.health.clone(),
            events: cfg.events.clone(),
            max_payload_bytes: cfg.server.max_payload_bytes,
            install_subscriber: true,
        }
    }

    /// Set up telemetry, the event bus and health; the pools are not started yet, but
    /// [`Starting::router`] answers already (probes say "starting", the API 503).
    pub fn build(self) -> Result<Starting, BuildError> {
        let mut pools = self.pools;
        if pools.is_empty() {
            pools.push(PoolConfig::default());
        }
        // Everything is checked before anything global happens (the subscriber).
        for p in &pools {
            p.validate()?;
        }
        self.events.validate()?;
        self.health.validate()?;
        snakepit_core::config::check_range(
            "server.max_payload_bytes",
            self.max_payload_bytes as u64,
            1,
            1 << 30,
            "bytes",
        )?;
        let telemetry = if self.install_subscriber {
            Telemetry::init(self.telemetry.clone())?
        } else {
            Telemetry::build(self.telemetry.clone())?
        };
        let telemetry = telemetry.with_default_pool(pools[0].name.clone());
        let events = EventBus::new(&self.events);
        // Before any pool starts: their start-up events count.
        telemetry.attach(&events)?;
        let health = Health::new(self.health, &events)?;
        if let Some(renderer) = telemetry.metrics_renderer() {
            health.set_metrics(Arc::new(move |format| match format {
                MetricsFormat::Prometheus => renderer.prometheus_text(),
                MetricsFormat::OpenMetrics => renderer.openmetrics_text(),
            }));
        }
        let header = &self.telemetry.correlation.header_name;
        let state = ApiState {
            backend: Arc::new(OnceLock::new()),
            correlation_header: HeaderName::from_bytes(header.as_bytes())
                .unwrap_or(HeaderName::from_static("x-correlation-id")),
            accepting: Arc::new(AtomicBool::new(false)),
        };
        Ok(Starting {
            parts: Parts {
                telemetry,
                events,
                health,
                state,
                max_payload_bytes: self.max_payload_bytes,
            },
            pools,
        })
    }

    /// [`SnakepitBuilder::build`], then [`Starting::start`].
    pub async fn start(self) -> Result<Snakepit, BuildError> {
        Ok(self.build()?.start().await?)
    }
}

/// What both stages share.
#[derive(Clone)]
struct Parts {
    telemetry: Telemetry,
    events: EventBus,
    health: Health,
    state: ApiState,
    max_payload_bytes: usize,
}

impl Parts {
    fn router(&self) -> axum::Router {
        api::router(self.state.clone(), self.max_payload_bytes).merge(self.health.router())
    }
}

/// Telemetry and health are up, the pools not yet; see [`SnakepitBuilder::build`].
pub struct Starting {
    parts: Parts,
    pools: Vec<PoolConfig>,
}

impl Starting {
    /// The HTTP API and the health routes; the same router keeps working once started.
    pub fn router(&self) -> axum::Router {
        self.parts.router()
    }

    /// The telemetry the pools will report to (layers, `/metrics` rendering).
    pub fn telemetry(&self) -> &Telemetry {
        &self.parts.telemetry
    }

    /// Probes and dashboard state (phase "starting" until [`Starting::start`]).
    pub fn health(&self) -> &Health {
        &self.parts.health
    }

    /// The pool configurations about to start (with the telemetry's worker
    /// environment merged in when they start).
    pub fn pool_configs(&self) -> &[PoolConfig] {
        &self.pools
    }

    /// Start every pool, then mark the service ready. On failure the pools that did
    /// start are stopped again and telemetry is flushed.
    pub async fn start(self) -> Result<Snakepit, StartError> {
        let Starting { parts, mut pools } = self;
        for p in &mut pools {
            // Workers' spans go where the pool's go (the user's own env wins).
            for (k, v) in parts.telemetry.worker_env() {
                p.python.env.entry(k).or_insert(v);
            }
        }
        let pools = match Pools::start(pools, parts.events.clone()).await {
            Ok(p) => p,
            Err(e) => {
                parts.telemetry.shutdown(Duration::from_secs(2));
                return Err(e);
            }
        };
        parts.telemetry.watch(&pools);
        for pool in pools.iter() {
            parts.health.add_pool(pool.clone());
        }
        let backend = layered(&parts.telemetry, &pools);
        let _ = parts.state.backend.set(backend.clone());
        parts.state.accepting.store(true, Ordering::Release);
        parts.health.mark_serving();
        Ok(Snakepit {
            parts,
            pools,
            backend,
        })
    }
}

/// Running pools with their telemetry, health and HTTP API. Cheap to clone: every
/// clone is a handle to the same pools, and [`Snakepit::shutdown`] from any of them
/// stops them all.
#[derive(Clone)]
pub struct Snakepit {
    parts: Parts,
    pools: Pools,
    backend: Backend,
}

impl std::fmt::Debug for Snakepit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snakepit")
            .field("pools", &self.pools)
            .finish_non_exhaustive()
    }
}

impl Snakepit {
    /// Start configuring; see the [module docs](self).
    pub fn builder() -> SnakepitBuilder {
        SnakepitBuilder::default()
    }

    /// A builder holding what `snakepit.toml` says (see [`SnakepitBuilder::from_config`]).
    pub fn builder_from(cfg: &crate::config::AppConfig) -> SnakepitBuilder {
        SnakepitBuilder::from_config(cfg)
    }

    /// Unary calls through the telemetry layer, routed by `Request::pool`.
    pub fn service(&self) -> UnaryService {
        self.backend.unary.clone()
    }

    /// Streaming calls through the telemetry layer.
    pub fn streaming(&self) -> StreamService {
        self.backend.stream.clone()
    }

    /// The HTTP execute API, probes, `/metrics` and the dashboard, to merge into your
    /// router (or serve as it is).
    pub fn router(&self) -> axum::Router {
        self.parts.router()
    }

    /// The pools themselves (stats, sessions, unlayered calls).
    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    /// The telemetry handle (cheap to clone): layers for your own services, metrics text.
    pub fn telemetry(&self) -> &Telemetry {
        &self.parts.telemetry
    }

    /// Probes and dashboard state: mark draining, add checks.
    pub fn health(&self) -> &Health {
        &self.parts.health
    }

    /// The bus every pool's lifecycle events go to: attach your own consumers.
    pub fn events(&self) -> &EventBus {
        &self.parts.events
    }

    /// Stop taking requests (readiness 503, the API 503) and let admitted ones finish
    /// for up to `drain`, then stop the workers. Telemetry keeps running.
    pub async fn drain(&self, drain: Duration) {
        self.parts.health.begin_draining();
        self.parts.state.accepting.store(false, Ordering::Release);
        self.pools.shutdown(drain).await;
    }

    /// [`Snakepit::drain`], then flush and stop telemetry.
    pub async fn shutdown(&self, drain: Duration) {
        self.drain(drain).await;
        self.parts.telemetry.shutdown(Duration::from_secs(5));
    }
}

/// `pools` behind the telemetry layer, for the unary and the streaming API.
fn layered(telemetry: &Telemetry, pools: &Pools) -> Backend {
    let unary = ServiceBuilder::new()
        .layer(telemetry.layer())
        .service(pools.clone());
    let stream = ServiceBuilder::new()
        .layer(telemetry.layer())
        .service(pools.streaming());
    Backend {
        pools: pools.clone(),
        unary: BoxCloneSyncService::new(unary),
        stream: BoxCloneSyncService::new(stream),
    }
}
