"""Type hints as argument checks and as JSON Schema.

`compile_hint(hint)` turns one resolved type hint into a `Check`: `check(value, path)`
returns the value the command receives (a dict becomes the dataclass it stands for, an
int becomes the float the hint asks for) or raises `ArgError` naming the argument's
path, the expected type and what arrived; `schema(defs)` is the JSON Schema (2020-12)
of what the hint accepts, with named types (dataclasses, TypedDicts, enums, pydantic
models) put in `defs` and referenced as `#/$defs/Name`.

Supported: `int`, `float`, `str`, `bool`, `None`, `Any`/`object`, `list[X]`,
`Sequence[X]`, `tuple[X, ...]`, `tuple[A, B]`, `set[X]`, `frozenset[X]`,
`dict[str, X]`/`Mapping[str, X]`, `Optional[X]`, `Union[...]`/`X | Y`,
`Literal[...]`, `Annotated[X, ...]`, `NewType`, `Enum` subclasses, dataclasses,
`TypedDict`s and, when pydantic is installed, its models. Any other hint (a class
JSON cannot carry, e.g. `numpy.ndarray`) is not checked: the value passes as it came,
and its schema is `{}`.

Written here rather than taken from pydantic or typeguard: pydantic is a heavy import
that many adapters do not want in every worker, and typeguard neither converts JSON
objects into dataclasses nor describes hints as JSON Schema. The per-call cost matters
(checks run on every call): a scalar argument whose type matches is accepted by one
`type(value) in accepted` test, without a call (see `Check.fast`).
"""
from __future__ import annotations

import collections.abc as abc
import dataclasses
import enum
import inspect
import json
import sys
import typing
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

try:  # Python >= 3.10: `X | Y` unions are types.UnionType
    from types import UnionType as _UnionType
except ImportError:  # pragma: no cover - Python 3.9
    _UnionType = None  # type: ignore[assignment,misc]

Schema = Dict[str, Any]


class Defs(Dict[str, Schema]):
    """Named schemas ("$defs"), and which class each name stands for."""

    def __init__(self) -> None:
        super().__init__()
        self.owners: Dict[str, type] = {}

_NONE_TYPE = type(None)
_JSON_SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean"}
_REPR_LIMIT = 40


class ArgError(TypeError):
    """An argument that does not fit its type hint."""

    def __init__(self, path: str, expected: str, got: object, detail: str = "") -> None:
        self.path = path
        self.expected = expected
        self.got = got
        self.detail = detail
        what = detail or f"got {describe_value(got)}"
        super().__init__(f"argument {path!r} must be {expected}, {what}")


def describe_value(value: object) -> str:
    """`str 'oops'`, `int 3`, `dict` (with its keys) — short, for error messages."""
    name = "None" if value is None else type(value).__name__
    if isinstance(value, dict):
        keys = ", ".join(sorted(str(k) for k in value)[:6])
        return f"dict with keys [{keys}]" if value else "empty dict"
    if isinstance(value, list):
        return f"list of {len(value)}"
    if value is None:
        return "None"
    text = repr(value)
    if len(text) > _REPR_LIMIT:
        text = text[: _REPR_LIMIT - 3] + "..."
    return f"{name} {text}"


class Check:
    """One compiled hint: what it accepts, what it converts, how it is described."""

    # Exact types accepted as they are, without calling `check` (the fast path).
    fast: FrozenSet[type] = frozenset()
    label = "Any"
    # False for hints that accept anything (the per-call loop skips them).
    checks = True

    def check(self, value: Any, path: str) -> Any:
        return value

    def schema(self, defs: Defs) -> Schema:
        return {}


class _Anything(Check):
    checks = False

    def __init__(self, label: str = "Any") -> None:
        self.label = label


