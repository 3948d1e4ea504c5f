"""Reports (the heartbeat) and liveness: kill and stop answers, lost claims, verdicts."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.actor import Actor
from core.errors import InvalidInput
from experiments.models import Experiment, FailureClass, Status
from experiments.services import experiment_stop
from queues.models import Queue, QueueEntry
from workers import ingest
from workers.dispatch import dispatch_claim
from workers.ingest import Pending, write
from workers.models import AttemptStat, Worker, WorkerStat, WorkerStatus
from workers.report_view import parse_report
from workers.serializers import ReportSerializer
from workers.services import Report, RunningAttempt, worker_check_liveness, worker_report

pytestmark = pytest.mark.django_db

MACHINE = {
    "cpu_percent": 42.5,
    "cpu_per_core": [40.0, 45.0],
    "memory_used_mb": 1000,
    "memory_free_mb": 3000,
    "gpus": [
        {
            "index": 0,
            "util": 91,
            "memory_used_mb": 10_000,
            "memory_free_mb": 70_000,
            "temperature_c": 64,
            "ecc_errors": 0,
        },
        {"index": 1, "util": 12, "memory_used_mb": 500, "memory_free_mb": 79_500, "temperature_c": 40, "ecc_errors": 0},
    ],
    "network_rx_bps": 1e6,
    "network_tx_bps": 2e5,
    "disk_read_bps": 0,
    "disk_write_bps": 1e4,
    "disk_free_mb": 50_000,
}


@pytest.fixture
def setup(
    make_worker: Callable[..., Worker], make_experiment: Callable[..., Experiment], queue: Queue, agent_actor: Actor
) -> Any:
    worker = make_worker(queues=[queue], gpu_slots=[{"index": 0}, {"index": 1}])
    make_experiment(queue=queue)
    claim = dispatch_claim(actor=agent_actor, worker=worker)
    assert claim is not None
    return worker, claim


def test_a_report_stores_machine_and_attempt_stats_and_iterations(setup: Any, agent_actor: Actor) -> None:
    worker, claim = setup
    answer = worker_report(
        actor=agent_actor,
        name=worker.name,
        report=Report(
            instance_id="i1",
            interval_s=5,
            running=[RunningAttempt(claim.attempt.pk, claim.attempt.lease_token, 17)],
            machine=MACHINE,
            attempts=[{"attempt": claim.attempt.pk, "cpu_percent": 180.0, "memory_mb": 900, "gpu_util": 91}],
        ),
    )
    assert answer.kill == [] and answer.stop == [] and answer.queues == ["default"]
    stat = WorkerStat.objects.get()
    assert stat.gpus[0]["util"] == 91 and stat.cpu_per_core == [40.0, 45.0] and stat.running == 1
    assert AttemptStat.objects.get().cpu_percent == 180.0
    assert Experiment.objects.get().last_iteration == 17
    # A report that arrives late with an older iteration never moves it back.
    running = [RunningAttempt(claim.attempt.pk, claim.attempt.lease_token, 5)]
    worker_report(actor=agent_actor, name=worker.name, report=Report(instance_id="i1", interval_s=5, running=running))
    assert Experiment.objects.get().last_iteration == 17


def test_runs_that_are_not_the_workers_any_more_are_to_be_killed(setup: Any, agent_actor: Actor) -> None:
    worker, claim = setup
    answer = worker_report(
        actor=agent_actor,
        name=worker.name,
        report=Report(running=[RunningAttempt(claim.attempt.pk, "stale"), RunningAttempt("f" * 32, "x")]),
    )
    assert answer.kill == sorted([claim.attempt.pk, "f" * 32])


def test_a_stop_request_reaches_the_agent(setup: Any, agent_actor: Actor, alice_actor: Actor) -> None:
    worker, claim = setup
    experiment_stop(actor=alice_actor, experiment_id=claim.experiment.pk)
    answer = worker_report(
        actor=agent_actor,
        name=worker.name,
        report=Report(running=[RunningAttempt(claim.attempt.pk, claim.attempt.lease_token)]),
    )
    assert answer.stop == [claim.attempt.pk]


def test_a_claim_missing_from_the_next_report_is_retried(setup: Any, agent_actor: Actor) -> None:
    worker, claim = setup
    # The first report after the claim may not know it yet; the one after must.
    Worker.objects.filter(pk=worker.pk).update(previous_report_at=timezone.now() + timedelta(seconds=1))
    worker_report(actor=agent_actor, name=worker.name, report=Report(running=[]))
    exp = Experiment.objects.get()
    assert exp.status == Status.QUEUED and exp.retry_count == 0  # it never started: no retry used
    claim.attempt.refresh_from_db()
    assert claim.attempt.failure_class == FailureClass.WORKER_LOST and claim.attempt.fenced


def test_unknown_reporting_workers_are_registered(agent_actor: Actor) -> None:
    worker_report(actor=agent_actor, name="newbox:0", report=Report(instance_id="z", machine=MACHINE))
    assert Worker.objects.get(name="newbox:0").status == WorkerStatus.IDLE


def test_slow_reporters_get_three_intervals(agent_actor: Actor) -> None:
    worker_report(actor=agent_actor, name="slow:0", report=Report(interval_s=30))
    worker = Worker.objects.get(name="slow:0")
    assert (worker.live_until - worker.last_seen_at).total_seconds() == pytest.approx(90)


def test_a_slow_reporter_is_judged_by_three_of_its_intervals_unresponsive_before_lost(agent_actor: Actor) -> None:
    """clearml-agent reports every 30 s: unresponsive after 90 s of silence, lost after 180 s (DESIGN §5).

    The checker used WORKER_TIMEOUT (30 s) alone: its first look, at 90 s, found 3 timeouts of
    silence and ruled it lost at once, never unresponsive.
    """
    worker_report(actor=agent_actor, name="slow:0", report=Report(interval_s=30))
    worker = Worker.objects.get(name="slow:0")
    assert worker.effective_timeout_s == pytest.approx(90)
    start = timezone.now() - timedelta(hours=1)
    t1 = worker.last_seen_at + timedelta(seconds=91)
    assert worker_check_liveness(since=start, now=t1) == {"unresponsive": 1, "lost": 0}
    t2 = worker.last_seen_at + timedelta(seconds=150)
    assert worker_check_liveness(since=start, now=t2) == {"unresponsive": 0, "lost": 0}
    t3 = worker.last_seen_at + timedelta(seconds=181)
    assert worker_check_liveness(since=start, now=t3) == {"unresponsive": 0, "lost": 1}


def test_liveness_waits_for_two_timeouts_after_it_starts(setup: Any) -> None:
    _worker, _ = setup
    now = timezone.now() + timedelta(seconds=100)
    assert worker_check_liveness(since=now - timedelta(seconds=10), now=now) == {"unresponsive": 0, "lost": 0}


def test_silent_workers_become_unresponsive_then_lost_and_their_runs_retry(setup: Any) -> None:
    worker, _claim = setup
    start = timezone.now() - timedelta(hours=1)
    t1 = worker.last_seen_at + timedelta(seconds=worker.effective_timeout_s + 1)
    assert worker_check_liveness(since=start, now=t1) == {"unresponsive": 1, "lost": 0}
    t2 = worker.last_seen_at + timedelta(seconds=2 * worker.effective_timeout_s + 1)
    assert worker_check_liveness(since=start, now=t2) == {"unresponsive": 0, "lost": 1}
    worker.refresh_from_db()
    assert worker.status == WorkerStatus.LOST
    exp = Experiment.objects.get()
    assert exp.status == Status.QUEUED and QueueEntry.objects.filter(experiment=exp).exists()


def test_a_lost_worker_that_reports_again_comes_back(setup: Any, agent_actor: Actor) -> None:
    worker, _ = setup
    Worker.objects.filter(pk=worker.pk).update(status=WorkerStatus.LOST)
    worker_report(actor=agent_actor, name=worker.name, report=Report())
    worker.refresh_from_db()
    assert worker.status in (WorkerStatus.IDLE, WorkerStatus.BUSY)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"machine": {"cpu_percent": 250}}, "machine"),
        ({"machine": {"gpus": [{"index": -1}]}}, "machine"),
        ({"running": [{"attempt": "nothex", "token": "t"}]}, "running"),
        ({"interval_s": "soon"}, "interval_s"),
        ({"interval_s": True}, "interval_s"),
        ({"machine": []}, "machine"),
        ({"machine": {"gpus": [{"util": 5}]}}, "machine.gpus[0].index"),
        ({"machine": {"cpu_per_core": [10, "x"]}}, "machine.cpu_per_core[1]"),
        ({"machine": {"gpus": [{"index": 0, "ecc_errors": 1.5}]}}, "machine.gpus[0].ecc_errors"),
        ({"running": [{"attempt": "a" * 32}]}, "running[0].token"),
        ({"running": [{"attempt": "a" * 32, "token": "t", "iteration": -1}]}, "running[0].iteration"),
        ({"attempts": [{"attempt": "a" * 32, "memory_mb": -5}]}, "attempts[0].memory_mb"),
        ({"running": {"attempt": "a" * 32}}, "running"),
        ({"instance_id": "x" * 65}, "instance_id"),
    ],
)
def test_malformed_reports_are_a_400_naming_the_field(agent_api: APIClient, body: dict[str, Any], field: str) -> None:
    r = agent_api.post("/api/v1/workers/box:9/report/", body, format="json")
    assert r.status_code == 400
    assert r.json()["error"]["field"].startswith(field)


@pytest.mark.parametrize(
    ("raw", "code"), [(b"{not json", "parse_error"), (b"[1, 2]", "invalid"), (b'{"interval_s": NaN}', "invalid")]
)
def test_a_report_that_is_not_a_json_object_is_a_400(agent_api: APIClient, raw: bytes, code: str) -> None:
    r = agent_api.post("/api/v1/workers/box:9/report/", raw, content_type="application/json")
    assert r.status_code == 400 and r.json()["error"]["code"] == code


def test_report_through_the_api(setup: Any, agent_api: APIClient) -> None:
    worker, claim = setup
    body = {
        "interval_s": 5,
        "machine": MACHINE,
        "running": [{"attempt": claim.attempt.pk, "token": claim.attempt.lease_token, "iteration": 3}],
    }
    r = agent_api.post(f"/api/v1/workers/{worker.name}/report/", body, format="json")
    assert r.status_code == 200 and r.json() == {"kill": [], "stop": [], "drain": False, "queues": ["default"]}


def _queued_ingest(monkeypatch: Any, settings: Any) -> Any:
    """A batch writer that only queues (its flusher thread is never started) until the test flushes."""

    settings.REPORT_FLUSH_S = 60
    batch = ingest.Ingest()
    batch.thread = threading.current_thread()  # "alive": add() starts no flusher thread
    monkeypatch.setattr(ingest, "INGEST", batch)
    return batch


def test_reports_are_written_in_batches_with_a_fixed_number_of_statements(
    make_worker: Callable[..., Worker], agent_actor: Actor, monkeypatch: Any, settings: Any
) -> None:

    batch = _queued_ingest(monkeypatch, settings)
    workers = [make_worker(f"batch:{i}") for i in range(12)]
    before = {w.pk: w.last_seen_at for w in workers}
    counts = []
    for size in (3, 12):
        for w in workers[:size]:
            answer = worker_report(actor=agent_actor, name=w.name, report=Report(interval_s=5, machine=MACHINE))
            assert answer.kill == [] and answer.stop == []
        assert WorkerStat.objects.count() == (0 if size == 3 else 3)  # nothing written before the flush
        with CaptureQueriesContext(connection) as ctx:
            assert batch.flush() == size
        counts.append(len(ctx.captured_queries))
    assert counts[0] == counts[1], counts  # one batch, the same statements for 3 reports or 12
    assert WorkerStat.objects.count() == 15
    for w in Worker.objects.filter(pk__in=before):
        assert w.last_seen_at > before[w.pk] and w.previous_report_at == w.last_seen_at


def test_a_batch_never_moves_a_heartbeat_backwards(
    make_worker: Callable[..., Worker], agent_actor: Actor, monkeypatch: Any, settings: Any
) -> None:

    w = make_worker("batch:late")
    now = timezone.now()
    write([Pending(worker_id=w.pk, at=now, live_until=now + timedelta(seconds=30), interval_s=5, stat=None)])
    old = now - timedelta(seconds=10)
    write([Pending(worker_id=w.pk, at=old, live_until=old + timedelta(seconds=30), interval_s=5, stat=None)])
    w.refresh_from_db()
    assert w.last_seen_at == now


def test_a_usual_report_is_answered_from_one_statement_on_postgresql(
    setup: Any, agent_actor: Actor, alice_actor: Actor, monkeypatch: Any, settings: Any
) -> None:

    worker, claim = setup
    _queued_ingest(monkeypatch, settings)
    running = [RunningAttempt(claim.attempt.pk, claim.attempt.lease_token, 3)]
    worker_report(actor=agent_actor, name=worker.name, report=Report(instance_id="i1", running=running))
    experiment_stop(actor=alice_actor, experiment_id=claim.experiment.pk)
    with CaptureQueriesContext(connection) as ctx:
        answer = worker_report(actor=agent_actor, name=worker.name, report=Report(instance_id="i1", running=running))
    # The worker, its running attempts (with their stop flags and claim times) and its queues.
    assert len(ctx.captured_queries) == (1 if connection.vendor == "postgresql" else 3), ctx.captured_queries
    assert answer.stop == [claim.attempt.pk] and answer.kill == [] and answer.queues == ["default"]
    exp = Experiment.objects.get()
    assert exp.status == Status.IN_PROGRESS


REPORT_BODIES = [
    {},
    {"instance_id": "i-1", "interval_s": 5, "running": [{"attempt": "a" * 32, "token": "t", "iteration": 3}]},
    {"machine": {"cpu_percent": 50, "cpu_per_core": [1, 2], "gpus": [{"index": 0, "util": 5, "ecc_errors": 1}]}},
    {"attempts": [{"attempt": "b" * 32, "cpu_percent": 10, "memory_mb": 5, "gpu_util": 1, "gpu_memory_mb": 2}]},
    {"machine": {"cpu_percent": 250}},
    {"machine": {"gpus": [{"index": 1025}]}},
    {"machine": {"gpus": [{"util": 5}]}},
    {"machine": {"cpu_per_core": [10, None]}},
    {"machine": {"temperature": 5, "disk_free_mb": -1}},
    {"running": [{"attempt": "nothex", "token": "t"}]},
    {"running": [{"attempt": "a" * 32}]},
    {"running": [{"attempt": "a" * 32, "token": ""}]},
    {"running": [{"attempt": "a" * 32, "token": "t", "iteration": -1}]},
    {"running": [{"attempt": "a" * 32, "token": "t"}] * 257},
    {"attempts": [{"attempt": "a" * 32, "memory_mb": -5}]},
    {"interval_s": 3601},
    {"interval_s": None},
    {"instance_id": "x" * 65},
    {"instance_id": "x" * 64},
]


@pytest.mark.parametrize("body", REPORT_BODIES)
def test_the_fast_checker_and_the_documented_serializer_agree(body: dict[str, Any]) -> None:
    """One schema: the checker is compiled from ReportSerializer's fields, so both accept or refuse alike."""

    documented = ReportSerializer(data=body).is_valid()
    try:
        parse_report(body)
        fast = True
    except InvalidInput:
        fast = False
    assert fast == documented
