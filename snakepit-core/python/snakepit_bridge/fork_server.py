"""A pool's fork server (`start_method = "fork_server"`): workers forked from a template
that has already imported the adapter, so N workers start in about the time of one and
share its memory copy-on-write.

    python -u -m snakepit_bridge.fork_server --fork-fd 3 --adapter module:Class \
        [--preload numpy,scipy] [--fork-after import|init]

Three kinds of process:

* the **keeper** (this module's `main`, the process the pool spawns): imports nothing of
  the adapter and never forks a worker itself. A child subreaper
  (`PR_SET_CHILD_SUBREAPER`), it forks the template, reaps every child (the template,
  and every worker, which is re-parented to it) and reports each exit on
  stdout as one JSON line: `{"ev": "exit", "pid": N, "code": C, "signal": S,
  "template": bool}`; `{"ev": "template", "pid": N}` when it forked a template. One
  command on stdin: `{"op": "template"}` forks a new template (the pool asks after the
  old one died). EOF on stdin (the pool closed it, or died) ends the keeper; the
  template and the workers die with it (`PR_SET_PDEATHSIG`).
* the **template**: imports `snakepit_bridge`, the `--preload` modules and the
  adapter's module (with `--fork-after init` it also constructs the adapter, so what
  `__init__` loads is shared), then serves fork requests on the `SOCK_SEQPACKET` socket
  at `--fork-fd`. Its first message says whether it is ready (`{"ready": {...}}` or
  `{"error": "..."}`); each request is one message `{"argv": [...], "fds": [targets]}`
  with the worker's descriptors attached (`SCM_RIGHTS`), answered `{"pid": N}` or
  `{"error": "..."}`. It never runs a request, and forks only while single-threaded.
* a **worker**: forked twice (template -> short-lived middle process -> worker, which
  the middle process leaves behind at once), so its parent is the keeper, not the
  template: a template that dies takes no worker with it, and the keeper is the one
  process that reaps them (the pool's own process is never made a subreaper). The
  worker starts its own process group, puts the descriptors the pool sent on their
  numbers (stdin/stdout/stderr on 0-2, the transport's and telemetry pipes above),
  asks to be SIGKILLed when the keeper dies, re-seeds random state and runs
  `worker.main` with what the template loaded.

What cannot be forked: a CUDA context (or anything else holding threads or device
handles made before the fork). Load such models with `fork_after = "import"`, in the
worker's own `__init__`.
"""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import gc
import importlib
import json
import os
import random
import selectors
import signal
import socket
import sys
import threading
import time
import traceback

