"""The pipe transport as a real process: framed calls on the data pipe, control calls
answered while a request runs, streams and cancel, bad frames, parent death, SIGTERM."""
import json
import os
import signal
import struct
import subprocess
import sys
import time

import pytest

from snakepit_bridge import _proto as pb

HEADER = struct.Struct(">I")


class PipeWorker:
    def __init__(self, busy_poll_us=100):
        self.data_in_r, self.data_in_w = os.pipe()    # pool -> worker
        self.data_out_r, self.data_out_w = os.pipe()  # worker -> pool
        self.ctl_in_r, self.ctl_in_w = os.pipe()
        self.ctl_out_r, self.ctl_out_w = os.pipe()
        child = (self.data_in_r, self.data_out_w, self.ctl_in_r, self.ctl_out_w)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "snakepit_bridge", "--adapter", "snakepit_bridge.example:ExampleAdapter",
             "--pipe-fds", ",".join(map(str, child)), "--max-message-bytes", "1048576",
             "--busy-poll-us", str(busy_poll_us)],
            pass_fds=child, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for fd in child:
            os.close(fd)
        line = self.proc.stdout.readline()
        assert line.startswith("SNAKEPIT_READY "), (line, self.proc.stderr.read() if self.proc.poll() is not None else "")
        self.next_id = 1

    def send(self, fd, frame):
        data = frame.SerializeToString()
        os.write(fd, HEADER.pack(len(data)) + data)

    def recv(self, fd):
        def exact(n):
            buf = b""
            while len(buf) < n:
                chunk = os.read(fd, n - len(buf))
                if not chunk:
                    return None
                buf += chunk
            return buf
        head = exact(4)
        if head is None:
            return None
        (n,) = HEADER.unpack(head)
        return pb.Frame.FromString(exact(n) if n else b"")

    def call(self, command, timeout_ms=0, **args):
        self.next_id += 1
        self.send(self.data_in_w, pb.Frame(id=self.next_id, timeout_ms=timeout_ms,
                                           metadata={"x-correlation-id": "c-pipe"},
                                           execute=pb.ExecuteRequest(command=command, args_json=json.dumps(args).encode())))
        reply = self.recv(self.data_out_r)
        assert reply.id == self.next_id
        return reply.execute_result

    def control(self, **body):
        self.next_id += 1
        self.send(self.ctl_in_w, pb.Frame(id=self.next_id, **body))
        reply = self.recv(self.ctl_out_r)
        assert reply.id == self.next_id
        return reply

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for fd in (self.data_in_w, self.data_out_r, self.ctl_in_w, self.ctl_out_r):
            try:
                os.close(fd)
            except OSError:
                pass


# 100 µs is the pool's shipped busy poll; 0 is the plain blocking read.
@pytest.fixture(params=[100, 0], ids=["busy-poll-default", "no-busy-poll"])
def worker(request):
    w = PipeWorker(request.param)
    yield w
    w.close()


def test_calls_results_errors_and_context(worker):
    assert json.loads(worker.call("ping").result_json) == "pong"
    who = json.loads(worker.call("whoami", timeout_ms=4000).result_json)
    assert who["correlation_id"] == "c-pipe" and 0 < who["deadline_seconds"] <= 4
    err = worker.call("fail", type="KeyError", message="gone").error
    assert err.type == "KeyError" and "raise exc_type(message)" in err.traceback
    assert worker.call("nope").error.kind == pb.WorkerError.UNKNOWN_COMMAND


def test_print_in_user_code_does_not_corrupt_the_channel(worker):
    # stdout is not the channel: what user code prints goes to the log.
    assert json.loads(worker.call("echo", text="x" * 100).result_json) == {"text": "x" * 100}


def test_control_answers_while_a_request_runs(worker):
    worker.next_id += 1
    busy_id = worker.next_id
    worker.send(worker.data_in_w, pb.Frame(id=busy_id, execute=pb.ExecuteRequest(command="sleep", args_json=b'{"ms": 800}')))
    start = time.monotonic()
    health = worker.control(health=pb.HealthRequest()).health_result
    assert health.status == "ok" and health.pid == worker.proc.pid
    assert time.monotonic() - start < 0.5, "health waited for the request"
    assert worker.control(describe=pb.DescribeRequest()).describe_result.commands
    assert worker.control(init_session=pb.InitSessionRequest(session_id="s1")).session_ack.changed
    assert worker.recv(worker.data_out_r).id == busy_id


