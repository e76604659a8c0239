import json
import os
import subprocess
import sys
import tempfile
import time

import grpc
import pytest

from snakepit_bridge import _proto as pb


class WorkerClient:
    """A minimal hand-written client of the worker contract (the real client is Rust)."""

    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address)
        base = f"/{pb.SERVICE_NAME}/"

        def unary(name, req, resp):
            return self.channel.unary_unary(
                base + name,
                request_serializer=req.SerializeToString,
                response_deserializer=resp.FromString,
            )

        self.execute = unary("Execute", pb.ExecuteRequest, pb.ExecuteResponse)
        self.health = unary("Health", pb.HealthRequest, pb.HealthResponse)
        self.describe = unary("Describe", pb.DescribeRequest, pb.DescribeResponse)
        self.init_session = unary("InitSession", pb.InitSessionRequest, pb.SessionAck)
        self.close_session = unary("CloseSession", pb.CloseSessionRequest, pb.SessionAck)
        self.execute_stream = self.channel.unary_stream(
            base + "ExecuteStream",
            request_serializer=pb.ExecuteRequest.SerializeToString,
            response_deserializer=pb.StreamChunk.FromString,
        )

    def call(self, command, **args):
        return self.execute(pb.ExecuteRequest(command=command, args_json=json.dumps(args).encode()))


def start_worker(socket_path, *extra, stdin=subprocess.PIPE):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "snakepit_bridge",
            "--adapter",
            "snakepit_bridge.example:ExampleAdapter",
            "--socket",
            socket_path,
            *extra,
        ],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker exited before ready: {proc.stderr.read()}")
        if line.startswith("SNAKEPIT_READY "):
            return proc, json.loads(line.split(" ", 1)[1])
    raise RuntimeError("worker not ready in 20 s")


@pytest.fixture
def worker():
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "w.sock")
        proc, ready = start_worker(sock, "--watch-stdin")
        client = WorkerClient(f"unix:{sock}")
        try:
            yield proc, ready, client
        finally:
            client.channel.close()
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
