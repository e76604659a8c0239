"""The fork server as the pool drives it: a keeper process, its template, workers forked
twice (re-parented to the keeper, which reports their exits), and the template's
refusal to fork with threads running."""
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from snakepit_bridge import fork_server
from snakepit_bridge import _proto as pb

from conftest import WorkerClient

ADAPTER = "snakepit_bridge.example:ExampleAdapter"


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Keeper:
    """`python -m snakepit_bridge.fork_server` with the pool's end of its socket."""

    def __init__(self, *extra):
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "snakepit_bridge.fork_server", "--adapter", ADAPTER,
             "--fork-fd", str(theirs.fileno()), *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(theirs.fileno(),),
            # Unbuffered: `report` selects on the pipe, and a buffered readline could
            # take the next report into its buffer, where select never sees it (the
            # ready line and the template's report often come in one read).
            bufsize=0,
        )
        theirs.close()
        self.sock.settimeout(30)
        assert self.proc.stdout.readline().startswith(b"SNAKEPIT_READY ")

    def report(self, timeout=30.0) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "no report from the keeper"
        return json.loads(self.proc.stdout.readline())

    def message(self) -> dict:
        return json.loads(self.sock.recv(65536))

    def fork(self, request_id, argv, fds, targets) -> dict:
        socket.send_fds(self.sock, [json.dumps({"id": request_id, "argv": argv, "fds": targets}).encode()], fds)
        return self.message()

    def close(self):
        self.sock.close()
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)


@pytest.fixture
def keeper():
    k = Keeper()
    yield k
    k.close()


def _fork_grpc_worker(keeper, request_id, socket_path):
    """Fork a worker serving gRPC on `socket_path`; its stdout comes back to us."""
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    argv = ["--adapter", ADAPTER, "--worker-id", f"py-{request_id}", "--socket", socket_path, "--watch-stdin"]
    reply = keeper.fork(request_id, argv, [stdin_r, stdout_w], [0, 1])
    os.close(stdin_r)
    os.close(stdout_w)
    out = os.fdopen(stdout_r, "rb")
    return reply, stdin_w, out


def test_a_forked_worker_serves_and_its_exit_is_reported_by_the_keeper(keeper, tmp_path):
    assert keeper.report()["ev"] == "template"
    ready = keeper.message()
    template = ready["ready"]["pid"]
    assert _parent_of(template) == keeper.proc.pid
    path = str(tmp_path / "w.sock")
    reply, stdin_w, out = _fork_grpc_worker(keeper, 7, path)
    assert reply["id"] == 7, reply
    pid = reply["pid"]
    line = out.readline()
    assert line.startswith(b"SNAKEPIT_READY "), line
    assert json.loads(line.split(b" ", 1)[1])["pid"] == pid
    # Forked twice: the keeper (a child subreaper) is the parent, not the template.
    assert _parent_of(pid) == keeper.proc.pid
    assert os.getpgid(pid) == pid  # its own process group
    with open(f"/proc/{pid}/comm") as f:
        assert f.read().strip() == "sp-py-7"
    client = WorkerClient(f"unix:{path}")
    assert json.loads(client.call("ping").result_json) == "pong"
    health = client.health(pb.HealthRequest())
    assert health.pid == pid
    os.kill(pid, signal.SIGKILL)
    report = keeper.report()
    assert report == {"ev": "exit", "pid": pid, "code": None, "signal": signal.SIGKILL, "template": False}
    os.close(stdin_w)
    out.close()


def test_a_dead_template_is_reported_and_replaced_on_request_while_workers_live(keeper, tmp_path):
    keeper.report()
    template = keeper.message()["ready"]["pid"]
    reply, stdin_w, out = _fork_grpc_worker(keeper, 1, str(tmp_path / "a.sock"))
    assert out.readline().startswith(b"SNAKEPIT_READY ")
    worker = reply["pid"]
    os.kill(template, signal.SIGKILL)
    assert keeper.report() == {"ev": "exit", "pid": template, "code": None, "signal": signal.SIGKILL, "template": True}
    assert _alive(worker), "a worker died with its template"
    keeper.proc.stdin.write(b'{"op": "template"}\n')
    keeper.proc.stdin.flush()
    assert keeper.report()["ev"] == "template"
    new_template = keeper.message()["ready"]["pid"]
    assert new_template != template
    # The pool leaves: the keeper ends, and the worker with it (PR_SET_PDEATHSIG).
    keeper.proc.stdin.close()
    keeper.proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while (_alive(worker) or _alive(new_template)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(worker) and not _alive(new_template)
    os.close(stdin_w)
    out.close()


def test_a_malformed_fork_request_is_answered_not_fatal(keeper, tmp_path):
    keeper.report()
    keeper.message()
    keeper.sock.send(b"not json")
    assert "malformed fork request" in keeper.message()["error"]
    r, w = os.pipe()
    reply = keeper.fork(3, ["--adapter", ADAPTER], [r, w], [0])
    assert reply["id"] == 3 and "2 descriptors for 1 targets" in reply["error"]
    os.close(r)
    os.close(w)
    # Still serving.
    reply, stdin_w, out = _fork_grpc_worker(keeper, 4, str(tmp_path / "b.sock"))
    assert "pid" in reply and out.readline().startswith(b"SNAKEPIT_READY ")
    os.kill(reply["pid"], signal.SIGKILL)
    os.close(stdin_w)
    out.close()


def test_other_threads_are_named():
    assert fork_server.other_threads() == []
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="loader-thread", daemon=True)
    t.start()
    try:
        assert fork_server.other_threads() == ["loader-thread (Python thread)"]
    finally:
        stop.set()
        t.join()


def test_reseed_changes_the_random_stream():
    import random

    random.seed(42)
    first = random.random()
    random.seed(42)
    fork_server.reseed()
    assert random.random() != first


def test_place_fds_puts_each_on_its_target_even_crosswise():
    # In a child: the two write ends swap numbers, so each source sits on the other's
    # target (a plain dup2 of the first would clobber the second before it moved).
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            fork_server._place_fds([a_w, b_w], [b_w, a_w])
            os.write(b_w, b"A")  # now pipe a's write end
            os.write(a_w, b"B")  # now pipe b's
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.close(a_w)
    os.close(b_w)
    assert os.waitpid(pid, 0)[1] == 0
    assert os.read(a_r, 10) == b"A" and os.read(b_r, 10) == b"B"


def test_the_templates_direct_channel_writes_at_once_and_drops_what_it_cannot():
    from snakepit_bridge.channel import DirectChannel

    r, w = os.pipe()
    chan = DirectChannel(w)
    assert chan.put({"t": "log", "msg": "imported"})
    circular = {}
    circular["self"] = circular
    assert not chan.put({"t": "log", "extra": circular})
    os.close(w)
    assert not chan.put({"t": "log", "msg": "pipe closed"})
    assert chan.dropped == 2
    assert json.loads(os.read(r, 4096)) == {"t": "log", "msg": "imported"}
    os.close(r)
