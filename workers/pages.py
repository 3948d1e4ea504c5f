"""The WORKERS tab (utilization graph, worker table, worker panel) and the graph data of every page.

Graph endpoints answer `{traces: [{name, x, y}], y_title, …}` ready for Plotly; each reads one
precomputed series (workers/timeseries.py), so at most about 1,000 points per trace.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Count, F, OuterRef, Subquery
from django.db.models.functions import Coalesce, Lower
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone

from accounts.actor import request_actor
from actions.services import actions_for
from core.errors import NotFound
from core.pages import PAGE_ROWS, SPANS, json_view, page_action, pager, sort_of, span_of, with_toast
from workers import selectors, services
from workers.models import Worker
from workers.timeseries import parse_span, series

MIB = 1024 * 1024
METRICS = [
    ("usage", "CPU and GPU Usage"),
    ("memory", "Memory Usage"),
    ("vram", "Video Memory"),
    ("network", "Network Usage"),
]
WORKER_SORTS: dict[str, str | Lower] = {
    "name": Lower("name"),
    "experiments": "running_count",
    "runtime": "running_since",
    "iteration": "iteration",
    "status": "status",
}

# -- graphs ------------------------------------------------------------------------------------


def graph_window(payload: dict[str, Any], span_s: int) -> dict[str, Any]:
    """The graph always shows the whole span asked for, whatever the data covers."""
    now = timezone.now()
    payload["x_range"] = [(now - timedelta(seconds=span_s)).isoformat(), now.isoformat()]
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
    return sum(values) * MIB


def worker_graph(name: str, metric: str, span_s: int, per_gpu: bool) -> dict[str, Any]:
    points = series("worker", name, span_s).points
    indexes = sorted({g.get("index") for p in points for g in p.get("gpus") or [] if g.get("index") is not None})
    gpu_lines = [(f"GPU {i}", i) for i in indexes] if per_gpu and indexes else ([("GPU", None)] if indexes else [])
    traces: list[dict[str, Any]]
    if metric == "memory":
        traces = [_trace("Memory Used", points, _scaled("memory_used_mb", MIB))]
        return {"traces": traces, "y_title": "Bytes", "y_format": ".2s", "hover_format": ".3s", "y_suffix": "B"}
    if metric == "vram":
        traces = [
            _trace(f"{label} Memory", points, lambda p, i=i: _gpu_values(p, "memory_used_mb", i))
            for label, i in gpu_lines
        ]
        return {"traces": traces, "y_title": "Bytes", "y_format": ".2s", "hover_format": ".3s", "y_suffix": "B"}
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
    if metric == "length":
        key = "length" if queue_id else "queued"
        traces = [_trace("In queue", points, _scaled(key))]
        return {"traces": traces, "y_title": "Experiments", "hover_format": ".0f", "shape": "hv", "integer": True}
    traces = [
        _trace("Average wait", points, _scaled("wait_avg_s")),
        _trace("Longest wait", points, _scaled("wait_max_s")),
    ]
    return {"traces": traces, "y_title": "Seconds", "hover_format": ".1f", "y_suffix": " s"}


def attempt_graph(attempt_id: str | None, metric: str, span_s: int) -> dict[str, Any]:
    points = series("attempt", attempt_id, span_s).points if attempt_id else []
    if metric == "memory":
        traces = [
            _trace("Memory", points, _scaled("memory_mb", MIB)),
            _trace("GPU Memory", points, _scaled("gpu_memory_mb", MIB)),
        ]
        return {"traces": traces, "y_title": "Bytes", "y_format": ".2s", "hover_format": ".3s", "y_suffix": "B"}
    traces = [_trace("CPU Usage", points, _scaled("cpu_percent")), _trace("GPU Usage", points, _scaled("gpu_util"))]
    return {"traces": traces, "y_title": "Usage %", "hover_format": ".1f", "y_suffix": "%"}


@json_view
def graph_workers(request: HttpRequest) -> JsonResponse:
    span_s = parse_span(span_of(request))
    name = request.GET.get("worker")
    if name:
        if not Worker.objects.filter(name=name).exists():
            raise NotFound(f"worker {name!r} is not registered", field="worker")
        metric = request.GET.get("metric", "usage")
        return JsonResponse(graph_window(worker_graph(name, metric, span_s, request.GET.get("per_gpu") == "1"), span_s))
    return JsonResponse(graph_window(fleet_graph(span_s), span_s))


@json_view
def graph_queues(request: HttpRequest) -> JsonResponse:
    span_s = parse_span(span_of(request))
    return JsonResponse(
        graph_window(queue_graph(request.GET.get("queue") or None, request.GET.get("metric", "wait"), span_s), span_s)
    )


# -- the worker table and panel ---------------------------------------------------------------


def worker_table(sort: str, descending: bool, offset: int) -> list[Worker]:
    """One page of the worker table: each worker with its running attempts, runtime and iteration.

    The sort keys are correlated subqueries over running attempts only (a partial index), so
    neither the history of finished attempts nor the number of workers multiplies the work.
    """
    from experiments.models import Attempt

    running = Attempt.objects.filter(worker=OuterRef("pk"), finished_at__isnull=True)
    qs = Worker.objects.annotate(
        running_count=Coalesce(Subquery(running.values("worker").annotate(n=Count("*")).values("n")[:1]), 0),
        running_since=Subquery(running.order_by("started_at").values("started_at")[:1]),
        iteration=Subquery(running.order_by("-experiment__last_iteration").values("experiment__last_iteration")[:1]),
    )
    key = WORKER_SORTS[sort]
    expression: F | Lower = F(key) if isinstance(key, str) else key
    ordering = expression.desc(nulls_last=True) if descending else expression.asc(nulls_last=True)
    return list(selectors.with_running(qs.order_by(ordering, "name")[offset : offset + PAGE_ROWS]))


def _rows_context(request: HttpRequest) -> dict[str, Any]:
    sort, descending = sort_of(request, WORKER_SORTS)
    page = pager(request, Worker.objects.count())
    rows = worker_table(sort, descending, page["offset"])
    now = timezone.now()
    for w in rows:
        w.live = selectors.worker_is_live(w)  # type: ignore[attr-defined]
        w.runtime_s = (now - w.running_since).total_seconds() if w.running_since else None  # type: ignore[attr-defined]
    me = request_actor(request)
    return {
        "rows": rows,
        **page,
        "sort": sort,
        "descending": descending,
        "is_admin": me.is_admin,
        "custom_actions": actions_for("worker", me),
        "base": reverse("pages:workers"),
        "exp_base": reverse("pages:experiments"),
    }


@login_required
def workers_page(request: HttpRequest) -> HttpResponse:
    context = _rows_context(request)
    selected = request.GET.get("worker", "")
    panel = _panel_context(request, selected) if selected else None
    context.update(panel or {})  # the panel's template reads the same names as its partial
    context.update(
        {
            "section": "orchestration",
            "tab": "workers",
            "spans": SPANS,
            "span": span_of(request),
            "metrics": METRICS,
            "metric": request.GET.get("metric", "usage"),
            "per_gpu": request.GET.get("per_gpu") == "1",
            "panel": panel is not None,
        }
    )
    return render(request, "workers/page.html", context)


@login_required
def worker_rows(request: HttpRequest) -> HttpResponse:
    return render(request, "workers/rows.html", _rows_context(request))


def _panel_context(request: HttpRequest, name: str) -> dict[str, Any] | None:
    from queues.selectors import queue_names, queue_table

    worker = selectors.with_running(Worker.objects.filter(name=name)).first()
    if worker is None:
        return None
    order = {link.queue_id: link.order for link in worker.queue_links.all()}
    queues = sorted(queue_table().filter(pk__in=order), key=lambda q: order[q.pk])
    running = worker.running  # type: ignore[attr-defined]
    started = [a.started_at for a in running if a.started_at]
    me = request_actor(request)
    return {
        "worker": worker,
        "live": selectors.worker_is_live(worker),
        "queues": queues,
        "running": running,
        "runtime_s": (timezone.now() - min(started)).total_seconds() if started else None,
        "iteration": max((a.experiment.last_iteration or 0 for a in running), default=None),
        "free_gpus": max(0.0, worker.gpus - worker.used_gpus),
        "is_admin": me.is_admin,
        "all_queues": queue_names(),
        "queue_names": ", ".join(q.name for q in queues),
    }


@login_required
def worker_panel(request: HttpRequest, name: str) -> HttpResponse:
    context = _panel_context(request, name)
    if context is None:
        return with_toast(HttpResponse('<aside id="panel"></aside>', status=404), "That worker is gone", "error")
    return render(request, "workers/panel.html", context)


@page_action
def worker_set_queues(request: HttpRequest, name: str) -> HttpResponse:
    me = request_actor(request)
    worker = selectors.worker_for_actor(actor=me, name=name, write=True)
    refs = [r.strip() for r in request.POST.get("queues", "").split(",") if r.strip()]
    services.worker_update(actor=me, worker=worker, queues=refs)
    response = render(request, "workers/panel.html", _panel_context(request, name))
    return with_toast(
        response, f"{name} now listens to {', '.join(refs) or 'no queue'}", workersChanged={}, closeDialogs={}
    )


@page_action
def worker_drain(request: HttpRequest, name: str) -> HttpResponse:
    me = request_actor(request)
    worker = selectors.worker_for_actor(actor=me, name=name, write=True)
    drain = request.POST.get("drain") == "true"
    services.worker_update(actor=me, worker=worker, drain=drain, reason=request.POST.get("reason", "from the web page"))
    response = render(request, "workers/panel.html", _panel_context(request, name))
    return with_toast(response, f"{name} {'draining' if drain else 'takes work again'}", workersChanged={})
