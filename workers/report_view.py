"""The report endpoint as a plain Django view: the hottest write path, kept lean.

`POST /api/v1/workers/{name}/report/` arrives every 5 s from every agent. DRF's nested
serializers cost more than the whole fast-path service call, so the body is checked by a
checker compiled once from ReportSerializer's own fields (workers/serializers.py, which
also documents the endpoint in the OpenAPI schema); errors name the field, as DRF's would.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.core.validators import RegexValidator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import serializers

from accounts.authentication import actor_from_authorization
from core import jsonbody
from core.api import error_body, too_large
from core.counters import counter_incr
from core.errors import InvalidInput, ServiceError
from workers import services
from workers.models import WORKER_NAME_RE
from workers.serializers import ReportSerializer


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


Check = Callable[[Any, str], Any]


def _compile(field: serializers.Field[Any, Any, Any, Any]) -> Check:
    """A checker for one declared field: its type, bounds, null, length and pattern, nothing more."""
    if isinstance(field, serializers.Serializer):
        subs = [(name, sub, _compile(sub)) for name, sub in field.fields.items()]

        def check_object(value: Any, path: str) -> dict[str, Any]:
            given = _obj(value, path or "body")
            out: dict[str, Any] = {}
            for name, sub, check in subs:
                where = f"{path}.{name}" if path else name
                if name in given:
                    out[name] = check(given[name], where)
                elif sub.required:
                    raise InvalidInput("this field is required", field=where)
            return out

        return check_object
    if isinstance(field, serializers.ListField):
        item, most = _compile(field.child), field.max_length or 2**31
        return lambda value, path: [item(v, f"{path}[{i}]") for i, v in enumerate(_list(value, path, most))]
    if isinstance(field, serializers.RegexField):  # a CharField: checked first
        pattern = re.compile(next(v.regex for v in field.validators if isinstance(v, RegexValidator)))

        def check_pattern(value: Any, path: str) -> str:
            if not isinstance(value, str) or not pattern.search(value):
                raise InvalidInput(f"a string matching {pattern.pattern} is required", field=path)
            return value

        return check_pattern
    if isinstance(field, serializers.CharField):
        longest, blank = field.max_length or 2**31, field.allow_blank

        def check_text(value: Any, path: str) -> str:
            # No NUL: an unknown worker's report registers it, and PostgreSQL text refuses NUL (a 500 once).
            if not isinstance(value, str) or len(value) > longest or "\x00" in value or not (value or blank):
                raise InvalidInput(f"a string of 1 to {longest} characters, no NUL", field=path)
            return value

        return check_text
    if isinstance(field, (serializers.IntegerField, serializers.FloatField)):
        assert field.min_value is not None and field.max_value is not None  # every number in the report is bounded
        lo, hi = float(field.min_value), float(field.max_value)
        integer, null = isinstance(field, serializers.IntegerField), field.allow_null
        return lambda value, path: _num(value, path, lo, hi, integer=integer, null=null)
    raise TypeError(f"the report's checker does not know {type(field).__name__} (workers/serializers.py)")


CHECK_REPORT = _compile(ReportSerializer())


def parse_report(data: Any) -> services.Report:
    """The report body, checked against ReportSerializer's fields; InvalidInput names the first bad field."""
    body = CHECK_REPORT(data, "")
    running = [services.RunningAttempt(r["attempt"], r["token"], r.get("iteration")) for r in body.get("running", [])]
    return services.Report(
        instance_id=body.get("instance_id", ""),
        interval_s=float(body.get("interval_s", 0.0)),
        running=running,
        machine=body.get("machine", {}),
        attempts=body.get("attempts", []),
    )


def report(authorization: str, name: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """The report, whatever serves it: the status and the answer's body, in one synchronous step.

    Served by report_view under Django and, in the production server, straight from the
    ASGI entry point (orchestration/fastpath.py); both answer the same for the same request.
    """
    actor = actor_from_authorization(authorization)
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
