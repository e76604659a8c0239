//! gRPC transport: a tonic client per worker over the worker's Unix socket.
//!
//! Unix sockets were measured faster than TCP loopback here (NOTES: p50 327 µs vs
//! 390 µs against the same grpcio server) and need no port allocation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::{
    BoxFuture, CallMeta, ChunkStream, TransportError, WorkerTransport, CORRELATION_ID_HEADER,
    REQUEST_ID_HEADER,
};
use crate::proto::{self, worker_client::WorkerClient};

pub(crate) struct GrpcTransport {
    client: WorkerClient<Channel>,
}

impl GrpcTransport {
    /// Connect to a worker's socket; `max_message_bytes` bounds both directions.
    pub async fn connect(
        socket: &Path,
        max_message_bytes: usize,
        timeout: Duration,
    ) -> Result<Self, TransportError> {
        let socket: PathBuf = socket.to_path_buf();
        // The URI is required by the API but unused: the connector dials the socket.
        let endpoint = Endpoint::from_static("http://snakepit-worker").connect_timeout(timeout);
        let channel =
            endpoint
                .connect_with_connector(tower::service_fn(move |_| {
                    let socket = socket.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?))
                    }
                }))
                .await
                .map_err(|e| TransportError::Disconnected(format!("cannot connect: {e}")))?;
        let client = WorkerClient::new(channel)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        Ok(GrpcTransport { client })
    }
}

fn request_with_meta<T>(msg: T, meta: &CallMeta<'_>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(timeout) = meta.timeout {
        // Sent as `grpc-timeout`: Python sees it as the call's time_remaining().
        req.set_timeout(timeout);
    }
    let md = req.metadata_mut();
    if let Ok(v) = MetadataValue::try_from(meta.request_id) {
        md.insert(REQUEST_ID_HEADER, v);
    }
    if let Some(Ok(v)) = meta.correlation_id.map(MetadataValue::try_from) {
        md.insert(CORRELATION_ID_HEADER, v);
    }
    for (k, v) in meta.extra {
        // Keys or values that are not valid ASCII header text cannot travel as gRPC
        // metadata; they are skipped rather than failing the request.
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(k.as_bytes()),
            MetadataValue::try_from(v.as_str()),
        ) {
            md.insert(key, value);
        }
    }
    req
}

fn control_request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(timeout);
    req
}

fn map_status(status: Status) -> TransportError {
    let msg = status.message().to_string();
    match status.code() {
        // tonic enforces the `grpc-timeout` it sends as Cancelled("Timeout expired").
        Code::DeadlineExceeded => TransportError::TimedOut,
        Code::Cancelled if msg == tonic::TimeoutExpired(()).to_string() => TransportError::TimedOut,
        Code::ResourceExhausted | Code::OutOfRange => TransportError::TooLarge(msg),
        Code::Unavailable | Code::Cancelled | Code::Aborted | Code::Unknown | Code::Internal => {
            TransportError::Disconnected(format!("{:?}: {msg}", status.code()))
        }
        code => TransportError::Other(format!("{code:?}: {msg}")),
    }
}

async fn with_timeout<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, TransportError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(map_status(status)),
        Err(_) => Err(TransportError::TimedOut),
    }
}

impl WorkerTransport for GrpcTransport {
    fn execute<'a>(
        &'a self,
        req: proto::ExecuteRequest,
        meta: CallMeta<'a>,
    ) -> BoxFuture<'a, Result<proto::ExecuteResponse, TransportError>> {
        let mut client = self.client.clone();
        Box::pin(async move {
            client
                .execute(request_with_meta(req, &meta))
                .await
                .map(tonic::Response::into_inner)
                .map_err(map_status)
        })
    }

    fn execute_stream<'a>(
        &'a self,
        req: proto::ExecuteRequest,
        meta: CallMeta<'a>,
    ) -> BoxFuture<'a, Result<ChunkStream, TransportError>> {
        let mut client = self.client.clone();
        Box::pin(async move {
            let stream = client
                .execute_stream(request_with_meta(req, &meta))
                .await
                .map_err(map_status)?
                .into_inner();
            let mapped: ChunkStream = Box::pin(stream.map(|item| item.map_err(map_status)));
            Ok(mapped)
        })
    }

    fn health(
        &self,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<proto::HealthResponse, TransportError>> {
        let mut client = self.client.clone();
        Box::pin(async move {
            with_timeout(
                timeout,
                client.health(control_request(proto::HealthRequest {}, timeout)),
            )
            .await
        })
    }

    fn describe(
        &self,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<proto::DescribeResponse, TransportError>> {
        let mut client = self.client.clone();
        Box::pin(async move {
            with_timeout(
                timeout,
                client.describe(control_request(proto::DescribeRequest {}, timeout)),
            )
            .await
        })
    }

    fn init_session<'a>(
        &'a self,
        session_id: &'a str,
        metadata_json: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<bool, TransportError>> {
        let mut client = self.client.clone();
        let msg = proto::InitSessionRequest {
            session_id: session_id.to_string(),
            metadata_json,
        };
        Box::pin(async move {
            with_timeout(timeout, client.init_session(control_request(msg, timeout)))
                .await
                .map(|ack| ack.changed)
        })
    }

    fn close_session<'a>(
        &'a self,
        session_id: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<bool, TransportError>> {
        let mut client = self.client.clone();
        let msg = proto::CloseSessionRequest {
            session_id: session_id.to_string(),
        };
        Box::pin(async move {
            with_timeout(timeout, client.close_session(control_request(msg, timeout)))
                .await
                .map(|ack| ack.changed)
        })
    }
}
