"""Canaries: the private names of Django, psycopg and asgiref that the code relies on.

Each is fenced by a version range in pyproject.toml as well; these fail first, with a
message that says which of our modules to re-read, when an upgrade inside that range
moves one of them. A digest pins the source of a method we copy or override: when it
changes, compare ours with the new one, then update the digest.
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import pytest
from asgiref.sync import ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler
from django.db.backends.postgresql import base, operations
from django.utils.deprecation import MiddlewareMixin
from psycopg._cursor_base import BaseCursor


def _digest(obj: Any) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    ("name", "obj", "digest", "ours"),
    [
        ("ASGIHandler.__call__", ASGIHandler.__call__, "f756809e9c9308dc", "orchestration/asgi.py: Handler.__call__"),
        (
            "MiddlewareMixin.__init__",
            MiddlewareMixin.__init__,
            "cd0d3fd41f9408eb",
            "orchestration/middleware.py: _Inline",
        ),
        (
            "MiddlewareMixin.__acall__",
            MiddlewareMixin.__acall__,
            "adf8cbcaf9f11e45",
            "orchestration/middleware.py: _Inline",
        ),
    ],
)
def test_the_django_code_we_copy_or_override_is_unchanged(name: str, obj: Any, digest: str, ours: str) -> None:
    assert _digest(obj) == digest, f"Django's {name} changed: compare {ours} with it, then update this digest"


def test_the_middleware_mixin_still_says_whether_it_runs_async() -> None:
    async def get_response(request: Any) -> Any:
        return None

    assert MiddlewareMixin(get_response).async_mode is True, (
        "MiddlewareMixin.async_mode is gone: orchestration/middleware.py (_Inline) reads it"
    )


def test_a_thread_sensitive_context_takes_an_executor() -> None:
    assert "executor" in inspect.signature(ThreadSensitiveContext).parameters, (
        "asgiref's ThreadSensitiveContext(executor=...) is gone: orchestration/asgi.py (Handler) needs it"
    )


def test_psycopg_still_converts_queries_where_core_db_hooks_in() -> None:
    assert "_convert_query" in vars(BaseCursor), (
        "psycopg's BaseCursor._convert_query moved: core/db.py (PreparingCursor) overrides it"
    )
    source = inspect.getsource(BaseCursor)
    assert "self._convert_query(query, params)" in source, (
        "psycopg no longer converts through _convert_query(query, params): core/db.py (PreparingCursor)"
    )


def test_django_reads_the_last_statement_from_the_cursors_query() -> None:
    assert hasattr(base, "ServerBindingCursor"), "Django's ServerBindingCursor is gone: core/db.py subclasses it"
    assert "cursor._query" in inspect.getsource(operations.DatabaseOperations.last_executed_query), (
        "Django's query log no longer reads cursor._query: core/db.py (PreparingCursor._convert_query) sets it"
    )
