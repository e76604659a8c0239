"""What checking arguments against type hints costs per call, side by side in one run:
the same command unhinted (names and count checked, as before hints) and hinted, for
a few scalars, a list of floats and a dataclass; the binding step alone
(`Command.call_args`) and a whole `Dispatcher.execute` (decode, bind, call, encode).

    target/snakepit-venv/bin/python snakepit-core/python/benches/arg_checks.py [--quick]

The target: at most 2 µs added per call for a few scalar parameters. Timings are the
best of 5 runs of N calls (machines are noisy; compare rows of one run).
"""
import dataclasses
import json
import os
import sys
import timeit
from typing import List, Literal, Optional

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from snakepit_bridge import Adapter, command  # noqa: E402
from snakepit_bridge import _proto as pb  # noqa: E402
from snakepit_bridge.dispatch import Dispatcher  # noqa: E402

N = 20_000 if "--quick" in sys.argv else 200_000


@dataclasses.dataclass
class Point:
    x: float
    y: float


class Unhinted(Adapter):
    @command
    def scalars(self, n, scale=1.0, name="a", flag=False):
        return n

    @command
    def floats(self, xs):
        return 0

    @command
    def point(self, p):
        return 0


class Hinted(Adapter):
    @command
    def scalars(self, n: int, scale: float = 1.0, name: str = "a", flag: bool = False) -> int:
        return n

    @command
    def floats(self, xs: List[float]) -> int:
        return 0

    @command
    def point(self, p: Point) -> int:
        return 0


class Rich(Adapter):
    @command
    def scalars(
        self, n: int, scale: Optional[float] = None, name: Literal["a", "b"] = "a", flag: bool = False
    ) -> int:
        return n


CASES = [
    ("4 scalars (int, float, str, bool)", "scalars", {"n": 3, "scale": 2.5, "name": "a", "flag": True}),
    ("list[float] of 16", "floats", {"xs": [float(i) for i in range(16)]}),
    ("dataclass Point{x, y}", "point", {"p": {"x": 1.0, "y": 2.0}}),
]


def best(fn, number=N):
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def bind_cost(adapter, name, args):
    cmd = adapter.lookup(name)
    return best(lambda: cmd.call_args(dict(args), None))


def execute_cost(adapter, name, args):
    d = Dispatcher(adapter)
    req = pb.ExecuteRequest(command=name, args_json=json.dumps(args).encode())
    return best(lambda: d.execute(req, {}, None))


def main():
    plain, hinted = Unhinted(), Hinted()
    print(f"per call, µs (best of 5 × {N:,}); baseline and candidate in this run\n")
    print(f"{'arguments':36} {'step':16} {'unhinted':>9} {'hinted':>9} {'added':>8}")
    for label, name, args in CASES:
        for step, fn in (("call_args", bind_cost), ("execute", execute_cost)):
            a, b = fn(plain, name, args), fn(hinted, name, args)
            print(f"{label:36} {step:16} {a:9.2f} {b:9.2f} {b - a:+8.2f}")
    args = CASES[0][2]
    a, b = bind_cost(plain, "scalars", args), bind_cost(Rich(), "scalars", args)
    print(f"{'4 scalars, Optional/Literal hints':36} {'call_args':16} {a:9.2f} {b:9.2f} {b - a:+8.2f}")
    print("\ntarget: added ≤ 2 µs per call for a few scalar parameters")


if __name__ == "__main__":
    main()
