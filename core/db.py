"""Transactions that survive the database's own conflict verdicts.

Lock order everywhere is attempt, then experiment, then worker (the order of the agent's
writes, the hot path). A transaction that still loses a cycle or a serialization check
(PostgreSQL's 40P01 and 40001; SQLite's "database is locked" after its busy timeout) is
rolled back whole by the database, so running it again from the start is safe: `atomic`
does that, a few times, when it is the outermost transaction.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.db.models import Count, QuerySet, Subquery
from django.db.models.functions import Coalesce

ATTEMPTS = 4
# psycopg prepares a statement after this many runs; Django's own cursors never prepare, so
# only the statements run through prepared_cursor() (which asks every time) are prepared.
ONLY_WHEN_ASKED = 2**31 - 1
TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure


def is_transient(error: OperationalError) -> bool:
    cause = error.__cause__
    if getattr(cause, "sqlstate", None) in TRANSIENT_SQLSTATES:
        return True
    return "database is locked" in str(error)


def atomic[**P, R](fn: Callable[P, R]) -> Callable[P, R]:
    """`transaction.atomic`, run again (up to ATTEMPTS times) when the database aborts it as a conflict.

    Inside an enclosing transaction it is a plain savepoint: the outermost one owns the retry.
    """
    inner = transaction.atomic(fn)

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if connection.in_atomic_block:
            return inner(*args, **kwargs)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return inner(*args, **kwargs)
            except OperationalError as e:
                if attempt == ATTEMPTS or not is_transient(e):
                    raise
                time.sleep(random.uniform(0.005, 0.05) * attempt)  # noqa: S311 - jitter, not crypto
        raise AssertionError("unreachable")

    return wrapper


def prepared_cursor() -> Any:
    """A cursor for the hot paths' fixed statements: on PostgreSQL it binds on the server and prepares.

    Django's cursors bind parameters on the client and never prepare, so PostgreSQL parses
    and plans every statement again; for the claim's large data-modifying statement that
    planning cost more database CPU than running it. Prepared statements live on the
    connection (pooled connections keep them). The cursor is Django's wrapper, so query
    capture and execute wrappers still see every statement. Elsewhere, or with DB_PREPARE
    off (for a pooler that cannot keep prepared statements): a plain cursor.
    """
    if connection.vendor != "postgresql" or not settings.DB_PREPARE:
        return connection.cursor()
    connection.ensure_connection()
    raw = connection.connection
    if raw.prepare_threshold is None:  # Django's default: psycopg then prepares nothing, even when asked
        raw.prepare_threshold = ONLY_WHEN_ASKED
    cursor = _preparing_cursor_class()(raw)
    # What Django's own cursor() does with a new cursor, through its public methods.
    connection.validate_thread_sharing()
    return connection.make_debug_cursor(cursor) if connection.queries_logged else connection.make_cursor(cursor)


@functools.cache
def _preparing_cursor_class() -> type:
    # Imported here, not above: only a PostgreSQL connection needs this class, and the backend
    # module loads psycopg and its adapters, which SQLite processes never use.
    from django.db.backends.postgresql import base  # noqa: PLC0415
    from psycopg.errors import FeatureNotSupported  # noqa: PLC0415
    from psycopg.pq import TransactionStatus  # noqa: PLC0415

    server_binding: Any = base.ServerBindingCursor  # Django's cursor class when server_side_binding is on

    class PreparingCursor(server_binding):  # type: ignore[misc]
        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            kwargs["prepare"] = True
            try:
                return super().execute(query, params, **kwargs)
            except FeatureNotSupported:
                # "cached plan must not change result type": a migration changed a column under
                # a statement this connection prepared (a rolling deploy). In a transaction, the
                # rollback makes psycopg forget its plans, so the next try works; outside one,
                # forget them here and run the statement once more.
                if self.connection.info.transaction_status != TransactionStatus.IDLE:
                    raise
                self.connection.execute("DEALLOCATE ALL")  # psycopg clears its own record of them too
                return super().execute(query, params, **kwargs)

        def _convert_query(self, query: Any, params: Any = None) -> Any:
            converted = super()._convert_query(query, params)
            self._query = converted  # Django's query log reads the statement from here
            return converted

    return PreparingCursor


def correlated_count(qs: QuerySet[Any], on: str) -> Coalesce:
    """A correlated COUNT(*) of `qs` (filtered on OuterRef("pk") through the field `on`): an
    index scan per outer row, and no join that multiplies the outer rows."""
    column = qs.model._meta.get_field(on).attname
    return Coalesce(Subquery(qs.values(column).annotate(n=Count("*")).values("n")[:1]), 0)
