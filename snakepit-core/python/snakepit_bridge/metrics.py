"""User metrics: counters, histograms and gauges the pool aggregates across its workers.

    from snakepit_bridge import metrics

    TOKENS = metrics.counter("tokens_generated", "Tokens produced by generate")
    BATCH = metrics.histogram("batch_size", "Items per batch", buckets=(1, 2, 4, 8, 16, 32))
    CACHE = metrics.gauge("cache_entries", "Entries in this worker's cache")

    TOKENS.add(n, model="small")     # label values as keyword arguments
    BATCH.record(len(items))
    CACHE.set(len(cache))
    SMALL = TOKENS.labels(model="small")   # a fixed label set, resolved once
    SMALL.add(n)

The pool exports them through `/metrics` and OTLP with its own metrics, prefixed
(`snakepit_user_tokens_generated_total{pool_name="default",model="small"}`):
counters and histograms summed over the pool's workers, past and present (a replaced
worker's totals are kept, so a counter never goes backwards), gauges per worker
(`worker_id` label; a worker's gauges leave with it).

Cheap on the request path: a record is a lock and a dict update in this process.
Measured on CPython 3.11 (2-core VM, `python/benches/record_cost.py`): `add`/`set`
without labels or on a `labels()` series about 0.4 µs, `record` 0.6 µs; with one
keyword label 0.9 µs (`add`) and 1.2-1.5 µs (`record`), so use `labels()` where a record
sits in a tight loop. The channel's writer thread ships what changed since the
last time, once a second (and at exit), as lines on the telemetry pipe (see take_batches); the
amounts accumulate in place meanwhile, so a slow pool costs no memory beyond one
entry per series and loses nothing. A worker killed outright loses at most its last
second. Without a pool (a worker started by hand), records cost the same and go
nowhere.

Names are `[a-zA-Z_][a-zA-Z0-9_]*`, at most 64 characters, one kind per name; label
names follow the same rule; a metric has at most `MAX_SERIES` label sets here (more
fold into one with every value `__other__`), and the pool caps label values again
as it caps its own `command` label.
"""
from __future__ import annotations

import bisect
import math
import re
import sys
import threading
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Type, TypeVar

__all__ = ["counter", "histogram", "gauge", "Counter", "Histogram", "Gauge"]

MAX_NAME_LEN = 64
MAX_SERIES = 1000
# The pool's own caps (snakepit_core::user_metrics), checked here too so a user learns
# of a refusal at the call, not from a warning in the pool's log.
MAX_LABELS = 8
MAX_BUCKETS = 64
OVERFLOW = "__other__"
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_INF = math.inf
# The largest float: an int beyond it has no float (the pool's totals are floats).
_MAX = sys.float_info.max
_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# The pool sets these itself on every series.
RESERVED_LABELS = ("pool_name", "worker_id")

LabelKey = Tuple[Tuple[str, str], ...]

_registry: Dict[str, "_Metric"] = {}
_registry_lock = threading.Lock()


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > MAX_NAME_LEN:
        raise ValueError(
            f"{what} {name!r} is not a valid name: use letters, digits and '_', not starting "
            f"with a digit, at most {MAX_NAME_LEN} characters"
        )


class _Metric:
    kind = ""

    def __init__(self, name: str, description: str, unit: str) -> None:
        self.name = name
        self.description = description
        self.unit = unit
        self._lock = threading.Lock()
        # The label sets as callers wrote them (keyword order included) -> the series
        # key they count in: checked, sorted and capped once, then one dict lookup.
        self._canon: Dict[Tuple[Any, ...], LabelKey] = {(): ()}
        self._admitted: Set[LabelKey] = {()}

    def _series_key(self, labels: Dict[str, object], raw: Optional[Tuple[Any, ...]]) -> LabelKey:
        """The key of a label set not seen before (under the lock): its names checked,
        values made strings, counted against MAX_SERIES (beyond it: OVERFLOW)."""
        if len(labels) > MAX_LABELS:
            raise ValueError(
                f"metric {self.name!r}: {len(labels)} labels, the pool takes at most {MAX_LABELS}"
            )
        for k in labels:
            _check_name(k, f"label of metric {self.name!r}")
            if k in RESERVED_LABELS or k.startswith("__"):
                raise ValueError(
                    f"metric {self.name!r}: the label name {k!r} is reserved (the pool sets "
                    f"{' and '.join(RESERVED_LABELS)} itself); choose another name"
                )
        key = tuple(sorted((k, v if isinstance(v, str) else str(v)) for k, v in labels.items()))
        if key not in self._admitted:
            if len(self._admitted) > MAX_SERIES:
                key = tuple((k, OVERFLOW) for k, _ in key)
            self._admitted.add(key)
        if raw is not None and len(self._canon) <= 4 * MAX_SERIES:
            self._canon[raw] = key
        return key

    def _key(self, labels: Dict[str, object]) -> LabelKey:
        """The series key of `labels`: one dict lookup once the label set is known."""
        raw: Optional[Tuple[Any, ...]] = tuple(labels.items())
        try:
            key = self._canon.get(raw)  # type: ignore[arg-type]
        except TypeError:  # an unhashable label value: str() of it, the slow way
            raw, key = None, None
        if key is None:
            with self._lock:
                key = self._series_key(labels, raw)
        return key

    def _labels_key(self, labels: Dict[str, object]) -> LabelKey:
        return self._key(labels) if labels else ()

    def _take(self) -> List[List[Any]]:
        """The rows changed since the last take (telemetry line rows)."""
        raise NotImplementedError

    def definition(self) -> Dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "help": self.description, "unit": self.unit}


