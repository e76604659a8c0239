"""Hints written as strings (`from __future__ import annotations`, as the example
adapter and the README do): the same checks and schemas."""
from __future__ import annotations

import dataclasses
import json
from typing import Optional, TypedDict

try:
    from typing import NotRequired, Required  # type: ignore[attr-defined]
except ImportError:  # Python < 3.11
    from typing_extensions import NotRequired, Required  # type: ignore[no-redef]

from snakepit_bridge import Adapter, Context, command
from snakepit_bridge import _proto as pb
from snakepit_bridge.dispatch import Dispatcher


class Query(TypedDict):
    text: str
    limit: NotRequired[int]


class Partial(TypedDict, total=False):
    key: Required[str]
    note: str


@dataclasses.dataclass
class Box:
    width: float
    label: Optional[str] = None


class Future(Adapter):
    @command
    def search(self, q: Query, p: Optional[Partial] = None) -> list[str]:
        return [q["text"]] * q.get("limit", 1)

    @command
    def area(self, box: Box, ctx: Context) -> float:
        return box.width * box.width


def call(d, cmd, args):
    return d.execute(pb.ExecuteRequest(command=cmd, args_json=json.dumps(args).encode()), {}, None)


def test_typeddict_required_and_not_required_under_string_annotations():
    d = Dispatcher(Future())
    assert json.loads(call(d, "search", {"q": {"text": "a"}}).result_json) == ["a"]
    assert json.loads(call(d, "search", {"q": {"text": "a", "limit": 2}}).result_json) == ["a", "a"]
    err = call(d, "search", {"q": {"text": "a"}, "p": {"note": "n"}}).error
    assert err.kind == pb.WorkerError.INVALID_ARGS and "field 'key' is missing" in err.message, err
    defs = Future().lookup("search").args_schema()["$defs"]
    assert defs["Query"]["required"] == ["text"]
    assert defs["Partial"]["required"] == ["key"]


def test_dataclasses_and_context_under_string_annotations():
    d = Dispatcher(Future())
    assert json.loads(call(d, "area", {"box": {"width": 3}}).result_json) == 9.0
    err = call(d, "area", {"box": {"width": "3"}}).error
    assert "'box.width' must be float" in err.message
    assert list(Future().lookup("area").args_schema()["properties"]) == ["box"]
