"""One adapter command: how its JSON arguments are bound and checked, and how it is
described (JSON Schema of the arguments and the result).

A `Command` is compiled once per adapter class from the method's signature and type
hints (see hints.py) and bound to each adapter instance. `call_args` runs on every
call, so it avoids `inspect.Signature.bind` (which costs more than a no-op call) for
the usual signature of keyword parameters, and checks a matching scalar with one set
lookup.
"""
from __future__ import annotations

import collections.abc as abc
import dataclasses
import inspect
import json
import logging
import typing
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

from .hints import ArgError, Check, Defs, compile_hint, json_default_value, public_defs

# The parameter name that receives the request Context without an annotation.
CONTEXT_PARAM = "ctx"
_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_MISSING = object()
log = logging.getLogger("snakepit_bridge")
# Return hints of generator commands whose first argument is what each chunk is.
_STREAM_ORIGINS = {
    abc.Iterator,
    abc.Iterable,
    abc.Generator,
    abc.AsyncIterator,
    abc.AsyncIterable,
    abc.AsyncGenerator,
}


class CommandDefinitionError(TypeError):
    """A command whose signature or type hints cannot be used; names the command."""


@dataclass(frozen=True)
class ParamCheck:
    name: str
    # Types accepted as they come, without calling `check.check`.
    fast: FrozenSet[type]
    check: Check


@dataclass(frozen=True)
class Command:
    name: str
    # The adapter attribute it comes from, and the function itself (bound to an
    # adapter instance once `bind` ran; the plain function in the class's table).
    attr: str
    fn: Callable[..., Any]
    signature: inspect.Signature
    streaming: bool
    is_async: bool
    # The parameter that receives the Context (annotated `Context`, or named `ctx`).
    context_param: Optional[str]
    doc: str
    params: Tuple[str, ...] = ()
    required: FrozenSet[str] = frozenset()
    accepted: FrozenSet[str] = frozenset()
    any_keyword: bool = False
    # Only keyword-bindable parameters: binding is two set operations.
    simple: bool = False
    checks: Tuple[ParamCheck, ...] = ()
    # The `**kwargs: X` hint, checking each extra argument.
    extra_check: Optional[Check] = None
    hints: Dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def wants_context(self) -> bool:
        return self.context_param is not None

    @classmethod
    def of(
        cls, name: str, attr: str, member: Callable[..., Any], context_type: type, has_self: bool = True
    ) -> "Command":
        """Compile `member` (the method as the adapter class has it; `has_self` False for
        a staticmethod or classmethod, whose first parameter is not the instance);
        `context_type` is the `Context` class, recognised by annotation. Raises
        CommandDefinitionError."""
        try:
            sig = inspect.signature(member)
        except (TypeError, ValueError) as exc:
            raise CommandDefinitionError(f"command {name!r}: no usable signature: {exc}") from exc
        if not has_self:
            # The class-level table calls it bound like a method: give it a `self`.
            sig = sig.replace(
                parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)]
                + list(sig.parameters.values())
            )
        hints = _resolved_hints(name, member)
        params = list(sig.parameters.values())[1:]  # drop `self`
        context_param = next(
            (p.name for p in params if _is_context(hints.get(p.name), context_type)),
            CONTEXT_PARAM if CONTEXT_PARAM in sig.parameters else None,
        )
        params = [p for p in params if p.name != context_param]
        memo: Dict[Any, Check] = {}
        checks: List[ParamCheck] = []
        extra_check = None
        try:
            for p in params:
                if p.name not in hints:
                    continue
                check = compile_hint(hints[p.name], memo)
                if p.kind is p.VAR_KEYWORD:
                    extra_check = check if check.checks else None
                elif check.checks and p.kind in _KEYWORD_KINDS:
                    checks.append(ParamCheck(p.name, check.fast, check))
        except Exception as exc:
            raise CommandDefinitionError(f"command {name!r}: unusable type hint: {exc}") from exc
        keyword = [p for p in params if p.kind in _KEYWORD_KINDS]
        return cls(
            name=name,
            attr=attr,
            fn=member,
            signature=sig,
            streaming=inspect.isgeneratorfunction(member) or inspect.isasyncgenfunction(member),
            is_async=inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member),
            context_param=context_param,
            doc=inspect.getdoc(member) or "",
            params=tuple(p.name for p in params if p.kind is not p.VAR_KEYWORD),
            required=frozenset(p.name for p in keyword if p.default is p.empty),
            accepted=frozenset(p.name for p in keyword),
            any_keyword=any(p.kind is p.VAR_KEYWORD for p in params),
            simple=all(p.kind in _KEYWORD_KINDS or p.kind is p.VAR_KEYWORD for p in params),
            checks=tuple(checks),
            extra_check=extra_check,
            hints=hints,
        )

    def bind(self, fn: Callable[..., Any]) -> "Command":
        """This command calling `fn` (the method bound to an adapter instance)."""
        return dataclasses.replace(self, fn=fn)

    # -- per call ---------------------------------------------------------------

    def call_args(self, args: Dict[str, Any], ctx: Any) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        """Bind and check JSON arguments (a dict the caller gives up) as (positional,
        keyword) arguments. Raises ArgError for a value that does not fit its hint,
        TypeError for arguments that do not fit the signature."""
        context_param = self.context_param
        if context_param is not None and context_param in args:
            raise TypeError(f"{context_param!r} is reserved for the request context")
        if not self.simple:
            return self._bind_general(args, ctx)
        if self.required:
            missing = self.required.difference(args)
            if missing:
                raise TypeError(f"missing a required argument: {sorted(missing)[0]!r}")
        if args and not self.accepted.issuperset(args):
            if not self.any_keyword:
                extra = sorted(set(args) - self.accepted)[0]
                raise TypeError(f"got an unexpected keyword argument {extra!r}")
            if self.extra_check is not None:
                self._check_extra(args)
        for pc in self.checks:
            value = args.get(pc.name, _MISSING)
            if value is _MISSING or type(value) in pc.fast:
                continue
            args[pc.name] = pc.check.check(value, pc.name)
        if context_param is not None:
            args[context_param] = ctx
        return (), args

    def _check_extra(self, args: Dict[str, Any]) -> None:
        check = self.extra_check
        assert check is not None
        for key in [k for k in args if k not in self.accepted]:
            args[key] = check.check(args[key], key)

    def _bind_general(self, args: Dict[str, Any], ctx: Any) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        if self.context_param is not None:
            args[self.context_param] = ctx
        # `self` is bound already once `bind` ran (the class table's plain function
        # is never called): bind without the first parameter.
        sig = self.signature
        sig = sig.replace(parameters=list(sig.parameters.values())[1:])
        bound = sig.bind(**args)
        for pc in self.checks:
            if pc.name in bound.arguments:
                value = bound.arguments[pc.name]
                if type(value) not in pc.fast:
                    bound.arguments[pc.name] = pc.check.check(value, pc.name)
        return bound.args, bound.kwargs

    # -- description ------------------------------------------------------------

    def args_schema(self) -> Dict[str, Any]:
        """The arguments as one JSON Schema object (named types under "$defs")."""
        defs = Defs()
        memo: Dict[Any, Check] = {}
        props: Dict[str, Any] = {}
        required: List[str] = []
        extra: Any = False
        for p in list(self.signature.parameters.values())[1:]:
            if p.name == self.context_param:
                continue
            hint = self.hints.get(p.name, Any)
            schema = compile_hint(hint, memo).schema(defs)
            if p.kind is p.VAR_KEYWORD:
                extra = schema if schema else True
                continue
            if p.kind not in _KEYWORD_KINDS:
                continue
            if p.default is p.empty:
                required.append(p.name)
            else:
                shown, value = json_default_value(p.default)
                if shown:
                    schema = {**schema, "default": value}
            props[p.name] = schema
        out: Dict[str, Any] = {"title": f"{self.name} arguments", "type": "object", "properties": props}
        if required:
            out["required"] = required
        out["additionalProperties"] = extra
        if defs:
            out["$defs"] = public_defs(defs)
        return out

    def returns_schema(self) -> Optional[Dict[str, Any]]:
        """The result's JSON Schema (each chunk's when streaming); None unhinted."""
        if "return" not in self.hints:
            return None
        hint = self.hints["return"]
        if self.streaming:
            origin = typing.get_origin(hint)
            if origin not in _STREAM_ORIGINS:
                return None
            args = typing.get_args(hint)
            hint = args[0] if args else Any
        defs = Defs()
        schema = compile_hint(hint, {}).schema(defs)
        if defs:
            schema = {**schema, "$defs": public_defs(defs)}
        return schema

    def describe(self) -> Dict[str, Any]:
        """What `describe` reports of this command (also the schemas as JSON)."""
        return {
            "name": self.name,
            "streaming": self.streaming,
            "async": self.is_async,
            "params": list(self.params),
            "doc": self.doc,
            "args_schema": self.args_schema(),
            "returns_schema": self.returns_schema(),
        }


