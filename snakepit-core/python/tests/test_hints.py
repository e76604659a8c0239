"""Type hints checked before a command runs, and described as JSON Schema.

Each supported hint kind is accepted with a fitting value and rejected with one that
does not, through the Dispatcher (what a worker does with a call), so the error is
the InvalidArgs the pool turns into HTTP 400.
"""
import dataclasses
import enum
import json
import sys
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Set, Tuple, TypedDict, Union

import pytest

from snakepit_bridge import Adapter, Context, command
from snakepit_bridge import _proto as pb
from snakepit_bridge.commands import CommandDefinitionError
from snakepit_bridge.dispatch import Dispatcher

try:
    from typing import NotRequired  # type: ignore[attr-defined]
except ImportError:  # Python < 3.11
    from typing_extensions import NotRequired  # type: ignore[no-redef]


@dataclasses.dataclass
class Point:
    x: float
    y: float
    label: str = "p"


@dataclasses.dataclass
class Positive:
    value: int

    def __post_init__(self) -> None:
        if self.value <= 0:
            raise ValueError("value must be positive")


@dataclasses.dataclass
class Segment:
    start: Point
    end: Point


class Options(TypedDict):
    depth: int
    name: NotRequired[str]


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Hinted(Adapter):
    @command
    def scalars(self, i: int, f: float, s: str, b: bool, n: None = None) -> Dict[str, Any]:
        return {"i": i, "f": f, "s": s, "b": b, "types": [type(v).__name__ for v in (i, f, s, b)]}

    @command
    def lists(self, xs: List[float], tags: Sequence[str] = (), pair: Tuple[int, str] = (0, ""), uniq: Set[int] = set()) -> Any:
        return {"xs": xs, "tags": list(tags), "pair": list(pair), "pair_type": type(pair).__name__, "uniq": sorted(uniq)}

    @command
    def mappings(self, weights: Dict[str, float], meta: Mapping[str, Any] = {}) -> Any:
        return {"weights": weights, "meta": dict(meta)}

    @command
    def optional(self, limit: Optional[int] = None, either: Union[int, str] = 0) -> Any:
        return {"limit": limit, "either": either}

    @command
    def literal(self, mode: Literal["fast", "exact"], level: Literal[1, 2] = 1) -> str:
        return f"{mode}/{level}"

    @command
    def dataclass(self, seg: Segment) -> Any:
        assert isinstance(seg, Segment) and isinstance(seg.start, Point)
        return {"dx": seg.end.x - seg.start.x, "label": seg.start.label}

    @command
    def positive(self, p: Positive) -> int:
        return p.value

    @command
    def typeddict(self, opts: Options) -> Any:
        assert type(opts) is dict
        return opts

    @command
    def color(self, c: Color) -> str:
        assert isinstance(c, Color)
        return c.name

    @command
    def red_only(self, c: Literal[Color.RED]) -> str:
        assert c is Color.RED
        return c.name

    @command
    def empty(self, t: Tuple[()] = ()) -> int:
        return len(t)

    @staticmethod
    @command
    def static(x: int) -> int:
        return x + 1

    @command
    def maybe_context(self, x: int, context: Optional[Context] = None) -> bool:
        return isinstance(context, Context)

    @command
    def unhinted(self, anything, n: int = 1) -> Any:
        return anything

    @command
    def kwargs(self, **extra: int) -> Any:
        return extra

    @command
    def with_context(self, x: int, context: Context) -> Any:
        return {"x": x, "has_ctx": isinstance(context, Context)}


def call(d, cmd, args):
    return d.execute(pb.ExecuteRequest(command=cmd, args_json=json.dumps(args).encode()), {}, None)


def ok(d, cmd, args):
    resp = call(d, cmd, args)
    assert resp.WhichOneof("outcome") == "result_json", resp
    return json.loads(resp.result_json)


def invalid(d, cmd, args, *needles):
    err = call(d, cmd, args).error
    assert err.kind == pb.WorkerError.INVALID_ARGS, err
    for needle in needles:
        assert needle in err.message, (needle, err.message)
    return err.message


@pytest.fixture(scope="module")
def d():
    return Dispatcher(Hinted())


def test_scalars_accepted_and_ints_become_floats(d):
    got = ok(d, "scalars", {"i": 1, "f": 2, "s": "x", "b": True})
    assert got["types"] == ["int", "float", "str", "bool"] and got["f"] == 2.0


