"""Logs: sequenced chunks, idempotent retries, repaired text, a head-and-tail cap."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
from django.test import override_settings

from accounts.actor import Actor
from core.errors import StaleLease
from experiments import services
from experiments.models import Experiment, LogChunk
from experiments.selectors import TRUNCATION_MARKER, log_page
from queues.models import Queue
from tests.race import race
from workers.dispatch import Claim, dispatch_claim
from workers.models import Worker

pytestmark = pytest.mark.django_db


@pytest.fixture
def claim(
    make_experiment: Callable[..., Experiment], make_worker: Callable[..., Worker], queue: Queue, agent_actor: Actor
) -> Claim:
    make_experiment(queue=queue)
    claimed = dispatch_claim(actor=agent_actor, worker=make_worker(queues=[queue]))
    assert claimed is not None
    return claimed


def append(actor: Actor, claim: Claim, chunks: list[tuple[int, str]]) -> int:
    return services.attempt_append_logs(
        actor=actor, attempt_id=claim.attempt.pk, token=claim.attempt.lease_token, chunks=chunks
    )


def text_of(claim: Claim) -> str:
    page = log_page(experiment=claim.experiment, attempt_id=claim.attempt.pk, after=None, limit=10_000)
    return "".join(str(c["text"]) for c in page.chunks)


def test_chunks_are_stored_in_sequence_and_a_retry_is_a_no_op(claim: Claim, agent_actor: Actor) -> None:
    assert append(agent_actor, claim, [(1, "b\n"), (0, "a\n")]) == 2
    assert append(agent_actor, claim, [(0, "a\n"), (1, "b\n"), (2, "c\n")]) == 1
    assert text_of(claim) == "a\nb\nc\n"
    page = log_page(experiment=claim.experiment, attempt_id=None, after=0)
    assert [c["seq"] for c in page.chunks] == [1, 2] and page.next_after == 2


def test_nul_and_invalid_unicode_are_replaced(claim: Claim, agent_actor: Actor) -> None:
    append(agent_actor, claim, [(0, "a\x00b \udcff end")])
    assert text_of(claim) == "a\ufffdb \ufffd end"


@override_settings(LOG_HEAD_BYTES=1024, LOG_TAIL_BYTES=2048)
def test_over_the_cap_the_head_and_the_tail_are_kept(claim: Claim, agent_actor: Actor) -> None:
    for seq in range(100):
        append(agent_actor, claim, [(seq, f"line {seq:03d} " + "x" * 90 + "\n")])
    text = text_of(claim)
    assert text.startswith("line 000")
    assert text.rstrip().endswith("x") and "line 099" in text
    assert TRUNCATION_MARKER in text and "line 050" not in text
    assert len(text.encode()) < 1024 + 2048 + 200
    claim.attempt.refresh_from_db()
    assert claim.attempt.log_truncated


def test_a_stale_token_cannot_write_logs(claim: Claim, agent_actor: Actor) -> None:
    with pytest.raises(StaleLease):
        services.attempt_append_logs(actor=agent_actor, attempt_id=claim.attempt.pk, token="nope", chunks=[(0, "x")])
    assert not LogChunk.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_writers_without_sequence_numbers_at_once_lose_no_line(claim: Claim, agent_actor: Actor) -> None:
    """ClearML's events carry no sequence, and the agent and the SDK in the task send them at once."""
    attempt = claim.attempt

    def write(i: int) -> None:
        services.attempt_append_text(actor=agent_actor, attempt_id=attempt.pk, token=attempt.lease_token,
                                     text=f"writer {i}\n")  # fmt: skip

    for round_ in range(3):
        assert race(*(partial(write, round_ * 8 + i) for i in range(8))) == []
    lines = sorted(text_of(claim).splitlines())
    assert lines == sorted(f"writer {i}" for i in range(24))
    assert sorted(LogChunk.objects.filter(attempt=attempt).values_list("seq", flat=True)) == list(range(1, 25))
