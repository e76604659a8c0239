//! Snakepit's logging as `tracing`: a whole subscriber ([`Telemetry::subscriber`],
//! [`Telemetry::init`]) or one layer for a subscriber the application builds itself
//! ([`Telemetry::tracing_layer`]). Both write through the same [`LogLayer`] to the line
//! writer thread and the OTLP logger.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::EnvFilter;

use crate::config::TelemetryConfig;
use crate::logs::LogLayer;
use crate::telemetry::{setup, Telemetry, TelemetryError};

impl Telemetry {
    pub(crate) fn log_filter(&self) -> Result<EnvFilter, TelemetryError> {
        EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(&self.inner.cfg.logs.filter))
            .map_err(|e| setup("log filter (RUST_LOG or logs.filter)")(e.to_string()))
    }

    fn log_layer(&self) -> LogLayer {
        let i = &self.inner;
        LogLayer::new(
            i.writer.clone(),
            i.cfg.logs.format,
            i.otlp_logger.clone(),
            i.sanitizer.clone(),
        )
    }

    /// [`Telemetry::build`], then install its subscriber as the global default.
    pub fn init(cfg: TelemetryConfig) -> Result<Telemetry, TelemetryError> {
        let t = Telemetry::build(cfg)?;
        if let Some(dispatch) = t.subscriber() {
            tracing::dispatcher::set_global_default(dispatch)
                .map_err(|_| TelemetryError::SubscriberExists)?;
        }
        Ok(t)
    }

    /// A `tracing` dispatcher of its own: a registry with the log filter
    /// (`RUST_LOG`, else `logs.filter`) and [`Telemetry::tracing_layer`]'s layer. `None`
    /// when telemetry is disabled. Request spans do not need it: the layers export them
    /// themselves. Each call makes a new one writing to the same sinks.
    pub fn subscriber(&self) -> Option<tracing::Dispatch> {
        if !self.inner.cfg.enabled {
            return None;
        }
        let filter = self.log_filter().ok()?;
        let subscriber = tracing_subscriber::registry()
            .with(filter)
            .with(self.log_layer());
        Some(tracing::Dispatch::new(subscriber))
    }

    /// Snakepit's logging as a layer for a subscriber you build yourself: JSON (or
    /// text) lines with request, correlation and trace ids, sanitized, and OTLP log
    /// records, filtered by `RUST_LOG`, else `logs.filter` (a per-layer filter: your
    /// other layers see what they ask for). `None` (a no-op layer) when telemetry is
    /// disabled.
    ///
    /// ```no_run
    /// use tracing_subscriber::prelude::*;
    /// # fn demo(telemetry: &snakepit_otel::Telemetry) {
    /// tracing_subscriber::registry()
    ///     .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)) // your own
    ///     .with(telemetry.tracing_layer())
    ///     .init();
    /// # }
    /// ```
    pub fn tracing_layer<S>(&self) -> Option<impl tracing_subscriber::Layer<S> + Send + Sync>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use tracing_subscriber::Layer as _;
        if !self.inner.cfg.enabled {
            return None;
        }
        let filter = self.log_filter().ok()?;
        Some(self.log_layer().with_filter(filter))
    }
}
