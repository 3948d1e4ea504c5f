"""API plumbing shared by every app: the error format, validators, pagination."""

from __future__ import annotations

import base64
import json
from collections import OrderedDict
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Q
from django.http import Http404
from rest_framework import exceptions, pagination, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core.errors import ServiceError

# The largest value an integer column holds on every database we run on (PostgreSQL's integer).
INT32 = 2_147_483_647

MAX_JSON_BYTES = 64 * 1024


def error_body(code: str, message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    body.update(extra)
    return {"error": body}


def too_large() -> tuple[int, dict[str, Any]]:
    """The answer to a body over DATA_UPLOAD_MAX_MEMORY_SIZE (MAX_REQUEST_BYTES)."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return 413, error_body("too_large", f"the body is over the limit of {limit} bytes (MAX_REQUEST_BYTES)")


def first_error(detail: Any) -> tuple[str | None, str]:
    """The first field and message in a DRF error detail tree."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            field, message = first_error(value)
            name = str(key) if key != "non_field_errors" else None
            if field and name:
                return f"{name}.{field}", message
            return name or field, message
    if isinstance(detail, list) and detail:
        return first_error(detail[0])
    return None, str(detail)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every error is JSON `{"error": {code, message, field?, fields?}}` with a 4xx status."""
    if isinstance(exc, ServiceError):
        return Response(error_body(exc.code, exc.message, exc.field, **exc.extra), status=exc.status)
    if isinstance(exc, RequestDataTooBig):  # else Django's HTML 400
        status_code, body = too_large()
        return Response(body, status=status_code)
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    if isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        field, message = first_error(exc.detail)
        text = f"{field}: {message}" if field else message
        response.data = error_body("invalid", text, field, fields=exc.detail)
    elif isinstance(exc, exceptions.APIException):
        code = exc.get_codes() if isinstance(exc.get_codes(), str) else "error"
        response.data = error_body(str(code), str(exc.detail))
    return response


def _check_json_value(value: Any, depth: int = 0) -> None:
    if depth > 20:
        raise serializers.ValidationError("nested too deeply (at most 20 levels)")
    if isinstance(value, str):
        if "\x00" in value:
            raise serializers.ValidationError("NUL characters are not allowed")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise serializers.ValidationError("text must be valid Unicode (no lone surrogates)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_json_value(key, depth + 1)
            _check_json_value(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json_value(item, depth + 1)


def validate_json_blob(value: Any) -> Any:
    """A JSON value that PostgreSQL can store and that stays small."""
    _check_json_value(value)
    if len(json.dumps(value)) > MAX_JSON_BYTES:
        raise serializers.ValidationError(f"at most {MAX_JSON_BYTES // 1024} KB of JSON")
    return value


class LimitedJSONField(serializers.JSONField):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("validators", []).append(validate_json_blob)
        super().__init__(**kwargs)


class NewestFirstCursor(pagination.CursorPagination):
    ordering = ("-created_at", "-pk")
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 500

    def decode_cursor(self, request: Request) -> Any:
        """A cursor that is not one we wrote is bad input (400 naming `cursor`), not DRF's 404."""
        try:
            return super().decode_cursor(request)
        except exceptions.NotFound:
            raise exceptions.ValidationError({"cursor": ["invalid cursor"]}) from None


class KeysetPagination(pagination.BasePagination):
    """Keyset pages over a fixed multi-column order: each page costs one index range scan."""

    page_size = 100
    max_page_size = 500
    # (field, descending) pairs; the last one must be unique.
    order: tuple[tuple[str, bool], ...] = ()

    def paginate_queryset(self, queryset: Any, request: Request, view: Any = None) -> list[Any]:
        limit = self._limit(request)
        after = self._decode(request.query_params.get("cursor", ""))
        qs = queryset.order_by(*[("-" if desc else "") + f for f, desc in self.order])
        if after is not None:
            qs = qs.filter(self._after_q(after))
        rows = list(qs[: limit + 1])
        self._has_more = len(rows) > limit
        self._rows = rows[:limit]
        self._request = request
        return self._rows

    def _limit(self, request: Request) -> int:
        raw = request.query_params.get("limit", "")
        try:
            value = int(raw) if raw else self.page_size
        except ValueError:
            raise exceptions.ValidationError({"limit": ["must be an integer"]}) from None
        return max(1, min(value, self.max_page_size))

    def _decode(self, cursor: str) -> list[Any] | None:
        if not cursor:
            return None
        try:
            values = json.loads(base64.urlsafe_b64decode(cursor.encode() + b"==="))
        except (ValueError, UnicodeDecodeError):
            raise exceptions.ValidationError({"cursor": ["invalid cursor"]}) from None
        if not isinstance(values, list) or len(values) != len(self.order):
            raise exceptions.ValidationError({"cursor": ["invalid cursor"]})
        for value in values:
            if not isinstance(value, (int, str)) or isinstance(value, bool):
                raise exceptions.ValidationError({"cursor": ["invalid cursor"]})
        return values

    def _after_q(self, values: list[Any]) -> Q:
        q = Q()
        for i, (field, desc) in enumerate(self.order):
            step = Q(**{f"{field}__{'lt' if desc else 'gt'}": values[i]})
            for prev_field, _ in self.order[:i]:
                step &= Q(**{prev_field: values[self.order.index((prev_field, _))]})
            q |= step
        return q

    def _encode(self, row: Any) -> str:
        values = [getattr(row, field) for field, _ in self.order]
        return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")

    def get_paginated_response(self, data: Any) -> Response:
        next_cursor = self._encode(self._rows[-1]) if self._has_more and self._rows else None
        return Response(OrderedDict([("next", next_cursor), ("results", data)]), status=status.HTTP_200_OK)

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["results"],
            "properties": {"next": {"type": "string", "nullable": True}, "results": schema},
        }

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        return [
            {"name": "cursor", "required": False, "in": "query", "schema": {"type": "string"}},
            {"name": "limit", "required": False, "in": "query", "schema": {"type": "integer"}},
        ]
