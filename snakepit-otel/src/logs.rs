//! Logs: every `tracing` event becomes one sanitized record with timestamp, level,
//! target, message, fields, the `correlation_id`/`request_id` of the request span it
//! belongs to, and the OpenTelemetry `trace_id`/`span_id` (which tracing-subscriber's
//! own JSON formatter does not print). The record goes to a line writer (JSON or text)
//! and, when enabled, to OTLP logs — both built from the same sanitized data, so a
//! redacted value cannot leak through one of them.
//!
//! Lines are handed to a writer thread through a bounded queue: a slow stdout costs
//! dropped (and counted) lines, never request time.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, Severity};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::logs::SdkLogger;
use serde_json::{Map, Value};
use snakepit_core::clock::rfc3339;
use snakepit_core::Sanitizer;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::config::LogFormat;
use snakepit_core::sync;

/// Span fields that log lines inherit from the request span.
const INHERITED: [&str; 2] = ["correlation_id", "request_id"];
/// The target of the trace layer's request spans, whose `trace_id`, `span_id` and
/// `trace_flags` fields are the request's OpenTelemetry ids.
const REQUEST_TARGET: &str = "snakepit::request";
/// Fields whose end matters most when they are too long.
const KEEP_END: [&str; 2] = ["python_traceback", "stderr_tail"];
/// The field a Python record's `extra` arrives in, as JSON (see snakepit-core's
/// `observe::python_logs`); logged as the object `extra`.
const PYTHON_EXTRA: &str = "python_extra";