def _send_execute(worker, command, args):
    worker.next_id += 1
    worker.send(worker.data_in_w, pb.Frame(id=worker.next_id, execute=pb.ExecuteRequest(
        command=command, args_json=json.dumps(args).encode())))
    return worker.next_id


def test_a_call_written_behind_the_running_one_runs_next_in_order(worker):
    slow = _send_execute(worker, "sleep", {"ms": 200})
    behind = _send_execute(worker, "echo", {"n": 1})
    first, second = worker.recv(worker.data_out_r), worker.recv(worker.data_out_r)
    assert (first.id, second.id) == (slow, behind)
    assert json.loads(second.execute_result.result_json) == {"n": 1}


def test_revoke_takes_back_a_call_that_has_not_started(worker):
    slow = _send_execute(worker, "sleep", {"ms": 400})
    behind = _send_execute(worker, "echo", {"n": 2})
    ack = worker.control(revoke=pb.Revoke(call_id=behind)).revoke_ack
    assert ack.revoked
    # The slow call's reply comes, and nothing for the revoked one: the next reply on
    # the data pipe is for a later call.
    assert worker.recv(worker.data_out_r).id == slow
    after = _send_execute(worker, "ping", {})
    assert worker.recv(worker.data_out_r).id == after


def test_revoke_of_a_call_that_already_ran_says_so(worker):
    assert json.loads(worker.call("ping").result_json) == "pong"
    assert not worker.control(revoke=pb.Revoke(call_id=worker.next_id)).revoke_ack.revoked
    # The worker is in step: the next call is answered as usual.
    assert json.loads(worker.call("ping").result_json) == "pong"


def test_stream_chunks_then_final_and_cancel(worker):
    worker.next_id += 1
    worker.send(worker.data_in_w, pb.Frame(id=worker.next_id, execute_stream=pb.ExecuteRequest(command="stream", args_json=b'{"n": 3}')))
    frames = [worker.recv(worker.data_out_r) for _ in range(4)]
    assert [json.loads(f.chunk.data_json) for f in frames[:3]] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert frames[3].chunk.final
    # Cancel a long stream after its first chunk: it ends early with its final chunk.
    worker.next_id += 1
    sid = worker.next_id
    worker.send(worker.data_in_w, pb.Frame(id=sid, execute_stream=pb.ExecuteRequest(command="stream", args_json=b'{"n": 1000, "delay_ms": 10}')))
    assert worker.recv(worker.data_out_r).chunk.data_json
    worker.send(worker.ctl_in_w, pb.Frame(id=sid, cancel=pb.Cancel()))
    count = 1
    while True:
        f = worker.recv(worker.data_out_r)
        count += 1
        if f.chunk.final:
            break
    assert count < 100, f"stream went on for {count} chunks after cancel"
    assert json.loads(worker.call("ping").result_json) == "pong"


def test_a_too_large_reply_is_refused_and_the_worker_keeps_serving(worker):
    worker.next_id += 1
    worker.send(worker.data_in_w, pb.Frame(id=worker.next_id, execute=pb.ExecuteRequest(command="blob", args_json=b'{"kib": 2048}')))
    reply = worker.recv(worker.data_out_r)
    assert reply.id == worker.next_id and reply.frame_error.too_large, reply
    assert "exceeds the limit" in reply.frame_error.message
    assert json.loads(worker.call("ping").result_json) == "pong"
    assert worker.proc.poll() is None


def test_a_bad_frame_is_answered_and_ends_the_worker(worker):
    os.write(worker.data_in_w, HEADER.pack(3) + b"\xff\xff\xff")
    reply = worker.recv(worker.data_out_r)
    assert reply.WhichOneof("body") == "frame_error" and "bad data frame" in reply.frame_error.message
    assert worker.proc.wait(timeout=5) == 5


def test_an_oversized_frame_is_refused(worker):
    os.write(worker.data_in_w, HEADER.pack(50 * 1024 * 1024))
    reply = worker.recv(worker.data_out_r)
    assert "exceeds the limit" in reply.frame_error.message
    assert worker.proc.wait(timeout=5) == 5