@pytest.mark.parametrize(
    "args,needles",
    [
        ({"i": "1", "f": 1.0, "s": "x", "b": True}, ["scalars: argument 'i' must be int", "got str '1'"]),
        ({"i": True, "f": 1.0, "s": "x", "b": True}, ["'i' must be int", "got bool True"]),
        ({"i": 1.5, "f": 1.0, "s": "x", "b": True}, ["'i' must be int", "got float 1.5"]),
        ({"i": 1, "f": "2", "s": "x", "b": True}, ["'f' must be float", "got str"]),
        ({"i": 1, "f": False, "s": "x", "b": True}, ["'f' must be float", "got bool"]),
        ({"i": 1, "f": 1.0, "s": 3, "b": True}, ["'s' must be str", "got int 3"]),
        ({"i": 1, "f": 1.0, "s": "x", "b": 1}, ["'b' must be bool", "got int 1"]),
        ({"i": 1, "f": 1.0, "s": "x", "b": True, "n": 0}, ["'n' must be None", "got int 0"]),
        ({"i": None, "f": 1.0, "s": "x", "b": True}, ["'i' must be int", "got None"]),
    ],
)
def test_scalars_rejected(d, args, needles):
    invalid(d, "scalars", args, *needles)


def test_integral_floats_pass_for_ints_and_huge_ints_are_refused_for_floats(d):
    # JSON Schema's "integer" takes 2.0; the command gets the int it asked for.
    assert ok(d, "scalars", {"i": 2.0, "f": 1, "s": "x", "b": False})["types"][0] == "int"
    invalid(d, "scalars", {"i": 1, "f": 10**400, "s": "x", "b": True}, "'f' must be float", "too large")


def test_sequences(d):
    got = ok(d, "lists", {"xs": [1, 2.5], "tags": ["a"], "pair": [3, "z"], "uniq": [3, 1, 3]})
    assert got == {"xs": [1.0, 2.5], "tags": ["a"], "pair": [3, "z"], "pair_type": "tuple", "uniq": [1, 3]}
    invalid(d, "lists", {"xs": "oops"}, "argument 'xs' must be list[float]", "got str 'oops'")
    invalid(d, "lists", {"xs": [1, "two", 3]}, "argument 'xs[1]' must be float", "got str 'two'")
    invalid(d, "lists", {"xs": [], "tags": [1]}, "'tags[0]' must be str")
    invalid(d, "lists", {"xs": [], "pair": [1]}, "'pair' must be tuple[int, str]", "list of 1")
    invalid(d, "lists", {"xs": [], "pair": [1, 2]}, "'pair[1]' must be str", "got int 2")
    invalid(d, "lists", {"xs": [], "uniq": {"a": 1}}, "'uniq' must be set[int]", "dict with keys [a]")


def test_mappings(d):
    assert ok(d, "mappings", {"weights": {"a": 1}})["weights"] == {"a": 1.0}
    invalid(d, "mappings", {"weights": [1]}, "'weights' must be dict[str, float]", "list of 1")
    invalid(d, "mappings", {"weights": {"a": "x"}}, "argument \"weights['a']\" must be float")


def test_optional_and_union(d):
    assert ok(d, "optional", {}) == {"limit": None, "either": 0}
    assert ok(d, "optional", {"limit": None, "either": "s"}) == {"limit": None, "either": "s"}
    assert ok(d, "optional", {"limit": 5, "either": 7}) == {"limit": 5, "either": 7}
    invalid(d, "optional", {"limit": "5"}, "'limit' must be int | None", "got str '5'")
    invalid(d, "optional", {"either": 1.5}, "'either' must be int | str", "got float 1.5")


def test_literal(d):
    assert ok(d, "literal", {"mode": "fast", "level": 2}) == "fast/2"
    invalid(d, "literal", {"mode": "slow"}, "'mode' must be one of 'fast', 'exact'", "got str 'slow'")
    invalid(d, "literal", {"mode": "fast", "level": True}, "'level' must be one of 1, 2", "got bool True")
    invalid(d, "literal", {"mode": ["fast"]}, "'mode' must be one of")


def test_dataclasses_are_built_from_objects(d):
    seg = {"start": {"x": 0, "y": 0, "label": "a"}, "end": {"x": 3.5, "y": 1}}
    assert ok(d, "dataclass", {"seg": seg}) == {"dx": 3.5, "label": "a"}
    invalid(d, "dataclass", {"seg": 5}, "'seg' must be Segment", "got int 5")
    invalid(d, "dataclass", {"seg": {"start": {"x": 0, "y": 0}}}, "'seg' must be Segment", "field 'end' is missing")
    bad_field = {"start": {"x": 0, "y": "zero"}, "end": {"x": 0, "y": 0}}
    invalid(d, "dataclass", {"seg": bad_field}, "'seg.start.y' must be float", "got str 'zero'")
    extra = {"start": {"x": 0, "y": 0, "z": 1}, "end": {"x": 0, "y": 0}}
    invalid(d, "dataclass", {"seg": extra}, "'seg.start' must be Point", "no field 'z'", "fields: x, y, label")