def _resolved_hints(name: str, member: Callable[..., Any]) -> Dict[str, Any]:
    """The member's type hints resolved; one that cannot be (a name imported only
    under TYPE_CHECKING, a forward reference never defined) is left out, so its
    parameter is not checked, and a warning names it."""
    try:
        return typing.get_type_hints(member)
    except Exception:  # NameError for a name not defined, and worse
        pass
    fn = inspect.unwrap(member)
    module_globals = getattr(fn, "__globals__", {})
    hints: Dict[str, Any] = {}
    for param, annotation in getattr(fn, "__annotations__", {}).items():
        try:
            hints[param] = typing.get_type_hints(_Annotated(annotation), module_globals)["x"]
        except Exception as exc:  # noqa: BLE001
            log.warning(
                "command %r: the type hint of %r (%r) cannot be resolved (%s: %s); "
                "that argument is not checked",
                name, param, annotation, type(exc).__name__, exc,
            )
    return hints


class _Annotated:
    """One annotation, for `typing.get_type_hints` to resolve alone."""

    def __init__(self, annotation: Any) -> None:
        self.__annotations__ = {"x": annotation}


def _is_context(hint: Any, context_type: type) -> bool:
    """`Context`, also as `Optional[Context]` or `Annotated[Context, ...]`."""
    if hint is context_type:
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return _is_context(typing.get_args(hint)[0], context_type)
    if origin is typing.Union or type(hint).__name__ == "UnionType":
        return any(a is context_type for a in typing.get_args(hint))
    return False


def schema_json(schema: Optional[Dict[str, Any]]) -> str:
    return "" if schema is None else json.dumps(schema, separators=(",", ":"), sort_keys=False)


__all__ = ["ArgError", "Command", "CommandDefinitionError", "CONTEXT_PARAM", "schema_json"]
