"""Worker process entry point: `python -m snakepit_bridge --adapter module:Class --socket PATH`
(gRPC) or `... --pipe-fds 3,4,5,6` (framed protobuf on inherited pipes; see pipe_server.py).

Start-up protocol with the pool: load the adapter, bind the gRPC server, then print
one line `SNAKEPIT_READY {json}` on stdout. Anything printed before or after is
treated as log output by the pool. Records from `logging` go to the pool structured, on
the `--telemetry-fd` pipe (logs.py, channel.py).

Exit rules, so a worker never outlives its pool:
  * stdin reaches EOF (the pool holds its write end; the kernel closes it when the pool
    process dies, even by SIGKILL) -> exit at once;
  * the parent pid changes (re-parented to init or a subreaper) -> exit at once;
  * SIGTERM/SIGINT -> stop accepting, give in-flight calls a short grace, exit 0.
"""
from __future__ import annotations

import argparse
import faulthandler
import importlib
import json
import os
import signal
import sys
import threading
import time
import traceback

from . import channel, logs, metrics, telemetry
from .adapter import Adapter
from .aio import LOOP
from .dispatch import Dispatcher

READY_MARKER = "SNAKEPIT_READY"
PROTOCOL_VERSION = 1
EXIT_BAD_ADAPTER = 3
EXIT_BIND_FAILED = 4
PARENT_POLL_SECONDS = 0.5



def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="snakepit_bridge", description=__doc__.splitlines()[0])
    p.add_argument("--adapter", required=True, help="module:Class of the adapter to serve")
    p.add_argument("--socket", help="Unix socket path to serve on")
    p.add_argument("--address", help="gRPC address instead of --socket, e.g. 127.0.0.1:0")
    p.add_argument(
        "--pipe-fds",
        help="serve framed protobuf on inherited pipes instead of gRPC: data-in,data-out,control-in,control-out",
    )
    p.add_argument("--worker-id", default="worker")
    p.add_argument("--pool", default="default")
    p.add_argument("--run-id", default="", help="the pool run this worker belongs to")
    p.add_argument("--max-message-bytes", type=int, default=64 * 1024 * 1024)
    p.add_argument("--threads", type=int, default=4, help="gRPC handler threads")
    p.add_argument(
        "--busy-poll-us",
        type=int,
        default=0,
        help="pipe transport: microseconds to poll for the next request before sleeping",
    )
    p.add_argument("--watch-stdin", action="store_true", help="exit when stdin closes")
    p.add_argument(
        "--telemetry-fd",
        type=int,
        default=-1,
        help="pipe to the pool for structured log records (JSON lines); stderr without it",
    )
    p.add_argument(
        "--stacks-fd",
        type=int,
        default=-1,
        help="pipe faulthandler dumps every thread's stack to on SIGUSR1 (the pool asks)",
    )
    p.add_argument("--stop-grace", type=float, default=2.0, help="seconds to finish on SIGTERM")
    return p.parse_args(argv)


