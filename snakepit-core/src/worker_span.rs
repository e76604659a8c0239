//! The worker's own timing of one call ([`WorkerSpan`]): a leaf type shared by the
//! success path ([`crate::Served`]) and the failure path ([`crate::PythonError`]).

use std::time::{Duration, SystemTime};

/// Where the worker spent a request, as the worker measured it: telemetry turns it into
/// the worker's server span (child of the request span) without Python exporting spans.
/// The worker chose `span_id`, so spans user code opened are already its children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSpan {
    /// The span id the worker picked (user spans in Python are its children).
    pub span_id: [u8; 8],
    /// The worker.
    pub worker_id: String,
    /// When the worker started the call, by its clock.
    pub started_at: SystemTime,
    /// How long the call took inside the worker.
    pub duration: Duration,
}

impl WorkerSpan {
    /// From the contract message; `None` when the worker sent no usable span id.
    pub(crate) fn from_proto(span: &crate::proto::WorkerSpan, worker_id: &str) -> Option<Self> {
        let span_id: [u8; 8] = span.span_id.as_ref().try_into().ok()?;
        if span_id == [0; 8] {
            return None;
        }
        Some(WorkerSpan {
            span_id,
            worker_id: worker_id.to_string(),
            started_at: SystemTime::UNIX_EPOCH + Duration::from_nanos(span.start_unix_nanos),
            duration: Duration::from_nanos(span.duration_nanos),
        })
    }
}
