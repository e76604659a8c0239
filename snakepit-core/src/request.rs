//! What callers send to a pool and what they get back.

use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::Error;
pub use crate::worker_span::WorkerSpan;

/// Keyword arguments for a command, held as validated UTF-8 JSON object bytes so they
/// cross to Python without being re-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args(Result<Bytes, String>);

impl Args {
    /// No arguments.
    pub fn empty() -> Self {
        Args(Ok(Bytes::from_static(b"{}")))
    }

    /// Arguments from a JSON value; anything but an object (or null, meaning none)
    /// makes the request fail with `InvalidArgs`.
    pub fn json(value: serde_json::Value) -> Self {
        match value {
            serde_json::Value::Null => Args::empty(),
            serde_json::Value::Object(_) => match serde_json::to_vec(&value) {
                Ok(bytes) => Args(Ok(bytes.into())),
                Err(e) => Args(Err(format!("cannot encode arguments: {e}"))),
            },
            other => Args(Err(format!(
                "arguments must be a JSON object of keyword arguments, got {}",
                json_kind(&other)
            ))),
        }
    }

    /// Arguments from raw bytes (e.g. an HTTP body), checked to be UTF-8 JSON of an object.
    pub fn from_json_bytes(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if let Err(e) = std::str::from_utf8(&bytes) {
            return Args(Err(format!(
                "arguments are not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            )));
        }
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(serde_json::Value::Object(_)) => Args(Ok(bytes)),
            Ok(serde_json::Value::Null) => Args::empty(),
            Ok(other) => Args(Err(format!(
                "arguments must be a JSON object of keyword arguments, got {}",
                json_kind(&other)
            ))),
            Err(e) => Args(Err(format!("arguments are not valid JSON: {e}"))),
        }
    }

    /// The encoded object, or why there is none.
    pub fn encoded(&self) -> Result<&Bytes, Error> {
        self.0.as_ref().map_err(|m| Error::invalid_args(m.clone()))
    }

    /// Bytes on the wire (0 when invalid).
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, Bytes::len)
    }

    /// True when there are no bytes (invalid arguments included).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for Args {
    fn default() -> Self {
        Args::empty()
    }
}

impl From<serde_json::Value> for Args {
    fn from(v: serde_json::Value) -> Self {
        Args::json(v)
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// One call of a Python command: the command, its JSON arguments, and where and how
/// it should run.
///
/// ```
/// use std::time::Duration;
/// use serde_json::json;
/// use snakepit_core::Request;
///
/// let req = Request::new("predict", json!({"text": "great library"}))
///     .pool("models") // for `Pools`; a single pool ignores it
///     .session("user-42") // the worker holding this session's state
///     .timeout(Duration::from_secs(2)) // instead of the pool's request_timeout_ms
///     .correlation_id("order-1234"); // ties logs, events and spans together
/// assert_eq!(req.pool.as_deref(), Some("models"));
/// assert_eq!(req.args.len(), r#"{"text":"great library"}"#.len());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The adapter command to call.
    pub command: String,
    /// Its arguments: a JSON object.
    pub args: Args,
    /// Route to the worker holding this session.
    pub session_id: Option<String>,
    /// Overrides the pool's `request_timeout_ms`.
    pub timeout: Option<Duration>,
    /// For routers over several pools ([`crate::Pools`]); a single pool ignores it.
    pub pool: Option<String>,
    /// Generated when absent.
    pub request_id: Option<String>,
    /// Ties the request's logs, events and spans together across services.
    pub correlation_id: Option<String>,
    /// Extra per-request metadata sent to the worker (W3C `traceparent`/`tracestate`
    /// among it). Keys must be lower-case ASCII header names.
    pub metadata: Vec<(String, String)>,
}

impl Request {
    /// A call of `command` with `args` (a `serde_json::Value` object, or raw JSON).
    pub fn new(command: impl Into<String>, args: impl Into<Args>) -> Self {
        Request {
            command: command.into(),
            args: args.into(),
            session_id: None,
            timeout: None,
            pool: None,
            request_id: None,
            correlation_id: None,
            metadata: Vec::new(),
        }
    }

