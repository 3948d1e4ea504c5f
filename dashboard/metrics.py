"""`GET /metrics`: Prometheus text for any authenticated key (or signed-in user).

Gauges are read from the database at scrape time with one grouped query each; counters
(claim checks, claims, reports) add up across server processes through Redis.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Min
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from accounts.services import apikey_check
from core.counters import counters_read
from experiments.models import Experiment
from queues.models import Queue, QueueEntry
from workers.models import Worker


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _authenticated(request: HttpRequest) -> bool:
    if request.user.is_authenticated:
        return True
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() in ("bearer", "token") and bool(token.strip()) and apikey_check(token.strip()) is not None


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not _authenticated(request):
        return HttpResponse("authentication required\n", status=401, content_type="text/plain")
    now = timezone.now()
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")

    names = dict(Queue.objects.values_list("id", "name"))
    per_queue: dict[str, dict[str, Any]] = {
        row["queue_id"]: {"n": row["n"], "oldest": row["oldest"]}
        for row in QueueEntry.objects.values("queue_id").annotate(n=Count("id"), oldest=Min("added_at"))
    }
    family("muster_queue_length", "gauge", "Experiments waiting in the queue.")
    for queue_id, name in sorted(names.items(), key=lambda kv: kv[1]):
        lines.append(f'muster_queue_length{{queue="{_label(name)}"}} {per_queue.get(queue_id, {}).get("n", 0)}')
    family("muster_queue_max_wait_seconds", "gauge", "How long the oldest waiting experiment has waited.")
    for queue_id, name in sorted(names.items(), key=lambda kv: kv[1]):
        oldest = per_queue.get(queue_id, {}).get("oldest")
        wait = (now - oldest).total_seconds() if oldest else 0.0
        lines.append(f'muster_queue_max_wait_seconds{{queue="{_label(name)}"}} {wait:.3f}')
    family("muster_workers", "gauge", "Workers by status.")
    for status, n in Worker.objects.values_list("status").annotate(n=Count("id")).order_by("status"):
        lines.append(f'muster_workers{{status="{status}"}} {n}')
    family("muster_experiments", "gauge", "Experiments by status.")
    for status, n in Experiment.objects.values_list("status").annotate(n=Count("id")).order_by("status"):
        lines.append(f'muster_experiments{{status="{status}"}} {n}')
    counts = counters_read()
    for name, help_text in (
        ("claim_checks", "Claim checks made by waiting or polling agents."),
        ("claims", "Claims that handed out an experiment."),
        ("reports", "Worker reports received."),
    ):
        family(f"muster_{name}_total", "counter", help_text)
        lines.append(f"muster_{name}_total {counts[name]}")
    return HttpResponse("\n".join(lines) + "\n", content_type="text/plain; version=0.0.4")