/// A bounded, non-blocking line writer with its own thread.
pub struct LineWriter {
    tx: SyncSender<Option<Vec<u8>>>,
    dropped: Arc<AtomicU64>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl LineWriter {
    /// A writer thread writing to `out`, with room for `capacity` lines in flight.
    pub fn new(mut out: Box<dyn Write + Send>, capacity: usize) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Option<Vec<u8>>>(capacity.max(1));
        let thread = std::thread::Builder::new()
            .name("snakepit-log-writer".into())
            .spawn(move || {
                while let Ok(Some(line)) = rx.recv() {
                    let _ = out.write_all(&line);
                    // Write whatever else is queued before one flush: batches under load.
                    loop {
                        match rx.try_recv() {
                            Ok(Some(more)) => {
                                let _ = out.write_all(&more);
                            }
                            Ok(None) => {
                                let _ = out.flush();
                                return;
                            }
                            Err(_) => break,
                        }
                    }
                    let _ = out.flush();
                }
                let _ = out.flush();
            })?;
        Ok(LineWriter {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queue one line; when the queue is full it is dropped and counted, never waited for.
    pub fn write_line(&self, line: Vec<u8>) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Some(line))
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> Arc<AtomicU64> {
        self.dropped.clone()
    }

    /// Write out what is queued and stop the thread.
    pub fn close(&self) {
        let _ = self.tx.send(None);
        let handle = sync::lock(&self.thread).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

#[derive(Default)]
struct SpanFields {
    inherited: Vec<(&'static str, String)>,
    /// A request span's OpenTelemetry ids.
    trace: Option<(TraceId, SpanId)>,
    flags: TraceFlags,
}

/// Formats into a stack buffer: reading a request span's ids needs no allocation.
struct StackText {
    buf: [u8; 40],
    len: usize,
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn debug_text(value: &dyn std::fmt::Debug) -> Option<StackText> {
    use std::fmt::Write as _;
    let mut text = StackText {
        buf: [0; 40],
        len: 0,
    };
    write!(text, "{value:?}").ok()?;
    Some(text)
}

impl StackText {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

struct Fields<'a> {
    map: Map<String, Value>,
    message: String,
    sanitizer: &'a Sanitizer,
}

impl Fields<'_> {
    fn put(&mut self, field: &Field, mut value: Value) {
        let name = field.name();
        if name == "message" {
            self.message = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            self.sanitizer.truncate(&mut self.message);
            return;
        }
        if name == PYTHON_EXTRA {
            // A Python record's `extra={...}`: a JSON object, kept as one under
            // `extra`, its sensitive keys redacted and long strings cut like any field.
            if let Value::String(text) = &value {
                if let Ok(mut object @ Value::Object(_)) = serde_json::from_str::<Value>(text) {
                    self.sanitizer.value(&mut object);
                    self.map.insert("extra".to_string(), object);
                    return;
                }
            }
        }
        if self.sanitizer.is_sensitive(name) {
            value = Value::String(snakepit_core::sanitize::REDACTED.into());
        } else if let Value::String(s) = &mut value {
            if KEEP_END.contains(&name) {
                self.sanitizer.truncate_keep_end(s);
            } else {
                self.sanitizer.truncate(s);
            }
        }
        self.map.insert(name.to_string(), value);
    }
}

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
}

/// Collects what log lines inside a span inherit; `request` is true for the trace
/// layer's request spans (whose ids it reads; other spans' `trace_id` fields are theirs).
struct Inherit<'a> {
    fields: &'a mut SpanFields,
    request: bool,
}

impl Visit for Inherit<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "trace_id" | "span_id" if self.request => {
                let Some(text) = debug_text(value) else {
                    return;
                };
                let (trace, span) = self
                    .fields
                    .trace
                    .unwrap_or((TraceId::INVALID, SpanId::INVALID));
                self.fields.trace = Some(match field.name() {
                    "trace_id" => (TraceId::from_hex(text.as_str()).unwrap_or(trace), span),
                    _ => (trace, SpanId::from_hex(text.as_str()).unwrap_or(span)),
                });
            }
            name if INHERITED.contains(&name) => self.record_str(field, &format!("{value:?}")),
            _ => {}
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.request && field.name() == "trace_flags" {
            self.fields.flags = TraceFlags::new(value as u8);
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if let Some(name) = INHERITED.iter().find(|n| **n == field.name()) {
            if !value.is_empty() {
                self.fields.inherited.retain(|(k, _)| k != name);
                self.fields.inherited.push((name, value.to_string()));
            }
        }
    }
}

/// The `tracing` layer that writes logs. Build it with [`crate::Telemetry`].
pub struct LogLayer {
    writer: Option<Arc<LineWriter>>,
    format: LogFormat,
    otlp: Option<SdkLogger>,
    sanitizer: Sanitizer,
    pub(crate) emitted: Arc<AtomicU64>,
}

impl LogLayer {
    pub(crate) fn new(
        writer: Option<Arc<LineWriter>>,
        format: LogFormat,
        otlp: Option<SdkLogger>,
        sanitizer: Sanitizer,
    ) -> Self {
        LogLayer {
            writer,
            format,
            otlp,
            sanitizer,
            emitted: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl<S> Layer<S> for LogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        if self.writer.is_none() && self.otlp.is_none() {
            return; // logs off entirely: nothing will inherit anything
        }
        let Some(span) = ctx.span(id) else { return };
        let mut fields = SpanFields::default();
        attrs.record(&mut Inherit {
            fields: &mut fields,
            request: attrs.metadata().target() == REQUEST_TARGET,
        });
        span.extensions_mut().insert(fields);
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let request = span.metadata().target() == REQUEST_TARGET;
        let mut ext = span.extensions_mut();
        if let Some(fields) = ext.get_mut::<SpanFields>() {
            values.record(&mut Inherit { fields, request });
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if self.writer.is_none() && self.otlp.is_none() {
            return; // logs off entirely: nothing to format
        }
        let meta = event.metadata();
        let mut fields = Fields {
            map: Map::new(),
            message: String::new(),
            sanitizer: &self.sanitizer,
        };
        event.record(&mut fields);
        let mut inherited: Vec<(&'static str, String)> = Vec::new();
        let mut request_ids = None;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope {
                if let Some(f) = span.extensions().get::<SpanFields>() {
                    for (k, v) in &f.inherited {
                        if !inherited.iter().any(|(ik, _)| ik == k) {
                            inherited.push((k, v.clone()));
                        }
                    }
                    if request_ids.is_none() {
                        request_ids = f.trace.map(|(t, s)| (t, s, f.flags));
                    }
                }
            }
        }
        // The ids the event names itself (a Python record made inside a request), else
        // the request span's, else the OpenTelemetry span that is current (the
        // application's own, e.g. through tracing-opentelemetry).
        let span_context = match explicit_ids(&mut fields.map).or(request_ids) {
            Some((trace, span, flags)) => Some(SpanContext::new(
                trace,
                span,
                flags,
                false,
                TraceState::NONE,
            )),
            None => opentelemetry::Context::map_current(|cx| {
                let span = cx.span();
                let sc = span.span_context();
                sc.is_valid().then(|| sc.clone())
            }),
        }
        .filter(SpanContext::is_valid);
        let now = SystemTime::now();
        self.emitted.fetch_add(1, Ordering::Relaxed);

        if let Some(writer) = &self.writer {
            let line = match self.format {
                LogFormat::Json => {
                    let mut obj = Map::new();
                    obj.insert("timestamp".into(), Value::String(rfc3339(now)));
                    obj.insert("level".into(), Value::String(meta.level().to_string()));
                    obj.insert("target".into(), Value::String(meta.target().to_string()));
                    obj.insert("message".into(), Value::String(fields.message.clone()));
                    for (k, v) in &inherited {
                        obj.insert((*k).to_string(), Value::String(v.clone()));
                    }
                    if let Some(sc) = &span_context {
                        obj.insert("trace_id".into(), Value::String(sc.trace_id().to_string()));
                        obj.insert("span_id".into(), Value::String(sc.span_id().to_string()));
                    }
                    for (k, v) in &fields.map {
                        obj.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                    let mut line = serde_json::to_vec(&Value::Object(obj)).unwrap_or_default();
                    line.push(b'\n');
                    line
                }
                _ => {
                    let mut line = format!(
                        "{} {:>5} {}: {}",
                        rfc3339(now),
                        meta.level(),
                        meta.target(),
                        fields.message
                    );
                    for (k, v) in &inherited {
                        line.push_str(&format!(" {k}={v}"));
                    }
                    if let Some(sc) = &span_context {
                        line.push_str(&format!(" trace_id={}", sc.trace_id()));
                    }
                    for (k, v) in &fields.map {
                        match v {
                            Value::String(s) if s.contains('\n') => {
                                line.push_str(&format!("\n  {k}:\n{s}"))
                            }
                            Value::String(s) => line.push_str(&format!(" {k}={s}")),
                            other => line.push_str(&format!(" {k}={other}")),
                        }
                    }
                    line.push('\n');
                    line.into_bytes()
                }
            };
            writer.write_line(line);
        }

        if let Some(logger) = &self.otlp {
            let mut record = logger.create_log_record();
            record.set_timestamp(now);
            record.set_observed_timestamp(now);
            record.set_target(meta.target().to_string());
            let (number, text) = severity(meta.level());
            record.set_severity_number(number);
            record.set_severity_text(text);
            record.set_body(AnyValue::String(fields.message.clone().into()));
            for (k, v) in inherited {
                record.add_attribute(k, v);
            }
            for (k, v) in fields.map {
                let value: AnyValue = match v {
                    Value::String(s) => AnyValue::String(s.into()),
                    Value::Bool(b) => AnyValue::Boolean(b),
                    Value::Number(n) if n.is_i64() => AnyValue::Int(n.as_i64().unwrap_or_default()),
                    Value::Number(n) => AnyValue::Double(n.as_f64().unwrap_or_default()),
                    other => AnyValue::String(other.to_string().into()),
                };
                record.add_attribute(k, value);
            }
            if let Some(sc) = span_context {
                record.set_trace_context(sc.trace_id(), sc.span_id(), Some(sc.trace_flags()));
            }
            logger.emit(record);
        }
    }
}

/// An event's own `trace_id`/`span_id` (and `trace_flags`) fields, taken out of its
/// fields when both are valid ids (they are written once, as the record's context).
fn explicit_ids(map: &mut Map<String, Value>) -> Option<(TraceId, SpanId, TraceFlags)> {
    let trace = map
        .get("trace_id")?
        .as_str()
        .and_then(|t| TraceId::from_hex(t).ok())?;
    let span = map
        .get("span_id")?
        .as_str()
        .and_then(|s| SpanId::from_hex(s).ok())?;
    if trace == TraceId::INVALID || span == SpanId::INVALID {
        return None;
    }
    let flags = map
        .remove("trace_flags")
        .and_then(|f| f.as_u64())
        .map_or(TraceFlags::default(), |f| TraceFlags::new(f as u8));
    map.remove("trace_id");
    map.remove("span_id");
    Some((trace, span, flags))
}

fn severity(level: &Level) -> (Severity, &'static str) {
    match *level {
        Level::TRACE => (Severity::Trace, "TRACE"),
        Level::DEBUG => (Severity::Debug, "DEBUG"),
        Level::INFO => (Severity::Info, "INFO"),
        Level::WARN => (Severity::Warn, "WARN"),
        Level::ERROR => (Severity::Error, "ERROR"),
    }
}
