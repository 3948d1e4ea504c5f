"""Experiment pages: the list (filters, cursor pages, bulk actions), the detail page, the create form."""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import asdict
from datetime import datetime
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.dateparse import parse_datetime

from accounts.actor import request_actor
from actions.services import actions_for
from core import jsonbody
from core.api import first_error
from core.errors import InvalidInput, ServiceError
from core.pages import PAGE_ROWS, SPAN_VALUES, SPANS, json_view, page_action, refused, span_of, with_toast
from experiments import selectors, services
from experiments.access import may_manage
from experiments.filters import ExperimentFilter
from experiments.models import FINISHED, Experiment, Status
from experiments.serializers import ExperimentCreateSerializer
from experiments.waitnotes import wait_notes
from queues import selectors as queue_selectors
from workers.graphs import attempt_graph, graph_window
from workers.selectors import wait_reasons
from workers.timeseries import parse_span

RUN_SPAN = "run"  # an experiment's graphs: the attempt's own time range
LIST_ROWS = 50
BULK = {"stop", "dequeue", "rerun"}


# -- the list ----------------------------------------------------------------------------------


def _cursor(raw: str) -> tuple[datetime, str] | None:
    created, _, pk = raw.partition("|")
    at = parse_datetime(created) if created else None
    return (at, pk) if at and pk else None


def _list_context(request: HttpRequest) -> dict[str, Any]:
    f = {k: request.GET.get(k, "").strip() for k in ExperimentFilter.Meta.fields}
    found = ExperimentFilter(f, queryset=selectors.experiment_list())
    problem = "" if found.is_valid() else "{}: {}".format(*first_error(found.errors))
    qs = (found.qs if not problem else Experiment.objects.none()).order_by("-created_at", "-id")
    cursor = _cursor(request.GET.get("cursor", ""))
    if cursor:
        at, pk = cursor
        qs = qs.filter(Q(created_at__lt=at) | Q(created_at=at, id__lt=pk))
    rows = list(qs[: LIST_ROWS + 1])
    more = len(rows) > LIST_ROWS
    rows = rows[:LIST_ROWS]
    next_cursor = f"{rows[-1].created_at.isoformat()}|{rows[-1].pk}" if more else ""
    me = request_actor(request)
    for e in rows:  # what this user is offered: the rule the service enforces
        e.can_manage = may_manage(me, e.owner_id)
    return {
        "rows": rows,
        "can_manage_any": any(e.can_manage for e in rows),
        "filters": f,
        "filter_problem": problem,
        "next_cursor": next_cursor,
        "at_start": cursor is None,
        "statuses": Status.choices,
        "is_admin": me.is_admin,
        "custom_actions": actions_for("experiment", me),
        "exp_base": reverse("pages:experiments"),
    }


@login_required
def experiments_page(request: HttpRequest) -> HttpResponse:

    context = _list_context(request)
    context.update({"section": "experiments", "queues": queue_selectors.queue_names()})
    return render(request, "experiments/list.html", context)


@login_required
def experiment_rows(request: HttpRequest) -> HttpResponse:
    return render(request, "experiments/rows.html", _list_context(request))


@page_action
def experiments_bulk(request: HttpRequest) -> HttpResponse:
    """Stop, dequeue or re-run a selection; each one goes through its own service call."""
    verb = request.POST.get("action", "")
    if verb not in BULK:
        raise InvalidInput(f"action must be one of {', '.join(sorted(BULK))}", field="action")
    ids = [i for raw in request.POST.getlist("experiments") for i in raw.split(",") if i][: PAGE_ROWS * 10]
    if not ids:
        raise InvalidInput("select at least one experiment", field="experiments")
    me = request_actor(request)
    done, errors = 0, []
    for pk in ids:
        try:
            if verb == "stop":
                services.experiment_stop(actor=me, experiment_id=pk)
            elif verb == "dequeue":
                services.experiment_dequeue(actor=me, experiment_id=pk)
            else:
                services.experiment_rerun(actor=me, experiment_id=pk)
            done += 1
        except ServiceError as e:
            errors.append(e.message)
    text = f"{verb}: {done} of {len(ids)} done" + (f"; {len(errors)} refused: {errors[0]}" if errors else "")
    response = HttpResponse(status=204)
    return with_toast(response, text, "error" if errors else "ok", experimentsChanged={}, clearSelection={})