class _Scalar(Check):
    def __init__(self, tp: type) -> None:
        self.tp = tp
        self.fast = frozenset({tp})
        self.label = tp.__name__

    def check(self, value: Any, path: str) -> Any:
        if type(value) is self.tp:
            return value
        # JSON has one number type: an integer passes for a float (as the float the
        # hint asks for) and an integral float for an int (as JSON Schema's
        # "integer" does); bool never passes for a number.
        if self.tp is float and type(value) is int:
            try:
                return float(value)
            except OverflowError:
                raise ArgError(path, self.label, value, "but it is too large for a float") from None
        if self.tp is int and type(value) is float and value.is_integer():
            return int(value)
        raise ArgError(path, self.label, value)

    def schema(self, defs: Defs) -> Schema:
        return {"type": _JSON_SCALARS[self.tp]}


class _NoneCheck(Check):
    fast = frozenset({_NONE_TYPE})
    label = "None"

    def check(self, value: Any, path: str) -> Any:
        if value is None:
            return None
        raise ArgError(path, "None", value)

    def schema(self, defs: Defs) -> Schema:
        return {"type": "null"}


class _Sequence(Check):
    """list[X], Sequence[X], tuple[X, ...], set[X], frozenset[X]: a JSON array."""

    def __init__(self, item: Check, into: type, label: str) -> None:
        self.item = item
        self.into = into
        self.label = label
        if into is list and not item.checks:
            self.fast = frozenset({list})

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, (list, tuple)):
            raise ArgError(path, self.label, value)
        item = self.item
        if item.checks:
            fast = item.fast
            out = None
            for i, v in enumerate(value):
                if type(v) in fast:
                    continue
                converted = item.check(v, f"{path}[{i}]")
                if converted is not v:
                    if out is None:
                        out = list(value)
                    out[i] = converted
            if out is not None:
                value = out
        if type(value) is not self.into:
            try:
                value = self.into(value)
            except TypeError as exc:  # e.g. unhashable items for a set
                raise ArgError(path, self.label, value, f"but {exc}") from None
        return value

    def schema(self, defs: Defs) -> Schema:
        # No uniqueItems for a set: duplicates are accepted (and merged).
        return {"type": "array", "items": self.item.schema(defs)}


class _FixedTuple(Check):
    """tuple[A, B, ...]: a JSON array of exactly those items."""

    def __init__(self, items: List[Check]) -> None:
        self.items = items
        self.label = f"tuple[{', '.join(i.label for i in items)}]"

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, (list, tuple)) or len(value) != len(self.items):
            raise ArgError(path, self.label, value)
        return tuple(c.check(v, f"{path}[{i}]") for i, (c, v) in enumerate(zip(self.items, value)))

    def schema(self, defs: Defs) -> Schema:
        n = len(self.items)
        return {
            "type": "array",
            "prefixItems": [c.schema(defs) for c in self.items],
            "minItems": n,
            "maxItems": n,
        }


class _Mapping(Check):
    """dict[str, X], Mapping[str, X]: a JSON object."""

    def __init__(self, value: Check, label: str) -> None:
        self.value = value
        self.label = label
        if not value.checks:
            self.fast = frozenset({dict})

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise ArgError(path, self.label, value)
        check = self.value
        if check.checks:
            fast = check.fast
            out = None
            for k, v in value.items():
                if type(v) in fast:
                    continue
                converted = check.check(v, f"{path}[{k!r}]")
                if converted is not v:
                    if out is None:
                        out = dict(value)
                    out[k] = converted
            if out is not None:
                return out
        return value

    def schema(self, defs: Defs) -> Schema:
        return {"type": "object", "additionalProperties": self.value.schema(defs)}


