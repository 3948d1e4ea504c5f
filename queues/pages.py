"""The QUEUES tab: graphs, the queue table, the queue panel, and every queue action."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse

from accounts.actor import request_actor
from actions.services import actions_for
from core.errors import InvalidInput, ServiceError
from core.pages import PAGE_ROWS, SPANS, int_param, page_action, pager, sort_of, span_of, with_toast
from experiments import queueing
from experiments.access import may_manage
from queues import selectors, services
from queues.models import Queue
from workers.selectors import queue_listener_counts, workers_of_queue


def _rows_context(request: HttpRequest) -> dict[str, Any]:
    sort, descending = sort_of(request, selectors.QUEUE_SORTS)
    page = pager(request, Queue.objects.count())
    offset = page["offset"]
    rows = list(
        selectors.queue_table(sort, descending=descending, listeners=queue_listener_counts())[
            offset : offset + PAGE_ROWS
        ]
    )
    for q in rows:
        q.busy_pct = round(100 * q.busy_count / q.worker_count) if q.worker_count else 0  # type: ignore[attr-defined]
    me = request_actor(request)
    return {
        "rows": rows,
        **page,
        "sort": sort,
        "descending": descending,
        "selected": request.GET.get("queue", ""),
        "is_admin": me.is_admin,
        "custom_actions": actions_for("queue", me),
        "base": reverse("pages:queues"),
        "exp_base": reverse("pages:experiments"),
    }


@login_required
def queues_page(request: HttpRequest) -> HttpResponse:
    context = _rows_context(request)
    selected = context["selected"]
    panel = _panel_context(request, selected) if selected else None
    context.update(panel or {})  # the panel's template reads the same names as its partial
    context.update(
        {
            "section": "orchestration",
            "tab": "queues",
            "spans": SPANS,
            "span": span_of(request),
            "panel": panel is not None,
            "all_queue_names": selectors.queue_names(),
        }
    )
    return render(request, "queues/page.html", context)


@login_required
def queue_rows(request: HttpRequest) -> HttpResponse:
    return render(request, "queues/rows.html", _rows_context(request))


def _panel_context(request: HttpRequest, queue_id: str) -> dict[str, Any] | None:
    queue = selectors.queue_table(listeners=queue_listener_counts()).filter(pk=queue_id).first()
    if queue is None:
        return None
    me = request_actor(request)
    entries = list(selectors.queue_entry_rows(queue.pk, PAGE_ROWS))
    for e in entries:  # what this user is offered: the rule the service enforces
        e.can_manage = may_manage(me, e.experiment.owner_id)  # type: ignore[attr-defined]
    return {
        "queue": queue,
        "entries": entries,
        "can_manage_any": any(e.can_manage for e in entries),  # type: ignore[attr-defined]
        "more": max(0, queue.in_queue - PAGE_ROWS),  # type: ignore[attr-defined]
        "workers": workers_of_queue(queue.pk),
        "is_admin": me.is_admin,
        "experiment_actions": actions_for("experiment", me),
        "move_url": reverse("pages:entries-move", args=[queue.pk]),
        "dequeue_url": reverse("pages:entries-dequeue", args=[queue.pk]),
        "exp_base": reverse("pages:experiments"),
    }


@login_required
def queue_panel(request: HttpRequest, pk: str) -> HttpResponse:
    context = _panel_context(request, pk)
    if context is None:
        return with_toast(
            HttpResponse('<aside id="panel"></aside>', status=404), "That queue no longer exists", "error"
        )
    return render(request, "queues/panel.html", context)


def _changed(request: HttpRequest, text: str, *, close: bool = False, queue_id: str | None = None) -> HttpResponse:
    """After a change: refresh the table (and the panel), tell the user, close any dialog."""
    events: dict[str, Any] = {"queuesChanged": {}, "closeDialogs": {}}
    if close:
        events["closePanel"] = {}
    response = HttpResponse(status=204)
    return with_toast(response, text, **events)


@page_action
def queue_new(request: HttpRequest) -> HttpResponse:
    name = request.POST.get("name", "")
    try:
        queue = services.queue_create(
            actor=request_actor(request), name=name, display_name=request.POST.get("display_name", "")
        )
    except ServiceError as e:
        if e.field != "name" or e.status == 403:
            raise
        return render(request, "queues/new_form.html", {"error": e.message, "name": name}, status=e.status)
    response = render(request, "queues/new_form.html", {})
    return with_toast(response, f"Queue {queue.name} created", queuesChanged={}, closeDialogs={})


@page_action
def queue_rename(request: HttpRequest, pk: str) -> HttpResponse:
    name = request.POST.get("name", "")
    try:
        queue = services.queue_update(actor=request_actor(request), queue_id=pk, changes={"name": name})
    except ServiceError as e:
        if e.field != "name" or e.status == 403:
            raise
        return render(request, "queues/rename_form.html", {"error": e.message, "name": name, "pk": pk}, status=e.status)
    response = render(request, "queues/rename_form.html", {"pk": pk})
    return with_toast(response, f"Renamed to {queue.name}", queuesChanged={}, closeDialogs={})


@page_action
def queue_tags(request: HttpRequest, pk: str) -> HttpResponse:
    """Set a queue's tags (comma-separated), such as force_workers:off for clearml-agents."""
    tags = [t.strip() for t in request.POST.get("tags", "").split(",") if t.strip()]
    if len(tags) > 50 or any(len(t) > 100 for t in tags):
        raise InvalidInput("at most 50 tags of at most 100 characters", field="tags")
    queue = services.queue_update(actor=request_actor(request), queue_id=pk, changes={"tags": tags})
    return _changed(request, f"Tags of {queue.name}: {', '.join(tags) or 'none'}")


