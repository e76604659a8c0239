//! OTLP span encoding by hand: a finished span becomes the protobuf bytes of its
//! `Span` message when it ends ([`EncodedSpan`]), and a batch becomes one
//! `ExportTraceServiceRequest` in a single pass ([`encode_request`]).
//!
//! Why not `opentelemetry-proto`'s conversion and prost: profiling the export thread
//! under full load (the `observability` bench, every span sampled) put most of its time
//! in `malloc`/`free`: the SDK's exporter clones the whole batch (for retries), converts
//! every span into owned structs (a `Vec` per id, a `String` per name and attribute
//! value, the resource's attributes again per batch) and only then encodes them. Here
//! the resource is encoded once per exporter, and lengths are patched in as each
//! message closes. The encoding follows `opentelemetry/proto/trace/v1/trace.proto`
//! field for field as `opentelemetry-proto`'s conversion does (same span flags, status,
//! events, links); a test checks our bytes equal prost's encoding of that conversion.

use std::time::SystemTime;

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_sdk::Resource;

// --- protobuf wire format ------------------------------------------------------------

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn key(buf: &mut Vec<u8>, field: u32, wire: u32) {
    varint(buf, u64::from(field << 3 | wire));
}

/// A length-delimited field, written even when empty (oneof members).
fn bytes_always(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
    key(buf, field, LEN);
    varint(buf, data.len() as u64);
    buf.extend_from_slice(data);
}

/// A proto3 `string`/`bytes` field: the default (empty) is not written.
fn bytes_field(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
    if !data.is_empty() {
        bytes_always(buf, field, data);
    }
}

fn uint_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(buf, field, VARINT);
        varint(buf, v);
    }
}

fn fixed64_field(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(buf, field, FIXED64);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

fn fixed32_field(buf: &mut Vec<u8>, field: u32, v: u32) {
    if v != 0 {
        key(buf, field, FIXED32);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// An embedded message written in place: one byte is reserved for its length and the
/// rest of the varint is inserted once the length is known (only messages of 128 bytes
/// or more move, by one memmove).
fn message(buf: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    key(buf, field, LEN);
    let at = buf.len();
    buf.push(0);
    body(buf);
    let len = buf.len() - at - 1;
    if len < 0x80 {
        buf[at] = len as u8;
    } else {
        // The varint of `len` on the stack: this runs for every message of 128 bytes
        // or more, spans included, on the request path.
        let (mut prefix, mut n, mut v) = ([0u8; 10], 0, len as u64);
        while v >= 0x80 {
            prefix[n] = (v as u8) | 0x80;
            v >>= 7;
            n += 1;
        }
        prefix[n] = v as u8;
        buf[at] = prefix[0];
        buf.splice(at + 1..at + 1, prefix[1..=n].iter().copied());
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

// --- OTLP messages -------------------------------------------------------------------

/// `AnyValue` (common.proto): 1 string, 2 bool, 3 int, 4 double, 5 array.
fn any_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(b) => {
            key(buf, 2, VARINT);
            varint(buf, u64::from(*b));
        }
        Value::I64(i) => {
            key(buf, 3, VARINT);
            varint(buf, *i as u64);
        }
        Value::F64(f) => {
            key(buf, 4, FIXED64);
            buf.extend_from_slice(&f.to_le_bytes());
        }
        Value::String(s) => bytes_always(buf, 1, s.as_str().as_bytes()),
        Value::Array(array) => message(buf, 5, |buf| array_value(buf, array)),
        // `Value` is non-exhaustive: a kind added later goes out as its text.
        other => bytes_always(buf, 1, other.as_str().as_bytes()),
    }
}

/// `ArrayValue { repeated AnyValue values = 1; }`.
fn array_value(buf: &mut Vec<u8>, array: &Array) {
    match array {
        Array::Bool(v) => v
            .iter()
            .for_each(|x| message(buf, 1, |b| any_value(b, &Value::Bool(*x)))),
        Array::I64(v) => v
            .iter()
            .for_each(|x| message(buf, 1, |b| any_value(b, &Value::I64(*x)))),
        Array::F64(v) => v
            .iter()
            .for_each(|x| message(buf, 1, |b| any_value(b, &Value::F64(*x)))),
        Array::String(v) => v
            .iter()
            .for_each(|x| message(buf, 1, |b| bytes_always(b, 1, x.as_str().as_bytes()))),
        other => message(buf, 1, |b| bytes_always(b, 1, other.to_string().as_bytes())),
    }
}

/// `KeyValue { string key = 1; AnyValue value = 2; }`, repeated as `field`.
fn attribute(buf: &mut Vec<u8>, field: u32, kv: &KeyValue) {
    message(buf, field, |buf| {
        bytes_field(buf, 1, kv.key.as_str().as_bytes());
        message(buf, 2, |buf| any_value(buf, &kv.value));
    });
}

/// Span flags as `opentelemetry-proto` sets them: the W3C trace flags, plus "has
/// is-remote" and, for a remote parent, "is remote".
fn span_flags(trace_flags: u8, remote: bool) -> u32 {
    u32::from(trace_flags) | 0x100 | if remote { 0x200 } else { 0 }
}

fn span_kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// `Span` (trace.proto).
pub(crate) fn span(buf: &mut Vec<u8>, s: &SpanData) {
    let cx = &s.span_context;
    bytes_field(buf, 1, &cx.trace_id().to_bytes());
    bytes_field(buf, 2, &cx.span_id().to_bytes());
    bytes_field(buf, 3, cx.trace_state().header().as_bytes());
    if s.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        bytes_field(buf, 4, &s.parent_span_id.to_bytes());
    }
    bytes_field(buf, 5, s.name.as_bytes());
    uint_field(buf, 6, span_kind(&s.span_kind));
    fixed64_field(buf, 7, nanos(s.start_time));
    fixed64_field(buf, 8, nanos(s.end_time));
    for kv in &s.attributes {
        attribute(buf, 9, kv);
    }
    uint_field(buf, 10, u64::from(s.dropped_attributes_count));
    for event in s.events.iter() {
        message(buf, 11, |buf| {
            fixed64_field(buf, 1, nanos(event.timestamp));
            bytes_field(buf, 2, event.name.as_bytes());
            for kv in &event.attributes {
                attribute(buf, 3, kv);
            }
            uint_field(buf, 4, u64::from(event.dropped_attributes_count));
        });
    }
    uint_field(buf, 12, u64::from(s.events.dropped_count));
    for link in s.links.iter() {
        message(buf, 13, |buf| {
            let lcx = &link.span_context;
            bytes_field(buf, 1, &lcx.trace_id().to_bytes());
            bytes_field(buf, 2, &lcx.span_id().to_bytes());
            bytes_field(buf, 3, lcx.trace_state().header().as_bytes());
            for kv in &link.attributes {
                attribute(buf, 4, kv);
            }
            uint_field(buf, 5, u64::from(link.dropped_attributes_count));
            fixed32_field(
                buf,
                6,
                span_flags(lcx.trace_flags().to_u8(), lcx.is_remote()),
            );
        });
    }
    uint_field(buf, 14, u64::from(s.links.dropped_count));
    // `Status { string message = 2; StatusCode code = 3; }`, always present.
    message(buf, 15, |buf| match &s.status {
        Status::Unset => {}
        Status::Ok => uint_field(buf, 3, 1),
        Status::Error { description } => {
            bytes_field(buf, 2, description.as_bytes());
            uint_field(buf, 3, 2);
        }
    });
    fixed32_field(
        buf,
        16,
        span_flags(cx.trace_flags().to_u8(), s.parent_span_is_remote),
    );
}

/// `InstrumentationScope { name = 1; version = 2; attributes = 3; }`.
fn scope(buf: &mut Vec<u8>, scope: &InstrumentationScope) {
    bytes_field(buf, 1, scope.name().as_bytes());
    bytes_field(buf, 2, scope.version().unwrap_or_default().as_bytes());
    for kv in scope.attributes() {
        attribute(buf, 3, kv);
    }
}

/// The parts of `ResourceSpans` that are the same for every batch, encoded once per
/// exporter: its `resource` field (1) and its `schema_url` field (3).
pub(crate) struct EncodedResource {
    resource: Vec<u8>,
    schema_url: Vec<u8>,
}

impl EncodedResource {
    /// Bytes it adds to every request.
    pub(crate) fn len(&self) -> usize {
        self.resource.len() + self.schema_url.len()
    }
}

#[cfg_attr(
    not(any(feature = "otlp-grpc", feature = "otlp-http")),
    allow(dead_code)
)]
pub(crate) fn encode_resource(resource: &Resource) -> EncodedResource {
    let mut field = Vec::new();
    message(&mut field, 1, |buf| {
        for (k, v) in resource.iter() {
            attribute(buf, 1, &KeyValue::new(k.clone(), v.clone()));
        }
    });
    let mut schema_url = Vec::new();
    bytes_field(
        &mut schema_url,
        3,
        resource.schema_url().unwrap_or_default().as_bytes(),
    );
    EncodedResource {
        resource: field,
        schema_url,
    }
}

