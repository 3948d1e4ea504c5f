"""The report endpoint as a plain Django view: the hottest write path, kept lean.

`POST /api/v1/workers/{name}/report/` arrives every 5 s from every agent. DRF's nested
serializers cost more than the whole fast-path service call, so the body is checked here
against the same limits as ReportSerializer (which still documents the endpoint in the
OpenAPI schema); errors name the field, as DRF's would.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from core import jsonbody
from core.api import error_body, too_large
from core.counters import counter_incr
from core.errors import InvalidInput, ServiceError
from workers import services
from workers.claim_view import _authenticate
from workers.models import WORKER_NAME_RE

ATTEMPT_ID = re.compile(r"^[0-9a-f]{32}$")
BIG = 1e15


def _num(value: Any, path: str, lo: float, hi: float, *, integer: bool = False, null: bool = True) -> Any:
    if value is None:
        if null:
            return None
        raise InvalidInput("this field may not be null", field=path)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput("a number is required", field=path)
    if integer and not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
        raise InvalidInput("a whole number is required", field=path)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput("a finite number is required", field=path)
    if not lo <= value <= hi:
        raise InvalidInput(f"must be from {lo:g} to {hi:g}", field=path)
    return int(value) if integer else float(value)


def _list(value: Any, path: str, most: int) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidInput("a list is required", field=path)
    if len(value) > most:
        raise InvalidInput(f"at most {most} items", field=path)
    return value


def _obj(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput("an object is required", field=path)
    return value


MACHINE_RATES = (
    "memory_used_mb", "memory_free_mb", "network_rx_bps", "network_tx_bps", "disk_read_bps", "disk_write_bps",
    "disk_free_mb",
)  # fmt: skip
GPU_LIMITS = {"util": 100.0, "memory_used_mb": 1e9, "memory_free_mb": 1e9}


def _machine(raw: Any) -> dict[str, Any]:
    m = _obj(raw, "machine")
    out: dict[str, Any] = {}
    if "cpu_percent" in m:
        out["cpu_percent"] = _num(m["cpu_percent"], "machine.cpu_percent", 0, 100)
    if "cpu_per_core" in m:
        cores = _list(m["cpu_per_core"], "machine.cpu_per_core", 1024)
        out["cpu_per_core"] = [_num(c, f"machine.cpu_per_core[{i}]", 0, 100, null=False) for i, c in enumerate(cores)]
    for key in MACHINE_RATES:
        if key in m:
            out[key] = _num(m[key], f"machine.{key}", 0, BIG)
    if "gpus" in m:
        gpus = []
        for i, item in enumerate(_list(m["gpus"], "machine.gpus", 64)):
            path = f"machine.gpus[{i}]"
            g = _obj(item, path)
            if "index" not in g:
                raise InvalidInput("this field is required", field=f"{path}.index")
            gpu: dict[str, Any] = {"index": _num(g["index"], f"{path}.index", 0, 1024, integer=True, null=False)}
            for key, hi in GPU_LIMITS.items():
                if key in g:
                    gpu[key] = _num(g[key], f"{path}.{key}", 0, hi)
            if "temperature_c" in g:
                gpu["temperature_c"] = _num(g["temperature_c"], f"{path}.temperature_c", -100, 300)
            if "ecc_errors" in g:
                gpu["ecc_errors"] = _num(g["ecc_errors"], f"{path}.ecc_errors", 0, 2**62, integer=True)
            gpus.append(gpu)
        out["gpus"] = gpus
    return out


def _attempt_id(value: Any, path: str) -> str:
    if not isinstance(value, str) or not ATTEMPT_ID.match(value):
        raise InvalidInput("an attempt id (32 hex characters) is required", field=path)
    return value


def parse_report(data: Any) -> services.Report:
    """The report body, checked as ReportSerializer would; InvalidInput names the first bad field."""
    body = _obj(data, "body")
    instance_id = body.get("instance_id", "")
    if not isinstance(instance_id, str) or len(instance_id) > 64 or "\x00" in instance_id:
        # No NUL: an unknown worker's report registers it, and PostgreSQL text refuses NUL (a 500 once).
        raise InvalidInput("a string of at most 64 characters, no NUL", field="instance_id")
    interval = _num(body.get("interval_s", 0), "interval_s", 0, 3600, null=False)
    running = []
    for i, item in enumerate(_list(body.get("running", []), "running", 256)):
        path = f"running[{i}]"
        r = _obj(item, path)
        token = r.get("token")
        if not isinstance(token, str) or not 0 < len(token) <= 64:
            raise InvalidInput("a lease token is required", field=f"{path}.token")
        iteration = _num(r.get("iteration"), f"{path}.iteration", 0, 2**62, integer=True)
        running.append(services.RunningAttempt(_attempt_id(r.get("attempt"), f"{path}.attempt"), token, iteration))
    attempts = []
    for i, item in enumerate(_list(body.get("attempts", []), "attempts", 256)):
        path = f"attempts[{i}]"
        a = _obj(item, path)
        stat: dict[str, Any] = {"attempt": _attempt_id(a.get("attempt"), f"{path}.attempt")}
        for key, hi in (("cpu_percent", 100_000), ("memory_mb", BIG), ("gpu_util", 100_000), ("gpu_memory_mb", BIG)):
            if key in a:
                stat[key] = _num(a[key], f"{path}.{key}", 0, hi)
        attempts.append(stat)
    machine = _machine(body["machine"]) if body.get("machine") is not None else {}
    return services.Report(
        instance_id=instance_id, interval_s=interval, running=running, machine=machine, attempts=attempts
    )


def report(authorization: str, name: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """The report, whatever serves it: the status and the answer's body, in one synchronous step.

    Served by report_view under Django and, in the production server, straight from the
    ASGI entry point (orchestration/fastpath.py); both answer the same for the same request.
    """
    actor = _authenticate(authorization, release=False)
    if actor is None:
        return 401, error_body("not_authenticated", "a valid API key is required")
    if not (actor.is_agent or actor.is_admin):
        return 403, error_body("permission_denied", "only agent keys may call this endpoint")
    if not re.fullmatch(WORKER_NAME_RE, name):
        return 400, error_body("invalid", "worker names use only A-Z a-z 0-9 _ . , : @ -", "name")
    try:
        data = jsonbody.loads(body or b"{}")
    except jsonbody.TooDeep as exc:
        return 400, error_body("parse_error", str(exc))
    except (ValueError, UnicodeDecodeError):
        return 400, error_body("parse_error", "the body is not valid JSON")
    try:
        answer = services.worker_report(actor=actor, name=name, report=parse_report(data))
    except ServiceError as exc:
        return exc.status, error_body(exc.code, exc.message, exc.field, **exc.extra)
    counter_incr("reports")
    return 200, asdict(answer)


@csrf_exempt
def report_view(request: HttpRequest, name: str) -> HttpResponse:
    """The heartbeat: what runs and what the machine uses; the answer says what to kill or stop."""
    if request.method != "POST":
        return JsonResponse(error_body("method_not_allowed", f'method "{request.method}" not allowed'), status=405)
    try:
        body = request.body
    except RequestDataTooBig:
        status, answer = too_large()
    else:
        status, answer = report(request.headers.get("Authorization", ""), name, body)
    return JsonResponse(answer, status=status)


report_view.http_methods = ["POST"]  # type: ignore[attr-defined]  # read by the role-matrix test
