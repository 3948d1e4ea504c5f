"""The AUTOSCALERS tab (admins): a card per app, each app's dashboard (machines per resource, the
queues it serves, spend, the live console, each machine's console output) and the JSON editor
that creates, imports and edits an app. Everything goes through autoscalers/services.py."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Count, Q
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone

from accounts.actor import request_actor
from autoscalers import agent_package, billing, forms, services
from autoscalers.api import app_list
from autoscalers.models import FOOTPRINT, AutoscalerApp, Decision, Instance, InstanceState, Provider
from autoscalers.serializers import AppWriteSerializer
from core.api import first_error
from core.errors import Forbidden, NotFound, ServiceError
from core.pages import json_view, page_action, with_toast
from queues.models import Queue, QueueEntry

EXAMPLE = {
    "name": "gpu-east", "provider": "aws", "workers_prefix": "east", "max_idle_s": 900, "max_spinup_s": 1800,
    "settings": {"region": "us-east-1", "subnets": ["subnet-0abc"], "security_groups": ["sg-0abc"]},
    "credentials": {"access_key_id": "", "secret_access_key": ""},
    "resources": [{"name": "g5", "instance_type": "g5.xlarge", "gpu_count": 1, "max_instances": 2,
                   "machine_image": "ami-0abc", "spot": False}],
    "queues": {"default": ["g5"]}, "cap_day_usd": "100.00", "cap_month_usd": "2000.00",
}  # fmt: skip


def _admin(request: HttpRequest) -> None:
    if not request_actor(request).is_admin:
        raise Forbidden("only admins manage autoscalers")


def _forbidden(request: HttpRequest, e: Forbidden) -> HttpResponse:
    return render(request, "autoscalers/forbidden.html", {"section": "orchestration", "tab": "autoscalers",
                                                          "message": e.message}, status=403)  # fmt: skip


@login_required
def autoscalers_page(request: HttpRequest) -> HttpResponse:
    try:
        _admin(request)
    except Forbidden as e:
        return _forbidden(request, e)
    apps = list(app_list())
    for app in apps:
        app.spend = services.app_spend(app)  # type: ignore[attr-defined]
    return render(request, "autoscalers/page.html", {"section": "orchestration", "tab": "autoscalers", "apps": apps})


def _detail(app: AutoscalerApp) -> dict[str, Any]:
    now = timezone.now()
    rows = list(Instance.objects.filter(app=app).select_related("resource").order_by("-requested_at")[:200])
    for row in rows:
        row.cost = billing.cost(app.provider, row.hourly_price_usd, row.started_at, row.ended_at or now)  # type: ignore[attr-defined]
    counts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for resource_id, state, n in (
        Instance.objects.filter(app=app, state__in=FOOTPRINT)
        .values_list("resource_id", "state")
        .annotate(n=Count("id"))
    ):
        counts[resource_id][state] += n
    resources = []
    for r in app.resources.all():
        c = counts[r.pk]
        busy = c[InstanceState.BUSY]
        starting = c[InstanceState.REQUESTED] + c[InstanceState.PENDING] + c[InstanceState.BOOTING]
        stopping = c[InstanceState.DRAINING] + c[InstanceState.TERMINATING]
        resources.append({"r": r, "busy": busy, "idle": c[InstanceState.IDLE], "starting": starting,
                          "stopping": stopping, "price": services._price(app, r, r.spot)})  # fmt: skip
    served: dict[str, list[str]] = {}
    queue_ids: dict[str, str] = {}
    for s in app.served.all():
        served.setdefault(s.queue.name, []).append(s.resource.name)
        queue_ids[s.queue.name] = s.queue_id
    lengths = dict(
        QueueEntry.objects.filter(queue_id__in=queue_ids.values()).values("queue_id").annotate(n=Count("id"))
        .values_list("queue_id", "n")
    )  # fmt: skip
    queues = [{"name": q, "order": order, "length": lengths.get(queue_ids[q], 0)} for q, order in served.items()]
    return {"app": app, "instances": rows, "resources": resources, "queues": queues, "spend": services.app_spend(app),
            "decisions": Decision.objects.filter(app=app)[:100]}  # fmt: skip


def _get(pk: str) -> AutoscalerApp:
    app = app_list().filter(pk=pk).first()
    if app is None:
        raise NotFound(f"autoscaler {pk} does not exist", field="id")
    return app


@login_required
def autoscaler_page(request: HttpRequest, pk: str) -> HttpResponse:
    try:
        _admin(request)
        app = _get(pk)
    except Forbidden as e:
        return _forbidden(request, e)
    except NotFound as e:
        return render(
            request, "autoscalers/forbidden.html", {"message": e.message, "section": "orchestration"}, status=404
        )
    return render(
        request, "autoscalers/detail.html", {"section": "orchestration", "tab": "autoscalers", **_detail(app)}
    )


@login_required
def autoscaler_live(request: HttpRequest, pk: str) -> HttpResponse:
    """The dashboard's live part (machines, queues, spend, console), refreshed in place."""
    try:
        _admin(request)
        app = _get(pk)
    except (Forbidden, NotFound) as e:
        return HttpResponse(e.message, status=e.status)
    return render(request, "autoscalers/live.html", _detail(app))


