"""snakepit_bridge: the worker side of Snakepit.

A Snakepit pool (Rust) starts `python -m snakepit_bridge --adapter module:Class` once per
worker and calls the adapter's commands over gRPC. Write an adapter by subclassing
`Adapter` and marking methods with `@command`; see `snakepit_bridge.example`.
Record metrics the pool exports with its own through `snakepit_bridge.metrics`;
Python's `logging` reaches the pool's log as structured records (see `logs`).
"""
from . import metrics
from .adapter import Adapter, Context, Session, command

__all__ = ["Adapter", "Context", "Session", "command", "metrics"]
__version__ = "0.1.0"
