"""The API's request parser: DRF's JSON parser with a nesting limit (core/jsonbody.py).

A module of its own: DRF imports DEFAULT_PARSER_CLASSES while the API modules are still loading.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from rest_framework import exceptions, parsers

from core import jsonbody


class JSONParser(parsers.JSONParser):
    """Deep nesting is a 400 naming the limit, not a RecursionError and a 500."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            raw = stream.read() if stream is not None else b""
            return jsonbody.loads(raw.decode(encoding), parse_constant=_no_constant)
        except ValueError as exc:  # malformed, too deep, bad encoding (UnicodeDecodeError is a ValueError)
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")
