//! Pipe transport: the contract's messages as length-prefixed `Frame`s over two pairs of
//! pipes inherited by the worker (see `proto/snakepit/v1/worker.proto`).
//!
//! The data pair carries the worker's requests in order: the driver's task writes the
//! frame and reads the reply itself, so a call costs no hop through another task. The
//! driver may write the next unary request before reading the running one's reply
//! (`Pipelined`); the worker answers in order, and a `Revoke` on the control pair takes
//! back a written call that has not started. A stream holds
//! the data pair until its final chunk; if its consumer drops it early, a `Cancel` goes
//! out on the control pair and the next call first reads the rest of that stream. The
//! control pair (health, describe, sessions, cancel) is multiplexed by frame id, with
//! one reader task, so health checks are answered while a request runs. A frame that
//! does not decode or is too long is a `Protocol` error: the worker gets replaced.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::{oneshot, Mutex as AsyncMutex, OwnedMutexGuard};

use super::frame::{
    encode_frame, frame_meta, protocol, write_failed, write_frame, FrameReader, PIPE_BUF,
};
use super::{BoxFuture, CallMeta, ChunkStream, Pipelined, TransportError, WorkerTransport};
use crate::proto::{self, frame::Body, Frame};
use crate::sync;

/// The descriptors the worker finds its pipes on (`--pipe-fds 3,4,5,6`).
pub(crate) const CHILD_FDS: [i32; 4] = [3, 4, 5, 6];

/// The pool's ends of the four pipes.
pub(crate) struct PipeEnds {
    pub data_tx: OwnedFd,
    pub data_rx: OwnedFd,
    pub control_tx: OwnedFd,
    pub control_rx: OwnedFd,
}

/// Create the pipes; returns the pool's ends and the worker's ends (in `CHILD_FDS` order:
/// data in, data out, control in, control out).
pub(crate) fn pipes() -> std::io::Result<(PipeEnds, [OwnedFd; 4])> {
    let (data_child_rx, data_tx) = std::io::pipe()?;
    let (data_rx, data_child_tx) = std::io::pipe()?;
    let (control_child_rx, control_tx) = std::io::pipe()?;
    let (control_rx, control_child_tx) = std::io::pipe()?;
    Ok((
        PipeEnds {
            data_tx: data_tx.into(),
            data_rx: data_rx.into(),
            control_tx: control_tx.into(),
            control_rx: control_rx.into(),
        },
        [
            data_child_rx.into(),
            data_child_tx.into(),
            control_child_rx.into(),
            control_child_tx.into(),
        ],
    ))
}

fn sender(fd: OwnedFd) -> std::io::Result<pipe::Sender> {
    pipe::Sender::from_file(File::from(fd))
}

fn receiver(fd: OwnedFd) -> std::io::Result<pipe::Receiver> {
    pipe::Receiver::from_file(File::from(fd))
}

/// The writing half of the data pair. Locked apart from the reading half, so a
/// pipelined request can be written while the running call's reply is awaited.
struct DataTx {
    tx: pipe::Sender,
    next_id: u64,
}

/// The reading half of the data pair.
struct Data {
    rx: FrameReader,
    /// A stream whose consumer left before its final chunk: read it out first.
    unfinished: Option<u64>,
}

impl Data {
    /// Read the rest of an abandoned stream so the pipe is in step again.
    async fn catch_up(&mut self) -> Result<(), TransportError> {
        while let Some(id) = self.unfinished {
            let frame = self.rx.read().await?;
            match frame.body {
                Some(Body::Chunk(c)) if frame.id == id && c.r#final => self.unfinished = None,
                Some(Body::Chunk(_)) if frame.id == id => {}
                other => {
                    return Err(protocol(format!(
                        "expected chunks of stream {id}, got {other:?}"
                    )))
                }
            }
        }
        Ok(())
    }
}

/// Control calls waiting for their reply, and why the reader stopped (once it has):
/// a call made after that fails at once instead of waiting for a reply nobody reads.
#[derive(Default)]
struct PendingCalls {
    waiters: HashMap<u64, oneshot::Sender<Result<Frame, TransportError>>>,
    closed: Option<TransportError>,
}

type Pending = Arc<Mutex<PendingCalls>>;

fn lock_pending(pending: &Pending) -> std::sync::MutexGuard<'_, PendingCalls> {
    sync::lock(pending)
}