def test_a_dataclass_that_refuses_its_fields_is_invalid_args(d):
    assert ok(d, "positive", {"p": {"value": 2}}) == 2
    invalid(d, "positive", {"p": {"value": -1}}, "'p' must be Positive", "raised ValueError: value must be positive")


def test_typeddicts_stay_dicts(d):
    assert ok(d, "typeddict", {"opts": {"depth": 2}}) == {"depth": 2}
    assert ok(d, "typeddict", {"opts": {"depth": 2, "name": "n"}}) == {"depth": 2, "name": "n"}
    invalid(d, "typeddict", {"opts": {"name": "n"}}, "'opts' must be Options", "field 'depth' is missing")
    invalid(d, "typeddict", {"opts": {"depth": "2"}}, "'opts.depth' must be int")


def test_enums_by_value(d):
    assert ok(d, "color", {"c": "blue"}) == "BLUE"
    assert ok(d, "red_only", {"c": "red"}) == "RED"
    invalid(d, "red_only", {"c": "blue"}, "'c' must be one of 'red'")
    invalid(d, "color", {"c": "green"}, "'c' must be Color (one of 'red', 'blue')", "got str 'green'")


def test_without_hints_nothing_is_checked(d):
    assert ok(d, "unhinted", {"anything": {"a": [1]}}) == {"a": [1]}
    invalid(d, "unhinted", {"anything": 1, "n": "x"}, "'n' must be int")
    # Names and count are still checked, as before hints.
    invalid(d, "unhinted", {}, "missing a required argument: 'anything'")
    invalid(d, "unhinted", {"anything": 1, "other": 2}, "unexpected keyword argument 'other'")


def test_kwargs_hint_checks_each_extra_argument(d):
    assert ok(d, "kwargs", {"a": 1, "b": 2}) == {"a": 1, "b": 2}
    invalid(d, "kwargs", {"a": 1, "b": "2"}, "'b' must be int")


def test_empty_tuples_static_methods_and_optional_context(d):
    assert ok(d, "empty", {"t": []}) == 0
    invalid(d, "empty", {"t": [1]}, "'t' must be tuple[]")
    assert ok(d, "static", {"x": 1}) == 2
    invalid(d, "static", {"x": "1"}, "'x' must be int")
    assert ok(d, "maybe_context", {"x": 1}) is True
    # The request context cannot be forged by a caller.
    invalid(d, "maybe_context", {"x": 1, "context": {"request_id": "forged"}}, "reserved")


def test_context_by_annotation_whatever_its_name(d):
    assert ok(d, "with_context", {"x": 1}) == {"x": 1, "has_ctx": True}
    invalid(d, "with_context", {"x": 1, "context": {}}, "'context' is reserved for the request context")
    schema = Hinted().lookup("with_context").args_schema()
    assert list(schema["properties"]) == ["x"]


def test_pydantic_models_when_installed():
    pydantic = pytest.importorskip("pydantic")

    class Item(pydantic.BaseModel):
        sku: str
        qty: int = 1

    class Shop(Adapter):
        @command
        def order(self, item: Item) -> Dict[str, Any]:
            assert isinstance(item, Item)
            return item.model_dump()

    d = Dispatcher(Shop())
    assert ok(d, "order", {"item": {"sku": "a"}}) == {"sku": "a", "qty": 1}
    invalid(d, "order", {"item": {"sku": "a", "qty": "many"}}, "'item' must be Item", "qty")
    schema = Shop().lookup("order").args_schema()
    assert schema["properties"]["item"] == {"$ref": "#/$defs/Item"}
    assert schema["$defs"]["Item"]["properties"]["sku"]["type"] == "string"