class _Union(Check):
    def __init__(self, options: List[Check]) -> None:
        self.options = options
        none_last = sorted(options, key=lambda o: isinstance(o, _NoneCheck))
        self.label = " | ".join(o.label for o in none_last)
        # A value of a type some option takes exactly passes unchanged (so a union
        # never converts what one of its members accepts as it is).
        fast: set[type] = set()
        for o in options:
            fast |= o.fast
        self.fast = frozenset(fast)
        self.checks = all(o.checks for o in options)

    def check(self, value: Any, path: str) -> Any:
        for o in self.options:
            if type(value) in o.fast:
                return value
        errors = []
        for o in self.options:
            try:
                return o.check(value, path)
            except ArgError as exc:
                errors.append((o, exc))
        # `Optional[X]` given something X almost takes: say what X found wrong.
        real = [exc for o, exc in errors if not isinstance(o, _NoneCheck)]
        if value is not None and len(real) == 1:
            inner = real[0]
            if inner.path != path:
                raise inner
            if inner.detail:
                raise ArgError(path, self.label, value, inner.detail)
        raise ArgError(path, self.label, value)

    def schema(self, defs: Defs) -> Schema:
        return {"anyOf": [o.schema(defs) for o in self.options]}


class _Literal(Check):
    def __init__(self, values: Tuple[Any, ...]) -> None:
        self.values = values
        # (type, value) -> what the command gets: Literal[1] does not accept True nor
        # Literal[True] 1; an enum member arrives as its JSON value.
        self.allowed = {
            ((type(v.value), v.value) if isinstance(v, enum.Enum) else (type(v), v)): v for v in values
        }
        shown = [v.value if isinstance(v, enum.Enum) else v for v in values]
        self.label = f"one of {', '.join(repr(v) for v in shown)}"

    def check(self, value: Any, path: str) -> Any:
        try:
            return self.allowed[(type(value), value)]
        except (KeyError, TypeError):  # not allowed, or unhashable (a list or dict)
            raise ArgError(path, self.label, value) from None

    def schema(self, defs: Defs) -> Schema:
        values = [v.value if isinstance(v, enum.Enum) else v for v in self.values]
        return {"const": values[0]} if len(values) == 1 else {"enum": values}


def _def_name(cls: type, defs: Defs) -> str:
    """The `$defs` key for `cls`: its name, qualified when another class took it."""
    name = cls.__name__
    if defs.owners.setdefault(name, cls) is cls:
        return name
    qualified = f"{cls.__module__}.{cls.__qualname__}".replace("<", "").replace(">", "")
    defs.owners.setdefault(qualified, cls)
    return qualified


class _Named(Check):
    """A check with a named schema in `$defs` (dataclass, TypedDict, enum, model)."""

    cls: type

    def schema(self, defs: Defs) -> Schema:
        name = _def_name(self.cls, defs)
        if name not in defs:
            defs[name] = {}  # claimed first: a recursive type refers back to it
            defs[name] = self.own_schema(defs)
        return {"$ref": f"#/$defs/{name}"}

    def own_schema(self, defs: Defs) -> Schema:
        raise NotImplementedError


class _Enum(_Named):
    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.by_value = {(type(m.value), m.value): m for m in cls}  # type: ignore[attr-defined]
        self.label = f"{cls.__name__} (one of {', '.join(repr(m.value) for m in cls)})"  # type: ignore[attr-defined]

    def check(self, value: Any, path: str) -> Any:
        if isinstance(value, self.cls):
            return value
        try:
            return self.by_value[(type(value), value)]
        except (KeyError, TypeError):
            raise ArgError(path, self.label, value) from None

    def own_schema(self, defs: Defs) -> Schema:
        return {"title": self.cls.__name__, "enum": [m.value for m in self.cls]}  # type: ignore[attr-defined]


