"""The graphs' data: each a Plotly-ready payload `{traces: [{name, x, y}], y_title, …}` read
from one precomputed series (workers/timeseries.py), so at most about 1,000 points per trace.
One builder per subject: a worker, the fleet, a queue, an attempt.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from workers.timeseries import series

# Memory in GiB, as the worker panel states capacities (not SI gigabytes).
GIB_AXIS: dict[str, Any] = {"y_title": "Memory (GiB)", "hover_format": ".2f", "y_suffix": " GiB"}
METRICS = [
    ("usage", "CPU and GPU Usage"),
    ("memory", "Memory Usage"),
    ("vram", "Video Memory"),
    ("network", "Network Usage"),
]


MIN_WINDOW = timedelta(minutes=10)


def graph_window(payload: dict[str, Any], span_s: int, end: datetime | None = None) -> dict[str, Any]:
    """The x-axis: the span asked for, ending now (or `end`), but starting at the first sample
    when the data is younger than the span, so that ten minutes of data fill the graph."""
    end = end or timezone.now()
    start = end - timedelta(seconds=span_s)
    firsts = [t["x"][0] for t in payload["traces"] if t["x"]]
    if firsts:  # never narrower than MIN_WINDOW: one fresh point must not zoom the axis to a millisecond
        start = max(start, min(datetime.fromisoformat(min(firsts)), end - MIN_WINDOW))
    payload["x_range"] = [start.isoformat(), end.isoformat()]
    return payload


def _trace(name: str, points: list[dict[str, Any]], value: Any) -> dict[str, Any]:
    xs: list[str] = []
    ys: list[float | None] = []
    for p in points:
        at: datetime = p["at"]
        xs.append(at.isoformat())
        ys.append(value(p))
    return {"name": name, "x": xs, "y": ys}


def _scaled(key: str, factor: float = 1.0) -> Any:
    return lambda p: None if p.get(key) is None else round(p[key] * factor, 3)


def _gpu_values(p: dict[str, Any], key: str, index: int | None) -> float | None:
    gpus = [g for g in p.get("gpus") or [] if g.get(key) is not None and (index is None or g.get("index") == index)]
    if not gpus:
        return None
    values = [float(g[key]) for g in gpus]
    if key == "util":
        return round(sum(values) / len(values), 2)
    return round(sum(values) / 1024, 3)  # MiB to GiB


NO_GPUS = "This worker has no GPUs"


def worker_graph(name: str, metric: str, span_s: int, per_gpu: bool, has_gpus: bool = True) -> dict[str, Any]:
    """A worker's graph; `has_gpus` (its registration's GPU count) says whether to offer GPU lines."""
    points = series("worker", name, span_s).points
    indexes = sorted({g.get("index") for p in points for g in p.get("gpus") or [] if g.get("index") is not None})
    payload = _worker_metric(points, metric, per_gpu, indexes)
    payload["has_gpus"] = has_gpus or bool(indexes)
    if not payload["has_gpus"]:
        payload["traces"] = [t for t in payload["traces"] if not t["name"].startswith("GPU")]
        if metric == "vram":
            payload["empty_text"] = NO_GPUS
    return payload


def _worker_metric(points: list[dict[str, Any]], metric: str, per_gpu: bool, indexes: list[int]) -> dict[str, Any]:
    gpu_lines = [(f"GPU {i}", i) for i in indexes] if per_gpu and indexes else ([("GPU", None)] if indexes else [])
    traces: list[dict[str, Any]]
    if metric == "memory":
        traces = [_trace("Memory Used", points, _scaled("memory_used_mb", 1 / 1024))]
        return GIB_AXIS | {"traces": traces}
    if metric == "vram":
        traces = [
            _trace(f"{label} Memory", points, lambda p, i=i: _gpu_values(p, "memory_used_mb", i))
            for label, i in gpu_lines
        ]
        return GIB_AXIS | {"traces": traces}
    if metric == "network":
        traces = [
            _trace("Network Receive", points, _scaled("network_rx_bps")),
            _trace("Network Transmit", points, _scaled("network_tx_bps")),
        ]
        return {"traces": traces, "y_title": "Bytes/sec", "y_format": ".2s", "hover_format": ".3s", "y_suffix": "B/s"}
    traces = [_trace("CPU Usage", points, _scaled("cpu_percent"))]
    traces += [_trace(f"{label} Usage", points, lambda p, i=i: _gpu_values(p, "util", i)) for label, i in gpu_lines]
    return {"traces": traces, "y_title": "Usage %", "hover_format": ".1f", "y_suffix": "%"}


def fleet_graph(span_s: int) -> dict[str, Any]:
    points = series("fleet", "", span_s).points
    traces = [
        _trace("Total Workers", points, lambda p: p.get("workers_total")),
        _trace("Active Workers", points, lambda p: p.get("workers_active")),
    ]
    return {"traces": traces, "y_title": "Count", "hover_format": ".0f", "shape": "hv", "integer": True}


def queue_graph(queue_id: str | None, metric: str, span_s: int) -> dict[str, Any]:
    points = series("queue", queue_id, span_s).points if queue_id else series("fleet", "", span_s).points
    if metric == "length" and queue_id:  # a count: each bucket's peak, a whole number
        traces = [_trace("In queue", points, _scaled("length"))]
        return {"traces": traces, "y_title": "Experiments", "hover_format": ".0f", "shape": "hv", "integer": True}
    if metric == "length":  # all queues: the mean length of a queue, as the title says
        traces = [_trace("Average length", points, _scaled("queue_length_avg"))]
        return {"traces": traces, "y_title": "Experiments", "hover_format": ".2f", "shape": "hv"}
    traces = [
        _trace("Average wait", points, _scaled("wait_avg_s")),
        _trace("Longest wait", points, _scaled("wait_max_s")),
    ]
    return {"traces": traces, "y_title": "Seconds", "hover_format": ".1f", "y_suffix": " s"}


def attempt_graph(attempt_id: str | None, metric: str, span_s: int, end: datetime | None = None) -> dict[str, Any]:
    """An attempt's graph over the span ending at `end` (its own time range, by default)."""
    points = series("attempt", attempt_id, span_s, now=end).points if attempt_id else []
    payload = _attempt_metric(points, metric)
    # GPU lines only for an attempt that had GPU data: none for a CPU-only run.
    payload["traces"] = [
        t for t in payload["traces"] if not t["name"].startswith("GPU") or any(v is not None for v in t["y"])
    ]
    return payload


def _attempt_metric(points: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    if metric == "memory":
        traces = [
            _trace("Memory", points, _scaled("memory_mb", 1 / 1024)),
            _trace("GPU Memory", points, _scaled("gpu_memory_mb", 1 / 1024)),
        ]
        return GIB_AXIS | {"traces": traces}
    traces = [_trace("CPU Usage", points, _scaled("cpu_percent")), _trace("GPU Usage", points, _scaled("gpu_util"))]
    return {"traces": traces, "y_title": "Usage %", "hover_format": ".1f", "y_suffix": "%"}
