//! How the pool talks to one worker process, behind a small internal trait: gRPC over a
//! Unix socket (`grpc`) or length-prefixed protobuf frames over inherited pipes (`pipe`).
//! The pool sees only `WorkerTransport`.
//!
//! A transport only moves contract messages (`proto/snakepit/v1/worker.proto`); it
//! does not enforce request timeouts (the worker driver does, so that an overrun
//! replaces the worker whatever the transport) but it does tell the worker the
//! deadline so Python code can see it.

mod frame;
#[cfg(feature = "grpc")]
pub(crate) mod grpc;
pub(crate) mod pipe;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;

use crate::proto;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub(crate) type ChunkStream =
    Pin<Box<dyn Stream<Item = Result<proto::StreamChunk, TransportError>> + Send>>;

/// Per-call context that travels beside the request (gRPC metadata, or frame headers).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallMeta<'a> {
    pub request_id: &'a str,
    pub correlation_id: Option<&'a str>,
    /// `traceparent`, `tracestate` and other caller metadata.
    pub extra: &'a [(String, String)],
    pub timeout: Option<Duration>,
}

pub(crate) const REQUEST_ID_HEADER: &str = "x-snakepit-request-id";
pub(crate) const CORRELATION_ID_HEADER: &str = "x-correlation-id";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TransportError {
    /// The connection broke or could not be used: the worker probably died.
    #[error("connection to worker lost: {0}")]
    Disconnected(String),
    /// A message exceeded the configured size limit.
    #[error("message too large: {0}")]
    TooLarge(String),
    /// The call's deadline passed (control calls: their own timeout; requests: the
    /// deadline sent with them).
    #[error("deadline exceeded")]
    TimedOut,
    /// The worker broke the wire protocol (a frame that does not decode, is over the
    /// limit, or answers the wrong call): the channel cannot be trusted any more.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Any other gRPC status (only the gRPC transport has such statuses).
    #[cfg_attr(not(feature = "grpc"), allow(dead_code))]
    #[error("{0}")]
    Other(String),
}

/// Run a transport call until `deadline` (none: as long as it takes); past it, the
/// call is dropped and `TimedOut` comes back.
pub(crate) async fn by_deadline<T>(
    deadline: Option<tokio::time::Instant>,
    call: impl Future<Output = Result<T, TransportError>>,
) -> Result<T, TransportError> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, call)
            .await
            .unwrap_or(Err(TransportError::TimedOut)),
        None => call.await,
    }
}

pub(crate) trait WorkerTransport: Send + Sync + 'static {
    /// The transport's pipelining face, if it has one (the pipe transport).
    fn pipelined(&self) -> Option<&dyn Pipelined> {
        None
    }

    fn execute<'a>(
        &'a self,
        req: proto::ExecuteRequest,
        meta: CallMeta<'a>,
    ) -> BoxFuture<'a, Result<proto::ExecuteResponse, TransportError>>;

    fn execute_stream<'a>(
        &'a self,
        req: proto::ExecuteRequest,
        meta: CallMeta<'a>,
    ) -> BoxFuture<'a, Result<ChunkStream, TransportError>>;

    fn health(
        &self,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<proto::HealthResponse, TransportError>>;

    fn describe(
        &self,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<proto::DescribeResponse, TransportError>>;

    fn init_session<'a>(
        &'a self,
        session_id: &'a str,
        metadata_json: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<bool, TransportError>>;

    fn close_session<'a>(
        &'a self,
        session_id: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<bool, TransportError>>;
}

/// Unary calls split in two, so the pool can write the next request behind the running
/// one (the worker starts it the moment it replies) and take it back while it waits.
///
/// Replies come in the order the requests were sent; the caller receives them in that
/// order. A sent call is either received or revoked, never neither.
pub(crate) trait Pipelined: Send + Sync {
    /// Write a unary request; returns its call id.
    fn send<'a>(
        &'a self,
        req: proto::ExecuteRequest,
        meta: CallMeta<'a>,
    ) -> BoxFuture<'a, Result<u64, TransportError>>;

    /// Write a unary request behind the running call only if the pipe takes it whole
    /// at once (`Ok(None)`: not written, nothing to undo).
    fn try_send_ahead<'a>(
        &'a self,
        req: proto::ExecuteRequest,
        meta: CallMeta<'a>,
    ) -> BoxFuture<'a, Result<Option<u64>, TransportError>>;

    /// Read the reply to `call_id`, the oldest call not yet received.
    fn receive(
        &self,
        call_id: u64,
    ) -> BoxFuture<'_, Result<proto::ExecuteResponse, TransportError>>;

    /// Take back `call_id` unless the worker started it: true means no reply to it
    /// will come, and it never ran.
    fn revoke(
        &self,
        call_id: u64,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<bool, TransportError>>;
}
