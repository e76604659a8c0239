"""Adapters: the user's Python code, as a class whose decorated methods are commands.

    class MyAdapter(Adapter):
        @command
        def add(self, a: int, b: int) -> int:
            return a + b

A command receives the call's JSON arguments as keyword arguments. A generator command
streams one chunk per yielded value. A command that declares a parameter named `ctx`
receives the request `Context` (ids, deadline, session).
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple

CONTEXT_PARAM = "ctx"


def command(fn: Optional[Callable] = None, *, name: Optional[str] = None):
    """Mark an adapter method as a command; `name` overrides the method name."""

    def mark(f: Callable) -> Callable:
        f.__snakepit_command__ = name or f.__name__
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
    # Seconds left before the caller gives up, or None without a deadline.
    deadline_seconds: Optional[float]
    session: Optional[Session]
    # Raw per-request metadata (W3C trace context among it).
    metadata: Mapping[str, str]


_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@dataclass(frozen=True)
class Command:
    name: str
    fn: Callable[..., Any]
    signature: inspect.Signature
    streaming: bool
    wants_context: bool
    doc: str
    # For signatures of plain keyword parameters (nearly all), binding is two set
    # operations instead of `Signature.bind`, which costs more than a no-op call.
    required: FrozenSet[str] = frozenset()
    accepted: FrozenSet[str] = frozenset()
    any_keyword: bool = False
    simple: bool = False

    @classmethod
    def of(cls, name: str, fn: Callable[..., Any], member: Callable[..., Any]) -> "Command":
        sig = inspect.signature(fn)
        params = [p for p in sig.parameters.values() if p.name != CONTEXT_PARAM]
        return cls(
            name=name,
            fn=fn,
            signature=sig,
            streaming=inspect.isgeneratorfunction(member),
            wants_context=CONTEXT_PARAM in sig.parameters,
            doc=inspect.getdoc(member) or "",
            required=frozenset(
                p.name for p in params if p.kind in _KEYWORD_KINDS and p.default is p.empty
            ),
            accepted=frozenset(p.name for p in params if p.kind in _KEYWORD_KINDS),
            any_keyword=any(p.kind is p.VAR_KEYWORD for p in params),
            simple=all(p.kind in _KEYWORD_KINDS or p.kind is p.VAR_KEYWORD for p in params),
        )

    @property
    def params(self) -> List[str]:
        return [p for p in self.signature.parameters if p != CONTEXT_PARAM]

    def call_args(
        self, args: Dict[str, Any], ctx: Optional[Context]
    ) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        """Bind JSON arguments (a dict the caller gives up) to the signature as
        (positional, keyword) arguments; raises TypeError when they do not fit."""
        if CONTEXT_PARAM in args:
            raise TypeError(f"'{CONTEXT_PARAM}' is reserved for the request context")
        if self.simple:
            missing = self.required.difference(args) if self.required else ()
            if missing:
                raise TypeError(f"missing a required argument: {sorted(missing)[0]!r}")
            if not self.any_keyword and args and not self.accepted.issuperset(args):
                extra = sorted(set(args) - self.accepted)[0]
                raise TypeError(f"got an unexpected keyword argument {extra!r}")
            if self.wants_context:
                args[CONTEXT_PARAM] = ctx
            return (), args
        if self.wants_context:
            args[CONTEXT_PARAM] = ctx
        bound = self.signature.bind(**args)
        return bound.args, bound.kwargs


class Adapter:
    """Base class for adapters. Subclasses mark commands with `@command`."""

    def __init__(self) -> None:
        self._commands: Dict[str, Command] = {}
        for attr in dir(type(self)):
            member = getattr(type(self), attr, None)
            cmd_name = getattr(member, "__snakepit_command__", None)
            if cmd_name is None:
                continue
            self._commands[cmd_name] = Command.of(cmd_name, getattr(self, attr), member)

    @property
    def name(self) -> str:
        cls = type(self)
        return f"{cls.__module__}:{cls.__qualname__}"

    def commands(self) -> Dict[str, Command]:
        return self._commands

    def lookup(self, name: str) -> Optional[Command]:
        return self._commands.get(name)

    # Hooks an adapter may override.
    def on_session_start(self, session: Session) -> None:
        """Called when a session is created in this worker."""

    def on_session_end(self, session: Session) -> None:
        """Called when a session is closed or expires."""
