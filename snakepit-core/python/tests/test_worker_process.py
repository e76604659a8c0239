"""The worker as a real process: gRPC over a Unix socket, exit rules, start-up failures."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import grpc

from snakepit_bridge import _proto as pb

from conftest import start_worker


def test_ready_line_and_calls_over_grpc(worker):
    proc, ready, client = worker
    assert ready["pid"] == proc.pid and ready["protocol"] == 1
    assert json.loads(client.call("ping").result_json) == "pong"
    health = client.health(pb.HealthRequest())
    assert health.status == "ok" and health.pid == proc.pid and health.rss_bytes > 0
    chunks = list(client.execute_stream(pb.ExecuteRequest(command="stream", args_json=b'{"n": 4}')))
    assert len(chunks) == 5 and chunks[-1].final


def test_deadline_reaches_the_command(worker):
    _, _, client = worker
    resp = client.execute(pb.ExecuteRequest(command="whoami", args_json=b"{}"), timeout=5,
                          metadata=[("x-correlation-id", "corr-1"), ("x-snakepit-request-id", "r-1")])
    got = json.loads(resp.result_json)
    assert 0 < got["deadline_seconds"] <= 5.5
    assert got["correlation_id"] == "corr-1" and got["request_id"] == "r-1"


def test_health_answers_while_a_command_hangs(worker):
    _, _, client = worker
    fut = client.execute.future(pb.ExecuteRequest(command="hang"))
    time.sleep(0.2)
    start = time.monotonic()
    assert client.health(pb.HealthRequest(), timeout=2).status == "ok"
    assert time.monotonic() - start < 1.0
    fut.cancel()


def test_exits_when_stdin_closes(worker):
    proc, _, _ = worker
    proc.stdin.close()
    assert proc.wait(timeout=5) == 0


def test_sigterm_exits_cleanly(worker):
    proc, _, _ = worker
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def test_crash_exits_with_code(worker):
    proc, _, client = worker
    try:
        client.call("crash", code=7)
    except grpc.RpcError:
        pass
    assert proc.wait(timeout=5) == 7


def test_bad_adapter_fails_with_traceback():
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "snakepit_bridge", "--adapter", "no_such_module:X",
             "--socket", os.path.join(tmp, "s")],
            capture_output=True, text=True, timeout=30,
        )
    assert proc.returncode == 3
    assert "ModuleNotFoundError" in proc.stderr and "no_such_module" in proc.stderr
    assert "SNAKEPIT_READY" not in proc.stdout


def test_exits_when_parent_dies():
    """A middle process starts the worker and is SIGKILLed; the worker must follow."""
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "w.sock")
        pid_file = os.path.join(tmp, "pid")
        parent_code = (
            "import subprocess, sys, time\n"
            f"p = subprocess.Popen([sys.executable, '-m', 'snakepit_bridge', '--adapter',"
            f" 'snakepit_bridge.example:ExampleAdapter', '--socket', {sock!r}, '--watch-stdin'],"
            " stdin=subprocess.PIPE, stdout=subprocess.PIPE)\n"
            "p.stdout.readline()\n"
            f"open({pid_file!r}, 'w').write(str(p.pid))\n"
            "time.sleep(60)\n"
        )
        parent = subprocess.Popen([sys.executable, "-c", parent_code])
        deadline = time.monotonic() + 20
        while not os.path.exists(pid_file) or not open(pid_file).read():
            assert time.monotonic() < deadline, "worker did not start"
            time.sleep(0.05)
        worker_pid = int(open(pid_file).read())
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                os.kill(worker_pid, 0)
            except ProcessLookupError:
                return
            # A zombie child of init is gone for our purposes; check its state.
            try:
                with open(f"/proc/{worker_pid}/stat") as f:
                    if f.read().split(")")[1].split()[0] == "Z":
                        return
            except FileNotFoundError:
                return
            time.sleep(0.05)
        os.kill(worker_pid, signal.SIGKILL)
        raise AssertionError("worker outlived its SIGKILLed parent by 2 s")


def test_async_commands_over_grpc_run_side_by_side_and_are_cancelled_at_the_deadline(worker):
    """The gRPC transport serves calls on several threads: async ones share the
    worker's loop (4 handler threads: 4 calls of 300 ms overlap), and one past its
    deadline is cancelled inside Python, answered in time, the worker unharmed."""
    proc, _, client = worker
    calls = [
        client.execute.future(pb.ExecuteRequest(command="async_sleep", args_json=b'{"ms": 300}'), timeout=10)
        for _ in range(4)
    ]
    got = [json.loads(c.result().result_json) for c in calls]
    assert all(g["elapsed_ms"] >= 300 for g in got)
    # All four were awaiting at once: each started before any finished.
    assert max(g["started_at"] for g in got) < min(g["finished_at"] for g in got)
    err = client.execute(
        pb.ExecuteRequest(command="async_sleep", args_json=b'{"ms": 10000}'), timeout=0.5
    ).error
    assert err.kind == pb.WorkerError.DEADLINE_EXCEEDED, err
    assert "in async_sleep" in err.traceback
    assert json.loads(client.call("ping").result_json) == "pong"
    assert proc.poll() is None


def test_a_hint_mismatch_over_grpc_is_invalid_args(worker):
    _, _, client = worker
    err = client.execute(pb.ExecuteRequest(command="score", args_json=b'{"features": "oops"}')).error
    assert err.kind == pb.WorkerError.INVALID_ARGS
    assert err.message == "score: argument 'features' must be list[float], got str 'oops'"
