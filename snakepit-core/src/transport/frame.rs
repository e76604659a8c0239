//! The pipe transport's wire format: a 4-byte big-endian length, then a protobuf
//! `Frame` (`proto/snakepit/v1/worker.proto`), and the per-call metadata it carries.

use std::collections::HashMap;

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;

use super::{CallMeta, TransportError, CORRELATION_ID_HEADER, REQUEST_ID_HEADER};
use crate::proto::{frame::Body, Frame};

pub(super) fn protocol(message: impl Into<String>) -> TransportError {
    TransportError::Protocol(message.into())
}

/// Writes of at most this many bytes reach a pipe whole or not at all (POSIX
/// `PIPE_BUF`, 4096 on Linux).
pub(super) const PIPE_BUF: usize = 4096;

pub(super) fn encode_frame(frame: &Frame) -> Result<Vec<u8>, TransportError> {
    let len = frame.encoded_len();
    let mut buf = Vec::with_capacity(4 + len);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    frame
        .encode(&mut buf)
        .map_err(|e| protocol(format!("cannot encode frame: {e}")))?;
    Ok(buf)
}

pub(super) fn write_failed(e: std::io::Error) -> TransportError {
    TransportError::Disconnected(format!("writing to the worker: {e}"))
}

pub(super) async fn write_frame(
    tx: &mut pipe::Sender,
    frame: &Frame,
) -> Result<(), TransportError> {
    let buf = encode_frame(frame)?;
    tx.write_all(&buf).await.map_err(write_failed)
}

pub(super) async fn read_frame(
    rx: &mut BufReader<pipe::Receiver>,
    max: usize,
) -> Result<Frame, TransportError> {
    let mut head = [0u8; 4];
    rx.read_exact(&mut head)
        .await
        .map_err(|e| TransportError::Disconnected(format!("reading from the worker: {e}")))?;
    let len = u32::from_be_bytes(head) as usize;
    if len > max {
        return Err(protocol(format!(
            "worker sent a frame of {len} bytes, over the limit of {max} (max_response_bytes)"
        )));
    }
    let mut body = vec![0u8; len];
    rx.read_exact(&mut body)
        .await
        .map_err(|e| TransportError::Disconnected(format!("reading from the worker: {e}")))?;
    let frame = Frame::decode(body.as_slice())
        .map_err(|e| protocol(format!("worker sent a frame that does not decode: {e}")))?;
    if let Some(Body::FrameError(e)) = &frame.body {
        if e.too_large {
            // The worker withheld an oversized reply; the pipe is still in step.
            return Err(TransportError::TooLarge(e.message.clone()));
        }
        return Err(protocol(format!("worker rejected a frame: {}", e.message)));
    }
    Ok(frame)
}

pub(super) fn frame_meta(meta: &CallMeta<'_>) -> HashMap<String, String> {
    let mut m = HashMap::with_capacity(2 + meta.extra.len());
    m.insert(REQUEST_ID_HEADER.to_string(), meta.request_id.to_string());
    if let Some(c) = meta.correlation_id {
        m.insert(CORRELATION_ID_HEADER.to_string(), c.to_string());
    }
    for (k, v) in meta.extra {
        m.insert(k.clone(), v.clone());
    }
    m
}
