"""ClearML's wire format: `/[vX.Y/]service.action`, GET or POST with a JSON body (query-string
parameters merged in, JSON lines for batches), the `meta`/`data` envelope with the HTTP status
equal to `result_code`, and ClearML's error codes.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import DataError
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from accounts.actor import Actor, actor_for_user
from accounts.models import ApiKey
from accounts.services import apikey_check
from clearml_api.tokens import API_VERSION, token_read
from core import jsonbody
from core.db import atomic
from core.errors import Conflict, Forbidden, InvalidInput, NotFound, ServiceError

PATH = re.compile(r"^/?(v(?P<version>\d+\.?\d+)/)?(?P<endpoint>[a-zA-Z_]\w+\.[a-zA-Z_]\w+)/?$")


class ApiFailure(Exception):
    """A ClearML error: result_code (the HTTP status), result_subcode, message."""

    def __init__(self, code: int, subcode: int, message: str, data: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.subcode, self.message, self.data = code, subcode, message, data or {}


@dataclass
class Call:
    request: HttpRequest
    endpoint: str
    version: str
    data: dict[str, Any]
    actor: Actor | None = None
    key_access: str = ""
    lines: list[dict[str, Any]] = field(default_factory=list)

    @property
    def caller(self) -> Actor:
        if self.actor is None:
            raise ApiFailure(401, 20, "Unauthorized (missing credentials)")
        return self.actor

    def text(self, name: str, *, required: bool = True, default: str = "", max_len: int = 1000) -> str:
        value = self.data.get(name)
        if value is None or value == "":
            if required:
                raise ApiFailure(400, 12, f"Validation error (missing required field: {name})")
            return default
        if not isinstance(value, str):
            raise ApiFailure(400, 12, f"Validation error ({name} must be a string)")
        if len(value) > max_len or "\x00" in value:
            raise ApiFailure(400, 12, f"Validation error ({name}: at most {max_len} characters, no NUL)")
        return value

    def strings(self, name: str) -> list[str]:
        value = self.data.get(name)
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ApiFailure(400, 12, f"Validation error ({name} must be a list of strings)")
        return value


Handler = Callable[[Call], dict[str, Any]]
ENDPOINTS: dict[str, tuple[Handler, bool]] = {}


def endpoint(name: str, *, auth: bool = True) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        ENDPOINTS[name] = (handler, auth)
        return handler

    return register


def _envelope(call_id: str, endpoint_name: str, version: str, *, code: int, subcode: int, message: str,
              data: dict[str, Any] | None, error_data: dict[str, Any] | None = None) -> JsonResponse:  # fmt: skip
    body = {
        "meta": {
            "id": call_id, "trx": call_id,
            "endpoint": {"name": endpoint_name, "requested_version": version or API_VERSION, "actual_version": API_VERSION},
            "result_code": code, "result_subcode": subcode, "result_msg": message,
            "error_stack": None, "error_data": error_data or {},
        },
        "data": data if data is not None else {},
    }  # fmt: skip
    return JsonResponse(body, status=code)


def _body(request: HttpRequest) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    try:
        raw = request.body
    except RequestDataTooBig:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raise ApiFailure(413, 0, f"Request body too large (over {limit} bytes, MAX_REQUEST_BYTES)") from None
    data: dict[str, Any] = {}
    lines: list[dict[str, Any]] = []
    content_type = request.content_type or ""
    if raw.strip():
        try:
            if "json-lines" in content_type or (b"\n" in raw.strip() and raw.lstrip()[:1] == b"{" and _many(raw)):
                lines = [jsonbody.loads(line, parse_constant=_no_constant) for line in raw.splitlines() if line.strip()]
            else:
                try:
                    parsed = jsonbody.loads(raw, parse_constant=_no_constant)  # JSON whatever the content type says
                except ValueError:
                    if "form" not in content_type:
                        raise
                    parsed = request.POST.dict()
                if isinstance(parsed, list):
                    lines = parsed
                elif isinstance(parsed, dict):
                    data.update(parsed)
                else:
                    raise ApiFailure(400, 12, "Validation error (the body must be a JSON object)")
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiFailure(400, 12, f"Invalid JSON body ({e})") from None
    for key, values in request.GET.lists():
        data.setdefault(key, values[0] if len(values) == 1 else values)
    if any(not isinstance(x, dict) for x in lines):
        raise ApiFailure(400, 12, "Validation error (each line must be a JSON object)")
    return data, lines


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _many(raw: bytes) -> bool:
    try:
        jsonbody.loads(raw)
    except jsonbody.TooDeep:
        return False  # one document, refused as too deep when it is parsed
    except ValueError:
        return True
    return False


def _authenticate(request: HttpRequest) -> tuple[Actor | None, str]:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            access, _, secret = base64.b64decode(value.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise ApiFailure(401, 20, "Unauthorized (malformed basic credentials)") from None
        key = apikey_check(f"{access}.{secret}")
        if key is None:
            raise ApiFailure(401, 20, "Unauthorized (invalid credentials)")
        return actor_for_user(key.user, key), key.access_key
    if scheme.lower() == "bearer" and value.strip():
        token = value.strip()
        payload = token_read(token)
        if payload is None:
            if token.count(".") == 1:  # a Muster API key used directly
                key = apikey_check(token)
                if key is not None:
                    return actor_for_user(key.user, key), key.access_key
            raise ApiFailure(401, 21, "Unauthorized (invalid or expired token)")
        key = ApiKey.objects.select_related("user").filter(access_key=payload.get("key", "")).first()
        if key is None or key.revoked_at is not None or not key.user.is_active:
            raise ApiFailure(401, 21, "Unauthorized (the token's key was revoked)")

        if key.expires_at is not None and key.expires_at <= timezone.now():
            raise ApiFailure(401, 21, "Unauthorized (the token's key expired)")
        return actor_for_user(key.user, key), key.access_key
    return None, ""


def _service_failure(e: ServiceError) -> ApiFailure:
    if isinstance(e, NotFound):
        return ApiFailure(400, 101 if e.field in ("task", "experiment", "id") else 0, e.message)
    if isinstance(e, Forbidden):
        return ApiFailure(403, 0, e.message)
    if isinstance(e, Conflict):
        return ApiFailure(400, 110, e.message)
    if isinstance(e, InvalidInput):
        return ApiFailure(400, 12, f"Validation error ({e.message})")
    return ApiFailure(e.status, 0, e.message)


@csrf_exempt
def dispatch(request: HttpRequest, path: str) -> JsonResponse:
    """Every ClearML call: route, authenticate, run the handler, wrap the answer."""
    call_id = uuid.uuid4().hex
    match = PATH.match(path)
    if match is None:
        return _envelope(call_id, path, "", code=400, subcode=0, message=f"Invalid request path /{path}", data=None)
    name, version = match.group("endpoint"), match.group("version") or ""
    found = ENDPOINTS.get(name)
    if found is None:
        return _envelope(
            call_id, name, version, code=400, subcode=0, message=f"Unable to find endpoint for name {name}", data=None
        )
    handler, needs_auth = found
    try:
        data, lines = _body(request)
        actor, access = _authenticate(request)
        if needs_auth and actor is None:
            raise ApiFailure(401, 20, "Unauthorized (missing credentials)")
        # One transaction per call: a call that fails half-way (tasks.edit's second change,
        # tasks.enqueue's new queue before a refused enqueue) leaves nothing written.
        answer = atomic(handler)(Call(request, name, version, data, actor, access, lines))
    except ApiFailure as e:
        return _envelope(
            call_id, name, version, code=e.code, subcode=e.subcode, message=e.message, data=None, error_data=e.data
        )
    except DataError as e:  # a value the database cannot hold (too long, out of range): the caller's input
        return _envelope(
            call_id, name, version, code=400, subcode=12, message=f"Validation error ({e})"[:500], data=None
        )
    except ServiceError as e:
        failure = _service_failure(e)
        return _envelope(
            call_id, name, version, code=failure.code, subcode=failure.subcode, message=failure.message, data=None
        )
    return _envelope(call_id, name, version, code=200, subcode=0, message="OK", data=answer)
