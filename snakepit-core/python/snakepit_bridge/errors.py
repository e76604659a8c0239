"""Turning failures into the contract's WorkerError, never losing type, message or traceback."""
from __future__ import annotations

import builtins
import traceback
from types import TracebackType
from typing import Optional

from ._proto import WorkerError


def qualified_type(exc: BaseException) -> str:
    """`ValueError` for builtins, `pkg.mod.Error` otherwise."""
    cls = type(exc)
    if cls.__module__ == "builtins" or getattr(builtins, cls.__name__, None) is cls:
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def format_traceback(exc: BaseException, skip_frames: int = 0) -> str:
    """The full formatted exception, chained causes included.

    `skip_frames` drops the bridge's own frames at the top, so the traceback starts
    at the user's code.
    """
    tb: Optional[TracebackType] = exc.__traceback__
    for _ in range(skip_frames):
        if tb is None or tb.tb_next is None:
            break
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def from_exception(exc: BaseException, kind: int = WorkerError.EXCEPTION, skip_frames: int = 0):
    return WorkerError(
        kind=kind,
        type=qualified_type(exc),
        message=str(exc),
        traceback=format_traceback(exc, skip_frames),
    )


def plain(kind: int, type_name: str, message: str):
    """An error that no Python exception stands behind (e.g. unknown command)."""
    return WorkerError(kind=kind, type=type_name, message=message, traceback="")


def plain_with_traceback(kind: int, type_name: str, message: str, tb: str):
    """An error the bridge raises itself, with where the user's code was."""
    return WorkerError(kind=kind, type=type_name, message=message, traceback=tb)