def test_eof_on_the_data_pipe_means_the_pool_is_gone(worker):
    os.close(worker.data_in_w)
    assert worker.proc.wait(timeout=5) == 0


def test_sigterm_exits_cleanly(worker):
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=10) == 0


# -- the busy-polling read, in process ------------------------------------------------

def _frame_bytes(frame):
    data = frame.SerializeToString()
    return HEADER.pack(len(data)) + data


@pytest.fixture
def polled_pipe():
    from snakepit_bridge.pipe_server import Pipe
    r, w = os.pipe()
    out_r, out_w = os.pipe()
    pipe = Pipe(r, out_w, 1 << 20)
    pipe.spin_for(100e-6)
    yield pipe, w
    for fd in (r, w, out_r, out_w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_busy_poll_reads_what_is_there_and_what_comes_later(polled_pipe):
    import threading
    pipe, w = polled_pipe
    os.write(w, _frame_bytes(pb.Frame(id=1, health=pb.HealthRequest())))
    assert pipe.read().id == 1
    # Arrives long after the poll window: the read sleeps and still gets it, and the
    # next wait sleeps at once (the window caught nothing).
    t = threading.Timer(0.05, lambda: os.write(w, _frame_bytes(pb.Frame(id=2, health=pb.HealthRequest()))))
    t.start()
    assert pipe.read().id == 2
    t.join()
    assert pipe._spin_pays is False
    # A frame split across writes, the second part after a pause, reads whole.
    raw = _frame_bytes(pb.Frame(id=3, health=pb.HealthRequest()))
    os.write(w, raw[:3])
    t = threading.Timer(0.02, lambda: os.write(w, raw[3:]))
    t.start()
    assert pipe.read().id == 3
    t.join()


def _read_written_after(pipe, w, frame_id, delay):
    """Read a frame that another thread writes `delay` seconds from now."""
    import threading
    frame = _frame_bytes(pb.Frame(id=frame_id, health=pb.HealthRequest()))
    t = threading.Timer(delay, lambda: os.write(w, frame))
    t.start()
    got = pipe.read()
    t.join()
    return got.id


def test_busy_poll_turns_back_on_when_traffic_returns(polled_pipe):
    pipe, w = polled_pipe
    # A 0.5 s window instead of the default 100 µs, so "a wait short enough that the
    # poll would have caught it" does not depend on how fast this machine starts a
    # thread; the rule is the same.
    pipe.spin_for(0.5)
    pipe._spin_pays = False
    assert _read_written_after(pipe, w, 5, 0.05) == 5
    assert pipe._spin_pays is True
    # And a wait longer than the window switches it off again.
    pipe.spin_for(0.01)
    pipe._spin_pays = False
    assert _read_written_after(pipe, w, 6, 0.1) == 6
    assert pipe._spin_pays is False


def test_a_frame_that_comes_within_the_window_is_caught_without_sleeping(polled_pipe, monkeypatch):
    from snakepit_bridge import pipe_server
    pipe, w = polled_pipe
    # A 2 s window instead of 100 µs, so a frame written 10 ms later lands inside it
    # however slowly this machine starts the writer thread.
    pipe.spin_for(2.0)

    def no_sleep(*_args):
        raise AssertionError("the read slept although the frame came within the poll window")

    monkeypatch.setattr(pipe_server.select, "select", no_sleep)
    assert _read_written_after(pipe, w, 8, 0.01) == 8
    assert pipe._spin_pays is True


def test_busy_poll_sees_eof(polled_pipe):
    pipe, w = polled_pipe
    os.close(w)
    assert pipe.read() is None


def test_no_busy_poll_is_a_blocking_read():
    from snakepit_bridge.pipe_server import Pipe
    r, w = os.pipe()
    try:
        pipe = Pipe(r, w, 1 << 20)
        pipe.spin_for(0.0)
        assert os.get_blocking(r)
        os.write(w, _frame_bytes(pb.Frame(id=9, health=pb.HealthRequest())))
        assert pipe.read().id == 9
    finally:
        os.close(r)
        os.close(w)
