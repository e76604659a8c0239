//! The trace pipeline: the tracer provider (sampler, resource, bounded OTLP export of
//! the pool's spans) and, when traces go to OTLP, the worker-span exporter.

use std::sync::Arc;

use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::config::TelemetryConfig;
use crate::export::{Batcher, SignalCounters};
use crate::otlp::export_settings;
use crate::otlp_spans::{OtlpSpans, QueueSpanProcessor};
use crate::request_spans::SpanExport;
use crate::worker_spans::WorkerSpans;

/// Built trace pipeline.
pub(crate) struct Traces {
    /// For spans made through the OpenTelemetry API (`Telemetry::tracer`); they share
    /// the export thread with the request spans.
    pub provider: SdkTracerProvider,
    /// Where the trace layer queues sampled request spans (None: not exported).
    pub request_spans: Option<SpanExport>,
    pub worker_spans: Option<WorkerSpans>,
}

/// The tracer provider always exists (for `Telemetry::tracer`); export is optional.
pub(crate) fn build(
    cfg: &TelemetryConfig,
    resource: &Resource,
    counters: &Arc<SignalCounters>,
) -> std::io::Result<Traces> {
    let mut builder = SdkTracerProvider::builder()
        .with_resource(resource.clone())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            cfg.traces.sampling_ratio,
        ))));
    let mut worker_spans = None;
    let mut request_spans = None;
    if cfg.traces.exported() {
        let otlp = cfg.otlp.clone();
        let res = resource.clone();
        let batcher = Batcher::start(
            "spans",
            export_settings(&otlp),
            counters.clone(),
            move || OtlpSpans::new(&otlp, &res),
        )?;
        let batcher = Arc::new(batcher);
        request_spans = Some(SpanExport::new(batcher.clone(), cfg.traces.sampling_ratio));
        builder = builder.with_span_processor(QueueSpanProcessor(batcher));
        if cfg.traces.worker_spans_on() {
            worker_spans = Some(WorkerSpans::start(cfg, counters.clone())?);
        }
    }
    Ok(Traces {
        provider: builder.build(),
        request_spans,
        worker_spans,
    })
}