    /// Run on the worker holding session `session_id`.
    pub fn session(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    /// This request's deadline instead of the pool's `request_timeout_ms`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The pool to run in, for [`crate::Pools`].
    pub fn pool(mut self, pool: impl Into<String>) -> Self {
        self.pool = Some(pool.into());
        self
    }

    /// The correlation id to carry (the telemetry layer makes one when absent).
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// The request id instead of a generated one.
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    /// Add one metadata entry for the worker (the key a lower-case ASCII header name).
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }
}

/// Timing and placement of a served request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The request's id.
    pub request_id: String,
    /// The worker that ran it.
    pub worker_id: String,
    /// From admission until a worker took the request.
    pub queue_time: Duration,
    /// From the worker taking the request until its result.
    pub duration: Duration,
    /// Of `duration`, the command's own run in Python (the adapter's function; for a
    /// stream, producing its items), by the worker's monotonic clock. `None` when the
    /// worker did not report it (a stream its caller left before the end).
    pub python_time: Option<Duration>,
    /// The worker's own timing, when the request's trace context was sampled.
    pub worker_span: Option<WorkerSpan>,
    /// Set when the request's session had lost its state with its previous worker and
    /// was re-created empty for this request (`on_worker_loss = "recreate"`): why.
    pub session_recreated: Option<String>,
}

impl Served {
    /// Where the request's time went: queue wait, transport, Python. `None` when the
    /// worker did not report its Python time.
    pub fn breakdown(&self) -> Option<Breakdown> {
        let python = self.python_time?;
        Some(Breakdown {
            queue: self.queue_time,
            // The rest of the worker call: pipes or gRPC both ways, serialization on
            // both sides, session set-up. A worker clock that ran ahead of ours (it
            // cannot, both are monotonic, but rounding can) counts as zero transport.
            transport: self.duration.saturating_sub(python),
            python: python.min(self.duration),
        })
    }
}

/// Where a served request's time went; the three add up to the caller's wait for the
/// pool (the queue time plus [`Served::duration`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breakdown {
    /// Waiting for a free worker.
    pub queue: Duration,
    /// The worker call minus Python's part: the transport both ways, serialization on
    /// both sides included.
    pub transport: Duration,
    /// The command's own run in Python, by the worker's clock.
    pub python: Duration,
}

/// A command's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The return value, as the JSON text Python produced.
    pub result: Bytes,
    /// Where and how long it ran.
    pub served: Served,
}

impl Response {
    /// The result parsed as `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.result).map_err(|e| Error::Transport {
            worker_id: self.served.worker_id.clone(),
            message: format!("worker returned a result that is not valid JSON: {e}"),
        })
    }

    /// The result as a JSON value.
    pub fn value(&self) -> Result<serde_json::Value, Error> {
        self.json()
    }
}

/// One chunk of a streaming result: one value the Python generator yielded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The yielded value, as JSON text.
    pub data: Bytes,
}

impl Chunk {
    /// The chunk parsed as `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn args_must_be_an_object_of_utf8_json() {
        assert!(Args::json(json!({"a": 1})).encoded().is_ok());
        assert_eq!(Args::json(json!(null)).encoded().unwrap(), "{}");
        let err = Args::json(json!([1])).encoded().unwrap_err();
        assert!(err.to_string().contains("an array"), "{err}");
        let err = Args::from_json_bytes(&b"{\"a\": \"\xff\"}"[..])
            .encoded()
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgs { .. }));
        assert!(err.to_string().contains("UTF-8"), "{err}");
        let err = Args::from_json_bytes(&b"{nope"[..]).encoded().unwrap_err();
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        assert!(Args::from_json_bytes(&b" {\"k\": [1]} "[..])
            .encoded()
            .is_ok());
    }
}
