"""Beat's scheduler: celery's own, its schedule kept in a `dbm.dumb` file.

Python 3.13's shelve picks `dbm.sqlite3` first, whose WAL files sometimes failed beat's start
with "sqlite3.OperationalError: locking protocol", and then no periodic task ran at all (no
liveness checks, no samples). Beat is one process, and its schedule a dozen entries, so the
plain file format does.
"""

from __future__ import annotations

import dbm.dumb
import shelve
from typing import Any

from celery.beat import PersistentScheduler


class _DumbShelve:
    @staticmethod
    def open(filename: str, writeback: bool = False) -> shelve.Shelf[Any]:
        return shelve.Shelf(dbm.dumb.open(filename, "c"), writeback=writeback)  # type: ignore[arg-type]


class Scheduler(PersistentScheduler):
    persistence = _DumbShelve  # type: ignore[assignment]
