//! The hand-written encoding against `opentelemetry-proto`'s own conversion: the same
//! spans, decoded from our bytes, must equal what the SDK's exporter would have sent.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use opentelemetry_sdk::Resource;
use prost::Message;

use super::{encode_request, encode_resource, EncodedSpan};

fn context(trace: u128, span: u64, remote: bool) -> SpanContext {
    SpanContext::new(
        TraceId::from(trace),
        SpanId::from(span),
        TraceFlags::SAMPLED,
        remote,
        TraceState::from_key_value([("vendor", "x=1")]).unwrap_or_default(),
    )
}

fn spans() -> Vec<SpanData> {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_764_000_000_123_456_789);
    let mut events = SpanEvents::default();
    events.events.push(Event::new(
        "exception",
        t0 + Duration::from_micros(5),
        vec![
            KeyValue::new("exception.type", "ValueError"),
            KeyValue::new("exception.message", ""),
        ],
        1,
    ));
    events.dropped_count = 2;
    let mut links = SpanLinks::default();
    links.links.push(Link::new(
        context(7, 8, true),
        vec![KeyValue::new("link.kind", "follows")],
        0,
    ));
    let request = SpanData {
        span_context: context(
            0x0af7651916cd43dd8448eb211c80319c,
            0xb7ad6b7169203331,
            false,
        ),
        parent_span_id: SpanId::from(0x00f067aa0ba902b7),
        parent_span_is_remote: true,
        span_kind: SpanKind::Server,
        name: Cow::Borrowed("snakepit.execute"),
        start_time: t0,
        end_time: t0 + Duration::from_micros(250),
        attributes: vec![
            KeyValue::new("pool_name", "default"),
            KeyValue::new("command", "ping"),
            KeyValue::new("retry", false),
            KeyValue::new("attempt", -3_i64),
            KeyValue::new("ratio", 0.25),
            KeyValue::new("empty", ""),
            KeyValue::new(
                "tags",
                Value::Array(Array::String(vec![StringValue::from("a"), "".into()])),
            ),
            KeyValue::new("ints", Value::Array(Array::I64(vec![1, -1, 1 << 40]))),
            KeyValue::new("flags", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("floats", Value::Array(Array::F64(vec![0.0, -2.5]))),
        ],
        dropped_attributes_count: 4,
        events,
        links,
        status: Status::error("ValueError: bad input with a long description ".repeat(4)),
        instrumentation_scope: InstrumentationScope::builder("snakepit")
            .with_version("0.1.0")
            .with_attributes([KeyValue::new("scope.attr", 1_i64)])
            .build(),
    };
    let worker = SpanData {
        span_context: context(0x0af7651916cd43dd8448eb211c80319c, 0x1111, false),
        parent_span_id: SpanId::from(0xb7ad6b7169203331),
        parent_span_is_remote: false,
        span_kind: SpanKind::Internal,
        name: Cow::Owned("snakepit_bridge.ping".into()),
        start_time: t0 + Duration::from_micros(10),
        end_time: t0 + Duration::from_micros(20),
        attributes: vec![],
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Ok,
        instrumentation_scope: InstrumentationScope::builder("snakepit_bridge").build(),
    };
    let root = SpanData {
        span_context: context(42, 43, false),
        parent_span_id: SpanId::INVALID,
        name: Cow::Borrowed(""),
        status: Status::Unset,
        span_kind: SpanKind::Client,
        ..request.clone()
    };
    vec![request, worker.clone(), root, worker]
}

fn expected(resource: &Resource, spans: Vec<SpanData>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: group_spans_by_resource_and_scope(
            spans,
            &ResourceAttributesWithSchema::from(resource),
        ),
    }
}

#[test]
fn our_bytes_decode_to_what_the_sdk_exporter_sends() {
    let resource = Resource::builder()
        .with_service_name("snakepit")
        .with_attribute(KeyValue::new("service.version", "0.1.0"))
        .with_schema_url([], "https://opentelemetry.io/schemas/1.26.0")
        .build();
    let mut buf = Vec::new();
    let encoded: Vec<EncodedSpan> = spans().into_iter().map(EncodedSpan::from).collect();
    encode_request(&encode_resource(&resource), &encoded, &mut buf);
    let ours = ExportTraceServiceRequest::decode(buf.as_slice()).expect("valid protobuf");
    assert_eq!(ours, expected(&resource, spans()));
    // Byte for byte, too: the same fields in the same order, nothing extra.
    let theirs = expected(&resource, spans()).encode_to_vec();
    let first_difference = buf.iter().zip(&theirs).position(|(a, b)| a != b);
    assert_eq!(
        (first_difference, buf.len()),
        (None, theirs.len()),
        "ours {:?}\ntheirs {:?}",
        first_difference.map(|i| &buf[i.saturating_sub(8)..(i + 8).min(buf.len())]),
        first_difference.map(|i| &theirs[i.saturating_sub(8)..(i + 8).min(theirs.len())]),
    );
}

#[test]
fn an_empty_resource_and_one_big_batch_round_trip() {
    let resource = Resource::builder_empty().build();
    let batch: Vec<SpanData> = spans().into_iter().cycle().take(600).collect();
    let mut buf = Vec::new();
    let encoded: Vec<EncodedSpan> = batch.iter().cloned().map(EncodedSpan::from).collect();
    encode_request(&encode_resource(&resource), &encoded, &mut buf);
    let ours = ExportTraceServiceRequest::decode(buf.as_slice()).expect("valid protobuf");
    assert_eq!(ours, expected(&resource, batch));
}
