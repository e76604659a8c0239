"""The worker's event loop: where `async def` commands and async generators run.

One asyncio loop per worker process, on its own thread (`snakepit-asyncio`), started
the first time something needs it and running until the process ends. Living that
long is the point: clients and connection pools an adapter makes on it (in an async
`on_start`, or in its first call) are reused by every later call, and their background
tasks keep running between calls. The threads that serve requests (the pipe server's
data thread, gRPC's handler threads) hand each coroutine over with
`run_coroutine_threadsafe` and wait for it; several gRPC calls run on the loop at once.

Deadlines: the serving thread waits until the call's deadline, less a small margin
(`cancel_margin`) so the answer reaches the pool before the pool's own deadline would
replace the worker. Then the coroutine is cancelled inside the loop (it gets
`CancelledError` at the `await` it is suspended in) and, once it has unwound, the call
fails with `DeadlineExceeded`, carrying the traceback of where it was awaiting. A
coroutine that blocks the loop (calls blocking code) cannot be cancelled: the serving
thread keeps waiting and the pool replaces the worker at its deadline, as for a
synchronous command. In a fork-server template nothing here has run, so the template
stays single-threaded; each forked worker starts its own loop.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import traceback
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Optional, TypeVar

T = TypeVar("T")

# The cancellation margin: 10% of the budget, at most 20 ms (a pipe round trip is
# ~0.1 ms; a cancelled coroutine unwinds in well under a millisecond).
_MARGIN_SHARE = 0.1
_MARGIN_MAX = 0.02


class DeadlineExceeded(Exception):
    """An async command was cancelled inside Python at its deadline."""

    def __init__(self, message: str, stack: str) -> None:
        super().__init__(message)
        self.stack = stack


def cancel_margin(budget: float) -> float:
    return min(budget * _MARGIN_SHARE, _MARGIN_MAX)


class _Call:
    """One coroutine on the loop, cancellable from the serving thread."""

    def __init__(self, coro: Awaitable[Any]) -> None:
        self.coro = coro
        self.task: Optional["asyncio.Task[Any]"] = None
        self.deadline_hit = False

    async def main(self) -> Any:
        self.task = asyncio.current_task()
        if self.deadline_hit:
            # Cancelled before its first step (no budget left when it was handed
            # over, or the loop was busy until after the deadline): never started.
            close = getattr(self.coro, "close", None)
            if close is not None:
                close()
            raise DeadlineExceeded("cancelled at its deadline before it started", "")
        try:
            result = await self.coro
        except asyncio.CancelledError as exc:
            if self.deadline_hit:
                # The traceback runs from here down to the await it was cancelled at.
                stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                raise DeadlineExceeded("cancelled at its deadline", stack) from None
            raise
        if self.deadline_hit:
            raise DeadlineExceeded(
                "cancelled at its deadline (it caught the CancelledError and returned late)", ""
            )
        return result

    def cancel(self) -> None:
        """In the loop: cancel the task (it may not have started yet)."""
        self.deadline_hit = True
        if self.task is not None:
            self.task.cancel()


class EventLoop:
    """The worker's loop thread, started on first use."""

    def __init__(self) -> None:
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self._loop is None:
                new = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(new)
                    new.call_soon(ready.set)
                    new.run_forever()

                thread = threading.Thread(target=serve, name="snakepit-asyncio", daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = new, thread
            return self._loop

    @property
    def started(self) -> bool:
        return self._loop is not None

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop and its thread (tasks still pending are dropped); the next
        use starts a new one. For the worker's last moments, and for tests."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()

    def run(self, coro: Awaitable[T], timeout: Optional[float] = None) -> T:
        """Run `coro` on the loop and return its result, from a thread that is not the
        loop's. With `timeout` (seconds left of the call's budget), cancel it shortly
        before then and raise DeadlineExceeded once it has unwound."""
        loop = self.loop()
        call = _Call(coro)
        future = asyncio.run_coroutine_threadsafe(call.main(), loop)
        if timeout is None:
            return future.result()
        try:
            return future.result(max(timeout - cancel_margin(timeout), 0.0))
        except concurrent.futures.TimeoutError:
            pass
        loop.call_soon_threadsafe(call.cancel)
        # Unbounded on purpose: if the coroutine blocks the loop it cannot unwind, and
        # the pool replaces the worker at its own deadline (as for sync code).
        return future.result()

    def iterate(self, agen: AsyncIterator[T], deadline: Optional[float]) -> Iterator[T]:
        """A synchronous iterator over an async generator's items, each step run on
        the loop; `deadline` is a `time.monotonic()` instant for the whole stream.
        Closing the iterator closes the generator (on the loop)."""
        try:
            while True:
                left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                try:
                    yield self.run(agen.__anext__(), left)
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None and self._on_loop_thread():
                # Finalised on the loop itself (a garbage collection there): waiting
                # for the loop from the loop would never end; schedule the close.
                asyncio.ensure_future(aclose())
            elif aclose is not None:
                try:
                    self.run(aclose())
                except (RuntimeError, StopAsyncIteration):  # already running or finished
                    pass

    def _on_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def call_hook(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call an adapter hook that may be sync or async."""
        result = fn(*args)
        if asyncio.iscoroutine(result):
            return self.run(result)
        return result


# The one loop of this worker process.
LOOP = EventLoop()
