"""Dispatcher behaviour without a transport: args, errors, streaming, sessions."""
import json

from snakepit_bridge import Adapter, command
from snakepit_bridge import _proto as pb
from snakepit_bridge.dispatch import Dispatcher
from snakepit_bridge.example import ExampleAdapter


def run(d, command, args=b"{}", session_id=""):
    return d.execute(pb.ExecuteRequest(command=command, args_json=args, session_id=session_id), {}, None)


def result(resp):
    assert resp.WhichOneof("outcome") == "result_json", resp
    return json.loads(resp.result_json)


def test_ping_and_echo():
    d = Dispatcher(ExampleAdapter())
    assert result(run(d, "ping")) == "pong"
    assert result(run(d, "echo", json.dumps({"a": 1, "b": [1, "é"]}).encode())) == {"a": 1, "b": [1, "é"]}


def test_python_exception_keeps_type_message_and_traceback():
    d = Dispatcher(ExampleAdapter())
    resp = run(d, "fail", json.dumps({"type": "ValueError", "message": "bad value 42"}).encode())
    err = resp.error
    assert err.kind == pb.WorkerError.EXCEPTION
    assert err.type == "ValueError"
    assert err.message == "bad value 42"
    assert "raise exc_type(message)" in err.traceback
    assert "example.py" in err.traceback
    # The bridge's own frame is trimmed: the traceback starts at user code.
    assert "dispatch.py" not in err.traceback


def test_custom_exception_type_is_qualified():
    d = Dispatcher(ExampleAdapter())
    err = run(d, "fail", json.dumps({"type": "QuotaExceeded", "message": "m"}).encode()).error
    assert err.type == "snakepit_bridge.example.QuotaExceeded"


def test_unknown_command_lists_known_ones():
    err = run(Dispatcher(ExampleAdapter()), "nope").error
    assert err.kind == pb.WorkerError.UNKNOWN_COMMAND
    assert "'nope'" in err.message and "ping" in err.message


def test_bad_args_are_invalid_args():
    d = Dispatcher(ExampleAdapter())
    for raw, needle in [
        (b"\xff\xfe", "UTF-8"),
        (b"{not json", "JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"nope": 1}).encode(), "parameters: ms"),
        (json.dumps({"ctx": 1}).encode(), "reserved"),
    ]:
        cmd = "session_get" if needle == "reserved" else "sleep"
        err = run(d, cmd, raw).error
        assert err.kind == pb.WorkerError.INVALID_ARGS, (raw, err)
        assert needle in err.message, (raw, err.message)
    # The dispatcher still serves.
    assert result(run(d, "ping")) == "pong"


def test_unserializable_result_is_invalid_result():
    class A(Adapter):
        @command
        def bad(self):
            return {"handle": object()}

        @command
        def nan(self):
            return float("nan")

    d = Dispatcher(A())
    for cmd in ("bad", "nan"):
        err = run(d, cmd).error
        assert err.kind == pb.WorkerError.INVALID_RESULT, err
        assert err.traceback


def test_stream_yields_chunks_then_final():
    d = Dispatcher(ExampleAdapter())
    req = pb.ExecuteRequest(command="stream", args_json=b'{"n": 3}')
    chunks = list(d.execute_stream(req, {}, None))
    assert [json.loads(c.data_json) for c in chunks[:-1]] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert chunks[-1].final and not chunks[-1].HasField("error")
    assert not any(c.final for c in chunks[:-1])


def test_stream_error_is_final_chunk_with_traceback():
    class A(Adapter):
        @command
        def boom(self):
            yield 1
            raise KeyError("gone")

    chunks = list(Dispatcher(A()).execute_stream(pb.ExecuteRequest(command="boom"), {}, None))
    assert json.loads(chunks[0].data_json) == 1
    assert chunks[-1].final and chunks[-1].error.type == "KeyError"
    assert "raise KeyError" in chunks[-1].error.traceback


def test_unary_call_of_generator_collects_and_stream_of_unary_gives_one_chunk():
    d = Dispatcher(ExampleAdapter())
    assert result(run(d, "stream", b'{"n": 2}')) == [{"i": 0}, {"i": 1}]
    chunks = list(d.execute_stream(pb.ExecuteRequest(command="ping"), {}, None))
    assert [json.loads(c.data_json) for c in chunks[:-1]] == ["pong"] and chunks[-1].final


def test_sessions_keep_state_and_call_hooks():
    events = []

    class A(ExampleAdapter):
        def on_session_start(self, session):
            events.append(("start", session.id, session.metadata))

        def on_session_end(self, session):
            events.append(("end", session.id))

    d = Dispatcher(A())
    assert d.init_session("s1", b'{"user": "u"}').changed
    assert not d.init_session("s1", b"{}").changed
    run(d, "session_put", b'{"key": "k", "value": 7}', "s1")
    got = result(run(d, "session_get", b"{}", "s1"))
    assert got["state"] == {"k": 7} and got["metadata"] == {"user": "u"}
    assert d.health().active_sessions == 1
    assert d.close_session("s1").changed and not d.close_session("s1").changed
    assert events == [("start", "s1", {"user": "u"}), ("end", "s1")]


def test_describe_lists_commands():
    desc = Dispatcher(ExampleAdapter()).describe()
    names = {c.name: c for c in desc.commands}
    for required in ["ping", "echo", "sleep", "spin", "fail", "crash", "hang", "stream", "alloc", "describe"]:
        assert required in names
    assert names["stream"].streaming and not names["ping"].streaming
    assert list(names["sleep"].params) == ["ms"]
    assert desc.adapter == "snakepit_bridge.example:ExampleAdapter"
    # The schemas travel as JSON; the context parameter is not in them.
    score = json.loads(names["score"].args_schema_json)
    assert score["properties"]["features"] == {"type": "array", "items": {"type": "number"}}
    assert score["required"] == ["features"]
    assert json.loads(names["score"].returns_schema_json)["type"] == "object"
    assert json.loads(names["whoami"].args_schema_json)["properties"] == {}
    assert "$defs" in json.loads(names["distance"].args_schema_json)
    assert names["async_sleep"].is_async and not names["sleep"].is_async
    assert names["async_stream"].is_async and names["async_stream"].streaming
    # `-> None`: the result is JSON null.
    assert names["hang"].returns_schema_json == json.dumps({"type": "null"}, separators=(",", ":"))


def test_a_schema_that_cannot_be_built_leaves_the_describe_working(monkeypatch):
    from snakepit_bridge.commands import Command

    def broken(self):
        raise RuntimeError("no schema")

    monkeypatch.setattr(Command, "args_schema", broken)
    desc = Dispatcher(ExampleAdapter()).describe()
    assert {c.name for c in desc.commands} >= {"ping", "score"}
    assert all(c.args_schema_json == "" for c in desc.commands)
