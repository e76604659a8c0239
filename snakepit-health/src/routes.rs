//! The router: probe endpoints behind the probes' rate limit; detailed and dashboard
//! endpoints behind the stricter limit and the optional token.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use snakepit_core::clock::rfc3339;

use crate::auth::require_token;
use crate::checks::{self, HEALTH_JSON};
use crate::dashboard;
use crate::ratelimit::{rate_limit, Limiter};
use crate::respond::json_response;
use crate::{Health, MetricsFormat};
use snakepit_core::sync;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

fn now() -> String {
    rfc3339(SystemTime::now())
}

async fn live(State(h): State<Health>) -> Response {
    let (ok, body) = checks::liveness(&h.pools(), h.phase(), &now());
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, HEALTH_JSON, &body)
}

async fn ready(State(h): State<Health>) -> Response {
    let (ok, body) = checks::readiness(&h.pools(), h.phase(), &h.inner.cfg.criteria, &now());
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, HEALTH_JSON, &body)
}

async fn detailed(State(h): State<Health>) -> Response {
    let pools = h.pools();
    let system = crate::system::sample(h.inner.started, &pools);
    let body = checks::detailed(&pools, h.phase(), &h.inner.cfg.criteria, &system, &now());
    json_response(StatusCode::OK, HEALTH_JSON, &body)
}

async fn metrics(State(h): State<Health>, headers: HeaderMap) -> Response {
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let render = sync::read(&h.inner.metrics).clone();
    let Some(render) = render else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain")],
            "no metrics configured (Health::set_metrics)\n",
        )
            .into_response();
    };
    let (format, content_type) = if wants_openmetrics {
        (MetricsFormat::OpenMetrics, OPENMETRICS)
    } else {
        (MetricsFormat::Prometheus, PROMETHEUS_TEXT)
    };
    // Fall back to the classic format when OpenMetrics is not available.
    let body = render(format).map(|b| (b, content_type)).or_else(|| {
        (format == MetricsFormat::OpenMetrics)
            .then(|| render(MetricsFormat::Prometheus))
            .flatten()
            .map(|b| (b, PROMETHEUS_TEXT))
    });
    match body {
        Some((b, ct)) => (StatusCode::OK, [(header::CONTENT_TYPE, ct)], b).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "metrics unavailable\n").into_response(),
    }
}

pub(crate) fn router(health: Health) -> Router {
    let cfg = &health.inner.cfg;
    let prefix = cfg.endpoint_prefix.clone();
    let token = Arc::new(cfg.auth_token.clone());
    let rl = &cfg.rate_limit;
    let mut probes = Router::new()
        .route(&prefix, get(live))
        .route(&format!("{prefix}/ready"), get(ready))
        .route(&cfg.metrics_path, get(metrics));
    let mut protected = Router::new()
        .route(&format!("{prefix}/detailed"), get(detailed))
        .route(
            &format!("{prefix}/workers/{{worker_id}}/stacks"),
            get(crate::stacks::worker_stacks),
        );
    if cfg.dashboard.enabled {
        protected = protected
            .route("/dashboard", get(dashboard::page))
            .route("/dashboard/stream", get(dashboard::stream))
            .route("/dashboard/snapshot", get(dashboard::snapshot));
    }
    protected = protected.layer(from_fn_with_state(token, require_token));
    if rl.enabled {
        probes = probes.layer(from_fn_with_state(
            Limiter::new(rl.probes_per_second, rl.probes_burst),
            rate_limit,
        ));
        protected = protected.layer(from_fn_with_state(
            Limiter::new(rl.detailed_per_second, rl.detailed_burst),
            rate_limit,
        ));
    }
    probes.merge(protected).with_state(health)
}
