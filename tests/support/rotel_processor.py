"""A rotel processor that appends everything the receiver gets to JSONL files in
$SNAKEPIT_ROTEL_DUMP (spans.jsonl, logs.jsonl, metrics.jsonl), for tests to read."""
import json
import os

OUT = os.environ.get("SNAKEPIT_ROTEL_DUMP", "/tmp/snakepit-rotel-dump")


def _value(any_value):
    if any_value is None:
        return None
    v = getattr(any_value, "value", None)
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, bytes):
        return v.hex()
    inner = getattr(v, "value", None)
    if isinstance(inner, (str, int, float, bool)):
        return inner
    return str(v)


def _attrs(kvs):
    return {kv.key: _value(kv.value) for kv in (kvs or [])}


def _hex(b):
    return b.hex() if isinstance(b, (bytes, bytearray)) else (b or "")


_STATUS = {0: "unset", 1: "ok", 2: "error"}


def _status(status):
    code = getattr(status, "code", None)
    try:
        return _STATUS.get(int(code), str(code))
    except (TypeError, ValueError):
        return str(code).lower()


def _write(name, rows):
    with open(os.path.join(OUT, name), "a") as f:
        for row in rows:
            f.write(json.dumps(row, default=str) + "\n")


def process_spans(resource_spans):
    resource = _attrs(resource_spans.resource.attributes) if resource_spans.resource else {}
    rows = []
    for scope_spans in resource_spans.scope_spans:
        for s in scope_spans.spans:
            status = s.status
            rows.append(
                {
                    "resource": resource,
                    "name": s.name,
                    "trace_id": _hex(s.trace_id),
                    "span_id": _hex(s.span_id),
                    "parent_span_id": _hex(s.parent_span_id),
                    "kind": str(s.kind),
                    "status_code": _status(status) if status else "unset",
                    "status_message": getattr(status, "message", "") if status else "",
                    "start_time_unix_nano": s.start_time_unix_nano,
                    "end_time_unix_nano": s.end_time_unix_nano,
                    "attributes": _attrs(s.attributes),
                    "events": [{"name": e.name, "attributes": _attrs(e.attributes)} for e in s.events],
                }
            )
    _write("spans.jsonl", rows)


def process_logs(resource_logs):
    resource = _attrs(resource_logs.resource.attributes) if resource_logs.resource else {}
    rows = []
    for scope_logs in resource_logs.scope_logs:
        for r in scope_logs.log_records:
            rows.append(
                {
                    "resource": resource,
                    "severity_text": getattr(r, "severity_text", ""),
                    "body": _value(getattr(r, "body", None)),
                    "attributes": _attrs(getattr(r, "attributes", [])),
                    "trace_id": _hex(getattr(r, "trace_id", b"")),
                    "span_id": _hex(getattr(r, "span_id", b"")),
                }
            )
    _write("logs.jsonl", rows)


def _number(v):
    """A data point's number, however the binding wraps the oneof."""
    for _ in range(3):
        if isinstance(v, bool) or v is None:
            return None
        if isinstance(v, (int, float)):
            return v
        # pyo3 complex enums (NumberDataPointValue.AsDouble) hold theirs in `_0`.
        v = getattr(v, "value", getattr(v, "_0", None))
    return None


def _points(data):
    """Data points of a sum, gauge or histogram: attributes and value, or count, sum,
    min, max and bucket counts."""
    holders = [data, getattr(data, "value", None), getattr(data, "_0", None)]
    try:
        holders.append(data[0])
    except Exception:  # noqa: BLE001 - not a tuple-like variant
        pass
    for holder in holders:
        dps = getattr(holder, "data_points", None)
        if dps is None:
            continue
        out = []
        for dp in dps:
            row = {"attributes": _attrs(getattr(dp, "attributes", []))}
            if hasattr(dp, "bucket_counts"):
                row.update(
                    count=getattr(dp, "count", None),
                    sum=_number(getattr(dp, "sum", None)),
                    min=_number(getattr(dp, "min", None)),
                    max=_number(getattr(dp, "max", None)),
                    bucket_counts=list(getattr(dp, "bucket_counts", [])),
                    explicit_bounds=list(getattr(dp, "explicit_bounds", [])),
                )
            else:
                row["value"] = _number(getattr(dp, "value", None))
            out.append(row)
        return out
    return []


def process_metrics(resource_metrics):
    resource = _attrs(resource_metrics.resource.attributes) if resource_metrics.resource else {}
    rows = []
    for scope_metrics in resource_metrics.scope_metrics:
        for m in scope_metrics.metrics:
            rows.append(
                {
                    "resource": resource,
                    "name": m.name,
                    "data": str(getattr(m, "data", ""))[:2000],
                    "points": _points(getattr(m, "data", None)),
                }
            )
    _write("metrics.jsonl", rows)
