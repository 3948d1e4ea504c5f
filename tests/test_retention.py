"""Retention: each app's periodic purge deletes what is older than its setting, and nothing newer."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from accounts.actor import Actor
from core import retention
from core.models import AuditEvent
from core.tasks import audit_purge_task
from experiments.models import Experiment, LogChunk, UsageRecord
from experiments.tasks import records_purge_task
from queues.models import Queue
from workers.dispatch import dispatch_claim
from workers.models import Worker

pytestmark = pytest.mark.django_db


def test_the_audit_purge_keeps_the_last_days(settings: Any) -> None:
    settings.AUDIT_RETENTION_DAYS = 30
    now = timezone.now()
    for days, object_id in ((31, "old"), (29, "recent")):
        AuditEvent.objects.create(at=now - timedelta(days=days), object_type="queue", object_id=object_id, action="x")
    assert audit_purge_task() == {"audit": 1}
    assert list(AuditEvent.objects.values_list("object_id", flat=True)) == ["recent"]


def test_the_experiments_purge_drops_old_log_chunks_and_usage_rows_in_batches(
    settings: Any,
    monkeypatch: Any,
    make_experiment: Callable[..., Experiment],
    make_worker: Callable[..., Worker],
    queue: Queue,
    agent_actor: Actor,
) -> None:
    settings.LOG_RETENTION_DAYS = 7
    settings.USAGE_RETENTION_DAYS = 365
    monkeypatch.setattr(retention, "BATCH", 2)  # several batches, each its own transaction
    make_experiment(queue=queue)
    claim = dispatch_claim(actor=agent_actor, worker=make_worker(queues=[queue]))
    assert claim is not None
    now = timezone.now()
    LogChunk.objects.bulk_create(LogChunk(attempt=claim.attempt, seq=seq, text=f"{seq}") for seq in range(1, 7))
    LogChunk.objects.filter(seq__lte=5).update(created_at=now - timedelta(days=8))
    UsageRecord.objects.create(
        attempt=claim.attempt, started_at=now - timedelta(days=400), ended_at=now - timedelta(days=399)
    )
    assert records_purge_task() == {"logs": 5, "usage": 1}
    assert list(LogChunk.objects.values_list("seq", flat=True)) == [6]
    assert not UsageRecord.objects.exists()
    assert records_purge_task() == {"logs": 0, "usage": 0}
