"""Beat keeps its schedule in a dbm.dumb file: Python 3.13's default (SQLite in WAL mode) failed
beat's start now and then with "locking protocol", and then no periodic task ran."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from orchestration.beat import Scheduler
from orchestration.celery import app


def test_beat_uses_the_plain_file_scheduler_and_keeps_its_schedule_across_restarts(tmp_path: Path) -> None:
    assert settings.CELERY_BEAT_SCHEDULER == "orchestration.beat:Scheduler"
    path = str(tmp_path / "beat-schedule")
    first = Scheduler(app=app, schedule_filename=path, lazy=False)
    assert "check-liveness" in first.schedule
    first.close()
    assert (tmp_path / "beat-schedule.dat").exists() and (tmp_path / "beat-schedule.dir").exists()
    assert not (tmp_path / "beat-schedule-wal").exists()
    again = Scheduler(app=app, schedule_filename=path, lazy=False)
    assert set(again.schedule) >= set(settings.CELERY_BEAT_SCHEDULE)
    again.close()
