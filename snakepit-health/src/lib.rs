//! # snakepit-health
//!
//! What operators and orchestrators look at, as an axum [`Router`](axum::Router) you serve on its own
//! or merge into your app:
//!
//! | path | what |
//! | --- | --- |
//! | `GET /health` | liveness: 200 while the pools are supervised (also while draining) |
//! | `GET /health/ready` | readiness: 200, or 503 naming each failing criterion; 503 while starting or draining |
//! | `GET /health/detailed` | pools, workers, system figures, key rates (token-protected if configured) |
//! | `GET /health/workers/{id}/stacks` | a live dump of that worker's Python stacks, every thread (token-protected if configured) |
//! | `GET /metrics` | Prometheus text, or OpenMetrics with exemplars when asked for |
//! | `GET /dashboard` | a self-contained live page (SSE, ~1 s), 15 min of history |
//!
//! ```no_run
//! # async fn demo(pool: snakepit_core::Pool, events: snakepit_core::EventBus) -> Result<(), Box<dyn std::error::Error>> {
//! use snakepit_health::{Health, HealthConfig};
//!
//! let health = Health::new(HealthConfig::default(), &events)?;
//! health.add_pool(pool);
//! health.mark_serving();
//! let app = axum::Router::new().merge(health.router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:4000").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! ## How data flows
//! Probes read `Pool::stats()` (counters and a window; never a call to a worker). A
//! sampler task ([`history`]) snapshots every pool each `update_interval_ms` into a
//! bounded 15-minute ring and collects recent failures from the event stream; each
//! open dashboard receives one pre-serialized update per tick over SSE. `/metrics`
//! renders whatever [`Health::set_metrics`] was given (the telemetry crate's registry in
//! the `snakepit` binary). Rate limits ([`ratelimit`]) and the optional token
//! ([`auth`]) sit in front as axum middleware.

#![warn(missing_docs)]

pub mod auth;
pub mod checks;
pub mod config;
mod dashboard;
pub mod history;
pub mod ratelimit;
mod respond;
mod routes;
mod stacks;
pub mod system;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use snakepit_core::{ConfigError, EventBus, EventKind, Pattern, Pool};

pub use checks::Phase;
pub use config::{DashboardConfig, HealthConfig, RateLimitConfig, ReadinessCriteria};
use snakepit_core::sync;

/// Which exposition a scraper asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsFormat {
    /// `text/plain; version=0.0.4`.
    Prometheus,
    /// `application/openmetrics-text` (exemplars).
    OpenMetrics,
}

/// Renders the metrics body; `None` when that format is not available.
pub type MetricsFn = Arc<dyn Fn(MetricsFormat) -> Option<String> + Send + Sync>;

pub(crate) struct Inner {
    pub cfg: HealthConfig,
    pub pools: Arc<RwLock<Vec<Pool>>>,
    pub phase: AtomicU8,
    pub started: Instant,
    pub metrics: RwLock<Option<MetricsFn>>,
    pub history: Arc<history::History>,
}

/// The health service of a process. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("phase", &self.phase())
            .finish()
    }
}

impl Health {
    /// Validate `cfg` and start the dashboard sampler (call inside a Tokio runtime). The
    /// service starts in [`Phase::Starting`]: not ready until [`Health::mark_serving`].
    pub fn new(cfg: HealthConfig, events: &EventBus) -> Result<Health, ConfigError> {
        cfg.validate()?;
        let pools = Arc::new(RwLock::new(Vec::new()));
        let history = history::History::new(cfg.dashboard.clone());
        let failures =
            Pattern::from(EventKind::RequestFailed).union(EventKind::WorkerCrashed.into());
        let subscription = events.subscribe_with_buffer(
            "dashboard",
            failures,
            cfg.dashboard.max_recent_errors.max(16) * 4,
        );
        tokio::spawn(history::run_sampler(
            Arc::downgrade(&history),
            pools.clone(),
            subscription,
            Duration::from_millis(cfg.dashboard.update_interval_ms),
        ));
        Ok(Health {
            inner: Arc::new(Inner {
                cfg,
                pools,
                phase: AtomicU8::new(Phase::Starting as u8),
                started: Instant::now(),
                metrics: RwLock::new(None),
                history,
            }),
        })
    }

    /// Judge `pool` for readiness and show it on the dashboard and `/health/detailed`.
    pub fn add_pool(&self, pool: Pool) {
        sync::write(&self.inner.pools).push(pool);
    }

    /// What `/metrics` serves.
    pub fn set_metrics(&self, render: MetricsFn) {
        *sync::write(&self.inner.metrics) = Some(render);
    }

    /// Pools are up: readiness now follows the criteria.
    pub fn mark_serving(&self) {
        self.inner
            .phase
            .store(Phase::Serving as u8, Ordering::Release);
    }

    /// Shutdown began: readiness answers 503 `draining`, liveness stays 200.
    pub fn begin_draining(&self) {
        self.inner
            .phase
            .store(Phase::Draining as u8, Ordering::Release);
    }

    /// Where the service is: starting, serving or draining.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.inner.phase.load(Ordering::Acquire))
    }

    pub(crate) fn pools(&self) -> Vec<Pool> {
        sync::read(&self.inner.pools).clone()
    }

    /// Serve the routes alone on `listen` until `shutdown` resolves.
    pub async fn serve(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(&self.inner.cfg.listen).await?;
        tracing::info!(listen = %self.inner.cfg.listen, "health endpoints listening");
        axum::serve(
            listener,
            self.router()
                .into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
    }

    /// The routes, ready to serve or to merge into your app. Serve with
    /// `into_make_service_with_connect_info::<SocketAddr>()` so rate limits are per
    /// client address (otherwise all clients share one bucket).
    pub fn router(&self) -> axum::Router {
        routes::router(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn status(router: axum::Router, path: &str) -> StatusCode {
        let req = Request::get(path).body(Body::empty()).unwrap();
        router.oneshot(req).await.unwrap().status()
    }

    #[tokio::test]
    async fn the_prefix_moves_the_probes() {
        let cfg = HealthConfig {
            endpoint_prefix: "/ops/health".into(),
            ..HealthConfig::default()
        };
        let health = Health::new(cfg, &EventBus::default()).unwrap();
        let router = health.router();
        assert_eq!(status(router.clone(), "/ops/health").await, StatusCode::OK);
        assert_eq!(
            status(router.clone(), "/ops/health/ready").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            status(router.clone(), "/health").await,
            StatusCode::NOT_FOUND
        );
        health.mark_serving();
        assert_eq!(
            status(router, "/ops/health/ready").await,
            StatusCode::OK,
            "no pools, serving"
        );
    }

    #[test]
    fn bad_config_names_the_key() {
        let err = HealthConfig {
            listen: "localhost".into(),
            ..HealthConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.key, "health.listen");
        let err = HealthConfig {
            endpoint_prefix: "health/".into(),
            ..HealthConfig::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(err.key, "health.endpoint_prefix");
    }
}
