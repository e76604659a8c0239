"""A stand-in for an ML adapter: its import burns CPU (as importing numpy/torch and
building a model does) and its __init__ loads 200 MB of weights.

HEAVY_IMPORT_CPU_S (default 0.3) and HEAVY_MB (default 200) size it."""
import os
import time

from snakepit_bridge.example import ExampleAdapter


def _burn(seconds: float) -> int:
    end = time.process_time() + seconds
    n = 0
    while time.process_time() < end:
        n += 1
    return n


_burn(float(os.environ.get("HEAVY_IMPORT_CPU_S", "0.3")))
MB = int(os.environ.get("HEAVY_MB", "200"))


class Heavy(ExampleAdapter):
    def __init__(self):
        super().__init__()
        # Non-zero bytes, so every page is really resident (and, forked after init,
        # shared until written).
        self.weights = bytes(range(256)) * (MB * 4096)