EXIT_BAD_ADAPTER = 3
EXIT_THREADS = 5
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
# prctl(2), for the parent-death signal, the subreaper flag and process names.
_libc = ctypes.CDLL(None, use_errno=True)
#: How long a new worker waits to be re-parented to the keeper (the middle process
#: exits right after forking it, so this is microseconds unless the machine stalls).
REPARENT_WAIT_SECONDS = 5.0
#: Received descriptors are parked above this before they go to their numbers.
PARK_FLOOR = 64
MAX_REQUEST_BYTES = 1 << 20
MAX_FDS = 32


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="snakepit_bridge.fork_server", description=__doc__.splitlines()[0])
    p.add_argument("--adapter", required=True, help="module:Class of the adapter the workers serve")
    p.add_argument("--fork-fd", type=int, required=True, help="SOCK_SEQPACKET socket of fork requests")
    p.add_argument("--preload", default="", help="comma-separated modules the template imports")
    p.add_argument("--fork-after", choices=("import", "init"), default="import")
    p.add_argument("--pool", default="default")
    p.add_argument("--run-id", default="", help="the pool run this fork server belongs to")
    p.add_argument("--telemetry-fd", type=int, default=-1,
                   help="pipe the template's log records go to (written directly: no thread)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------- keeper


def _report(event: dict) -> None:
    # One write per line (< PIPE_BUF): never interleaved, never buffered across a fork.
    os.write(1, (json.dumps(event) + "\n").encode())


def main(argv=None) -> int:
    args = parse_args(argv)
    # Orphans below us (each worker, once its middle process left) come to us, not to
    # init: the keeper reaps them and reports how they ended.
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"fork server: prctl(PR_SET_CHILD_SUBREAPER) failed: errno {ctypes.get_errno()}", file=sys.stderr)
        return 1
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
    signal.set_wakeup_fd(wake_w)
    keeper_pid = os.getpid()
    template = None
    # Made before the first template, so each template can close it.
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ, "commands")
    selector.register(wake_r, selectors.EVENT_READ, "children")
    # The pool asked for a template while the old one was not reaped yet.
    wanted = False

    def start_template() -> int:
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                selector.close()
                os.close(wake_r)
                os.close(wake_w)
                # The keeper's stdout carries its reports and its stdin the pool's
                # commands: the template has neither (its prints go to stderr).
                os.dup2(2, 1)
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.close(devnull)
                code = template_main(args, keeper_pid)
            except BaseException:  # noqa: BLE001 - reported, then the template exits
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        _report({"ev": "template", "pid": pid})
        return pid

    def reap() -> None:
        nonlocal template
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            was_template = pid == template
            if was_template:
                template = None
            _report(
                {
                    "ev": "exit",
                    "pid": pid,
                    "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                    "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                    "template": was_template,
                }
            )

    # The pool waits for this line before it reads the reports that follow.
    os.write(1, f"SNAKEPIT_READY {json.dumps({'pid': keeper_pid, 'role': 'keeper'})}\n".encode())
    template = start_template()
    pending = b""
    while True:
        reap()
        if wanted and template is None:
            template = start_template()
            wanted = False
        for key, _ in selector.select():
            if key.data == "children":
                try:
                    while os.read(wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                continue
            chunk = os.read(0, 4096)
            if not chunk:
                # The pool is done (or gone): the template and the workers die with us.
                return 0
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                try:
                    op = json.loads(line).get("op")
                except ValueError:
                    print(f"fork server: ignored a malformed command {line[:200]!r}", file=sys.stderr)
                    continue
                if op == "template":
                    # Forked once the old one is reaped (at once if it is).
                    wanted = True


# -------------------------------------------------------------------------- template


def _die_with(parent: int) -> None:
    """SIGKILL when `parent` dies (checked after, in case it died first)."""
    if _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        os._exit(1)


def _set_name(name: str) -> None:
    """The process name `ps`/`top` show (15 bytes): a forked process keeps the
    template's command line, so this is how an operator tells them apart."""
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def other_threads() -> list:
    """Threads besides this one, Python's by name and, when there are native ones too
    (e.g. a BLAS pool), every thread by its kernel name: forking copies none of them,
    and locks they hold stay held."""
    current = threading.current_thread()
    python = [f"{t.name} (Python thread)" for t in threading.enumerate() if t is not current]
    try:
        tids = [t for t in os.listdir("/proc/self/task") if int(t) != os.getpid()]
    except OSError:
        return python
    if len(tids) <= len(python):
        return python
    return [f"{_thread_comm(tid)} (thread {tid})" for tid in tids]


def _thread_comm(tid: str) -> str:
    try:
        with open(f"/proc/self/task/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _threads_error(threads: list, args: argparse.Namespace) -> str:
    return (
        f"fork server of pool {args.pool!r}: the template has {len(threads)} other thread(s) "
        f"({', '.join(threads[:8])}) after loading {args.adapter} "
        f"(fork_after = {args.fork_after!r}, preload = {args.preload!r}); a process can only be "
        "forked safely while single-threaded. Start threads in the adapter's commands or "
        "per worker instead, try fork_after = \"import\" if __init__ starts them, pin the "
        "library's thread pool to 1 (python.limit_threads), or use start_method = \"spawn\""
    )


def _send(sock: socket.socket, message: dict) -> None:
    sock.send(json.dumps(message).encode())


def template_main(args: argparse.Namespace, keeper_pid: int) -> int:
    sock = socket.socket(fileno=args.fork_fd)
    _die_with(keeper_pid)
    _set_name("sp-template")
    # What the adapter logs while it imports reaches the pool structured, as the
    # template's (each worker installs its own handler after the fork).
    from . import channel, logs

    direct = channel.DirectChannel(args.telemetry_fd) if args.telemetry_fd >= 0 else None
    template_handler = logs.install(direct, f"{args.pool}-template")
    try:
        for name in filter(None, (m.strip() for m in args.preload.split(","))):
            importlib.import_module(name)
        # What every worker imports after the fork anyway, imported once here (the
        # OpenTelemetry SDK too, when the workers will set it up).
        from . import pipe_server, telemetry, worker  # noqa: F401

        telemetry.preload()

        loaded = worker.resolve_adapter(args.adapter)
        if args.fork_after == "init":
            loaded = worker.instantiate(loaded, args.adapter)
        elif not isinstance(loaded, type):
            loaded = worker.instantiate(loaded, args.adapter)
        # The commands' hints compiled once here (each worker inherits the table),
        # and an unusable hint fails the template with its traceback.
        adapter_class = loaded if isinstance(loaded, type) else type(loaded)
        command_table = getattr(adapter_class, "command_table", None)
        if command_table is not None:
            command_table()
    except BaseException as exc:  # noqa: BLE001 - any import-time failure is the adapter's fault
        print(f"cannot load adapter {args.adapter!r}:", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        # The traceback rides with the answer: the pool's copy of our stderr (shared
        # with the keeper, so it never reaches EOF) may not have it yet.
        _send(
            sock,
            {
                "error": f"cannot load adapter {args.adapter!r}: {type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            },
        )
        return EXIT_BAD_ADAPTER
    threads = other_threads()
    if threads:
        message = _threads_error(threads, args)
        print(message, file=sys.stderr)
        _send(sock, {"error": message})
        return EXIT_THREADS
    # Requests a dead predecessor left in the socket: the pool gave up on each when
    # that template died (forking them now would start workers nobody waits for).
    _discard_pending(sock)
    # Objects made so far stay out of the workers' garbage collections, which would
    # otherwise write to (and so copy) every page that holds one.
    gc.collect()
    gc.freeze()
    _send(sock, {"ready": {"pid": os.getpid(), "fork_after": args.fork_after}})
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, MAX_REQUEST_BYTES, MAX_FDS)
        except InterruptedError:
            continue
        if not msg:
            return 0  # the pool closed its end
        try:
            _send(sock, _serve_fork(msg, fds, loaded, keeper_pid, sock, args, template_handler))
        finally:
            for fd in fds:
                os.close(fd)


def _discard_pending(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        while True:
            try:
                msg, fds, _flags, _addr = socket.recv_fds(sock, MAX_REQUEST_BYTES, MAX_FDS)
            except (BlockingIOError, InterruptedError):
                return
            for fd in fds:
                os.close(fd)
            if not msg:
                return
    finally:
        sock.setblocking(True)


def _serve_fork(msg: bytes, fds: list, loaded, keeper_pid: int, sock, args, handler=None) -> dict:
    """The answer to one fork request, carrying its `id` (a pool that gave up on an
    earlier request skips that one's late answer)."""
    request_id = None
    try:
        request = json.loads(msg)
        request_id = request.get("id")
        argv, targets = list(request["argv"]), list(request["fds"])
        if len(targets) != len(fds):
            raise ValueError(f"{len(fds)} descriptors for {len(targets)} targets")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return {"id": request_id, "error": f"malformed fork request: {exc}"}
    threads = other_threads()
    if threads:
        return {"id": request_id, "error": _threads_error(threads, args)}
    try:
        return {"id": request_id, "pid": _fork_worker(argv, fds, targets, loaded, keeper_pid, sock, handler)}
    except OSError as exc:
        return {"id": request_id, "error": f"fork failed: {exc}"}


def _fork_worker(argv, fds, targets, loaded, keeper_pid: int, sock, handler=None) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid_r, pid_w = os.pipe()
    middle = os.fork()
    if middle == 0:
        # The middle process: fork the worker and leave at once, so the worker is
        # re-parented to the keeper (its nearest living ancestor that reaps).
        try:
            os.close(pid_r)
            pid = os.fork()
            if pid == 0:
                os.close(pid_w)
                _run_worker(argv, fds, targets, loaded, keeper_pid, sock, handler)
            os.write(pid_w, str(pid).encode())
        finally:
            os._exit(0)
    os.close(pid_w)
    answer = b""
    while True:
        chunk = os.read(pid_r, 64)
        if not chunk:
            break
        answer += chunk
    os.close(pid_r)
    os.waitpid(middle, 0)
    if not answer:
        raise OSError("the middle process died before forking the worker")
    return int(answer)


# ---------------------------------------------------------------------------- worker


def _place_fds(fds, targets) -> None:
    """Put each received descriptor on its target number, without clobbering one that
    sits on another's target: all are parked above the targets first."""
    parked = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, PARK_FLOOR) for fd in fds]
    for fd in fds:
        os.close(fd)
    for fd, target in zip(parked, targets):
        os.dup2(fd, target)  # inheritable, like a spawned worker's
        os.close(fd)


def reseed() -> None:
    """Fresh random state: without it every worker forked from one template would draw
    the same numbers."""
    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        try:
            numpy.random.seed()
        except Exception:  # noqa: BLE001 - a numpy without the legacy global state
            pass
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            torch.seed()
        except Exception:  # noqa: BLE001
            pass


def _run_worker(argv, fds, targets, loaded, keeper_pid: int, sock, handler=None) -> None:
    code = 1
    try:
        if handler is not None:
            # The template's log handler writes to the template's pipe: not ours.
            import logging

            logging.getLogger().removeHandler(handler)
        os.setpgid(0, 0)  # its own group, as a spawned worker: stopping it stops its children
        sock.close()  # the template's end; closed before its number is reused below
        _place_fds(fds, targets)
        deadline = time.monotonic() + REPARENT_WAIT_SECONDS
        while os.getppid() != keeper_pid:
            if time.monotonic() > deadline:
                print("fork server: the worker was never re-parented to the keeper", file=sys.stderr)
                os._exit(1)
            time.sleep(0.0001)
        _die_with(keeper_pid)
        if "--worker-id" in argv[:-1]:
            _set_name("sp-" + argv[argv.index("--worker-id") + 1])
        reseed()
        gc.enable()
        from . import worker

        code = worker.main(argv, preloaded=loaded)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the worker's end is the pool's to report
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
