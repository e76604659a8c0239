"""The pipe face of a worker: length-prefixed Frames over two pairs of pipes.

The data pair carries one request at a time and is served inline by one thread (no
hand-off between threads on the hot path). After a reply, that thread busy-polls the
data pipe for up to `--busy-poll-us` before it sleeps: under load the next request
arrives within tens of microseconds, and a sleep/wake pair costs more than that on a
virtual machine (≈ 30 µs of CPU on each side and as much latency). The poll yields the
core to any runnable neighbour on every turn, and it is adaptive: after a window that
caught nothing the next wait sleeps at once, until a wait short enough to have been
caught shows the traffic is back. Cost when idle: at most one window per request.

The pool may write the next unary request behind the running one (pipelining), so the
worker starts it the moment it has replied. Such a call can be taken back with a
`revoke` on the control pair while it has not started: the data thread claims each call
under a lock before running it, and the control thread answers `revoked` only for a call
not yet claimed (then no reply for it is ever written).

The control pair (health, describe, sessions, cancel, revoke) has its own thread, so
health checks are answered while a request runs. EOF on the data pipe means the pool is gone: the worker exits at once. A frame
that does not decode or is too long is answered with a `frame_error` and ends the
worker (exit code 5): the pool replaces it.
"""
from __future__ import annotations

import os
import select
import struct
import threading
import time
from typing import Callable, Mapping, Optional, Set

from google.protobuf.message import DecodeError

from ._proto import Frame, FrameError, RevokeAck
from .dispatch import Dispatcher

EXIT_BAD_FRAME = 5
_HEADER = struct.Struct(">I")
_READ_SIZE = 64 * 1024
_clock = time.perf_counter


class FrameTooLarge(Exception):
    """An incoming frame announced a length over the limit."""


class ReplyTooLarge(Exception):
    """A reply would exceed the limit; it was not written."""