@page_action
def autoscaler_state(request: HttpRequest, pk: str) -> HttpResponse:
    state = request.POST.get("state", "")
    if state not in ("running", "stopped"):
        raise NotFound("state must be running or stopped", field="state")
    app = services.app_set_state(actor=request_actor(request), app_id=pk, state=state)
    response = HttpResponse(status=204)
    response["HX-Refresh"] = "true"
    return with_toast(response, f"{app.name}: {'started' if state == 'running' else 'stopped'}")


@page_action
def autoscaler_delete(request: HttpRequest, pk: str) -> HttpResponse:
    services.app_delete(actor=request_actor(request), app_id=pk)
    response = HttpResponse(status=204)
    response["HX-Redirect"] = reverse("pages:autoscalers")
    return response


@login_required
def autoscaler_edit(request: HttpRequest, pk: str | None = None) -> HttpResponse:
    """Create (or import) an app from its JSON, or edit one's; errors show beside the text, every one."""
    try:
        _admin(request)
        app = _get(pk) if pk else None
    except Forbidden as e:
        return _forbidden(request, e)
    context: dict[str, Any] = {"section": "orchestration", "tab": "autoscalers", "app": app}
    if request.method != "POST":
        shown = services.app_export(app) if app else EXAMPLE
        context["text"] = json.dumps(shown, indent=2, default=str)
        return render(request, "autoscalers/edit.html", context)
    text = request.POST.get("config", "")
    context["text"] = text
    try:
        body = json.loads(text)
        if not isinstance(body, dict):
            raise ValueError("the configuration is a JSON object")
    except ValueError as e:
        context["errors"] = [f"not JSON: {e}"]
        return render(request, "autoscalers/edit.html", context, status=400)
    if app is not None and not any((body.get("credentials") or {}).values()):
        body.pop("credentials", None)  # unchanged unless new ones are given
    ser = AppWriteSerializer(data=body)
    if not ser.is_valid():
        context["errors"] = [f"{field}: {message}" for field, message in _all_errors(ser.errors)]
        return render(request, "autoscalers/edit.html", context, status=400)
    try:
        saved = services.app_save(actor=request_actor(request), data=dict(ser.validated_data), app_id=pk)
    except ServiceError as e:
        context["errors"] = [f"{e.field or 'app'}: {e.message}"]
        return render(request, "autoscalers/edit.html", context, status=e.status)
    return HttpResponseRedirect(reverse("pages:autoscaler", args=[saved.pk]))


def _all_errors(detail: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Every field's problems in a DRF error tree, named by their path."""
    out: list[tuple[str, str]] = []
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}[{key}]" if isinstance(key, int) else (f"{prefix}.{key}" if prefix else str(key))
            out += _all_errors(value, "" if key == "non_field_errors" else name)
    elif isinstance(detail, list) and detail and not isinstance(detail[0], (str,)) and not hasattr(detail[0], "code"):
        for i, item in enumerate(detail):
            out += _all_errors(item, f"{prefix}[{i}]")
    elif isinstance(detail, list):
        out += [(prefix or "app", str(d)) for d in detail]
    else:
        field, message = first_error(detail)
        out.append((prefix or field or "app", message))
    return out


@json_view
def autoscaler_machine_console(request: HttpRequest, pk: str, instance_id: str) -> JsonResponse:
    if not Instance.objects.filter(pk=instance_id, app_id=pk).exists():
        raise NotFound(f"instance {instance_id} is not a machine of this app", field="instance")
    return JsonResponse({"output": services.console_of(actor=request_actor(request), instance_id=instance_id)})


@json_view
def autoscaler_export(request: HttpRequest, pk: str) -> JsonResponse:
    """The app's JSON (its import), never with its credentials, as a download."""
    _admin(request)
    response = JsonResponse(services.app_export(_get(pk)), json_dumps_params={"indent": 2, "default": str})
    response["Content-Disposition"] = f'attachment; filename="autoscaler-{pk}.json"'
    return response