pub(crate) struct PipeTransport {
    data_tx: AsyncMutex<DataTx>,
    data: Arc<AsyncMutex<Data>>,
    control_tx: Arc<AsyncMutex<pipe::Sender>>,
    pending: Pending,
    next_control_id: AtomicU64,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for PipeTransport {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl PipeTransport {
    /// Wrap the pool's pipe ends (call inside a Tokio runtime).
    pub fn new(ends: PipeEnds, max_frame: usize) -> std::io::Result<PipeTransport> {
        let data_tx = DataTx {
            tx: sender(ends.data_tx)?,
            next_id: 0,
        };
        let data = Data {
            rx: FrameReader::new(receiver(ends.data_rx)?, max_frame),
            unfinished: None,
        };
        let mut control_rx = FrameReader::new(receiver(ends.control_rx)?, max_frame);
        let pending: Pending = Arc::default();
        let reader_pending = pending.clone();
        let reader = tokio::spawn(async move {
            // Route every control reply to its caller; on a broken pipe, fail them all.
            let failure = loop {
                match control_rx.read().await {
                    Ok(frame) => {
                        let waiter = lock_pending(&reader_pending).waiters.remove(&frame.id);
                        if let Some(w) = waiter {
                            let _ = w.send(Ok(frame));
                        }
                    }
                    Err(e) => break e,
                }
            };
            let waiters: Vec<_> = {
                let mut p = lock_pending(&reader_pending);
                p.closed = Some(failure.clone());
                p.waiters.drain().map(|(_, w)| w).collect()
            };
            for w in waiters {
                let _ = w.send(Err(failure.clone()));
            }
        });
        Ok(PipeTransport {
            data_tx: AsyncMutex::new(data_tx),
            data: Arc::new(AsyncMutex::new(data)),
            control_tx: Arc::new(AsyncMutex::new(sender(ends.control_tx)?)),
            pending,
            next_control_id: AtomicU64::new(1),
            reader,
        })
    }

    /// One call on the control pair, answered within `timeout`.
    async fn control(&self, body: Body, timeout: Duration) -> Result<Body, TransportError> {
        let id = self.next_control_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = lock_pending(&self.pending);
            if let Some(failure) = &p.closed {
                return Err(failure.clone());
            }
            p.waiters.insert(id, tx);
        }
        let frame = Frame {
            id,
            body: Some(body),
            ..Frame::default()
        };
        let call = async {
            write_frame(&mut *self.control_tx.lock().await, &frame).await?;
            match rx.await {
                Ok(result) => result,
                Err(_) => Err(TransportError::Disconnected(
                    "control reader stopped".into(),
                )),
            }
        };
        let result = tokio::time::timeout(timeout, call)
            .await
            .unwrap_or(Err(TransportError::TimedOut));
        if result.is_err() {
            lock_pending(&self.pending).waiters.remove(&id);
        }
        result?
            .body
            .ok_or_else(|| protocol("control reply without a body"))
    }

    fn call_frame(id: u64, body: Body, meta: &CallMeta<'_>) -> Frame {
        Frame {
            id,
            metadata: frame_meta(meta),
            timeout_ms: meta.timeout.map_or(0, |t| t.as_millis().max(1) as u64),
            body: Some(body),
        }
    }

    /// Write one call on the data pair; returns its id. The rest of an abandoned
    /// stream is read first: its worker may be blocked writing a chunk into the full
    /// pipe, and would never read a request large enough to block this write.
    async fn send_call(&self, body: Body, meta: &CallMeta<'_>) -> Result<u64, TransportError> {
        self.data.lock().await.catch_up().await?;
        let mut data = self.data_tx.lock().await;
        data.next_id += 1;
        let frame = Self::call_frame(data.next_id, body, meta);
        write_frame(&mut data.tx, &frame).await?;
        Ok(frame.id)
    }

    /// Write one call only if the pipe takes the whole frame now.
    async fn try_send_call(
        &self,
        body: Body,
        meta: &CallMeta<'_>,
    ) -> Result<Option<u64>, TransportError> {
        // Not behind an abandoned stream (see `send_call`), and never waiting.
        match self.data.try_lock() {
            Ok(rx) if rx.unfinished.is_none() => {}
            _ => return Ok(None),
        }
        let Ok(mut data) = self.data_tx.try_lock() else {
            return Ok(None);
        };
        let frame = Self::call_frame(data.next_id + 1, body, meta);
        let buf = encode_frame(&frame)?;
        if buf.len() > PIPE_BUF {
            return Ok(None);
        }
        match data.tx.try_write(&buf) {
            Ok(n) => {
                data.next_id = frame.id;
                if n < buf.len() {
                    // Not expected at this size (POSIX); finish rather than leave half a frame.
                    data.tx.write_all(&buf[n..]).await.map_err(write_failed)?;
                }
                Ok(Some(frame.id))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(write_failed(e)),
        }
    }

    /// Read the reply to unary call `id`.
    async fn receive_result(&self, id: u64) -> Result<proto::ExecuteResponse, TransportError> {
        // No catch-up here: `send_call` read any abandoned stream out before this call
        // (or the one before it) was written, and a stream is never open meanwhile.
        let mut data = self.data.lock().await;
        let reply = data.rx.read().await?;
        match reply.body {
            Some(Body::ExecuteResult(r)) if reply.id == id => Ok(r),
            other => Err(protocol(format!(
                "expected the result of call {id}, got {other:?} for call {}",
                reply.id
            ))),
        }
    }
}

impl Pipelined for PipeTransport {
    fn send<'a>(
        &'a self,
        req: proto::ExecuteRequest,
        meta: CallMeta<'a>,
    ) -> BoxFuture<'a, Result<u64, TransportError>> {
        Box::pin(async move { self.send_call(Body::Execute(req), &meta).await })
    }

