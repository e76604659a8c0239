//! The pipe transport's wire format: a 4-byte big-endian length, then a protobuf
//! `Frame` (`proto/snakepit/v1/worker.proto`), and the per-call metadata it carries.

use std::collections::HashMap;

use bytes::{Buf, BytesMut};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// Frames read off one pipe. Cancel-safe: the bytes of a frame read so far stay in
/// `buf` when the caller stops waiting (a stream dropped mid-chunk), and the next read
/// goes on with the same frame, so the pipe never falls out of step.
pub(super) struct FrameReader {
    rx: pipe::Receiver,
    buf: BytesMut,
    max: usize,
}

/// How much to ask the pipe for when the buffer has no room (a pipe holds 64 KiB).
const READ_CHUNK: usize = 64 * 1024;

impl FrameReader {
    pub fn new(rx: pipe::Receiver, max: usize) -> Self {
        FrameReader {
            rx,
            buf: BytesMut::with_capacity(READ_CHUNK),
            max,
        }
    }

    pub async fn read(&mut self) -> Result<Frame, TransportError> {
        loop {
            if let Some(frame) = self.complete_frame()? {
                return checked(frame);
            }
            // `read_buf` is cancel-safe: bytes are appended only once read.
            let n = self.rx.read_buf(&mut self.buf).await.map_err(|e| {
                TransportError::Disconnected(format!("reading from the worker: {e}"))
            })?;
            if n == 0 {
                return Err(TransportError::Disconnected(
                    "reading from the worker: the pipe closed".into(),
                ));
            }
        }
    }

    /// The next frame if the buffer holds all of it (making room for it otherwise).
    fn complete_frame(&mut self) -> Result<Option<Frame>, TransportError> {
        let Some(head) = self.buf.first_chunk::<4>() else {
            self.buf.reserve(READ_CHUNK);
            return Ok(None);
        };
        let len = u32::from_be_bytes(*head) as usize;
        if len > self.max {
            return Err(protocol(format!(
                "worker sent a frame of {len} bytes, over the limit of {} (max_response_bytes)",
                self.max
            )));
        }
        if self.buf.len() < 4 + len {
            self.buf.reserve((4 + len - self.buf.len()).max(READ_CHUNK));
            return Ok(None);
        }
        self.buf.advance(4);
        let body = self.buf.split_to(len);
        Frame::decode(body.freeze())
            .map(Some)
            .map_err(|e| protocol(format!("worker sent a frame that does not decode: {e}")))
    }
}

/// A frame error from the worker as a transport error.
fn checked(frame: Frame) -> Result<Frame, TransportError> {
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
