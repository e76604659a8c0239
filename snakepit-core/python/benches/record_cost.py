"""What a record costs Python code, per call, side by side in one run: the user-metric
API (with and without labels, and on a `labels()` series) and `logging` through the
pool's channel handler against a bare NullHandler baseline.

    target/snakepit-venv/bin/python snakepit-core/python/benches/record_cost.py

The channel here writes to a pipe a thread of this process drains (the pool's side
costs nothing here); in a worker the pool reads it. Timings are the best of 5 runs
of N calls (machines are noisy; compare rows of one run).
"""
import logging
import os
import sys
import threading
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from snakepit_bridge import channel, logs, metrics  # noqa: E402

N = 200_000


def best(stmt, number=N):
    return min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e6


def main():
    c = metrics.counter("bench_counter")
    h = metrics.histogram("bench_histogram")
    g = metrics.gauge("bench_gauge")
    small = c.labels(model="small")
    small_h = h.labels(model="small")
    rows = [
        ("baseline: an empty function call", lambda: None),
        ("counter.add(1)", lambda: c.add(1)),
        ('counter.add(3, model="small")', lambda: c.add(3, model="small")),
        ('counter.labels(model="small").add(3), bound once', lambda: small.add(3)),
        ("gauge.set(5)", lambda: g.set(5)),
        ("histogram.record(0.03)", lambda: h.record(0.03)),
        ('histogram.record(0.03, model="small")', lambda: h.record(0.03, model="small")),
        ("histogram, bound once", lambda: small_h.record(0.03)),
    ]
    print(f"{'operation':52} {'µs/call':>8}")
    for label, stmt in rows:
        print(f"{label:52} {best(stmt):8.3f}")

    # logging: NullHandler baseline vs the channel handler (writer thread included).
    null = logging.getLogger("bench.null")
    null.propagate = False
    null.addHandler(logging.NullHandler())
    null.setLevel(logging.INFO)
    r, w = os.pipe()

    def drain():
        while os.read(r, 1 << 16):
            pass

    threading.Thread(target=drain, daemon=True).start()
    chan = channel.open_channel(w)
    logs.install(chan, "bench-1")
    via = logging.getLogger("bench.channel")
    n = 20_000
    print(f"{'logging.info(...) with a NullHandler (baseline)':52} {best(lambda: null.info('x %d', 1), n):8.3f}")
    print(f"{'logging.info(...) through the pool channel':52} {best(lambda: via.info('x %d', 1), n):8.3f}")
    chan.close()
    print(f"channel: {chan.written} lines written, {chan.dropped} dropped (capacity {chan.capacity})")


if __name__ == "__main__":
    main()