/// One finished span in its OTLP `Span` encoding, with its scope: what the span
/// queues hold. Encoding when the span ends (about a microsecond) frees everything the
/// `SpanData` held at once; a queued span then weighs its few hundred bytes of
/// protobuf instead of a `SpanData` with its attributes (352 bytes inline plus a
/// 56-byte `KeyValue` per attribute plus their strings).
#[derive(Debug, Clone)]
pub struct EncodedSpan {
    scope: InstrumentationScope,
    body: Vec<u8>,
}

impl EncodedSpan {
    /// The encoded `Span` message (without its field key and length).
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

impl From<SpanData> for EncodedSpan {
    /// Encodes and keeps the span's scope without cloning it.
    fn from(s: SpanData) -> Self {
        let mut body = Vec::with_capacity(320);
        span(&mut body, &s);
        EncodedSpan {
            scope: s.instrumentation_scope,
            body,
        }
    }
}

/// One `ExportTraceServiceRequest`: one `ResourceSpans`, one `ScopeSpans` per distinct
/// instrumentation scope (in order of first appearance), fields in field-number order
/// as prost writes them.
pub(crate) fn encode_request(resource: &EncodedResource, spans: &[EncodedSpan], buf: &mut Vec<u8>) {
    let mut scopes: Vec<&InstrumentationScope> = Vec::new();
    for s in spans {
        if !scopes.contains(&&s.scope) {
            scopes.push(&s.scope);
        }
    }
    message(buf, 1, |buf| {
        buf.extend_from_slice(&resource.resource);
        for sc in scopes {
            message(buf, 2, |buf| {
                message(buf, 1, |buf| scope(buf, sc));
                for s in spans.iter().filter(|s| &s.scope == sc) {
                    bytes_always(buf, 2, &s.body);
                }
                bytes_field(buf, 3, sc.schema_url().unwrap_or_default().as_bytes());
            });
        }
        buf.extend_from_slice(&resource.schema_url);
    });
}

#[cfg(test)]
#[path = "span_encoding_tests.rs"]
mod tests;