class Pipe:
    """One direction-pair of framed messages."""

    def __init__(self, read_fd: int, write_fd: int, max_frame: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.max_frame = max_frame
        self._write_lock = threading.Lock()
        # Bytes read but not yet consumed: a small frame usually arrives in one read.
        self._buf = bytearray()
        self.spin = 0.0
        self._spin_pays = True

    def spin_for(self, seconds: float) -> None:
        """Busy-poll reads up to `seconds` before sleeping (0: sleep at once)."""
        self.spin = seconds
        os.set_blocking(self.read_fd, seconds <= 0.0)

    def _fill(self, n: int) -> bool:
        """Buffer at least `n` bytes; False at EOF."""
        buf = self._buf
        while len(buf) < n:
            chunk = self._read(max(_READ_SIZE, n - len(buf)))
            if not chunk:
                return False
            buf += chunk
        return True

    def _read(self, size: int) -> bytes:
        """One read; on the data pipe, busy-poll up to `spin` seconds before sleeping."""
        if self.spin <= 0.0:
            return os.read(self.read_fd, size)
        fd = self.read_fd
        try:
            return os.read(fd, size)
        except BlockingIOError:
            pass
        if self._spin_pays:
            end = _clock() + self.spin
            while _clock() < end:
                os.sched_yield()  # a runnable neighbour on this core goes first
                try:
                    return os.read(fd, size)
                except BlockingIOError:
                    pass
        # Nothing came within the window: sleep. Spin again next time only if this
        # wait turns out short enough that spinning would have caught it.
        slept_from = _clock()
        while True:
            select.select((fd,), (), ())
            try:
                chunk = os.read(fd, size)
            except BlockingIOError:
                continue
            self._spin_pays = _clock() - slept_from < self.spin
            return chunk

    def read(self):
        """The next Frame, or None at EOF. Raises FrameTooLarge or DecodeError."""
        if not self._fill(4):
            return None
        (length,) = _HEADER.unpack_from(self._buf)
        if length > self.max_frame:
            raise FrameTooLarge(f"frame of {length} bytes exceeds the limit of {self.max_frame}")
        if not self._fill(4 + length):
            return None
        body = bytes(self._buf[4 : 4 + length])
        del self._buf[: 4 + length]
        return Frame.FromString(body)

    def write(self, frame) -> None:
        data = frame.SerializeToString()
        if len(data) > self.max_frame:
            raise ReplyTooLarge(
                f"reply of {len(data)} bytes exceeds the limit of {self.max_frame} (max_response_bytes)"
            )
        buf = _HEADER.pack(len(data)) + data
        with self._write_lock:
            view = memoryview(buf)
            while view:
                written = os.write(self.write_fd, view)
                view = view[written:]


def _deadline(frame) -> Optional[float]:
    return frame.timeout_ms / 1000.0 if frame.timeout_ms else None


def _fatal(pipe: Pipe, message: str) -> None:
    try:
        pipe.write(Frame(id=0, frame_error=FrameError(message=message)))
    finally:
        os._exit(EXIT_BAD_FRAME)


class PipeServer:
    def __init__(self, dispatcher: Dispatcher, fds, max_frame: int, busy_poll: float = 0.0) -> None:
        data_in, data_out, ctl_in, ctl_out = fds
        self.dispatcher = dispatcher
        self.data = Pipe(data_in, data_out, max_frame)
        self.control = Pipe(ctl_in, ctl_out, max_frame)
        self.data.spin_for(busy_poll)
        self.cancelled: Set[int] = set()
        # Pipelined calls taken back before they started, and the last call started.
        self._claims = threading.Lock()
        self._revoked: Set[int] = set()
        self._started = 0
        # A plain flag, not an Event: it flips twice per request and only stop() reads it.
        self.busy = False

    def _serve_control(self) -> None:
        d = self.dispatcher
        while True:
            try:
                frame = self.control.read()
            except (FrameTooLarge, DecodeError) as exc:
                _fatal(self.control, f"bad control frame: {exc}")
                return
            if frame is None:
                return
            kind = frame.WhichOneof("body")
            if kind == "health":
                reply = Frame(id=frame.id, health_result=d.health())
            elif kind == "describe":
                reply = Frame(id=frame.id, describe_result=d.describe())
            elif kind == "init_session":
                r = frame.init_session
                reply = Frame(id=frame.id, session_ack=d.init_session(r.session_id, r.metadata_json))
            elif kind == "close_session":
                reply = Frame(id=frame.id, session_ack=d.close_session(frame.close_session.session_id))
            elif kind == "cancel":
                self.cancelled.add(frame.id)
                continue
            elif kind == "revoke":
                reply = Frame(id=frame.id, revoke_ack=RevokeAck(revoked=self._revoke(frame.revoke.call_id)))
            else:
                _fatal(self.control, f"unexpected {kind!r} frame on the control pipe")
                return
            self.control.write(reply)

    def _serve_data(self) -> None:
        d = self.dispatcher
        while True:
            try:
                frame = self.data.read()
            except (FrameTooLarge, DecodeError) as exc:
                _fatal(self.data, f"bad data frame: {exc}")
                return
            if frame is None:
                os._exit(0)  # the pool is gone
            if not self._claim(frame.id):
                continue  # taken back by the pool before it started
            kind = frame.WhichOneof("body")
            metadata: Mapping[str, str] = frame.metadata
            self.busy = True
            try:
                if kind == "execute":
                    resp = d.execute(frame.execute, metadata, _deadline(frame))
                    self.data.write(Frame(id=frame.id, execute_result=resp))
                elif kind == "execute_stream":
                    self._stream(frame, metadata)
                else:
                    _fatal(self.data, f"unexpected {kind!r} frame on the data pipe")
            except ReplyTooLarge as exc:
                # Nothing of the reply was written: the pipe is in step, keep serving.
                self.data.write(Frame(id=frame.id, frame_error=FrameError(message=str(exc), too_large=True)))
            finally:
                self.busy = False

    def _revoke(self, call_id: int) -> bool:
        """Control thread: take back call `call_id` unless it has started."""
        with self._claims:
            if call_id <= self._started:
                return False
            self._revoked.add(call_id)
            return True

    def _claim(self, call_id: int) -> bool:
        """Data thread: mark call `call_id` started; False if it was taken back."""
        with self._claims:
            if call_id in self._revoked:
                self._revoked.discard(call_id)
                return False
            self._started = call_id
            if self._revoked:
                # Ids only grow: a revoke for a call that never came is stale now.
                self._revoked = {i for i in self._revoked if i > call_id}
            return True

    def _stream(self, frame, metadata: Mapping[str, str]) -> None:
        call_id = frame.id
        # A cancel that raced the stream's end stays behind; ids only grow, so drop those.
        for stale in [i for i in list(self.cancelled) if i < call_id]:
            self.cancelled.discard(stale)
        active: Callable[[], bool] = lambda: call_id not in self.cancelled
        chunks = self.dispatcher.execute_stream(frame.execute_stream, metadata, _deadline(frame), active)
        try:
            for chunk in chunks:
                self.data.write(Frame(id=call_id, chunk=chunk))
        finally:
            # On a too-large chunk the stream ends here: close the user's generator.
            chunks.close()
            self.cancelled.discard(call_id)

    def start(self) -> None:
        threading.Thread(target=self._serve_control, name="snakepit-control", daemon=True).start()
        threading.Thread(target=self._serve_data, name="snakepit-data", daemon=True).start()

    def stop(self, grace: float) -> None:
        """Let a running request finish (up to `grace` seconds)."""
        deadline = time.monotonic() + grace
        while self.busy and time.monotonic() < deadline:
            time.sleep(0.01)
