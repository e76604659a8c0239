//! Rendering the metrics registry for a scraper: Prometheus text (format 0.0.4), or
//! OpenMetrics with the exemplars the metrics layer kept. A cheap, cloneable handle, so
//! an HTTP handler can render without holding the whole `Telemetry`.

//!
//! Without the `prometheus` feature there is no registry, `Telemetry::metrics_renderer`
//! answers `None`, and this type is never made.

#[cfg(feature = "prometheus")]
use std::sync::Arc;

#[cfg(feature = "prometheus")]
use prometheus::{Encoder, TextEncoder};

#[cfg(feature = "prometheus")]
use crate::metrics::RequestInstruments;

/// Renders the registry as Prometheus text or OpenMetrics (see
/// [`Telemetry::metrics_renderer`](crate::Telemetry::metrics_renderer)).
#[derive(Clone)]
pub struct MetricsRenderer {
    #[cfg(feature = "prometheus")]
    pub(crate) registry: prometheus::Registry,
    #[cfg(feature = "prometheus")]
    pub(crate) instruments: Option<Arc<RequestInstruments>>,
    #[cfg(not(feature = "prometheus"))]
    _never: std::convert::Infallible,
}

#[cfg(not(feature = "prometheus"))]
impl MetricsRenderer {
    /// The Prometheus text exposition (format 0.0.4).
    pub fn prometheus_text(&self) -> Option<String> {
        match self._never {}
    }

    /// The OpenMetrics exposition, exemplars included.
    pub fn openmetrics_text(&self) -> Option<String> {
        match self._never {}
    }
}

#[cfg(feature = "prometheus")]
impl MetricsRenderer {
    /// The Prometheus text exposition (format 0.0.4).
    pub fn prometheus_text(&self) -> Option<String> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .ok()?;
        String::from_utf8(out).ok()
    }

    /// The OpenMetrics exposition, exemplars included.
    pub fn openmetrics_text(&self) -> Option<String> {
        let empty = crate::exemplars::ExemplarStore::default();
        let store = self
            .instruments
            .as_ref()
            .and_then(|i| i.exemplars.as_ref())
            .unwrap_or(&empty);
        Some(crate::openmetrics::render(&self.registry.gather(), store))
    }
}