def agent_wheels_index(request: HttpRequest) -> HttpResponse:
    """A simple index of the agent's wheels (pip's --find-links reads its links). Public: the
    agent's code holds no secret, and a machine fetches it before it has anything to log in with."""
    names = agent_package.wheel_names()
    links = "".join(f'<a href="{name}">{name}</a><br>\n' for name in names)
    body = f"<!doctype html><html><head><title>Muster agent wheels</title></head><body>\n{links}</body></html>\n"
    return HttpResponse(body, content_type="text/html; charset=utf-8")


def agent_wheel_file(request: HttpRequest, name: str) -> HttpResponse | FileResponse:
    path = agent_package.wheel_path(name)
    if path is None:
        return HttpResponse("no such wheel", status=404, content_type="text/plain")
    return FileResponse(path.open("rb"), as_attachment=True, filename=name, content_type="application/zip")


@json_view
def autoscaler_spend_graph(request: HttpRequest, pk: str) -> JsonResponse:
    """Spend per day over the last 30 days (UTC days), and its running total, for the dashboard."""
    _admin(request)
    app = _get(pk)
    now = timezone.now()
    first = billing.day_start(now) - timedelta(days=29)
    rows = Instance.objects.filter(app=app).filter(Q(ended_at__isnull=True) | Q(ended_at__gte=first))
    lives = [billing.Life(i.hourly_price_usd, i.started_at, i.ended_at) for i in rows]
    days, daily, total, running = [], [], Decimal("0"), []
    for n in range(30):
        start = first + timedelta(days=n)
        spent = billing.spend_between(app.provider, lives, start, min(start + timedelta(days=1), now))
        total += spent
        days.append(start.isoformat())
        daily.append(float(spent))
        running.append(float(total))
    traces = [{"name": "Spend that day", "x": days, "y": daily}, {"name": "Running total", "x": days, "y": running}]
    return JsonResponse({"traces": traces, "y_title": "USD", "hover_format": ".2f", "y_suffix": " $", "shape": "hv",
                         "x_range": [first.isoformat(), now.isoformat()]})  # fmt: skip


PROVIDER_DEFAULTS: dict[str, dict[str, Any]] = {
    "aws": {"settings": {"region": "us-east-1", "ebs_device": "/dev/sda1", "ebs_type": "gp3"}},
    "gcp": {"settings": {"zone": "us-central1-a"}},
    "local": {},
}


@login_required
def autoscaler_form(request: HttpRequest, pk: str | None = None) -> HttpResponse:
    """Create or edit an app with a field for every setting, grouped as ClearML groups them;
    every error shows beside its field at once."""
    try:
        _admin(request)
        app = _get(pk) if pk else None
    except Forbidden as e:
        return _forbidden(request, e)
    context: dict[str, Any] = {
        "section": "orchestration", "tab": "autoscalers", "app": app, "errors": {},
        "providers": Provider.choices, "queue_names": list(Queue.objects.order_by("name").values_list("name", flat=True)),
    }  # fmt: skip
    if request.method != "POST":
        if app is not None:
            data = services.app_export(app)
        else:
            provider = request.GET.get("provider", "aws")
            provider = provider if provider in PROVIDER_DEFAULTS else "aws"
            data = {"provider": provider, "warn_duplicate_runs": True, **PROVIDER_DEFAULTS[provider]}
        context["values"] = forms.initial(json.loads(json.dumps(data, default=str)))
        return render(request, "autoscalers/form.html", context)
    try:
        body = forms.read(request.POST)
    except forms.FormError as e:
        context["errors"] = {e.field: str(e)}
        context["values"] = forms.initial({"provider": request.POST.get("provider", "aws")})
        return render(request, "autoscalers/form.html", context, status=400)
    context["values"] = forms.initial(body)
    ser = AppWriteSerializer(data=body)
    if not ser.is_valid():
        context["errors"] = {
            field.replace("[", ".").replace("]", ""): message for field, message in _all_errors(ser.errors)
        }
        return render(request, "autoscalers/form.html", context, status=400)
    try:
        saved = services.app_save(actor=request_actor(request), data=dict(ser.validated_data), app_id=pk)
    except ServiceError as e:
        context["errors"] = {e.field or "name": e.message}
        return render(request, "autoscalers/form.html", context, status=e.status)
    return HttpResponseRedirect(reverse("pages:autoscaler", args=[saved.pk]))
