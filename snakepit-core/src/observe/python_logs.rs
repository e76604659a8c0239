//! Python's `logging` records, as the bridge sends them on the telemetry pipe, into
//! this process's `tracing` — so they leave exactly as the pool's own records do (the
//! JSON log line with the same field names, OTLP logs, sanitization), with the worker
//! id and, when the record was made inside a request, its request id, correlation id
//! and trace context.
//!
//! Each record becomes one event with target `snakepit::python`: the logger's name in
//! `logger`, Python's level mapped onto tracing's (CRITICAL is ERROR, and keeps its
//! name in `python_level`), the `exc_info` traceback whole in `python_traceback` with
//! its type in `python_type` (the names the pool's own failure records use), and the
//! source location under OpenTelemetry's `code.*` names, and the record's `extra={...}`
//! attributes as one JSON object (`python_extra`, logged as the object `extra` with its
//! sensitive keys redacted). An event that carries
//! `trace_id` and `span_id` is logged under them (see the log layer in snakepit-otel).

use serde::Deserialize;

/// One `logging.LogRecord`, as `snakepit_bridge.logs` sends it.
#[derive(Deserialize)]
pub(crate) struct Record {
    level: i64,
    #[serde(default)]
    levelname: String,
    #[serde(default)]
    logger: String,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    line: Option<u64>,
    #[serde(default)]
    func: Option<String>,
    #[serde(default)]
    thread: Option<String>,
    #[serde(default)]
    exc_type: Option<String>,
    #[serde(default)]
    exc: Option<String>,
    #[serde(default)]
    stack: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    trace_id: Option<String>,
    #[serde(default)]
    span_id: Option<String>,
    #[serde(default)]
    sampled: Option<bool>,
    /// The record's `extra={...}` attributes (an object; anything else is ignored).
    #[serde(default)]
    extra: Option<serde_json::Value>,
}

/// Python's levels: DEBUG 10, INFO 20, WARNING 30, ERROR 40, CRITICAL 50.
fn level_of(levelno: i64) -> tracing::Level {
    match levelno {
        i64::MIN..=10 => tracing::Level::DEBUG,
        11..=20 => tracing::Level::INFO,
        21..=30 => tracing::Level::WARN,
        _ => tracing::Level::ERROR,
    }
}

/// An optional field, absent when empty.
fn none(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|v| !v.is_empty())
}

/// One record as one `tracing` event (a macro per level: tracing's levels are static).
pub(crate) fn emit(worker_id: &str, pool: &str, r: &Record) {
    // As JSON text: tracing's field names are static; the log layer makes it an
    // object again (`extra`), sanitized.
    let python_extra = r
        .extra
        .as_ref()
        .filter(|v| v.as_object().is_some_and(|m| !m.is_empty()))
        .map(|v| v.to_string());
    let standard = matches!(r.levelname.as_str(), "DEBUG" | "INFO" | "WARNING" | "ERROR");
    let python_level = (!standard && !r.levelname.is_empty()).then_some(r.levelname.as_str());
    macro_rules! event {
        ($level:expr) => {
            tracing::event!(target: "snakepit::python", $level,
                worker_id, pool,
                logger = r.logger.as_str(),
                python_level,
                request_id = none(&r.request_id),
                correlation_id = none(&r.correlation_id),
                trace_id = none(&r.trace_id),
                span_id = none(&r.span_id),
                trace_flags = r.sampled.map(u64::from),
                python_type = none(&r.exc_type),
                python_traceback = none(&r.exc),
                python_stack = none(&r.stack),
                code.file.path = none(&r.file),
                code.line.number = r.line,
                code.function.name = none(&r.func),
                thread.name = none(&r.thread),
                python_extra = python_extra.as_deref(),
                "{}", r.msg)
        };
    }
    match level_of(r.level) {
        tracing::Level::DEBUG | tracing::Level::TRACE => event!(tracing::Level::DEBUG),
        tracing::Level::INFO => event!(tracing::Level::INFO),
        tracing::Level::WARN => event!(tracing::Level::WARN),
        tracing::Level::ERROR => event!(tracing::Level::ERROR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_like_python_names_them() {
        assert_eq!(level_of(5), tracing::Level::DEBUG);
        assert_eq!(level_of(10), tracing::Level::DEBUG);
        assert_eq!(level_of(20), tracing::Level::INFO);
        assert_eq!(level_of(25), tracing::Level::WARN);
        assert_eq!(level_of(30), tracing::Level::WARN);
        assert_eq!(level_of(40), tracing::Level::ERROR);
        assert_eq!(level_of(50), tracing::Level::ERROR);
    }
}
