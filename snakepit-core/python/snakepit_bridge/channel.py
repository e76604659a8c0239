"""The worker's observation channel: structured records to the pool on their own pipe.

The pool starts each worker with a write end of a pipe (`--telemetry-fd`, 7 by
default) beside the transport. What the worker observes about itself travels there as
JSON lines, one record per line, so nothing is parsed back out of stderr text:

    {"t": "log", ...}            one record from Python's `logging` (see logs.py)
    {"t": "dropped", "logs": N}  records dropped since the last such line
    {"t": "metrics", ...}        user metrics changed since the last batch (metrics.py)

Bounded on every side, so observation never stalls a request or grows memory: `put`
appends to a deque of at most `capacity` records and never blocks (a full deque drops
the record and counts it); one writer thread drains it and blocks on the pipe when the
pool reads slowly, so a flood costs dropped records, not request time. Why not the
`logging.handlers.QueueHandler`/`QueueListener` pair: its queue is unbounded, and a
bounded `queue.Queue` costs a lock and a condition per record where a deque append is
atomic under the GIL.

Metric batches never go through the deque (a dropped batch would lose counts): the
writer takes one from each collector every `COLLECT_SECONDS` (and on flush and close)
and writes it itself; while the pipe is full the amounts accumulate in place.
"""
from __future__ import annotations

import collections
import json
import os
import threading
import time
from typing import Deque, Optional

DEFAULT_CAPACITY = 4096
# The longest the writer sleeps with records waiting (it is woken when the deque
# stops being empty; this is the safety net).
_MAX_IDLE_SECONDS = 0.25
COLLECT_SECONDS = 1.0
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


class Channel:
    """Records to the pool over one pipe, bounded, written by a thread of its own."""

    def __init__(self, fd: int, capacity: int = DEFAULT_CAPACITY) -> None:
        self.fd = fd
        self.capacity = max(1, capacity)
        self._queue: Deque[dict] = collections.deque()
        self._wake = threading.Event()
        # flush() takes a ticket; the writer marks the tickets it has written out.
        self._ask_lock = threading.Lock()
        self._asked = 0
        self._done = 0
        self.dropped = 0
        self._drop_lock = threading.Lock()
        self._dropped_sent = 0
        self.written = 0
        self._closed = False
        self._broken = False
        # Callables returning records (a list, maybe empty), taken every COLLECT_SECONDS.
        self.collectors: list = []
        self._next_collect = time.monotonic() + COLLECT_SECONDS
        self._thread = threading.Thread(target=self._run, name="snakepit-channel", daemon=True)
        self._thread.start()

    def put(self, record: dict) -> bool:
        """Queue one record; False (and counted) when the queue is full. Never blocks."""
        q = self._queue
        if len(q) >= self.capacity or self._broken or self._closed:
            self.drop()
            return False
        q.append(record)
        if len(q) == 1:
            # Only the empty -> non-empty step wakes the writer: one Event.set per
            # burst, not per record.
            self._wake.set()
        return True

    def drop(self) -> None:
        """Count one dropped record. Under a lock: any thread that logs may drop, and
        `+= 1` is not atomic across threads (only the dropping path pays for it)."""
        with self._drop_lock:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            try:
                if self._run_once():
                    return
            except Exception:  # noqa: BLE001 - the writer must outlive any one bad record
                self.drop()

    def _run_once(self) -> bool:
        """One wake of the writer; True when it is closed and done."""
        q = self._queue
        self._wake.wait(_MAX_IDLE_SECONDS)
        self._wake.clear()
        # Flushes asked for so far: all they wait for is queued before this read.
        asked = self._asked
        if asked != self._done or time.monotonic() >= self._next_collect:
            self._next_collect = time.monotonic() + COLLECT_SECONDS
            self._collect()
        lines = []
        while q:
            try:
                lines.append(_ENCODER.encode(q.popleft()))
            except (TypeError, ValueError, RecursionError):
                # A record that cannot be JSON (a circular `extra`): dropped alone.
                self.drop()
                continue
            if len(lines) >= 256:
                self._write(lines)
                lines = []
        dropped = self.dropped
        if dropped != self._dropped_sent:
            lines.append(_ENCODER.encode({"t": "dropped", "logs": dropped - self._dropped_sent}))
            self._dropped_sent = dropped
        if lines:
            self._write(lines)
        self._done = asked
        return self._closed and not q

    def _collect(self) -> None:
        lines = []
        for collect in self.collectors:
            try:
                lines.extend(_ENCODER.encode(record) for record in collect())
            except Exception:  # noqa: BLE001 - a broken collector must not stop the writer
                continue
        if lines:
            self._write(lines)

    def _write(self, lines) -> None:
        if self._broken:
            return
        data = ("\n".join(lines) + "\n").encode("utf-8", "replace")
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except OSError:
            # The pool is gone (EPIPE) or the descriptor is bad: nothing more can be
            # said to it; the worker's own exit rules take care of the rest.
            self._broken = True
            return
        self.written += len(lines)

    def flush(self, timeout: float = 1.0) -> bool:
        """Wait (bounded) until everything queued so far, and the metrics, are written."""
        with self._ask_lock:
            self._asked += 1
            ticket = self._asked
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._wake.set()
            if self._done >= ticket:
                return True
            time.sleep(0.002)
        return False

    def close(self, timeout: float = 1.0) -> None:
        """Write out what is queued (bounded), then stop the writer."""
        self._closed = True
        self.flush(timeout)
        self._wake.set()
        self._thread.join(timeout)


_channel: Optional[Channel] = None


class DirectChannel:
    """Records written at once by the caller, no thread: for a fork server's template,
    which must stay single-threaded to fork and logs only while it imports. A record
    that cannot be written (or encoded) is dropped."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.dropped = 0

    def put(self, record: dict) -> bool:
        try:
            data = memoryview((_ENCODER.encode(record) + "\n").encode("utf-8", "replace"))
            while data:
                data = data[os.write(self.fd, data):]
            return True
        except (OSError, TypeError, ValueError, RecursionError):
            self.dropped += 1
            return False


def open_channel(fd: int, capacity: int = DEFAULT_CAPACITY) -> Channel:
    """The worker's one channel, opened on `fd` (the pool's `--telemetry-fd`)."""
    global _channel
    _channel = Channel(fd, capacity)
    return _channel


def current() -> Optional[Channel]:
    """The worker's channel, or None when the worker runs without a pool beside it."""
    return _channel
