"""snakepit_bridge.metrics: the API, its checks and caps, and the batches it ships."""
import re
import threading

import pytest

from snakepit_bridge import metrics


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    monkeypatch.setattr(metrics, "_registry", {})


def take():
    """Everything `take_batches` ships now, merged (None when nothing changed)."""
    lines = metrics.take_batches()
    if not lines:
        return None
    merged = {"defs": [], "c": [], "h": [], "g": []}
    for line in lines:
        assert line["t"] == "metrics"
        for d in line["defs"]:
            if d not in merged["defs"]:
                merged["defs"].append(d)
        for key in "chg":
            merged[key].extend(line.get(key, []))
    return merged


def test_counters_add_per_label_set_and_a_batch_carries_the_delta_once():
    c = metrics.counter("tokens", "Tokens")
    c.add(3, model="small")
    c.add(2, model="small")
    c.add(model="big")
    batch = take()
    assert batch["defs"] == [{"name": "tokens", "kind": "counter", "help": "Tokens", "unit": ""}]
    assert sorted(batch["c"], key=str) == sorted(
        [["tokens", {"model": "small"}, 5], ["tokens", {"model": "big"}, 1]], key=str
    )
    # Nothing changed: nothing to ship. The definition travels with every line, so a
    # lost line never leaves the metric unknown to the pool.
    assert take() is None
    c.add(1, model="small")
    again = take()
    assert again["defs"] == batch["defs"] and again["c"] == [["tokens", {"model": "small"}, 1]]


def test_histograms_bucket_like_the_pool_and_keep_sum_count_min_max():
    h = metrics.histogram("size", buckets=(1, 2, 4))
    for v in (0.5, 1, 1.5, 2, 3, 4, 9):
        h.record(v)
    [row] = take()["h"]
    name, labels, counts, total, count, lo, hi = row
    # (-inf,1], (1,2], (2,4], (4,inf): the bound belongs to the bucket below it.
    assert counts == [2, 2, 2, 1]
    assert (total, count, lo, hi) == (21.0, 7, 0.5, 9.0)
    # That is the pool's rule too (partition_point(|b| b < v), user_metrics_tests.rs).


def test_gauges_ship_their_last_value_when_changed():
    g = metrics.gauge("depth")
    g.set(3)
    g.set(5)
    assert take()["g"] == [["depth", {}, 5.0]]
    assert take() is None


@pytest.mark.parametrize(
    "call, says",
    [
        (lambda: metrics.counter("9lives"), "not a valid name"),
        (lambda: metrics.counter("has-dash"), "not a valid name"),
        (lambda: metrics.counter("x" * 65), "at most 64 characters"),
        (lambda: metrics.counter("ok").add(-1), "only go up"),
        (lambda: metrics.counter("ok").add(float("nan")), "only go up"),
        (lambda: metrics.gauge("g").set(float("nan")), "not a finite value"),
        (lambda: metrics.histogram("h", buckets=()), "buckets must be"),
        (lambda: metrics.histogram("h2", buckets=(2, 1)), "increasing"),
        (lambda: metrics.histogram("h3", buckets=(1, float("inf"))), "finite"),
        (lambda: metrics.counter("lab").add(1, **{"bad-label": "x"}), "'bad-label' is not a valid name"),
        (lambda: metrics.histogram("h4", buckets=range(1, 66)), "1 to 64"),
        (lambda: metrics.counter("nine").add(1, **{f"l{i}": "v" for i in range(9)}), "at most 8"),
    ],
)
def test_bad_names_amounts_and_buckets_are_refused_with_a_message(call, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        call()


def test_labels_the_pool_sets_are_reserved():
    for name in ("pool_name", "worker_id"):
        with pytest.raises(ValueError, match="reserved"):
            metrics.counter("c").add(1, **{name: "x"})


def test_one_kind_per_name_and_one_set_of_buckets():
    metrics.counter("n")
    assert metrics.counter("n") is metrics.counter("n")
    with pytest.raises(ValueError, match="already a counter"):
        metrics.gauge("n")
    metrics.histogram("lat", buckets=(1, 2))
    with pytest.raises(ValueError, match="buckets"):
        metrics.histogram("lat", buckets=(1, 3))


def test_label_sets_beyond_the_cap_fold_into_one():
    c = metrics.counter("wide")
    for i in range(metrics.MAX_SERIES + 50):
        c.add(1, user=str(i))
    rows = take()["c"]
    assert len(rows) == metrics.MAX_SERIES + 1
    other = [r for r in rows if r[1] == {"user": metrics.OVERFLOW}]
    assert other == [["wide", {"user": metrics.OVERFLOW}, 50]]


def test_concurrent_adds_lose_nothing():
    c = metrics.counter("threads")

    def work():
        for _ in range(10_000):
            c.add(1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    taken = 0
    while any(t.is_alive() for t in threads):
        batch = take()
        taken += sum(r[2] for r in batch["c"]) if batch else 0
    for t in threads:
        t.join()
    batch = take()
    taken += sum(r[2] for r in batch["c"]) if batch else 0
    assert taken == 40_000


def test_a_bound_series_counts_in_the_same_series_as_keyword_labels():
    c = metrics.counter("bound")
    small = c.labels(model="small")
    small.add(2)
    c.add(3, model="small")
    assert take()["c"] == [["bound", {"model": "small"}, 5]]
    h = metrics.histogram("bh", buckets=(1,))
    h.labels(k=1).record(0.5)
    h.record(2, k="1")  # label values are strings: 1 and "1" are one series
    [row] = take()["h"]
    assert row[1] == {"k": "1"} and row[2] == [1, 1] and row[4] == 2
    g = metrics.gauge("bg")
    g.labels().set(4)
    assert take()["g"] == [["bg", {}, 4.0]]
    assert not hasattr(c.labels(), "set"), "a counter's series only adds"


def test_a_value_that_cannot_travel_is_refused_and_the_metric_stays_usable():
    c = metrics.counter("odd")
    with pytest.raises(TypeError):
        c.add(object())
    with pytest.raises(ValueError, match="finite"):
        c.add(10**400)  # no float holds it (the pool's totals are floats)
    for bad in (float("inf"), float("nan"), -1):
        with pytest.raises(ValueError):
            c.add(bad)
    with pytest.raises(ValueError):
        metrics.gauge("og").set(float("-inf"))
    with pytest.raises(ValueError):
        metrics.histogram("oh").record(float("inf"))
    c.add(1)
    assert take()["c"] == [["odd", {}, 1.0]]
    # A sum that overflows is not shipped as `Infinity` (not JSON).
    c.add(1.7e308)
    c.add(1.7e308)
    assert take() is None


def test_many_series_ship_as_lines_the_pool_takes_each_with_the_definition():
    import json

    c = metrics.counter("wide_labels")
    for i in range(metrics.ROWS_PER_LINE * 2 + 5):
        c.add(1, user="u" * 90 + str(i), a="x" * 100, b="y" * 100)
    lines = metrics.take_batches()
    assert [len(line["c"]) for line in lines] == [metrics.ROWS_PER_LINE] * 2 + [5]
    for line in lines:
        assert [d["name"] for d in line["defs"]] == ["wide_labels"]
        # Under the pool's 64 KiB line cap, encoded as the channel encodes.
        assert len(json.dumps(line, separators=(",", ":")).encode()) < 64 * 1024
