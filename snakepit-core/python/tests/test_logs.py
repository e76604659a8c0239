"""Structured log records on the channel: fields, the request context, the bounds."""
import json
import logging
import os
import threading

import pytest

from snakepit_bridge import _proto as pb
from snakepit_bridge import channel, logs
from snakepit_bridge.dispatch import Dispatcher
from snakepit_bridge.example import ExampleAdapter

TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


class Reader:
    """Reads the pipe's JSON lines on a thread, as the pool does."""

    def __init__(self, fd):
        self.fd = fd
        self.lines = []
        self._buf = b""
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return
            self._buf += chunk
            *done, self._buf = self._buf.split(b"\n")
            self.lines.extend(json.loads(line) for line in done if line)


@pytest.fixture
def chan():
    r, w = os.pipe()
    ch = channel.Channel(w, capacity=64)
    reader = Reader(r)
    handler = logs.ChannelHandler(ch)
    logger = logging.getLogger("test.user")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield ch, reader, logger
    logger.removeHandler(handler)
    ch.close()
    os.close(w)


def records(reader, ch):
    assert ch.flush(5)
    return [line for line in reader.lines if line["t"] == "log"]


def test_a_record_carries_logger_level_message_location_and_no_request(chan):
    ch, reader, logger = chan
    logger.warning("user log line %s", "x")
    (rec,) = records(reader, ch)
    assert rec["logger"] == "test.user" and rec["levelname"] == "WARNING" and rec["level"] == 30
    assert rec["msg"] == "user log line x"
    assert rec["file"].endswith("test_logs.py") and rec["func"] == "test_a_record_carries_logger_level_message_location_and_no_request"
    assert rec["line"] > 0 and rec["thread"] == "MainThread"
    assert "request_id" not in rec and "trace_id" not in rec


def test_exc_info_is_one_field_with_the_whole_traceback(chan):
    ch, reader, logger = chan
    try:
        {}["missing"]
    except KeyError:
        logger.exception("lookup failed")
    (rec,) = records(reader, ch)
    assert rec["exc_type"] == "KeyError"
    assert "Traceback (most recent call last)" in rec["exc"] and "KeyError: 'missing'" in rec["exc"]


def test_bad_format_arguments_lose_nothing(chan):
    ch, reader, logger = chan
    # Straight to our handler: pytest's own capture handler would raise on this record.
    record = logger.makeRecord("test.user", logging.INFO, __file__, 1, "two %s %s", ("only-one",), None)
    logs.ChannelHandler(ch).handle(record)
    (rec,) = records(reader, ch)
    assert "two %s %s" in rec["msg"] and "only-one" in rec["msg"]


def test_extra_attributes_travel_as_one_object_and_a_bad_one_drops_alone(chan):
    ch, reader, logger = chan
    logger.info("with extras", extra={"user_id": 7, "token": "s3cret", "obj": object()})
    loop = {}
    loop["self"] = loop
    logger.info("cannot be JSON", extra={"loop": loop})
    logger.info("after")
    recs = records(reader, ch)
    assert [r["msg"] for r in recs] == ["with extras", "after"]
    extra = recs[0]["extra"]
    # Redaction is the pool's (it sanitizes every field the same way); non-JSON values
    # arrive as their str().
    assert extra["user_id"] == 7 and extra["token"] == "s3cret"
    assert extra["obj"].startswith("<object object")
    assert "extra" not in recs[1]
    assert ch.dropped == 1


def test_inside_a_request_a_record_carries_its_ids():
    r, w = os.pipe()
    ch = channel.Channel(w)
    reader = Reader(r)
    root = logging.getLogger()
    handler = logs.ChannelHandler(ch)
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        d = Dispatcher(ExampleAdapter())
        meta = {
            "x-snakepit-request-id": "req-1",
            "x-correlation-id": "corr-1",
            "traceparent": f"00-{TRACE}-{CALLER_SPAN}-01",
        }
        resp = d.execute(pb.ExecuteRequest(command="log", args_json=b'{"message": "inside"}'), meta, None)
        assert resp.WhichOneof("outcome") == "result_json", resp
        logging.getLogger("after").warning("outside")
        got = {rec["msg"]: rec for rec in records(reader, ch)}
        inside = got["inside"]
        assert inside["request_id"] == "req-1" and inside["correlation_id"] == "corr-1"
        assert inside["trace_id"] == TRACE and inside["sampled"] is True
        # The worker span the pool emits for this call is the record's span.
        assert inside["span_id"] == resp.span.span_id.hex() != CALLER_SPAN
        assert "request_id" not in got["outside"]
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        ch.close()
        os.close(w)


def test_a_full_queue_drops_and_counts_and_never_blocks():
    r, w = os.pipe()  # nobody reads: the writer blocks once the pipe is full
    ch = channel.Channel(w, capacity=100)
    payload = {"t": "log", "msg": "x" * 2000}
    accepted = sum(ch.put(dict(payload)) for _ in range(5000))
    assert ch.dropped == 5000 - accepted and ch.dropped > 0
    # What the writer holds is bounded by the pipe, the queue by its capacity.
    assert len(ch._queue) <= ch.capacity
    # Reading again lets the writer finish, and the drops are reported to the pool.
    reader = Reader(r)
    assert ch.flush(5)
    dropped = sum(line.get("logs", 0) for line in reader.lines if line["t"] == "dropped")
    written = sum(1 for line in reader.lines if line["t"] == "log")
    assert dropped == ch.dropped and written == accepted
    ch.close()
    os.close(w)


def test_a_pool_that_went_away_costs_nothing():
    r, w = os.pipe()
    os.close(r)  # writes fail with EPIPE (Python ignores SIGPIPE)
    ch = channel.Channel(w)
    ch.put({"t": "log", "msg": "lost"})
    ch.flush(1)
    for _ in range(10):
        ch.put({"t": "log", "msg": "after"})
    assert ch.dropped >= 9
    ch.close()
    os.close(w)


def test_a_failing_handler_never_raises_into_the_callers_log_call(chan, monkeypatch, capsys):
    ch, reader, logger = chan

    def broken(record):
        raise RuntimeError("channel exploded")

    monkeypatch.setattr(ch, "put", broken)
    logger.info("still fine")  # must not raise
    # logging's own convention: the handler's error is reported on stderr.
    assert "channel exploded" in capsys.readouterr().err


def test_drops_from_many_threads_are_all_counted():
    r, w = os.pipe()
    ch = channel.Channel(w, capacity=1)
    ch._broken = True  # every put drops
    threads = [
        threading.Thread(target=lambda: [ch.put({"t": "log"}) for _ in range(20_000)]) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ch.dropped == 80_000
    ch.close()
    os.close(r)
    os.close(w)
