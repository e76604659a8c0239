//! [`TelemetryLayer`]: correlation, the request span and the request metrics as one
//! tower layer, from [`Telemetry::layer`](crate::Telemetry::layer).
//!
//! ```no_run
//! # async fn demo(telemetry: snakepit_otel::Telemetry, pools: snakepit_core::Pools)
//! # -> Result<(), tower::BoxError> {
//! use snakepit_core::Request;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let unary = ServiceBuilder::new()
//!     .layer(telemetry.layer())
//!     .service(pools.clone());
//! let streaming = ServiceBuilder::new()
//!     .layer(telemetry.layer())
//!     .service(pools.streaming());
//! let answer = unary.oneshot(Request::new("ping", serde_json::json!({}))).await?;
//! # let _ = (answer, streaming); Ok(()) }
//! ```
//!
//! It does what [`CorrelationLayer`], [`TraceLayer`] and [`MetricsLayer`] stacked in that
//! order do, in one service and one boxed future per request, so nothing depends on
//! the order the parts were stacked in: the correlation id is on the span, the
//! exemplar is the request's own span, and the pool name is the one the pools
//! [`Telemetry::watch`](crate::Telemetry::watch) saw. Like the parts it is generic over
//! the inner service's error ([`ClassifyError`]) and response ([`Outcome`]), so tower's
//! `timeout`, `load_shed`, `buffer` and `limit` fit inside or outside it.
//!
//! [`CorrelationLayer`]: crate::CorrelationLayer
//! [`TraceLayer`]: crate::TraceLayer
//! [`MetricsLayer`]: crate::MetricsLayer

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use snakepit_core::Request;
use tower::{Layer, Service};

use crate::classify::ClassifyError;
use crate::correlation::CorrelationLayer;
use crate::labels::DefaultPool;
use crate::metrics::{measure, MetricsLayer};
use crate::outcome::Outcome;
use crate::trace::TraceLayer;

/// See the [module docs](self). Cheap to clone.
#[derive(Clone)]
pub struct TelemetryLayer {
    correlation: CorrelationLayer,
    trace: TraceLayer,
    metrics: MetricsLayer,
    default_pool: DefaultPool,
    /// The telemetry this layer reports to, held so that exporters keep running as long
    /// as a service built with it exists (dropping the last `Telemetry` handle while
    /// the services still serve would otherwise stop export silently). Type-erased:
    /// `telemetry.rs` hands it in, so this module need not know `Telemetry`.
    _keep_alive: Arc<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for TelemetryLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryLayer")
            .field("correlation", &self.correlation)
            .field("trace", &self.trace)
            .field("metrics", &self.metrics)
            .field("default_pool", &self.default_pool)
            .finish_non_exhaustive()
    }
}

impl TelemetryLayer {
    pub(crate) fn new(
        correlation: CorrelationLayer,
        trace: TraceLayer,
        metrics: MetricsLayer,
        default_pool: DefaultPool,
        keep_alive: Arc<dyn std::any::Any + Send + Sync>,
    ) -> Self {
        TelemetryLayer {
            correlation,
            trace,
            metrics,
            default_pool,
            _keep_alive: keep_alive,
        }
    }
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = Observed<S>;
    fn layer(&self, inner: S) -> Observed<S> {
        Observed {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`TelemetryLayer`] makes.
#[derive(Clone, Debug)]
pub struct Observed<S> {
    inner: S,
    layer: TelemetryLayer,
}

impl<S> Service<Request> for Observed<S>
where
    S: Service<Request>,
    S::Error: ClassifyError + Send + 'static,
    S::Response: Outcome + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        self.layer.correlation.apply(&mut req);
        let (trace, instruments) = (&self.layer.trace.shared, self.layer.metrics.instruments());
        if trace.is_none() && instruments.is_none() {
            return Box::pin(self.inner.call(req));
        }
        let pool = self.layer.default_pool.of(&req);
        // Span first: it puts its ids into the request, which the metrics read for the
        // exemplar.
        let traced = trace.as_ref().map(|t| t.begin(&pool, &mut req));
        // The exemplar is the span just opened, handed over rather than parsed back out
        // of the traceparent it wrote.
        let measured = instruments.map(|i| i.begin(pool, &req, || traced.as_ref()?.exemplar()));
        let fut = self.inner.call(req);
        match traced {
            Some(traced) => Box::pin(measure(measured, traced.run(fut))),
            None => Box::pin(measure(measured, fut)),
        }
    }
}
