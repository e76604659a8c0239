//! The request span, made without a round trip through `tracing-opentelemetry`.
//!
//! Profiling the layers showed most of their cost in that bridge (span builders,
//! extension locks, context lookups per poll) for one span per request whose shape is
//! known in advance. So the trace layer does it directly, the way `worker_spans` does:
//!
//! - ids are made here when the request starts (the trace id of a parent if there is
//!   one — a W3C `traceparent` in the request's metadata, or the OpenTelemetry context
//!   that is current — else a new one), so log lines and the worker know them before
//!   the call;
//! - sampling is decided here, as the SDK's `ParentBased(TraceIdRatioBased)` sampler
//!   would, and only when spans are exported (else there is nobody to sample for);
//! - a sampled span collects its attributes and events and, when the request (or its
//!   stream) ends, becomes one `SpanData` queued on the span export thread; an
//!   unsampled one is two random numbers.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use crate::export::Batcher;
use crate::otlp_spans::EncodedSpan;

/// Where sampled request spans go. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SpanExport {
    batcher: Arc<Batcher<EncodedSpan>>,
    scope: InstrumentationScope,
    /// Share of new traces sampled, in [0, 1].
    ratio: f64,
}

impl SpanExport {
    pub(crate) fn new(batcher: Arc<Batcher<EncodedSpan>>, ratio: f64) -> Self {
        SpanExport {
            batcher,
            scope: InstrumentationScope::builder("snakepit").build(),
            ratio,
        }
    }
}

/// The parent a request span continues, if any.
fn parent_of(metadata: &[(String, String)]) -> Option<SpanContext> {
    let incoming = metadata
        .iter()
        .find(|(k, _)| k == "traceparent")
        .and_then(|(_, v)| parse_traceparent(v))
        .map(|sc| {
            let state = metadata
                .iter()
                .find(|(k, _)| k == "tracestate")
                .and_then(|(_, v)| v.parse::<TraceState>().ok())
                .unwrap_or_default();
            SpanContext::new(sc.trace_id(), sc.span_id(), sc.trace_flags(), true, state)
        });
    incoming.or_else(|| {
        opentelemetry::Context::map_current(|cx| {
            let span = cx.span();
            let sc = span.span_context();
            sc.is_valid().then(|| sc.clone())
        })
    })
}

/// A W3C `traceparent` (`00-<trace id>-<span id>-<flags>`), if well formed.
pub(crate) fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags.get(..2)?, 16).ok()?;
    let sc = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::NONE,
    );
    sc.is_valid().then_some(sc)
}

fn nonzero_u128() -> u128 {
    loop {
        let v = fastrand::u128(..);
        if v != 0 {
            return v;
        }
    }
}

fn nonzero_u64() -> u64 {
    loop {
        let v = fastrand::u64(..);
        if v != 0 {
            return v;
        }
    }
}

/// `TraceIdRatioBased`, as the SDK computes it: the trace id's low 63 bits against the
/// ratio, so every service sampling by ratio agrees on a trace.
fn ratio_samples(trace_id: TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let bytes = trace_id.to_bytes();
    let low = u64::from_be_bytes([
        bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15],
    ]) >> 1;
    low < (ratio * (1u64 << 63) as f64) as u64
}

/// What a sampled span collects until it ends.
struct Recording {
    name: String,
    attributes: Vec<KeyValue>,
    events: Vec<Event>,
    status: Status,
}

/// One request's span: its ids always, its data only when sampled.
pub(crate) struct RequestSpan {
    pub context: SpanContext,
    parent: Option<SpanContext>,
    pub start: SystemTime,
    recording: Option<Box<Recording>>,
    /// Where the span goes when it ends (sampled spans only).
    export: Option<SpanExport>,
    /// Spans are exported at all: the worker continues this trace (sampled or not, so
    /// spans made inside honour the decision).
    pub exported: bool,
}