# -- the detail page -------------------------------------------------------------------------------


def _waiting(exp: Experiment) -> dict[str, Any]:
    """Where a queued experiment stands and why it waits, the autoscalers' word included."""
    waiting = wait_reasons(exp)
    if waiting:
        waiting["reasons"] = [*waiting.get("reasons", []), *wait_notes(exp)]
    return waiting


def _detail_context(request: HttpRequest, pk: str) -> dict[str, Any]:
    exp = selectors.experiment_get(pk)
    me = request_actor(request)
    mine = may_manage(me, exp.owner_id)
    status = exp.status
    return {
        "exp": exp,
        "attempts": list(selectors.attempt_list(pk).select_related("worker")),
        "waiting": _waiting(exp) if status == Status.QUEUED else {},
        "queue_priority": selectors.queue_priority(exp.pk) if status == Status.QUEUED else None,
        "command": shlex.join(exp.command) if exp.command else "",
        "parameters": json.dumps(exp.parameters, indent=2) if exp.parameters else "",
        "metrics": json.dumps(exp.last_metrics, indent=2) if exp.last_metrics else "",
        "env": sorted(exp.env.items()),
        "secret_names": sorted(exp.secret_env),
        "can": {
            "enqueue": mine and status in (Status.CREATED, *FINISHED),
            "stop": mine and status in (Status.QUEUED, Status.IN_PROGRESS),
            "dequeue": mine and status == Status.QUEUED,
            "reset": mine and status in FINISHED,
            "rerun": mine and status in FINISHED,
            "clone": not me.is_agent,
        },
        "section": "experiments",
        "custom_actions": actions_for("experiment", me),
        # Its graphs show the attempt's own time range unless a span is chosen.
        "span": request.GET.get("span") if request.GET.get("span") in SPAN_VALUES else RUN_SPAN,
        "spans": [(RUN_SPAN, "Whole run"), *SPANS],
    }


@login_required
def experiment_page(request: HttpRequest, pk: str) -> HttpResponse:

    try:
        context = _detail_context(request, pk)
    except ServiceError as e:
        return render(
            request, "experiments/missing.html", {"message": e.message, "section": "experiments"}, status=e.status
        )
    context["queues"] = queue_selectors.queue_names()
    return render(request, "experiments/detail.html", context)


@login_required
def experiment_status(request: HttpRequest, pk: str) -> HttpResponse:
    try:
        context = _detail_context(request, pk)
    except ServiceError as e:
        return refused(e)
    return render(request, "experiments/status.html", context)


@json_view
def experiment_log(request: HttpRequest, pk: str) -> JsonResponse:
    """New log chunks after a sequence number, and a capped log's window, for the live tail."""
    exp = selectors.experiment_get(pk)
    raw = request.GET.get("after", "")
    after = int(raw) if raw.lstrip("-").isdigit() else None
    page = selectors.log_page(
        experiment=exp, attempt_id=request.GET.get("attempt") or None, after=after, limit=500, mark=False
    )
    return JsonResponse(
        {
            "attempt": page.attempt,
            "chunks": page.chunks,
            "window": asdict(page.window) if page.window else None,
            "after": page.next_after,
            "status": exp.status,
        }
    )


@json_view
def graph_experiment(request: HttpRequest, pk: str) -> JsonResponse:
    """An attempt's graph: over its own time range (from its claim to its end, or now), or a span."""
    requested = request.GET.get("attempt") or None
    exp = selectors.experiment_get(pk)
    attempt_id = selectors.attempt_of(pk, requested) if requested or exp.current_attempt_id else None
    metric = request.GET.get("metric", "usage")
    if request.GET.get("span", RUN_SPAN) == RUN_SPAN and attempt_id:
        start, end = selectors.attempt_times(attempt_id)
        span_s = max(60, math.ceil((end - start).total_seconds()))
        return JsonResponse(graph_window(attempt_graph(attempt_id, metric, span_s, end=end), span_s, end=end))
    span_s = parse_span(span_of(request))
    return JsonResponse(graph_window(attempt_graph(attempt_id, metric, span_s), span_s))