class Counter(_Metric):
    """A monotonic count; summed over the pool's workers."""

    kind = "counter"

    def __init__(self, name: str, description: str = "", unit: str = "") -> None:
        super().__init__(name, description, unit)
        self._pending: Dict[LabelKey, float] = {}

    def add(self, amount: float = 1, **labels: object) -> None:
        """Add `amount` (not negative) to the series `labels` name."""
        # The body of _add inlined: one Python frame less on the hot path.
        cls = amount.__class__
        if cls is not int and cls is not float:
            amount = float(amount)
        if not 0 <= amount < _MAX:  # negative, NaN, infinite, or no float holds it
            self._refuse(amount)
        key = self._key(labels) if labels else ()
        # acquire/release rather than `with`: half the cost on 3.11 (try/finally
        # costs nothing until something raises).
        self._lock.acquire()
        try:
            pending = self._pending
            pending[key] = pending.get(key, 0) + amount
        finally:
            self._lock.release()

    def _add(self, key: LabelKey, amount: float) -> None:
        cls = amount.__class__
        if cls is not int and cls is not float:
            amount = float(amount)
        if not 0 <= amount < _MAX:
            self._refuse(amount)
        self._lock.acquire()
        try:
            pending = self._pending
            pending[key] = pending.get(key, 0) + amount
        finally:
            self._lock.release()

    def _refuse(self, amount: object) -> None:
        raise ValueError(
            f"counter {self.name!r}: cannot add {amount!r} (counters only go up, by finite amounts)"
        )

    def labels(self, **labels: object) -> "BoundCounter":
        """The series `labels` names, resolved once, for a hot path with a fixed label
        set: `TOKENS.labels(model="small").add(n)` skips the per-call label work."""
        return BoundCounter(self, self._labels_key(labels))

    def _take(self) -> List[List[Any]]:
        with self._lock:
            taken, self._pending = self._pending, {}
        rows: List[List[Any]] = []
        for k, v in taken.items():
            try:
                v = float(v)
            except OverflowError:
                continue
            # A total too large for a float, or one that overflowed to inf, cannot
            # travel (JSON has no Infinity, the pool's totals are floats): dropped.
            if v < _INF:
                rows.append([self.name, dict(k), v])
        return rows


class Gauge(_Metric):
    """A value that goes up and down; one series per worker at the pool."""

    kind = "gauge"

    def __init__(self, name: str, description: str = "", unit: str = "") -> None:
        super().__init__(name, description, unit)
        self._values: Dict[LabelKey, float] = {}
        self._changed: Set[LabelKey] = set()

    def set(self, value: float, **labels: object) -> None:
        """Set the series `labels` name to `value`."""
        self._set(self._key(labels) if labels else (), value)

    def _set(self, key: LabelKey, value: float) -> None:
        if value.__class__ is not float:
            value = float(value)
        if not -_INF < value < _INF:
            raise ValueError(f"gauge {self.name!r}: {value!r} is not a finite value")
        self._lock.acquire()
        try:
            self._values[key] = value
            self._changed.add(key)
        finally:
            self._lock.release()

    def labels(self, **labels: object) -> "BoundGauge":
        """The series `labels` names, resolved once (see `Counter.labels`)."""
        return BoundGauge(self, self._labels_key(labels))

    def _take(self) -> List[List[Any]]:
        with self._lock:
            changed, self._changed = self._changed, set()
            return [[self.name, dict(k), self._values[k]] for k in changed]