    fn try_send_ahead<'a>(
        &'a self,
        req: proto::ExecuteRequest,
        meta: CallMeta<'a>,
    ) -> BoxFuture<'a, Result<Option<u64>, TransportError>> {
        Box::pin(async move { self.try_send_call(Body::Execute(req), &meta).await })
    }

    fn receive(
        &self,
        call_id: u64,
    ) -> BoxFuture<'_, Result<proto::ExecuteResponse, TransportError>> {
        Box::pin(self.receive_result(call_id))
    }

    fn revoke(
        &self,
        call_id: u64,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<bool, TransportError>> {
        Box::pin(async move {
            match self
                .control(Body::Revoke(proto::Revoke { call_id }), timeout)
                .await?
            {
                Body::RevokeAck(a) => Ok(a.revoked),
                other => Err(protocol(format!("expected a revoke ack, got {other:?}"))),
            }
        })
    }
}

/// The chunks of one stream, read by whoever polls it, holding the data pair.
struct StreamState {
    data: OwnedMutexGuard<Data>,
    id: u64,
    done: bool,
    control_tx: Arc<AsyncMutex<pipe::Sender>>,
}

impl Drop for StreamState {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Left early: the next call reads the rest; tell the worker to stop producing.
        self.data.unfinished = Some(self.id);
        let (control_tx, id) = (self.control_tx.clone(), self.id);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let cancel = Frame {
                    id,
                    body: Some(Body::Cancel(proto::Cancel {})),
                    ..Frame::default()
                };
                let _ = write_frame(&mut *control_tx.lock().await, &cancel).await;
            });
        }
    }
}

impl WorkerTransport for PipeTransport {
    fn pipelined(&self) -> Option<&dyn Pipelined> {
        Some(self)
    }

    fn execute<'a>(
        &'a self,
        req: proto::ExecuteRequest,
        meta: CallMeta<'a>,
    ) -> BoxFuture<'a, Result<proto::ExecuteResponse, TransportError>> {
        Box::pin(async move {
            let id = self.send_call(Body::Execute(req), &meta).await?;
            self.receive_result(id).await
        })
    }

    fn execute_stream<'a>(
        &'a self,
        req: proto::ExecuteRequest,
        meta: CallMeta<'a>,
    ) -> BoxFuture<'a, Result<ChunkStream, TransportError>> {
        Box::pin(async move {
            let id = self.send_call(Body::ExecuteStream(req), &meta).await?;
            // `send_call` read any abandoned stream out already.
            let data = self.data.clone().lock_owned().await;
            let state = StreamState {
                data,
                id,
                done: false,
                control_tx: self.control_tx.clone(),
            };
            let chunks = stream::unfold(state, |mut st| async move {
                if st.done {
                    return None;
                }
                let item = match st.data.rx.read().await {
                    Ok(Frame {
                        id,
                        body: Some(Body::Chunk(c)),
                        ..
                    }) if id == st.id => Ok(c),
                    Ok(other) => Err(protocol(format!(
                        "expected a chunk of stream {}, got {:?}",
                        st.id, other.body
                    ))),
                    Err(e) => Err(e),
                };
                // Final chunk or failure: the stream ends and the pipe is in step.
                st.done = item.as_ref().map_or(true, |c| c.r#final);
                Some((item, st))
            });
            let boxed: ChunkStream = Box::pin(chunks);
            Ok(boxed)
        })
    }

    fn health(
        &self,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<proto::HealthResponse, TransportError>> {
        Box::pin(async move {
            match self
                .control(Body::Health(proto::HealthRequest {}), timeout)
                .await?
            {
                Body::HealthResult(h) => Ok(h),
                other => Err(protocol(format!("expected a health reply, got {other:?}"))),
            }
        })
    }

    fn describe(
        &self,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<proto::DescribeResponse, TransportError>> {
        Box::pin(async move {
            match self
                .control(Body::Describe(proto::DescribeRequest {}), timeout)
                .await?
            {
                Body::DescribeResult(d) => Ok(d),
                other => Err(protocol(format!(
                    "expected a describe reply, got {other:?}"
                ))),
            }
        })
    }

    fn init_session<'a>(
        &'a self,
        session_id: &'a str,
        metadata_json: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<bool, TransportError>> {
        Box::pin(async move {
            let body = Body::InitSession(proto::InitSessionRequest {
                session_id: session_id.to_string(),
                metadata_json,
            });
            match self.control(body, timeout).await? {
                Body::SessionAck(a) => Ok(a.changed),
                other => Err(protocol(format!("expected a session ack, got {other:?}"))),
            }
        })
    }

    fn close_session<'a>(
        &'a self,
        session_id: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<bool, TransportError>> {
        Box::pin(async move {
            let body = Body::CloseSession(proto::CloseSessionRequest {
                session_id: session_id.to_string(),
            });
            match self.control(body, timeout).await? {
                Body::SessionAck(a) => Ok(a.changed),
                other => Err(protocol(format!("expected a session ack, got {other:?}"))),
            }
        })
    }
}

#[cfg(test)]
#[path = "pipe_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "pipe_stream_tests.rs"]
mod stream_tests;
