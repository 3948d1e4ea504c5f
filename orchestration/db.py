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

from django.db import OperationalError, connection, transaction

ATTEMPTS = 4
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