class Histogram(_Metric):
    """A distribution over fixed buckets; summed over the pool's workers."""

    kind = "histogram"

    def __init__(
        self, name: str, description: str = "", unit: str = "", buckets: Sequence[float] = DEFAULT_BUCKETS
    ) -> None:
        super().__init__(name, description, unit)
        bounds = [float(b) for b in buckets]
        if (
            not bounds
            or len(bounds) > MAX_BUCKETS
            or any(not math.isfinite(b) for b in bounds)
            or bounds != sorted(set(bounds))
        ):
            raise ValueError(
                f"histogram {name!r}: buckets must be finite, increasing, 1 to {MAX_BUCKETS} of them, "
                f"got {list(buckets)!r}"
            )
        self.buckets = bounds
        # Per series: [bucket counts..., sum, min, max]
        self._pending: Dict[LabelKey, List[Any]] = {}

    def record(self, value: float, **labels: object) -> None:
        """Record one observation of `value` in the series `labels` name."""
        self._record(self._key(labels) if labels else (), value)

    def _record(self, key: LabelKey, value: float) -> None:
        if value.__class__ is not float:
            value = float(value)
        if not -_INF < value < _INF:
            raise ValueError(f"histogram {self.name!r}: {value!r} is not a finite value")
        # Bucket i holds (bounds[i-1], bounds[i]]; the last one everything above.
        i = bisect.bisect_left(self.buckets, value)
        self._lock.acquire()
        try:
            agg = self._pending.get(key)
            if agg is None:
                # [bucket counts..., sum, min, max]; the count is the counts' sum.
                agg = self._pending[key] = [0] * (len(self.buckets) + 1) + [0.0, value, value]
            agg[i] += 1
            agg[-3] += value
            if value < agg[-2]:
                agg[-2] = value
            elif value > agg[-1]:
                agg[-1] = value
        finally:
            self._lock.release()

    def labels(self, **labels: object) -> "BoundHistogram":
        """The series `labels` names, resolved once (see `Counter.labels`)."""
        return BoundHistogram(self, self._labels_key(labels))

    def definition(self) -> Dict[str, Any]:
        d = super().definition()
        d["buckets"] = self.buckets
        return d

    def _take(self) -> List[List[Any]]:
        with self._lock:
            taken, self._pending = self._pending, {}
        n = len(self.buckets) + 1
        return [
            [self.name, dict(k), a[:n], a[n], sum(a[:n]), a[n + 1], a[n + 2]]
            for k, a in taken.items()
            if -_INF < a[n] < _INF
        ]


class BoundCounter:
    """One series of a counter (see `Counter.labels`)."""

    __slots__ = ("_metric", "_key")

    def __init__(self, metric: "Counter", key: LabelKey) -> None:
        self._metric, self._key = metric, key

    def add(self, amount: float = 1) -> None:
        """Add `amount` (not negative) to this series."""
        self._metric._add(self._key, amount)


class BoundGauge:
    """One series of a gauge (see `Gauge.labels`)."""

    __slots__ = ("_metric", "_key")

    def __init__(self, metric: "Gauge", key: LabelKey) -> None:
        self._metric, self._key = metric, key

    def set(self, value: float) -> None:
        """Set this series to `value`."""
        self._metric._set(self._key, value)


class BoundHistogram:
    """One series of a histogram (see `Histogram.labels`)."""

    __slots__ = ("_metric", "_key")

    def __init__(self, metric: "Histogram", key: LabelKey) -> None:
        self._metric, self._key = metric, key

    def record(self, value: float) -> None:
        """Record one observation of `value` in this series."""
        self._metric._record(self._key, value)


M = TypeVar("M", bound=_Metric)


def _get(cls: Type[M], name: str, description: str, unit: str, **extra: Any) -> M:
    _check_name(name, "metric")
    with _registry_lock:
        existing = _registry.get(name)
        if existing is not None:
            if not isinstance(existing, cls) or type(existing) is not cls:
                raise ValueError(f"metric {name!r} is already a {existing.kind}, not a {cls.kind}")
            buckets = getattr(existing, "buckets", None)
            if extra.get("buckets") is not None and list(map(float, extra["buckets"])) != buckets:
                raise ValueError(f"histogram {name!r} already has the buckets {buckets!r}")
            return existing
        metric = cls(name, description, unit, **{k: v for k, v in extra.items() if v is not None})
        _registry[name] = metric
        return metric


def counter(name: str, description: str = "", unit: str = "") -> Counter:
    """The counter `name` (made on first use; the same object after)."""
    return _get(Counter, name, description, unit)


def gauge(name: str, description: str = "", unit: str = "") -> Gauge:
    """The gauge `name` (made on first use; the same object after)."""
    return _get(Gauge, name, description, unit)


def histogram(
    name: str, description: str = "", unit: str = "", buckets: Optional[Sequence[float]] = None
) -> Histogram:
    """The histogram `name` with `buckets` (upper bounds; default: latency-like seconds)."""
    return _get(Histogram, name, description, unit, buckets=buckets)


# Rows per telemetry line: the pool refuses lines over 64 KiB, and a row is at most
# about 1.3 KiB (8 labels of 100 characters, or a histogram of 64 buckets).
ROWS_PER_LINE = 40


def take_batches() -> List[Dict[str, Any]]:
    """What changed since the last call, as telemetry lines: per metric, its
    definition and at most ROWS_PER_LINE rows each. The definition travels with every
    line (the pool ignores one it knows), so a line lost or refused never leaves the
    metric unknown to the pool."""
    with _registry_lock:
        metrics: List[_Metric] = list(_registry.values())
    lines: List[Dict[str, Any]] = []
    for m in metrics:
        rows = m._take()
        key = {"counter": "c", "histogram": "h", "gauge": "g"}[m.kind]
        definition = m.definition()
        for i in range(0, len(rows), ROWS_PER_LINE):
            lines.append({"t": "metrics", "defs": [definition], key: rows[i : i + ROWS_PER_LINE]})
    return lines

