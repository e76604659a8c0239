//! The worker's server span, emitted by the pool from the timing the worker reported.
//!
//! A sampled unary request comes back with a [`WorkerSpan`]: the span id the worker
//! chose (spans user code opened in Python are already its children), its wall-clock
//! start and its duration. Turning that into OTLP here costs about a microsecond in
//! Rust; Python's SDK making and exporting the same span cost about 130 µs of worker CPU
//! per request, which divided no-op throughput by four with traces on.
//!
//! The spans go out under the workers' own resource (`{service.name}-worker`, as the
//! Python SDK named it), through their own bounded export thread, so trace views still
//! show the hop from the pool into the worker process; drops count with the pool's
//! spans.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use opentelemetry_sdk::Resource;
use snakepit_core::{PythonError, Sanitizer, WorkerSpan};

use crate::config::TelemetryConfig;
use crate::export::{Batcher, SignalCounters};
use crate::otlp::export_settings;
use crate::otlp_spans::{EncodedSpan, OtlpSpans};

/// The request the worker span belongs to.
pub(crate) struct SpanParent<'a> {
    pub context: &'a SpanContext,
    pub command: &'a str,
    pub correlation_id: Option<&'a str>,
}

/// Emits worker spans to OTLP. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WorkerSpans {
    batcher: Arc<Batcher<EncodedSpan>>,
    scope: InstrumentationScope,
}

impl WorkerSpans {
    /// Start the export thread for worker spans (only when traces go to OTLP).
    pub(crate) fn start(
        cfg: &TelemetryConfig,
        counters: Arc<SignalCounters>,
    ) -> std::io::Result<Self> {
        let resource = Resource::builder()
            .with_service_name(format!("{}-worker", cfg.service_name))
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let otlp = cfg.otlp.clone();
        let batcher = Batcher::start(
            "worker-spans",
            export_settings(&otlp),
            counters,
            move || OtlpSpans::new(&otlp, &resource),
        )?;
        Ok(WorkerSpans {
            batcher: Arc::new(batcher),
            scope: InstrumentationScope::builder("snakepit_bridge").build(),
        })
    }

    /// Queue the span of `worker` under `parent`; a failure marks it as the one that
    /// raised. Never blocks (a full queue drops and counts).
    pub(crate) fn emit(
        &self,
        parent: &SpanParent<'_>,
        worker: &WorkerSpan,
        failure: Option<&PythonError>,
        sanitizer: &Sanitizer,
    ) {
        if !parent.context.is_sampled() {
            return;
        }
        let end_time = worker.started_at + worker.duration;
        // Few attributes: pool, request id and the rest are on the parent span, and
        // every attribute is encoded and shipped once per request.
        let mut attributes = vec![
            KeyValue::new("rpc.system", "snakepit"),
            KeyValue::new("rpc.method", parent.command.to_string()),
            KeyValue::new("snakepit.worker_id", worker.worker_id.clone()),
        ];
        if let Some(c) = parent.correlation_id.filter(|c| !c.is_empty()) {
            attributes.push(KeyValue::new("snakepit.correlation_id", c.to_string()));
        }
        let mut events = SpanEvents::default();
        let status = match failure {
            None => Status::Unset,
            Some(py) => {
                attributes.push(KeyValue::new("error.type", py.python_type.clone()));
                let message = sanitizer.field("message", &py.message);
                let mut traceback = py.traceback.clone();
                sanitizer.truncate_keep_end(&mut traceback);
                events.events.push(opentelemetry::trace::Event::new(
                    "exception",
                    end_time,
                    vec![
                        KeyValue::new("exception.type", py.python_type.clone()),
                        KeyValue::new("exception.message", message.clone()),
                        KeyValue::new("exception.stacktrace", traceback),
                    ],
                    0,
                ));
                Status::error(format!("{}: {message}", py.python_type))
            }
        };
        self.batcher.push(EncodedSpan::from(SpanData {
            span_context: SpanContext::new(
                parent.context.trace_id(),
                SpanId::from_bytes(worker.span_id),
                TraceFlags::SAMPLED,
                false,
                parent.context.trace_state().clone(),
            ),
            parent_span_id: parent.context.span_id(),
            // The request span lives in the pool's process, the worker span in Python's.
            parent_span_is_remote: true,
            span_kind: SpanKind::Server,
            name: Cow::Owned(format!("snakepit.worker/{}", parent.command)),
            start_time: worker.started_at,
            end_time,
            attributes,
            dropped_attributes_count: 0,
            events,
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        }));
    }

    pub(crate) fn flush(&self, timeout: Duration) {
        let _ = self.batcher.flush(timeout);
    }

    pub(crate) fn shutdown(&self, timeout: Duration) {
        let _ = self.batcher.shutdown(timeout);
    }
}
