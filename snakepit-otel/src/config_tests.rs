//! Unit tests of `TelemetryConfig`: `OTEL_*` resolution and validation.
use super::*;

fn resolved(cfg: TelemetryConfig, vars: &[(&str, &str)]) -> TelemetryConfig {
    let mut cfg = cfg;
    let map: std::collections::HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    cfg.apply_vars(|k| map.get(k).cloned()).unwrap();
    cfg
}

fn exported(cfg: &TelemetryConfig) -> (bool, bool, bool) {
    (
        cfg.traces.exported(),
        cfg.metrics.exported(),
        cfg.logs.exported(),
    )
}

#[test]
fn an_otlp_endpoint_alone_turns_export_on_as_the_sdks_do() {
    let defaults = TelemetryConfig::default();
    assert_eq!(
        exported(&resolved(defaults.clone(), &[])),
        (false, false, false)
    );
    let cfg = resolved(
        defaults.clone(),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")],
    );
    assert_eq!(exported(&cfg), (true, true, true));
    assert!(
        cfg.traces.worker_spans_on(),
        "worker spans come with exported traces"
    );
    // A signal's own endpoint turns on that signal only.
    let cfg = resolved(
        defaults.clone(),
        &[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4318/v1/traces",
        )],
    );
    assert_eq!(exported(&cfg), (true, false, false));
    assert_eq!(
        cfg.otlp.signal_endpoint("traces"),
        "http://collector:4318/v1/traces"
    );
    // So does OTEL_{SIGNAL}_EXPORTER=otlp.
    let cfg = resolved(defaults.clone(), &[("OTEL_LOGS_EXPORTER", "otlp")]);
    assert_eq!(exported(&cfg), (false, false, true));
}

#[test]
fn the_configuration_wins_and_none_turns_a_signal_off() {
    let mut cfg = TelemetryConfig::default();
    cfg.metrics.otlp = Some(false);
    cfg.logs.otlp = Some(true);
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
    let got = resolved(cfg.clone(), &[endpoint]);
    assert_eq!(
        exported(&got),
        (true, false, true),
        "an explicit false stays off"
    );
    let got = resolved(cfg.clone(), &[endpoint, ("OTEL_LOGS_EXPORTER", "none")]);
    assert_eq!(
        exported(&got),
        (true, false, false),
        "none beats the configuration"
    );
    let got = resolved(
        TelemetryConfig::default(),
        &[endpoint, ("OTEL_METRICS_EXPORTER", "prometheus")],
    );
    assert_eq!(exported(&got), (true, false, true));
    assert!(got.metrics.prometheus);
    let mut spans_off = TelemetryConfig::default();
    spans_off.traces.worker_spans = Some(false);
    assert!(!resolved(spans_off, &[endpoint]).traces.worker_spans_on());
    let mut bad = TelemetryConfig::default();
    assert!(bad
        .apply_vars(|k| (k == "OTEL_TRACES_EXPORTER").then(|| "jaeger".to_string()))
        .is_err());
}

#[test]
fn signal_endpoints_for_each_protocol() {
    let mut otlp = OtlpConfig {
        endpoint: Some("http://c:4318".into()),
        protocol: OtlpProtocol::HttpProtobuf,
        ..OtlpConfig::default()
    };
    assert_eq!(otlp.signal_endpoint("metrics"), "http://c:4318/v1/metrics");
    otlp.logs_endpoint = Some("http://l:9/custom".into());
    assert_eq!(otlp.signal_endpoint("logs"), "http://l:9/custom");
    otlp.protocol = OtlpProtocol::Grpc;
    assert_eq!(otlp.signal_endpoint("traces"), "http://c:4318");
}