class _Fields(_Named):
    """A JSON object with known fields: a dataclass (built) or a TypedDict (kept a dict)."""

    def __init__(self, cls: type, build: Optional[Callable[..., Any]]) -> None:
        self.cls = cls
        self.build = build
        self.label = cls.__name__
        self.fields: Dict[str, Check] = {}
        self.required: FrozenSet[str] = frozenset()
        self.defaults: Dict[str, Any] = {}

    def check(self, value: Any, path: str) -> Any:
        if self.build is not None and isinstance(value, self.cls):
            return value
        if not isinstance(value, dict):
            raise ArgError(path, self.label, value)
        missing = self.required.difference(value)
        if missing:
            raise ArgError(path, self.label, value, f"but field {sorted(missing)[0]!r} is missing")
        out = {}
        for key, v in value.items():
            check = self.fields.get(key)
            if check is None:
                known = ", ".join(self.fields) or "none"
                raise ArgError(path, self.label, value, f"but has no field {key!r} (fields: {known})")
            out[key] = v if type(v) in check.fast or not check.checks else check.check(v, f"{path}.{key}")
        if self.build is None:
            return out
        try:
            return self.build(**out)
        except Exception as exc:  # e.g. a __post_init__ that validates
            raise ArgError(path, self.label, value, f"but {self.label}(...) raised {type(exc).__name__}: {exc}") from None

    def own_schema(self, defs: Defs) -> Schema:
        props: Schema = {}
        for name, check in self.fields.items():
            prop = check.schema(defs)
            if name in self.defaults:
                prop = {**prop, "default": self.defaults[name]}
            props[name] = prop
        out: Schema = {"title": self.cls.__name__, "type": "object", "properties": props}
        required = [n for n in self.fields if n in self.required]
        if required:
            out["required"] = required
        out["additionalProperties"] = False
        doc = getattr(self.cls, "__doc__", None)
        if doc and not doc.startswith(f"{self.cls.__name__}("):  # not the dataclass default
            out["description"] = doc.strip()
        return out


class _Pydantic(_Named):
    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.label = cls.__name__

    def check(self, value: Any, path: str) -> Any:
        if isinstance(value, self.cls):
            return value
        from pydantic import ValidationError

        try:
            return self.cls.model_validate(value)  # type: ignore[attr-defined]
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            detail = f"but {where + ': ' if where else ''}{first.get('msg', exc)}"
            raise ArgError(path, self.label, value, detail) from None

    def own_schema(self, defs: Defs) -> Schema:
        schema: Schema = self.cls.model_json_schema(ref_template="#/$defs/{model}")  # type: ignore[attr-defined]
        for name, sub in schema.pop("$defs", {}).items():
            defs.setdefault(name, sub)
        return schema


