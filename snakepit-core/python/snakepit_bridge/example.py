"""The bundled example adapter (SPEC §6): small commands that exercise every path of the
pool — results, streaming, sessions, Python errors, crashes, hangs and memory growth.

Serve it with `--adapter snakepit_bridge.example:ExampleAdapter`. It is written the
way an adapter should be: every command hinted (the hints are checked before the
command runs, and describe it in `/openapi.json`), `mypy --strict` clean.
"""
from __future__ import annotations

import asyncio
import builtins
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Dict, Iterator, List, Literal, Optional

from . import metrics
from .adapter import Adapter, Context, command

MIB = 1024 * 1024
log = logging.getLogger(__name__)


_EXAMPLE_RECORDS = metrics.counter("example_records", "Additions made by the example's observe command")


@dataclass
class Point:
    """A point in the plane."""

    x: float
    y: float


class ExampleAdapter(Adapter):
    def __init__(self) -> None:
        self._held: List[bytes] = []

    @command
    def ping(self) -> str:
        """Answer "pong"; the cheapest possible round trip."""
        return "pong"

    @command
    def echo(self, **kwargs: Any) -> Dict[str, Any]:
        """Return the keyword arguments it was given."""
        return kwargs

    @command
    def sleep(self, ms: float = 0) -> Dict[str, float]:
        """Sleep `ms` milliseconds without holding the CPU."""
        time.sleep(ms / 1000.0)
        return {"slept_ms": ms}

    @command
    def spin(self, ms: float = 1) -> Dict[str, Any]:
        """Burn `ms` milliseconds of CPU (for benchmarks)."""
        end = time.perf_counter() + ms / 1000.0
        loops = 0
        while time.perf_counter() < end:
            loops += 1
        return {"spun_ms": ms, "loops": loops}

    @command
    def fail(self, type: str = "RuntimeError", message: str = "requested failure") -> None:
        """Raise an exception of the named type (a builtin, else a new Exception subclass)."""
        exc_type = getattr(builtins, type, None)
        if not (isinstance(exc_type, builtins.type) and issubclass(exc_type, BaseException)):
            exc_type = builtins.type(type, (Exception,), {"__module__": "snakepit_bridge.example"})
        raise exc_type(message)

    @command
    def crash(self, code: int = 1) -> None:
        """Exit the worker process at once with `code` (no cleanup, no reply)."""
        os._exit(code)

    @command
    def log(self, message: str = "hello from Python", level: str = "info", exc: bool = False) -> str:
        """Log `message` through Python's `logging` at `level` (with a traceback if `exc`):
        it reaches the pool's log with this request's ids."""
        levelno = logging.getLevelName(level.upper())
        if not isinstance(levelno, int):
            raise ValueError(f"unknown log level {level!r}")
        if exc:
            try:
                raise RuntimeError("an example failure")
            except RuntimeError:
                log.log(levelno, message, exc_info=True)
        else:
            log.log(levelno, message)
        return message

    @command
    def observe(self, logs: int = 0, records: int = 0) -> Dict[str, int]:
        """Make `logs` records through Python's `logging` (INFO, logger
        `snakepit_bridge.example`) and `records` additions to the user metric
        `example_records` (`snakepit_user_example_records_total` at the pool): what
        the observability bench measures per record."""
        for i in range(logs):
            log.info("observe record %d", i)
        for _ in range(records):
            _EXAMPLE_RECORDS.add(1, source="observe")
        return {"logs": logs, "records": records}

    @command
    def hang(self) -> None:
        """Never return (until the pool kills the worker)."""
        while True:
            time.sleep(1)

    @command
    def stream(self, n: int = 3, delay_ms: float = 0, fail_after: int = -1) -> Iterator[Dict[str, int]]:
        """Yield `n` chunks {"i": 0..n-1}, `delay_ms` apart; with `fail_after` >= 0, raise
        ValueError after that many chunks (a generator failing part way)."""
        for i in range(n):
            if i == fail_after:
                raise ValueError(f"stream failed after {i} chunks (fail_after={fail_after})")
            if delay_ms:
                time.sleep(delay_ms / 1000.0)
            yield {"i": i}

    @command
    def alloc(self, mb: int = 10) -> Dict[str, int]:
        """Allocate and hold `mb` MiB (touched, so it counts in RSS) until the worker exits."""
        self._held.append(b"\x01" * (mb * MIB))
        return {"held_mb": sum(len(b) for b in self._held) // MIB}

    @command
    def blob(self, kib: int = 1) -> str:
        """Return a string of `kib` KiB (response-size tests and benchmarks)."""
        return "x" * (kib * 1024)

    @command
    def describe(self) -> List[Dict[str, Any]]:
        """List this adapter's commands with their parameters and docs."""
        return [
            {"name": c.name, "streaming": c.streaming, "params": c.params, "doc": c.doc}
            for c in sorted(self.commands().values(), key=lambda c: c.name)
        ]

    @command
    def session_put(self, key: str, value: Any, ctx: Context) -> Dict[str, Any]:
        """Store `value` under `key` in the session's state; returns the state and worker pid."""
        if ctx.session is None:
            raise ValueError("session_put needs a session_id")
        ctx.session.state[key] = value
        return {"state": ctx.session.state, "pid": os.getpid()}

    @command
    def session_get(self, ctx: Context) -> Dict[str, Any]:
        """Return the session's state, metadata and the worker pid that holds it."""
        if ctx.session is None:
            raise ValueError("session_get needs a session_id")
        return {
            "state": ctx.session.state,
            "metadata": ctx.session.metadata,
            "requests": ctx.session.requests,
            "pid": os.getpid(),
        }

    @command
    def whoami(self, ctx: Context) -> Dict[str, Any]:
        """The worker pid and the ids this request arrived with."""
        return {
            "pid": os.getpid(),
            "request_id": ctx.request_id,
            "correlation_id": ctx.correlation_id,
            "deadline_seconds": ctx.deadline_seconds,
            "traceparent": ctx.metadata.get("traceparent"),
        }

    @command
    def traced(self, steps: int = 2) -> Dict[str, Any]:
        """Open `steps` spans with the OpenTelemetry API, as user code would; they nest
        under the worker span of the request. Without the API installed, only counts."""
        try:
            from opentelemetry import trace
        except ImportError:
            return {"steps": steps, "traced": False}
        tracer = trace.get_tracer("snakepit.example")
        for i in range(steps):
            with tracer.start_as_current_span(f"example.step.{i}"):
                pass
        return {"steps": steps, "traced": True}

    @command
    def score(
        self,
        features: List[float],
        weights: Optional[List[float]] = None,
        mode: Literal["sum", "mean"] = "sum",
    ) -> Dict[str, float]:
        """Weighted sum (or mean) of `features`; `weights` default to 1 each. The
        arguments are checked against these hints before the command runs."""
        if weights is not None and len(weights) != len(features):
            raise ValueError(f"{len(weights)} weights for {len(features)} features")
        ws = weights if weights is not None else [1.0] * len(features)
        total = sum(f * w for f, w in zip(features, ws))
        if mode == "mean":
            total = total / len(features) if features else 0.0
        return {"score": total, "n": float(len(features))}

    @command
    def distance(self, a: Point, b: Point) -> float:
        """Euclidean distance between two points (JSON objects {"x", "y"})."""
        return math.hypot(a.x - b.x, a.y - b.y)

    @command
    async def async_sleep(self, ms: float = 0) -> Dict[str, float]:
        """Await `ms` milliseconds on the worker's event loop; past its deadline it is
        cancelled inside Python and the worker keeps serving. `started_at` and
        `finished_at` (this worker's monotonic clock, seconds) show calls overlapping."""
        started = time.monotonic()
        await asyncio.sleep(ms / 1000.0)
        finished = time.monotonic()
        return {
            "slept_ms": ms,
            "elapsed_ms": (finished - started) * 1000.0,
            "started_at": started,
            "finished_at": finished,
        }

    @command
    async def async_stream(self, n: int = 3, delay_ms: float = 0) -> AsyncIterator[Dict[str, int]]:
        """Yield `n` chunks {"i": 0..n-1} from an async generator, `delay_ms` apart."""
        for i in range(n):
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000.0)
            yield {"i": i}
