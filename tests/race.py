"""Run calls at the same moment, each in its own thread and database connection."""

from __future__ import annotations

import threading
from collections.abc import Callable

from django.db import connections


def race(*calls: Callable[[], object]) -> list[BaseException]:
    """Run the calls at once, each in its own thread (and connection); the errors they raised."""
    go = threading.Barrier(len(calls), timeout=10)
    errors: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        try:
            go.wait()
            call()
        except BaseException as e:
            errors.append(e)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return errors