def json_default(value: Any) -> Any:
    """For the result encoder: dataclasses, pydantic models, enums, sets and tuples
    as JSON (what a command hinted to return one of them gets sent as)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        try:  # a stable order where there is one
            return sorted(value)
        except TypeError:
            return list(value)
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _is_pydantic_model(tp: Any) -> bool:
    pydantic = sys.modules.get("pydantic")
    if pydantic is None:  # not imported by anyone: no model can be of it
        return False
    return isinstance(tp, type) and issubclass(tp, pydantic.BaseModel)


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__required_keys__")


# What each sequence hint's JSON array is turned into.
_SEQUENCES: Dict[Any, type] = {
    list: list,
    tuple: tuple,
    set: set,
    frozenset: frozenset,
    abc.Sequence: list,
    abc.MutableSequence: list,
    abc.Collection: list,
    abc.Iterable: list,
    abc.Set: set,
    abc.MutableSet: set,
}
_MAPPINGS = {dict, abc.Mapping, abc.MutableMapping}


def compile_hint(hint: Any, memo: Optional[Dict[Any, Check]] = None) -> Check:
    """The Check for one resolved hint (from `typing.get_type_hints`)."""
    memo = {} if memo is None else memo
    try:
        hash(hint)
    except TypeError:  # not a type at all (e.g. `x: [int]`)
        return _Anything(repr(hint))
    if hint is Any or hint is object or hint is inspect.Parameter.empty:
        return _Anything()
    if hint is None or hint is _NONE_TYPE:
        return _NoneCheck()
    if hint in _JSON_SCALARS:
        return _Scalar(hint)
    supertype = getattr(hint, "__supertype__", None)  # NewType
    if supertype is not None:
        return compile_hint(supertype, memo)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return compile_hint(args[0], memo)
    if origin is typing.Union or (_UnionType is not None and origin is _UnionType):
        return _Union([compile_hint(a, memo) for a in args])
    if origin is typing.Literal:
        return _Literal(args)
    if hint in _SEQUENCES or origin in _SEQUENCES:
        into = _SEQUENCES[origin or hint]
        if into is tuple and (hint == Tuple[()] or hint == tuple[()]):  # the empty tuple
            return _FixedTuple([])
        if into is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if args == ((),):  # tuple[()] before Python 3.11
                return _FixedTuple([])
            return _FixedTuple([compile_hint(a, memo) for a in args])
        item = compile_hint(args[0], memo) if args else _Anything()
        name = getattr(origin or hint, "__name__", "list")
        label = f"{name}[{item.label}{', ...' if into is tuple else ''}]" if args else name
        return _Sequence(item, into, label)
    if hint in _MAPPINGS or origin in _MAPPINGS:
        value = compile_hint(args[1], memo) if len(args) == 2 else _Anything()
        name = getattr(origin or hint, "__name__", "dict")
        return _Mapping(value, f"{name}[str, {value.label}]" if args else name)
    if not isinstance(hint, type):
        # A TypeVar, a string that never resolved, a special form we do not know.
        return _Anything(str(hint))
    if hint in memo:
        return memo[hint]
    if issubclass(hint, enum.Enum):
        memo[hint] = _Enum(hint)
        return memo[hint]
    if dataclasses.is_dataclass(hint):
        check = memo[hint] = _Fields(hint, build=hint)
        hints = typing.get_type_hints(hint)
        for f in dataclasses.fields(hint):
            if not f.init:
                continue
            check.fields[f.name] = compile_hint(hints.get(f.name, Any), memo)
            if f.default is not dataclasses.MISSING:
                if _json_value(f.default):
                    check.defaults[f.name] = f.default
            elif f.default_factory is dataclasses.MISSING:
                check.required = check.required | {f.name}
        return check
    if _is_typeddict(hint):
        check = memo[hint] = _Fields(hint, build=None)
        hints = typing.get_type_hints(hint, include_extras=True)
        required = set(getattr(hint, "__required_keys__", ()))
        for name, tp in hints.items():
            # Required[X]/NotRequired[X] decide, whatever __required_keys__ says: with
            # `from __future__ import annotations` the class saw only strings.
            marker = _required_marker(tp)
            if marker is True:
                required.add(name)
            elif marker is False:
                required.discard(name)
            check.fields[name] = compile_hint(_strip_extras(tp), memo)
        check.required = frozenset(required)
        return check
    if _is_pydantic_model(hint):
        memo[hint] = _Pydantic(hint)
        return memo[hint]
    return _Anything(f"{hint.__module__}.{hint.__qualname__}")


def _required_marker(tp: Any) -> Optional[bool]:
    """True for `Required[X]`, False for `NotRequired[X]` (under `Annotated` too)."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        for name, flag in (("Required", True), ("NotRequired", False)):
            if origin is not None and origin is getattr(typing, name, object()):
                return flag
            if origin is not None and getattr(origin, "_name", None) == name:  # typing_extensions
                return flag
        return None


def _strip_extras(tp: Any) -> Any:
    """`Required[X]`/`NotRequired[X]` (TypedDict keys) and `Annotated[X, ...]` are X."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated or _required_marker(tp) is not None:
            tp = typing.get_args(tp)[0]
            continue
        return tp


def _json_value(value: Any) -> bool:
    """Whether `value` can stand in a JSON Schema document (a default)."""
    if value is None or type(value) in (bool, int, str):
        return True
    if type(value) is float:
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, (list, tuple)):
        return all(_json_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_value(v) for k, v in value.items())
    return False


def public_defs(defs: Defs) -> Dict[str, Schema]:
    """`defs` as the plain object a schema's "$defs" is."""
    return dict(defs)


def json_default_value(value: Any) -> Tuple[bool, Any]:
    """(True, value) when a parameter default can be shown in the schema."""
    if isinstance(value, enum.Enum):
        value = value.value
    if not _json_value(value):
        return (False, None)
    # Tuples as the arrays they are in JSON.
    return (True, json.loads(json.dumps(value)))
