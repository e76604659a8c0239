"""Python's `logging`, joined to the request it happened in.

`install` puts one handler on the root logger that turns every record into a
structured record on the worker's channel (channel.py): logger name, level, message,
the formatted `exc_info` traceback, source location, thread, and, when the record was
made while a request ran in this context, that request's ids (request id, correlation
id, trace id, span id). The pool adds the worker id and writes it out exactly like its
own records (JSON log line, OTLP log record, sanitization).

Which records are made stays the user's choice: the root level comes from
`SNAKEPIT_PYTHON_LOG_LEVEL` (INFO by default) and any logger's own level applies as
`logging` always applies it. Without a channel (a worker started by hand) records go
to stderr as one line each, as before.

The request context is a `ContextVar`, set by the dispatcher around each call: it
costs two cheap calls per request, and it follows the request into coroutines;
threads the user starts are outside the request, and their records carry the worker
id only.
"""
from __future__ import annotations

import contextvars
import logging
import os
import sys
import traceback
from typing import Mapping, Optional, Tuple

from . import errors
from .channel import Channel

REQUEST_ID_KEY = "x-snakepit-request-id"
CORRELATION_ID_KEY = "x-correlation-id"

# (metadata, traceparent or None, span id bytes or None, sampled): what the dispatcher
# knows about the running request; turned into ids only when a record is made.
_Request = Tuple[Mapping[str, str], Optional[str], Optional[bytes], bool]
_request: contextvars.ContextVar[Optional[_Request]] = contextvars.ContextVar(
    "snakepit_request", default=None
)


def request_context() -> "contextvars.ContextVar[Optional[_Request]]":
    """The ContextVar `enter` sets (for a caller on a hot path that sets it itself)."""
    return _request


def enter(
    metadata: Mapping[str, str], traceparent: Optional[str], span_id: Optional[bytes], sampled: bool
) -> contextvars.Token:
    """Mark a request as running in this context (the dispatcher, around each call)."""
    return _request.set((metadata, traceparent, span_id, sampled))


def leave(token: contextvars.Token) -> None:
    """Undo `enter`."""
    try:
        _request.reset(token)
    except ValueError:
        # A streaming generator finished in another context than it started in
        # (gRPC may resume it from another thread): clear rather than fail the call.
        _request.set(None)


def request_fields() -> Optional[dict]:
    """The running request's ids, as the channel's log records carry them."""
    ctx = _request.get()
    if ctx is None:
        return None
    metadata, traceparent, span_id, sampled = ctx
    fields = {
        "request_id": metadata.get(REQUEST_ID_KEY, ""),
        "correlation_id": metadata.get(CORRELATION_ID_KEY, ""),
    }
    if traceparent is not None:
        fields["trace_id"] = traceparent[3:35]
        fields["span_id"] = span_id.hex() if span_id is not None else traceparent[36:52]
        fields["sampled"] = sampled
    return fields


class ChannelHandler(logging.Handler):
    """Every record, structured, onto the channel; never blocks (the channel drops)."""

    def __init__(self, channel: Channel) -> None:
        super().__init__(logging.NOTSET)
        self.channel = channel

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: `emit` only reads the record and appends to a deque (atomic
        # under the GIL), so the lock `Handler.handle` takes would buy nothing.
        rv = self.filter(record)
        if rv:
            self.emit(record)
        return bool(rv)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._emit(record)
        except Exception:  # noqa: BLE001 - as logging's own handlers: never into the caller
            self.handleError(record)

    def _emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception as exc:  # noqa: BLE001 - bad format arguments lose nothing
            message = f"{record.msg!r} % {record.args!r} (the arguments do not fit: {exc})"
        rec = {
            "t": "log",
            "ts": int(record.created * 1e9),
            "level": record.levelno,
            "levelname": record.levelname,
            "logger": record.name,
            "msg": message,
            "file": record.pathname,
            "line": record.lineno,
            "func": record.funcName,
            "thread": record.threadName,
        }
        exc_info = record.exc_info
        if exc_info and exc_info[1] is not None:
            rec["exc_type"] = errors.qualified_type(exc_info[1])
            rec["exc"] = "".join(traceback.format_exception(*exc_info))
        elif record.exc_text:
            rec["exc"] = record.exc_text
        if record.stack_info:
            rec["stack"] = record.stack_info
        # `extra={...}` (and anything else set on the record): sent as one object.
        extra_keys = record.__dict__.keys() - _STANDARD_ATTRS
        if extra_keys:
            extra = {k: record.__dict__[k] for k in extra_keys if not k.startswith("_")}
            if extra:
                rec["extra"] = extra
        fields = request_fields()
        if fields is not None:
            rec.update(fields)
        self.channel.put(rec)


# What every LogRecord has (and what Formatter adds); the rest came from `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


def _level() -> int:
    name = os.environ.get("SNAKEPIT_PYTHON_LOG_LEVEL", "INFO").upper()
    level = logging.getLevelName(name)
    return level if isinstance(level, int) else logging.INFO


def install(channel: Optional[Channel], worker_id: str) -> logging.Handler:
    """Route the root logger to the pool: over `channel`, else to stderr (one line each)."""
    root = logging.getLogger()
    if channel is not None:
        handler: logging.Handler = ChannelHandler(channel)
    else:
        # One line per record, level first: the pool maps the level onto its own log.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(levelname)s %(name)s [{worker_id}]: %(message)s"))
    root.addHandler(handler)
    root.setLevel(_level())
    return handler
