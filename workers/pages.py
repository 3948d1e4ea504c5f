"""The WORKERS tab (utilization graph, worker table, worker panel) and the graph endpoints of
the workers and queues pages (the payloads are workers/graphs.py's)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone

from accounts.actor import request_actor
from actions.services import actions_for
from core.errors import NotFound
from core.pages import PAGE_ROWS, SPANS, json_view, page_action, pager, sort_of, span_of, with_toast
from queues.selectors import queue_names, queue_table
from workers import selectors, services
from workers.graphs import METRICS, fleet_graph, graph_window, queue_graph, worker_graph
from workers.models import Worker
from workers.timeseries import parse_span


@json_view
def graph_workers(request: HttpRequest) -> JsonResponse:
    span_s = parse_span(span_of(request))
    name = request.GET.get("worker")
    if name:
        gpus = Worker.objects.filter(name=name).values_list("gpus", flat=True).first()
        if gpus is None:
            raise NotFound(f"worker {name!r} is not registered", field="worker")
        metric = request.GET.get("metric", "usage")
        per_gpu = request.GET.get("per_gpu") == "1"
        return JsonResponse(graph_window(worker_graph(name, metric, span_s, per_gpu, has_gpus=gpus > 0), span_s))
    return JsonResponse(graph_window(fleet_graph(span_s), span_s))


@json_view
def graph_queues(request: HttpRequest) -> JsonResponse:
    span_s = parse_span(span_of(request))
    return JsonResponse(
        graph_window(queue_graph(request.GET.get("queue") or None, request.GET.get("metric", "wait"), span_s), span_s)
    )


# -- the worker table and panel ---------------------------------------------------------------


def _rows_context(request: HttpRequest) -> dict[str, Any]:
    sort, descending = sort_of(request, selectors.WORKER_SORTS)
    page = pager(request, Worker.objects.count())
    rows = selectors.worker_table(sort, descending=descending, offset=page["offset"], limit=PAGE_ROWS)
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
    worker = selectors.with_running(Worker.objects.filter(name=name)).first()
    if worker is None:
        return None
    order = {link.queue_id: link.order for link in worker.queue_links.all()}
    queues = sorted(
        queue_table(listeners=selectors.queue_listener_counts()).filter(pk__in=order), key=lambda q: order[q.pk]
    )
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
        "free_cpus": max(0.0, worker.cpus - worker.used_cpus),
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