def test_schemas_describe_the_hints():
    a = Hinted()
    lists = a.lookup("lists").args_schema()
    assert lists["required"] == ["xs"] and lists["additionalProperties"] is False
    assert lists["properties"]["xs"] == {"type": "array", "items": {"type": "number"}}
    assert lists["properties"]["pair"]["prefixItems"] == [{"type": "integer"}, {"type": "string"}]
    assert lists["properties"]["pair"]["default"] == [0, ""]
    assert lists["properties"]["uniq"] == {"type": "array", "items": {"type": "integer"}}
    opt = a.lookup("optional").args_schema()["properties"]
    assert opt["limit"] == {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None}
    lit = a.lookup("literal").args_schema()["properties"]
    assert lit["mode"] == {"enum": ["fast", "exact"]}
    seg = a.lookup("dataclass").args_schema()
    assert seg["properties"]["seg"] == {"$ref": "#/$defs/Segment"}
    assert seg["$defs"]["Segment"]["properties"]["start"] == {"$ref": "#/$defs/Point"}
    assert seg["$defs"]["Point"]["required"] == ["x", "y"]
    assert seg["$defs"]["Point"]["properties"]["label"] == {"type": "string", "default": "p"}
    td = a.lookup("typeddict").args_schema()["$defs"]["Options"]
    assert td["required"] == ["depth"] and set(td["properties"]) == {"depth", "name"}
    assert a.lookup("color").args_schema()["$defs"]["Color"]["enum"] == ["red", "blue"]
    assert a.lookup("kwargs").args_schema()["additionalProperties"] == {"type": "integer"}
    assert a.lookup("unhinted").args_schema()["properties"]["anything"] == {}
    assert a.lookup("scalars").returns_schema() == {"type": "object", "additionalProperties": {}}
    assert a.lookup("literal").returns_schema() == {"type": "string"}
    assert a.lookup("unhinted").returns_schema() == {}


def test_a_recursive_dataclass_refers_to_itself():
    @dataclasses.dataclass
    class Node:
        value: int
        children: "List[Node]" = dataclasses.field(default_factory=list)

    # get_type_hints resolves "Node" from the module: put it there for the test.
    globals()["Node"] = Node
    try:

        class Tree(Adapter):
            @command
            def total(self, root: Node) -> int:
                return root.value + sum(c.value for c in root.children)

        d = Dispatcher(Tree())
        assert ok(d, "total", {"root": {"value": 1, "children": [{"value": 2}]}}) == 3
        schema = Tree().lookup("total").args_schema()
        assert schema["$defs"]["Node"]["properties"]["children"]["items"] == {"$ref": "#/$defs/Node"}
    finally:
        del globals()["Node"]


def test_an_unresolvable_hint_leaves_that_argument_unchecked_and_says_so(caplog):
    class Typed(Adapter):  # as with a type imported only under TYPE_CHECKING
        @command
        def f(self, x: "NoSuchType", n: int = 1) -> int:  # noqa: F821
            return n

    with caplog.at_level("WARNING", logger="snakepit_bridge"):
        d = Dispatcher(Typed())
    assert "command 'f': the type hint of 'x' ('NoSuchType') cannot be resolved" in caplog.text
    assert ok(d, "f", {"x": {"any": "thing"}, "n": 2}) == 2
    invalid(d, "f", {"x": 1, "n": "2"}, "'n' must be int")


def test_registration_needs_no_super_init_and_rejects_duplicates():
    class NoSuper(Adapter):
        def __init__(self) -> None:
            self.ready = True  # no super().__init__()

        @command
        def ping(self) -> str:
            return "pong"

    assert ok(Dispatcher(NoSuper()), "ping", {}) == "pong"

    class Base(Adapter):
        @command
        def a(self) -> int:
            return 1

        @command
        def b(self) -> int:
            return 2

    class Child(Base):
        def b(self) -> int:  # overridden without @command: no longer a command
            return 3

        @command(name="c")
        def renamed(self) -> int:
            return 4

    assert sorted(Child().commands()) == ["a", "c"]
    with pytest.raises(CommandDefinitionError, match="'x' and 'y' are both command 'same'"):

        class Dup(Adapter):
            @command(name="same")
            def x(self) -> None: ...

            @command(name="same")
            def y(self) -> None: ...


@pytest.mark.skipif(sys.version_info < (3, 10), reason="X | Y unions need Python 3.10")
def test_pep604_unions():
    ns: Dict[str, Any] = {}
    exec(
        "from snakepit_bridge import Adapter, command\n"
        "class U(Adapter):\n"
        "    @command\n"
        "    def f(self, x: int | None = None, y: list[int] | str = 'a') -> dict[str, object]:\n"
        "        return {'x': x, 'y': y}\n",
        ns,
    )
    d = Dispatcher(ns["U"]())
    assert ok(d, "f", {"x": 1, "y": [1]}) == {"x": 1, "y": [1]}
    invalid(d, "f", {"x": "1"}, "'x' must be int | None")
    invalid(d, "f", {"y": [1, "2"]}, "'y' must be list[int] | str")