@page_action
def queue_delete(request: HttpRequest, pk: str) -> HttpResponse:
    removed = queueing.queue_delete(actor=request_actor(request), queue_id=pk)
    return _changed(request, f"Queue deleted; {removed} pending experiments dequeued", close=True)


@page_action
def queue_clear(request: HttpRequest, pk: str) -> HttpResponse:
    removed = queueing.queue_clear(actor=request_actor(request), queue_id=pk)
    return _changed(request, f"Cleared: {removed} experiments dequeued")


@page_action
def queue_pause(request: HttpRequest, pk: str) -> HttpResponse:
    paused = request.POST.get("paused") == "true"
    queue = services.queue_set_paused(actor=request_actor(request), queue_id=pk, paused=paused)
    return _changed(request, f"Queue {queue.name} {'paused' if paused else 'resumed'}")


def _selection(request: HttpRequest) -> list[str]:
    ids = [i for raw in request.POST.getlist("experiments") for i in raw.split(",") if i]
    if not ids:
        raise InvalidInput("select at least one experiment", field="experiments")
    if len(ids) > queueing.MAX_BULK:
        raise InvalidInput(f"at most {queueing.MAX_BULK} experiments at once", field="experiments")
    return ids


@page_action
def entries_move(request: HttpRequest, pk: str) -> HttpResponse:
    to = request.POST.get("to", "")
    ids = _selection(request)
    value = request.POST.get("value", "").strip()
    if to == "queue":
        queueing.queue_entries_move(
            actor=request_actor(request), queue_id=pk, experiment_ids=ids, to=to, target_queue=value
        )
        text = f"Moved {len(ids)} to {value}"
    else:
        number = int_param(request, "value") if to in ("position", "by") else None
        queueing.queue_entries_move(actor=request_actor(request), queue_id=pk, experiment_ids=ids, to=to, value=number)
        text = f"Moved {len(ids)}" + (" to the top" if to == "top" else " to the bottom" if to == "bottom" else "")
    context = _panel_context(request, pk)
    response = render(request, "queues/panel.html", context) if context else HttpResponse(status=204)
    return with_toast(response, text, queuesChanged={}, clearSelection={}, closeDialogs={})


@page_action
def entries_dequeue(request: HttpRequest, pk: str) -> HttpResponse:
    ids = _selection(request)
    removed = queueing.queue_entries_dequeue(actor=request_actor(request), queue_id=pk, experiment_ids=ids)
    context = _panel_context(request, pk)
    response = render(request, "queues/panel.html", context) if context else HttpResponse(status=204)
    return with_toast(response, f"Dequeued {removed}", queuesChanged={}, clearSelection={})
