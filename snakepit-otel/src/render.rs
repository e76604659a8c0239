//! Rendering the metrics registry for a scraper: Prometheus text (format 0.0.4), or
//! OpenMetrics with the exemplars the metrics layer kept. A cheap, cloneable handle, so
//! an HTTP handler can render without holding the whole `Telemetry`.

use std::sync::Arc;

use prometheus::{Encoder, TextEncoder};

use crate::metrics::RequestInstruments;

/// Renders the registry as Prometheus text or OpenMetrics (see [`Telemetry::metrics_renderer`]).
#[derive(Clone)]
pub struct MetricsRenderer {
    pub(crate) registry: prometheus::Registry,
    pub(crate) instruments: Option<Arc<RequestInstruments>>,
}

impl MetricsRenderer {
    pub fn prometheus_text(&self) -> Option<String> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .ok()?;
        String::from_utf8(out).ok()
    }

    pub fn openmetrics_text(&self) -> Option<String> {
        let empty = crate::openmetrics::ExemplarStore::default();
        let store = self
            .instruments
            .as_ref()
            .and_then(|i| i.exemplars.as_ref())
            .unwrap_or(&empty);
        Some(crate::openmetrics::render(&self.registry.gather(), store))
    }
}