@page_action
def experiment_action(request: HttpRequest, pk: str, verb: str) -> HttpResponse:
    me = request_actor(request)
    queue = request.POST.get("queue", "").strip() or None
    if verb == "enqueue":
        outcome = services.experiment_enqueue(actor=me, experiment_id=pk, queue_name=queue)
    elif verb == "stop":
        outcome = services.experiment_stop(actor=me, experiment_id=pk)
    elif verb == "dequeue":
        outcome = services.experiment_dequeue(actor=me, experiment_id=pk)
    elif verb == "reset":
        outcome = services.experiment_reset(actor=me, experiment_id=pk)
    elif verb == "rerun":
        outcome = services.experiment_rerun(actor=me, experiment_id=pk, queue_name=queue)
    elif verb == "clone":
        clone = services.experiment_clone(actor=me, experiment_id=pk)
        response = HttpResponse(status=204)
        response["HX-Redirect"] = reverse("pages:experiment", args=[clone.pk])
        return response
    else:
        raise InvalidInput(f"unknown action {verb!r}", field="action")
    response = render(request, "experiments/status.html", _detail_context(request, pk))
    text = f"{verb}: done" if outcome.changed else f"{verb}: nothing to do"
    if outcome.warnings:
        text += " (" + "; ".join(outcome.warnings) + ")"
    return with_toast(response, text, "error" if outcome.warnings else "ok")


# -- the create form ---------------------------------------------------------------------------------


def _form_data(post: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The form's fields as the API's create payload (empty fields left out), and the problems
    found in reading them, by field (every one at once, not the first only)."""
    data: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for key in ("name", "project", "queue", "container_image", "working_dir", "script"):
        if post.get(key, "").strip():
            data[key] = post[key] if key == "script" else post[key].strip()
    if post.get("command", "").strip():
        try:
            data["command"] = shlex.split(post["command"])
        except ValueError as e:
            errors["command"] = f"command: {e}"
    for key in ("gpus", "cpus", "memory_mb", "priority", "max_runtime_s"):
        if post.get(key, "").strip():
            data[key] = post[key].strip()
    for key in ("parameters", "env"):
        if post.get(key, "").strip():
            try:
                data[key] = jsonbody.loads(post[key])
            except jsonbody.TooDeep as e:
                errors[key] = f"{key}: {e}"
            except json.JSONDecodeError as e:
                errors[key] = f"{key}: not JSON ({e.msg})"
    return data, errors


def _field_errors(detail: dict[str, Any]) -> dict[str, str]:
    """Each field's first problem in a DRF error tree, named as the form names it."""
    out: dict[str, str] = {}
    for key, value in detail.items():
        field, message = first_error({key: value})
        name = (field or "form").split(".")[0]
        out.setdefault(name, message)
    return out


@login_required
def experiment_new(request: HttpRequest) -> HttpResponse:

    context: dict[str, Any] = {
        "section": "experiments",
        "queues": queue_selectors.queue_names(),
    }
    if request.method != "POST":
        source = request.GET.get("from")
        context["values"] = {"queue": "default"}
        if source:
            exp = Experiment.objects.filter(pk=source).first()
            if exp:
                context["values"] = {"name": exp.name, "project": exp.project, "command": shlex.join(exp.command),
                                     "script": exp.script, "gpus": exp.gpus, "cpus": exp.cpus}  # fmt: skip
        return render(request, "experiments/new.html", context)
    context["values"] = request.POST
    try:
        data, errors = _form_data(request.POST)
        ser = ExperimentCreateSerializer(data=data)
        if not ser.is_valid() or errors:
            context["errors"] = {**(_field_errors(ser.errors) if ser.errors else {}), **errors}
            return render(request, "experiments/new.html", context, status=400)
        spec = dict(ser.validated_data)
        spec.pop("group", None)
        queue = spec.pop("queue", None)
        me = request_actor(request)
        exp = services.experiment_submit(actor=me, spec=spec, queue_name=queue).experiment
    except ServiceError as e:
        context["errors"] = {e.field or "form": e.message}
        return render(request, "experiments/new.html", context, status=e.status)
    return HttpResponseRedirect(reverse("pages:experiment", args=[exp.pk]))
