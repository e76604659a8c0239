//! The worker's own timing of one call ([`WorkerSpan`]): a leaf type shared by the
//! success path ([`crate::Served`]) and the failure path ([`crate::PythonError`]).

use std::time::{Duration, SystemTime};

/// Where the worker spent a request, as the worker measured it: telemetry turns it into
/// the worker's server span (child of the request span) without Python exporting spans.
/// The worker chose `span_id`, so spans user code opened are already its children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSpan {
    pub span_id: [u8; 8],
    pub worker_id: String,
    pub started_at: SystemTime,
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
