"""Async commands: coroutines and async generators on the worker's one event loop,
cancelled inside Python at their deadline, mixed with sync commands."""
import asyncio
import json
import threading
import time
from typing import Any, AsyncIterator, Dict, List, Optional

import pytest

from snakepit_bridge import Adapter, Context, command
from snakepit_bridge import _proto as pb
from snakepit_bridge.aio import LOOP, cancel_margin
from snakepit_bridge.dispatch import Dispatcher


@pytest.fixture(autouse=True, scope="module")
def own_loop():
    """The loop thread ends with this module: later tests (the fork server's) need a
    single-threaded process."""
    yield
    LOOP.close()


class Client:
    """Stands for an aiohttp/httpx client: bound to the loop it was made on."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.calls = 0

    async def get(self) -> int:
        assert asyncio.get_running_loop() is self.loop, "used from another loop"
        self.calls += 1
        await asyncio.sleep(0)
        return self.calls


class AsyncAdapter(Adapter):
    def __init__(self) -> None:
        self.client: Optional[Client] = None
        self.in_flight = 0
        self.most_in_flight = 0
        self.cancelled: List[str] = []
        self.closed: List[int] = []

    async def on_start(self) -> None:
        self.client = Client()

    @command
    async def fetch(self) -> Dict[str, Any]:
        assert self.client is not None
        n = await self.client.get()
        return {"calls": n, "same_loop": asyncio.get_running_loop() is self.client.loop}

    @command
    async def wait(self, ms: float, ctx: Context) -> Dict[str, Any]:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(ms / 1000)
            return {"left": ctx.time_left()}
        except asyncio.CancelledError:
            self.cancelled.append(ctx.request_id)
            raise
        finally:
            self.in_flight -= 1

    @command
    async def block(self, ms: float) -> str:
        time.sleep(ms / 1000)  # blocks the loop: cannot be cancelled
        return "done"

    @command
    async def boom(self) -> None:
        await asyncio.sleep(0)
        raise KeyError("async failure")

    @command
    async def ticks(self, n: int, delay_ms: float = 0) -> AsyncIterator[int]:
        try:
            for i in range(n):
                await asyncio.sleep(delay_ms / 1000)
                yield i
        finally:
            self.closed.append(n)

    @command
    def sync_ping(self) -> str:
        return "pong"

    def wrapped(self) -> Any:
        """Not a command: a sync method handing back a coroutine."""

    @command
    def sync_returning_coroutine(self) -> Any:
        async def inner() -> str:
            return "ran on the loop"

        return inner()


def execute(d, cmd, args=None, deadline=None, request_id="r"):
    req = pb.ExecuteRequest(command=cmd, args_json=json.dumps(args or {}).encode())
    return d.execute(req, {"x-snakepit-request-id": request_id}, deadline)


def value(resp):
    assert resp.WhichOneof("outcome") == "result_json", resp
    return json.loads(resp.result_json)


def chunks(d, cmd, args, deadline=None, active=lambda: True):
    req = pb.ExecuteRequest(command=cmd, args_json=json.dumps(args).encode())
    return list(d.execute_stream(req, {}, deadline, active))


def started() -> AsyncAdapter:
    a = AsyncAdapter()
    LOOP.call_hook(a.on_start)  # what the worker does before it is ready
    return a


def test_async_unary_and_one_loop_for_the_worker_life():
    a = started()
    d = Dispatcher(a)
    assert value(execute(d, "fetch")) == {"calls": 1, "same_loop": True}
    assert value(execute(d, "fetch")) == {"calls": 2, "same_loop": True}
    assert value(execute(d, "sync_ping")) == "pong"
    assert value(execute(d, "sync_returning_coroutine")) == "ran on the loop"
    assert [t.name for t in threading.enumerate()].count("snakepit-asyncio") == 1


def test_async_exception_keeps_type_and_traceback():
    err = execute(Dispatcher(started()), "boom").error
    assert err.kind == pb.WorkerError.EXCEPTION and err.type == "KeyError"
    assert "async failure" in err.message and "in boom" in err.traceback


def test_deadline_cancels_the_coroutine_inside_python():
    a = started()
    d = Dispatcher(a)
    t0 = time.monotonic()
    resp = execute(d, "wait", {"ms": 10_000}, deadline=0.3, request_id="late")
    took = time.monotonic() - t0
    err = resp.error
    assert err.kind == pb.WorkerError.DEADLINE_EXCEEDED, err
    assert "cancelled inside Python" in err.message and "300 ms" in err.message
    # Where it was awaiting when cancelled, from the user's frame down.
    assert "in wait" in err.traceback and "await asyncio.sleep(ms / 1000)" in err.traceback
    assert a.cancelled == ["late"] and a.in_flight == 0
    # Answered before the deadline, so the pool need not replace the worker.
    assert took < 0.3, took
    assert took >= 0.3 - cancel_margin(0.3) - 0.01
    # The loop and the worker serve on.
    assert "left" in value(execute(d, "wait", {"ms": 1}, deadline=5))


def test_a_call_within_its_deadline_sees_the_time_left():
    got = value(execute(Dispatcher(started()), "wait", {"ms": 1}, deadline=10))
    assert 0 < got["left"] <= 10


def test_a_coroutine_blocking_the_loop_is_not_reported_cancelled_before_it_unblocks():
    d = Dispatcher(started())
    t0 = time.monotonic()
    resp = execute(d, "block", {"ms": 400}, deadline=0.1)
    # No answer while the loop was blocked: the pool replaces such a worker at its
    # deadline, as for sync code. (Without a pool, the late result comes once free.)
    assert time.monotonic() - t0 >= 0.4
    assert value(resp) == "done"


def test_concurrent_calls_share_the_loop():
    a = started()
    d = Dispatcher(a)
    results: List[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(value(execute(d, "wait", {"ms": 200}))))
        for _ in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 16
    # The gRPC transport serves calls from several threads: they ran side by side.
    assert a.most_in_flight > 1


def test_async_generator_streams_and_closes():
    a = started()
    d = Dispatcher(a)
    got = chunks(d, "ticks", {"n": 3})
    assert [json.loads(c.data_json) for c in got[:-1]] == [0, 1, 2]
    assert got[-1].final and not got[-1].HasField("error")
    assert a.closed == [3]
    # A unary call of it gets every chunk.
    assert value(execute(d, "ticks", {"n": 2})) == [0, 1]


def test_async_stream_cancelled_by_the_caller_closes_the_generator():
    a = started()
    d = Dispatcher(a)
    checks: List[int] = []

    def active() -> bool:  # asked after each chunk; the caller leaves after the second
        checks.append(1)
        return len(checks) < 2

    got = chunks(d, "ticks", {"n": 1000}, active=active)
    assert len(got) == 3 and got[-1].final and not got[-1].HasField("error")
    assert a.closed == [1000]


def test_async_stream_past_its_deadline_ends_with_deadline_exceeded():
    a = started()
    d = Dispatcher(a)
    got = chunks(d, "ticks", {"n": 100, "delay_ms": 50}, deadline=0.3)
    final = got[-1]
    assert final.final and final.error.kind == pb.WorkerError.DEADLINE_EXCEEDED, final
    assert 2 <= len(got) - 1 <= 6, len(got)
    assert a.closed == [100]


def test_sync_session_hooks_and_async_ones():
    events: List[str] = []

    class Hooks(Adapter):
        async def on_session_start(self, session) -> None:
            await asyncio.sleep(0)
            events.append("start " + session.id)

        def on_session_end(self, session) -> None:
            events.append("end " + session.id)

    d = Dispatcher(Hooks())
    d.init_session("s", b"{}")
    d.close_session("s")
    assert events == ["start s", "end s"]
