"""Python's own process pools on the same work, for `cargo bench -p snakepit --bench peers`.

    python stdlib_pools.py --workers 4 --in-flight 16 --seconds 1 --workload ping

Runs the example adapter's `ping` or `spin` (the very functions Snakepit's workers run,
called on an adapter instance in each pool process) on `multiprocessing.Pool` and on
`concurrent.futures.ProcessPoolExecutor` (default start method, fork on Linux), keeping
`--in-flight` calls outstanding: each completion callback submits the next call. At 1
in flight a plain loop (`pool.apply`, `executor.submit(...).result()`) is measured too
and the faster of the two is reported: neither client style wins everywhere (the
callback chain fights the pool's own threads for the GIL), and the peers get their
best showing. Prints one JSON line per system:
{"system", "micros": [latency of each call], "errors", "seconds", "machine_cpu_s"}
(machine_cpu_s: busy CPU time of the whole machine during the run, from /proc/stat).
The client is Python here and Rust for Snakepit: both sides' client costs are in their
figures.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import threading
import time

from snakepit_bridge.example import ExampleAdapter

_ADAPTER = None
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time all cores spent busy since boot (user, nice, system, irq, softirq)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
    return (user + nice + system + irq + softirq) / _CLK_TCK


def _init() -> None:
    global _ADAPTER
    _ADAPTER = ExampleAdapter()


def ping():
    return _ADAPTER.ping()


def spin(ms: float):
    return _ADAPTER.spin(ms=ms)


class Driver:
    """Keeps `in_flight` calls outstanding until the deadline; times each call."""

    def __init__(self, submit, in_flight: int, seconds: float) -> None:
        self.submit = submit  # submit(on_done) starts one call
        self.in_flight = in_flight
        self.seconds = seconds
        self.latencies = []
        self.errors = 0
        self.lock = threading.Lock()
        self.outstanding = 0
        self.done = threading.Event()

    def _start_one(self) -> None:
        started = time.perf_counter()

        def on_done(ok: bool) -> None:
            now = time.perf_counter()
            with self.lock:
                if ok:
                    self.latencies.append(now - started)
                else:
                    self.errors += 1
                again = now < self.deadline
                if not again:
                    self.outstanding -= 1
                    if self.outstanding == 0:
                        self.done.set()
            if again:
                self._start_one()

        self.submit(on_done)

    def run(self):
        cpu = machine_busy_seconds()
        self.start = time.perf_counter()
        self.deadline = self.start + self.seconds
        self.outstanding = self.in_flight
        for _ in range(self.in_flight):
            self._start_one()
        self.done.wait(self.seconds + 30)
        elapsed = time.perf_counter() - self.start
        return {
            "micros": [round(s * 1e6) for s in self.latencies],
            "errors": self.errors,
            "seconds": elapsed,
            "machine_cpu_s": machine_busy_seconds() - cpu,
        }


def sequential(call, seconds: float) -> dict:
    """One call at a time from this thread."""
    latencies, errors = [], 0
    cpu = machine_busy_seconds()
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        t = time.perf_counter()
        if t >= deadline:
            break
        try:
            call()
            latencies.append(time.perf_counter() - t)
        except Exception:  # noqa: BLE001 - counted, like the Rust side counts errors
            errors += 1
    return {
        "micros": [round(s * 1e6) for s in latencies],
        "errors": errors,
        "seconds": time.perf_counter() - start,
        "machine_cpu_s": machine_busy_seconds() - cpu,
    }


def measure(system: str, workers: int, in_flight: int, seconds: float, fn, args) -> dict:
    if system == "multiprocessing.Pool":
        pool = multiprocessing.Pool(workers, initializer=_init)

        def submit(on_done):
            pool.apply_async(fn, args, callback=lambda _r: on_done(True), error_callback=lambda _e: on_done(False))

        call = lambda: pool.apply(fn, args)
        close = lambda: (pool.close(), pool.join())
    else:
        pool = concurrent.futures.ProcessPoolExecutor(workers, initializer=_init)

        def submit(on_done):
            fut = pool.submit(fn, *args)
            fut.add_done_callback(lambda f: on_done(f.exception() is None))

        call = lambda: pool.submit(fn, *args).result()
        close = lambda: pool.shutdown(wait=True)
    chained = lambda s: Driver(submit, in_flight, s).run()
    styles = [chained, lambda s: sequential(call, s)] if in_flight == 1 else [chained]
    try:
        results = []
        for run in styles:
            run(min(0.3, seconds))  # warm up: processes started, caches hot
            results.append(run(seconds))
        result = max(results, key=lambda r: len(r["micros"]) / r["seconds"])
    finally:
        close()
    result["system"] = system
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--in-flight", type=int, default=1)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--workload", choices=["ping", "spin"], default="ping")
    p.add_argument("--spin-ms", type=float, default=1.0)
    p.add_argument("--systems", default="multiprocessing.Pool,ProcessPoolExecutor")
    a = p.parse_args()
    fn, args = (ping, ()) if a.workload == "ping" else (spin, (a.spin_ms,))
    for system in a.systems.split(","):
        print(json.dumps(measure(system, a.workers, a.in_flight, a.seconds, fn, args)), flush=True)


if __name__ == "__main__":
    main()
