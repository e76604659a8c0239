//! OTLP exporter construction shared by the three signals: endpoint per protocol,
//! headers, timeouts, and the batching/breaker settings of the export threads.

use std::time::Duration;

use crate::config::OtlpConfig;
use crate::export::ExportSettings;

pub(crate) fn export_settings(otlp: &OtlpConfig) -> ExportSettings {
    ExportSettings {
        max_queue: otlp.max_queue_size,
        max_batch: 512,
        delay: Duration::from_millis(1_000),
        timeout: Duration::from_millis(otlp.timeout_ms) + Duration::from_millis(500),
        breaker_failures: otlp.breaker_failures.max(1),
        breaker_cooldown: Duration::from_millis(otlp.breaker_cooldown_ms),
    }
}

#[cfg(feature = "otlp-grpc")]
pub(crate) fn tonic_metadata(
    headers: &std::collections::BTreeMap<String, String>,
) -> tonic::metadata::MetadataMap {
    let mut md = tonic::metadata::MetadataMap::new();
    for (k, v) in headers {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(k.as_bytes()),
            v.parse(),
        ) {
            md.insert(key, value);
        }
    }
    md
}

/// Build the OTLP exporter of one signal for the configured protocol (the builders of
/// the three signals share no trait, hence a macro). `Err` names what failed, or the
/// missing cargo feature (validation refuses that config first).
#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
macro_rules! otlp_exporter {
    ($builder:expr, $otlp:expr, $signal:literal) => {{
        let otlp: &$crate::config::OtlpConfig = $otlp;
        let timeout = ::std::time::Duration::from_millis(otlp.timeout_ms);
        #[allow(unreachable_patterns)]
        match otlp.protocol {
            #[cfg(feature = "otlp-grpc")]
            $crate::config::OtlpProtocol::Grpc => $builder
                .with_tonic()
                .with_endpoint(otlp.signal_endpoint($signal))
                .with_timeout(timeout)
                .with_metadata($crate::otlp::tonic_metadata(&otlp.headers))
                .build()
                .map_err(|e| e.to_string()),
            #[cfg(feature = "otlp-http")]
            $crate::config::OtlpProtocol::HttpProtobuf => $builder
                .with_http()
                .with_endpoint(otlp.signal_endpoint($signal))
                .with_timeout(timeout)
                .with_headers(
                    otlp.headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect::<::std::collections::HashMap<_, _>>(),
                )
                .build()
                .map_err(|e| e.to_string()),
            protocol => Err($crate::config::protocol_not_built(protocol)),
        }
    }};
}

#[cfg(any(feature = "otlp-grpc", feature = "otlp-http"))]
pub(crate) use otlp_exporter;
