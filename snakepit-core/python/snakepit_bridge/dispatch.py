"""Running contract requests against an adapter, independent of the transport.

The gRPC server (server.py) is a thin shell around `Dispatcher`; a second transport
can reuse it unchanged. Every failure becomes a WorkerError: nothing raised by user
code escapes, and nothing is swallowed.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import types
from typing import Callable, Dict, Iterator, Mapping, Optional, Tuple, Union

from . import errors, logs, telemetry
from .aio import LOOP, DeadlineExceeded
from .commands import schema_json
from .hints import ArgError, json_default
from ._proto import (
    CommandInfo,
    DescribeResponse,
    ExecuteResponse,
    HealthResponse,
    SessionAck,
    StreamChunk,
    WorkerError,
)
from .adapter import Adapter, Command, Context, Session

log = logging.getLogger("snakepit_bridge")

REQUEST_ID_KEY = "x-snakepit-request-id"
CORRELATION_ID_KEY = "x-correlation-id"

# (command, positional arguments, keyword arguments)
Prepared = Tuple[Command, tuple, dict]

# allow_nan=False: NaN/Infinity are not JSON and the Rust side would reject them. One
# encoder for all calls: json.dumps with options builds a new one each time. `default`
# encodes dataclasses, pydantic models, enums and sets (what hinted results may be).
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=json_default
)
_NO_ARGS = (b"", b"{}")
# What a command (async, or sync but wrapping async code) may hand back to be run on
# the worker's loop: a set lookup per call, not isinstance checks.
_ASYNC_RESULTS = frozenset({types.CoroutineType, types.AsyncGeneratorType})
_now_ns = time.perf_counter_ns
# logs.enter / logs.leave without their frames, for the unary path (which always
# resets in the context it set, so leave's fallback is not needed there).
_enter_request = logs.request_context().set
_leave_request = logs.request_context().reset


def encode_json(value: object) -> bytes:
    return _ENCODER.encode(value).encode()


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Dispatcher:
    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self.started = time.monotonic()
        self.requests_handled = 0
        self._sessions: Dict[str, Session] = {}
        self._lock = threading.Lock()
        self._report_spans = telemetry.worker_spans_wanted()
        # Compiled now, so a command whose hints cannot be used fails the start; the
        # lookup per call is then one dict access.
        self._lookup = adapter.commands().get

    # -- requests ---------------------------------------------------------------

    @staticmethod
    def _span(req, metadata: Mapping[str, str]):
        return telemetry.request_span(
            req.command,
            metadata,
            metadata.get(REQUEST_ID_KEY, ""),
            metadata.get(CORRELATION_ID_KEY, ""),
        )

    def _prepare(
        self, req, metadata: Mapping[str, str], deadline: Optional[float]
    ) -> Union[Prepared, "WorkerError"]:
        """Decode, look up and bind a request; a WorkerError if any step fails."""
        cmd = self._lookup(req.command)
        if cmd is None:
            known = ", ".join(sorted(self.adapter.commands())) or "none"
            return errors.plain(
                WorkerError.UNKNOWN_COMMAND,
                "UnknownCommand",
                f"unknown command {req.command!r}; this adapter offers: {known}",
            )
        raw = req.args_json
        if raw in _NO_ARGS:
            args = {}
        else:
            try:
                text = bytes(raw).decode("utf-8")
            except UnicodeDecodeError as exc:
                return errors.plain(
                    WorkerError.INVALID_ARGS, "InvalidArgs", f"arguments are not valid UTF-8: {exc}"
                )
            try:
                args = json.loads(text)
            except ValueError as exc:
                return errors.plain(
                    WorkerError.INVALID_ARGS, "InvalidArgs", f"arguments are not valid JSON: {exc}"
                )
            if not isinstance(args, dict):
                return errors.plain(
                    WorkerError.INVALID_ARGS,
                    "InvalidArgs",
                    f"arguments must be a JSON object of keyword arguments, got {type(args).__name__}",
                )
        try:
            session = self._session_for(req.session_id)
        except Exception as exc:  # noqa: BLE001 - on_session_start is user code
            return errors.from_exception(exc)
        ctx = None
        if cmd.context_param is not None:
            ctx = Context(
                request_id=metadata.get(REQUEST_ID_KEY, ""),
                correlation_id=metadata.get(CORRELATION_ID_KEY, ""),
                deadline_seconds=deadline,
                session=session,
                metadata=dict(metadata),
            )
        try:
            pos, kw = cmd.call_args(args, ctx)
        except ArgError as exc:
            return errors.plain(WorkerError.INVALID_ARGS, "InvalidArgs", f"{req.command}: {exc}")
        except TypeError as exc:
            return errors.plain(
                WorkerError.INVALID_ARGS,
                "InvalidArgs",
                f"{req.command}: {exc} (parameters: {', '.join(cmd.params) or 'none'})",
            )
        except Exception as exc:  # noqa: BLE001 - a user type's validation raising anything else
            return errors.from_exception(exc, kind=WorkerError.INVALID_ARGS)
        return cmd, pos, kw

    def execute(self, req, metadata: Mapping[str, str], deadline: Optional[float]):
        self.requests_handled += 1
        parsed = telemetry.parse_traceparent(metadata)
        if parsed is None:
            # The common untraced call: only the log records' request context to set
            # (the ContextVar's own methods, bound once: this path runs per call).
            token = _enter_request((metadata, None, None, False))
            try:
                return self._execute(req, metadata, deadline)
            finally:
                _leave_request(token)
        traceparent, sampled = parsed
        # Timed for the worker span the pool emits, when the pool wants one.
        timer = telemetry.WorkerTimer() if sampled and self._report_spans else None
        # The span user code runs under (its spans' parent, its log records' span):
        # the worker span, else the caller's (which the log context reads from the
        # traceparent itself when given None).
        span_id: Optional[bytes] = timer.span_id if timer is not None else None
        token = _enter_request((metadata, traceparent, span_id, sampled))
        try:
            if telemetry.active():
                # Spans the adapter makes follow the pool's sampling decision.
                parent = span_id if span_id is not None else bytes.fromhex(traceparent[36:52])
                with telemetry.user_span_parent(traceparent, parent, metadata, sampled=sampled):
                    resp = self._execute(req, metadata, deadline)
            else:
                resp = self._execute(req, metadata, deadline)
        finally:
            _leave_request(token)
        if timer is not None:
            timer.fill(resp.span)
        return resp

    def _execute(self, req, metadata, deadline):
        prepared = self._prepare(req, metadata, deadline)
        if isinstance(prepared, WorkerError):
            return ExecuteResponse(error=prepared)
        cmd, pos, kw = prepared
        # Python's part of the call, by this process's monotonic clock: the pool reports
        # the rest of the call's time as transport.
        t0 = _now_ns()
        try:
            result = cmd.fn(*pos, **kw)
            if cmd.is_async or type(result) in _ASYNC_RESULTS:
                result = _run_async(result, deadline)
            elif cmd.streaming:
                result = list(result)  # a unary call of a generator gets all chunks
        except DeadlineExceeded as exc:
            return ExecuteResponse(
                error=_deadline_error(req.command, exc, deadline), python_nanos=_now_ns() - t0
            )
        except BaseException as exc:  # noqa: BLE001 - user code may raise anything
            # skip_frames=1 drops this frame: the traceback starts at the user's code.
            return ExecuteResponse(
                error=errors.from_exception(exc, skip_frames=1), python_nanos=_now_ns() - t0
            )
        python_nanos = _now_ns() - t0
        try:
            return ExecuteResponse(result_json=encode_json(result), python_nanos=python_nanos)
        except (TypeError, ValueError) as exc:
            return ExecuteResponse(
                error=errors.from_exception(exc, kind=WorkerError.INVALID_RESULT),
                python_nanos=python_nanos,
            )

    def execute_stream(
        self,
        req,
        metadata: Mapping[str, str],
        deadline: Optional[float],
        is_active: Callable[[], bool] = lambda: True,
    ) -> Iterator[object]:
        """Yield StreamChunks; the last one has final=True, with an error if one occurred."""
        self.requests_handled += 1
        with self._span(req, metadata) as span:
            parsed = telemetry.parse_traceparent(metadata)
            traceparent, sampled = parsed if parsed is not None else (None, False)
            span_id = None
            if span is not None and traceparent is not None:
                span_id = span.get_span_context().span_id.to_bytes(8, "big")
            token = logs.enter(metadata, traceparent, span_id, sampled)
            try:
                yield from self._execute_stream(req, metadata, deadline, is_active, span)
            finally:
                logs.leave(token)

    def _execute_stream(self, req, metadata, deadline, is_active, span):
        prepared = self._prepare(req, metadata, deadline)
        if isinstance(prepared, WorkerError):
            yield StreamChunk(final=True, error=prepared)
            return
        cmd, pos, kw = prepared
        # The generator's own time: each step is timed, the waits between steps (for
        # the pool to take a chunk) are not.
        t0 = _now_ns()
        python_nanos = 0
        stream_deadline = None if deadline is None else time.monotonic() + deadline
        try:
            produced = cmd.fn(*pos, **kw)
            if type(produced) is types.AsyncGeneratorType:
                items = LOOP.iterate(produced, stream_deadline)
            elif type(produced) is types.CoroutineType:
                items = iter([LOOP.run(produced, deadline)])
            else:
                items = iter(produced) if cmd.streaming else iter([produced])
            python_nanos = _now_ns() - t0
            while True:
                t0 = _now_ns()
                try:
                    item = next(items)
                except StopIteration:
                    python_nanos += _now_ns() - t0
                    break
                python_nanos += _now_ns() - t0
                try:
                    data = encode_json(item)
                except (TypeError, ValueError) as exc:
                    yield StreamChunk(
                        final=True,
                        error=errors.from_exception(exc, kind=WorkerError.INVALID_RESULT),
                    )
                    return
                yield StreamChunk(data_json=data)
                if not is_active():
                    close = getattr(items, "close", None)
                    if close is not None:
                        close()
                    # Every stream ends with exactly one final chunk, cancelled or not.
                    yield StreamChunk(final=True, python_nanos=python_nanos)
                    return
        except DeadlineExceeded as exc:
            python_nanos += _now_ns() - t0
            telemetry.record_failure(span, exc, "DeadlineExceeded")
            yield StreamChunk(
                final=True,
                error=_deadline_error(req.command, exc, deadline),
                python_nanos=python_nanos,
            )
            return
        except BaseException as exc:  # noqa: BLE001
            python_nanos += _now_ns() - t0
            telemetry.record_failure(span, exc, errors.qualified_type(exc))
            yield StreamChunk(
                final=True,
                error=errors.from_exception(exc, skip_frames=1),
                python_nanos=python_nanos,
            )
            return
        yield StreamChunk(final=True, python_nanos=python_nanos)

    # -- sessions ---------------------------------------------------------------

    def _session_for(self, session_id: str) -> Optional[Session]:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            # The pool initialises sessions before routing to a worker; should it not
            # have, start the session empty rather than fail the call.
            self.init_session(session_id, b"")
            with self._lock:
                session = self._sessions[session_id]
        session.requests += 1
        return session

    def init_session(self, session_id: str, metadata_json: bytes):
        try:
            metadata = json.loads(bytes(metadata_json).decode("utf-8")) if metadata_json else {}
        except ValueError:
            metadata = {}
        if not isinstance(metadata, dict):
            metadata = {"value": metadata}
        with self._lock:
            if session_id in self._sessions:
                return SessionAck(changed=False)
            session = Session(id=session_id, metadata=metadata)
            self._sessions[session_id] = session
        self._hook(self.adapter.on_session_start, session)
        return SessionAck(changed=True)

    def close_session(self, session_id: str):
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is None:
            return SessionAck(changed=False)
        self._hook(self.adapter.on_session_end, session)
        return SessionAck(changed=True)

    @staticmethod
    def _hook(fn, session: Session) -> None:
        """A session hook (user code, sync or async): a failure is logged with its
        traceback and the session goes on, rather than the thread serving it dying."""
        try:
            LOOP.call_hook(fn, session)
        except Exception:  # noqa: BLE001
            log.exception("%s(%r) raised", getattr(fn, "__name__", "session hook"), session.id)

    # -- introspection ----------------------------------------------------------

    def health(self):
        with self._lock:
            active = len(self._sessions)
        return HealthResponse(
            status="ok",
            pid=os.getpid(),
            rss_bytes=_rss_bytes(),
            uptime_ms=int((time.monotonic() - self.started) * 1000),
            requests_handled=self.requests_handled,
            active_sessions=active,
            python_version=sys.version.split()[0],
            adapter=self.adapter.name,
        )

    def describe(self):
        return DescribeResponse(
            adapter=self.adapter.name,
            commands=[
                _command_info(c)
                for c in sorted(self.adapter.commands().values(), key=lambda c: c.name)
            ],
        )


def _command_info(cmd: Command):
    """A command as `describe` reports it; a schema that cannot be built is left out
    (and logged) rather than failing the describe."""
    info = CommandInfo(
        name=cmd.name, streaming=cmd.streaming, params=cmd.params, doc=cmd.doc, is_async=cmd.is_async
    )
    try:
        info.args_schema_json = schema_json(cmd.args_schema())
        info.returns_schema_json = schema_json(cmd.returns_schema())
    except Exception:  # noqa: BLE001 - a description must not take the worker down
        log.warning("cannot describe the schema of command %r", cmd.name, exc_info=True)
    return info


def _run_async(result, deadline: Optional[float]):
    """A coroutine's result, or an async generator's items (a unary call of a
    streaming command), from the worker's loop under the call's deadline."""
    if type(result) is types.AsyncGeneratorType:
        end = None if deadline is None else time.monotonic() + deadline
        return list(LOOP.iterate(result, end))
    return LOOP.run(result, deadline)


def _deadline_error(command: str, exc: DeadlineExceeded, deadline: Optional[float]):
    budget = f" of {deadline * 1000:.0f} ms" if deadline is not None else ""
    return errors.plain_with_traceback(
        WorkerError.DEADLINE_EXCEEDED,
        "DeadlineExceeded",
        f"{command}: {exc} (the deadline{budget}); the coroutine was cancelled inside Python",
        exc.stack,
    )