impl RequestSpan {
    /// Start the span of a request carrying `metadata`; `export` is where a sampled span
    /// goes (None: spans are not exported, nothing is recorded). `name` and
    /// `attributes` are only built for a sampled span.
    pub fn start(
        export: Option<&SpanExport>,
        metadata: &[(String, String)],
        name: impl FnOnce() -> String,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> RequestSpan {
        let parent = parent_of(metadata);
        let trace_id = parent
            .as_ref()
            .map_or_else(|| TraceId::from(nonzero_u128()), SpanContext::trace_id);
        let sampled = export.is_some_and(|e| match &parent {
            Some(p) => p.is_sampled(),
            None => ratio_samples(trace_id, e.ratio),
        });
        let state = parent
            .as_ref()
            .map(|p| p.trace_state().clone())
            .unwrap_or_default();
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let context = SpanContext::new(trace_id, SpanId::from(nonzero_u64()), flags, false, state);
        let recording = sampled.then(|| {
            Box::new(Recording {
                name: name(),
                attributes: attributes(),
                events: Vec::new(),
                status: Status::Unset,
            })
        });
        RequestSpan {
            context,
            parent,
            start: SystemTime::now(),
            recording,
            export: export.filter(|_| sampled).cloned(),
            exported: export.is_some(),
        }
    }

    pub fn is_recording(&self) -> bool {
        self.recording.is_some()
    }

    pub fn set_attribute(&mut self, kv: KeyValue) {
        if let Some(r) = &mut self.recording {
            r.attributes.push(kv);
        }
    }

    pub fn add_event(&mut self, name: &'static str, attributes: Vec<KeyValue>) {
        if let Some(r) = &mut self.recording {
            r.events
                .push(Event::new(name, SystemTime::now(), attributes, 0));
        }
    }

    pub fn set_status(&mut self, status: Status) {
        if let Some(r) = &mut self.recording {
            r.status = status;
        }
    }

    /// The W3C `traceparent` (and `tracestate`) of this span, for the worker.
    pub fn traceparent(&self) -> (String, Option<String>) {
        let sc = &self.context;
        let header = format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        );
        let state = sc.trace_state().header();
        (header, (!state.is_empty()).then_some(state))
    }

    /// An OpenTelemetry context with this span current (for code running inside the
    /// request: exemplars, the caller's own spans).
    pub fn otel_context(&self) -> opentelemetry::Context {
        opentelemetry::Context::current().with_remote_span_context(self.context.clone())
    }

    /// A finished child span (e.g. the queue wait), exported with this one.
    pub fn child(&self, name: &'static str, start: SystemTime, end: SystemTime) {
        let Some(export) = &self.export else { return };
        let context = SpanContext::new(
            self.context.trace_id(),
            SpanId::from(nonzero_u64()),
            TraceFlags::SAMPLED,
            false,
            self.context.trace_state().clone(),
        );
        export.batcher.push(EncodedSpan::from(SpanData {
            span_context: context,
            parent_span_id: self.context.span_id(),
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: Cow::Borrowed(name),
            start_time: start,
            end_time: end,
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: export.scope.clone(),
        }));
    }

