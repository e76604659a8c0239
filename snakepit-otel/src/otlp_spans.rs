//! Spans to OTLP without the SDK's span exporter: batches of already-encoded spans
//! ([`EncodedSpan`]) are framed as one `ExportTraceServiceRequest` and sent over gRPC
//! (a raw-bytes codec on tonic's channel) or HTTP (hyper), with nothing retried: a
//! failed export is dropped and counted by the batcher, whose breaker stops attempts
//! while the backend is down. [`QueueSpanProcessor`] feeds spans made through the
//! OpenTelemetry API into the same queue.

use std::time::Duration;

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use bytes::Bytes;
#[cfg(feature = "otlp-grpc")]
use bytes::{Buf, BufMut};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;

use crate::config::OtlpConfig;
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use crate::config::OtlpProtocol;
use crate::export::{BatchExporter, Batcher};
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
use crate::span_encoding::encode_resource;
pub use crate::span_encoding::EncodedSpan;
use crate::span_encoding::{encode_request, EncodedResource};

#[cfg(feature = "otlp-grpc")]
const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

// --- sending -------------------------------------------------------------------------

/// The gRPC body is already encoded; the answer (`ExportTraceServiceResponse`) is read
/// and not decoded.
#[cfg(feature = "otlp-grpc")]
#[derive(Clone, Copy, Default)]
struct RawCodec;

#[cfg(feature = "otlp-grpc")]
struct RawEncoder;
#[cfg(feature = "otlp-grpc")]
struct RawDecoder;

#[cfg(feature = "otlp-grpc")]
impl tonic::codec::Encoder for RawEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

#[cfg(feature = "otlp-grpc")]
impl tonic::codec::Decoder for RawDecoder {
    type Item = ();
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        let n = src.remaining();
        src.advance(n);
        Ok(Some(()))
    }
}

#[cfg(feature = "otlp-grpc")]
impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// Where batches go: one variant per protocol built in (none: this type is empty, and
/// `OtlpSpans::new` refuses, as validation did before).
enum Sink {
    #[cfg(feature = "otlp-grpc")]
    Grpc {
        channel: tonic::transport::Channel,
        metadata: tonic::metadata::MetadataMap,
    },
    #[cfg(feature = "otlp-http")]
    Http {
        // Boxed: the hyper client is several times the size of the gRPC variant.
        client: Box<opentelemetry_http::hyper::HyperClient>,
        url: String,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
    },
}

/// Exports span batches to the OTLP traces endpoint of `OtlpConfig`.
// Without gRPC the timeout lives in the HTTP client; without OTLP nothing is read.
#[cfg_attr(not(feature = "otlp-grpc"), allow(dead_code))]
pub(crate) struct OtlpSpans {
    resource: EncodedResource,
    sink: Sink,
    timeout: Duration,
}

/// A build without OTLP: validation refuses exported spans before this is reached.
#[cfg(not(any(feature = "otlp-grpc", feature = "otlp-http")))]
impl OtlpSpans {
    pub(crate) fn new(otlp: &OtlpConfig, _resource: &Resource) -> Result<Self, String> {
        Err(crate::config::protocol_not_built(otlp.protocol))
    }

    async fn send(&self, _body: Vec<u8>) -> Result<(), String> {
        match self.sink {}
    }
}

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
impl OtlpSpans {
    /// Made on the export thread (its runtime drives the connection). The gRPC
    /// connection is made lazily, on the first export.
    pub(crate) fn new(otlp: &OtlpConfig, resource: &Resource) -> Result<Self, String> {
        let timeout = Duration::from_millis(otlp.timeout_ms);
        let endpoint = otlp.signal_endpoint("traces");
        #[allow(unreachable_patterns, unreachable_code)]
        let sink = match otlp.protocol {
            #[cfg(feature = "otlp-grpc")]
            OtlpProtocol::Grpc => {
                let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
                    .map_err(|e| {
                        format!(
                            "OTLP traces endpoint {endpoint:?} is not a URL ({e}); set \
                             telemetry.otlp.endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT) to one \
                             like http://collector:4317"
                        )
                    })?
                    .timeout(timeout)
                    .connect_lazy();
                Sink::Grpc {
                    channel,
                    metadata: crate::otlp::tonic_metadata(&otlp.headers),
                }
            }
            #[cfg(feature = "otlp-http")]
            OtlpProtocol::HttpProtobuf => Sink::Http {
                client: Box::new(
                    opentelemetry_http::hyper::HyperClient::with_default_connector(timeout, None),
                ),
                url: endpoint,
                headers: otlp
                    .headers
                    .iter()
                    .filter_map(|(k, v)| Some((k.parse().ok()?, v.parse().ok()?)))
                    .collect(),
            },
            protocol => return Err(crate::config::protocol_not_built(protocol)),
        };
        Ok(OtlpSpans {
            resource: encode_resource(resource),
            sink,
            timeout,
        })
    }

    async fn send(&self, body: Vec<u8>) -> Result<(), String> {
        match &self.sink {
            #[cfg(feature = "otlp-grpc")]
            Sink::Grpc { channel, metadata } => {
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                grpc.ready()
                    .await
                    .map_err(|e| format!("OTLP/gRPC traces endpoint not ready: {e}"))?;
                let mut request = tonic::Request::new(Bytes::from(body));
                *request.metadata_mut() = metadata.clone();
                request.set_timeout(self.timeout);
                grpc.unary(
                    request,
                    http::uri::PathAndQuery::from_static(GRPC_PATH),
                    RawCodec,
                )
                .await
                .map(|_| ())
                .map_err(|s| format!("OTLP/gRPC traces export failed: {s}"))
            }
            #[cfg(feature = "otlp-http")]
            Sink::Http {
                client,
                url,
                headers,
            } => {
                use opentelemetry_http::HttpClient;
                let mut request = http::Request::post(url)
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(Bytes::from(body))
                    .map_err(|e| format!("OTLP/HTTP traces request to {url}: {e}"))?;
                for (k, v) in headers {
                    request.headers_mut().insert(k.clone(), v.clone());
                }
                let response = client
                    .send_bytes(request)
                    .await
                    .map_err(|e| format!("OTLP/HTTP traces export to {url} failed: {e}"))?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(format!(
                        "OTLP/HTTP traces export to {url} answered {}",
                        response.status()
                    ))
                }
            }
        }
    }
}

impl BatchExporter<EncodedSpan> for OtlpSpans {
    /// The request's protobuf bytes.
    type Encoded = Vec<u8>;
    fn encode(&self, batch: Vec<EncodedSpan>) -> Vec<u8> {
        let size: usize = batch.iter().map(|s| s.body().len() + 4).sum();
        let mut body = Vec::with_capacity(self.resource.len() + 64 + size);
        encode_request(&self.resource, &batch, &mut body);
        body
    }
    async fn export(&self, body: Vec<u8>) -> Result<(), String> {
        self.send(body).await
    }
}

// --- spans made through the OpenTelemetry API -----------------------------------------

/// A span processor that hands finished spans to a [`Batcher`].
#[derive(Debug)]
pub struct QueueSpanProcessor(pub std::sync::Arc<Batcher<EncodedSpan>>);

impl SpanProcessor for QueueSpanProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.0.push(EncodedSpan::from(span));
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.flush(Duration::from_secs(10))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown(timeout)
    }

    fn set_resource(&mut self, _resource: &Resource) {
        // The exporter gets the resource when it is built, on the export thread.
    }
}
