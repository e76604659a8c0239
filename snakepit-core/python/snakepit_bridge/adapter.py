"""Adapters: the user's Python code, as a class whose decorated methods are commands.

    from typing import Literal, Optional
    from snakepit_bridge import Adapter, Context, command

    class MyAdapter(Adapter):
        @command
        def add(self, a: int, b: int = 0) -> int:
            return a + b

        @command
        async def fetch(self, url: str, ctx: Context) -> dict[str, str]:
            ...

A command receives the call's JSON arguments as keyword arguments, checked against
its type hints first (a mismatch fails the call as InvalidArgs, naming the parameter,
the expected type and what arrived; see hints.py for the hints understood). A
generator command streams one chunk per yielded value. `async def` commands and async
generators run on the worker's event loop (aio.py) and are cancelled at their
deadline. A parameter annotated `Context` (or named `ctx`) receives the request
context (ids, deadline, session).

Commands are collected when the class is created (`__init_subclass__`), so an
adapter's `__init__` need not call `super().__init__()`; their hints are compiled the
first time the worker asks for the commands (at start-up), once per class.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import (
    Any,
    Awaitable,
    Callable,
    ClassVar,
    Dict,
    Mapping,
    Optional,
    TypeVar,
    Union,
    overload,
)

from .commands import CONTEXT_PARAM, Command, CommandDefinitionError

F = TypeVar("F", bound=Callable[..., Any])
_MARKER = "__snakepit_command__"


@overload
def command(fn: F, /) -> F: ...


@overload
def command(*, name: Optional[str] = None) -> Callable[[F], F]: ...


def command(fn: Optional[F] = None, /, *, name: Optional[str] = None) -> Union[F, Callable[[F], F]]:
    """Mark an adapter method as a command; `name` overrides the method name.

    Use it bare (`@command`) or with arguments (`@command(name="predict")`); the
    method keeps its type for type checkers."""

    def mark(f: F) -> F:
        setattr(f, _MARKER, name or f.__name__)
        return f

    return mark(fn) if fn is not None else mark


@dataclass
class Session:
    """State that lives in this worker for as long as the session does."""

    id: str
    metadata: Dict[str, Any]
    state: Dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.monotonic)
    requests: int = 0


@dataclass
class Context:
    """What a command may want to know about the call it serves."""

    request_id: str
    correlation_id: str
    # Seconds left before the caller gives up when the call arrived, or None.
    deadline_seconds: Optional[float]
    session: Optional[Session]
    # Raw per-request metadata (W3C trace context among it).
    metadata: Mapping[str, str]
    # When the call arrived, by `time.monotonic()`.
    received_at: float = field(default_factory=time.monotonic)

    def time_left(self) -> Optional[float]:
        """Seconds left before the deadline now (never below 0), or None without one."""
        if self.deadline_seconds is None:
            return None
        return max(self.deadline_seconds - (time.monotonic() - self.received_at), 0.0)


class Adapter:
    """Base class for adapters. Subclasses mark commands with `@command`.

    Hooks (each may be `async def`; async ones run on the worker's event loop):
    `on_start` once before the worker takes requests (make clients and pools here),
    `on_stop` when it stops, `on_session_start` / `on_session_end` per session."""

    # Command name -> attribute name, collected when the subclass is created.
    _snakepit_attrs: ClassVar[Dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        members: Dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            members.update(vars(klass))
        found: Dict[str, str] = {}
        for attr, member in members.items():
            cmd_name = getattr(member, _MARKER, None)
            if cmd_name is None and isinstance(member, (staticmethod, classmethod)):
                # `@staticmethod` over `@command`: the mark is on the function inside.
                cmd_name = getattr(member.__func__, _MARKER, None)
            if not isinstance(cmd_name, str):
                continue
            if cmd_name in found:
                raise CommandDefinitionError(
                    f"{cls.__qualname__}: methods {found[cmd_name]!r} and {attr!r} are both "
                    f"command {cmd_name!r}; give one another name (@command(name=...))"
                )
            if attr in _RESERVED:
                raise CommandDefinitionError(
                    f"{cls.__qualname__}.{attr}: {attr!r} is a method of Adapter itself; give the "
                    f"method another name and keep the command's with @command(name={cmd_name!r})"
                )
            found[cmd_name] = attr
        cls._snakepit_attrs = found

    def __init__(self) -> None:
        """Nothing to do: commands were collected with the class."""

    @classmethod
    def command_table(cls) -> Dict[str, Command]:
        """This class's commands, compiled once (raises CommandDefinitionError)."""
        table: Optional[Dict[str, Command]] = cls.__dict__.get("_snakepit_table")
        if table is None:
            table = {
                name: Command.of(
                    name,
                    attr,
                    getattr(cls, attr),
                    Context,
                    has_self=not isinstance(
                        inspect.getattr_static(cls, attr), (staticmethod, classmethod)
                    ),
                )
                for name, attr in cls._snakepit_attrs.items()
            }
            cls._snakepit_table = table  # type: ignore[attr-defined]
        return table

    @property
    def name(self) -> str:
        cls = type(self)
        return f"{cls.__module__}:{cls.__qualname__}"

    def commands(self) -> Dict[str, Command]:
        """The commands, bound to this instance."""
        bound: Optional[Dict[str, Command]] = self.__dict__.get("_snakepit_bound")
        if bound is None:
            bound = {n: c.bind(getattr(self, c.attr)) for n, c in self.command_table().items()}
            self.__dict__["_snakepit_bound"] = bound
        return bound

    def lookup(self, name: str) -> Optional[Command]:
        return self.commands().get(name)

    # Hooks an adapter may override (sync or async).
    def on_start(self) -> Optional[Awaitable[None]]:
        """Called once in the worker before it takes requests."""
        return None

    def on_stop(self) -> Optional[Awaitable[None]]:
        """Called once when the worker stops (SIGTERM), after in-flight calls."""
        return None

    def on_session_start(self, session: Session) -> Optional[Awaitable[None]]:
        """Called when a session is created in this worker."""
        return None

    def on_session_end(self, session: Session) -> Optional[Awaitable[None]]:
        """Called when a session is closed or expires."""
        return None


# Adapter's own attributes: a command method may not replace them.
_RESERVED = frozenset(
    {"name", "commands", "command_table", "lookup", "on_start", "on_stop", "on_session_start", "on_session_end"}
)

__all__ = ["Adapter", "Command", "CONTEXT_PARAM", "Context", "Session", "command"]