    /// End the span now: a sampled one is queued for export (never blocks; a full
    /// queue drops and counts).
    pub fn end(self) {
        let (Some(recording), Some(export)) = (self.recording, self.export) else {
            return;
        };
        let Recording {
            name,
            attributes,
            events,
            status,
        } = *recording;
        let mut span_events = SpanEvents::default();
        span_events.events = events;
        export.batcher.push(EncodedSpan::from(SpanData {
            span_context: self.context,
            parent_span_id: self
                .parent
                .as_ref()
                .map_or(SpanId::INVALID, SpanContext::span_id),
            parent_span_is_remote: self.parent.as_ref().is_some_and(SpanContext::is_remote),
            span_kind: SpanKind::Client,
            name: Cow::Owned(name),
            start_time: self.start,
            end_time: SystemTime::now(),
            attributes,
            dropped_attributes_count: 0,
            events: span_events,
            links: SpanLinks::default(),
            status,
            instrumentation_scope: export.scope.clone(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_and_render() {
        let sc = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("valid");
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        let metadata = vec![(
            "traceparent".to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".to_string(),
        )];
        let span = RequestSpan::start(None, &metadata, String::new, Vec::new);
        assert_eq!(
            span.context.trace_id(),
            sc.trace_id(),
            "continues the caller's trace"
        );
        assert!(!span.context.is_sampled() && !span.is_recording());
        let (header, state) = span.traceparent();
        assert!(
            header.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && header.ends_with("-00")
        );
        assert!(state.is_none());
    }

    #[test]
    fn ratio_sampling_decides_as_the_sdk_sampler_does() {
        use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample};
        let always = TraceId::from(u128::MAX);
        assert!(ratio_samples(always, 1.0));
        assert!(!ratio_samples(always, 0.0));
        for ratio in [0.01, 0.25, 0.5, 0.9] {
            let sdk = Sampler::TraceIdRatioBased(ratio);
            for _ in 0..2_000 {
                let id = TraceId::from(nonzero_u128());
                let theirs = sdk
                    .should_sample(
                        None,
                        id,
                        "n",
                        &opentelemetry::trace::SpanKind::Client,
                        &[],
                        &[],
                    )
                    .decision
                    == SamplingDecision::RecordAndSample;
                assert_eq!(ratio_samples(id, ratio), theirs, "{id} at {ratio}");
            }
        }
    }

    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue as ProtoKeyValue};
    use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;
    use prost::Message;

    /// Collects what would be exported, decoded back from its OTLP encoding.
    struct Collect(Arc<std::sync::Mutex<Vec<ProtoSpan>>>);

    impl crate::export::BatchExporter<EncodedSpan> for Collect {
        type Encoded = Vec<EncodedSpan>;
        fn encode(&self, batch: Vec<EncodedSpan>) -> Vec<EncodedSpan> {
            batch
        }
        async fn export(&self, batch: Vec<EncodedSpan>) -> Result<(), String> {
            let decoded = batch.iter().map(|s| ProtoSpan::decode(s.body()).unwrap());
            self.0.lock().unwrap().extend(decoded);
            Ok(())
        }
    }

    fn collecting(ratio: f64) -> (SpanExport, Arc<std::sync::Mutex<Vec<ProtoSpan>>>) {
        let got: Arc<std::sync::Mutex<Vec<ProtoSpan>>> = Arc::default();
        let sink = got.clone();
        let settings = crate::export::ExportSettings {
            max_queue: 100,
            max_batch: 10,
            delay: std::time::Duration::from_secs(60),
            timeout: std::time::Duration::from_secs(1),
            breaker_failures: 3,
            breaker_cooldown: std::time::Duration::from_secs(1),
        };
        let batcher = Batcher::start("test-spans", settings, Arc::default(), move || {
            Ok(Collect(sink))
        })
        .unwrap();
        (SpanExport::new(Arc::new(batcher), ratio), got)
    }

    #[test]
    fn a_sampled_span_continues_its_parent_and_is_exported_once() {
        let (export, got) = collecting(1.0);
        let metadata = vec![
            (
                "traceparent".to_string(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string(),
            ),
            ("tracestate".to_string(), "vendor=1".to_string()),
        ];
        let mut span = RequestSpan::start(Some(&export), &metadata, || "p/ping".into(), Vec::new);
        assert!(span.is_recording() && span.exported);
        span.set_attribute(KeyValue::new("k", "v"));
        let (header, state) = span.traceparent();
        assert!(header.ends_with("-01"), "{header}");
        assert_eq!(state.as_deref(), Some("vendor=1"));
        span.end();
        export
            .batcher
            .flush(std::time::Duration::from_secs(5))
            .unwrap();
        let spans = got.lock().unwrap().clone();
        assert_eq!(spans.len(), 1);
        let s = &spans[0];
        assert_eq!(s.name, "p/ping");
        assert_eq!(
            TraceId::from_bytes(s.trace_id.as_slice().try_into().unwrap()).to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            SpanId::from_bytes(s.parent_span_id.as_slice().try_into().unwrap()).to_string(),
            "00f067aa0ba902b7"
        );
        assert_eq!(s.flags, 0x01 | 0x100 | 0x200, "sampled, parent is remote");
        assert_eq!(s.trace_state, "vendor=1");
        assert_eq!(
            s.attributes,
            vec![ProtoKeyValue {
                key: "k".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("v".into()))
                }),
                key_strindex: 0,
            }]
        );
    }

    #[test]
    fn the_current_context_is_the_parent_and_its_decision_holds() {
        let (export, got) = collecting(1.0);
        let parent = SpanContext::new(
            TraceId::from(7u128),
            SpanId::from(9u64),
            TraceFlags::default(), // not sampled
            false,
            TraceState::NONE,
        );
        let cx = opentelemetry::Context::current().with_remote_span_context(parent);
        let _attached = cx.attach();
        let span = RequestSpan::start(Some(&export), &[], || "p/ping".into(), Vec::new);
        assert_eq!(span.context.trace_id(), TraceId::from(7u128));
        assert!(
            !span.is_recording(),
            "an unsampled parent is not overruled by the ratio"
        );
        assert!(span.exported);
        assert!(span.traceparent().0.ends_with("-00"));
        span.end();
        export
            .batcher
            .flush(std::time::Duration::from_secs(5))
            .unwrap();
        assert!(got.lock().unwrap().is_empty(), "nothing exported for it");
    }
}