def resolve_adapter(spec: str):
    """Import the module of `module:Class` and return the attribute it names (an
    Adapter subclass or an instance). Raises what the import raises."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"adapter must be 'module:Class', got {spec!r}")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def instantiate(obj, spec: str) -> Adapter:
    """The adapter `resolve_adapter` found, constructed if it is a class."""
    adapter = obj() if isinstance(obj, type) else obj
    if not isinstance(adapter, Adapter):
        raise TypeError(f"{spec} is not a snakepit_bridge.Adapter (got {type(adapter).__name__})")
    return adapter


def load_adapter(spec: str) -> Adapter:
    return instantiate(resolve_adapter(spec), spec)


def _watch_stdin() -> None:
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    os._exit(0)


def _watch_parent(original_ppid: int) -> None:
    while True:
        time.sleep(PARENT_POLL_SECONDS)
        if os.getppid() != original_ppid:
            os._exit(0)


def main(argv=None, preloaded=None) -> int:
    """Serve until stopped. `preloaded` is what a fork server's template already loaded
    (fork_server.py): the adapter class (`fork_after = "import"`, constructed here) or
    the adapter itself (`fork_after = "init"`); without it the adapter is imported here."""
    args = parse_args(argv)
    if args.stacks_fd >= 0:
        # First, so even a stuck import can be asked where it is. faulthandler dumps
        # from the C signal handler: it answers while C code holds the GIL.
        faulthandler.register(signal.SIGUSR1, file=args.stacks_fd, all_threads=True, chain=False)
    chan = channel.open_channel(args.telemetry_fd) if args.telemetry_fd >= 0 else None
    logs.install(chan, args.worker_id)
    if chan is not None:
        # The user metrics travel on the same pipe, taken by the channel's writer.
        chan.collectors.append(metrics.take_batches)
    if args.watch_stdin:
        threading.Thread(target=_watch_stdin, name="snakepit-stdin-watch", daemon=True).start()
    ppid = os.getppid()
    if ppid != 1:
        threading.Thread(
            target=_watch_parent, args=(ppid,), name="snakepit-parent-watch", daemon=True
        ).start()

    try:
        if preloaded is None:
            adapter = load_adapter(args.adapter)
        else:
            adapter = instantiate(preloaded, args.adapter)
        # Compiles the commands' hints: an unusable one fails here, with its name.
        dispatcher = Dispatcher(adapter)
    except BaseException:  # noqa: BLE001 - any import-time failure is the adapter's fault
        print(f"cannot load adapter {args.adapter!r}:", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        return EXIT_BAD_ADAPTER

    telemetry.setup(args.worker_id, args.pool, adapter.name)
    try:
        # Sync, or async on the worker's loop: clients made here serve every call.
        LOOP.call_hook(adapter.on_start)
    except BaseException:  # noqa: BLE001
        print(f"adapter {args.adapter!r} failed in on_start:", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        return EXIT_BAD_ADAPTER
    if args.pipe_fds:
        # Imported here: a pipe worker never pays for importing grpc.
        from .pipe_server import PipeServer

        try:
            fds = [int(f) for f in args.pipe_fds.split(",")]
            if len(fds) != 4:
                raise ValueError("need four descriptors")
        except ValueError as exc:
            print(f"--pipe-fds {args.pipe_fds!r}: {exc}", file=sys.stderr)
            return EXIT_BIND_FAILED
        server = PipeServer(dispatcher, fds, args.max_message_bytes, max(args.busy_poll_us, 0) / 1e6)
    else:
        address = args.address or (f"unix:{args.socket}" if args.socket else None)
        if address is None:
            print("one of --socket, --address or --pipe-fds is required", file=sys.stderr)
            return EXIT_BIND_FAILED
        try:
            from .server import build_server
        except ImportError as exc:
            print(
                f"the gRPC transport needs grpcio ({exc}): install snakepit-bridge[grpc], "
                "or use the pipe transport",
                file=sys.stderr,
            )
            return EXIT_BIND_FAILED
        try:
            server = build_server(dispatcher, address, args.max_message_bytes, args.threads)
        except (OSError, RuntimeError) as exc:
            print(f"cannot serve on {address}: {exc}", file=sys.stderr)
            return EXIT_BIND_FAILED

    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    ready = {
        "pid": os.getpid(),
        "protocol": PROTOCOL_VERSION,
        "python": sys.version.split()[0],
        "adapter": adapter.name,
        "worker_id": args.worker_id,
    }
    print(f"{READY_MARKER} {json.dumps(ready)}", flush=True)
    while not stop.wait(timeout=1.0):
        pass
    if args.pipe_fds:
        server.stop(grace=args.stop_grace)
    else:
        server.stop(grace=args.stop_grace).wait()
    try:
        LOOP.call_hook(adapter.on_stop)
    except BaseException:  # noqa: BLE001 - a failing hook must not keep the worker up
        traceback.print_exc()
    telemetry.shutdown()
    if chan is not None:
        chan.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
